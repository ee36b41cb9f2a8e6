"""The in-memory backend: the whole storage protocol in this process's memory, for tests
(``stepstream.testing.WorkflowEnv`` runs on it) and as the fast reference of the contract suite.

``memory://`` is a store of its own; ``memory://NAME`` is shared by every backend of this process
opened with that name (as processes share one Redis), for as long as one of them exists. Nothing
survives the process. Each change, with the events reporting it, is made under one lock with no
``await`` in the middle (``store.py``), so it is atomic for every task and thread of the
process. Time (event ids, expiry, leases, due runs) is the store's ``clock``, its "storage
time": a test may give a virtual one.

>>> backend = MemoryBackend()
>>> # await backend.open()
>>> # await backend.append("room-1", "chat.note", '"hi"', HistoryPolicy())
"""

from __future__ import annotations

import asyncio
import contextlib
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Collection
from dataclasses import replace
from urllib.parse import urlsplit

from stepstream.backends.base import (
    CancelRun,
    Claim,
    CreateRun,
    FinishRun,
    LiveSink,
    Notify,
    ReleaseRun,
    RenewsAtOnce,
    RunFilter,
    SaveSteps,
    WaitEvent,
)
from stepstream.backends.memory.flow import MemoryFlow, release
from stepstream.backends.memory.recovery import MemoryRecovery
from stepstream.backends.memory.store import (
    StoredRun,
    call_on,
    claimable_at,
    cleaned,
    due_by,
    store_named,
    stored,
)
from stepstream.clock import Clock, system_ms
from stepstream.errors import ConfigurationError, CursorUnavailable, LeaseLost, RunConflict
from stepstream.records import (
    CursorKey,
    HistoryPolicy,
    Lease,
    Message,
    RunPage,
    RunRecord,
    RunState,
    StepState,
    format_cursor,
    next_takeovers,
)

__all__ = ["MemoryBackend"]


class MemoryBackend(MemoryFlow, MemoryRecovery, RenewsAtOnce):
    """The storage protocol in memory: ``MemoryBackend()`` (a store of its own),
    ``MemoryBackend("name")`` / ``memory://name`` (shared by every backend of this process with
    that name). ``clock`` is the store's time in epoch milliseconds (the first backend of a
    name sets it).

    >>> backend = MemoryBackend(clock=lambda: 1_795_500_000_000)
    >>> backend.url
    'memory://'
    """

    def __init__(self, name: str | None = None, *, clock: Clock = system_ms) -> None:
        self.url = f"memory://{name or ''}"
        self._store = store_named(name, clock)
        self._store.members.add(self)
        self._open = False
        self._sink: LiveSink | None = None
        self._listening: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakers: list[tuple[Callable[[], None], asyncio.AbstractEventLoop]] = []

    @classmethod
    def from_url(cls, url: str) -> MemoryBackend:
        parts = urlsplit(url)
        if parts.query or parts.fragment or parts.path.strip("/"):
            raise ConfigurationError(
                f"{url!r}: write memory:// (a store of its own) or memory://NAME (shared by "
                "every backend of this process opened with that name); it takes no options"
            )
        return cls(parts.netloc or None)

    @property
    def clock(self) -> Clock:
        """The store's time (epoch milliseconds)."""
        return self._store.clock

    # -- lifecycle and delivery ------------------------------------------------------------

    async def open(self) -> None:
        self._open = True

    async def close(self) -> None:
        with self._store.lock:
            self._open = False
            self._listening.clear()
            self._wakers.clear()

    async def ping(self) -> None:
        """Memory always answers."""

    def set_sink(self, sink: LiveSink) -> None:
        self._sink = sink

    def offer(self, messages: list[Message]) -> None:
        """Hand the events this backend listens to to its sink, on the loop it listens on
        (called under the store's lock, so every sink gets them in id order)."""
        sink, loop = self._sink, self._loop
        if sink is None or loop is None or not self._listening:
            return
        mine = [m for m in messages if m.channel in self._listening]
        if mine:
            call_on(loop, sink.deliver, mine)

    def wake_local(self) -> None:
        """Call this backend's wake-up listeners (``wake_workers`` anywhere on the store)."""
        for callback, loop in self._wakers:
            call_on(loop, callback)

    # -- realtime ----------------------------------------------------------------------------

    async def append(self, channel: str, event: str, raw: str, policy: HistoryPolicy) -> Message:
        with self._store.lock:
            (message,) = self._store.append(channel, [(event, raw)], policy)
            self._store.publish([message])
        return message

    async def read(
        self,
        channel: str,
        *,
        after: CursorKey | None = None,
        before: CursorKey | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
        limit: int | None = None,
        page: int | None = None,
    ) -> list[Message]:
        with self._store.lock:
            state = self._store.channels.get(channel)
            if state is None:
                return []
            state.expire_if_due(self._store.clock())
            if after is not None and state.trimmed > after:
                raise CursorUnavailable(channel, format_cursor(after))
            keys = state.keys
            low = 0 if after is None else bisect_right(keys, after)
            high = len(keys) if before is None else bisect_left(keys, before)
            if start_ms is not None:
                low = max(low, bisect_left(keys, (start_ms, 0)))
            if end_ms is not None:
                high = min(high, bisect_left(keys, (end_ms + 1, 0)))
            if limit is not None:
                low = max(low, high - limit)
            elif page is not None:
                high = min(high, low + page)
            return state.messages[low:high] if low < high else []

    async def latest_id(self, channel: str) -> str | None:
        with self._store.lock:
            state = self._store.channels.get(channel)
            if state is None:
                return None
            state.expire_if_due(self._store.clock())
            return format_cursor(state.keys[-1]) if state.keys else None

    async def listen(self, channels: Collection[str]) -> None:
        loop = asyncio.get_running_loop()
        with self._store.lock:  # from here on, every append offers its events to us
            self._loop = loop
            self._listening.update(channels)

    async def unlisten(self, channels: Collection[str]) -> None:
        with self._store.lock:
            self._listening.difference_update(channels)

    # -- runs --------------------------------------------------------------------------------

    async def create_run(self, op: CreateRun) -> None:
        store, run = self._store, op.run
        with store.lock:
            if run.id in store.runs:
                raise RunConflict(
                    f"a workflow run with id {run.id!r} already exists: ids are single-use"
                )
            store.seq += 1
            record = cleaned(replace(run, steps=[], lease_owner=None, lease_until=None, epoch=0))
            entry = StoredRun(record, {s.position: stored(s) for s in run.steps}, store.seq)
            store.runs[run.id] = entry
            store.by_seq[entry.seq] = run.id
            store.indexed(entry, add=True)
            store.labeled(entry, add=True)
            store.append_emits(op.emits, op.policy)

    async def get_run(self, run_id: str) -> RunRecord | None:
        with self._store.lock:
            found = self._store.runs.get(run_id)
            return None if found is None else found.snapshot()

    async def list_runs(
        self, *, state: str | None, workflow: str | None, cursor: str | None, count: int
    ) -> RunPage:
        return await self.find_runs(RunFilter(state, workflow), cursor=cursor, count=count)

    async def claim_runs(self, op: Claim) -> list[RunRecord]:
        store = self._store
        names, skip = set(op.workflows), set(op.exclude)
        with store.lock:
            now = store.clock()
            due = [
                run
                for run in store.runs.values()
                if due_by(run.record, now)
                and run.record.workflow in names
                and run.record.id not in skip
            ]
            due.sort(key=lambda run: (run.record.due_at, run.seq))
            claimed = []
            for run in due[: op.limit]:
                record = run.record
                takeovers = 0
                if record.lease_owner is not None:  # its lease expired: a takeover
                    takeovers = next_takeovers(*run.takeover, record.epoch, len(run.steps))
                    run.takeover = (takeovers, record.epoch + 1, len(run.steps))
                record.lease_owner, record.lease_until = op.owner, now + op.lease_ms
                record.epoch += 1
                snapshot = run.snapshot()
                snapshot.takeovers = takeovers
                claimed.append(snapshot)
            return claimed

    async def renew_leases(self, leases: list[Lease], lease_ms: int) -> list[str]:
        store = self._store
        with store.lock:
            until, held = store.clock() + lease_ms, []
            for lease in leases:
                with contextlib.suppress(LeaseLost):
                    store.fence(lease).record.lease_until = until
                    held.append(lease.run_id)
            return held

    async def save_steps(self, op: SaveSteps) -> int:
        store = self._store
        with store.lock:
            run = store.fence(op.lease)
            run.steps.update((step.position, stored(step)) for step in op.steps)
            store.append_emits(op.emits, op.policy)
            return 0 if op.release is None else release(store, op.release)

    async def release_run(self, op: ReleaseRun) -> None:
        store = self._store
        with store.lock:
            run = store.fence(op.lease)
            run.record = cleaned(replace(run.record, **op.patch))
            # A notify or a finished child may have resolved a step while we held the run:
            # then it is due now, whatever we planned.
            resolved = not op.hold and any(
                step.resolved and step.state is StepState.PROGRESS for step in run.steps.values()
            )
            run.record.due_at = store.clock() if resolved else op.due_at
            run.record.lease_owner = run.record.lease_until = None
            run.held = op.hold
            store.append_emits(op.emits, op.policy)

    async def finish_run(self, op: FinishRun) -> None:
        store = self._store
        with store.lock:
            store.close(store.fence(op.lease), op.state, op.result, op.error, op.at)
            store.append_emits(op.emits, op.policy)

    async def wait_event(self, op: WaitEvent) -> str | None:
        store, step, run_id = self._store, op.step, op.lease.run_id
        event_id = step.event_id
        assert event_id is not None
        with store.lock:
            run = store.fence(op.lease)
            data = store.lookback.pop((run_id, event_id), None)
            if data is None:
                store.waits.setdefault(event_id, set()).add((run_id, step.position))
                run.steps[step.position] = stored(step)
            else:  # consumed and recorded resolved at once: a crash cannot lose the event
                run.steps[step.position] = stored(replace(step, out=data, resolved=True))
            store.append_emits(op.emits, op.policy)
            return data

    async def notify(self, op: Notify) -> int:
        store, run_id = self._store, op.run_id
        with store.lock:
            if run_id is not None:
                state = store.run(run_id).record.state
                if state is not RunState.STARTED:
                    raise RunConflict(
                        f"run {run_id} already finished ({state.value}); nothing can wait anymore"
                    )
            waiters = store.waits.get(op.event_id, set())
            chosen = {w for w in waiters if run_id is None or w[0] == run_id}
            waiters -= chosen
            now = store.clock()
            woken = sum(
                store.resolve(waiter, position, op.raw, before=now) for waiter, position in chosen
            )
            if not woken and run_id is not None:
                store.lookback[(run_id, op.event_id)] = op.raw
            return woken

    async def cancel_run(self, op: CancelRun) -> None:
        store = self._store
        with store.lock:
            run = store.run(op.run_id)
            if run.record.state is not RunState.STARTED:
                raise RunConflict(
                    f"run {op.run_id} already finished ({run.record.state.value}); only running "
                    "runs can be canceled"
                )
            store.close(run, RunState.CANCELED, None, "canceled", op.at)
            store.append_emits(op.emits, op.policy)

    async def wake_workers(self) -> None:
        with self._store.lock:
            self._store.wake()

    async def listen_wakeups(self, callback: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()
        with self._store.lock:
            if all(existing is not callback for existing, _ in self._wakers):
                self._wakers.append((callback, loop))

    def wakeups_active(self) -> bool:
        return self._open and bool(self._wakers)

    # -- for the test kit ---------------------------------------------------------------------

    def parked(self) -> list[RunRecord]:
        """The started runs given up with ``hold`` (their code could not replay them) and not
        resumed since, without their steps. The other backends keep no such flag: only the
        test kit asks."""
        with self._store.lock:
            return [
                run.snapshot(steps=False)
                for run in self._store.runs.values()
                if run.held and run.record.state is RunState.STARTED
            ]

    def next_due_at(self) -> int | None:
        """The earliest store time at which a started run can be claimed (due, and its lease,
        if any, expired), or ``None`` if no run will ever be due without a notify."""
        with self._store.lock:
            times = [claimable_at(run.record) for run in self._store.runs.values()]
        return min((t for t in times if t is not None), default=None)
