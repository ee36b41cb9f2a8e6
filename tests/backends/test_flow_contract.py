"""The flow control and entries half of the storage contract (``FlowStore``, ``EntryStore``):
in memory, SQLite, real Redis and real PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest

from stepstream.backends import Backend
from stepstream.backends.base import (
    AcquireSlot,
    Budget,
    CancelRun,
    CreateRun,
    FinishRun,
    ReleaseRun,
    ReleaseSlot,
    SaveSteps,
)
from stepstream.errors import LeaseLost, RunConflict
from stepstream.records import FlowLimits, Lease, RunRecord, RunState, StepState
from tests.backends.test_runs_contract import (
    claim,
    claim_one,
    new_run,
    now_ms,
    step,
)
from tests.conftest import STORES

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("backend_url", STORES, indirect=True)]

TWO = FlowLimits("customer-1", parallelism=2)


async def started(backend: Backend, run_id: str, *, owner: str = "w1", **kwargs: object) -> Lease:
    await backend.create_run(CreateRun(new_run(run_id, **kwargs)))  # type: ignore[arg-type]
    run = await claim_one(backend, run_id, owner)
    return Lease(run_id, owner, run.epoch)


async def acquire(backend: Backend, lease: Lease, limits: FlowLimits, position: int = 0) -> Budget:
    return await backend.acquire_slot(
        AcquireSlot(lease, limits, step(position, waiting_for="flowControl"))
    )


async def run_of(backend: Backend, run_id: str) -> RunRecord:
    found = await backend.get_run(run_id)
    assert found is not None
    return found


async def test_parallelism_grants_up_to_the_limit_then_registers_a_waiter(backend: Backend) -> None:
    leases = [await started(backend, f"wfr_p{i}") for i in range(3)]
    assert (await acquire(backend, leases[0], TWO)).granted
    assert (await acquire(backend, leases[1], TWO)).granted
    before = now_ms()
    denied = await acquire(backend, leases[2], TWO)
    assert not denied.granted
    # No rate limit: look again when the soonest holder's lease could have expired.
    assert denied.retry_at is not None and denied.retry_at > before + 20_000
    third = await run_of(backend, "wfr_p2")
    assert third.steps[0].waiting_for == "flowControl"
    assert third.steps[0].state is StepState.PROGRESS and not third.steps[0].resolved


async def test_release_wakes_the_longest_waiting_run(backend: Backend) -> None:
    holder = await started(backend, "wfr_h")
    one = FlowLimits("k", parallelism=1)
    assert (await acquire(backend, holder, one)).granted
    first, second = await started(backend, "wfr_w1"), await started(backend, "wfr_w2")
    assert not (await acquire(backend, first, one)).granted
    await asyncio.sleep(0.005)
    assert not (await acquire(backend, second, one)).granted
    for lease in (first, second):  # both give their run up until the fallback look
        await backend.release_run(ReleaseRun(lease, now_ms() + 10**9))
    assert await backend.release_slot(ReleaseSlot("wfr_h", "k", 0)) == 1
    woken = await run_of(backend, "wfr_w1")
    assert woken.steps[0].resolved and woken.due_at is not None and woken.due_at <= now_ms()
    still = await run_of(backend, "wfr_w2")
    assert not still.steps[0].resolved and still.due_at is not None and still.due_at > now_ms()
    (claimed,) = await claim(backend, "w2", 10)
    assert claimed.id == "wfr_w1"


async def test_a_woken_waiter_still_leased_is_due_when_it_releases(backend: Backend) -> None:
    """The waiter may not have given its run up yet when the slot frees: its own release must
    then make it due now, not at the fallback it planned."""
    one = FlowLimits("k", parallelism=1)
    holder, waiter = await started(backend, "wfr_h"), await started(backend, "wfr_w")
    assert (await acquire(backend, holder, one)).granted
    assert not (await acquire(backend, waiter, one)).granted
    assert await backend.release_slot(ReleaseSlot("wfr_h", "k", 0)) == 1
    await backend.release_run(ReleaseRun(waiter, now_ms() + 10**9))
    found = await run_of(backend, "wfr_w")
    assert found.due_at is not None and found.due_at <= now_ms()


async def test_release_skips_waiters_that_moved_on(backend: Backend) -> None:
    one = FlowLimits("k", parallelism=1)
    holder = await started(backend, "wfr_h")
    assert (await acquire(backend, holder, one)).granted
    gone, live = await started(backend, "wfr_gone"), await started(backend, "wfr_live")
    assert not (await acquire(backend, gone, one)).granted
    await asyncio.sleep(0.005)
    assert not (await acquire(backend, live, one)).granted
    await backend.cancel_run(CancelRun("wfr_gone", at=now_ms()))
    await backend.release_run(ReleaseRun(live, None))
    assert await backend.release_slot(ReleaseSlot("wfr_h", "k", 0)) == 1
    assert (await run_of(backend, "wfr_live")).steps[0].resolved
    assert await backend.release_slot(ReleaseSlot("wfr_h", "k", 0)) == 0  # nobody left


async def test_a_slot_counts_only_while_its_claim_holds_the_run(backend: Backend) -> None:
    """A worker that died holding a slot: once its lease is over, the slot is free again."""
    one = FlowLimits("k", parallelism=1)
    await backend.create_run(CreateRun(new_run("wfr_dead")))
    (dead,) = await claim(backend, "w-dead", 10, lease_ms=300)
    assert (await acquire(backend, Lease("wfr_dead", "w-dead", dead.epoch), one)).granted
    other = await started(backend, "wfr_next")
    assert not (await acquire(backend, other, one)).granted
    await asyncio.sleep(0.4)
    assert (await acquire(backend, other, one)).granted


async def test_finished_and_released_runs_hold_no_slot(backend: Backend) -> None:
    one = FlowLimits("k", parallelism=1)
    a = await started(backend, "wfr_a")
    assert (await acquire(backend, a, one)).granted
    await backend.finish_run(FinishRun(a, RunState.SUCCESS, "1", None, at=now_ms()))
    b = await started(backend, "wfr_b")
    assert (await acquire(backend, b, one)).granted
    await backend.release_run(ReleaseRun(b, None))  # suspended: its claim ended
    c = await started(backend, "wfr_c")
    assert (await acquire(backend, c, one)).granted


async def test_the_same_step_acquiring_again_does_not_count_twice(backend: Backend) -> None:
    one = FlowLimits("k", parallelism=1)
    a = await started(backend, "wfr_a")
    assert (await acquire(backend, a, one)).granted
    assert (await acquire(backend, a, one)).granted  # position 0 again (a retry)
    assert not (await acquire(backend, a, one, position=1)).granted  # a parallel sibling


async def test_rate_allows_so_many_starts_per_period(backend: Backend) -> None:
    rate = FlowLimits("r", rate=2, period_ms=400)
    lease = await started(backend, "wfr_r")
    began = now_ms()
    assert (await acquire(backend, lease, rate, 0)).granted
    assert (await acquire(backend, lease, rate, 1)).granted
    denied = await acquire(backend, lease, rate, 2)
    assert not denied.granted
    assert denied.retry_at is not None and began + 400 <= denied.retry_at <= now_ms() + 400
    await asyncio.sleep(max(0, denied.retry_at - now_ms()) / 1000 + 0.02)
    assert (await acquire(backend, lease, rate, 2)).granted


async def test_keys_are_independent(backend: Backend) -> None:
    a, b = await started(backend, "wfr_a"), await started(backend, "wfr_b")
    assert (await acquire(backend, a, FlowLimits("x", parallelism=1))).granted
    assert (await acquire(backend, b, FlowLimits("y", parallelism=1))).granted


async def test_acquire_is_fenced(backend: Backend) -> None:
    lease = await started(backend, "wfr_a")
    stale = Lease("wfr_a", "w1", lease.epoch - 1)
    with pytest.raises(LeaseLost):
        await acquire(backend, stale, TWO)


async def test_concurrent_acquires_never_exceed_parallelism(backend: Backend) -> None:
    leases = [await started(backend, f"wfr_c{i}") for i in range(12)]
    limits = FlowLimits("c", parallelism=3)
    answers = await asyncio.gather(*(acquire(backend, lease, limits) for lease in leases))
    assert sum(answer.granted for answer in answers) == 3


async def test_entries(backend: Backend) -> None:
    assert await backend.get_entry("schedule", "nightly") is None
    await backend.put_entry("schedule", "nightly", '{"cron":"0 3 * * *"}', create=True)
    with pytest.raises(RunConflict):
        await backend.put_entry("schedule", "nightly", '{"cron":"other"}', create=True)
    assert await backend.get_entry("schedule", "nightly") == '{"cron":"0 3 * * *"}'
    await backend.put_entry("schedule", "nightly", '{"cron":"0 4 * * *"}')
    await backend.put_entry("schedule", "hourly", '{"cron":"0 * * * *"}')
    await backend.put_entry("paused", "nightly", "true")
    assert await backend.list_entries("schedule") == {
        "nightly": '{"cron":"0 4 * * *"}',
        "hourly": '{"cron":"0 * * * *"}',
    }
    assert await backend.delete_entry("schedule", "nightly")
    assert not await backend.delete_entry("schedule", "nightly")
    assert await backend.list_entries("schedule") == {"hourly": '{"cron":"0 * * * *"}'}
    assert await backend.list_entries("paused") == {"nightly": "true"}


async def test_a_run_keeps_its_flow_limits(backend: Backend) -> None:
    limits = FlowLimits("u-1", parallelism=2, rate=10, period_ms=60_000)
    await backend.create_run(CreateRun(new_run("wfr_f", flow=limits)))
    assert (await run_of(backend, "wfr_f")).flow == limits
    (claimed,) = await claim(backend, "w1", 10)
    assert claimed.flow == limits
    page = await backend.list_runs(state=None, workflow=None, cursor=None, count=10)
    assert page.runs[0].flow == limits


async def test_saving_a_step_can_give_its_slot_back(backend: Backend) -> None:
    """The step's outcome and the slot's release in one unit: the waiter is woken by it."""
    one = FlowLimits("k", parallelism=1)
    holder, waiter = await started(backend, "wfr_h"), await started(backend, "wfr_w")
    assert (await acquire(backend, holder, one)).granted
    assert not (await acquire(backend, waiter, one)).granted
    await backend.release_run(ReleaseRun(waiter, None))
    done = step(0, StepState.SUCCESS, out="1")
    assert await backend.save_steps(SaveSteps(holder, (done,))) == 0  # no release asked
    assert not (await run_of(backend, "wfr_w")).steps[0].resolved
    release = ReleaseSlot("wfr_h", "k", 0)
    assert await backend.save_steps(SaveSteps(holder, (done,), release=release)) == 1
    assert (await run_of(backend, "wfr_h")).steps[0].state is StepState.SUCCESS
    woken = await run_of(backend, "wfr_w")
    assert woken.steps[0].resolved and woken.due_at is not None and woken.due_at <= now_ms()
    assert (await acquire(backend, holder, one, position=1)).granted  # the slot is free
