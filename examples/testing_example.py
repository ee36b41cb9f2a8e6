# test_order.py: run with pytest (async tests through anyio's plugin, installed with stepstream)
from collections import Counter

import pytest

from stepstream import Backoff, Realtime, WorkflowContext, Workflows
from stepstream.testing import WorkflowEnv

pytestmark = pytest.mark.anyio

workflows = Workflows(realtime=Realtime())  # in your tests: from app import workflows
calls: Counter[int] = Counter()


def charge(order: dict) -> str:
    calls[order["id"]] += 1
    if calls[order["id"]] < 3:
        raise ConnectionError("card network down")  # retried after ~1 min, then ~2 min
    return f"receipt-{order['id']}"


@workflows.workflow("order", retry_delay=Backoff(initial=60, factor=2))
async def order(context: WorkflowContext) -> dict:
    await context.sleep("cool-off", 24 * 3600)
    approval, timed_out = await context.wait_for_event(
        "approval", f"approve-{context.workflow_run_id}", timeout=3600
    )
    receipt = await context.run("charge", charge, context.request_payload)
    return {"approved_by": None if timed_out else approval["by"], "receipt": receipt}


async def test_an_unanswered_order_is_charged_after_a_day_and_an_hour() -> None:
    async with WorkflowEnv(workflows) as env:
        run_id = await env.client.trigger("order", {"id": 1})
        log = await env.wait(run_id)  # every sleep, timeout and retry delay: milliseconds
    assert log["workflowState"] == "RUN_SUCCESS"
    assert log["workflowRunResponse"] == {"approved_by": None, "receipt": "receipt-1"}
    steps = {step["stepName"]: step for step in log["steps"]}
    assert steps["charge"]["attempts"] == 3
    took = log["workflowRunCompletedAt"] - log["workflowRunCreatedAt"]  # virtual milliseconds
    assert took >= (24 + 1) * 3600 * 1000


async def test_an_approval_during_the_wait() -> None:
    async with WorkflowEnv(workflows) as env:
        run_id = await env.client.trigger("order", {"id": 2})
        await env.advance(24 * 3600 + 60)  # by hand: past the cool-off, into the wait
        await env.client.notify(f"approve-{run_id}", {"by": "ann"})
        log = await env.wait(run_id)
        events = await env.channel(run_id).history(limit=None)  # workflow.update, as streamed
    assert log["workflowRunResponse"] == {"approved_by": "ann", "receipt": "receipt-2"}
    assert [e.data["type"] for e in events][:3] == ["runStart", "stepStart", "stepFinish"]
