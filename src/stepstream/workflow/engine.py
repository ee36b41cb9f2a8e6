"""The engine: start runs, execute one claimed run (replay + new steps), finish or suspend it.

Every state change goes to the backend together with the ``workflow.update`` event that
reports it (DESIGN §4), in one atomic unit.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import json
import logging
import re
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from stepstream.clock import Clock, system_ms
from stepstream.errors import (
    BackendError,
    ConfigurationError,
    LeaseLost,
    NonRetryableError,
    NoWaiters,
    RunConflict,
    StepFailed,
    StepstreamError,
    UnknownWorkflow,
    ValidationError,
    WorkflowFailed,
)
from stepstream.records import Emit, HistoryPolicy, Lease, RunRecord, RunState, StepRecord, dumps
from stepstream.workflow.context import (
    Cancel,
    StorageInterrupted,
    Suspend,
    WorkflowContext,
)

if TYPE_CHECKING:
    from stepstream.backends.base import Backend
    from stepstream.realtime.channel import Realtime
    from stepstream.workflow.registry import Registry, Workflow

RUN_ID = re.compile(r"[A-Za-z0-9_\-]{1,128}")
PARK_SECONDS = 30  # how often a stuck run (non-determinism, unknown workflow) is looked at again
HAND_BACK_SECONDS = 10.0  # how long a run is offered back after a storage error
STEP_THREADS = 64  # synchronous step bodies running at once, per process
PRIVATE_RESPONSE_HEADERS = frozenset(
    {"set-cookie", "set-cookie2", "www-authenticate", "proxy-authenticate", "authorization"}
)
log = logging.getLogger("stepstream.engine")
RAW_RESULT = "\x00result"  # a step event's result, still as JSON text (see ``emits``)
STATUS = {RunState.SUCCESS: "success", RunState.FAILED: "failed", RunState.CANCELED: "canceled"}


def run_id_from(value: str | None) -> str:
    """A caller's id gets the ``wfr_`` prefix; no id gets 128 random bits."""
    if value is None:
        return "wfr_" + secrets.token_urlsafe(16)
    if not isinstance(value, str) or not RUN_ID.fullmatch(value):
        raise ValidationError(
            f"workflowRunId {str(value)[:60]!r} must be 1-128 characters of A-Z a-z 0-9 _ -"
        )
    return value if value.startswith("wfr_") else "wfr_" + value


def to_json(value: Any, what: str) -> str:
    try:
        return dumps(value)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"{what} is not JSON-serialisable: {exc}") from None


class HasEngine(Protocol):
    """What workers, clients and the app are built from: a ``Workflows`` holds its engine."""

    @property
    def engine(self) -> Engine: ...


def engine_of(source: Engine | HasEngine) -> Engine:
    return source if isinstance(source, Engine) else source.engine


class Engine:
    """Runs the workflows of ``registry`` on ``backend``: starts runs, executes claimed ones,
    and (with ``realtime``) reports their progress on the channel named by each run id.

    ``max_result_bytes``: the largest step result or return value, as JSON text.
    """

    def __init__(
        self,
        registry: Registry,
        backend: Backend,
        realtime: Realtime | None = None,
        *,
        max_result_bytes: int = 1_048_576,
        clock: Clock = system_ms,
    ) -> None:
        if max_result_bytes < 1:
            raise ConfigurationError(f"max_result_bytes must be >= 1, got {max_result_bytes}")
        self.registry = registry
        self.backend = backend
        self.realtime = realtime
        self.max_result_bytes = max_result_bytes
        self.clock = clock
        self._opened = False
        self._wakers: list[Callable[[], None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._http: httpx.AsyncClient | None = None
        self._threads: ThreadPoolExecutor | None = None
        self.park_seconds: float = PARK_SECONDS

    def new_run_id(self) -> str:
        return run_id_from(None)

    @property
    def policy(self) -> HistoryPolicy:
        return self.realtime.history_policy if self.realtime is not None else HistoryPolicy()

    async def open(self) -> None:
        """Open the store (the realtime's, if any). Idempotent."""
        if self.realtime is not None:
            await self.realtime.open()
        elif not self._opened:
            await self.backend.open()
        self._opened = True

    async def close(self) -> None:
        """Release the engine's resources (``aclose``) and close the store."""
        await self.aclose()
        if self.realtime is not None:
            await self.realtime.aclose()
        else:
            await self.backend.close()
        self._opened = False

    # -- local wake-ups ------------------------------------------------------------------------

    def add_waker(self, waker: Callable[[], None]) -> None:
        self._wakers.append(waker)

    def remove_waker(self, waker: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._wakers.remove(waker)

    def wake(self, at: int | None = None) -> None:
        """Tell workers a run is due: now (this process's and, through the backend, every
        other's), or at ``at`` (this process's, if within a minute)."""
        delay = 0.0 if at is None else (at - self.clock()) / 1000
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
        if event is None or self.realtime is None:
            return []
        result = event.pop(RAW_RESULT, None)
        raw = dumps(event)
        if result is not None:  # already JSON text: splice it in rather than parse and re-dump
            raw = f'{raw[:-1]},"result":{result}}}'
        return [Emit(run_id, "workflow.update", raw)]

    def step_event(self, kind: str, run_id: str, step: StepRecord, **extra: Any) -> dict[str, Any]:
        event: dict[str, Any] = {
            "type": kind,
            "workflowRunId": run_id,
            "timestamp": (step.started_at if kind == "stepStart" else step.finished_at)
            or self.clock(),
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
        definition = self.registry.get(workflow)
        payload = to_json(body, "the request payload")
        run_id = run_id_from(run_id)
        if delay is not None and (not isinstance(delay, int | float) or delay < 0):
            raise ValidationError(f"delay must be seconds >= 0, got {delay!r}")
        now = self.clock()
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
        woken = await self.backend.notify(event_id, raw, run_id, self.clock())
        if woken:
            self.wake()
        elif run_id is None:
            raise NoWaiters(event_id)
        return woken

    async def cancel(self, run_id: str) -> None:
        now = self.clock()
        event = {"type": "runFinish", "workflowRunId": run_id, "timestamp": now}
        event.update(status="canceled", error="canceled")
        await self.backend.cancel_run(run_id, now, self.emits(run_id, event), self.policy)

    # -- executing a claimed run ------------------------------------------------------------------

    async def execute(self, run: RunRecord, lease: Lease, clock: Clock = system_ms) -> None:
        """Replay ``run`` from the top once, running its new steps, until it finishes or
        suspends, under ``lease`` (every write is fenced by it). Never raises for the run's own
        failures: they become its state. A lost lease ends the execution quietly; a storage
        failure hands the run back to be resumed, it never fails it."""
        context = WorkflowContext(run, self, lease, clock)
        try:
            try:
                definition = self.registry.get(run.workflow)
            except UnknownWorkflow as exc:  # workers claim only what they know; a race left
                await self._park(context, str(exc))
                return
            if run.phase == "failure":
                await self._failure_phase(context, definition)
            else:
                await self._run_phase(context, definition)
        except LeaseLost:
            return  # canceled, or claimed again by a newer execution: that one owns the run
        except (StorageInterrupted, BackendError) as exc:
            # A step's write (StorageInterrupted) or the engine's own (finish, release) failed:
            # whether or not it was applied, the log says where the run is. Resume from there.
            log.warning("run %s: storage failed (%s); handing it back to resume", run.id, exc)
            await self._hand_back(context)
        except asyncio.CancelledError:
            # The worker is stopping: let the run go so another worker resumes it at once.
            with contextlib.suppress(Exception, LeaseLost):
                await asyncio.shield(self.backend.release_run(lease, clock(), {}, [], self.policy))
            raise

    async def _hand_back(self, context: WorkflowContext) -> None:
        """Release the run to be resumed now, retrying while storage is down; if that never
        works, the lease expires and another claim resumes it all the same."""
        delay = 0.1
        deadline = asyncio.get_running_loop().time() + HAND_BACK_SECONDS
        while True:
            try:
                await self.backend.release_run(context.lease, context.now(), {}, [], self.policy)
                self.wake()
                return
            except LeaseLost:
                return
            except StepstreamError as exc:
                if asyncio.get_running_loop().time() + delay > deadline:
                    log.warning(
                        "run %s: cannot hand back (%s); its lease will expire",
                        context.lease.run_id,
                        exc,
                    )
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _diverged(self, context: WorkflowContext) -> bool:
        """Before acting on how the workflow function ended: re-raise a lost lease or storage
        failure, and park a replay that diverged (whatever the function did with the error)."""
        context.raise_if_interrupted()
        if context.nondeterminism is None:
            return False
        await self._park(context, str(context.nondeterminism))
        return True

    async def _park(self, context: WorkflowContext, message: str) -> None:
        """The code cannot replay this run (another version recorded it, or it is not
        registered here): keep it, visibly, and look again later. A deploy that fixes the code
        lets it continue; ``cancel`` ends it. Failing it would throw away its completed steps."""
        log.error(
            "run %s is stuck: %s (looked at again every %gs)",
            context.lease.run_id,
            message,
            self.park_seconds,
        )
        patch = {"error": message} if context.record.phase == "run" else {}
        due = context.now() + int(self.park_seconds * 1000)
        await self.backend.release_run(context.lease, due, patch, [], self.policy, hold=True)

    async def _run_phase(self, context: WorkflowContext, definition: Workflow) -> None:
        run = context.record
        if run.timeout_at is not None and run.timeout_at <= context.now():
            # Resumed past the deadline: a replay that suspends without ever yielding to the
            # loop would never let the timer below fire, and the run would be retaken forever.
            message = f"run timed out after {definition.timeout:g}s"
            await self._fail(context, definition, WorkflowFailed(message))
            return
        loop = asyncio.get_running_loop()
        deadline = None
        if run.timeout_at is not None:
            deadline = loop.time() + (run.timeout_at - context.now()) / 1000
        timer = asyncio.timeout_at(deadline)
        try:
            try:
                async with timer:
                    result = await definition.fn(context)
            finally:
                await context.settle()
        except Suspend:
            patch = {"error": None} if run.error is not None else {}  # no longer stuck
            await self._wait(context, run.timeout_at, patch)
            return
        except Cancel:
            await self._cancel(context)
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
        if await self._diverged(context):
            return
        if outcome is not None:
            await self._fail(context, definition, outcome)
            return
        try:
            out = to_json(result, f"the return value of workflow {run.workflow!r}")
            self.check_size(out, f"the return value of workflow {run.workflow!r}")
        except ValidationError as exc:
            await self._fail(context, definition, WorkflowFailed(str(exc)))
            return
        await self._finish(context, RunState.SUCCESS, out, None)

    async def _fail(
        self, context: WorkflowContext, definition: Workflow, failure: WorkflowFailed
    ) -> None:
        if definition.failure_function is None:
            await self._finish(context, RunState.FAILED, None, failure.message)
            return
        patch = {"phase": "failure", "error": failure.message, "failed_step": failure.step}
        await self.backend.release_run(context.lease, context.now(), patch, [], self.policy)
        self.wake()

    async def _failure_phase(self, context: WorkflowContext, definition: Workflow) -> None:
        run = context.record
        error = run.error or "failed"
        if definition.failure_function is None:  # a deploy removed it: nothing left to run
            await self._finish(context, RunState.FAILED, None, error)
            return
        try:
            try:
                outcome = definition.failure_function(
                    context, WorkflowFailed(error, run.failed_step)
                )
                if inspect.isawaitable(outcome):
                    await outcome
            finally:
                await context.settle()
        except Suspend:
            await self._wait(context, None, {})
            return
        except Cancel:
            await self._cancel(context)
            return
        except BackendError as exc:
            raise StorageInterrupted(str(exc)) from exc
        except Exception as exc:
            if await self._diverged(context):
                return
            attempts = run.failure_attempts + 1
            if attempts <= definition.retries:
                due = context.now() + int(definition.delay(attempts) * 1000)
                patch = {"failure_attempts": attempts}
                await self.backend.release_run(context.lease, due, patch, [], self.policy)
                self.wake(due)
                return
            error = f"{error} (and the failure function failed: {_describe(exc)})"
        if await self._diverged(context):
            return
        await self._finish(context, RunState.FAILED, None, error)

    async def _wait(
        self, context: WorkflowContext, timeout_at: int | None, patch: dict[str, Any]
    ) -> None:
        """The function suspended (a sleep, a retry delay, an event, a child run): give the run
        up until its earliest wake-up."""
        if await self._diverged(context):
            return
        due = _earliest(context.wakes, timeout_at)
        await self.backend.release_run(context.lease, due, patch, [], self.policy)
        if due is not None:
            self.wake(due)

    async def _cancel(self, context: WorkflowContext) -> None:
        """``context.cancel()`` was called."""
        if await self._diverged(context):
            return
        await self._finish(context, RunState.CANCELED, None, "canceled")

    async def _finish(
        self, context: WorkflowContext, state: RunState, result: str | None, error: str | None
    ) -> None:
        now = context.now()
        run_id = context.lease.run_id
        event: dict[str, Any] = {
            "type": "runFinish",
            "workflowRunId": run_id,
            "timestamp": now,
            "status": STATUS[state],
        }
        if error is not None:
            event["error"] = error
        await self.backend.finish_run(
            context.lease, state.value, result, error, now, self.emits(run_id, event), self.policy
        )
        if context.record.parent is not None:
            self.wake()

    # -- step bodies ------------------------------------------------------------------------

    async def in_thread(self, fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        """Run a synchronous step body on a thread of its own pool, so a slow or blocking body
        never stalls the event loop (and with it the heartbeats that keep the run's lease)."""
        if self._threads is None:
            self._threads = ThreadPoolExecutor(STEP_THREADS, thread_name_prefix="stepstream-step")
        call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._threads, call)

    def check_size(self, out: str, what: str) -> None:
        limit = self.max_result_bytes
        if len(out) > limit:
            raise NonRetryableError(
                f"{what} is {len(out):,} bytes of JSON, over the limit of {limit:,} "
                "(Workflows(max_result_bytes=...)): store large data elsewhere and return a "
                "reference to it"
            )

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
        # Credentials the server hands out (cookies, auth challenges) are not stored in the
        # run's log nor streamed on its channel.
        headers = {
            name: value
            for name, value in response.headers.items()
            if name.lower() not in PRIVATE_RESPONSE_HEADERS
        }
        return {"status": response.status_code, "headers": headers, "body": parsed}

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
            self._threads = None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _earliest(wakes: list[int | None], timeout_at: int | None) -> int | None:
    times = [w for w in wakes if w is not None]
    if timeout_at is not None:
        times.append(timeout_at)
    return min(times) if times else None
