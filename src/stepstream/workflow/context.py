"""``WorkflowContext``: what a workflow function gets, and every step method.

A run is replayed from the top once per resume. Each step call takes the next position; if the
log holds a finished step there, its stored result is returned (its body never runs again);
otherwise the step runs and its result is persisted before the workflow moves on. Steps are
started as tasks at call time, so ``asyncio.gather(context.run(...), ...)`` runs them in
parallel with positions in call order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import inspect
import json
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from stepstream import events
from stepstream.clock import Clock
from stepstream.errors import (
    BackendError,
    ChildRunFailed,
    LeaseLost,
    NonDeterminismError,
    NonRetryableError,
    NoWaiters,
    RetryAfterError,
    StepFailed,
)
from stepstream.records import (
    Emit,
    Lease,
    RunRecord,
    StepRecord,
    StepState,
    StepType,
    dumps,
)
from stepstream.workflow.policy import RetryPolicy
from stepstream.workflow.runtime import Cancel, Runtime, StorageInterrupted, Suspend

if TYPE_CHECKING:
    from stepstream.realtime.channel import Channel

T = TypeVar("T")
START_DELAY = 0.02
FAILURE_POSITIONS = 1_000_000  # the failure function's own steps live past the run's


class WorkflowContext:
    """The handle a workflow function works through.

    >>> # @workflows.workflow("order")
    >>> # async def order(context: WorkflowContext) -> dict:
    >>> #     item = await context.run("reserve", reserve, context.request_payload["sku"])
    >>> #     await context.sleep("cool-off", 30)
    >>> #     data, timed_out = await context.wait_for_event("approval", f"approve-{item}")
    >>> #     return {"item": item, "approved": not timed_out}
    """

    def __init__(
        self,
        run: RunRecord,
        runtime: Runtime,
        lease: Lease,
        clock: Clock,
        policy: RetryPolicy,
        *,
        confirm: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.workflow_run_id = run.id
        self.workflow_name = run.workflow
        self.request_payload: Any = json.loads(run.payload)
        self.headers: dict[str, str] = dict(run.headers)
        self.record = run
        self.lease = lease
        self.now = clock
        self._run = run
        self._runtime = runtime
        self._policy = policy
        self._confirm = confirm
        self._recorded = {step.position: step for step in run.steps}
        self._position = FAILURE_POSITIONS if run.phase == "failure" else 0
        # Once set, every later step raises it again: an execution that lost its lease or
        # its storage records nothing more, and a replay that diverged goes no further, even
        # if the workflow catches the first error.
        self._interrupted: LeaseLost | StorageInterrupted | None = None
        self.nondeterminism: NonDeterminismError | None = None
        self._turn = asyncio.Lock()
        self._inflight = 0
        self._idle: asyncio.Future[None] | None = None
        self._last_write: asyncio.Future[None] | None = None
        self.wakes: list[int | None] = []

    @property
    def channel(self) -> Channel:
        """This run's realtime channel (named by the run id), for custom progress events."""
        return self._runtime.channel(self.workflow_run_id)

    # -- step methods ------------------------------------------------------------------------

    def run(
        self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Coroutine[Any, Any, Any]:
        """Run ``fn(*args, **kwargs)`` (sync or async) once as the step ``name``; its result
        must be JSON-serialisable. Failures are retried per the workflow's ``retries``."""
        return self._start(self._step_run, name, StepType.RUN, fn, args, kwargs)

    def sleep(self, name: str, seconds: float) -> Coroutine[Any, Any, None]:
        """Pause the run for ``seconds`` (a durable timer: it survives restarts)."""
        if seconds < 0:
            raise ValueError(f"sleep {name!r}: seconds must be >= 0, got {seconds}")
        return self._start(self._step_sleep, name, StepType.SLEEP, seconds)

    def sleep_until(self, name: str, when: dt.datetime | float) -> Coroutine[Any, Any, None]:
        """Pause the run until ``when`` (a datetime, or epoch seconds)."""
        at = when.timestamp() if isinstance(when, dt.datetime) else float(when)
        return self._start(self._step_sleep, name, StepType.SLEEP_UNTIL, at - self.now() / 1000)

    def call(
        self,
        name: str,
        url: str,
        *,
        method: str = "GET",
        body: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> Coroutine[Any, Any, dict[str, Any]]:
        """A durable HTTP call: ``{"status", "headers", "body"}`` (JSON bodies parsed). A non-2xx
        status is a result, not an error; network errors are retried like any step."""
        return self._start(
            self._step_run,
            name,
            StepType.CALL,
            self._runtime.http_call,
            (url, method, body, headers or {}, timeout),
            {},
        )

    def wait_for_event(
        self, name: str, event_id: str, timeout: float = 7 * 24 * 3600
    ) -> Coroutine[Any, Any, tuple[Any, bool]]:
        """Wait until ``notify(event_id, data)``; returns ``(data, timed_out)``. A notify that
        names this run and arrives before the wait is kept for it (lookback)."""
        return self._start(self._step_wait, name, StepType.WAIT, event_id, timeout)

    def notify(self, name: str, event_id: str, data: Any = None) -> Coroutine[Any, Any, int]:
        """Send ``data`` to every run waiting for ``event_id``; returns how many were waiting."""
        return self._start(
            self._step_run, name, StepType.NOTIFY, self._notify, (event_id, data), {}
        )

    def invoke(self, name: str, workflow: str, body: Any = None) -> Coroutine[Any, Any, Any]:
        """Start ``workflow`` as a child run and wait for it: returns its result, or raises
        ``ChildRunFailed`` if it failed or was canceled."""
        return self._start(self._step_invoke, name, StepType.INVOKE, workflow, body)

    def cancel(self) -> None:
        """End this run now as ``RUN_CANCELED`` (no failure function)."""
        raise Cancel()

    # -- machinery ---------------------------------------------------------------------------

    def _start(
        self, method: Callable[..., Coroutine[Any, Any, T]], name: str, *args: Any
    ) -> Coroutine[Any, Any, T]:
        # The position is taken now, at call time, so steps gathered in parallel get their
        # positions in call order whatever order they run in.
        if not isinstance(name, str) or not name:
            raise ValueError("every step needs a non-empty string name")
        self.raise_if_interrupted()
        if self.nondeterminism is not None:
            raise self.nondeterminism
        position = self._position
        self._position += 1
        # Compared now, not when the step runs: a diverged replay must stop before a sibling
        # step gathered with it runs and records a step of the new code at the next position.
        self._recorded_step(position, name, args[0])
        return self._track(method(position, name, *args))

    async def _track(self, step: Coroutine[Any, Any, T]) -> T:
        self._inflight += 1
        try:
            return await step
        finally:
            self._inflight -= 1
            if not self._inflight and self._idle is not None and not self._idle.done():
                self._idle.set_result(None)

    async def settle(self) -> None:
        """Wait for every step started so far (parallel siblings of a step that suspended),
        and for their writes."""
        while self._inflight:
            self._idle = asyncio.get_running_loop().create_future()
            await self._idle
        if self._last_write is not None:
            await self._last_write

    def raise_if_interrupted(self) -> None:
        """Raise the lost lease or storage failure that ended this execution, if one did."""
        if self._interrupted is not None:
            raise self._interrupted

    async def _storage(self, operation: Awaitable[T]) -> T:
        """Await a storage operation of this execution: a lost lease or a storage error ends
        the execution (see ``StorageInterrupted``). Once the replay diverged, nothing more is
        recorded: the code that can replay the run must find it as it was."""
        self.raise_if_interrupted()
        if self.nondeterminism is not None:
            raise self.nondeterminism
        try:
            return await operation
        except LeaseLost as exc:
            self._interrupted = exc
            raise
        except BackendError as exc:
            self._interrupted = StorageInterrupted(str(exc))
            raise self._interrupted from exc

    def _recorded_step(self, position: int, name: str, type: StepType) -> StepRecord | None:
        step = self._recorded.get(position)
        if step is not None and (step.name != name or step.type is not type):
            self.nondeterminism = NonDeterminismError(
                f"step {position} of run {self.workflow_run_id} is {type.value} {name!r} now but "
                f"was {step.type.value} {step.name!r} when recorded: steps must keep their order "
                "and names between deployments (finish or cancel old runs before changing them)"
            )
            raise self.nondeterminism
        return step

    def _write(self, write: Callable[[], Awaitable[None]]) -> asyncio.Future[None]:
        """Queue a write after the previous one (so a step's start is stored before its
        finish) without waiting for it; the next awaited write waits for the chain."""
        previous = self._last_write

        async def chained() -> None:
            if previous is not None:
                await previous
            await write()

        self._last_write = asyncio.ensure_future(chained())
        return self._last_write

    async def _save(
        self, step: StepRecord, update: Emit, *, wait: bool, also: Emit | None = None
    ) -> None:
        """Store ``step`` with the event reporting it (after ``also``, an earlier event not yet
        stored); with ``wait``, return once it is durable."""
        self._recorded[step.position] = step
        updates = [update] if also is None else [also, update]
        previous = self._last_write
        if wait and (previous is None or previous.done()):
            # Nothing queued before it: write directly, no task (and no copy: nothing can
            # change the step while we wait). A write that comes meanwhile (a parallel step)
            # queues behind this one, so events are stored in the order they were made.
            if previous is not None:
                previous.result()
            tail = self._last_write = asyncio.get_running_loop().create_future()
            try:
                await self._storage(self._runtime.save_steps(self.lease, [step], updates))
            finally:
                tail.set_result(None)
            return
        snapshot = dataclasses.replace(step)
        future = self._write(
            lambda: self._storage(self._runtime.save_steps(self.lease, [snapshot], updates))
        )
        if wait:
            await future

    def _suspend(self, wake_at: int | None) -> Suspend:
        self.wakes.append(wake_at)
        return Suspend(wake_at)

    async def _step_run(
        self,
        position: int,
        name: str,
        type: StepType,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        step = self._recorded_step(position, name, type)
        if step is not None:
            if step.state is StepState.SUCCESS:
                return json.loads(step.out or "null")
            if step.state is StepState.FAILED:
                raise StepFailed(name, step.error or "failed", step.attempts)
            if (
                step.state is StepState.RETRY
                and step.wake_at is not None
                and step.wake_at > self.now()
            ):
                raise self._suspend(step.wake_at)
        attempt = (step.attempts if step is not None else 0) + 1
        step = StepRecord(position, name, type, StepState.PROGRESS, attempts=attempt)
        start: list[Emit] = []  # the stepStart event, while it is not stored yet
        try:
            out = await self._attempt(step, start, fn, args, kwargs)
        except Exception as exc:
            await self._step_failed(step, exc, start[0] if start else None)
            raise AssertionError("unreachable") from exc
        step.state, step.out = StepState.SUCCESS, out
        finish = events.step_finish(self._run.id, step)
        await self._save(step, finish, wait=True, also=start[0] if start else None)
        return json.loads(out)

    async def _attempt(
        self,
        step: StepRecord,
        start: list[Emit],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> str:
        """Run one attempt of a step body; its result as JSON text. Stamps the step's start
        and end, and puts its ``stepStart`` event in ``start`` until that is stored. A body
        never starts once this execution has lost its run (see ``Worker._confirmer``)."""
        if self._confirm is not None:
            await self._storage(self._confirm())
        threaded = not inspect.iscoroutinefunction(fn)
        if threaded:
            # Synchronous bodies run on a thread, but those of one run take turns, as they
            # did on the loop: parallel sync steps never race on shared state.
            await self._turn.acquire()
        turn = threaded
        try:
            step.started_at = self.now()
            # A step that ends within START_DELAY stores its start with its end: one write,
            # not two. A longer one stores (and streams) its start when the delay runs out.
            start.append(events.step_start(self._run.id, step))

            def store_start() -> None:
                if start and step.state is StepState.PROGRESS:
                    self._write_soon(step, start.pop())

            timer = asyncio.get_running_loop().call_later(START_DELAY, store_start)
            try:
                if threaded:
                    value = await self._runtime.in_thread(fn, args, kwargs)
                    if inspect.isawaitable(value):  # a lambda returning a coroutine, say:
                        self._turn.release()  # awaiting it is not the thread's work
                        turn = False
                        value = await value
                else:
                    value = await fn(*args, **kwargs)
                return self._result_json(step.name, value)
            finally:
                timer.cancel()
                step.finished_at = self.now()
        finally:
            if turn:
                self._turn.release()

    def _result_json(self, name: str, value: Any) -> str:
        try:
            out = dumps(value)
        except (TypeError, ValueError) as exc:
            raise NonRetryableError(
                f"step {name!r} returned {type_name(value)}, which is not JSON-serialisable "
                f"({exc}); return plain data (dict, list, str, int, float, bool, None)"
            ) from exc
        self._runtime.check_size(out, f"the result of step {name!r}")
        return out

    def _write_soon(self, step: StepRecord, update: Emit) -> None:
        snapshot = dataclasses.replace(step)
        self._write(
            lambda: self._storage(self._runtime.save_steps(self.lease, [snapshot], [update]))
        )

    async def _step_failed(
        self, step: StepRecord, exc: Exception, start: Emit | None = None
    ) -> None:
        """Record a failed attempt; raise ``Suspend`` (retry later) or ``StepFailed``."""
        message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        policy = self._policy
        step.error, step.finished_at = message, self.now()
        retry = not isinstance(exc, NonRetryableError) and step.attempts <= policy.retries
        if retry:
            delay = exc.seconds if isinstance(exc, RetryAfterError) else policy.delay(step.attempts)
            step.state, step.wake_at = StepState.RETRY, self.now() + int(delay * 1000)
        else:
            step.state = StepState.FAILED
        await self._save(
            step, events.step_fail(self._run.id, step, will_retry=retry), wait=True, also=start
        )
        if retry:
            raise self._suspend(step.wake_at)
        raise StepFailed(step.name, message, step.attempts) from exc

    async def _step_sleep(self, position: int, name: str, type: StepType, seconds: float) -> None:
        step = self._recorded_step(position, name, type)
        now = self.now()
        if step is None:
            wake_at = now + max(0, int(seconds * 1000))
            step = await self._begin(position, name, type, wake_at=wake_at)
        if step.state is StepState.SUCCESS:
            return
        assert step.wake_at is not None
        if step.wake_at > now:
            raise self._suspend(step.wake_at)
        await self._complete(step, step.out)

    async def _begin(self, position: int, name: str, type: StepType, **fields: Any) -> StepRecord:
        """Record a durable step (sleep, invoke) as started, with its ``stepStart`` event."""
        step = StepRecord(
            position, name, type, StepState.PROGRESS, attempts=1, started_at=self.now(), **fields
        )
        await self._save(step, events.step_start(self._run.id, step), wait=True)
        return step

    async def _complete(self, step: StepRecord, out: str | None) -> None:
        """Record a step as succeeded with ``out``, with its ``stepFinish`` event."""
        step.state, step.out, step.finished_at = StepState.SUCCESS, out, self.now()
        await self._save(step, events.step_finish(self._run.id, step), wait=True)

    async def _step_wait(
        self, position: int, name: str, type: StepType, event_id: str, seconds: float
    ) -> tuple[Any, bool]:
        step = self._recorded_step(position, name, type)
        now = self.now()
        if step is None:
            step = StepRecord(
                position,
                name,
                type,
                StepState.PROGRESS,
                attempts=1,
                started_at=now,
                wake_at=now + int(seconds * 1000),
                event_id=event_id,
            )
            self._recorded[position] = step
            await self._settle_writes()
            update = events.step_start(self._run.id, step)
            data = await self._storage(self._runtime.wait_event(self.lease, step, [update]))
            if data is None:
                raise self._suspend(step.wake_at)
            step.out, step.resolved = data, True
        if step.state is StepState.SUCCESS:
            result = json.loads(step.out or "{}")
            return result.get("data"), bool(result.get("timed_out"))
        if step.resolved:
            data_value, timed_out = json.loads(step.out or "null"), False
        elif step.wake_at is not None and step.wake_at <= now:
            data_value, timed_out = None, True
        else:
            raise self._suspend(step.wake_at)
        out = dumps({"data": data_value, "timed_out": timed_out})
        await self._complete(step, out)
        return data_value, timed_out

    async def _step_invoke(
        self, position: int, name: str, type: StepType, workflow: str, body: Any
    ) -> Any:
        step = self._recorded_step(position, name, type)
        if step is None:
            step = await self._begin(position, name, type, child=self._runtime.new_run_id())
        if step.state is StepState.SUCCESS:
            return json.loads(step.out or "null")
        if step.state is StepState.FAILED:
            raise ChildRunFailed(step.child or "?", "RUN_FAILED", step.error)
        assert step.child is not None
        if not step.resolved:
            await self._storage(
                self._runtime.start_child(self._run, position, step.child, workflow, body)
            )
            raise self._suspend(None)
        outcome = json.loads(step.out or "{}")
        if outcome.get("state") == "RUN_SUCCESS":
            await self._complete(step, outcome.get("result") or "null")
            return json.loads(step.out or "null")
        step.finished_at = self.now()
        step.state, step.error = StepState.FAILED, outcome.get("error") or outcome.get("state")
        await self._save(step, events.step_fail(self._run.id, step, will_retry=False), wait=True)
        raise ChildRunFailed(step.child, str(outcome.get("state")), step.error)

    async def _notify(self, event_id: str, data: Any) -> int:
        try:
            woken: int = await self._storage(self._runtime.notify(event_id, data))
        except NoWaiters:
            return 0  # nobody waiting is the answer, not a failure to retry
        return woken

    async def _settle_writes(self) -> None:
        if self._last_write is not None:
            await self._last_write


def type_name(value: object) -> str:
    return f"a {type(value).__name__}"
