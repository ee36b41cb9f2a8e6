"""Executing one claimed run: replay the workflow function from the top once, then record how
it ended — finished, suspended until its earliest wake-up, failed over to its failure function,
parked, or handed back after a storage failure.

The worker calls ``execute``; the engine provides storage and events (it is the context's
``Runtime``); this module decides what a run's ending means.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from stepstream.backends.base import RunPatch
from stepstream.clock import Clock
from stepstream.errors import (
    BackendError,
    LeaseLost,
    NonRetryableError,
    StepFailed,
    StepstreamError,
    UnknownWorkflow,
    ValidationError,
    WorkflowFailed,
)
from stepstream.records import Lease, RunRecord, RunState, StepState
from stepstream.workflow.context import WorkflowContext
from stepstream.workflow.engine import Engine, to_json
from stepstream.workflow.policy import RetryPolicy
from stepstream.workflow.registry import Workflow
from stepstream.workflow.runtime import Cancel, StorageInterrupted, Suspend, raise_as
from stepstream.workflow.tracebacks import type_name

HAND_BACK_SECONDS = 10.0  # how long a run is offered back after a storage error
# How long a run handed back after a storage error waits to be resumed: storage that refuses
# writes (a full Redis) would otherwise have its step bodies run again many times a second.
STORAGE_BACKOFF_MS = 1000
# A run taken over this many times in a row with no step stored in between (each worker that
# ran it stopped or stalled past its lease: a step blocking the event loop, or killing its
# process) fails instead of running the step again (``RunRecord.takeovers``).
MAX_TAKEOVERS = 10
_NO_RETRIES = RetryPolicy(retries=0)  # a run whose workflow is unknown here runs no step
log = logging.getLogger("stepstream.engine")


async def execute(
    engine: Engine,
    run: RunRecord,
    lease: Lease,
    clock: Clock,
    *,
    confirm: Callable[[], Awaitable[None]] | None = None,
    stopping: Callable[[], bool] | None = None,
) -> None:
    """Replay ``run`` from the top once, running its new steps, until it finishes or
    suspends, under ``lease`` (every write is fenced by it). Never raises for the run's own
    failures: they become its state. A lost lease ends the execution quietly; a storage
    failure hands the run back to be resumed, it never fails it. ``confirm`` is awaited before
    each step body and raises ``LeaseLost`` if the run is no longer this execution's; once
    ``stopping`` says so, the run is handed back before its next step body instead."""
    try:
        definition = engine.registry.get(run.workflow)
    except UnknownWorkflow as exc:  # workers claim only what they know; a race left
        definition = None
        problem: str | None = str(exc)
    else:
        problem = None
    policy = definition.policy if definition is not None else None
    context = WorkflowContext(
        run, engine, lease, clock, policy or _NO_RETRIES, confirm=confirm, stopping=stopping
    )
    execution = Execution(engine, context)
    try:
        if definition is None:
            await execution.park(problem or "unknown workflow")
        elif run.takeovers >= MAX_TAKEOVERS:
            await execution.taken_over_too_often(definition)
        elif run.phase == "failure":
            await execution.failure_phase(definition)
        else:
            await execution.run_phase(definition)
    except LeaseLost:
        return  # canceled, or claimed again by a newer execution: that one owns the run
    except (StorageInterrupted, BackendError) as exc:
        # A step's write (StorageInterrupted) or the engine's own (finish, release) failed:
        # whether or not it was applied, the log says where the run is. Resume from there.
        log.warning("run %s: storage failed (%s); handing it back to resume", run.id, exc)
        await execution.hand_back()
    except asyncio.CancelledError:
        # The worker is stopping: let the run go so another worker resumes it at once.
        release = asyncio.ensure_future(execution.release(clock(), {}))
        # Cancelled again while it runs, nobody awaits it: its failure is expected, not news.
        release.add_done_callback(_quietly)
        with contextlib.suppress(Exception, LeaseLost):
            await asyncio.shield(release)
        raise


def _quietly(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()


class Execution:
    """The ending of one execution of a run, recorded under its lease."""

    def __init__(self, engine: Engine, context: WorkflowContext) -> None:
        self.engine = engine
        self.context = context
        self.lease = context.lease
        self.run = context.record

    async def release(self, due: int | None, patch: RunPatch, *, hold: bool = False) -> None:
        await self.engine.release(self.lease, due, patch, hold=hold)

    async def run_phase(self, definition: Workflow) -> None:
        context, run = self.context, self.run
        if run.timeout_at is not None and run.timeout_at <= context.now():
            # Resumed past the deadline: a replay that suspends without ever yielding to the
            # loop would never let the timer below fire, and the run would be retaken forever.
            message = f"run timed out after {definition.timeout:g}s"
            await self.fail(definition, WorkflowFailed(message))
            return
        deadline = None
        if run.timeout_at is not None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + (run.timeout_at - context.now()) / 1000
        timer = asyncio.timeout_at(deadline)
        try:
            try:
                async with timer:
                    result = await _user(_started, definition, context)
                    _unless_suspended(context)
            finally:
                await context.settle()
        except Suspend:
            patch: RunPatch = {"error": None} if run.error is not None else {}  # no longer stuck
            await self.wait(run.timeout_at, patch)
            return
        except Cancel:
            await self.cancel()
            return
        except BackendError as exc:
            # From the workflow's own code outside a step (a custom emit, say): storage, not
            # the workflow, failed. Resume later rather than fail the run.
            raise StorageInterrupted(str(exc)) from exc
        except StepFailed as exc:
            outcome: WorkflowFailed | None = WorkflowFailed(str(exc), exc.step)
        except TimeoutError as exc:
            if timer.expired():
                message = f"run timed out after {definition.timeout:g}s"
            else:
                message = f"{type(exc).__name__}: {exc}"
            outcome = WorkflowFailed(message)
        except Exception as exc:
            outcome = WorkflowFailed(_describe(exc))
        else:
            outcome = None
        if await self.diverged():
            return
        if outcome is not None:
            await self.fail(definition, outcome)
            return
        what = f"the return value of workflow {run.workflow!r}"
        try:
            out = to_json(result, what)
            self.engine.check_size(out, what)
        except (ValidationError, NonRetryableError) as exc:  # not JSON; over max_result_bytes
            await self.fail(definition, WorkflowFailed(str(exc)))
            return
        await self.finish(RunState.SUCCESS, out, None)

    async def fail(self, definition: Workflow, failure: WorkflowFailed) -> None:
        if definition.failure_function is None:
            await self.finish(RunState.FAILED, None, failure.message)
            return
        patch: RunPatch = {
            "phase": "failure",
            "error": failure.message,
            "failed_step": failure.step,
        }
        await self.release(self.context.now(), patch)
        self.engine.wake()

    async def taken_over_too_often(self, definition: Workflow) -> None:
        """Fail the run rather than run its step in flight once more: each of the last
        ``MAX_TAKEOVERS`` workers that ran it stopped or stalled before storing a step."""
        done = [step.name for step in self.run.steps if step.state is StepState.SUCCESS]
        after = f" after step {done[-1]!r}" if done else ""
        message = (
            f"taken over {self.run.takeovers} times in a row, storing no step{after}: each "
            "worker running it died or stalled past its lease (its logs say which: 'this "
            "worker stalled'). A step that blocks the event loop (time.sleep, requests, heavy "
            "CPU work in an async def), this run's or another's on the same worker, must be a "
            "plain def; one that kills its process (out of memory) must do less. Failed "
            "instead of running it again (resume the run once fixed)"
        )
        if self.run.phase == "failure":  # the failure function is what stalls: not again
            await self.finish(RunState.FAILED, None, f"{self.run.error or 'failed'}; {message}")
        else:
            await self.fail(definition, WorkflowFailed(message))

    async def failure_phase(self, definition: Workflow) -> None:
        context, run = self.context, self.run
        error = run.error or "failed"
        if definition.failure_function is None:  # a deploy removed it: nothing left to run
            await self.finish(RunState.FAILED, None, error)
            return
        try:
            try:
                failure = WorkflowFailed(error, run.failed_step)
                await _user(definition.failure_function, context, failure)
                _unless_suspended(context)
            finally:
                await context.settle()
        except Suspend:
            await self.wait(None, {})
            return
        except Cancel:
            await self.cancel()
            return
        except BackendError as exc:
            raise StorageInterrupted(str(exc)) from exc
        except Exception as exc:
            if await self.diverged():
                return
            attempts = run.failure_attempts + 1
            policy = definition.policy
            if attempts <= policy.retries:
                due = context.now() + int(policy.delay(attempts) * 1000)
                await self.release(due, {"failure_attempts": attempts})
                self.engine.wake(due)
                return
            error = f"{error} (and the failure function failed: {_describe(exc)})"
        if await self.diverged():
            return
        await self.finish(RunState.FAILED, None, error)

    async def wait(self, timeout_at: int | None, patch: RunPatch) -> None:
        """The function suspended (a sleep, a retry delay, an event, a child run): give the run
        up until its earliest wake-up."""
        if await self.diverged():
            return
        due = _earliest(self.context.wakes, timeout_at)
        await self.release(due, patch)
        if due is not None:
            self.engine.wake(due)

    async def cancel(self) -> None:
        """``context.cancel()`` was called."""
        if await self.diverged():
            return
        await self.finish(RunState.CANCELED, None, "canceled")

    async def finish(self, state: RunState, result: str | None, error: str | None) -> None:
        await self.engine.finish(self.lease, state, result, error, self.context.now())
        if self.run.parent is not None:
            self.engine.wake()

    async def diverged(self) -> bool:
        """Before acting on how the workflow function ended: re-raise a lost lease or storage
        failure, and park a replay that diverged (whatever the function did with the error)."""
        self.context.raise_if_interrupted()
        if self.context.nondeterminism is None:
            return False
        await self.park(str(self.context.nondeterminism))
        return True

    async def park(self, message: str) -> None:
        """The code cannot replay this run (another version recorded it, or it is not
        registered here): keep it, visibly, and look again later. A deploy that fixes the code
        lets it continue; ``cancel`` ends it. Failing it would throw away its completed steps."""
        seconds = self.engine.park_seconds
        log.error("run %s is stuck: %s (looked at again every %gs)", self.run.id, message, seconds)
        patch: RunPatch = {"error": message} if self.run.phase == "run" else {}
        await self.release(self.context.now() + int(seconds * 1000), patch, hold=True)

    async def hand_back(self) -> None:
        """Release the run to be resumed ``STORAGE_BACKOFF_MS`` from now, retrying while
        storage is down; if that never works, the lease expires and another claim resumes it
        all the same."""
        loop = asyncio.get_running_loop()
        delay = 0.1
        deadline = loop.time() + HAND_BACK_SECONDS
        while True:
            try:
                due = self.context.now() + STORAGE_BACKOFF_MS
                await self.release(due, {})
                self.engine.wake(due)
                return
            except LeaseLost:
                return
            except StepstreamError as exc:
                if loop.time() + delay > deadline:
                    log.warning(
                        "run %s: cannot hand back (%s); its lease will expire", self.run.id, exc
                    )
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _earliest(wakes: list[int | None], timeout_at: int | None) -> int | None:
    times = [w for w in wakes if w is not None]
    if timeout_at is not None:
        times.append(timeout_at)
    return min(times) if times else None


async def _user(function: Callable[..., Any], *args: Any) -> Any:
    """Call the workflow's own code (awaited if it returns an awaitable): a ``BaseException``
    it raises that the engine does not mean (``SystemExit``...) comes out as the failure it
    is (``runtime.as_raised``), never ending the worker's process."""
    try:
        outcome = function(*args)
        return await outcome if inspect.isawaitable(outcome) else outcome
    except BaseException as exc:
        raise_as(exc)


def _unless_suspended(context: WorkflowContext) -> None:
    """A function that returned although a step of it suspended the run (the ``Suspend`` was
    caught: ``gather(..., return_exceptions=True)``, ``except BaseException``) has not ended:
    the run waits, as if the ``Suspend`` had come through."""
    if context.wakes:
        raise Suspend(None)  # the run is due at the earliest of ``context.wakes``


def _started(definition: Workflow, context: WorkflowContext) -> Awaitable[Any]:
    """What awaiting runs ``definition``'s function: a plain ``def`` (or a callable object)
    registered as a workflow returns something else, and the run fails saying so."""
    started = definition.fn(context)
    if not inspect.isawaitable(started):
        raise TypeError(
            f"workflow {definition.name!r} returned {type_name(started)} instead of a "
            "coroutine: a workflow is an async def fn(context) that awaits its steps "
            "(await context.run('name', fn); the steps may be plain def functions)"
        )
    return started
