"""Workers: leases kept alive by heartbeats, several workers sharing one store, delayed
triggers as durable timers."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from stepstream import WorkflowContext, Workflows
from stepstream.records import Lease
from tests.workflow.helpers import Harness, check_history, updates, wait_for_state

pytestmark = pytest.mark.anyio


def register_steps(
    workflows: Workflows, ran: Counter[tuple[str, str]], body_seconds: float
) -> None:
    async def body(run_id: str, name: str) -> str:
        await asyncio.sleep(body_seconds)
        ran[run_id, name] += 1
        return name

    @workflows.workflow("three-steps", retry_delay=0.01)
    async def three_steps(context: WorkflowContext) -> list[str]:
        run_id = context.workflow_run_id
        return [await context.run(name, body, run_id, name) for name in ("a", "b", "c")]


async def test_a_step_longer_than_the_lease_is_not_taken_over(harness: Harness) -> None:
    """Heartbeats renew the lease while a step runs, so another worker never takes the run."""
    ran: Counter[tuple[str, str]] = Counter()
    first, second = harness.workflows(), harness.workflows()
    register_steps(first, ran, body_seconds=0.7)
    register_steps(second, ran, body_seconds=0.7)
    await harness.worker(first, lease=0.3)
    await harness.worker(second, lease=0.3)
    client = first.client()
    run_id = await client.trigger("three-steps")
    log = await wait_for_state(client, run_id)

    assert log["workflowState"] == "RUN_SUCCESS", log["error"]
    assert ran == {(run_id, "a"): 1, (run_id, "b"): 1, (run_id, "c"): 1}
    check_history(log, await updates(first, run_id))


async def test_workers_share_runs_without_running_a_step_twice(harness: Harness) -> None:
    ran: Counter[tuple[str, str]] = Counter()
    registries = [harness.workflows() for _ in range(3)]
    for workflows in registries:
        register_steps(workflows, ran, body_seconds=0.01)
        await harness.worker(workflows, concurrency=5)
    client = registries[0].client()
    run_ids = [await client.trigger("three-steps") for _ in range(30)]

    for run_id in run_ids:
        log = await wait_for_state(client, run_id)
        assert log["workflowState"] == "RUN_SUCCESS", log["error"]
        assert log["workflowRunResponse"] == ["a", "b", "c"]
        check_history(log, await updates(registries[0], run_id))
    assert set(ran.values()) == {1} and len(ran) == 90


async def test_delayed_trigger(harness: Harness) -> None:
    ran: Counter[tuple[str, str]] = Counter()
    workflows = harness.workflows()
    register_steps(workflows, ran, body_seconds=0)
    await harness.worker(workflows)
    client = workflows.client()
    run_id = await client.trigger("three-steps", delay=0.3)
    log = await wait_for_state(client, run_id)

    assert log["workflowState"] == "RUN_SUCCESS", log["error"]
    assert log["steps"][0]["startedAt"] >= log["workflowRunCreatedAt"] + 300


async def test_a_slow_answer_for_a_locked_run_never_dates_its_lease_back() -> None:
    """A run another transaction held at a heartbeat is answered apart; an answer that took
    long must not record its lease as confirmed when it was asked, over the newer
    confirmations of the heartbeats meanwhile (the run's next step would then ask storage
    again, for nothing, and wait for its turn to)."""
    workflows = Workflows(backend="memory://slow-answer")
    go_on = asyncio.Event()

    @workflows.workflow("hold")
    async def hold(context: WorkflowContext) -> None:
        async def body() -> None:
            await go_on.wait()

        await context.run("body", body)

    await workflows.client().trigger("hold", workflow_run_id="x")
    worker = workflows.worker(lease=0.6, poll_interval=0.05)
    backend = worker.engine.backend
    renew = backend.renew_leases
    busy_once = [True]

    async def renew_now(leases: list[Lease], lease_ms: int) -> tuple[list[str], list[Lease]]:
        if busy_once and leases:  # as PostgreSQL answers a run whose row is locked
            busy_once.clear()
            return [], list(leases)
        return await renew(leases, lease_ms), []

    async def renew_slowly(leases: list[Lease], lease_ms: int) -> list[str]:
        await asyncio.sleep(0.9)  # answered between two heartbeats (every 0.2 s)
        return await renew(leases, lease_ms)

    backend.renew_leases_now, backend.renew_leases = renew_now, renew_slowly  # type: ignore[method-assign]
    await worker.start()
    try:
        confirmed: list[float] = []
        for _ in range(80):
            await asyncio.sleep(0.025)
            if "wfr_x" in worker._confirmed:
                confirmed.append(worker._confirmed["wfr_x"])
        assert not busy_once  # the run was answered apart once
        assert confirmed == sorted(confirmed)
    finally:
        go_on.set()
        await worker.stop(grace=2)
        await workflows.aclose()
