"""``WorkflowContext``: what a workflow function gets, and every step method. The replay
bookkeeping and ordered writes under them are ``journal.Journal``'s.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import json
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from stepstream import events
from stepstream.errors import (
    ChildRunFailed,
    NonRetryableError,
    NoWaiters,
    RetryAfterError,
    StepFailed,
    StepstreamError,
)
from stepstream.records import (
    FLOW_CONTROL,
    Emit,
    FlowLimits,
    StepRecord,
    StepState,
    StepType,
    dumps,
)
from stepstream.workflow.journal import Journal, Slot
from stepstream.workflow.policy import RetryDelay, RetryPolicy, StepOptions
from stepstream.workflow.runtime import Cancel, raise_as
from stepstream.workflow.tracebacks import type_name, user_traceback, where

if TYPE_CHECKING:
    from stepstream.realtime.channel import Channel

log = logging.getLogger("stepstream.engine")
START_DELAY = 0.02
MAX_ERRORS = 20  # failed attempts a step keeps in its log (the latest)
LIMITED = (StepType.RUN, StepType.CALL)  # the step executions flow control counts


class WorkflowContext(Journal):
    """The handle a workflow function works through.

    >>> # @workflows.workflow("order")
    >>> # async def order(context: WorkflowContext) -> dict:
    >>> #     item = await context.run("reserve", reserve, context.request_payload["sku"])
    >>> #     await context.sleep("cool-off", 30)
    >>> #     data, timed_out = await context.wait_for_event("approval", f"approve-{item}")
    >>> #     return {"item": item, "approved": not timed_out}
    """

    @property
    def channel(self) -> Channel:
        """This run's realtime channel (named by the run id), for custom progress events."""
        return self._runtime.channel(self.workflow_run_id)

    # -- step methods ------------------------------------------------------------------------

    def run(
        self,
        name: str,
        fn: Callable[..., Any],
        *args: Any,
        retries: int | None = None,
        retry_delay: RetryDelay | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Coroutine[Any, Any, Any]:
        """Run ``fn(*args, **kwargs)`` (sync or async) once as the step ``name``; its result
        must be JSON-serialisable. Failures are retried per the workflow's ``retries`` and
        ``retry_delay``, or this step's own. ``timeout``: seconds an attempt may take; one that
        takes longer fails (and is retried like any failure). A synchronous body cannot be
        stopped: its thread runs on, its result unused."""
        options = self._options(name, retries, retry_delay, timeout)
        return self._start(self._step_run, name, StepType.RUN, fn, args, kwargs, options)

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
        retries: int | None = None,
        retry_delay: RetryDelay | None = None,
    ) -> Coroutine[Any, Any, dict[str, Any]]:
        """A durable HTTP call: ``{"status", "headers", "body"}`` (JSON bodies parsed). A non-2xx
        status is a result, not an error; network errors and timeouts (``timeout`` seconds)
        are retried like any step (``retries``, ``retry_delay``: this step's own)."""
        return self._start(
            self._step_run,
            name,
            StepType.CALL,
            self._runtime.http_call,
            (url, method, body, headers or {}, timeout),
            {},
            self._options(name, retries, retry_delay, None),
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
            self._step_run, name, StepType.NOTIFY, self._notify, (event_id, data), {}, None
        )

    def invoke(self, name: str, workflow: str, body: Any = None) -> Coroutine[Any, Any, Any]:
        """Start ``workflow`` as a child run and wait for it: returns its result, or raises
        ``ChildRunFailed`` if it failed or was canceled."""
        return self._start(self._step_invoke, name, StepType.INVOKE, workflow, body)

    def cancel(self) -> None:
        """End this run now as ``RUN_CANCELED`` (no failure function)."""
        raise Cancel()

    def _options(
        self, name: str, retries: int | None, delay: RetryDelay | None, timeout: float | None
    ) -> StepOptions | None:
        if retries is None and delay is None and timeout is None:
            return None
        if retries is not None and (type(retries) is not int or retries < 0):
            raise ValueError(f"step {name!r}: retries must be an integer >= 0, got {retries!r}")
        if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
            raise ValueError(f"step {name!r}: timeout must be seconds > 0, got {timeout!r}")
        base = self._policy
        policy = RetryPolicy(
            base.retries if retries is None else retries,
            base.retry_delay if delay is None else delay,
        )
        return StepOptions(policy, timeout)

    async def _step_run(
        self,
        position: int,
        name: str,
        type: StepType,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: StepOptions | None,
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
        errors = step.errors if step is not None else None
        if step is not None and step.state is StepState.PROGRESS and step.started_at is not None:
            errors = self._interrupted_attempt(step)
        flow = self._run.flow if type in LIMITED else None
        slot = None
        if flow is not None:
            await self._take_slot(flow, position, name, type, attempt - 1, errors)
            if flow.parallelism is not None:  # a rate start is spent, not held
                slot = Slot(flow.key, position)
        fresh = StepRecord(
            position, name, type, StepState.PROGRESS, attempts=attempt, errors=errors
        )
        try:
            return await self._execute(fresh, fn, args, kwargs, options, slot)
        finally:
            if slot is not None and not slot.given:  # the outcome was not stored with it
                await self._give_slot(slot)

    def _interrupted_attempt(self, step: StepRecord) -> list[dict[str, Any]]:
        """The errors of ``step`` with its last attempt's, which started (its start is stored)
        but whose outcome never was: said, so the attempt it runs now is no silent retry."""
        failure = {
            "attempt": step.attempts,
            "error": "interrupted: the execution running it ended before its outcome was "
            "stored (its worker stopped, lost the run or could not write), so it runs again",
            "traceback": "",
            "at": self.now(),
        }
        return _kept(step.errors, failure)

    async def _execute(
        self,
        step: StepRecord,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: StepOptions | None,
        slot: Slot | None,
    ) -> Any:
        """One attempt of a step body (``step``, in progress), recorded (giving ``slot``
        back with it): its result, or ``_step_failed``."""
        start: list[Emit] = []  # the stepStart event, while it is not stored yet
        timeout = options.timeout if options is not None else None
        try:
            out = await self._attempt(step, start, fn, args, kwargs, timeout)
        except Exception as exc:
            policy = options.policy if options is not None else self._policy
            await self._step_failed(step, exc, policy, start[0] if start else None, slot)
            raise AssertionError("unreachable") from exc
        step.state, step.out = StepState.SUCCESS, out
        finish = events.step_finish(self._run.id, step)
        await self._save(step, finish, wait=True, also=start[0] if start else None, slot=slot)
        return json.loads(out)

    async def _take_slot(
        self,
        flow: FlowLimits,
        position: int,
        name: str,
        type: StepType,
        attempts: int,
        errors: list[dict[str, Any]] | None,
    ) -> None:
        """Take a flow control slot for the step at ``position``, or record it as waiting for
        one and suspend the run until one frees (or the rate window moves on)."""
        waiting = StepRecord(
            position,
            name,
            type,
            StepState.PROGRESS,
            attempts=attempts,
            waiting_for=FLOW_CONTROL,
            errors=errors,
        )
        await self._settle_writes()  # what this run recorded before stays before
        budget = await self._storage(self._runtime.acquire_slot(self.lease, flow, waiting))
        if not budget.granted:
            self._recorded[position] = waiting
            raise self._suspend(budget.retry_at)

    async def _give_slot(self, slot: Slot) -> None:
        """Give a slot back whose step's outcome was not stored (the body never started, or
        storage failed), waking a run waiting for it. If that fails too, the slot still stops
        counting when this execution's claim ends."""
        slot.given = True
        try:
            await self._runtime.release_slot(self._run.id, slot.key, slot.position)
        except StepstreamError as exc:
            log.warning("run %s: giving a flow control slot back failed (%s)", self._run.id, exc)

    async def _attempt(
        self,
        step: StepRecord,
        start: list[Emit],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        seconds: float | None,
    ) -> str:
        """Run one attempt of a step body; its result as JSON text; over ``seconds``, a
        ``TimeoutError``. Stamps its start and end, its ``stepStart`` kept in ``start`` until
        stored. No body starts once this execution lost its run (``Worker._confirmer``), asked
        with the run's turn held (a sibling's body may have held it past the lease)."""
        threaded = not inspect.iscoroutinefunction(fn)
        if threaded:
            # Synchronous bodies run on a thread, but those of one run take turns, as they
            # did on the loop: parallel sync steps never race on shared state.
            await self._turn.acquire()
        turn = threaded
        try:
            await self.confirm()
            if self._runtime.is_paused(self.workflow_name) or self.stopping():
                # Released due: claimed again once resumed, or by another worker at once.
                raise self._suspend(self.now())
            step.started_at = self.now()
            # A step that ends within START_DELAY stores its start with its end: one write,
            # not two. A longer one stores (and streams) its start when the delay runs out.
            start.append(events.step_start(self._run.id, step))

            def store_start() -> None:
                if start and step.state is StepState.PROGRESS:
                    self._write_soon(step, start.pop())

            timer = asyncio.get_running_loop().call_later(START_DELAY, store_start)
            limit = asyncio.timeout(seconds)
            try:
                async with limit:
                    if threaded:
                        value = await self._runtime.in_thread(fn, args, kwargs)
                        if inspect.isawaitable(value):  # a lambda returning a coroutine, say:
                            self._turn.release()  # awaiting it is not the thread's work
                            turn = False
                            value = await value
                    else:
                        value = await fn(*args, **kwargs)
                return self._result_json(step.name, value)
            except TimeoutError:
                if limit.expired():
                    raise TimeoutError(
                        f"the attempt took over {seconds:g}s (its timeout)"
                    ) from None
                raise
            except BaseException as exc:  # SystemExit from a body fails it, as any error
                raise_as(exc)
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

    async def _step_failed(
        self,
        step: StepRecord,
        exc: Exception,
        policy: RetryPolicy,
        start: Emit | None = None,
        slot: Slot | None = None,
    ) -> None:
        """Record a failed attempt (with where the code failed); raise ``Suspend`` (retry
        later) or ``StepFailed``."""
        message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        step.error, step.finished_at = message, self.now()
        # A durable HTTP call's body is stepstream's own request: no frame of it is the user's.
        trace = "" if step.type is StepType.CALL else user_traceback(exc)
        failure = {"attempt": step.attempts, "error": message, "traceback": trace, "at": self.now()}
        step.errors = _kept(step.errors, failure)
        log.warning(
            "run %s: step %r attempt %d failed: %s\n%s",
            self._run.id,
            step.name,
            step.attempts,
            message,
            where(trace),
        )
        retry = not isinstance(exc, NonRetryableError) and step.attempts <= policy.retries
        if retry:
            delay = exc.seconds if isinstance(exc, RetryAfterError) else policy.delay(step.attempts)
            step.state, step.wake_at = StepState.RETRY, self.now() + int(delay * 1000)
        else:
            step.state = StepState.FAILED
        await self._save(
            step,
            events.step_fail(self._run.id, step, will_retry=retry),
            wait=True,
            also=start,
            slot=slot,
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
        elif step.passed(now):
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


def _kept(errors: list[dict[str, Any]] | None, failure: dict[str, Any]) -> list[dict[str, Any]]:
    """A step's failed attempts with ``failure`` added, the latest ``MAX_ERRORS`` of them."""
    return [*(errors or [])[-(MAX_ERRORS - 1) :], failure]
