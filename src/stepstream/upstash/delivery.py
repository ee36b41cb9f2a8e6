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
import contextlib
import json
from typing import TYPE_CHECKING, Any

import httpx

from stepstream import events
from stepstream.errors import (
    LeaseLost,
    NonRetryableError,
    RunConflict,
    StepFailed,
    ValidationError,
)
from stepstream.records import FLOW_CONTROL, Emit, StepRecord, StepState, StepType, dumps
from stepstream.upstash import handoff
from stepstream.upstash.allow import policy_of
from stepstream.upstash.connections import Connections, Unanswered, direct
from stepstream.upstash.delay import parse_delay, retry_delay_ms
from stepstream.upstash.dlq import failure_call
from stepstream.upstash.history import History
from stepstream.upstash.messages import (
    INBOX,
    KEPT_APART,
    PLANS,
    RECORDED,
    RETRIES,
    RETRY_DELAY,
    WORKFLOW,
    Init,
)
from stepstream.upstash.outbound import (
    Failure,
    failure_of,
    failure_payload,
    make_call,
    signed,
)
from stepstream.workflow.runtime import Suspend

if TYPE_CHECKING:
    from stepstream.workflow.context import WorkflowContext
    from stepstream.workflow.engine import Engine

DELIVERY_TIMEOUT = 60.0  # seconds an endpoint may take to answer one delivery
SLEEPS = (StepType.SLEEP, StepType.SLEEP_UNTIL)
WAITING = (*SLEEPS, StepType.WAIT, StepType.INVOKE)  # steps under way that the loop completes
UNNAMED = "delivery"  # a failed attempt's name until the SDK names the step (or never does)
MAX_ERRORS = 20


class Delivery:
    """One execution of a gateway run: its steps as recorded, and the passes of the loop."""

    def __init__(self, engine: Engine, context: WorkflowContext) -> None:
        self.engine = engine
        self.context = context
        self.run = context.record
        self.steps = {step.position: step for step in self.run.steps}
        self.plans: dict[int, dict[str, Any]] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.url = self.run.headers.get("upstash-workflow-url", "")
        self.lock = asyncio.Lock()  # one recording at a time: the loop's, or a take's
        self.posted = 0  # deliveries of the last pass
        self.taken = 0  # new messages handed over while they were open
        self.ended: tuple[Any] | None = None  # the SDK ended the run: (its result,)
        self.connections = Connections(self.url) if direct(self.url) else None

    async def loop(self) -> Any:
        """Deliver until the SDK ends the run; its result."""
        if not self.url:
            raise NonRetryableError(
                f"run {self.run.id} was not started through the QStash gateway (/qstash): "
                "it has no endpoint URL to deliver to"
            )
        stored = await self.engine.backend.list_entries(PLANS + self.run.id)
        self.plans = {int(key): json.loads(value) for key, value in stored.items()}
        try:
            return await self.passes()
        finally:
            if self.connections is not None:
                await self.connections.aclose()

    async def passes(self) -> Any:
        failure: Failure | None = None
        while True:
            fresh = await self.drain()
            if self.ended is not None:
                return self.ended[0]
            if fresh:
                failure = None  # the endpoint did its part; only its answer was lost
            elif failure is None and self.posted:
                failure = Failure(
                    "the endpoint answered 2xx but published no step nor ended the run"
                )
            if failure is None:
                failure = await self.make_calls()
            if failure is not None:
                await self.failed(failure)  # raises: retry later, or the run fails
            await self.settle()
            slot = await self.take_slot()
            try:
                with handoff.listening(self.engine, self.run.id, self):
                    failure = await self.post()
            finally:
                if slot is not None:
                    await self.engine.release_slot(self.run.id, *slot)

    # -- recording what the SDK published -----------------------------------------------------

    async def drain(self) -> bool:
        """Record the steps published since the last pass (a step already recorded is dropped);
        whether any was new. ``self.ended`` once the SDK ended the run. A call stays queued
        until its request got an answer (``make_calls``). The inbox is not read when every
        delivery of the last pass had its answer handed over in this process (``take``)."""
        async with self.lock:  # a take still under way lands first
            taken, self.taken = self.taken, 0
            if self.posted and taken >= self.posted:
                return True
            kind = INBOX + self.run.id
            backend = self.engine.backend
            inbox = await backend.list_entries(kind)
            fresh, done = taken > 0, []
            for key in sorted(inbox):
                message = json.loads(inbox[key])
                if message["kind"] == "call":
                    fresh = await self.start(message, message["call"], StepType.CALL) or fresh
                    self.calls.append((key, message))
                    continue
                fresh = await self.act(message) or fresh
                done.append(key)
            for key in done:  # after recording: a crash before this only redelivers duplicates
                await backend.delete_entry(kind, key)
            return fresh

    async def take(self, message: dict[str, Any]) -> bool | None:
        """A message published to this process while this delivery is open (``handoff``):
        recorded at once under the lease; whether it was new, ``None`` if the lease is lost
        (the route queues it in the inbox for the next lease holder)."""
        async with self.lock:
            try:
                fresh = await self.act(message)
            except LeaseLost:
                return None
            if fresh:
                self.taken += 1
            return fresh

    async def act(self, message: dict[str, Any]) -> bool:
        """Record one message of the inbox but a call; whether it was new."""
        kind = message["kind"]
        if kind == "finish":
            text = message.get("result") or ""
            self.ended = (json.loads(text) if text else None,)
            return True
        if kind == "wait":
            return await self.start_wait(message)
        if kind == "invoke":
            return await self.start_invoke(message)
        if kind == "plan":
            return await self.keep_plan(message["record"])
        return await self.record(message)

    def settled(self, position: int) -> bool:
        """Whether ``position`` holds a finished step, or one under way (sleep, wait, call)."""
        existing = self.steps.get(position)
        return (
            existing is not None
            and existing.state in (StepState.SUCCESS, StepState.PROGRESS)
            and existing.waiting_for != FLOW_CONTROL
        )

    async def record(self, message: dict[str, Any]) -> bool:
        """Record one published step result, with its events, in one write; ``False`` if its
        position already holds a finished (or sleeping) step."""
        record, at = message["record"], int(message["at"])
        position = int(record["stepId"]) - 1
        if self.settled(position):
            return False
        step = self.new_step(position, record["stepName"], RECORDED[record["stepType"]], at)
        step.state, step.finished_at, step.out = StepState.SUCCESS, at, record.get("out")
        updates = [events.step_start(self.run.id, step)]
        if step.type in SLEEPS:
            step.state, step.finished_at, step.out = StepState.PROGRESS, None, None
            step.wake_at = at + int(message.get("delay_ms") or 0)
        else:
            updates.append(events.step_finish(self.run.id, step))
        await self.save(step, *updates)
        return True

    def new_step(self, position: int, name: str, kind: StepType, at: int) -> StepRecord:
        """A step in progress at ``position``, counting the failed attempts before it."""
        existing = self.steps.get(position)
        return StepRecord(
            position,
            name,
            kind,
            StepState.PROGRESS,
            attempts=(existing.attempts if existing is not None else 0) + 1,
            started_at=at,
            errors=existing.errors if existing is not None else None,
        )

    async def save(self, step: StepRecord, *updates: Emit) -> None:
        await self.engine.save_steps(self.context.lease, [step], list(updates))
        self.steps[step.position] = step

    async def start(self, message: dict[str, Any], spec: dict[str, Any], kind: StepType) -> bool:
        """Record a call or wait step as started; ``False`` if it is already."""
        position = int(spec["position"])
        if self.settled(position):
            return False
        step = self.new_step(position, spec["name"], kind, int(message["at"]))
        await self.save(step, events.step_start(self.run.id, step))
        return True

    async def start_wait(self, message: dict[str, Any]) -> bool:
        """Register a ``waitForEvent`` with the engine (a notify already sent to this run, with
        lookback, resolves it at once); ``False`` if it is registered already."""
        wait = message["wait"]
        position = int(wait["position"])
        if self.settled(position):
            return False
        at = int(message["at"])
        step = self.new_step(position, wait["name"], StepType.WAIT, at)
        step.event_id, step.wake_at = wait["event_id"], at + int(wait["timeout_ms"])
        update = events.step_start(self.run.id, step)
        data = await self.engine.wait_event(self.context.lease, step, [update])
        if data is not None:
            step.out, step.resolved = data, True
        self.steps[position] = step
        return True

    async def start_invoke(self, message: dict[str, Any]) -> bool:
        """``context.invoke``: record the step as waiting for its child, and start the child
        (a gateway run whose end resolves the step, as for a native invoke); ``False`` if the
        step was recorded already. The child is started again after a crash in between (a
        second start of one id is refused)."""
        invoke = message["invoke"]
        position, child = int(invoke["position"]), invoke["child"]
        fresh = not self.settled(position)
        if fresh:
            step = self.new_step(position, invoke["name"], StepType.INVOKE, int(message["at"]))
            step.child = child["run_id"]
            await self.save(step, events.step_start(self.run.id, step))
        if self.steps[position].state is StepState.PROGRESS:
            with contextlib.suppress(RunConflict):
                await self.engine.trigger(
                    WORKFLOW,
                    child["payload"],
                    run_id=child["run_id"],
                    headers=child["headers"],
                    labels=child["labels"],
                    delay=child["delay"],
                    flow_control=Init(**child).flow_control(),
                    parent=self.run.id,
                    parent_position=position,
                )
        return fresh

    async def keep_plan(self, record: dict[str, Any]) -> bool:
        """Keep a parallel group's plan step (its history entry); ``False`` if kept already."""
        target = int(record["targetStep"]) - 1
        if target in self.plans:
            return False
        await self.engine.backend.put_entry(PLANS + self.run.id, f"{target:09d}", dumps(record))
        self.plans[target] = record
        return True

    async def make_calls(self) -> Failure | None:
        """Make the queued ``context.call`` requests; record each answer as its step's result."""
        while self.calls:
            key, message = self.calls[0]
            step = self.steps[int(message["call"]["position"])]
            if step.state is not StepState.SUCCESS:
                out = await make_call(message["call"])
                if isinstance(out, Failure):
                    return out  # the message stays queued: the retry calls again
                step.state, step.finished_at, step.out = StepState.SUCCESS, self.context.now(), out
                await self.save(step, events.step_finish(self.run.id, step))
            await self.engine.backend.delete_entry(INBOX + self.run.id, key)
            self.calls.pop(0)
        return None

    async def settle(self) -> None:
        """Complete a sleep whose time has come, a wait that was notified or timed out and an
        invoke whose child ended; suspend the run until the next one (a notify or the child's
        end makes it due at once)."""
        now = self.context.now()
        for step in sorted(self.steps.values(), key=lambda s: s.position):
            if step.state is not StepState.PROGRESS or step.type not in WAITING:
                continue
            if step.type is StepType.INVOKE:
                if not step.resolved:
                    raise Suspend(None)
                step.out = invoked(json.loads(step.out or "{}"))
            elif step.type is StepType.WAIT and step.resolved:
                step.out = dumps({"data": json.loads(step.out or "null"), "timed_out": False})
            elif (wake_at := step.wake_at or now) > now:
                self.context.wakes.append(wake_at)
                raise Suspend(wake_at)
            elif step.type is StepType.WAIT:
                step.out = dumps({"data": None, "timed_out": True})
            step.state, step.finished_at = StepState.SUCCESS, now
            await self.save(step, events.step_finish(self.run.id, step))

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

    def next_position(self) -> int:
        position = 0
        while (step := self.steps.get(position)) is not None and step.state is StepState.SUCCESS:
            position += 1
        return position

    def history(self) -> History:
        payload = json.loads(self.run.payload)
        initial = "" if payload is None else payload if isinstance(payload, str) else dumps(payload)
        return History(self.run.id, initial, self.steps, self.plans)

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

    async def post(self) -> Failure | None:
        """Deliver what is due (the history, or each pending plan at once); ``None`` if the
        endpoint took every delivery (2xx)."""
        deliveries = self.history().deliveries()
        self.posted = len(deliveries)
        failures = await asyncio.gather(*(self.post_one(mid, body) for mid, body in deliveries))
        return next((failure for failure in failures if failure is not None), None)

    async def post_one(self, message_id: str, body: str) -> Failure | None:
        try:  # allowed when triggered; the allow-list of this process may be narrower
            policy_of(self.engine).check(self.url, "the workflow endpoint")
        except ValidationError as exc:
            return Failure(str(exc), final=True)
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
        return failure_of(status, answer)

    async def failed(self, failure: Failure) -> None:
        """Record a failed delivery as a failed attempt of the next step; raise ``Suspend``
        (retried after a delay) or ``StepFailed`` (the run fails, after its failure
        callback)."""
        now = self.context.now()
        position = self.next_position()
        existing = self.steps.get(position)
        attempts = (existing.attempts if existing is not None else 0) + 1
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


def invoked(outcome: dict[str, Any]) -> str:
    """An invoke step's ``out`` as the SDK reads it (docs §10), from how the child ended
    (``{"state", "result", "error"}``, written by the engine): the child's result text (its
    error if it failed), ``isFailed``, ``isCanceled``."""
    state = outcome.get("state")
    body = outcome.get("result") if state == "RUN_SUCCESS" else outcome.get("error")
    return dumps(
        {
            "body": body or "",
            "isFailed": state == "RUN_FAILED",
            "isCanceled": state == "RUN_CANCELED",
        }
    )
