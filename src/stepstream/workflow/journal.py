"""``Journal``: what every step of a ``WorkflowContext`` stands on — the run's recorded steps
by position, the replay check that a position still holds the same step, and the ordered,
fenced writes of one execution.

A run is replayed from the top once per resume. Each step call takes the next position; if the
log holds a finished step there, its stored result is returned (its body never runs again);
otherwise the step runs and its result is persisted before the workflow moves on. Steps are
started as tasks at call time, so ``asyncio.gather(context.run(...), ...)`` runs them in
parallel with positions in call order. Writes are chained: a step's start is stored before its
finish, and events are stored in the order they were made.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from stepstream import events
from stepstream.backends.base import ReleaseSlot
from stepstream.clock import Clock
from stepstream.errors import BackendError, LeaseLost, NonDeterminismError
from stepstream.records import (
    FAILURE_POSITIONS,
    Emit,
    Lease,
    RunRecord,
    StepRecord,
    StepState,
    StepType,
)
from stepstream.workflow.policy import RetryPolicy
from stepstream.workflow.runtime import Runtime, StorageInterrupted, Suspend

T = TypeVar("T")


@dataclass(slots=True)
class Slot:
    """A flow control slot a step execution holds: given back with the step's outcome."""

    key: str
    position: int
    given: bool = False


class Journal:
    """The replay bookkeeping and ordered writes of one execution of one run (the base of
    ``WorkflowContext``)."""

    def __init__(
        self,
        run: RunRecord,
        runtime: Runtime,
        lease: Lease,
        clock: Clock,
        policy: RetryPolicy,
        *,
        confirm: Callable[[], Awaitable[None]] | None = None,
        stopping: Callable[[], bool] | None = None,
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
        self._stopping = stopping
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

    async def confirm(self) -> None:
        """Make sure this execution still holds its run before it has an effect outside
        storage (a step body, a request): ``LeaseLost`` once another execution took the run
        over, say after a stall past the lease (see ``Worker._confirmer``)."""
        if self._confirm is not None:
            await self._storage(self._confirm())

    def stopping(self) -> bool:
        """Whether the worker executing this run is stopping: a step body not started yet
        then waits for another worker (the run is released due now) rather than begin on
        one that is about to cut it off."""
        return self._stopping is not None and self._stopping()

    def raise_if_interrupted(self) -> None:
        """Raise the lost lease or storage failure that ended this execution, if one did."""
        if self._interrupted is not None:
            raise self._interrupted

    async def _storage(self, operation: Awaitable[T]) -> T:
        """Await a storage operation of this execution: a lost lease or a storage error ends
        the execution (see ``StorageInterrupted``). Once the replay diverged, nothing more is
        recorded: the code that can replay the run must find it as it was."""
        if self._interrupted is not None or self.nondeterminism is not None:
            if isinstance(operation, Coroutine):
                operation.close()  # never to be awaited
            self.raise_if_interrupted()
            raise self.nondeterminism  # type: ignore[misc]
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

    def patched(self, name: str) -> bool:
        """Whether this run takes the new code path of a change named ``name`` (safe deploys,
        DESIGN §14): ``True`` when it executes this point for the first time, ``False`` while
        it replays history recorded before the change was deployed::

            if context.patched("send-receipt"):
                await context.run("send-receipt", send_receipt)

        The first ``True`` records a marker (a ``Patch`` step) so later replays of the run say
        ``True`` again. Once no run recorded before the change remains, replace the call with
        ``deprecate_patch(name)`` and keep only the new code.
        """
        if not isinstance(name, str) or not name:
            raise ValueError("patched() needs a non-empty string name")
        self.raise_if_interrupted()
        recorded = self._recorded.get(self._position)
        if recorded is not None:
            if recorded.type is StepType.PATCH and recorded.name == name:
                self._position += 1
                return True
            return False  # the run recorded something else here: it predates the change
        now = self.now()
        marker = StepRecord(
            self._position,
            name,
            StepType.PATCH,
            StepState.SUCCESS,
            attempts=1,
            started_at=now,
            finished_at=now,
            out="true",
        )
        self._position += 1
        self._recorded[marker.position] = marker
        self._write(lambda: self._storage(self._runtime.save_steps(self.lease, [marker], [])))
        return True

    def deprecate_patch(self, name: str) -> None:
        """Where ``patched(name)`` was once called: skip its marker in runs that recorded one,
        so they replay after the branch is gone (and record nothing in others)."""
        recorded = self._recorded.get(self._position)
        if recorded is not None and recorded.type is StepType.PATCH and recorded.name == name:
            self._position += 1

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
        self,
        step: StepRecord,
        update: Emit,
        *,
        wait: bool,
        also: Emit | None = None,
        slot: Slot | None = None,
    ) -> None:
        """Store ``step`` with the event reporting it (after ``also``, an earlier event not yet
        stored); with ``wait``, return once it is durable. A ``slot`` not given back yet is
        given back by the same write."""
        self._recorded[step.position] = step
        updates = [update] if also is None else [also, update]
        release = None
        if slot is not None and not slot.given:
            release = ReleaseSlot(self.workflow_run_id, slot.key, slot.position)
        previous = self._last_write
        if wait and (previous is None or previous.done()):
            # Nothing queued before it: write directly, no task (and no copy: nothing can
            # change the step while we wait). A write that comes meanwhile (a parallel step)
            # queues behind this one, so events are stored in the order they were made.
            if previous is not None:
                previous.result()
            tail = self._last_write = asyncio.get_running_loop().create_future()
            try:
                await self._storage(self._runtime.save_steps(self.lease, [step], updates, release))
            finally:
                tail.set_result(None)
            if slot is not None:
                slot.given = True
            return
        snapshot = dataclasses.replace(step)

        async def save() -> None:
            await self._storage(self._runtime.save_steps(self.lease, [snapshot], updates, release))
            if slot is not None:
                slot.given = True

        future = self._write(save)
        if wait:
            await future

    def _suspend(self, wake_at: int | None) -> Suspend:
        self.wakes.append(wake_at)
        return Suspend(wake_at)

    def _write_soon(self, step: StepRecord, update: Emit) -> None:
        snapshot = dataclasses.replace(step)
        self._write(
            lambda: self._storage(self._runtime.save_steps(self.lease, [snapshot], [update]))
        )

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

    async def _settle_writes(self) -> None:
        if self._last_write is not None:
            await self._last_write
