"""Canceling a run from outside (during a sleep, during a step) and from inside
(``context.cancel()``)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from stepstream import RunConflict, RunNotFound, Worker, WorkflowContext
from tests.workflow.helpers import (
    Harness,
    check_history,
    steps_by_name,
    updates,
    wait_for_state,
    wait_for_step,
    wait_until,
)

pytestmark = pytest.mark.anyio


async def test_cancel_during_a_sleep(harness: Harness) -> None:
    workflows = harness.workflows()
    ran: Counter[str] = Counter()
    failures: list[BaseException] = []

    async def on_failure(context: WorkflowContext, error: BaseException) -> None:
        failures.append(error)

    @workflows.workflow("sleepy", retry_delay=0.01, failure_function=on_failure)
    async def sleepy(context: WorkflowContext) -> None:
        await context.run("before", lambda: ran.update(["before"]))
        await context.sleep("nap", 1.0)
        await context.run("after", lambda: ran.update(["after"]))

    worker = await harness.worker(workflows)
    client = workflows.client()
    run_id = await client.trigger("sleepy")
    await wait_for_step(client, run_id, "nap", {"STEP_PROGRESS"})
    await client.cancel(run_id)
    log = await client.logs(run_id)

    assert log["workflowState"] == "RUN_CANCELED"
    assert log["workflowRunCompletedAt"] is not None
    steps = steps_by_name(log)
    assert steps["before"]["state"] == "STEP_SUCCESS"
    assert steps["nap"]["state"] == "STEP_CANCELED"
    assert "after" not in steps
    # Past the sleep's end the run is not picked up again.
    nap_end = steps["nap"]["startedAt"] / 1000 + 1.0
    await asyncio.sleep(max(0, nap_end - time.time()) + 0.3)
    await wait_until(lambda: idle(worker), what="the worker to be idle")
    log = await client.logs(run_id)
    assert log["workflowState"] == "RUN_CANCELED"
    assert "after" not in steps_by_name(log)
    assert ran == {"before": 1}
    assert failures == []
    events = await updates(workflows, run_id)
    check_history(log, events)
    assert events[-1]["status"] == "canceled"

    with pytest.raises(RunConflict):
        await client.cancel(run_id)
    with pytest.raises(RunNotFound):
        await client.cancel("wfr_no-such-run")


async def idle(worker: Worker) -> bool:
    return not worker.active


async def test_cancel_while_a_step_runs(harness: Harness) -> None:
    """The step in flight finishes in the worker, but its result is not recorded and nothing
    after it runs."""
    workflows = harness.workflows()
    ran: Counter[str] = Counter()
    started, release = asyncio.Event(), asyncio.Event()

    async def slow() -> str:
        ran["slow"] += 1
        started.set()
        await release.wait()
        return "slow-done"

    @workflows.workflow("busy", retry_delay=0.01)
    async def busy(context: WorkflowContext) -> None:
        await context.run("slow", slow)
        await context.run("after", lambda: ran.update(["after"]))

    worker = await harness.worker(workflows, lease=0.6)
    client = workflows.client()
    run_id = await client.trigger("busy")
    await asyncio.wait_for(started.wait(), 20)
    await wait_for_step(client, run_id, "slow", {"STEP_PROGRESS"})
    await client.cancel(run_id)
    release.set()
    await wait_until(lambda: idle(worker), what="the worker to let the run go")

    log = await client.logs(run_id)
    assert log["workflowState"] == "RUN_CANCELED"
    assert steps_by_name(log)["slow"]["state"] == "STEP_CANCELED"
    assert "after" not in steps_by_name(log)
    assert ran == {"slow": 1}
    check_history(log, await updates(workflows, run_id))


async def test_context_cancel(harness: Harness) -> None:
    workflows = harness.workflows()
    ran: Counter[str] = Counter()
    failures: list[BaseException] = []

    async def on_failure(context: WorkflowContext, error: BaseException) -> None:
        failures.append(error)

    @workflows.workflow("self-cancel", retry_delay=0.01, failure_function=on_failure)
    async def self_cancel(context: WorkflowContext) -> None:
        await context.run("before", lambda: ran.update(["before"]))
        try:
            context.cancel()
        except Exception:  # control flow must not be swallowed by user code
            ran["swallowed"] += 1
        await context.run("after", lambda: ran.update(["after"]))

    await harness.worker(workflows)
    client = workflows.client()
    run_id = await client.trigger("self-cancel")
    log = await wait_for_state(client, run_id)

    assert log["workflowState"] == "RUN_CANCELED"
    assert ran == {"before": 1}
    assert failures == []
    assert [s["stepName"] for s in log["steps"]] == ["before"]
    events = await updates(workflows, run_id)
    check_history(log, events)
    assert events[-1]["status"] == "canceled"
