"""Replay meets the recorded steps: a renamed step is a ``NonDeterminismError`` naming both."""

from __future__ import annotations

from collections import Counter

import pytest

from stepstream import WorkflowContext
from tests.workflow.helpers import Harness, check_history, updates, wait_for_state, wait_for_step

pytestmark = pytest.mark.anyio


async def test_renamed_step_fails_the_run_with_both_names(harness: Harness) -> None:
    ran: Counter[str] = Counter()
    v1 = harness.workflows()

    @v1.workflow("order", retry_delay=0.01)
    async def order_v1(context: WorkflowContext) -> None:
        await context.run("charge", lambda: ran.update(["charge"]))
        await context.sleep("settle", 1.0)
        await context.run("ship", lambda: ran.update(["ship"]))

    await harness.worker(v1)
    run_id = await v1.client().trigger("order")
    await wait_for_step(v1.client(), run_id, "settle", {"STEP_PROGRESS"})
    await harness.close(v1)

    v2 = harness.workflows()  # a new deployment renamed the first step

    @v2.workflow("order", retries=3, retry_delay=0.01)
    async def order_v2(context: WorkflowContext) -> None:
        await context.run("bill", lambda: ran.update(["bill"]))
        await context.sleep("settle", 1.0)
        await context.run("ship", lambda: ran.update(["ship"]))

    await harness.worker(v2)
    client = v2.client()
    log = await wait_for_state(client, run_id)

    assert log["workflowState"] == "RUN_FAILED"
    assert "NonDeterminismError" in log["error"]
    assert "'charge'" in log["error"] and "'bill'" in log["error"]
    assert ran == {"charge": 1}
    check_history(log, await updates(v2, run_id))
