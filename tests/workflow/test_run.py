"""``context.run``: results are returned, stored and streamed; sync and async bodies; a result
that is not JSON fails the step at once."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from stepstream import WorkflowContext
from tests.workflow.helpers import Harness, check_history, steps_by_name, updates, wait_for_state

pytestmark = pytest.mark.anyio


async def test_run_returns_stores_and_streams_results(harness: Harness) -> None:
    workflows = harness.workflows()
    ran: Counter[str] = Counter()

    def double(x: int) -> int:
        ran["double"] += 1
        return x * 2

    async def describe(x: int, *, unit: str) -> dict[str, object]:
        ran["describe"] += 1
        await asyncio.sleep(0)
        return {"value": x, "unit": unit, "tags": ["a", None, 1.5]}

    @workflows.workflow("arith", retry_delay=0.01)
    async def arith(context: WorkflowContext) -> dict[str, object]:
        doubled = await context.run("double", double, context.request_payload["x"])
        described = await context.run("describe", describe, doubled, unit="m")
        return {"doubled": doubled, "described": described}

    await harness.worker(workflows)
    client = workflows.client()
    run_id = await client.trigger("arith", {"x": 21})
    log = await wait_for_state(client, run_id)

    described = {"value": 42, "unit": "m", "tags": ["a", None, 1.5]}
    assert log["workflowState"] == "RUN_SUCCESS", log["error"]
    assert log["workflowRunResponse"] == {"doubled": 42, "described": described}
    assert log["requestPayload"] == {"x": 21}
    assert log["error"] is None
    steps = steps_by_name(log)
    assert [s["stepName"] for s in log["steps"]] == ["double", "describe"]
    assert steps["double"]["out"] == 42
    assert steps["describe"]["out"] == described
    for step in log["steps"]:
        assert step["state"] == "STEP_SUCCESS"
        assert step["stepType"] == "Run"
        assert step["attempts"] == 1
        assert step["startedAt"] <= step["finishedAt"]
    assert ran == {"double": 1, "describe": 1}

    events = await updates(workflows, run_id)
    check_history(log, events)
    assert [(e["type"], e.get("stepName")) for e in events] == [
        ("runStart", None),
        ("stepStart", "double"),
        ("stepFinish", "double"),
        ("stepStart", "describe"),
        ("stepFinish", "describe"),
        ("runFinish", None),
    ]
    finishes = {e["stepName"]: e for e in events if e["type"] == "stepFinish"}
    assert finishes["double"]["result"] == 42
    assert finishes["describe"]["result"] == described
    assert events[-1]["status"] == "success"


async def test_completed_steps_are_not_run_again_on_replay(harness: Harness) -> None:
    """A sleep makes the run replay from the top: the steps before it return stored results."""
    workflows = harness.workflows()
    ran: Counter[str] = Counter()

    def step(name: str) -> str:
        ran[name] += 1
        return f"{name}-done"

    @workflows.workflow("replayed", retry_delay=0.01)
    async def replayed(context: WorkflowContext) -> list[str]:
        first = await context.run("first", step, "first")
        await context.sleep("nap-1", 0.05)
        second = await context.run("second", step, "second")
        await context.sleep("nap-2", 0.05)
        return [first, second]

    await harness.worker(workflows)
    client = workflows.client()
    run_id = await client.trigger("replayed")
    log = await wait_for_state(client, run_id)

    assert log["workflowState"] == "RUN_SUCCESS", log["error"]
    assert log["workflowRunResponse"] == ["first-done", "second-done"]
    assert ran == {"first": 1, "second": 1}


async def test_result_that_is_not_json_fails_the_step_without_retries(harness: Harness) -> None:
    workflows = harness.workflows()
    ran: Counter[str] = Counter()

    def make_set() -> set[int]:
        ran["make-set"] += 1
        return {1, 2}

    @workflows.workflow("not-json", retries=3, retry_delay=0.01)
    async def not_json(context: WorkflowContext) -> None:
        await context.run("make-set", make_set)
        await context.run("never", lambda: ran.update(["never"]))

    await harness.worker(workflows)
    client = workflows.client()
    run_id = await client.trigger("not-json")
    log = await wait_for_state(client, run_id)

    assert log["workflowState"] == "RUN_FAILED"
    assert ran == {"make-set": 1}
    step = steps_by_name(log)["make-set"]
    assert step["state"] == "STEP_FAILED"
    assert step["attempts"] == 1
    assert "not JSON-serialisable" in step["error"]
    assert "make-set" in log["error"] and "not JSON-serialisable" in log["error"]
    events = await updates(workflows, run_id)
    check_history(log, events)
    fails = [e for e in events if e["type"] == "stepFail"]
    assert len(fails) == 1 and fails[0]["willRetry"] is False
    assert "not JSON-serialisable" in fails[0]["error"]
