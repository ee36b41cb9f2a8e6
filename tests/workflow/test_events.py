"""``wait_for_event`` and ``notify``: delivery after the wait, lookback before it, timeouts,
and the errors of notifying nobody, an unknown run or a finished one."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from stepstream import NoWaiters, RunConflict, RunNotFound, WorkflowContext, Workflows
from tests.workflow.helpers import (
    Harness,
    check_history,
    steps_by_name,
    updates,
    wait_for_state,
    wait_for_step,
)

pytestmark = pytest.mark.anyio


def register_waiter(workflows: Workflows, ran: Counter[str], timeout: float = 30) -> None:
    @workflows.workflow("waiter", retry_delay=0.01)
    async def waiter(context: WorkflowContext) -> dict[str, Any]:
        await context.run("before", lambda: ran.update(["before"]))
        event_id = context.request_payload["event"]
        data, timed_out = await context.wait_for_event("approval", event_id, timeout=timeout)
        await context.run("after", lambda: ran.update(["after"]))
        return {"data": data, "timed_out": timed_out}


async def test_notify_after_the_wait(harness: Harness) -> None:
    workflows = harness.workflows()
    ran: Counter[str] = Counter()
    register_waiter(workflows, ran)
    await harness.worker(workflows)
    client = workflows.client()
    run_id = await client.trigger("waiter", {"event": "approve-1"})
    await wait_for_step(client, run_id, "approval", {"STEP_PROGRESS"})

    assert await client.notify("approve-1", {"by": "ada"}) == 1
    log = await wait_for_state(client, run_id)

    assert log["workflowState"] == "RUN_SUCCESS", log["error"]
    assert log["workflowRunResponse"] == {"data": {"by": "ada"}, "timed_out": False}
    approval = steps_by_name(log)["approval"]
    assert approval["stepType"] == "Wait" and approval["state"] == "STEP_SUCCESS"
    assert approval["out"] == {"data": {"by": "ada"}, "timed_out": False}
    assert ran == {"before": 1, "after": 1}
    check_history(log, await updates(workflows, run_id))
    with pytest.raises(NoWaiters):  # consumed: nobody waits for it anymore
        await client.notify("approve-1", {"by": "again"})


async def test_notify_wakes_every_waiting_run(harness: Harness) -> None:
    workflows = harness.workflows()
    register_waiter(workflows, Counter())
    await harness.worker(workflows)
    client = workflows.client()
    run_ids = [await client.trigger("waiter", {"event": "broadcast"}) for _ in range(3)]
    for run_id in run_ids:
        await wait_for_step(client, run_id, "approval", {"STEP_PROGRESS"})

    assert await client.notify("broadcast", [1, 2]) == 3
    for run_id in run_ids:
        log = await wait_for_state(client, run_id)
        assert log["workflowState"] == "RUN_SUCCESS", log["error"]
        assert log["workflowRunResponse"] == {"data": [1, 2], "timed_out": False}


async def test_notify_before_the_wait_is_kept_for_the_named_run(harness: Harness) -> None:
    workflows = harness.workflows()
    ran: Counter[str] = Counter()
    register_waiter(workflows, ran)
    client = workflows.client()
    run_id = await client.trigger("waiter", {"event": "early"})  # no worker yet: not waiting

    assert await client.notify("early", {"early": True}, workflow_run_id=run_id) == 0
    await harness.worker(workflows)
    log = await wait_for_state(client, run_id)

    assert log["workflowState"] == "RUN_SUCCESS", log["error"]
    assert log["workflowRunResponse"] == {"data": {"early": True}, "timed_out": False}
    assert ran == {"before": 1, "after": 1}
    check_history(log, await updates(workflows, run_id))


async def test_notify_naming_a_waiting_run_wakes_only_that_run(harness: Harness) -> None:
    workflows = harness.workflows()
    register_waiter(workflows, Counter())
    await harness.worker(workflows)
    client = workflows.client()
    chosen = await client.trigger("waiter", {"event": "shared"})
    other = await client.trigger("waiter", {"event": "shared"})
    for run_id in (chosen, other):
        await wait_for_step(client, run_id, "approval", {"STEP_PROGRESS"})

    assert await client.notify("shared", "for-you", workflow_run_id=chosen) == 1
    log = await wait_for_state(client, chosen)
    assert log["workflowRunResponse"] == {"data": "for-you", "timed_out": False}
    assert (await client.logs(other))["workflowState"] == "RUN_STARTED"
    assert await client.notify("shared", "rest") == 1
    assert (await wait_for_state(client, other))["workflowRunResponse"]["data"] == "rest"


async def test_wait_times_out(harness: Harness) -> None:
    workflows = harness.workflows()
    ran: Counter[str] = Counter()
    register_waiter(workflows, ran, timeout=0.2)
    await harness.worker(workflows)
    client = workflows.client()
    run_id = await client.trigger("waiter", {"event": "never-sent"})
    log = await wait_for_state(client, run_id)

    assert log["workflowState"] == "RUN_SUCCESS", log["error"]
    assert log["workflowRunResponse"] == {"data": None, "timed_out": True}
    approval = steps_by_name(log)["approval"]
    assert approval["out"] == {"data": None, "timed_out": True}
    assert approval["finishedAt"] - approval["startedAt"] >= 200
    assert ran == {"before": 1, "after": 1}
    check_history(log, await updates(workflows, run_id))


async def test_a_notify_after_the_deadline_finds_the_wait_timed_out(harness: Harness) -> None:
    """Past its deadline a wait has timed out, whether or not its worker has recorded that yet:
    a notify then wakes nobody. (It resolved the step and said 1, while the worker that took
    the run at its deadline recorded the timeout over it: the event's data was lost.)"""
    workflows = harness.workflows()
    ran: Counter[str] = Counter()
    register_waiter(workflows, ran, timeout=0.5)
    worker = await harness.worker(workflows)
    client = workflows.client()
    run_id = await client.trigger("waiter", {"event": "late"})
    await wait_for_step(client, run_id, "approval", {"STEP_PROGRESS"})
    await harness.stop(worker)  # nobody records the timeout until a worker comes back
    await asyncio.sleep(0.7)  # past the wait's deadline
    with pytest.raises(NoWaiters):
        await client.notify("late", {"by": "ada"})
    await harness.worker(workflows)
    log = await wait_for_state(client, run_id)
    assert log["workflowRunResponse"] == {"data": None, "timed_out": True}


async def test_notify_errors(harness: Harness) -> None:
    workflows = harness.workflows()
    register_waiter(workflows, Counter(), timeout=0.05)
    await harness.worker(workflows)
    client = workflows.client()

    with pytest.raises(NoWaiters, match="nobody-waits"):
        await client.notify("nobody-waits", {"x": 1})
    with pytest.raises(RunNotFound):
        await client.notify("some-event", {"x": 1}, workflow_run_id="wfr_no-such-run")
    run_id = await client.trigger("waiter", {"event": "e"})
    await wait_for_state(client, run_id)
    with pytest.raises(RunConflict):
        await client.notify("e", {"x": 1}, workflow_run_id=run_id)


async def test_context_notify_wakes_another_run(harness: Harness) -> None:
    workflows = harness.workflows()
    register_waiter(workflows, Counter())

    @workflows.workflow("notifier", retry_delay=0.01)
    async def notifier(context: WorkflowContext) -> int:
        woken: int = await context.notify("tell", context.request_payload, {"from": "notifier"})
        return woken

    await harness.worker(workflows)
    client = workflows.client()
    waiter_id = await client.trigger("waiter", {"event": "ping-1"})
    await wait_for_step(client, waiter_id, "approval", {"STEP_PROGRESS"})
    notifier_id = await client.trigger("notifier", "ping-1")

    notifier_log = await wait_for_state(client, notifier_id)
    assert notifier_log["workflowState"] == "RUN_SUCCESS", notifier_log["error"]
    assert notifier_log["workflowRunResponse"] == 1
    tell = steps_by_name(notifier_log)["tell"]
    assert tell["stepType"] == "Notify" and tell["out"] == 1
    waiter_log = await wait_for_state(client, waiter_id)
    assert waiter_log["workflowRunResponse"] == {"data": {"from": "notifier"}, "timed_out": False}


async def test_context_notify_with_nobody_waiting_returns_zero(harness: Harness) -> None:
    workflows = harness.workflows()

    @workflows.workflow("lonely", retries=0)
    async def lonely(context: WorkflowContext) -> int:
        woken: int = await context.notify("tell", "nobody-listens", "hello?")
        return woken

    await harness.worker(workflows)
    client = workflows.client()
    run_id = await client.trigger("lonely")
    log = await wait_for_state(client, run_id)
    assert log["workflowState"] == "RUN_SUCCESS", log["error"]
    assert log["workflowRunResponse"] == 0
