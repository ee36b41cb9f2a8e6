"""The recovery half of the storage contract (``RecoveryStore``, DESIGN §14): finding runs by
label and time, resuming a failed or canceled run in place, deleting a finished run with its
history, and listing the steps that wait for an event. In memory, SQLite, real Redis and real
PostgreSQL."""

from __future__ import annotations

from dataclasses import replace

import pytest

from stepstream.backends import Backend
from stepstream.backends.base import (
    AcquireSlot,
    CancelRun,
    CreateRun,
    FinishRun,
    Notify,
    ReleaseRun,
    ResumeRun,
    RunFilter,
    SaveSteps,
    Waiter,
    WaitEvent,
)
from stepstream.errors import LeaseLost, RunConflict, RunNotFound
from stepstream.records import FAILURE_POSITIONS, FlowLimits, RunState, StepState
from tests.backends.test_runs_contract import (
    claim,
    claim_one,
    create_claimed,
    emits,
    history,
    lease,
    new_run,
    now_ms,
    step,
    waiting,
)
from tests.conftest import STORES

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("backend_url", STORES, indirect=True)]

T0 = 1_795_500_000_000


async def ids(backend: Backend, where: RunFilter, count: int = 100) -> list[str]:
    page = await backend.find_runs(where, cursor=None, count=count)
    assert all(run.steps == [] for run in page.runs)
    return [run.id for run in page.runs]


async def fail(backend: Backend, run_id: str, *, error: str = "boom") -> None:
    await backend.finish_run(
        FinishRun(await lease(backend, run_id, "w1"), RunState.FAILED, None, error, at=now_ms())
    )


# -- labels, time ranges ----------------------------------------------------------------------


async def test_labels_and_origins_round_trip(backend: Backend) -> None:
    run = new_run(
        "wfr_l",
        labels=["tenant:ünï", "nightly"],
        restarted_from="wfr_a",
        forked_from="wfr_b",
    )
    await backend.create_run(CreateRun(run))
    assert await backend.get_run("wfr_l") == run
    (listed,) = (await backend.list_runs(state=None, workflow=None, cursor=None, count=5)).runs
    assert (listed.labels, listed.restarted_from, listed.forked_from) == (
        ["tenant:ünï", "nightly"],
        "wfr_a",
        "wfr_b",
    )


async def test_find_runs_by_label_state_and_workflow(backend: Backend) -> None:
    plan = [
        ("r0", "a", ["x"]),
        ("r1", "b", ["x", "y"]),
        ("r2", "a", []),
        ("r3", "a", ["y"]),
        ("r4", "b", ["x"]),
        ("r5", "a", ["x"]),
    ]
    for run_id, workflow, labels in plan:
        due = 0 if run_id == "r4" else None
        await backend.create_run(
            CreateRun(new_run(run_id, workflow=workflow, labels=labels, due_at=due))
        )
    await claim(backend, "w1", 10)
    await fail(backend, "r4")
    await backend.cancel_run(CancelRun("r5", at=now_ms()))

    assert await ids(backend, RunFilter(label="x")) == ["r5", "r4", "r1", "r0"]
    assert await ids(backend, RunFilter(label="y")) == ["r3", "r1"]
    assert await ids(backend, RunFilter(label="nope")) == []
    assert await ids(backend, RunFilter(label="x", workflow="a")) == ["r5", "r0"]
    assert await ids(backend, RunFilter(label="x", state="RUN_FAILED")) == ["r4"]
    assert await ids(backend, RunFilter(label="x", state="RUN_STARTED")) == ["r1", "r0"]
    assert await ids(backend, RunFilter(label="x", state="RUN_CANCELED", workflow="a")) == ["r5"]
    assert await ids(backend, RunFilter(label="y", workflow="b", state="RUN_FAILED")) == []
    assert await ids(backend, RunFilter()) == ["r5", "r4", "r3", "r2", "r1", "r0"]

    first = await backend.find_runs(RunFilter(label="x"), cursor=None, count=3)
    assert [run.id for run in first.runs] == ["r5", "r4", "r1"] and first.cursor is not None
    rest = await backend.find_runs(RunFilter(label="x"), cursor=first.cursor, count=3)
    assert [run.id for run in rest.runs] == ["r0"] and rest.cursor is None


async def test_find_runs_by_creation_time(backend: Backend) -> None:
    for i in range(6):
        labels = ["even"] if i % 2 == 0 else []
        workflow = "a" if i < 3 else "b"
        run = new_run(f"r{i}", created_at=T0 + i * 1000, labels=labels, workflow=workflow)
        await backend.create_run(CreateRun(run))
    # Bounds are exclusive.
    assert await ids(backend, RunFilter(created_after=T0 + 1000)) == ["r5", "r4", "r3", "r2"]
    assert await ids(backend, RunFilter(created_before=T0 + 2000)) == ["r1", "r0"]
    both = RunFilter(created_after=T0, created_before=T0 + 4000)
    assert await ids(backend, both) == ["r3", "r2", "r1"]
    assert await ids(backend, replace(both, label="even")) == ["r2"]
    assert await ids(backend, replace(both, workflow="b")) == ["r3"]
    assert await ids(backend, replace(both, state="RUN_STARTED", workflow="a")) == ["r2", "r1"]
    assert await ids(backend, RunFilter(created_after=T0 + 9000)) == []
    assert await ids(backend, RunFilter(created_before=T0)) == []
    page = await backend.find_runs(RunFilter(created_after=T0), cursor=None, count=2)
    assert [run.id for run in page.runs] == ["r5", "r4"] and page.cursor is not None
    page = await backend.find_runs(RunFilter(created_after=T0), cursor=page.cursor, count=2)
    assert [run.id for run in page.runs] == ["r3", "r2"] and page.cursor is not None
    page = await backend.find_runs(RunFilter(created_after=T0), cursor=page.cursor, count=2)
    assert [run.id for run in page.runs] == ["r1"] and page.cursor is None


# -- resume -----------------------------------------------------------------------------------


async def test_resume_a_failed_run_keeps_only_what_succeeded(backend: Backend) -> None:
    done = step(0, StepState.SUCCESS, attempts=1, out='"kept"', started_at=T0, finished_at=T0)
    steps = [
        done,
        step(1, StepState.FAILED, attempts=3, error="KeyError: 'userId'"),
        step(FAILURE_POSITIONS, StepState.SUCCESS, name="notify-admin", out='"sent"'),
    ]
    await create_claimed(backend, "r1", steps=steps, labels=["keep"], timeout_at=T0)
    before = await backend.get_run("r1")
    assert before is not None
    old = await lease(backend, "r1", "w1")
    await backend.release_run(
        ReleaseRun(old, 0, {"phase": "failure", "failure_attempts": 1, "failed_step": "step-1"})
    )
    (claimed,) = await claim(backend, "w1", 1)
    await fail(backend, "r1", error="KeyError: 'userId'")

    start = now_ms()
    again_by = start + 60_000
    await backend.resume_run(
        ResumeRun("r1", at=start, timeout_at=again_by, emits=emits("r1", "resumed"))
    )
    got = await backend.get_run("r1")
    assert got is not None
    assert got.state is RunState.STARTED and got.steps == [done]
    assert (got.completed_at, got.result, got.error, got.failed_step) == (None, None, None, None)
    assert (got.phase, got.failure_attempts, got.labels) == ("run", 0, ["keep"])
    assert got.timeout_at == again_by
    assert got.lease_owner is None and got.due_at is not None
    assert start - 5_000 <= got.due_at <= now_ms()
    assert await history(backend, "r1") == ["resumed"]
    listed = await ids(backend, RunFilter(state="RUN_STARTED"))
    assert listed == ["r1"] and await ids(backend, RunFilter(state="RUN_FAILED")) == []

    (again,) = await claim(backend, "w2", 5)
    assert again.id == "r1" and again.epoch > claimed.epoch and again.steps == [done]
    with pytest.raises(LeaseLost):  # the claims before the resume hold nothing
        await backend.save_steps(SaveSteps(old, (step(1, StepState.SUCCESS),)))
    await backend.save_steps(
        SaveSteps(await lease(backend, "r1", "w2"), (step(1, StepState.SUCCESS, out="2"),))
    )
    await backend.finish_run(
        FinishRun(await lease(backend, "r1", "w2"), RunState.SUCCESS, "2", None, at=now_ms())
    )
    finished = await backend.get_run("r1")
    assert finished is not None and finished.state is RunState.SUCCESS and finished.result == "2"


async def test_resume_a_canceled_run_drops_its_waits(backend: Backend) -> None:
    done = step(0, StepState.SUCCESS, out="1")
    await create_claimed(backend, "r1", steps=[done])
    await backend.wait_event(WaitEvent(await lease(backend, "r1", "w1"), waiting(1, "approve")))
    await backend.cancel_run(CancelRun("r1", at=now_ms()))
    await backend.resume_run(ResumeRun("r1", at=now_ms()))
    got = await backend.get_run("r1")
    assert got is not None and got.state is RunState.STARTED and got.steps == [done]
    assert got.timeout_at is None
    assert await backend.list_waiters("approve") == []
    assert await backend.notify(Notify("approve", "true", None, at=now_ms())) == 0
    (claimed,) = await claim(backend, "w2", 5)
    assert claimed.id == "r1"


async def test_resume_refuses_running_succeeded_and_unknown_runs(backend: Backend) -> None:
    await create_claimed(backend, "running")
    await create_claimed(backend, "done")
    await backend.finish_run(
        FinishRun(await lease(backend, "done", "w1"), RunState.SUCCESS, "1", None, at=now_ms())
    )
    for run_id, state in (("running", RunState.STARTED), ("done", RunState.SUCCESS)):
        before = await backend.get_run(run_id)
        with pytest.raises(RunConflict, match=run_id):
            await backend.resume_run(ResumeRun(run_id, at=now_ms(), emits=emits(run_id, "x")))
        after = await backend.get_run(run_id)
        assert after == before and after is not None and after.state is state
        assert await history(backend, run_id) == []
    with pytest.raises(RunNotFound):
        await backend.resume_run(ResumeRun("wfr_nope", at=now_ms()))


async def test_resume_may_replace_the_runs_headers_and_flow_control(backend: Backend) -> None:
    """What the QStash gateway's DLQ resume with overrides needs: the resumed run's headers
    and flow limits are the new ones, in the same atomic resume; without them, kept."""
    old_flow = FlowLimits("old-key", parallelism=1)
    await create_claimed(backend, "r1", headers={"upstash-retries": "0"}, flow=old_flow)
    held = await lease(backend, "r1", "w1")
    assert (await backend.acquire_slot(AcquireSlot(held, old_flow, step(0)))).granted
    await fail(backend, "r1")

    new_flow = FlowLimits("new-key", parallelism=2, rate=5, period_ms=60_000)
    await backend.resume_run(
        ResumeRun("r1", at=now_ms(), headers={"upstash-retries": "4"}, flow=new_flow)
    )
    got = await backend.get_run("r1")
    assert got is not None and got.state is RunState.STARTED
    assert (got.headers, got.flow) == ({"upstash-retries": "4"}, new_flow)
    (claimed,) = await claim(backend, "w2", 5)
    assert claimed.headers == {"upstash-retries": "4"} and claimed.flow == new_flow
    again = await lease(backend, "r1", "w2")
    assert (await backend.acquire_slot(AcquireSlot(again, new_flow, step(0)))).granted
    # The slot taken under the former key went with the claim that took it.
    other = await create_claimed(backend, "r2", owner="w3", flow=old_flow)
    other_lease = await lease(backend, other.id, "w3")
    assert (await backend.acquire_slot(AcquireSlot(other_lease, old_flow, step(0)))).granted

    await backend.finish_run(FinishRun(again, RunState.FAILED, None, "boom", at=now_ms()))
    await backend.resume_run(ResumeRun("r1", at=now_ms()))
    kept = await backend.get_run("r1")
    assert kept is not None and (kept.headers, kept.flow) == ({"upstash-retries": "4"}, new_flow)


# -- delete -----------------------------------------------------------------------------------


async def test_delete_a_finished_run_and_its_history(backend: Backend) -> None:
    await backend.create_run(
        CreateRun(new_run("r1", labels=["gone"]), emits=emits("r1", "runStart"))
    )
    await backend.create_run(
        CreateRun(new_run("r2", labels=["gone"], due_at=None), emits=emits("r2", "s"))
    )
    await claim_one(backend, "r1", "w1")
    await backend.save_steps(
        SaveSteps(await lease(backend, "r1", "w1"), (step(0, StepState.SUCCESS),))
    )
    await backend.notify(Notify("late", '"x"', "r1", at=now_ms()))  # kept for lookback
    await fail(backend, "r1")
    assert await backend.latest_id("r1") is not None

    await backend.delete_run("r1")
    assert await backend.get_run("r1") is None
    assert await backend.read("r1") == [] and await backend.latest_id("r1") is None
    assert await ids(backend, RunFilter()) == ["r2"]
    assert await ids(backend, RunFilter(label="gone")) == ["r2"]
    assert await ids(backend, RunFilter(state="RUN_FAILED")) == []
    assert await history(backend, "r2") == ["s"]
    with pytest.raises(RunNotFound):
        await backend.delete_run("r1")
    # The id is free again; nothing of the old run comes back with it.
    await backend.create_run(CreateRun(new_run("r1", due_at=None)))
    again = await backend.get_run("r1")
    assert again is not None and again.steps == [] and again.labels == []
    assert await history(backend, "r1") == []


async def test_delete_refuses_a_running_run(backend: Backend) -> None:
    await backend.create_run(CreateRun(new_run("r1"), emits=emits("r1", "runStart")))
    with pytest.raises(RunConflict, match="r1"):
        await backend.delete_run("r1")
    assert await backend.get_run("r1") is not None
    assert await history(backend, "r1") == ["runStart"]
    with pytest.raises(RunNotFound):
        await backend.delete_run("wfr_nope")


# -- waiters ----------------------------------------------------------------------------------


async def test_list_waiters(backend: Backend) -> None:
    deadline = now_ms() + 60_000  # ahead: a wait past its deadline wakes on no notify
    for run_id in ("r1", "r2", "r3"):
        await create_claimed(backend, run_id)
    await backend.wait_event(
        WaitEvent(
            await lease(backend, "r1", "w1"),
            waiting(2, "approve", name="wait-for-approval", wake_at=deadline),
        )
    )
    await backend.wait_event(WaitEvent(await lease(backend, "r2", "w1"), waiting(0, "approve")))
    await backend.wait_event(WaitEvent(await lease(backend, "r3", "w1"), waiting(0, "other")))
    found = await backend.list_waiters("approve")
    assert sorted(found, key=lambda w: w.run_id) == [
        Waiter("r1", 2, "wait-for-approval", deadline),
        Waiter("r2", 0, "step-0", None),
    ]
    assert await backend.list_waiters("nobody") == []

    await backend.cancel_run(CancelRun("r2", at=now_ms()))
    assert await backend.list_waiters("approve") == [Waiter("r1", 2, "wait-for-approval", deadline)]
    assert await backend.notify(Notify("approve", "1", None, at=now_ms())) == 1
    assert await backend.list_waiters("approve") == []
    assert [w.run_id for w in await backend.list_waiters("other")] == ["r3"]
