"""Replay meets the recorded steps: a renamed step is a ``NonDeterminismError`` naming both, and
the run waits, visibly, for code that can replay it (it is never failed by a deploy)."""

from __future__ import annotations

import contextlib
from collections import Counter

import pytest

from stepstream import WorkflowContext
from tests.workflow.helpers import (
    Harness,
    check_history,
    updates,
    wait_for_state,
    wait_for_step,
    wait_until,
)

pytestmark = pytest.mark.anyio


async def test_renamed_step_parks_the_run_with_both_names_until_fixed(harness: Harness) -> None:
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
        # Swallowing the error cannot make the diverged replay go on.
        with contextlib.suppress(Exception):
            await context.run("bill", lambda: ran.update(["bill"]))
        await context.sleep("settle", 1.0)
        await context.run("ship", lambda: ran.update(["ship"]))

    v2.engine.park_seconds = 0.5  # look again soon (30 s by default)
    await harness.worker(v2)
    client = v2.client()

    async def stuck() -> bool:
        return (await client.logs(run_id))["error"] is not None

    await wait_until(stuck, what="the run to show why it is stuck")
    log = await client.logs(run_id)
    assert log["workflowState"] == "RUN_STARTED"
    assert "'charge'" in log["error"] and "'bill'" in log["error"]
    assert ran == {"charge": 1}
    await harness.close(v2)

    v3 = harness.workflows()  # the fix: the old name is back

    @v3.workflow("order", retry_delay=0.01)
    async def order_v3(context: WorkflowContext) -> None:
        await context.run("charge", lambda: ran.update(["charge"]))
        await context.sleep("settle", 1.0)
        await context.run("ship", lambda: ran.update(["ship"]))

    await harness.worker(v3)
    log = await wait_for_state(v3.client(), run_id)
    assert log["workflowState"] == "RUN_SUCCESS"
    assert log["error"] is None
    assert ran == {"charge": 1, "ship": 1}
    check_history(log, await updates(v3, run_id))
