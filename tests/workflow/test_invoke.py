"""``context.invoke``: a child run whose result (or failure) the parent gets."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from stepstream import ChildRunFailed, NonRetryableError, WorkflowContext, Workflows
from tests.workflow.helpers import (
    Harness,
    check_history,
    steps_by_name,
    updates,
    wait_for_state,
    wait_until,
)

pytestmark = pytest.mark.anyio


def register_family(workflows: Workflows, ran: Counter[str]) -> None:
    def child_work(body: dict[str, Any]) -> dict[str, Any]:
        ran["child-work"] += 1
        if body.get("fail"):
            raise NonRetryableError(f"child refuses {body['n']}")
        return {"squared": body["n"] ** 2}

    @workflows.workflow("child", retry_delay=0.01)
    async def child(context: WorkflowContext) -> Any:
        await context.sleep("child-nap", 0.05)
        return await context.run("work", child_work, context.request_payload)

    @workflows.workflow("parent", retry_delay=0.01)
    async def parent(context: WorkflowContext) -> dict[str, Any]:
        before = await context.run("before", lambda: ran.update(["before"]) or "b")
        try:
            result = await context.invoke("call-child", "child", context.request_payload)
        except ChildRunFailed as exc:
            result = {"child_failed": exc.state, "message": str(exc)}
        await context.run("after", lambda: ran.update(["after"]))
        return {"before": before, "child": result}


async def test_invoke_returns_the_child_result(harness: Harness) -> None:
    workflows = harness.workflows()
    ran: Counter[str] = Counter()
    register_family(workflows, ran)
    await harness.worker(workflows)
    client = workflows.client()
    parent_id = await client.trigger("parent", {"n": 7})
    log = await wait_for_state(client, parent_id)

    assert log["workflowState"] == "RUN_SUCCESS", log["error"]
    assert log["workflowRunResponse"] == {"before": "b", "child": {"squared": 49}}
    assert log["invoker"] is None
    call = steps_by_name(log)["call-child"]
    assert call["stepType"] == "Invoke" and call["state"] == "STEP_SUCCESS"
    assert call["out"] == {"squared": 49}
    assert ran == {"before": 1, "after": 1, "child-work": 1}
    check_history(log, await updates(workflows, parent_id))

    children = (await client.runs(workflow="child"))["runs"]
    assert len(children) == 1
    child_log = await client.logs(children[0]["workflowRunId"])
    assert child_log["workflowState"] == "RUN_SUCCESS"
    assert child_log["invoker"] == parent_id
    assert child_log["requestPayload"] == {"n": 7}
    assert child_log["workflowRunResponse"] == {"squared": 49}
    check_history(child_log, await updates(workflows, child_log["workflowRunId"]))


async def test_failed_child_raises_child_run_failed_in_the_parent(harness: Harness) -> None:
    workflows = harness.workflows()
    ran: Counter[str] = Counter()
    register_family(workflows, ran)
    await harness.worker(workflows)
    client = workflows.client()
    parent_id = await client.trigger("parent", {"n": 3, "fail": True})
    log = await wait_for_state(client, parent_id)

    assert log["workflowState"] == "RUN_SUCCESS", log["error"]
    child_result = log["workflowRunResponse"]["child"]
    assert child_result["child_failed"] == "RUN_FAILED"
    assert "child refuses 3" in child_result["message"]
    call = steps_by_name(log)["call-child"]
    assert call["state"] == "STEP_FAILED"
    assert "child refuses 3" in call["error"]
    assert ran == {"before": 1, "after": 1, "child-work": 1}
    check_history(log, await updates(workflows, parent_id))

    (child,) = (await client.runs(workflow="child"))["runs"]
    child_log = await client.logs(child["workflowRunId"])
    assert child_log["workflowState"] == "RUN_FAILED"
    assert child_log["invoker"] == parent_id
    assert "child refuses 3" in child_log["error"]
    check_history(child_log, await updates(workflows, child_log["workflowRunId"]))


async def test_uncaught_child_failure_fails_the_parent(harness: Harness) -> None:
    workflows = harness.workflows()
    ran: Counter[str] = Counter()
    register_family(workflows, ran)

    @workflows.workflow("strict-parent", retry_delay=0.01)
    async def strict_parent(context: WorkflowContext) -> Any:
        return await context.invoke("call-child", "child", {"n": 1, "fail": True})

    await harness.worker(workflows)
    client = workflows.client()
    parent_id = await client.trigger("strict-parent")
    log = await wait_for_state(client, parent_id)

    assert log["workflowState"] == "RUN_FAILED"
    assert "child refuses 1" in log["error"]
    check_history(log, await updates(workflows, parent_id))


async def test_canceling_a_parent_cancels_the_children_it_waits_for(harness: Harness) -> None:
    """Nothing would take a canceled parent's child's result: the child (and its own child)
    is canceled with it, where it used to run on to the end."""
    workflows = harness.workflows()

    @workflows.workflow("grandchild")
    async def grandchild(context: WorkflowContext) -> Any:
        return await context.wait_for_event("forever", "never-sent", timeout=3600)

    @workflows.workflow("middle")
    async def middle(context: WorkflowContext) -> Any:
        return await context.invoke("call-grandchild", "grandchild", None)

    @workflows.workflow("top")
    async def top(context: WorkflowContext) -> Any:
        return await context.invoke("call-middle", "middle", None)

    await harness.worker(workflows)
    client = workflows.client()
    top_id = await client.trigger("top")

    async def family_waits() -> bool:
        return len(await client.waiters("never-sent")) == 1

    await wait_until(family_waits, 15, "the grandchild waiting")
    await client.cancel(top_id)
    for workflow in ("middle", "grandchild"):
        (run,) = (await client.runs(workflow=workflow))["runs"]
        log = await wait_for_state(client, run["workflowRunId"])
        assert log["workflowState"] == "RUN_CANCELED", (workflow, log)
    assert (await client.logs(top_id))["workflowState"] == "RUN_CANCELED"
