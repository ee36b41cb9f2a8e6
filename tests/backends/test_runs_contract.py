"""The workflow half of the storage contract (``RunStore``): in memory, SQLite, real Redis.

Times are real epoch milliseconds (13 digits): the Redis scripts edit step JSON in Lua, where a
careless encoder would turn them into floats.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import fields, replace
from typing import Any

import pytest

from stepstream import HistoryPolicy
from stepstream.backends import Backend, backend_from_url
from stepstream.backends.base import (
    CancelRun,
    Claim,
    CreateRun,
    FinishRun,
    Notify,
    ReleaseRun,
    SaveSteps,
    WaitEvent,
)
from stepstream.errors import LeaseLost, RunConflict, RunNotFound
from stepstream.records import (
    Emit,
    Lease,
    Message,
    RunRecord,
    RunState,
    StepRecord,
    StepState,
    StepType,
)
from tests.conftest import STORES

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("backend_url", STORES, indirect=True)]

FOREVER = HistoryPolicy()
LEASE = 30_000
FAR = 10**12  # far enough in the future for any test (≈ 31 years)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def new_run(
    run_id: str,
    *,
    workflow: str = "wf",
    due_at: int | None = 0,
    created_at: int = 1_795_500_000_000,
    **kwargs: Any,
) -> RunRecord:
    return RunRecord(
        id=run_id,
        workflow=workflow,
        state=RunState.STARTED,
        created_at=created_at,
        due_at=due_at,
        **kwargs,
    )


def step(position: int, state: StepState = StepState.PROGRESS, **kwargs: Any) -> StepRecord:
    kwargs.setdefault("type", StepType.RUN)
    return StepRecord(position, kwargs.pop("name", f"step-{position}"), state=state, **kwargs)


def waiting(position: int, event_id: str, **kwargs: Any) -> StepRecord:
    return step(position, type=StepType.WAIT, event_id=event_id, attempts=1, **kwargs)


def emits(channel: str, *labels: str) -> tuple[Emit, ...]:
    return tuple(Emit(channel, "workflow.update", json.dumps({"label": label})) for label in labels)


async def history(backend: Backend, channel: str) -> list[str]:
    return [message.data["label"] for message in await backend.read(channel)]


WORKFLOWS = ("wf", "a", "b", "kid", "basic")


async def claim(
    backend: Backend,
    owner: str,
    limit: int,
    *,
    lease_ms: int = LEASE,
    workflows: Sequence[str] = WORKFLOWS,
    exclude: Sequence[str] = (),
) -> list[RunRecord]:
    return await backend.claim_runs(
        Claim(owner, lease_ms, limit, tuple(workflows), exclude=tuple(exclude))
    )


async def lease(backend: Backend, run_id: str, owner: str) -> Lease:
    """``owner``'s lease on the run's current claim (the stored epoch)."""
    stored = await backend.get_run(run_id)
    return Lease(run_id, owner, stored.epoch if stored is not None else 0)


async def claim_one(backend: Backend, run_id: str, owner: str = "w1") -> RunRecord:
    """Claim exactly ``run_id`` (tests create it due; nothing else is due)."""
    (run,) = await claim(backend, owner, 10)
    assert run.id == run_id
    return run


def assert_int_fields(record: StepRecord) -> None:
    """Equality cannot tell 1795500000123 from 1795500000123.0; the log must keep integers."""
    for name in ("position", "attempts", "started_at", "finished_at", "wake_at"):
        value = getattr(record, name)
        assert value is None or type(value) is int, (name, value)


async def create_claimed(
    backend: Backend, run_id: str, owner: str = "w1", **kwargs: Any
) -> RunRecord:
    await backend.create_run(CreateRun(new_run(run_id, **kwargs)))
    return await claim_one(backend, run_id, owner)


# -- create / get / list ------------------------------------------------------------------------


async def test_create_and_get_round_trip_every_field(backend: Backend) -> None:
    steps = [
        step(2, StepState.PROGRESS, started_at=1_795_500_000_456, wake_at=9_007_199_254_740_991),
        step(0, StepState.SUCCESS, attempts=1, started_at=1_795_500_000_001, out='{"a": 1}'),
        step(
            1,
            StepState.RETRY,
            name='ünïcode "quoted" / slash',
            attempts=2,
            error="line\nbreak",
            type=StepType.INVOKE,
            child="wfr_child",
        ),
    ]
    run = new_run(
        "wfr_full",
        workflow="basic",
        due_at=1_795_500_000_999,
        payload='{"text": "héllo", "list": [1, 2.5, null]}',
        headers={"x-trace": "abc", "content-type": "application/json"},
        timeout_at=4_102_444_800_000,
        parent="wfr_parent",
        parent_position=3,
        steps=steps,
    )
    await backend.create_run(CreateRun(run, emits=emits("wfr_full", "runStart")))
    got = await backend.get_run("wfr_full")
    assert got == replace(run, steps=sorted(steps, key=lambda s: s.position))
    assert got is not None
    assert [s.position for s in got.steps] == [0, 1, 2]
    for each in got.steps:
        assert_int_fields(each)
    assert type(got.created_at) is int and type(got.due_at) is int
    assert await history(backend, "wfr_full") == ["runStart"]
    assert await backend.get_run("wfr_missing") is None


async def test_create_defaults_round_trip(backend: Backend) -> None:
    run = RunRecord(id="wfr_min", workflow="wf", state=RunState.STARTED, created_at=1)
    await backend.create_run(CreateRun(run))
    assert await backend.get_run("wfr_min") == run


async def test_duplicate_id_conflicts_and_changes_nothing(backend: Backend) -> None:
    first = new_run("wfr_dup", payload='"first"')
    await backend.create_run(CreateRun(first, emits=emits("wfr_dup", "first")))
    second = new_run("wfr_dup", workflow="other", payload='"second"', steps=[step(0)])
    with pytest.raises(RunConflict, match="wfr_dup"):
        await backend.create_run(CreateRun(second, emits=emits("wfr_dup", "second")))
    assert await backend.get_run("wfr_dup") == first
    assert await history(backend, "wfr_dup") == ["first"]
    page = await backend.list_runs(state=None, workflow=None, cursor=None, count=10)
    assert [r.id for r in page.runs] == ["wfr_dup"]
    assert (await backend.list_runs(state=None, workflow="other", cursor=None, count=10)).runs == []


async def test_list_runs_newest_first_with_filters(backend: Backend) -> None:
    plan = [("r0", "a"), ("r1", "b"), ("r2", "a"), ("r3", "a"), ("r4", "b"), ("r5", "a")]
    finish = {"r2": RunState.SUCCESS, "r4": RunState.FAILED}
    for run_id, workflow in plan:
        due = 0 if run_id in finish else None
        await backend.create_run(CreateRun(new_run(run_id, workflow=workflow, due_at=due)))
    claimed = await claim(backend, "w1", 10)
    assert sorted(run.id for run in claimed) == ["r2", "r4"]
    for run_id, state in finish.items():
        await backend.finish_run(
            FinishRun(await lease(backend, run_id, "w1"), state, None, None, at=now_ms())
        )
    await backend.cancel_run(CancelRun("r5", at=now_ms()))

    async def ids(state: str | None = None, workflow: str | None = None) -> list[str]:
        page = await backend.list_runs(state=state, workflow=workflow, cursor=None, count=100)
        assert page.cursor is None
        assert all(run.steps == [] for run in page.runs)
        return [run.id for run in page.runs]

    assert await ids() == ["r5", "r4", "r3", "r2", "r1", "r0"]
    assert await ids(workflow="a") == ["r5", "r3", "r2", "r0"]
    assert await ids(workflow="b") == ["r4", "r1"]
    assert await ids(state="RUN_STARTED") == ["r3", "r1", "r0"]
    assert await ids(state="RUN_SUCCESS") == ["r2"]
    assert await ids(state="RUN_FAILED") == ["r4"]
    assert await ids(state="RUN_CANCELED") == ["r5"]
    assert await ids(state="RUN_STARTED", workflow="a") == ["r3", "r0"]
    assert await ids(state="RUN_FAILED", workflow="a") == []
    assert await ids(state="RUN_FAILED", workflow="b") == ["r4"]
    assert await ids(workflow="nope") == []
    page = await backend.list_runs(state=None, workflow="b", cursor=None, count=1)
    (listed,) = page.runs
    assert listed.id == "r4" and listed.state is RunState.FAILED
    assert listed.completed_at is not None and listed.lease_owner is None
    assert page.cursor is not None


async def test_list_runs_cursor_pages(backend: Backend) -> None:
    for i in range(7):
        await backend.create_run(CreateRun(new_run(f"r{i}", due_at=None)))
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = await backend.list_runs(state=None, workflow=None, cursor=cursor, count=3)
        seen += [run.id for run in page.runs]
        pages += 1
        if page.cursor is None:
            break
        cursor = page.cursor
        # A run created between pages is newer than the cursor: later pages never show it.
        await backend.create_run(CreateRun(new_run(f"late{pages}", due_at=None)))
    assert seen == [f"r{i}" for i in reversed(range(7))]
    assert pages == 3
    exact = await backend.list_runs(state="RUN_STARTED", workflow="wf", cursor=None, count=9)
    assert len(exact.runs) == 9 and exact.cursor is None
    filtered = await backend.list_runs(state="RUN_STARTED", workflow="wf", cursor=None, count=4)
    assert filtered.cursor is not None
    rest = await backend.list_runs(
        state="RUN_STARTED", workflow="wf", cursor=filtered.cursor, count=4
    )
    newest = [f"r{i}" for i in reversed(range(7))]
    assert [r.id for r in [*filtered.runs, *rest.runs]] == ["late2", "late1", *newest[:6]]


# -- claiming and leases ------------------------------------------------------------------------


async def test_claim_takes_due_unleased_runs_oldest_due_first(backend: Backend) -> None:
    now = now_ms()
    due = {"r1": now - 3000, "r2": now - 1000, "r3": now - 2000, "r4": now + 700, "r5": None}
    for run_id, due_at in due.items():
        steps = [step(0, StepState.SUCCESS, out='"x"')] if run_id == "r1" else []
        await backend.create_run(CreateRun(new_run(run_id, due_at=due_at, steps=steps)))

    first = await claim(backend, "w1", 2, lease_ms=500)
    after = now_ms()
    assert [run.id for run in first] == ["r1", "r3"]
    assert all(r.lease_owner == "w1" and r.epoch == 1 for r in first)
    # Leases run on the storage's clock (this machine's, for these tests).
    assert all(r.lease_until is not None and now <= r.lease_until - 500 <= after for r in first)
    assert first[0].steps == [step(0, StepState.SUCCESS, out='"x"')]
    assert first[0].due_at == now - 3000
    stored = await backend.get_run("r1")
    assert stored is not None
    assert (stored.lease_owner, stored.lease_until, stored.epoch) == ("w1", first[0].lease_until, 1)

    assert [run.id for run in await claim(backend, "w2", 10, lease_ms=500)] == ["r2"]
    assert await claim(backend, "w2", 10) == []  # r4 not due, r5 never
    assert await claim(backend, "w2", 0) == []
    await asyncio.sleep(0.8)
    # Past every lease and r4's due time: expired leases and due runs merge, oldest due first.
    again = await claim(backend, "w3", 10)
    assert [run.id for run in again] == ["r1", "r3", "r2", "r4"]
    assert [r.epoch for r in again] == [2, 2, 2, 1]
    assert all(r.lease_owner == "w3" for r in again)


async def test_a_claim_counts_the_takeovers_in_a_row_that_stored_no_step(backend: Backend) -> None:
    """``takeovers``: how many claims in a row took the run over from an expired lease with no
    step stored since the previous one (0 for any other claim). The engine fails a run past a
    bound: a step blocking its worker's loop past the lease was otherwise run again for ever."""
    await backend.create_run(CreateRun(new_run("r1")))

    async def take(owner: str) -> RunRecord:
        (run,) = await claim(backend, owner, 10, lease_ms=100)
        await asyncio.sleep(0.15)  # the lease lapses
        return run

    assert [(await take(owner)).takeovers for owner in ("w1", "w2", "w3")] == [0, 1, 2]
    (run,) = await claim(backend, "w4", 10, lease_ms=100)
    assert run.takeovers == 3
    saved = step(0, StepState.SUCCESS, out='"x"')
    await backend.save_steps(SaveSteps(Lease("r1", "w4", run.epoch), (saved,)))
    await asyncio.sleep(0.15)
    # A step stored since the last takeover: counting starts again.
    assert [(await take(owner)).takeovers for owner in ("w5", "w6")] == [1, 2]
    # Handed back: the next claim takes no lease over, and counting starts again after it.
    (run,) = await claim(backend, "w7", 10, lease_ms=100)
    await backend.release_run(ReleaseRun(Lease("r1", "w7", run.epoch), 0))
    assert [(await take(owner)).takeovers for owner in ("w8", "w9")] == [0, 1]


async def test_claim_takes_only_the_given_workflows_and_skips_excluded(backend: Backend) -> None:
    """A worker claims only what it can run (rolling deploys), never its own executions."""
    for run_id, workflow in (("r1", "old"), ("r2", "new"), ("r3", "new"), ("r4", "new")):
        await backend.create_run(CreateRun(new_run(run_id, workflow=workflow)))
    assert await claim(backend, "w1", 10, workflows=["gone"]) == []
    got = await claim(backend, "w1", 10, workflows=["new"], exclude=["r3"])
    assert sorted(run.id for run in got) == ["r2", "r4"]
    assert [run.id for run in await claim(backend, "w2", 10, workflows=["old"])] == ["r1"]


async def test_a_stalled_claim_is_fenced_out_by_the_next_even_of_the_same_owner(
    backend: Backend,
) -> None:
    """The epoch, not the owner's name, fences: an execution whose lease expired while it
    stalled cannot write once its run was claimed again, even by its own worker."""
    await backend.create_run(CreateRun(new_run("r1")))
    (first,) = await claim(backend, "w1", 10, lease_ms=300)
    stalled = Lease("r1", "w1", first.epoch)
    await asyncio.sleep(0.4)
    (second,) = await claim(backend, "w1", 10)
    assert second.epoch == first.epoch + 1
    with pytest.raises(LeaseLost):
        await backend.save_steps(SaveSteps(stalled, (step(0),), emits=emits("r1", "stale")))
    with pytest.raises(LeaseLost):
        await backend.finish_run(
            FinishRun(stalled, RunState.SUCCESS, None, None, at=1, emits=emits("r1", "x"))
        )
    assert await backend.renew_leases([stalled], LEASE) == []
    current = Lease("r1", "w1", second.epoch)
    assert await backend.renew_leases([current], LEASE) == ["r1"]
    await backend.save_steps(SaveSteps(current, (step(0),), emits=emits("r1", "mine")))
    assert await history(backend, "r1") == ["mine"]


async def test_concurrent_claimers_never_share_a_run(backend: Backend, backend_url: str) -> None:
    now = now_ms()
    for i in range(30):
        await backend.create_run(CreateRun(new_run(f"r{i:02}", due_at=now - 1000 + i)))
    other = backend_from_url(backend_url)  # a second process, in effect
    await other.open()
    try:
        batches = await asyncio.gather(
            *(claim(backend if i % 2 else other, f"w{i}", 3) for i in range(20))
        )
    finally:
        await other.close()
    claimed = [(run.id, run.lease_owner) for batch in batches for run in batch]
    assert sorted(run_id for run_id, _ in claimed) == [f"r{i:02}" for i in range(30)]
    for run_id, owner in claimed:
        stored = await backend.get_run(run_id)
        assert stored is not None and stored.lease_owner == owner


async def test_expired_lease_is_reclaimed_by_another_owner(backend: Backend) -> None:
    await backend.create_run(CreateRun(new_run("r1")))
    assert len(await claim(backend, "w1", 10, lease_ms=400)) == 1
    old = await lease(backend, "r1", "w1")
    assert await claim(backend, "w2", 10, lease_ms=400) == []
    await asyncio.sleep(0.5)
    (taken,) = await claim(backend, "w2", 10)
    assert taken.id == "r1" and taken.lease_owner == "w2"
    with pytest.raises(LeaseLost):
        await backend.save_steps(SaveSteps(old, (step(0),), emits=emits("r1", "late")))
    assert await backend.renew_leases([old], 10_000) == []
    await backend.save_steps(
        SaveSteps(await lease(backend, "r1", "w2"), (step(0),), emits=emits("r1", "mine"))
    )
    assert await history(backend, "r1") == ["mine"]


async def test_renew_leases_extends_only_what_the_owner_holds(backend: Backend) -> None:
    now = now_ms()
    for run_id in ("r1", "r2", "r3"):
        await backend.create_run(CreateRun(new_run(run_id, due_at=now - 10)))
    await claim(backend, "w1", 2, lease_ms=600)
    await claim(backend, "w2", 1, lease_ms=600)
    leases = [await lease(backend, r, "w1") for r in ("r1", "r2", "r3", "missing")]
    before = now_ms()
    held = await backend.renew_leases(leases, 5000)
    assert held == ["r1", "r2"]
    for run_id in ("r1", "r2"):
        stored = await backend.get_run(run_id)
        assert stored is not None and stored.lease_until is not None
        assert before + 5000 <= stored.lease_until <= now_ms() + 5000
    # The renewed leases hold past the original expiry; r3's does not.
    await asyncio.sleep(0.7)
    assert [r.id for r in await claim(backend, "w9", 10)] == ["r3"]
    # A finished run's lease cannot be renewed.
    await backend.finish_run(FinishRun(leases[0], RunState.SUCCESS, None, None, at=now))
    assert await backend.renew_leases(leases[:2], 9000) == ["r2"]


async def test_a_run_created_without_due_at_is_never_claimed(backend: Backend) -> None:
    await backend.create_run(CreateRun(new_run("r1", due_at=None)))
    assert await claim(backend, "w1", 10) == []


# -- saving steps and releasing -----------------------------------------------------------------


async def test_save_steps_inserts_and_replaces_by_position(backend: Backend) -> None:
    await create_claimed(backend, "r1", steps=[step(0, name="first")])
    s1 = step(1, started_at=1_795_500_000_123, attempts=1)
    await backend.save_steps(
        SaveSteps(await lease(backend, "r1", "w1"), (s1,), emits=emits("r1", "s1-start"))
    )
    done = replace(s1, state=StepState.SUCCESS, finished_at=1_795_500_000_999, out="[1, 2]")
    s3 = step(3, StepState.RETRY, attempts=2, error="flaky")
    await backend.save_steps(
        SaveSteps(await lease(backend, "r1", "w1"), (done, s3), emits=emits("r1", "s1-end", "s3"))
    )
    stored = await backend.get_run("r1")
    assert stored is not None
    assert stored.steps == [step(0, name="first"), done, s3]
    assert await history(backend, "r1") == ["s1-start", "s1-end", "s3"]


@pytest.mark.parametrize("owner", ["w2", None])
async def test_save_steps_is_fenced(backend: Backend, owner: str | None) -> None:
    """Another owner, or a run nobody holds: nothing written, no event stored."""
    await backend.create_run(CreateRun(new_run("r1", steps=[step(0)])))
    if owner is not None:
        await claim_one(backend, "r1", "w1")
    with pytest.raises(LeaseLost, match="r1"):
        await backend.save_steps(
            SaveSteps(
                await lease(backend, "r1", owner or "w1"),
                (step(0, StepState.SUCCESS), step(1)),
                emits=emits("r1", "nope"),
            ),
        )
    with pytest.raises(LeaseLost):
        await backend.save_steps(
            SaveSteps(
                await lease(backend, "missing", "w1"), (step(0),), emits=emits("missing", "nope")
            )
        )
    stored = await backend.get_run("r1")
    assert stored is not None and stored.steps == [step(0)]
    assert await history(backend, "r1") == []
    assert await history(backend, "missing") == []


async def test_release_until_later_applies_the_patch(backend: Backend) -> None:
    await create_claimed(backend, "r1")
    now = now_ms()
    patch = {"phase": "failure", "error": "boom", "failure_attempts": 2}
    held = await lease(backend, "r1", "w1")
    await backend.release_run(ReleaseRun(held, now + 600, patch, emits=emits("r1", "released")))
    stored = await backend.get_run("r1")
    assert stored is not None
    assert (stored.phase, stored.error, stored.failure_attempts) == ("failure", "boom", 2)
    assert (stored.due_at, stored.lease_owner, stored.lease_until) == (now + 600, None, None)
    assert stored.payload == "null" and stored.state is RunState.STARTED
    assert await history(backend, "r1") == ["released"]
    assert await claim(backend, "w2", 10) == []
    await asyncio.sleep(0.7)
    (again,) = await claim(backend, "w2", 10)
    assert again.phase == "failure" and again.lease_owner == "w2"
    # The old owner is fenced out: no patch, no event.
    with pytest.raises(LeaseLost):
        await backend.release_run(ReleaseRun(held, None, {"phase": "run"}, emits=emits("r1", "x")))
    stored = await backend.get_run("r1")
    assert stored is not None and stored.phase == "failure" and stored.lease_owner == "w2"
    assert await history(backend, "r1") == ["released"]


async def test_release_without_due_at_waits_for_a_wake_up(backend: Backend) -> None:
    await create_claimed(backend, "r1")
    await backend.release_run(ReleaseRun(await lease(backend, "r1", "w1"), None))
    stored = await backend.get_run("r1")
    assert stored is not None and stored.due_at is None and stored.lease_owner is None
    assert await claim(backend, "w1", 10) == []
    with pytest.raises(LeaseLost):  # released: the old owner holds nothing
        await backend.save_steps(SaveSteps(await lease(backend, "r1", "w1"), (step(0),)))


# -- waiting for events -------------------------------------------------------------------------


async def test_notify_resolves_a_waiting_step_and_makes_its_run_due(backend: Backend) -> None:
    await create_claimed(backend, "r1")
    started = now_ms()  # its deadline ahead: a wait past it wakes on no notify
    wait = waiting(0, "approve", started_at=started, wake_at=started + 60_000)
    assert (
        await backend.wait_event(
            WaitEvent(await lease(backend, "r1", "w1"), wait, emits=emits("r1", "waiting"))
        )
        is None
    )
    await backend.release_run(ReleaseRun(await lease(backend, "r1", "w1"), None))
    stored = await backend.get_run("r1")
    assert stored is not None and stored.steps == [wait] and stored.due_at is None
    assert await history(backend, "r1") == ["waiting"]

    now = now_ms()
    raw = '{"ok": true, "by": "ünï \\"q\\" /"}'
    assert await backend.notify(Notify("approve", raw, None, at=now)) == 1
    stored = await backend.get_run("r1")
    assert stored is not None
    assert stored.steps == [replace(wait, out=raw, resolved=True)]
    assert_int_fields(stored.steps[0])
    assert stored.due_at is not None and now <= stored.due_at <= now_ms()
    (claimed,) = await claim(backend, "w2", 10)
    assert claimed.steps[0].out == raw
    # The waiter was consumed: nobody else waits.
    assert await backend.notify(Notify("approve", "null", None, at=now)) == 0
    assert await history(backend, "r1") == ["waiting"]


async def test_a_notify_after_a_waits_deadline_leaves_it_timed_out(backend: Backend) -> None:
    """Past its deadline a wait has timed out (its worker records that, from the steps it
    claimed): a notify leaves the step as it is and wakes nobody."""
    await create_claimed(backend, "r1")
    wait = waiting(0, "approve", started_at=now_ms() - 2_000, wake_at=now_ms() - 1_000)
    await backend.wait_event(WaitEvent(await lease(backend, "r1", "w1"), wait))
    assert await backend.notify(Notify("approve", '"late"', None, at=now_ms())) == 0
    stored = await backend.get_run("r1")
    assert stored is not None and stored.steps == [wait]  # not resolved


async def test_wait_event_registration_is_fenced(backend: Backend) -> None:
    await create_claimed(backend, "r1")
    with pytest.raises(LeaseLost):
        await backend.wait_event(
            WaitEvent(await lease(backend, "r1", "w2"), waiting(0, "ev"), emits=emits("r1", "x"))
        )
    stored = await backend.get_run("r1")
    assert stored is not None and stored.steps == []
    assert await backend.notify(Notify("ev", "1", None, at=now_ms())) == 0
    assert await history(backend, "r1") == []


async def test_notify_before_the_wait_is_kept_for_the_run(backend: Backend) -> None:
    """Lookback: the event waits for the step; the wait returns it and records it resolved."""
    await create_claimed(backend, "r1")
    assert await backend.notify(Notify("ev", '{"n": 1}', "r1", at=now_ms())) == 0
    stored = await backend.get_run("r1")
    assert stored is not None and stored.steps == []

    wait = waiting(2, "ev", started_at=1_795_500_000_123)
    data = await backend.wait_event(
        WaitEvent(await lease(backend, "r1", "w1"), wait, emits=emits("r1", "stepStart"))
    )
    assert data == '{"n": 1}'
    stored = await backend.get_run("r1")
    assert stored is not None and stored.steps == [replace(wait, out=data, resolved=True)]
    assert_int_fields(stored.steps[0])
    assert await history(backend, "r1") == ["stepStart"]
    # Consumed: a second wait for the same event id waits for a new notify.
    assert (
        await backend.wait_event(WaitEvent(await lease(backend, "r1", "w1"), waiting(3, "ev")))
        is None
    )
    # A later notify for the run replaces what is kept, it does not pile up.
    await backend.notify(Notify("other", '"a"', "r1", at=now_ms()))
    await backend.notify(Notify("other", '"b"', "r1", at=now_ms()))
    assert (
        await backend.wait_event(WaitEvent(await lease(backend, "r1", "w1"), waiting(4, "other")))
        == '"b"'
    )


async def test_notify_names_only_the_given_run(backend: Backend) -> None:
    for run_id in ("r1", "r2"):
        await create_claimed(backend, run_id)
        await backend.wait_event(
            WaitEvent(await lease(backend, run_id, "w1"), waiting(0, "shared"))
        )
        await backend.release_run(ReleaseRun(await lease(backend, run_id, "w1"), None))
    assert await backend.notify(Notify("shared", '"one"', "r2", at=now_ms())) == 1
    r1, r2 = await backend.get_run("r1"), await backend.get_run("r2")
    assert r1 is not None and r2 is not None
    assert (r1.steps[0].resolved, r2.steps[0].resolved) == (False, True)
    assert await backend.notify(Notify("shared", '"all"', None, at=now_ms())) == 1
    r1 = await backend.get_run("r1")
    assert r1 is not None and r1.steps[0].out == '"all"'


async def test_notify_wakes_every_waiter(backend: Backend) -> None:
    for run_id in ("r1", "r2"):
        await create_claimed(backend, run_id)
        await backend.wait_event(WaitEvent(await lease(backend, run_id, "w1"), waiting(0, "go")))
        await backend.wait_event(WaitEvent(await lease(backend, run_id, "w1"), waiting(1, "go")))
        await backend.release_run(ReleaseRun(await lease(backend, run_id, "w1"), None))
    assert await backend.notify(Notify("go", "7", None, at=now_ms())) == 4
    for run_id in ("r1", "r2"):
        stored = await backend.get_run(run_id)
        assert stored is not None and [s.out for s in stored.steps] == ["7", "7"]


async def test_notify_without_waiters_or_run(backend: Backend) -> None:
    assert await backend.notify(Notify("nobody", "null", None, at=now_ms())) == 0
    with pytest.raises(RunNotFound):
        await backend.notify(Notify("ev", "null", "wfr_missing", at=now_ms()))
    await create_claimed(backend, "r1")
    await backend.finish_run(
        FinishRun(await lease(backend, "r1", "w1"), RunState.SUCCESS, "1", None, at=now_ms())
    )
    with pytest.raises(RunConflict, match="r1"):
        await backend.notify(Notify("ev", "null", "r1", at=now_ms()))


async def test_notify_while_leased_makes_the_release_due_now(backend: Backend) -> None:
    await create_claimed(backend, "r1")
    await backend.wait_event(WaitEvent(await lease(backend, "r1", "w1"), waiting(0, "ev")))
    assert await backend.notify(Notify("ev", '"hi"', None, at=now_ms())) == 1
    # Still leased: nobody else gets it meanwhile.
    assert await claim(backend, "w2", 10) == []
    # The worker, unaware, plans to sleep for ages; the resolved step wins.
    before = now_ms()
    await backend.release_run(ReleaseRun(await lease(backend, "r1", "w1"), before + FAR))
    stored = await backend.get_run("r1")
    assert stored is not None and stored.due_at is not None
    assert before <= stored.due_at <= now_ms()
    (claimed,) = await claim(backend, "w2", 10)
    assert claimed.steps[0].resolved and claimed.steps[0].out == '"hi"'
    # Once the worker completed the step, a release is taken at its word again.
    done = replace(claimed.steps[0], state=StepState.SUCCESS, finished_at=now_ms())
    await backend.save_steps(SaveSteps(await lease(backend, "r1", "w2"), (done,)))
    await backend.release_run(ReleaseRun(await lease(backend, "r1", "w2"), before + FAR))
    stored = await backend.get_run("r1")
    assert stored is not None and stored.due_at == before + FAR


# -- finishing and canceling --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "result", "error"),
    [(RunState.SUCCESS, '{"total": 3}', None), (RunState.FAILED, None, "boom: it broke")],
)
async def test_finish_run(
    backend: Backend, state: RunState, result: str | None, error: str | None
) -> None:
    await create_claimed(backend, "r1", steps=[step(0, StepState.SUCCESS)])
    now = now_ms()
    await backend.finish_run(
        FinishRun(
            await lease(backend, "r1", "w1"), state, result, error, at=now, emits=emits("r1", "fin")
        ),
    )
    stored = await backend.get_run("r1")
    assert stored is not None
    assert (stored.state, stored.result, stored.error, stored.completed_at) == (
        state,
        result,
        error,
        now,
    )
    assert (stored.due_at, stored.lease_owner, stored.lease_until) == (None, None, None)
    assert stored.steps == [step(0, StepState.SUCCESS)]
    assert await history(backend, "r1") == ["fin"]
    assert await claim(backend, "w1", 10) == []
    page = await backend.list_runs(state=state.value, workflow=None, cursor=None, count=10)
    assert [r.id for r in page.runs] == ["r1"]
    started = await backend.list_runs(state="RUN_STARTED", workflow=None, cursor=None, count=10)
    assert started.runs == []
    # Finished: every fenced method refuses, and stores no event.
    with pytest.raises(LeaseLost):
        await backend.finish_run(
            FinishRun(
                await lease(backend, "r1", "w1"),
                RunState.SUCCESS,
                None,
                None,
                at=now,
                emits=emits("r1", "x"),
            ),
        )
    with pytest.raises(LeaseLost):
        await backend.save_steps(
            SaveSteps(await lease(backend, "r1", "w1"), (step(1),), emits=emits("r1", "x"))
        )
    with pytest.raises(LeaseLost):
        await backend.release_run(
            ReleaseRun(await lease(backend, "r1", "w1"), now, emits=emits("r1", "x"))
        )
    with pytest.raises(LeaseLost):
        await backend.wait_event(
            WaitEvent(await lease(backend, "r1", "w1"), waiting(1, "ev"), emits=emits("r1", "x"))
        )
    assert await history(backend, "r1") == ["fin"]
    after = await backend.get_run("r1")
    assert after == stored


async def _parent_waiting_on_child(backend: Backend, *, keep_lease: bool = False) -> StepRecord:
    await create_claimed(backend, "parent")
    invoke = step(1, type=StepType.INVOKE, child="child", started_at=1_795_500_000_123)
    await backend.save_steps(SaveSteps(await lease(backend, "parent", "w1"), (invoke,)))
    if not keep_lease:
        await backend.release_run(ReleaseRun(await lease(backend, "parent", "w1"), None))
    child = new_run("child", workflow="kid", parent="parent", parent_position=1)
    await backend.create_run(CreateRun(child))
    (claimed,) = await claim(backend, "w2", 10)
    assert claimed.id == "child"
    return invoke


@pytest.mark.parametrize(
    ("state", "result", "error"),
    [(RunState.SUCCESS, '{"v": [1, "two"]}', None), (RunState.FAILED, None, 'bad "input"')],
)
async def test_finishing_a_child_resolves_the_parent(
    backend: Backend, state: RunState, result: str | None, error: str | None
) -> None:
    invoke = await _parent_waiting_on_child(backend)
    now = now_ms()
    await backend.finish_run(
        FinishRun(await lease(backend, "child", "w2"), state, result, error, at=now)
    )
    parent = await backend.get_run("parent")
    assert parent is not None
    out = json.dumps(
        {"state": state.value, "result": result, "error": error}, separators=(",", ":")
    )
    assert parent.steps == [replace(invoke, out=out, resolved=True)]
    assert_int_fields(parent.steps[0])
    assert parent.due_at is not None and now <= parent.due_at <= now_ms()
    assert parent.state is RunState.STARTED
    (claimed,) = await claim(backend, "w1", 10)
    assert claimed.id == "parent"


async def test_a_child_finishing_while_the_parent_is_leased(backend: Backend) -> None:
    await _parent_waiting_on_child(backend, keep_lease=True)
    await backend.finish_run(
        FinishRun(await lease(backend, "child", "w2"), RunState.SUCCESS, "1", None, at=now_ms())
    )
    assert await claim(backend, "w3", 10) == []  # still w1's
    await backend.release_run(ReleaseRun(await lease(backend, "parent", "w1"), None))
    (claimed,) = await claim(backend, "w3", 10)
    assert claimed.id == "parent" and claimed.steps[0].resolved


async def test_cancel_a_running_run(backend: Backend) -> None:
    steps = [
        step(0, StepState.SUCCESS, started_at=1_795_500_000_001, finished_at=1_795_500_000_002),
        step(1, StepState.PROGRESS, started_at=1_795_500_000_003, attempts=1),
        step(2, StepState.RETRY, attempts=2, error="flaky", wake_at=1_795_500_009_000),
        step(4, StepState.FAILED, error="gave up"),
    ]
    await create_claimed(backend, "r1", steps=steps)
    wait = waiting(3, "ev", started_at=1_795_500_000_004)
    await backend.wait_event(WaitEvent(await lease(backend, "r1", "w1"), wait))
    await backend.notify(
        Notify("kept", '"x"', "r1", at=now_ms())
    )  # lookback, dropped by the cancel
    now = now_ms()
    await backend.cancel_run(CancelRun("r1", at=now, emits=emits("r1", "canceled")))

    stored = await backend.get_run("r1")
    assert stored is not None
    assert (stored.state, stored.completed_at, stored.result, stored.error) == (
        RunState.CANCELED,
        now,
        None,
        "canceled",
    )
    assert (stored.due_at, stored.lease_owner, stored.lease_until) == (None, None, None)
    canceled = replace(wait, state=StepState.CANCELED, finished_at=now)
    assert stored.steps == [
        steps[0],
        replace(steps[1], state=StepState.CANCELED, finished_at=now),
        replace(steps[2], state=StepState.CANCELED, finished_at=now),
        canceled,
        steps[3],
    ]
    for each in stored.steps:
        assert_int_fields(each)
    assert await history(backend, "r1") == ["canceled"]
    # The lease holder finds out at its next write; nothing it sends is stored.
    with pytest.raises(LeaseLost):
        await backend.save_steps(
            SaveSteps(
                await lease(backend, "r1", "w1"),
                (step(1, StepState.SUCCESS),),
                emits=emits("r1", "late"),
            ),
        )
    assert await backend.renew_leases([await lease(backend, "r1", "w1")], LEASE) == []
    assert await history(backend, "r1") == ["canceled"]
    # Its waits are gone, and it is never claimed again.
    assert await backend.notify(Notify("ev", "null", None, at=now)) == 0
    assert await claim(backend, "w2", 10) == []
    page = await backend.list_runs(state="RUN_CANCELED", workflow=None, cursor=None, count=5)
    assert [r.id for r in page.runs] == ["r1"]


async def test_cancel_an_idle_run_and_a_child(backend: Backend) -> None:
    await backend.create_run(CreateRun(new_run("idle", due_at=None)))
    await backend.cancel_run(CancelRun("idle", at=now_ms()))
    stored = await backend.get_run("idle")
    assert stored is not None and stored.state is RunState.CANCELED

    invoke = await _parent_waiting_on_child(backend)
    await backend.cancel_run(CancelRun("child", at=now_ms()))
    parent = await backend.get_run("parent")
    assert parent is not None
    out = json.dumps(
        {"state": "RUN_CANCELED", "result": None, "error": "canceled"}, separators=(",", ":")
    )
    assert parent.steps == [replace(invoke, out=out, resolved=True)]


async def test_finish_as_canceled_cancels_open_steps(backend: Backend) -> None:
    await create_claimed(backend, "r1", steps=[step(0), step(1, StepState.SUCCESS)])
    now = now_ms()
    await backend.finish_run(
        FinishRun(await lease(backend, "r1", "w1"), RunState.CANCELED, None, "canceled", at=now)
    )
    stored = await backend.get_run("r1")
    assert stored is not None
    assert [s.state for s in stored.steps] == [StepState.CANCELED, StepState.SUCCESS]
    assert stored.steps[0].finished_at == now


async def test_cancel_refuses_finished_and_unknown_runs(backend: Backend) -> None:
    with pytest.raises(RunNotFound):
        await backend.cancel_run(
            CancelRun("wfr_missing", at=now_ms(), emits=emits("wfr_missing", "x"))
        )
    await create_claimed(backend, "r1")
    await backend.finish_run(
        FinishRun(await lease(backend, "r1", "w1"), RunState.FAILED, None, "boom", at=now_ms())
    )
    with pytest.raises(RunConflict, match="RUN_FAILED"):
        await backend.cancel_run(CancelRun("r1", at=now_ms(), emits=emits("r1", "x")))
    stored = await backend.get_run("r1")
    assert stored is not None and stored.state is RunState.FAILED and stored.error == "boom"
    assert await history(backend, "r1") == []
    assert await history(backend, "wfr_missing") == []


# -- the events reporting each change -----------------------------------------------------------


async def test_emits_follow_the_policy(backend: Backend) -> None:
    short = HistoryPolicy(max_length=2)
    await backend.create_run(
        CreateRun(new_run("r1"), emits=emits("r1", "a", "b", "c"), policy=short)
    )
    assert await history(backend, "r1") == ["b", "c"]
    await claim_one(backend, "r1")
    await backend.save_steps(
        SaveSteps(
            await lease(backend, "r1", "w1"), (step(0),), emits=emits("r1", "d"), policy=short
        )
    )
    assert await history(backend, "r1") == ["c", "d"]


async def test_emits_reach_live_listeners(backend: Backend) -> None:
    delivered: list[Message] = []
    four = asyncio.Event()

    class Sink:
        def deliver(self, messages: list[Message]) -> None:
            delivered.extend(messages)
            if len(delivered) >= 4:
                four.set()

        def lost(self, reason: str) -> None:
            raise AssertionError(reason)

    backend.set_sink(Sink())
    await backend.listen(["r1", "side"])
    await backend.create_run(CreateRun(new_run("r1"), emits=emits("r1", "a", "b")))
    await claim_one(backend, "r1")
    # Several channels in one call, in order.
    await backend.save_steps(
        SaveSteps(
            await lease(backend, "r1", "w1"),
            (step(0),),
            emits=emits("r1", "c") + emits("side", "s"),
        )
    )
    async with asyncio.timeout(5):
        await four.wait()
    assert [(m.channel, m.data["label"]) for m in delivered] == [
        ("r1", "a"),
        ("r1", "b"),
        ("r1", "c"),
        ("side", "s"),
    ]
    assert all(m.event == "workflow.update" for m in delivered)
    assert [m.id for m in delivered[:3]] == [m.id for m in await backend.read("r1")]


async def test_json_edits_keep_every_field_exact(backend: Backend) -> None:
    """Lua rewrites a step when a notify resolves it: nothing else of it may change."""
    wait = StepRecord(
        position=7,
        name='wait "for" ✓ / 😀 \\ end',
        type=StepType.WAIT,
        state=StepState.PROGRESS,
        attempts=3,
        started_at=1_795_500_000_123,
        finished_at=None,
        out=None,
        error="previous\ttry\n",
        wake_at=9_007_199_254_740_991,
        event_id="évent/1",
        child=None,
        resolved=False,
    )
    await create_claimed(backend, "r1")
    await backend.wait_event(WaitEvent(await lease(backend, "r1", "w1"), wait))
    raw = json.dumps({"big": 2**53 - 1, "float": 0.1, "text": "😀", "nested": {"empty": []}})
    assert await backend.notify(Notify("évent/1", raw, None, at=now_ms())) == 1
    stored = await backend.get_run("r1")
    assert stored is not None
    (got,) = stored.steps
    assert got == replace(wait, out=raw, resolved=True)
    assert {f.name: type(getattr(got, f.name)) for f in fields(got)} == {
        f.name: type(getattr(replace(wait, out=raw, resolved=True), f.name)) for f in fields(got)
    }
    assert got.out == raw  # byte for byte
