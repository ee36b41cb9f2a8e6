"""The engine: start runs, execute one claimed run (replay + new steps), finish or suspend it.

Every state change goes to the backend together with the ``workflow.update`` event that
reports it (DESIGN §4), in one atomic unit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx

from stepstream.errors import (
    LeaseLost,
    NoWaiters,
    RunConflict,
    StepFailed,
    StepstreamError,
    UnknownWorkflow,
    ValidationError,
    WorkflowFailed,
)
from stepstream.workflow.context import Cancel, Suspend, WorkflowContext, now_ms
from stepstream.workflow.records import Emit, RunRecord, RunState, StepRecord

if TYPE_CHECKING:
    from stepstream.backends.base import Backend, HistoryPolicy
    from stepstream.workflow.registry import Workflow, Workflows

RUN_ID = re.compile(r"^[A-Za-z0-9_\-]{1,128}$")
FAILURE_POSITIONS = 1_000_000  # the failure function's own steps live past the run's
RAW_RESULT = "\x00result"  # a step event's result, still as JSON text (see ``emits``)
STATUS = {RunState.SUCCESS: "success", RunState.FAILED: "failed", RunState.CANCELED: "canceled"}


def run_id_from(value: str | None) -> str:
    """A caller's id gets the ``wfr_`` prefix; no id gets 128 random bits."""
    if value is None:
        return "wfr_" + secrets.token_urlsafe(16)
    if not isinstance(value, str) or not RUN_ID.match(value):
        raise ValidationError(
            f"workflowRunId {str(value)[:60]!r} must be 1-128 characters of A-Z a-z 0-9 _ -"
        )
    return value if value.startswith("wfr_") else "wfr_" + value


def to_json(value: Any, what: str) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"{what} is not JSON-serialisable: {exc}") from None


class Engine:
    def __init__(self, workflows: Workflows) -> None:
        self.workflows = workflows
        self.backend: Backend = workflows.backend
        self._wakers: list[Callable[[], None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._http: httpx.AsyncClient | None = None

    def new_run_id(self) -> str:
        return run_id_from(None)

    @property
    def policy(self) -> HistoryPolicy:
        return self.workflows.history_policy

    # -- local wake-ups ------------------------------------------------------------------------

    def add_waker(self, waker: Callable[[], None]) -> None:
        self._wakers.append(waker)

    def remove_waker(self, waker: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._wakers.remove(waker)

    def wake(self, at: int | None = None) -> None:
        """Tell workers a run is due: now (this process's and, through the backend, every
        other's), or at ``at`` (this process's, if within a minute)."""
        delay = 0.0 if at is None else (at - now_ms()) / 1000
        if delay <= 0:
            task = asyncio.get_running_loop().create_task(self._wake_others())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if not self._wakers:
            return
        if delay > 60:
            return  # the workers' polling finds it
        loop = asyncio.get_running_loop()
        for waker in list(self._wakers):
            if delay <= 0:
                waker()
            else:
                loop.call_later(delay, waker)

    async def _wake_others(self) -> None:
        with contextlib.suppress(StepstreamError):  # best effort: workers also poll
            await self.backend.wake_workers()

    # -- events ------------------------------------------------------------------------------

    def emits(self, run_id: str, event: dict[str, Any] | None) -> list[Emit]:
        if event is None or self.workflows.realtime is None:
            return []
        result = event.pop(RAW_RESULT, None)
        raw = json.dumps(event, separators=(",", ":"))
        if result is not None:  # already JSON text: splice it in rather than parse and re-dump
            raw = f'{raw[:-1]},"result":{result}}}'
        return [Emit(run_id, "workflow.update", raw)]

    def step_event(self, kind: str, run_id: str, step: StepRecord, **extra: Any) -> dict[str, Any]:
        event: dict[str, Any] = {
            "type": kind,
            "workflowRunId": run_id,
            "timestamp": now_ms(),
            "stepName": step.name,
            "stepType": step.type.value,
            "attempt": step.attempts,
        }
        if kind == "stepFinish" and step.out is not None:
            event[RAW_RESULT] = step.out
        if kind == "stepFail":
            event["error"] = step.error or "failed"
        event.update(extra)
        return event

    # -- starting, notifying, canceling ---------------------------------------------------------

    async def trigger(
        self,
        workflow: str,
        body: Any = None,
        *,
        run_id: str | None = None,
        delay: float | None = None,
        headers: dict[str, str] | None = None,
        parent: str | None = None,
        parent_position: int | None = None,
    ) -> str:
        definition = self.workflows.get(workflow)
        payload = to_json(body, "the request payload")
        run_id = run_id_from(run_id)
        if delay is not None and (not isinstance(delay, int | float) or delay < 0):
            raise ValidationError(f"delay must be seconds >= 0, got {delay!r}")
        now = now_ms()
        due = now + int((delay or 0) * 1000)
        run = RunRecord(
            id=run_id,
            workflow=workflow,
            state=RunState.STARTED,
            created_at=now,
            payload=payload,
            headers=dict(headers or {}),
            due_at=due,
            timeout_at=None if definition.timeout is None else due + int(definition.timeout * 1000),
            parent=parent,
            parent_position=parent_position,
        )
        start = {"type": "runStart", "workflowRunId": run_id, "timestamp": now}
        await self.backend.create_run(run, self.emits(run_id, start), self.policy)
        self.wake(due)
        return run_id

    async def ensure_child(
        self, parent: RunRecord, position: int, child: str, workflow: str, body: Any
    ) -> None:
        with contextlib.suppress(RunConflict):  # created on an earlier attempt
            await self.trigger(
                workflow, body, run_id=child, parent=parent.id, parent_position=position
            )

    async def notify(self, event_id: str, data: Any = None, run_id: str | None = None) -> int:
        if not isinstance(event_id, str) or not event_id:
            raise ValidationError("event_id must be a non-empty string")
        raw = to_json(data, "the event data")
        woken = await self.backend.notify(event_id, raw, run_id, now_ms())
        if woken:
            self.wake()
        elif run_id is None:
            raise NoWaiters(event_id)
        return woken

    async def cancel(self, run_id: str) -> None:
        now = now_ms()
        event = {"type": "runFinish", "workflowRunId": run_id, "timestamp": now}
        event.update(status="canceled", error="canceled")
        await self.backend.cancel_run(run_id, now, self.emits(run_id, event), self.policy)

    # -- executing a claimed run ------------------------------------------------------------------

    async def execute(self, run: RunRecord, owner: str) -> None:
        """Replay ``run`` from the top once, running its new steps, until it finishes or
        suspends. Never raises for the run's own failures: they become its state."""
        try:
            definition = self.workflows.get(run.workflow)
        except UnknownWorkflow as exc:
            await self._quietly(self._finish(run, owner, RunState.FAILED, None, str(exc)))
            return
        if run.phase == "failure":
            await self._quietly(self._failure_phase(run, owner, definition))
            return
        context = WorkflowContext(run, self, owner)
        await self._quietly(self._run_workflow(run, owner, definition, context))

    async def _quietly(self, work: Any) -> None:
        with contextlib.suppress(LeaseLost):  # canceled or taken over: nothing left to do
            await work

    async def _run_workflow(
        self, run: RunRecord, owner: str, definition: Workflow, context: WorkflowContext
    ) -> None:
        if run.timeout_at is not None and run.timeout_at <= now_ms():
            # Resumed past the deadline: a replay that suspends without ever yielding to the
            # loop would never let the timer below fire, and the run would be retaken forever.
            message = f"run timed out after {definition.timeout:g}s"
            await self._fail(run, owner, definition, WorkflowFailed(message))
            return
        loop = asyncio.get_running_loop()
        deadline = None
        if run.timeout_at is not None:
            deadline = loop.time() + (run.timeout_at - now_ms()) / 1000
        timer = asyncio.timeout_at(deadline)
        try:
            try:
                async with timer:
                    result = await definition.fn(context)
            finally:
                await context.settle()
        except Suspend:
            due = _earliest(context.wakes, run.timeout_at)
            await self.backend.release_run(run.id, owner, due, {}, [], self.policy)
            if due is not None:
                self.wake(due)
            return
        except Cancel:
            await self._finish(run, owner, RunState.CANCELED, None, "canceled")
            return
        except LeaseLost:
            raise
        except StepFailed as exc:
            await self._fail(run, owner, definition, WorkflowFailed(str(exc), exc.step))
            return
        except TimeoutError as exc:
            if timer.expired():
                message = f"run timed out after {definition.timeout:g}s"
            else:
                message = f"{type(exc).__name__}: {exc}"
            await self._fail(run, owner, definition, WorkflowFailed(message))
            return
        except asyncio.CancelledError:
            # The worker is stopping: let the run go so another worker resumes it at once.
            with contextlib.suppress(Exception):
                await asyncio.shield(
                    self.backend.release_run(run.id, owner, now_ms(), {}, [], self.policy)
                )
            raise
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            await self._fail(run, owner, definition, WorkflowFailed(message))
            return
        try:
            out = to_json(result, f"the return value of workflow {run.workflow!r}")
        except ValidationError as exc:
            await self._fail(run, owner, definition, WorkflowFailed(str(exc)))
            return
        await self._finish(run, owner, RunState.SUCCESS, out, None)

    async def _fail(
        self, run: RunRecord, owner: str, definition: Workflow, failure: WorkflowFailed
    ) -> None:
        if definition.failure_function is None:
            await self._finish(run, owner, RunState.FAILED, None, failure.message)
            return
        patch = {"phase": "failure", "error": failure.message, "failed_step": failure.step}
        await self.backend.release_run(run.id, owner, now_ms(), patch, [], self.policy)
        self.wake()

    async def _failure_phase(self, run: RunRecord, owner: str, definition: Workflow) -> None:
        assert definition.failure_function is not None
        context = WorkflowContext(run, self, owner)
        context._position = FAILURE_POSITIONS
        error = run.error or "failed"
        try:
            try:
                outcome = definition.failure_function(
                    context, WorkflowFailed(error, run.failed_step)
                )
                if asyncio.iscoroutine(outcome) or isinstance(outcome, asyncio.Future):
                    await outcome
            finally:
                await context.settle()
        except Suspend:
            due = _earliest(context.wakes, None)
            await self.backend.release_run(run.id, owner, due, {}, [], self.policy)
            return
        except (Cancel, LeaseLost):
            raise
        except Exception as exc:
            attempts = run.failure_attempts + 1
            if attempts <= definition.retries:
                due = now_ms() + int(definition.delay(attempts) * 1000)
                patch = {"failure_attempts": attempts}
                await self.backend.release_run(run.id, owner, due, patch, [], self.policy)
                self.wake(due)
                return
            error = f"{error} (and the failure function failed: {type(exc).__name__}: {exc})"
        await self._finish(run, owner, RunState.FAILED, None, error)

    async def _finish(
        self, run: RunRecord, owner: str, state: RunState, result: str | None, error: str | None
    ) -> None:
        now = now_ms()
        event: dict[str, Any] = {
            "type": "runFinish",
            "workflowRunId": run.id,
            "timestamp": now,
            "status": STATUS[state],
        }
        if error is not None:
            event["error"] = error
        await self.backend.finish_run(
            run.id, owner, state.value, result, error, now, self.emits(run.id, event), self.policy
        )
        if run.parent is not None:
            self.wake()

    # -- durable HTTP calls ------------------------------------------------------------------

    async def http_call(
        self, url: str, method: str, body: Any, headers: dict[str, str], seconds: float
    ) -> dict[str, Any]:
        if self._http is None:
            self._http = httpx.AsyncClient()
        content: Any = None
        if body is not None and not isinstance(body, str | bytes):
            content = json.dumps(body)
            headers = {"content-type": "application/json", **headers}
        elif body is not None:
            content = body
        response = await self._http.request(
            method, url, content=content, headers=headers, timeout=seconds
        )
        try:
            parsed: Any = response.json()
        except ValueError:
            parsed = response.text
        return {"status": response.status_code, "headers": dict(response.headers), "body": parsed}

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None


def _earliest(wakes: list[int | None], timeout_at: int | None) -> int | None:
    times = [w for w in wakes if w is not None]
    if timeout_at is not None:
        times.append(timeout_at)
    return min(times) if times else None
