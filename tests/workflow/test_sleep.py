"""``context.sleep`` and ``sleep_until``: durable timers that survive the worker (and the whole
process) going away."""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter

import pytest

from stepstream import WorkflowContext, Workflows
from tests.workflow.helpers import (
    Harness,
    check_history,
    steps_by_name,
    updates,
    wait_for_state,
    wait_for_step,
)

pytestmark = pytest.mark.anyio


def register_napper(workflows: Workflows, ran: Counter[str]) -> None:
    @workflows.workflow("napper", retry_delay=0.01)
    async def napper(context: WorkflowContext) -> str:
        before = await context.run("before", lambda: ran.update(["before"]) or "b")
        await context.sleep("nap", 1.0)
        after = await context.run("after", lambda: ran.update(["after"]) or "a")
        return f"{before}{after}"


async def test_sleep_survives_a_new_process(harness: Harness) -> None:
    ran: Counter[str] = Counter()
    first = harness.workflows()
    register_napper(first, ran)
    await harness.worker(first)
    run_id = await first.client().trigger("napper")
    await wait_for_step(first.client(), run_id, "nap", {"STEP_PROGRESS"})
    await harness.close(first)  # the worker stops and the process's Realtime closes

    second = harness.workflows()
    register_napper(second, ran)
    client = second.client()
    assert (await client.logs(run_id))["workflowState"] == "RUN_STARTED"
    await harness.worker(second)
    log = await wait_for_state(client, run_id)

    assert log["workflowState"] == "RUN_SUCCESS", log["error"]
    assert log["workflowRunResponse"] == "ba"
    assert ran == {"before": 1, "after": 1}
    nap = steps_by_name(log)["nap"]
    assert nap["stepType"] == "SleepFor" and nap["state"] == "STEP_SUCCESS"
    assert nap["finishedAt"] - nap["startedAt"] >= 1000  # a timer cannot fire early
    check_history(log, await updates(second, run_id))


async def test_sleep_survives_a_worker_restart_in_the_same_process(harness: Harness) -> None:
    ran: Counter[str] = Counter()
    workflows = harness.workflows()
    register_napper(workflows, ran)
    worker = await harness.worker(workflows)
    client = workflows.client()
    run_id = await client.trigger("napper")
    await wait_for_step(client, run_id, "nap", {"STEP_PROGRESS"})
    await harness.stop(worker)
    await harness.worker(workflows)
    log = await wait_for_state(client, run_id)

    assert log["workflowState"] == "RUN_SUCCESS", log["error"]
    assert ran == {"before": 1, "after": 1}


async def test_sleep_until(harness: Harness) -> None:
    workflows = harness.workflows()
    ran: Counter[str] = Counter()

    @workflows.workflow("alarm", retry_delay=0.01)
    async def alarm(context: WorkflowContext) -> str:
        at = await context.run("pick-time", lambda: ran.update(["pick"]) or time.time() + 0.3)
        await context.sleep_until("until-epoch", at)
        when = dt.datetime.fromtimestamp(at + 0.2, tz=dt.UTC)
        await context.sleep_until("until-datetime", when)
        await context.sleep_until("in-the-past", time.time() - 60)
        return str(await context.run("ring", lambda: ran.update(["ring"]) or "ring"))

    await harness.worker(workflows)
    client = workflows.client()
    run_id = await client.trigger("alarm")
    log = await wait_for_state(client, run_id)

    assert log["workflowState"] == "RUN_SUCCESS", log["error"]
    assert log["workflowRunResponse"] == "ring"
    assert ran == {"pick": 1, "ring": 1}
    steps = steps_by_name(log)
    at_ms = steps["pick-time"]["out"] * 1000
    for name, earliest in (("until-epoch", at_ms), ("until-datetime", at_ms + 200)):
        assert steps[name]["stepType"] == "SleepUntil"
        assert steps[name]["state"] == "STEP_SUCCESS"
        assert steps[name]["finishedAt"] >= earliest - 1
    assert steps["ring"]["startedAt"] >= at_ms + 199
    check_history(log, await updates(workflows, run_id))
