"""Recording what the SDK published, for the delivery loop (``delivery.py``): step results,
waits, invokes, calls and parallel plans become stepstream steps (or kept plans), written under
the run's lease; and completing what is under way (sleeps, waits, invokes) once it is due.

``Recorder`` holds one execution's view of the run: its steps by position, its plans by target,
the calls still to make, and whether the SDK ended the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any, NoReturn

from stepstream import events
from stepstream.errors import LeaseLost, RunConflict
from stepstream.records import FLOW_CONTROL, Emit, StepRecord, StepState, StepType, dumps
from stepstream.upstash import plans
from stepstream.upstash.history import Delivered, History, initial_text
from stepstream.upstash.messages import INBOX, RECORDED, Init
from stepstream.upstash.names import WORKFLOW
from stepstream.upstash.outbound import Failure, make_call
from stepstream.upstash.plans import Plan
from stepstream.workflow.runtime import Suspend

if TYPE_CHECKING:
    from stepstream.workflow.context import WorkflowContext
    from stepstream.workflow.engine import Engine

SLEEPS = (StepType.SLEEP, StepType.SLEEP_UNTIL)
WAITING = (*SLEEPS, StepType.WAIT, StepType.INVOKE)  # steps under way that the loop completes


class Recorder:
    """One execution's record of a gateway run, kept in step with its storage."""

    def __init__(self, engine: Engine, context: WorkflowContext) -> None:
        self.engine = engine
        self.context = context
        self.run = context.record
        self.steps = {step.position: step for step in self.run.steps}
        self.plans: dict[int, Plan] = {}
        self.kinds: dict[int, str] = {}  # the SDK's step types, where not the recorded one
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.lock = asyncio.Lock()  # one recording at a time: the loop's, or a take's
        self.posted = 0  # deliveries of the last pass
        self.taken = 0  # new messages handed over while they were open
        self.ended: tuple[Any] | None = None  # the SDK ended the run: (its result,)
        self.initial = initial_text(self.run)
        self.encoded: dict[Any, tuple[Any, Any]] = {}  # ``History.cache``, across passes

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
            return await self.keep_plan(message)
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
        await self.keep_kind(position, record["stepType"], step.type)
        if position in self.plans:  # a parallel group's step started with its plan
            step.started_at = self.plans[position].at  # (a sleep's plan did the sleeping)
        updates = [events.step_start(self.run.id, step)]
        if step.type in SLEEPS and position not in self.plans:
            step.state, step.finished_at, step.out = StepState.PROGRESS, None, None
            step.wake_at = at + int(message.get("delay_ms") or 0)
        else:
            updates.append(events.step_finish(self.run.id, step))
        await self.save(step, *updates)
        return True

    async def keep_kind(self, position: int, kind: str, recorded: StepType) -> None:
        """Keep the SDK's step type when the step is recorded as another (``plans.py``)."""
        if kind != recorded.value and self.kinds.get(position) != kind:
            await plans.keep_kind(self.engine, self.run.id, position, kind)
            self.kinds[position] = kind

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
        await self.keep_kind(position, wait.get("kind", "Wait"), step.type)
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

    async def keep_plan(self, message: dict[str, Any]) -> bool:
        """Keep a parallel group's plan step (its history entry), due after its delay (a
        sleep's); ``False`` if kept already."""
        record, at = message["record"], int(message["at"])
        target = int(record["targetStep"]) - 1
        if target in self.plans:
            return False
        plan = Plan(record, at, at + int(message.get("delay_ms") or 0))
        await plans.keep(self.engine, self.run.id, target, plan)
        self.plans[target] = plan
        return True

    async def make_calls(self) -> Failure | None:
        """Make the queued ``context.call`` requests, at once (a parallel group's calls run
        side by side); record each answer as its step's result. The first failure, if any:
        its call stays queued, so the retry calls again."""
        if not self.calls:
            return None
        await self.context.confirm()  # no request from an execution that lost its run
        calls, self.calls = self.calls, []
        steps = [self.steps[int(message["call"]["position"])] for _, message in calls]
        outs = await asyncio.gather(
            *(
                make_call(message["call"]) if step.state is not StepState.SUCCESS else no_call()
                for (_, message), step in zip(calls, steps, strict=True)
            )
        )
        failure = None
        for (key, message), step, out in zip(calls, steps, outs, strict=True):
            if isinstance(out, Failure):
                failure = failure or replace(out, position=step.position)
                self.calls.append((key, message))
                continue
            if out is not None:
                step.state, step.finished_at, step.out = StepState.SUCCESS, self.context.now(), out
                await self.save(step, events.step_finish(self.run.id, step))
            await self.engine.backend.delete_entry(INBOX + self.run.id, key)
        return failure

    async def settle(self) -> tuple[bool, int | None]:
        """Complete every sleep whose time has come, wait that was notified or timed out and
        invoke whose child ended (a parallel group may hold several). Whether one is still
        under way, and when the first of those ends by itself (a sleep, a wait's timeout; a
        notify or a child's end makes the run due at once)."""
        now = self.context.now()
        under_way, wakes = False, []
        for step in sorted(self.steps.values(), key=lambda s: s.position):
            if step.state is not StepState.PROGRESS or step.type not in WAITING:
                continue
            if step.type is StepType.INVOKE:
                if not step.resolved:
                    under_way = True
                    continue
                step.out = invoked(json.loads(step.out or "{}"))
            elif step.type is StepType.WAIT and step.resolved:
                step.out = dumps({"data": json.loads(step.out or "null"), "timed_out": False})
            elif (wake_at := step.wake_at or now) > now:
                under_way = True
                wakes.append(wake_at)
                continue
            elif step.type is StepType.WAIT:
                step.out = dumps({"data": None, "timed_out": True})
            step.state, step.finished_at = StepState.SUCCESS, now
            await self.save(step, events.step_finish(self.run.id, step))
        return under_way, min(wakes, default=None)

    def suspend(self, wake_at: int | None) -> NoReturn:
        """End this execution until ``wake_at`` (or until something makes the run due)."""
        if wake_at is not None:
            self.context.wakes.append(wake_at)
        raise Suspend(wake_at)

    def due(self, under_way: bool, wake: int | None) -> list[Delivered]:
        """The deliveries to make now: each plan of a parallel group that is due and not
        started, and the whole history only once nothing is ``under_way``. If there is none,
        suspend until the first of ``wake`` and the next plan's due time (a sleep's plan)."""
        deliveries, next_due = self.history().deliveries(self.context.now())
        if under_way:
            deliveries = [delivery for delivery in deliveries if delivery[2] is not None]
        if not deliveries:
            self.suspend(min((t for t in (wake, next_due) if t is not None), default=None))
        return deliveries

    def next_position(self) -> int:
        position = 0
        while (step := self.steps.get(position)) is not None and step.state is StepState.SUCCESS:
            position += 1
        return position

    def history(self) -> History:
        return History(self.run.id, self.initial, self.steps, self.plans, self.kinds, self.encoded)


async def no_call() -> None:
    """A call whose step is recorded already: nothing to make."""


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
