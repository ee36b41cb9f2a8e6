"""Issue 8's engine defects, each as the promise it broke (DESIGN §10): stalls, clock skew,
storage errors, control flow that user code could swallow, the failure phase, rolling deploys,
text strict parsers refuse, and the bounds on what a run may store."""

from __future__ import annotations

import asyncio
import errno
import inspect
import itertools
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from stepstream import Client, ValidationError, WorkflowContext, Workflows
from stepstream.backends.base import Claim, CreateRun, SaveSteps
from stepstream.errors import BackendUnavailable
from stepstream.records import RunRecord, RunState, StepRecord, StepState, StepType
from stepstream.workflow.engine import run_id_from
from stepstream.workflow.execution import MAX_TAKEOVERS, STORAGE_BACKOFF_MS
from tests.workflow.helpers import (
    Harness,
    check_history,
    steps_by_name,
    updates,
    wait_for_state,
    wait_for_step,
    wait_until,
)

pytestmark = pytest.mark.anyio


def finishes(events: list[dict[str, Any]]) -> Counter[str]:
    return Counter(e["stepName"] for e in events if e["type"] == "stepFinish")


# -- 1. a stall never makes a step commit twice --------------------------------------------------


@pytest.mark.parametrize("body", ["sync", "async"])
async def test_a_step_stalling_past_its_lease_commits_once(
    harness: Harness, body: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A body blocking 3x the lease: a sync one runs on a thread (heartbeats go on); an async
    one blocks the loop, and the worker must not claim its own run again when it wakes, and
    says what stalled it (with two workers, the other would have run the step again)."""
    workflows = harness.workflows()
    ran: Counter[str] = Counter()

    def block() -> str:
        ran.update(["stall"])
        time.sleep(1.5)
        return "done"

    async def block_loop() -> str:
        return block()  # time.sleep on the event loop, on purpose

    @workflows.workflow("stall", retries=0)
    async def stall(context: WorkflowContext) -> None:
        await context.run("stall", block if body == "sync" else block_loop)
        await context.run("after", lambda: ran.update(["after"]))

    await harness.worker(workflows, lease=0.5)
    client = workflows.client()
    run_id = await client.trigger("stall")
    log = await wait_for_state(client, run_id)
    assert log["workflowState"] == "RUN_SUCCESS", log["error"]
    events = await updates(workflows, run_id)
    check_history(log, events)
    assert finishes(events) == {"stall": 1, "after": 1}
    assert ran == {"stall": 1, "after": 1}
    if body == "async":  # (a sync one may stall a loaded machine's loop too: not asserted)
        stalled = [r.getMessage() for r in caplog.records if "worker stalled" in r.getMessage()]
        assert any(run_id in m and "make that step a plain def" in m for m in stalled), stalled


async def test_a_run_taken_over_too_often_without_progress_fails_instead_of_running_again(
    harness: Harness,
) -> None:
    """Workers that each die (or stall past the lease) while running the same step: after
    ``MAX_TAKEOVERS`` takeovers in a row with no step stored, the run fails, naming the cause,
    and its failure function runs; one takeover fewer and it runs on. (Without the bound, a
    step blocking its worker's event loop past the lease ran again for ever.)"""
    workflows = harness.workflows()
    ran: Counter[str] = Counter()
    handled: list[str] = []

    async def record_failure(context: WorkflowContext, error: Exception) -> None:
        handled.append(context.workflow_run_id)

    @workflows.workflow("doomed", retries=0, failure_function=record_failure)
    async def doomed(context: WorkflowContext) -> None:
        await context.run("first", lambda: ran.update([context.workflow_run_id]))
        await context.run("second", lambda: ran.update([context.workflow_run_id]))

    client = workflows.client()
    ids = {}
    for name, ghosts in (("failed", MAX_TAKEOVERS), ("survives", MAX_TAKEOVERS - 1)):
        run_id = ids[name] = await client.trigger("doomed", workflow_run_id=name)
        for i in range(ghosts):  # claimed by workers that die at once: the lease lapses
            others = tuple(other for other in ids.values() if other != run_id)
            ghost = Claim(f"ghost-{i}", 30, 1, ("doomed",), exclude=others)
            (claimed,) = await workflows.backend.claim_runs(ghost)
            assert claimed.id == run_id
            await asyncio.sleep(0.06)
    await harness.worker(workflows)
    failed = await wait_for_state(client, ids["failed"])
    assert failed["workflowState"] == "RUN_FAILED"
    assert f"taken over {MAX_TAKEOVERS} times in a row, storing no step" in failed["error"]
    assert "must be a plain def" in failed["error"]
    assert handled == [ids["failed"]] and ran[ids["failed"]] == 0
    survived = await wait_for_state(client, ids["survives"])
    assert survived["workflowState"] == "RUN_SUCCESS", survived["error"]
    assert ran[ids["survives"]] == 2


async def test_a_stalled_execution_taken_over_cannot_commit(harness: Harness) -> None:
    """Another worker takes the run over while the first is stalled: the stalled execution's
    writes are fenced out by the claim epoch; the step commits once (its body may run twice)."""
    workflows = harness.workflows()
    ran: Counter[str] = Counter()
    first = threading.Event()

    async def body() -> int:
        ran.update(["stall"])
        if not first.is_set():
            first.set()
            time.sleep(1.5)  # noqa: ASYNC251 - blocks this loop: its heartbeats stop
        return 1

    @workflows.workflow("stall", retries=0)
    async def stall(context: WorkflowContext) -> None:
        await context.run("stall", body)
        await context.run("after", lambda: ran.update(["after"]))

    await harness.worker(workflows, lease=0.5)
    other = harness.workflows()
    other.workflow("stall", retries=0)(stall)
    client = workflows.client()
    run_id = await client.trigger("stall")
    await asyncio.to_thread(first.wait, 10)
    # A second process's worker: its own loop, so it keeps running while ours is blocked.
    thread_error: list[BaseException] = []

    def run_other() -> None:
        async def main() -> None:
            worker = other.worker(lease=0.5, poll_interval=0.02)
            await worker.start()
            try:
                await asyncio.sleep(3)
            finally:
                await worker.stop(grace=1)
                await other.engine.aclose()
                await other.aclose()

        try:
            asyncio.run(main())
        except BaseException as exc:  # pragma: no cover - reported below
            thread_error.append(exc)

    runner = threading.Thread(target=run_other)
    runner.start()
    await asyncio.to_thread(runner.join, 20)
    assert not thread_error, thread_error
    log = await wait_for_state(client, run_id)
    assert log["workflowState"] == "RUN_SUCCESS", log["error"]
    events = await updates(workflows, run_id)
    check_history(log, events)
    # Each step committed once. A body in flight when the run was taken over may have run
    # twice (at-least-once): the stalled execution's writes were refused, not its bodies.
    assert finishes(events) == {"stall": 1, "after": 1}


async def test_a_worker_clock_far_ahead_takes_over_nothing(harness: Harness) -> None:
    """Leases are judged by the storage's clock: a worker 60 s ahead sees other workers'
    leases as they are, so no step body runs twice."""
    workflows = harness.workflows()
    ran: Counter[tuple[str, str]] = Counter()

    @workflows.workflow("slow", retries=0)
    async def slow(context: WorkflowContext) -> None:
        for name in ("a", "b", "c"):

            async def body(name: str = name) -> None:
                ran.update([(context.workflow_run_id, name)])
                await asyncio.sleep(0.3)

            await context.run(name, body)

    await harness.worker(workflows, lease=1.0)
    ahead = harness.workflows()
    ahead.workflow("slow", retries=0)(slow)
    await harness.worker(ahead, lease=1.0, clock=lambda: time.time_ns() // 1_000_000 + 60_000)
    client = workflows.client()
    run_ids = [await client.trigger("slow") for _ in range(8)]
    for run_id in run_ids:
        log = await wait_for_state(client, run_id)
        assert log["workflowState"] == "RUN_SUCCESS", log["error"]
        check_history(log, await updates(workflows, run_id))
        for step in log["steps"]:  # stamped on the storage's clock, not 60 s ahead
            assert step["startedAt"] <= time.time() * 1000 + 5000
    assert set(ran.values()) == {1}, [key for key, n in ran.items() if n > 1]


# -- 2. a storage error delays a run, it never fails it ----------------------------------------


async def test_a_storage_error_during_a_step_write_does_not_fail_the_run(
    harness: Harness,
) -> None:
    workflows = harness.workflows()
    ran: Counter[str] = Counter()
    compensated: list[str] = []
    backend = workflows.backend
    original = backend.save_steps
    failures = {"left": 2}

    async def flaky(op: SaveSteps) -> None:
        done = any(s.name == "charge" and s.state.value == "STEP_SUCCESS" for s in op.steps)
        if done and failures["left"]:
            failures["left"] -= 1
            raise BackendUnavailable("storage went away (injected)")
        await original(op)

    backend.save_steps = flaky  # type: ignore[method-assign]

    @workflows.workflow("pay", retries=0)
    async def pay(context: WorkflowContext) -> str:
        try:
            await context.run("charge", lambda: ran.update(["charge"]))
        except Exception as exc:  # the documented compensation pattern
            compensated.append(repr(exc))
            await context.run("refund", lambda: ran.update(["refund"]))
            return "refunded"
        return "paid"

    await harness.worker(workflows)
    client = workflows.client()
    run_id = await client.trigger("pay")
    log = await wait_for_state(client, run_id)
    assert log["workflowState"] == "RUN_SUCCESS", log["error"]
    assert log["workflowRunResponse"] == "paid"
    assert compensated == []
    assert ran == {"charge": 3}  # in flight twice when storage failed: run again
    events = await updates(workflows, run_id)
    check_history(log, events)
    assert finishes(events) == {"charge": 1}


async def test_a_run_handed_back_after_a_storage_error_waits_before_it_runs_again(
    harness: Harness,
) -> None:
    """Storage refusing a step's save (a full Redis refuses writes, not reads) hands the run
    back due a moment later, not at once: each resume runs the step's body again, and
    resumed at once it ran many times a second for as long as storage refused."""
    workflows = harness.workflows()
    starts: list[float] = []
    backend = workflows.backend
    original = backend.save_steps
    failures = {"left": 2}

    async def full(op: SaveSteps) -> None:
        if any(s.name == "charge" for s in op.steps) and failures["left"]:
            failures["left"] -= 1
            raise BackendUnavailable("OOM command not allowed (injected)")
        await original(op)

    backend.save_steps = full  # type: ignore[method-assign]

    @workflows.workflow("pay", retries=0)
    async def pay(context: WorkflowContext) -> None:
        await context.run("charge", lambda: starts.append(time.monotonic()))

    await harness.worker(workflows)
    client = workflows.client()
    run_id = await client.trigger("pay")
    log = await wait_for_state(client, run_id, seconds=20)
    assert log["workflowState"] == "RUN_SUCCESS", log["error"]
    assert len(starts) == 3  # the body ran again after each refused save
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= STORAGE_BACKOFF_MS / 1000 * 0.9, gaps  # a lower bound: never sooner


# -- 3. a lost lease cannot be swallowed by user code --------------------------------------------


async def test_except_exception_cannot_swallow_a_cancel_mid_step(harness: Harness) -> None:
    workflows = harness.workflows()
    ran: Counter[str] = Counter()
    started = asyncio.Event()

    async def slow() -> None:
        started.set()
        await asyncio.sleep(0.5)

    @workflows.workflow("order", retries=0)
    async def order(context: WorkflowContext) -> None:
        try:
            await context.run("slow", slow)
        except Exception:
            await context.run("compensate", lambda: ran.update(["compensate"]))
        await context.run("next", lambda: ran.update(["next"]))

    await harness.worker(workflows)
    client = workflows.client()
    run_id = await client.trigger("order")
    await started.wait()
    await client.cancel(run_id)
    await asyncio.sleep(1.0)
    log = await client.logs(run_id)
    assert log["workflowState"] == "RUN_CANCELED"
    assert ran == {}
    assert {s["stepName"] for s in log["steps"]} <= {"slow"}


# -- 4. the failure phase: cancel ends it, shutdown releases it ----------------------------------


async def test_cancel_inside_the_failure_function_cancels_the_run(harness: Harness) -> None:
    workflows = harness.workflows()
    calls: Counter[str] = Counter()

    async def on_failure(context: WorkflowContext, error: BaseException) -> None:
        calls.update(["failure"])
        context.cancel()

    @workflows.workflow("doomed", retries=0, failure_function=on_failure)
    async def doomed(context: WorkflowContext) -> None:
        await context.run("boom", lambda: 1 / 0)

    await harness.worker(workflows, lease=0.5)
    client = workflows.client()
    run_id = await client.trigger("doomed")
    log = await wait_for_state(client, run_id, seconds=10)
    assert log["workflowState"] == "RUN_CANCELED"
    await asyncio.sleep(1.0)  # past two leases: the failure function is not run again
    assert calls == {"failure": 1}
    check_history(log, await updates(workflows, run_id))


async def test_a_worker_stopping_during_the_failure_phase_releases_the_run(
    harness: Harness,
) -> None:
    workflows = harness.workflows()
    started = asyncio.Event()

    async def slow_cleanup() -> str:
        started.set()
        await asyncio.sleep(30)
        return "cleaned"

    async def on_failure(context: WorkflowContext, error: BaseException) -> None:
        await context.run("cleanup", slow_cleanup)

    @workflows.workflow("doomed", retries=0, failure_function=on_failure)
    async def doomed(context: WorkflowContext) -> None:
        await context.run("boom", lambda: 1 / 0)

    worker = await harness.worker(workflows, lease=30)
    client = workflows.client()
    run_id = await client.trigger("doomed")
    await started.wait()
    await worker.stop(grace=0)
    record = await workflows.backend.get_run(run_id)
    assert record is not None and record.lease_owner is None, "the run was not released"
    assert record.phase == "failure"


# -- 5. what strict parsers refuse is never sent ----------------------------------------------


async def test_lone_surrogates_in_errors_and_results_are_stored_and_streamed(
    harness: Harness,
) -> None:
    """A file name decoded with surrogateescape has a lone surrogate; Redis's cjson refuses its
    JSON escape. The run must still fail cleanly (runFinish), and its parent hear of it."""
    workflows = harness.workflows()
    name = b"report-\xff.txt".decode("utf-8", "surrogateescape")

    def unreadable() -> None:
        raise OSError(errno.EACCES, f"cannot read {name}")

    @workflows.workflow("child", retries=0)
    async def child(context: WorkflowContext) -> None:
        await context.run("echo", lambda: name)
        await context.run("open", unreadable)

    @workflows.workflow("parent", retries=0)
    async def parent(context: WorkflowContext) -> str:
        try:
            await context.invoke("call-child", "child")
        except Exception as exc:
            return f"child failed: {type(exc).__name__}"
        return "child succeeded"

    await harness.worker(workflows)
    client = workflows.client()
    run_id = await client.trigger("parent")
    log = await wait_for_state(client, run_id)
    assert log["workflowState"] == "RUN_SUCCESS"
    assert log["workflowRunResponse"] == "child failed: ChildRunFailed"
    record = await workflows.backend.get_run(run_id)
    assert record is not None
    child_id = record.steps[0].child
    assert child_id is not None
    child_log = await client.logs(child_id)
    assert child_log["workflowState"] == "RUN_FAILED"
    assert "cannot read report-\ufffd.txt" in child_log["error"]
    assert steps_by_name(child_log)["echo"]["out"] == "report-\ufffd.txt"
    check_history(child_log, await updates(workflows, child_id))
    check_history(log, await updates(workflows, run_id))


# -- 7. rolling deploys: a worker claims only what it knows --------------------------------------


async def test_a_worker_never_claims_a_workflow_it_does_not_have(harness: Harness) -> None:
    new = harness.workflows()

    @new.workflow("fresh")
    async def fresh(context: WorkflowContext) -> str:
        return await context.run("hello", lambda: "hi")

    old = harness.workflows()  # an older deployment: no "fresh" yet

    @old.workflow("legacy")
    async def legacy(context: WorkflowContext) -> None:
        return None

    await harness.worker(old)
    client = new.client()
    run_id = await client.trigger("fresh")
    await asyncio.sleep(0.5)
    log = await client.logs(run_id)
    assert log["workflowState"] == "RUN_STARTED" and log["error"] is None
    assert log["steps"] == []
    await harness.worker(new)
    log = await wait_for_state(client, run_id)
    assert log["workflowState"] == "RUN_SUCCESS"


# -- 14. bounds and ids -------------------------------------------------------------------------


async def test_a_step_result_over_the_limit_fails_at_once_saying_so(harness: Harness) -> None:
    workflows = harness.workflows()
    workflows.engine.max_result_bytes = 1000
    ran: Counter[str] = Counter()

    def big() -> str:
        ran.update(["big"])
        return "x" * 2000

    @workflows.workflow("big", retries=3, retry_delay=0.01)
    async def big_wf(context: WorkflowContext) -> None:
        await context.run("big", big)

    await harness.worker(workflows)
    client = workflows.client()
    run_id = await client.trigger("big")
    log = await wait_for_state(client, run_id)
    assert log["workflowState"] == "RUN_FAILED"
    assert "over the limit of 1,000" in log["error"] and "max_result_bytes" in log["error"]
    assert ran == {"big": 1}


async def test_a_return_value_over_the_limit_fails_the_run_once_saying_so(
    harness: Harness,
) -> None:
    """Not an engine error that hands the run back to be executed again, forever."""
    workflows = harness.workflows()
    workflows.engine.max_result_bytes = 1000
    ran: Counter[str] = Counter()

    @workflows.workflow("big-return")
    async def big_return(context: WorkflowContext) -> str:
        await context.run("small", lambda: 1)
        ran.update(["body"])
        return "x" * 2000

    await harness.worker(workflows)
    client = workflows.client()
    run_id = await client.trigger("big-return")
    log = await wait_for_state(client, run_id)
    assert log["workflowState"] == "RUN_FAILED"
    assert "over the limit of 1,000" in log["error"] and "max_result_bytes" in log["error"]
    assert ran == {"body": 1}


def test_a_run_id_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(ValidationError):
        run_id_from("order-1\n")
    assert run_id_from("order-1") == "wfr_order-1"


async def test_a_call_does_not_store_the_cookies_it_is_sent(harness: Harness) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from tests.conftest import free_port

    async def login(request: Any) -> JSONResponse:
        return JSONResponse(
            {"ok": True}, headers={"set-cookie": "session=secret", "x-request-id": "r1"}
        )

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(Starlette(routes=[Route("/login", login)]), port=port, log_level="error")
    )
    serving = asyncio.create_task(server.serve())
    try:
        await wait_until(lambda: _started(server), what="the test server")
        workflows = harness.workflows()

        @workflows.workflow("caller")
        async def caller(context: WorkflowContext) -> dict[str, Any]:
            return await context.call("login", f"http://127.0.0.1:{port}/login")

        await harness.worker(workflows)
        client = workflows.client()
        run_id = await client.trigger("caller")
        log = await wait_for_step(client, run_id, "login", {"STEP_SUCCESS"})
        headers = steps_by_name(log)["login"]["out"]["headers"]
        assert headers["x-request-id"] == "r1"
        assert "set-cookie" not in {name.lower() for name in headers}
        assert "secret" not in str(await updates(workflows, run_id))
    finally:
        server.should_exit = True
        await serving


async def _started(server: Any) -> bool:
    return bool(server.started)


async def test_runs_claimed_while_the_worker_stops_are_handed_straight_back(
    harness: Harness,
) -> None:
    workflows = harness.workflows()

    @workflows.workflow("quick")
    async def quick(context: WorkflowContext) -> None:
        return None

    client = workflows.client()
    run_id = await client.trigger("quick")
    backend = workflows.backend
    original = backend.claim_runs
    claiming = asyncio.Event()
    proceed = asyncio.Event()

    async def slow_claim(*args: Any, **kwargs: Any) -> Any:
        claimed = await original(*args, **kwargs)
        if claimed:
            claiming.set()
            await proceed.wait()
        return claimed

    backend.claim_runs = slow_claim  # type: ignore[method-assign]
    worker = await harness.worker(workflows)
    await claiming.wait()
    stopping = asyncio.create_task(worker.stop(grace=1))
    await asyncio.sleep(0.05)
    proceed.set()
    await stopping
    record = await backend.get_run(run_id)
    assert record is not None and record.state.value == "RUN_STARTED"
    assert record.lease_owner is None, "claimed during stop but never released"


@pytest.mark.parametrize("body", ["def", "async def"])
async def test_a_stopping_worker_hands_its_run_back_between_steps(
    harness: Harness, body: str
) -> None:
    """A worker told to stop lets the step body it runs finish and be stored, starts no other
    (one that began on it would be cut off at the deadline and run again), and hands the run
    back due at once: the next worker runs every later step, and each step runs once."""
    workflows = harness.workflows()
    calls: Counter[str] = Counter()
    first_running = threading.Event()
    first_may_end = threading.Event()  # for the thread of a def body
    first_may_end_here = asyncio.Event()  # for an async def one

    def blocking_first() -> str:
        calls.update(["first"])
        first_running.set()
        first_may_end.wait(10)
        return "first"

    async def async_first() -> str:
        calls.update(["first"])
        first_running.set()
        await first_may_end_here.wait()
        return "first"

    def second() -> str:
        calls.update(["second"])
        return "second"

    @workflows.workflow("two")
    async def two(context: WorkflowContext) -> list[str]:
        first = blocking_first if body == "def" else async_first
        return [await context.run("first", first), await context.run("second", second)]

    worker = await harness.worker(workflows, lease=30)
    client = workflows.client()
    run_id = await client.trigger("two")
    await asyncio.to_thread(first_running.wait, 10)
    stopping = asyncio.create_task(worker.stop(grace=20))
    await asyncio.sleep(0.1)  # the worker is stopping while the first body runs
    first_may_end.set()
    first_may_end_here.set()
    async with asyncio.timeout(10):
        await stopping  # long before the grace: the run went back after its first step
    record = await workflows.backend.get_run(run_id)
    assert record is not None and record.lease_owner is None, "the run was not handed back"
    assert [step.name for step in record.steps] == ["first"]
    assert calls == {"first": 1}
    await harness.worker(workflows)
    log = await wait_for_state(client, run_id, seconds=10)
    assert log["workflowState"] == "RUN_SUCCESS"
    assert log["workflowRunResponse"] == ["first", "second"]
    assert calls == {"first": 1, "second": 1}


# -- found in review ----------------------------------------------------------------------------


async def test_a_diverged_replay_records_no_sibling_step(harness: Harness) -> None:
    """v1 recorded ``charge`` and died before its next step; v2 replays it with ``bill`` and
    ``ship`` gathered: ``bill`` diverges, and ``ship`` (a new position) must not run and record
    a v2 step there, or v1 (the fix) could never replay the run again."""
    ran: Counter[str] = Counter()
    v2 = harness.workflows()

    @v2.workflow("order", retry_delay=0.01)
    async def order_v2(context: WorkflowContext) -> None:
        await asyncio.gather(
            context.run("bill", lambda: ran.update(["bill"])),
            context.run("ship", lambda: ran.update(["ship"])),
        )

    await v2.open()
    now = time.time_ns() // 1_000_000
    charge = StepRecord(0, "charge", StepType.RUN, StepState.SUCCESS, 1, now, now, out="null")
    run_id = "wfr_recorded-by-v1"
    await v2.backend.create_run(
        CreateRun(RunRecord(run_id, "order", RunState.STARTED, now, due_at=now, steps=[charge]))
    )
    v2.engine.park_seconds = 0.3
    await harness.worker(v2)

    async def parked() -> bool:
        return (await v2.client().logs(run_id))["error"] is not None

    await wait_until(parked, what="the run to be parked")
    await asyncio.sleep(0.5)
    await harness.close(v2)
    assert ran == {}
    probe = harness.workflows()
    await probe.open()
    record = await probe.backend.get_run(run_id)
    assert record is not None
    assert [s.name for s in record.steps] == ["charge"]

    v1 = harness.workflows()

    @v1.workflow("order", retry_delay=0.01)
    async def order_v1(context: WorkflowContext) -> None:
        await context.run("charge", lambda: ran.update(["charge"]))
        await context.run("pack", lambda: ran.update(["pack"]))

    await harness.worker(v1)
    log = await wait_for_state(v1.client(), run_id)
    assert log["workflowState"] == "RUN_SUCCESS"
    assert ran == {"pack": 1}


async def test_a_parked_run_that_receives_its_event_stays_parked(harness: Harness) -> None:
    """A notify for a parked run must not make it due at once, again and again."""
    v1 = harness.workflows()

    @v1.workflow("approve")
    async def approve_v1(context: WorkflowContext) -> None:
        await context.run("ask", lambda: "asked")
        await context.wait_for_event("answer", "answer-1")

    await harness.worker(v1)
    run_id = await v1.client().trigger("approve")
    await wait_for_step(v1.client(), run_id, "answer", {"STEP_PROGRESS"})
    await harness.close(v1)

    v2 = harness.workflows()
    executions: Counter[str] = Counter()

    @v2.workflow("approve")
    async def approve_v2(context: WorkflowContext) -> None:
        executions.update(["replay"])
        await context.run("request", lambda: "renamed")

    await harness.worker(v2)
    await v2.client().notify("answer-1", {"ok": True})  # due now: v2 replays it, and parks it

    async def parked() -> bool:
        return (await v2.client().logs(run_id))["error"] is not None

    await wait_until(parked, what="the run to be parked")
    await asyncio.sleep(1.0)
    assert executions["replay"] <= 2, executions  # parked for 30 s, not retaken in a loop


async def test_a_failure_phase_whose_function_was_removed_fails_the_run(
    harness: Harness,
) -> None:
    v1 = harness.workflows()
    release = asyncio.Event()

    async def on_failure(context: WorkflowContext, error: BaseException) -> None:
        await context.run("wait", release.wait)

    @v1.workflow("doomed", retries=0, failure_function=on_failure)
    async def doomed(context: WorkflowContext) -> None:
        await context.run("boom", lambda: 1 / 0)

    worker = await harness.worker(v1)
    run_id = await v1.client().trigger("doomed")
    await wait_for_step(v1.client(), run_id, "wait", {"STEP_PROGRESS"})
    await worker.stop(grace=0)  # released in its failure phase
    await harness.close(v1)

    v2 = harness.workflows()  # the deploy dropped the failure function

    @v2.workflow("doomed", retries=0)
    async def doomed_v2(context: WorkflowContext) -> None:
        await context.run("boom", lambda: 1 / 0)

    await harness.worker(v2)
    log = await wait_for_state(v2.client(), run_id)
    assert log["workflowState"] == "RUN_FAILED"
    assert "ZeroDivisionError" in log["error"]


async def test_a_storage_error_in_workflow_code_outside_a_step_does_not_fail_the_run(
    harness: Harness,
) -> None:
    workflows = harness.workflows()
    failures = {"left": 1}

    async def progress() -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise BackendUnavailable("storage went away (injected)")

    @workflows.workflow("emits", retries=0)
    async def emits(context: WorkflowContext) -> str:
        await context.run("first", lambda: 1)
        await progress()  # e.g. a custom event emitted between steps
        return "done"

    await harness.worker(workflows)
    client = workflows.client()
    run_id = await client.trigger("emits")
    log = await wait_for_state(client, run_id)
    assert log["workflowState"] == "RUN_SUCCESS", log["error"]


async def test_a_sync_step_returning_a_coroutine_releases_its_turn(harness: Harness) -> None:
    """``lambda: fetch()`` gives a coroutine: awaiting it is not the thread's work, so it
    neither blocks the run's other sync steps nor deadlocks a step it starts."""
    workflows = harness.workflows()
    both = asyncio.Event()
    seen: list[str] = []

    async def fetch(name: str) -> str:
        seen.append(name)
        if len(seen) == 2:
            both.set()
        await asyncio.wait_for(both.wait(), 5)  # only if the two run side by side
        return name

    @workflows.workflow("fetches", retries=0)
    async def fetches(context: WorkflowContext) -> list[str]:
        return list(
            await asyncio.gather(
                context.run("a", lambda: fetch("a")), context.run("b", lambda: fetch("b"))
            )
        )

    await harness.worker(workflows)
    client = workflows.client()
    run_id = await client.trigger("fetches")
    log = await wait_for_state(client, run_id)
    assert log["workflowState"] == "RUN_SUCCESS", log["error"]
    assert log["workflowRunResponse"] == ["a", "b"]


async def test_a_sync_step_raising_stop_iteration_fails_as_an_error(harness: Harness) -> None:
    """``next(iter([]))`` in a plain ``def`` body: an asyncio future refuses StopIteration, so
    it once left the step waiting forever; it is a step error like any other."""
    workflows = harness.workflows()

    @workflows.workflow("exhausted", retries=0)
    async def exhausted(context: WorkflowContext) -> None:
        await context.run("next", lambda: next(iter([])))

    await harness.worker(workflows)
    client = workflows.client()
    run_id = await client.trigger("exhausted")
    log = await wait_for_state(client, run_id)
    assert log["workflowState"] == "RUN_FAILED", log
    assert "StopIteration" in log["error"], log["error"]


# -- a stale execution after a stall ------------------------------------------------------------


async def test_no_step_body_starts_after_the_run_was_taken_over_during_a_stall() -> None:
    # One worker holds two runs. The first one's async body blocks the event loop past the
    # lease (no heartbeat can go out), and meanwhile another worker takes the second run over.
    # When the loop moves again, the second run's execution resumes with its old view of the
    # run: it must ask storage before starting a body, not run what the new owner may have
    # committed already.
    workflows = Workflows(backend="memory://stall-takeover")
    ran: Counter[str] = Counter()

    @workflows.workflow("staller")
    async def staller(context: WorkflowContext) -> None:
        async def block() -> None:
            time.sleep(0.6)  # noqa: ASYNC251 - the point: the loop is stuck, the 0.3 s leases run out
            thief = await workflows.backend.claim_runs(Claim("thief", 60_000, 5, ("victim",)))
            ran["taken over"] += len(thief)

        await context.run("block", block)

    @workflows.workflow("victim")
    async def victim(context: WorkflowContext) -> None:
        await context.run("effect", lambda: ran.update(["effect"]))

    client = workflows.client()
    await client.trigger("staller", workflow_run_id="staller")
    await client.trigger("victim", workflow_run_id="victim")
    worker = workflows.worker(lease=0.3, poll_interval=5, concurrency=2)
    await worker.start()
    try:
        await wait_for_state(client, "wfr_staller", {"RUN_SUCCESS"})
        await asyncio.sleep(0.3)  # the victim's execution has had its turn
    finally:
        await worker.stop(grace=1)
        await workflows.aclose()
    assert ran["taken over"] == 1
    assert ran["effect"] == 0  # the thief holds the run: this worker never ran its body


async def test_a_sync_step_waiting_for_its_turn_starts_not_once_the_run_was_taken(
    backend_url: str,
) -> None:
    # Parallel plain-def steps of one run take turns. While A's body holds the turn, another
    # run's body blocks the loop past the lease and another worker takes the run over. When
    # the loop moves again, B gets the turn: it must ask storage before its body starts, as
    # any body does after a stall, not run what the new owner may be running already.
    workflows = Workflows(backend=backend_url)
    ran: Counter[str] = Counter()
    a_started, a_may_end = threading.Event(), threading.Event()

    def a_body() -> None:
        a_started.set()
        a_may_end.wait(10)

    @workflows.workflow("victim")
    async def victim(context: WorkflowContext) -> None:
        await asyncio.gather(context.run("A", a_body), context.run("B", lambda: ran.update(["B"])))

    @workflows.workflow("staller")
    async def staller(context: WorkflowContext) -> None:
        async def block() -> None:
            await asyncio.to_thread(a_started.wait, 10)
            time.sleep(0.6)  # noqa: ASYNC251 - the point: the loop is stuck, the 0.3 s leases run out
            thief = await workflows.backend.claim_runs(Claim("thief", 60_000, 5, ("victim",)))
            ran["taken over"] += len(thief)
            a_may_end.set()

        await context.run("block", block)

    client = workflows.client()
    await client.trigger("victim", workflow_run_id="victim")
    worker = workflows.worker(lease=0.3, poll_interval=5, concurrency=2)
    await worker.start()
    try:
        await asyncio.to_thread(a_started.wait, 10)
        await client.trigger("staller", workflow_run_id="staller")
        await wait_for_state(client, "wfr_staller", {"RUN_SUCCESS"})
        await asyncio.sleep(0.3)  # the victim's execution has had its turn
    finally:
        a_may_end.set()
        await worker.stop(grace=1)
        await workflows.aclose()
    assert ran["taken over"] == 1
    assert ran["B"] == 0  # the thief holds the run: this worker never ran B's body


async def test_a_step_cut_off_with_its_worker_says_so_when_it_runs_again(
    harness: Harness,
) -> None:
    """A step whose start was stored but whose execution ended before its outcome (a worker
    killed, a stop's deadline) runs again: its log says why the first attempt left no result,
    rather than showing a second attempt with no error."""
    workflows = harness.workflows()
    started = asyncio.Event()
    calls: Counter[str] = Counter()

    async def slow() -> str:
        calls.update(["slow"])
        if calls["slow"] == 1:
            started.set()
            await asyncio.sleep(30)
        return "done"

    @workflows.workflow("cut")
    async def cut(context: WorkflowContext) -> str:
        return await context.run("slow", slow)

    worker = await harness.worker(workflows, lease=30)
    client = workflows.client()
    run_id = await client.trigger("cut")
    await started.wait()
    await wait_for_step(client, run_id, "slow", {"STEP_PROGRESS"})  # its start is stored
    await worker.stop(grace=0)  # cut off mid-body
    await harness.worker(workflows)
    log = await wait_for_state(client, run_id, seconds=10)
    assert log["workflowState"] == "RUN_SUCCESS"
    step = steps_by_name(log)["slow"]
    assert step["attempts"] == 2
    assert [e["attempt"] for e in step["errors"]] == [1]
    assert step["errors"][0]["error"].startswith("interrupted: the execution running it ended")
    assert step["errors"][0]["traceback"] == ""


async def test_a_stopping_worker_starts_no_parallel_step_waiting_for_its_turn(
    harness: Harness,
) -> None:
    """Plain ``def`` bodies of one run take turns: a sibling that passed the stop check before
    the stop came, then waited for its turn, must not start once it has the turn."""
    workflows = harness.workflows()
    calls: Counter[str] = Counter()
    a_running = threading.Event()
    a_may_end = threading.Event()

    def a() -> str:
        calls.update(["a"])
        a_running.set()
        a_may_end.wait(10)
        return "a"

    def b() -> str:
        calls.update(["b"])
        return "b"

    @workflows.workflow("pair")
    async def pair(context: WorkflowContext) -> list[str]:
        return list(await asyncio.gather(context.run("a", a), context.run("b", b)))

    worker = await harness.worker(workflows, lease=30)
    client = workflows.client()
    run_id = await client.trigger("pair")
    await asyncio.to_thread(a_running.wait, 10)
    stopping = asyncio.create_task(worker.stop(grace=20))
    await asyncio.sleep(0.1)
    a_may_end.set()
    async with asyncio.timeout(10):
        await stopping
    assert calls == {"a": 1}, "b started on a stopping worker"
    await harness.worker(workflows)
    log = await wait_for_state(client, run_id, seconds=10)
    assert log["workflowRunResponse"] == ["a", "b"]
    assert calls == {"a": 1, "b": 1}


class OwnBaseException(BaseException):
    """A user's exception that is no ``Exception``."""


def exits() -> None:
    sys.exit(2)


async def async_exits() -> None:
    sys.exit(2)


def interrupts() -> None:
    raise KeyboardInterrupt


async def own_base() -> None:
    raise OwnBaseException("mine")


async def cancels_itself() -> None:
    raise asyncio.CancelledError


@pytest.mark.parametrize(
    ("body", "shown"),
    [
        (exits, "SystemExit: 2"),
        (async_exits, "SystemExit: 2"),
        (interrupts, "KeyboardInterrupt"),
        (own_base, "OwnBaseException: mine"),
        (cancels_itself, "CancelledError"),
    ],
)
async def test_a_step_body_raising_a_base_exception_fails_like_any_error(
    harness: Harness, body: Callable[[], Any], shown: str
) -> None:
    """``sys.exit()`` in a step, a ``KeyboardInterrupt``, a ``BaseException`` of the user's
    own or a ``CancelledError`` nothing asked for: each fails the attempt, retries apply, and
    the run fails saying what was raised; the worker goes on with other runs (it ended the
    worker's process, or retried the step forever)."""
    workflows = harness.workflows()
    calls: Counter[str] = Counter()

    def counted() -> Any:
        calls.update(["body"])
        return body()

    async def async_counted() -> Any:
        calls.update(["body"])
        return await body()

    @workflows.workflow("escapes", retries=1, retry_delay=0.01)
    async def escapes(context: WorkflowContext) -> None:
        await context.run("escape", async_counted if inspect.iscoroutinefunction(body) else counted)

    await harness.worker(with_a_fine_workflow(workflows))
    client = workflows.client()
    run_id = await client.trigger("escapes")
    log = await wait_for_state(client, run_id)
    assert log["workflowState"] == "RUN_FAILED", log
    assert shown in (log["error"] or ""), log["error"]
    assert calls["body"] == 2  # one retry, as for any error
    await the_worker_goes_on(client)


@pytest.mark.parametrize("where", ["workflow", "failure function"])
async def test_workflow_code_raising_system_exit_fails_the_run(
    harness: Harness, where: str
) -> None:
    """``sys.exit()`` in the workflow's code outside any step, or in its failure function,
    fails the run (the failure function failing is said in its error); the worker lives."""
    workflows = harness.workflows()

    async def on_failure(context: WorkflowContext, error: Exception) -> None:
        sys.exit(3)

    @workflows.workflow(
        "exits", retries=0, failure_function=on_failure if where != "workflow" else None
    )
    async def exits_workflow(context: WorkflowContext) -> None:
        if where == "workflow":
            sys.exit(3)
        raise RuntimeError("the step before failed")

    await harness.worker(with_a_fine_workflow(workflows))
    client = workflows.client()
    run_id = await client.trigger("exits")
    log = await wait_for_state(client, run_id)
    assert log["workflowState"] == "RUN_FAILED", log
    assert "SystemExit: 3" in (log["error"] or ""), log["error"]
    await the_worker_goes_on(client)


def with_a_fine_workflow(workflows: Workflows) -> Workflows:
    """``workflows`` with ``fine``, a one-step workflow that succeeds."""

    @workflows.workflow("fine")
    async def fine(context: WorkflowContext) -> str:
        return await context.run("fine", lambda: "fine")

    return workflows


async def the_worker_goes_on(client: Client) -> None:
    """The worker still runs runs: a ``fine`` one succeeds."""
    after = await client.trigger("fine")
    assert (await wait_for_state(client, after))["workflowState"] == "RUN_SUCCESS"


async def test_steps_in_a_task_group_may_sleep_and_retry(harness: Harness) -> None:
    """A ``TaskGroup`` wraps the ``Suspend`` of a step that sleeps or waits to be retried in
    an exception group: the run waits as it would under ``gather`` (it failed for good, as
    an ``Escaped``, and before that its worker's task died with the group)."""
    workflows = harness.workflows()
    calls: Counter[str] = Counter()
    flaky = failing_once(calls)

    @workflows.workflow("grouped", retries=2, retry_delay=0.05)
    async def grouped(context: WorkflowContext) -> list[Any]:
        async with asyncio.TaskGroup() as group:
            napped = group.create_task(context.sleep("nap", 0.1))
            ran = group.create_task(context.run("flaky", flaky))
        return [napped.result(), ran.result()]

    await harness.worker(workflows)
    client = workflows.client()
    log = await wait_for_state(client, await client.trigger("grouped"))
    assert log["workflowState"] == "RUN_SUCCESS", log["error"]
    assert log["workflowRunResponse"] == [None, "flaky"]
    # A TaskGroup cancels the siblings of the step that suspended: an attempt of "flaky" cut
    # off that way runs again (at least once), so it may have run a third time.
    assert calls["flaky"] >= 2


async def test_a_suspension_gather_returned_as_a_value_still_suspends_the_run(
    harness: Harness,
) -> None:
    """``gather(..., return_exceptions=True)`` hands a step's ``Suspend`` (a sleep, a retry's
    delay) back as a value: the run still waits and goes on, rather than succeed with the
    engine's signals as its result and the failed step never retried."""
    workflows = harness.workflows()
    calls: Counter[str] = Counter()
    flaky = failing_once(calls)

    @workflows.workflow("gathered", retries=2, retry_delay=0.05)
    async def gathered(context: WorkflowContext) -> list[Any]:
        results = await asyncio.gather(
            context.sleep("nap", 0.1), context.run("flaky", flaky), return_exceptions=True
        )
        return [repr(result) if isinstance(result, BaseException) else result for result in results]

    await harness.worker(workflows)
    client = workflows.client()
    log = await wait_for_state(client, await client.trigger("gathered"))
    assert log["workflowState"] == "RUN_SUCCESS", log["error"]
    assert log["workflowRunResponse"] == [None, "flaky"]
    assert calls["flaky"] == 2


def failing_once(calls: Counter[str]) -> Callable[[], str]:
    """A step body that fails its first call and returns "flaky" after, counting in ``calls``."""

    def flaky() -> str:
        calls.update(["flaky"])
        if calls["flaky"] == 1:
            raise RuntimeError("once")
        return "flaky"

    return flaky
