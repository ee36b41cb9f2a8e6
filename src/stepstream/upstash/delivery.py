"""The body of the built-in ``upstash`` workflow: QStash's delivery loop, executed by a worker
that holds the run's lease.

Each pass records what the SDK published since the last one (the run's inbox, filled by the
gateway's routes), makes a ``context.call``'s request, completes a sleep or a wait that is due
(or suspends the run until it is: a notify makes it due at once), and POSTs the run's history to
the endpoint, signed, the way QStash delivers it (docs/upstash-protocol.md §3); while a parallel
group runs, one delivery per plan still to run, all at once. A failed delivery is a failed
attempt of the step it was for: retried with backoff, then the run fails and its failure
callback is called. The SDK ending the run (``DELETE ...?cancel=false``) ends the loop with its
result.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import httpx

from stepstream import events
from stepstream.errors import BackendError, NonRetryableError, StepFailed, ValidationError
from stepstream.records import FLOW_CONTROL, StepRecord, StepState, StepType, dumps
from stepstream.upstash import handoff, plans
from stepstream.upstash.allow import policy_of
from stepstream.upstash.connections import Connections, Unanswered, direct
from stepstream.upstash.delay import parse_delay, retry_delay_ms
from stepstream.upstash.dlq import FAILURE_CALLS, failure_call
from stepstream.upstash.history import Delivered
from stepstream.upstash.lazy import lazy
from stepstream.upstash.messages import KEPT_APART, RETRIES, RETRY_DELAY
from stepstream.upstash.outbound import Failure, failure_of, failure_payload, signed
from stepstream.upstash.recording import Recorder
from stepstream.workflow.runtime import StorageInterrupted, Suspend

if TYPE_CHECKING:
    from stepstream.workflow.context import WorkflowContext
    from stepstream.workflow.engine import Engine

DELIVERY_TIMEOUT = 60.0  # seconds an endpoint may take to answer one delivery
UNNAMED = "delivery"  # a failed attempt's name until the SDK names the step (or never does)
MAX_ERRORS = 20


class Delivery(Recorder):
    """One execution of a gateway run: its steps as recorded (``Recorder``), and the passes
    of the loop."""

    def __init__(self, engine: Engine, context: WorkflowContext) -> None:
        super().__init__(engine, context)
        self.url = self.run.headers.get("upstash-workflow-url", "")
        self.connections = Connections(self.url) if direct(self.url) else None

    async def loop(self) -> Any:
        """Deliver until the SDK ends the run; its result."""
        if not self.url:
            raise NonRetryableError(
                f"run {self.run.id} was not started through the QStash gateway (/qstash): "
                "it has no endpoint URL to deliver to"
            )
        kept = await plans.load(self.engine, self.run.id)
        self.plans, self.kinds = kept.plans, kept.kinds
        try:
            return await self.passes()
        finally:
            if self.connections is not None:
                await self.connections.aclose()

    async def passes(self) -> Any:
        failure: Failure | None = None
        await self.unless_failed()
        while True:
            fresh = await self.drain()
            if self.ended is not None:
                await self.close_retry()
                return await self.result(self.ended[0])
            if fresh:
                failure = None  # the endpoint did its part; only its answer was lost
            elif failure is None and self.posted:
                failure = Failure(
                    "the endpoint answered 2xx but published no step nor ended the run"
                )
            if failure is None:
                self.unless_stopping()
                failure = await self.make_calls()
            if failure is not None:
                await self.failed(failure)  # raises: retry later, or the run fails
            self.unless_stopping()
            deliveries = self.due(*await self.settle())
            slot = await self.take_slot()
            try:
                # As before a step body: after a stall past the lease, another worker may have
                # taken the run over and recorded the very step this stale history would make
                # the SDK run again.
                await self.context.confirm()
                with handoff.listening(self.engine, self.run.id, self):
                    failure = await self.post(deliveries)
            finally:
                if slot is not None:
                    await self.engine.release_slot(self.run.id, *slot)

    async def unless_failed(self) -> None:
        """The run's final failure is stored (an execution stored it, then stopped or lost the
        run making its failure callback): the run fails now, its step delivered no more, and
        the callback made only if it was not kept yet (kept, it was made, or cut off; the DLQ
        can make it again)."""
        step = self.steps.get(self.next_position())
        if step is None or step.state is not StepState.FAILED:
            return
        error = step.error or "failed"
        if await self.engine.backend.get_entry(FAILURE_CALLS, self.run.id) is None:
            await self.failure_callback(Failure(error, step.name))
        raise StepFailed(step.name, error, step.attempts)

    def unless_stopping(self) -> None:
        """As before a step body: a worker about to stop would cut a call or a delivery off
        (and the next worker make it again), so the run is released due now instead, to go
        to another worker at once."""
        if self.context.stopping():
            self.suspend(self.context.now())

    # -- delivering -------------------------------------------------------------------------

    async def take_slot(self) -> tuple[str, int] | None:
        """Under the run's flow control, a delivery is the step execution that takes a slot
        (and a rate start): take it, or record the next step as waiting for one and suspend
        until one frees (the run holds no worker meanwhile). The slot to give back after."""
        flow = self.run.flow
        if flow is None:
            return None
        position = self.next_position()
        existing = self.steps.get(position)
        waiting = StepRecord(
            position,
            existing.name if existing is not None else UNNAMED,
            existing.type if existing is not None else StepType.RUN,
            StepState.PROGRESS,
            attempts=existing.attempts if existing is not None else 0,
            waiting_for=FLOW_CONTROL,
            errors=existing.errors if existing is not None else None,
        )
        budget = await self.engine.acquire_slot(self.context.lease, flow, waiting)
        if not budget.granted:
            self.steps[position] = waiting
            if budget.retry_at is not None:
                self.context.wakes.append(budget.retry_at)
            raise Suspend(budget.retry_at)
        return None if flow.parallelism is None else (flow.key, position)

    def headers(self, message_id: str) -> dict[str, str]:
        retried = self.steps.get(self.next_position())
        headers = {
            name: value
            for name, value in self.run.headers.items()
            if not name.startswith(KEPT_APART)
        }
        headers.update(
            {
                "upstash-workflow-sdk-version": "1",
                "upstash-workflow-runid": self.run.id,
                "upstash-workflow-url": self.url,
                "upstash-workflow-createdat": str(self.run.created_at),
                "upstash-message-id": message_id,
                "upstash-retried": str(retried.attempts if retried is not None else 0),
            }
        )
        return headers

    async def post(self, deliveries: list[Delivered]) -> Failure | None:
        """Make ``deliveries`` (the history, or each pending plan that is due) at once;
        ``None`` if the endpoint took every one (2xx)."""
        self.posted = len(deliveries)
        failures = await asyncio.gather(*(self.post_one(*delivery) for delivery in deliveries))
        return next((failure for failure in failures if failure is not None), None)

    async def post_one(self, message_id: str, body: str, position: int | None) -> Failure | None:
        failure = await self.deliver(message_id, body)
        return (
            failure if failure is None or position is None else replace(failure, position=position)
        )

    async def deliver(self, message_id: str, body: str) -> Failure | None:
        try:  # allowed when triggered; the allow-list of this process may be narrower
            policy_of(self.engine).check(self.url, "the workflow endpoint")
        except ValidationError as exc:
            return Failure(str(exc), final=True)
        if lazy(self.engine, self.run, body):
            body = ""  # the SDK fetches the history (``lazy.py``)
        headers = signed(self.url, body, self.headers(message_id))
        try:
            if self.connections is not None:
                answer = await self.connections.post(body, headers, DELIVERY_TIMEOUT)
            else:
                answer = await self.engine.http_call(
                    self.url, "POST", body, headers, DELIVERY_TIMEOUT
                )
        except (httpx.HTTPError, Unanswered) as exc:
            return Failure(f"delivering to {self.url} failed: {type(exc).__name__}: {exc}")
        status = int(answer["status"])
        if 200 <= status < 300:
            return None
        failure = failure_of(status, answer)
        if BackendError.code in failure.body:
            # The SDK passes on this gateway's own 503 to its publish: storage failed, not the
            # endpoint. Handed back like any storage error; no attempt of the step is spent.
            raise StorageInterrupted(
                f"the endpoint's publish found storage down: {failure.message}"
            )
        return failure

    async def result(self, result: Any) -> Any:
        """The run's result, as the SDK ended it; over ``max_result_bytes`` as stored (JSON
        escapes non-ASCII text: 200,000 CJK characters are 1.2 MB), the run fails naming the
        limit, after its failure callback, instead of the engine refusing it at the end."""
        try:
            self.engine.check_size(dumps(result), "the run's result")
        except NonRetryableError as exc:
            await self.failed(Failure(str(exc), final=True))
        return result

    async def close_retry(self) -> None:
        """The SDK ended the run: a failed delivery attempt left waiting for its retry (one
        that named no step, or a step the SDK did not run again) was retried by the delivery
        that ended it, so it is finished, not ``STEP_RETRY`` in a finished run."""
        step = self.steps.get(self.next_position())
        if step is None or step.state is not StepState.RETRY:
            return
        step.state, step.attempts, step.wake_at = StepState.SUCCESS, step.attempts + 1, None
        step.started_at = step.finished_at = self.context.now()
        step.error = None
        await self.save(step, events.step_finish(self.run.id, step))

    async def failed(self, failure: Failure) -> None:
        """Record a failed delivery as a failed attempt of the next step; raise ``Suspend``
        (retried after a delay) or ``StepFailed`` (the run fails, after its failure
        callback)."""
        now = self.context.now()
        position = self.next_position() if failure.position is None else failure.position
        existing = self.steps.get(position)
        attempts = (existing.attempts if existing is not None else 0) + 1
        if self.settled(position) and existing is not None and existing.state is StepState.PROGRESS:
            attempts -= 1  # a call (or wait) under way: its attempt was counted as it started
        name = failure.step or (existing.name if existing is not None else UNNAMED)
        retries = int(self.run.headers.get(RETRIES, self.definition_retries()))
        retry = not failure.final and attempts <= retries
        errors = [
            *((existing.errors or []) if existing is not None else [])[-(MAX_ERRORS - 1) :],
            {"attempt": attempts, "error": failure.message, "traceback": failure.detail, "at": now},
        ]
        step = StepRecord(
            position,
            name,
            existing.type if existing is not None else StepType.RUN,
            StepState.RETRY if retry else StepState.FAILED,
            attempts=attempts,
            started_at=now,
            finished_at=now,
            error=failure.message,
            errors=errors,
        )
        if retry:
            step.wake_at = now + self.retry_delay_ms(failure, attempts)
        await self.save(step, events.step_fail(self.run.id, step, will_retry=retry))
        if step.wake_at is not None:
            self.context.wakes.append(step.wake_at)
            raise Suspend(step.wake_at)
        await self.failure_callback(failure)
        raise StepFailed(name, failure.message, attempts)

    async def failure_callback(self, failure: Failure) -> None:
        """Call the run's failure URL (the SDK's ``failureFunction`` or ``failureUrl``) with
        the failing answer (docs §8); keep the call, so the DLQ can show and retry it."""
        message_id = f"msg_{self.run.id}_{self.next_position() + 1}"
        payload = failure_payload(self.run, self.url, failure, message_id, self.history().initial)
        await failure_call(self.engine, self.run, payload, message_id, failure.message)

    def retry_delay_ms(self, failure: Failure, attempts: int) -> int:
        """How long before the next attempt: the endpoint's ``Retry-After``, else the trigger's
        ``Upstash-Retry-Delay`` (``retried``: the retries so far), else the workflow's
        backoff."""
        if failure.retry_after is not None:
            return int(failure.retry_after * 1000)
        expression = self.run.headers.get(RETRY_DELAY)
        if expression:
            return retry_delay_ms(parse_delay(expression), retried=attempts - 1)
        return int(self.engine.registry.get(self.run.workflow).policy.delay(attempts) * 1000)

    def definition_retries(self) -> int:
        return self.engine.registry.get(self.run.workflow).retries
