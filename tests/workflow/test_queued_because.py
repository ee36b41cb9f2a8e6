"""A queued run's log says why no live worker claims it, when none would: its workflow is
paused, no worker runs, or no running worker registers its workflow (a worker started with
another app on the same store). One that some worker will claim says nothing more."""

from __future__ import annotations

from typing import Any

import pytest

from stepstream import WorkflowContext
from tests.workflow.helpers import Harness, wait_for_state

pytestmark = pytest.mark.anyio


async def test_a_queued_runs_log_says_why_it_is_not_claimed(harness: Harness) -> None:
    app = harness.workflows()
    other = harness.workflows()  # another app on the same store: its worker runs only "other"

    @app.workflow("greet")
    async def greet(context: WorkflowContext) -> Any:
        return await context.run("hello", lambda: "hi")

    @other.workflow("other")
    async def other_one(context: WorkflowContext) -> Any:
        return None

    client = app.client()
    waiting = await client.trigger("greet")
    log: Any = await client.logs(waiting)
    assert (log["status"], log["queuedBecause"]) == (
        "queued",
        "no worker is running (stepstream worker APP, a server with --workers 1, "
        "or workflows.worker() in a script)",
    )

    await harness.worker(other)
    log = await client.logs(waiting)
    assert log["queuedBecause"] == (
        "none of the 1 live worker(s) registers workflow 'greet': start one with the app "
        "that defines it"
    )

    await client.pause_workflow("greet")
    log = await client.logs(waiting)
    assert log["queuedBecause"] == "workflow 'greet' is paused (resume it to run its runs)"

    await client.resume_workflow("greet")
    await harness.worker(app)
    assert (await wait_for_state(client, waiting))["workflowState"] == "RUN_SUCCESS"
    done: Any = await client.logs(waiting)
    assert "queuedBecause" not in done
