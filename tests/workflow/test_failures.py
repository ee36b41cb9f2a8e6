"""Retries, ``RetryAfterError``, ``NonRetryableError``, the failure function, and timeouts."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from stepstream import (
    NonRetryableError,
    RetryAfterError,
    StepFailed,
    WorkflowContext,
    WorkflowFailed,
    Workflows,
)
from tests.workflow.helpers import Harness, check_history, steps_by_name, updates, wait_for_state

pytestmark = pytest.mark.anyio


async def test_retry_then_success(harness: Harness) -> None:
    workflows = harness.workflows()
    ran: Counter[str] = Counter()

    def flaky() -> str:
        ran["flaky"] += 1
        if ran["flaky"] < 3:
            raise ValueError(f"not yet ({ran['flaky']})")
        return "finally"

    @workflows.workflow("flaky", retries=3, retry_delay=0.01)
    async def flaky_workflow(context: WorkflowContext) -> str:
        await context.run("first", lambda: ran.update(["first"]))
        result: str = await context.run("flaky", flaky)
        return result

    await harness.worker(workflows)
    client = workflows.client()
    run_id = await client.trigger("flaky")
    log = await wait_for_state(client, run_id)

    assert log["workflowState"] == "RUN_SUCCESS", log["error"]
    assert log["workflowRunResponse"] == "finally"
    assert ran == {"first": 1, "flaky": 3}
    step = steps_by_name(log)["flaky"]
    assert step["state"] == "STEP_SUCCESS" and step["attempts"] == 3 and step["out"] == "finally"

    events = await updates(workflows, run_id)
    check_history(log, events)
    flaky_events = [
        (e["type"], e["attempt"], e.get("willRetry"), e.get("error"))
        for e in events
        if e.get("stepName") == "flaky"
    ]
    assert flaky_events == [
        ("stepStart", 1, None, None),
        ("stepFail", 1, True, "ValueError: not yet (1)"),
        ("stepStart", 2, None, None),
        ("stepFail", 2, True, "ValueError: not yet (2)"),
        ("stepStart", 3, None, None),
        ("stepFinish", 3, None, None),
    ]


async def test_retry_after_error_sets_the_delay(harness: Harness) -> None:
    """The workflow's own retry delay is an hour: only ``RetryAfterError(0.05)`` lets the run
    finish within the test's timeout."""
    workflows = harness.workflows()
    ran: Counter[str] = Counter()

    def rate_limited() -> str:
        ran["call"] += 1
        if ran["call"] == 1:
            raise RetryAfterError(0.05)
        return "through"

    @workflows.workflow("rate-limited", retries=1, retry_delay=3600)
    async def workflow(context: WorkflowContext) -> str:
        result: str = await context.run("call", rate_limited)
        return result

    await harness.worker(workflows)
    client = workflows.client()
    run_id = await client.trigger("rate-limited")
    log = await wait_for_state(client, run_id)

    assert log["workflowState"] == "RUN_SUCCESS", log["error"]
    assert ran == {"call": 2}
    events = await updates(workflows, run_id)
    fail = next(e for e in events if e["type"] == "stepFail")
    restart = [e for e in events if e["type"] == "stepStart"][1]
    assert fail["willRetry"] is True and "retry after 0.05s" in fail["error"]
    assert restart["timestamp"] - fail["timestamp"] >= 40  # not retried before the delay


def register_doomed(
    workflows: Workflows, ran: Counter[str], failures: list[BaseException], error: Exception
) -> None:
    async def on_failure(context: WorkflowContext, failure: BaseException) -> None:
        failures.append(failure)
        await context.run("compensate", lambda: ran.update(["compensate"]))

    def doomed() -> None:
        ran["doomed"] += 1
        raise error

    @workflows.workflow("doomed", retries=2, retry_delay=0.01, failure_function=on_failure)
    async def workflow(context: WorkflowContext) -> None:
        await context.run("first", lambda: ran.update(["first"]))
        await context.run("doomed", doomed)
        await context.run("never", lambda: ran.update(["never"]))


async def test_retries_exhausted_call_the_failure_function_once(harness: Harness) -> None:
    workflows = harness.workflows()
    ran: Counter[str] = Counter()
    failures: list[BaseException] = []
    register_doomed(workflows, ran, failures, KeyError("card-declined"))
    await harness.worker(workflows)
    client = workflows.client()
    run_id = await client.trigger("doomed")
    log = await wait_for_state(client, run_id)

    assert log["workflowState"] == "RUN_FAILED"
    assert ran == {"first": 1, "doomed": 3, "compensate": 1}
    assert len(failures) == 1
    (failure,) = failures
    assert isinstance(failure, WorkflowFailed)
    assert "'doomed'" in str(failure) and "card-declined" in str(failure)
    assert "'doomed'" in log["error"] and "card-declined" in log["error"]
    doomed = steps_by_name(log)["doomed"]
    assert doomed["state"] == "STEP_FAILED" and doomed["attempts"] == 3
    assert "card-declined" in doomed["error"]
    assert "never" not in steps_by_name(log)

    events = await updates(workflows, run_id)
    check_history(log, events)
    finishes = [e for e in events if e["type"] == "runFinish"]
    assert len(finishes) == 1 and finishes[0]["status"] == "failed"
    assert "card-declined" in finishes[0]["error"]
    will_retry = [e["willRetry"] for e in events if e["type"] == "stepFail"]
    assert will_retry == [True, True, False]
    # The failure function's steps say so; the run's own carry no such field.
    marked = {e["stepName"]: e.get("failureFunction") for e in events if "stepName" in e}
    assert marked == {"first": None, "doomed": None, "compensate": True}


async def test_failure_function_knows_the_failed_step(harness: Harness) -> None:
    """``WorkflowFailed.step`` names the failing step (errors.py), in the failure function too."""
    workflows = harness.workflows()
    failures: list[BaseException] = []
    register_doomed(workflows, Counter(), failures, NonRetryableError("no"))
    await harness.worker(workflows)
    client = workflows.client()
    await wait_for_state(client, await client.trigger("doomed"))

    (failure,) = failures
    assert isinstance(failure, WorkflowFailed)
    assert failure.step == "doomed"


async def test_non_retryable_error_skips_retries(harness: Harness) -> None:
    workflows = harness.workflows()
    ran: Counter[str] = Counter()
    failures: list[BaseException] = []
    register_doomed(workflows, ran, failures, NonRetryableError("fatal: account closed"))
    await harness.worker(workflows)
    client = workflows.client()
    run_id = await client.trigger("doomed")
    log = await wait_for_state(client, run_id)

    assert log["workflowState"] == "RUN_FAILED"
    assert ran == {"first": 1, "doomed": 1, "compensate": 1}
    assert len(failures) == 1 and "account closed" in str(failures[0])
    doomed = steps_by_name(log)["doomed"]
    assert doomed["state"] == "STEP_FAILED" and doomed["attempts"] == 1
    events = await updates(workflows, run_id)
    check_history(log, events)
    assert [e["willRetry"] for e in events if e["type"] == "stepFail"] == [False]


async def test_step_failed_can_be_caught_to_compensate(harness: Harness) -> None:
    workflows = harness.workflows()
    ran: Counter[str] = Counter()

    def boom() -> None:
        ran["boom"] += 1
        raise NonRetryableError("boom")

    @workflows.workflow("compensating", retries=0)
    async def workflow(context: WorkflowContext) -> str:
        try:
            await context.run("boom", boom)
        except StepFailed as exc:
            failed = exc.step
            await context.sleep("pause", 0.05)  # a replay meets the failed step again
            return str(await context.run("undo", lambda: f"undid {failed}"))
        return "unreachable"

    await harness.worker(workflows)
    client = workflows.client()
    run_id = await client.trigger("compensating")
    log = await wait_for_state(client, run_id)

    assert log["workflowState"] == "RUN_SUCCESS", log["error"]
    assert log["workflowRunResponse"] == "undid boom"
    assert ran == {"boom": 1}
    check_history(log, await updates(workflows, run_id))


async def test_failing_failure_function_is_retried_then_the_run_fails(harness: Harness) -> None:
    workflows = harness.workflows()
    calls: Counter[str] = Counter()

    async def on_failure(context: WorkflowContext, failure: BaseException) -> None:
        calls["on_failure"] += 1
        raise RuntimeError("cleanup broke")

    @workflows.workflow("double-fault", retries=1, retry_delay=0.01, failure_function=on_failure)
    async def workflow(context: WorkflowContext) -> None:
        await context.run("boom", lambda: (_ for _ in ()).throw(NonRetryableError("boom")))

    await harness.worker(workflows)
    client = workflows.client()
    run_id = await client.trigger("double-fault")
    log = await wait_for_state(client, run_id)

    assert log["workflowState"] == "RUN_FAILED"
    assert calls == {"on_failure": 2}
    assert "boom" in log["error"] and "cleanup broke" in log["error"]
    check_history(log, await updates(workflows, run_id))


async def test_timeout_fails_the_run(harness: Harness) -> None:
    workflows = harness.workflows()
    ran: Counter[str] = Counter()

    async def slow() -> None:
        ran["slow"] += 1
        await asyncio.sleep(30)

    @workflows.workflow("too-slow", timeout=0.3, retry_delay=0.01)
    async def workflow(context: WorkflowContext) -> None:
        await context.run("slow", slow)
        await context.run("never", lambda: ran.update(["never"]))

    await harness.worker(workflows)
    client = workflows.client()
    run_id = await client.trigger("too-slow")
    log = await wait_for_state(client, run_id)

    assert log["workflowState"] == "RUN_FAILED"
    assert "timed out" in log["error"]
    assert ran == {"slow": 1}
    events = await updates(workflows, run_id)
    check_history(log, events)
    assert "timed out" in events[-1]["error"]


async def test_timeout_across_a_durable_sleep(harness: Harness) -> None:
    workflows = harness.workflows()
    ran: Counter[str] = Counter()

    @workflows.workflow("sleeps-too-long", timeout=0.3, retry_delay=0.01)
    async def workflow(context: WorkflowContext) -> None:
        await context.run("first", lambda: ran.update(["first"]))
        await context.sleep("long-nap", 30)
        await context.run("never", lambda: ran.update(["never"]))

    await harness.worker(workflows)
    client = workflows.client()
    run_id = await client.trigger("sleeps-too-long")
    log = await wait_for_state(client, run_id)

    assert log["workflowState"] == "RUN_FAILED"
    assert "timed out" in log["error"]
    assert ran == {"first": 1}
    check_history(log, await updates(workflows, run_id))


async def test_a_timed_out_run_has_no_step_left_in_progress(harness: Harness) -> None:
    """Steps in flight when a run times out (a step body, a durable sleep) must not stay
    ``STEP_PROGRESS`` in the log of a finished run (a cancel marks them ``STEP_CANCELED``)."""
    workflows = harness.workflows()

    @workflows.workflow("slow-step", timeout=0.3, retry_delay=0.01)
    async def slow_step(context: WorkflowContext) -> None:
        await context.run("slow", asyncio.sleep, 30)

    @workflows.workflow("long-sleep", timeout=0.3, retry_delay=0.01)
    async def long_sleep(context: WorkflowContext) -> None:
        await context.sleep("long-nap", 30)

    await harness.worker(workflows)
    client = workflows.client()
    for name in ("slow-step", "long-sleep"):
        log = await wait_for_state(client, await client.trigger(name))
        assert log["workflowState"] == "RUN_FAILED"
        states = {s["stepName"]: s["state"] for s in log["steps"]}
        assert "STEP_PROGRESS" not in states.values(), (name, states)
