"""What the log tells an operator about failures and waits (DESIGN §14): every failed attempt
keeps its error and a traceback from the user's code, each is logged at WARNING, and a wait step
says which event it waits for and until when."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from stepstream import WorkflowContext
from tests.workflow.helpers import Harness, wait_for_state, wait_for_step

pytestmark = pytest.mark.anyio


def lookup(payload: dict[str, Any]) -> Any:
    return payload["userId"]  # fails: the payload has no userId


async def test_each_failed_attempt_keeps_its_traceback(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    workflows = harness.workflows()

    @workflows.workflow("fragile", retries=1, retry_delay=0.01)
    async def fragile(context: WorkflowContext) -> Any:
        return await context.run("lookup", lookup, context.request_payload)

    client = workflows.client()
    await harness.worker(workflows)
    with caplog.at_level(logging.WARNING, logger="stepstream.engine"):
        log = await wait_for_state(client, await client.trigger("fragile", {"name": "x"}))
    assert log["workflowState"] == "RUN_FAILED"
    (step,) = log["steps"]
    assert [error["attempt"] for error in step["errors"]] == [1, 2]
    for error in step["errors"]:
        assert error["error"] == "KeyError: 'userId'"
        trace = error["traceback"]
        # Where the user's code failed: this file, the function, the line; not the engine.
        assert trace.startswith("Traceback (most recent call last):\n")
        assert __file__ in trace and "in lookup" in trace and 'payload["userId"]' in trace
        assert "stepstream/workflow" not in trace
        assert isinstance(error["at"], int)
    warnings = [r for r in caplog.records if "step 'lookup' attempt" in r.getMessage()]
    assert len(warnings) == 2 and "in lookup" in warnings[0].getMessage()
    assert "Traceback" not in warnings[0].getMessage()  # not an exception of the engine


async def test_a_wait_step_says_what_it_waits_for(harness: Harness) -> None:
    workflows = harness.workflows()

    @workflows.workflow("approval")
    async def approval(context: WorkflowContext) -> Any:
        data, _ = await context.wait_for_event("approve", "order-42-approved", timeout=600)
        return data

    client = workflows.client()
    await harness.worker(workflows)
    run_id = await client.trigger("approval")
    log = await wait_for_step(client, run_id, "approve", {"STEP_PROGRESS"})
    (step,) = log["steps"]
    assert step["waitEventId"] == "order-42-approved"
    assert step["waitDeadline"] - step["startedAt"] == 600_000
    assert step["errors"] == []
    await client.notify("order-42-approved", {"ok": True})
    assert (await wait_for_state(client, run_id))["workflowRunResponse"] == {"ok": True}
