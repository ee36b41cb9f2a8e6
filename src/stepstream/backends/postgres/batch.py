"""Group commit of step writes: the saves that arrive while others are in flight go to
PostgreSQL together, as one call of ``ss_save_many`` (``migrations/007_save_many.sql``):
one round trip, one transaction, one WAL flush for all of them.

A save arriving with fewer than ``max_inflight`` calls in flight and none queued is sent at
once by its caller (alone, so a lone workflow's step costs what it did); under load the writes
queue meanwhile and leave together, at most ``max_batch`` per call. Each run keeps its order: a
save waits while another of its run's is in flight, and a batch holds at most one per run. A
save whose events go to another channel than its run's goes alone (``_fits``: no deadlock
between batches). Every save still gets its own answer: ``LeaseLost`` for a run its claim no
longer holds (nothing of it is saved), the error of the call when the call failed as a whole. A
call refused for another reason than a lost connection is retried one save at a time
(``ss_save_step`` or ``ss_save_steps``), so one bad save fails alone. Cancelling a caller
cancels its save only while the caller sends it itself; a save that left in a batch commits
with the others.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from stepstream.backends.base import SaveSteps
from stepstream.backends.postgres.connection import Database
from stepstream.backends.postgres.realtime import expire_ms
from stepstream.errors import BackendUnavailable, LeaseLost
from stepstream.futures import settle

MAX_BATCH = 100

Single = Callable[[SaveSteps], Awaitable[int]]


class SaveBatcher:
    """Queues ``SaveSteps`` without a flow control slot to give back and sends them in
    batches; ``single`` saves one the usual way (the fallback)."""

    def __init__(self, db: Database, single: Single, max_inflight: int) -> None:
        self._db = db
        self._single = single
        self._max_inflight = max(1, max_inflight)
        self._inflight = 0
        self._queue: deque[tuple[SaveSteps, asyncio.Future[None]]] = deque()
        self._busy: set[str] = set()  # runs with a save in flight
        self._tasks: set[asyncio.Task[None]] = set()

    async def save(self, op: SaveSteps) -> int:
        run_id = op.lease.run_id
        if not self._queue and self._inflight < self._max_inflight and run_id not in self._busy:
            # Nothing to group it with: the caller sends it itself, as it would unbatched (no
            # task to start and no future to settle: two turns of the event loop fewer).
            self._inflight += 1
            self._busy.add(run_id)
            try:
                await self._single(op)
            finally:
                self._busy.discard(run_id)
                self._inflight -= 1
                self._start()
            return 0
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((op, future))
        self._start()
        await future
        return 0

    def _start(self) -> None:
        while self._inflight < self._max_inflight:
            batch = self._take()
            if not batch:
                return
            self._inflight += 1
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[tuple[SaveSteps, asyncio.Future[None]]]:
        """The queued saves to send now, oldest first: at most one per run, none of a run that
        has one in flight or an earlier save kept back, none whose caller has gone."""
        batch: list[tuple[SaveSteps, asyncio.Future[None]]] = []
        kept: deque[tuple[SaveSteps, asyncio.Future[None]]] = deque()
        waiting: set[str] = set()  # runs with a save kept back: their later saves wait too
        while self._queue:
            op, future = self._queue.popleft()
            if future.done():
                continue
            run_id = op.lease.run_id
            if run_id in self._busy or run_id in waiting or not _fits(batch, op):
                waiting.add(run_id)
                kept.append((op, future))
                continue
            self._busy.add(run_id)
            batch.append((op, future))
        self._queue = kept
        return batch

    async def _send(self, batch: list[tuple[SaveSteps, asyncio.Future[None]]]) -> None:
        try:
            if len(batch) == 1:
                await self._one(*batch[0])
            else:
                await self._many(batch)
        finally:
            for op, future in batch:
                self._busy.discard(op.lease.run_id)
                settle(future, error=BackendUnavailable(f"{self._db.where} closed during a save"))
            self._inflight -= 1
            self._start()

    async def _one(self, op: SaveSteps, future: asyncio.Future[None]) -> None:
        try:
            await self._single(op)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # LeaseLost is one: control flow, not an Exception
            settle(future, error=exc)
        else:
            settle(future)

    async def _many(self, batch: list[tuple[SaveSteps, asyncio.Future[None]]]) -> None:
        ops = [op for op, _ in batch]
        try:
            lost = set(await self._db.value(_SAVE_MANY, *_arguments(ops)))
        except BackendUnavailable as exc:
            for _, future in batch:
                settle(future, error=exc)
            return
        except Exception:  # refused as a whole (a NUL in one save's text, ...): one at a time
            await asyncio.gather(*(self._one(op, future) for op, future in batch))
            return
        for op, future in batch:
            run_id = op.lease.run_id
            if run_id in lost:
                settle(future, error=LeaseLost(f"run {run_id} is no longer held by this execution"))
            else:
                settle(future)

    async def close(self) -> None:
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task


def _fits(batch: list[tuple[SaveSteps, asyncio.Future[None]]], op: SaveSteps) -> bool:
    """Whether ``op`` may join ``batch``. A batch locks its runs' channels in run id order, so
    it holds only saves whose events all go to their own run's channel: then every batch, of
    any process, locks channels in name order and none can deadlock with another. A save
    writing to any other channel goes alone, as it did before batching."""
    if not batch:
        return True
    return len(batch) < MAX_BATCH and _own(batch[0][0]) and _own(op)


def _own(op: SaveSteps) -> bool:
    return all(emit.channel == op.lease.run_id for emit in op.emits)


_SAVE_MANY = (
    "SELECT ss_save_many($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, "
    "$16, $17)"
)


def _arguments(ops: list[SaveSteps]) -> list[list[Any]]:
    """``ss_save_many``'s 17 arrays: per save its run, lease and history policy; the steps of
    every save flattened (each with its save's 1-based number); the events of every save
    flattened, save i's being ``e_from[i]..e_to[i]`` (1-based, inclusive)."""
    saves: list[tuple[Any, ...]] = []
    steps: list[tuple[Any, ...]] = []
    events: list[tuple[Any, ...]] = []
    for number, op in enumerate(ops, 1):
        steps.extend(
            (number, s.position, s.state.value, s.resolved, s.out, s.finished_at, s.to_json())
            for s in op.steps
        )
        first = len(events) + 1
        events.extend((emit.channel, emit.event, emit.raw) for emit in op.emits)
        held, policy = op.lease, op.policy
        last = len(events)
        saves.append(
            (held.run_id, held.owner, held.epoch, first, last, policy.max_length, expire_ms(policy))
        )
    run_id, owner, epoch, e_from, e_to, max_length, expire = _columns(saves, 7)
    steps_columns, events_columns = _columns(steps, 7), _columns(events, 3)
    return [run_id, owner, epoch, *steps_columns, e_from, e_to, *events_columns, max_length, expire]


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[]] * width
