"""``WorkflowEnv`` (DESIGN §16): the real engine and worker on an in-memory store and a virtual
clock. Assertions are on the log's virtual timestamps; real time only gets generous bounds."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from stepstream import (
    Backoff,
    NonRetryableError,
    Realtime,
    RunState,
    StepState,
    WorkflowContext,
    Workflows,
)
from stepstream.backends.base import CreateRun
from stepstream.records import RunRecord, StepRecord, StepType
from stepstream.testing import RunStuck, WorkflowEnv
from tests.workflow.helpers import check_history, steps_by_name

pytestmark = pytest.mark.anyio

START = 1_795_500_000_000  # a fixed virtual start, in epoch ms
DAY, HOUR, MINUTE = 86_400_000, 3_600_000, 60_000


def registry(tmp_path: Path | None = None) -> Workflows:
    """A registry whose own store is a file the env must never open."""
    if tmp_path is None:
        return Workflows(backend="sqlite:///never-opened.db")
    return Workflows(realtime=Realtime(backend=f"sqlite:///{tmp_path / 'app.db'}"))


async def test_a_day_an_hour_and_backoff_take_milliseconds() -> None:
    workflows = registry()
    attempts: Counter[str] = Counter()

    def flaky() -> str:
        attempts["charge"] += 1
        if attempts["charge"] < 3:
            raise ConnectionError("card network down")
        return "receipt"

    @workflows.workflow("order", retry_delay=Backoff(initial=60, factor=2, jitter=0))
    async def order(context: WorkflowContext) -> dict[str, Any]:
        await context.sleep("cool-off", 24 * 3600)
        approval, timed_out = await context.wait_for_event("approval", "approve", timeout=3600)
        receipt = await context.run("charge", flaky)
        return {"approval": approval, "timed_out": timed_out, "receipt": receipt}

    began = time.monotonic()
    async with WorkflowEnv(workflows, start=START) as env:
        run_id = await env.client.trigger("order")
        log = await env.wait(run_id)
    assert time.monotonic() - began < 10  # generous: it takes milliseconds
    assert log["workflowState"] == "RUN_SUCCESS", log["error"]
    assert log["workflowRunResponse"] == {"approval": None, "timed_out": True, "receipt": "receipt"}
    steps = steps_by_name(log)
    assert log["workflowRunCreatedAt"] == START
    assert steps["cool-off"]["startedAt"] == START
    assert steps["cool-off"]["finishedAt"] == START + DAY
    assert steps["approval"]["finishedAt"] - steps["approval"]["startedAt"] == HOUR
    charge = steps["charge"]
    assert charge["attempts"] == 3 and attempts["charge"] == 3
    # The third attempt ran after 60 s, then 120 s of backoff.
    assert charge["startedAt"] == START + DAY + HOUR + 3 * MINUTE
    assert log["workflowRunCompletedAt"] - log["workflowRunCreatedAt"] >= DAY + HOUR
    assert log["workflowRunCompletedAt"] == env.now()


async def test_advance_fires_a_sleep_exactly_when_due() -> None:
    workflows = registry()

    @workflows.workflow("nap")
    async def nap(context: WorkflowContext) -> int:
        await context.sleep("nap", 60)
        return await context.run("after", context.now)

    async with WorkflowEnv(workflows, start=START) as env:
        run_id = await env.client.trigger("nap")
        await env.advance(59.999)
        log = await env.client.logs(run_id)
        assert log["workflowState"] == "RUN_STARTED"
        assert steps_by_name(log)["nap"]["state"] == StepState.PROGRESS.value
        assert env.now() == START + MINUTE - 1
        await env.advance(0.001)
        log = await env.client.logs(run_id)
    assert log["workflowState"] == "RUN_SUCCESS"
    assert log["workflowRunResponse"] == START + MINUTE
    assert steps_by_name(log)["nap"]["finishedAt"] == START + MINUTE


async def test_advance_fires_timers_in_order_at_their_own_times() -> None:
    workflows = registry()

    @workflows.workflow("ticks")
    async def ticks(context: WorkflowContext) -> list[int]:
        seen = []
        for n in range(3):
            await context.sleep(f"tick-{n}", 10)
            seen.append(await context.run(f"at-{n}", context.now))
        return seen

    async with WorkflowEnv(workflows, start=START) as env:
        run_id = await env.client.trigger("ticks", delay=5)
        await env.advance(3600)
        log = await env.client.logs(run_id)
        assert env.now() == START + HOUR
    assert log["workflowRunResponse"] == [START + 5_000 + n * 10_000 for n in (1, 2, 3)]


async def test_notify_during_a_wait() -> None:
    workflows = registry()

    @workflows.workflow("approval")
    async def approval(context: WorkflowContext) -> Any:
        data, timed_out = await context.wait_for_event("approve", "go", timeout=3600)
        return {"data": data, "timed_out": timed_out}

    async with WorkflowEnv(workflows, start=START) as env:
        run_id = await env.client.trigger("approval")
        await env.advance(600)
        assert await env.client.notify("go", {"by": "ann"}) == 1
        log = await env.wait(run_id)
    assert log["workflowRunResponse"] == {"data": {"by": "ann"}, "timed_out": False}
    wait = steps_by_name(log)["approve"]
    assert (wait["startedAt"], wait["finishedAt"]) == (START, START + 10 * MINUTE)


async def test_progress_events_carry_virtual_time_and_the_real_store_is_untouched(
    tmp_path: Path,
) -> None:
    workflows = registry(tmp_path)

    @workflows.workflow("basic")
    async def basic(context: WorkflowContext) -> str:
        await context.run("validate", lambda: True)
        await context.sleep("cool-down", 24 * 3600)
        return str(await context.run("process", lambda: "done"))

    async with WorkflowEnv(workflows, start=START) as env:
        run_id = await env.client.trigger("basic")
        log = await env.wait(run_id)
        messages = await env.channel(run_id).history(limit=None)
    events = [m.data for m in messages]
    check_history(log, events)
    assert [(e["type"], e.get("stepName")) for e in events] == [
        ("runStart", None),
        ("stepStart", "validate"),
        ("stepFinish", "validate"),
        ("stepStart", "cool-down"),
        ("stepFinish", "cool-down"),
        ("stepStart", "process"),
        ("stepFinish", "process"),
        ("runFinish", None),
    ]
    assert events[0]["timestamp"] == START
    assert events[4]["timestamp"] == events[-1]["timestamp"] == START + DAY
    # Event ids are stamped by the (virtual) storage time too.
    assert int(messages[0].id.split("-")[0]) == START
    assert int(messages[-1].id.split("-")[0]) == START + DAY
    assert not (tmp_path / "app.db").exists()


async def test_the_failure_function_runs() -> None:
    workflows = registry()
    alerts: list[str] = []

    async def on_failure(context: WorkflowContext, error: BaseException) -> None:
        await context.run("alert", lambda: alerts.append(str(error)))

    @workflows.workflow("doomed", failure_function=on_failure)
    async def doomed(context: WorkflowContext) -> None:
        await context.sleep("wait-a-bit", 3600)
        await context.run("boom", _refuse)

    async with WorkflowEnv(workflows, start=START) as env:
        log = await env.wait(await env.client.trigger("doomed"))
    assert log["workflowState"] == "RUN_FAILED"
    assert "the card was refused" in log["error"]
    assert len(alerts) == 1 and "the card was refused" in alerts[0]
    alert = steps_by_name(log)["alert"]
    assert alert["state"] == "STEP_SUCCESS" and alert["startedAt"] == START + HOUR


def _refuse() -> None:
    raise NonRetryableError("the card was refused")


async def test_child_runs_and_delayed_triggers_follow_the_clock() -> None:
    workflows = registry()

    @workflows.workflow("child")
    async def child(context: WorkflowContext) -> int:
        await context.sleep("rest", 7 * 24 * 3600)
        return 7

    @workflows.workflow("parent")
    async def parent(context: WorkflowContext) -> Any:
        return await context.invoke("call-child", "child", {"n": 1})

    async with WorkflowEnv(workflows, start=START) as env:
        log = await env.wait(await env.client.trigger("parent", delay=60))
    assert log["workflowRunResponse"] == 7
    assert log["workflowRunCompletedAt"] == START + MINUTE + 7 * DAY


async def test_a_workflow_timeout_is_virtual_time_too() -> None:
    workflows = registry()

    @workflows.workflow("slow", timeout=3600)
    async def slow(context: WorkflowContext) -> None:
        await context.sleep("too-long", 24 * 3600)

    async with WorkflowEnv(workflows, start=START) as env:
        log = await env.wait(await env.client.trigger("slow"))
    assert log["workflowState"] == "RUN_FAILED" and "timed out" in log["error"]
    assert log["workflowRunCompletedAt"] == START + HOUR


async def test_a_run_that_can_never_finish_is_named_with_its_step() -> None:
    """Nothing runs, nothing is due, no timer is left: the run waits for an event nobody
    will send (the run is written straight to the env's store to get one without a timeout)."""
    workflows = registry()

    @workflows.workflow("waits")
    async def waits(context: WorkflowContext) -> None:
        await context.wait_for_event("approval", "approve-1")

    async with WorkflowEnv(workflows, start=START) as env:
        wait = StepRecord(0, "approval", StepType.WAIT, StepState.PROGRESS, event_id="approve-1")
        record = RunRecord("wfr_stuck", "waits", RunState.STARTED, START, steps=[wait])
        await env.backend.create_run(CreateRun(record))
        with pytest.raises(RunStuck) as info:
            await env.wait("wfr_stuck")
    message = str(info.value)
    assert "wfr_stuck" in message and "'approval'" in message and "'approve-1'" in message
    assert "can never finish" in message


async def test_a_replay_that_diverges_is_reported_not_waited_on() -> None:
    workflows = registry()
    names = iter(["first", "second"])

    @workflows.workflow("random")
    async def random_names(context: WorkflowContext) -> None:
        await context.run(next(names, "third"), lambda: 1)  # not deterministic: a bug
        await context.sleep("nap", 60)

    async with WorkflowEnv(workflows, start=START) as env:
        run_id = await env.client.trigger("random")
        with pytest.raises(RunStuck) as info:
            await env.wait(run_id)
    message = str(info.value)
    assert run_id in message and "'second'" in message and "'first'" in message


async def test_a_blocking_step_hits_the_real_time_limit() -> None:
    workflows = registry()
    never = asyncio.Event()

    @workflows.workflow("blocked")
    async def blocked(context: WorkflowContext) -> None:
        await context.run("hang", never.wait)

    async with WorkflowEnv(workflows, timeout=0.5) as env:
        run_id = await env.client.trigger("blocked")
        with pytest.raises(TimeoutError, match=r"wait\('wfr_.*'hang'"):
            await env.wait(run_id)


async def test_time_only_moves_forward_and_unknown_runs_are_refused() -> None:
    env = WorkflowEnv(registry(), start=START)
    with pytest.raises(RuntimeError, match="async with"):
        await env.wait("wfr_any")
    async with env:
        with pytest.raises(ValueError, match="forward"):
            await env.advance(-1)
        assert env.now() == START
        with pytest.raises(Exception, match="wfr_nope"):
            await env.wait("wfr_nope")
        with pytest.raises(RuntimeError, match="no Realtime"):
            env.channel("x")


async def test_a_parked_child_is_reported_not_waited_on() -> None:
    workflows = registry()
    names = iter(["first", "second"])

    @workflows.workflow("child")
    async def child(context: WorkflowContext) -> None:
        await context.run(next(names, "third"), lambda: 1)  # not deterministic: a bug
        await context.sleep("nap", 60)

    @workflows.workflow("parent")
    async def parent(context: WorkflowContext) -> None:
        await context.invoke("child", "child")

    async with WorkflowEnv(workflows, start=START, timeout=10) as env:
        run_id = await env.client.trigger("parent")
        with pytest.raises(RunStuck) as info:
            await env.wait(run_id)  # not 10 s of looking at the child again every 30 s
    message = str(info.value)
    assert "(child)" in message and "'second'" in message and "'first'" in message


async def test_code_reaching_the_registry_reaches_the_env(tmp_path: Path) -> None:
    workflows = registry(tmp_path)

    @workflows.workflow("child")
    async def child(context: WorkflowContext) -> str:
        return "done"

    @workflows.workflow("parent")
    async def parent(context: WorkflowContext) -> str:
        started: str = await context.run(
            "start-child", lambda: workflows.client().trigger("child", workflow_run_id="kid")
        )
        return started

    async with WorkflowEnv(workflows, start=START) as env:
        log = await env.wait(await env.client.trigger("parent"))
        child_log = await env.wait("wfr_kid")
    assert log["workflowRunResponse"] == "wfr_kid"
    assert child_log["workflowRunResponse"] == "done"
    assert not (tmp_path / "app.db").exists()  # the registry's own store: never opened
    assert workflows.engine.backend.url.startswith("sqlite")  # given back afterwards
