"""DESIGN §4: every finished run's channel holds the built-in ``workflow.update`` events, which
match its log — one ``runStart``, one ``stepFinish`` per completed step, one ``runFinish``."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from pydantic import BaseModel, TypeAdapter

from stepstream import NonRetryableError, WorkflowContext
from stepstream.events import WorkflowUpdate
from tests.workflow.helpers import (
    Harness,
    check_history,
    steps_by_name,
    updates,
    wait_for_state,
    wait_for_step,
)

pytestmark = pytest.mark.anyio

VALIDATE = TypeAdapter(WorkflowUpdate)


async def test_history_matches_the_log_for_every_kind_of_finish(harness: Harness) -> None:
    workflows = harness.workflows()
    attempts: Counter[str] = Counter()

    def flaky() -> str:
        attempts["flaky"] += 1
        if attempts["flaky"] == 1:
            raise ValueError("first try fails")
        return "ok"

    @workflows.workflow("child", retry_delay=0.01)
    async def child(context: WorkflowContext) -> int:
        return int(await context.run("one", lambda: 1))

    @workflows.workflow("everything", retries=2, retry_delay=0.01)
    async def everything(context: WorkflowContext) -> dict[str, Any]:
        a = await context.run("a", lambda: {"n": 1})
        b = await context.run("flaky", flaky)
        await context.sleep("nap", 0.05)
        pair = await asyncio.gather(context.run("p1", lambda: 1), context.run("p2", lambda: 2))
        _, timed_out = await context.wait_for_event("wait", "never", timeout=0.05)
        child_result = await context.invoke("kid", "child", None)
        return {"a": a, "b": b, "pair": pair, "timed_out": timed_out, "child": child_result}

    @workflows.workflow("fails", retries=0)
    async def fails(context: WorkflowContext) -> None:
        await context.run("ok", lambda: "fine")
        await context.run("bad", lambda: (_ for _ in ()).throw(NonRetryableError("nope")))

    @workflows.workflow("canceled", retry_delay=0.01)
    async def canceled(context: WorkflowContext) -> None:
        await context.run("ok", lambda: "fine")
        await context.sleep("long", 60)

    await harness.worker(workflows)
    client = workflows.client()
    success = await client.trigger("everything", {"k": "v"})
    failed = await client.trigger("fails")
    cancel = await client.trigger("canceled")
    await wait_for_step(client, cancel, "long", {"STEP_PROGRESS"})
    await client.cancel(cancel)

    expected = {success: "success", failed: "failed", cancel: "canceled"}
    for run_id, status in expected.items():
        log = await wait_for_state(client, run_id)
        events = await updates(workflows, run_id)
        check_history(log, events)
        assert events[-1]["status"] == status
        for event in events:
            VALIDATE.validate_python(event)  # the guide's payload shapes
            assert log["workflowRunCreatedAt"] <= event["timestamp"]
            assert event["timestamp"] <= log["workflowRunCompletedAt"]
        assert [e["timestamp"] for e in events] == sorted(e["timestamp"] for e in events)
        if status != "success":
            assert events[-1]["error"]

    log = await client.logs(success)
    finishes = {e["stepName"]: e for e in await updates(workflows, success) if "result" in e}
    for name, step in steps_by_name(log).items():
        assert step["state"] == "STEP_SUCCESS"
        if step["out"] is not None:
            assert finishes[name]["result"] == step["out"]
    assert log["workflowRunResponse"]["child"] == 1


async def test_subscribing_first_sees_the_whole_run_live(harness: Harness) -> None:
    """A page picks the run id, subscribes, then triggers: it misses nothing."""
    workflows = harness.workflows()

    @workflows.workflow("watched", retry_delay=0.01)
    async def watched(context: WorkflowContext) -> str:
        await context.run("one", lambda: 1)
        await context.sleep("nap", 0.05)
        return str(await context.run("two", lambda: 2))

    assert workflows.realtime is not None
    run_id = "wfr_watched-run"
    seen: list[Any] = []

    async def watch() -> None:
        async for message in workflows.realtime.channel(run_id).subscribe(history=True):  # type: ignore[union-attr]
            seen.append(message)
            if message.data["type"] == "runFinish":
                return

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.05)
    await harness.worker(workflows)
    client = workflows.client()
    assert await client.trigger("watched", workflow_run_id="watched-run") == run_id
    await asyncio.wait_for(watcher, 20)

    history = await workflows.realtime.channel(run_id).history(limit=None)
    assert [m.id for m in seen] == [m.id for m in history]
    check_history(await client.logs(run_id), [m.data for m in seen])


class Progress(BaseModel):
    percent: int


async def test_custom_events_on_the_run_channel(harness: Harness) -> None:
    workflows = harness.workflows(schema={"job": {"progress": Progress}})

    @workflows.workflow("reporting", retry_delay=0.01)
    async def reporting(context: WorkflowContext) -> None:
        async def step(percent: int) -> int:
            await context.channel.emit("job.progress", {"percent": percent})
            return percent

        await context.run("half", step, 50)
        await context.sleep("nap", 0.05)  # a replay does not run the emitting step again
        await context.run("all", step, 100)

    await harness.worker(workflows)
    client = workflows.client()
    run_id = await client.trigger("reporting")
    log = await wait_for_state(client, run_id)

    assert log["workflowState"] == "RUN_SUCCESS", log["error"]
    assert workflows.realtime is not None
    messages = await workflows.realtime.channel(run_id).history(limit=None)
    progress = [m.data for m in messages if m.event == "job.progress"]
    assert progress == [{"percent": 50}, {"percent": 100}]
    check_history(log, await updates(workflows, run_id))
