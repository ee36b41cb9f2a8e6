"""The state the in-memory backends of one name share, and the changes made to it. Every
function here runs with the store's ``lock`` held (the backend takes it), so each change is
atomic for every task and thread of the process."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from bisect import bisect_left, insort
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from stepstream.clock import Clock
from stepstream.errors import LeaseLost, RunNotFound
from stepstream.records import (
    CursorKey,
    Emit,
    HistoryPolicy,
    Lease,
    Message,
    RunRecord,
    RunState,
    StepRecord,
    StepState,
    dumps,
    format_cursor,
)


class Member(Protocol):
    """A backend on the store: told of new events and of wake-ups (under the lock)."""

    def offer(self, messages: list[Message]) -> None: ...

    def wake_local(self) -> None: ...


IndexKey = tuple[str | None, str | None]
"""A listing index: ``(state, workflow)``, ``None`` for "any"."""

NAMED: weakref.WeakValueDictionary[str, Store] = weakref.WeakValueDictionary()
NAMED_LOCK = threading.Lock()


@dataclass(slots=True)
class Channel:
    """A channel's stored events (``keys`` and ``messages`` side by side, oldest first)."""

    keys: list[CursorKey] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    last: CursorKey = (0, 0)  # the newest id ever handed out
    trimmed: CursorKey = (0, 0)  # the newest id removed (trimmed or expired)
    expires_at: int | None = None

    def expire_if_due(self, now: int) -> None:
        if self.expires_at is not None and self.expires_at <= now:
            self.keys.clear()
            self.messages.clear()
            self.trimmed, self.expires_at = self.last, None


@dataclass(slots=True)
class StoredRun:
    """A run as stored: its record, its steps by position, its creation order."""

    record: RunRecord  # its ``steps`` stay empty: they live in ``steps``
    steps: dict[int, StepRecord]
    seq: int
    held: bool = False  # released with ``hold`` (parked) and not claimed since
    # The last takeover: (takeovers, the epoch it left, the steps it saw).
    takeover: tuple[int, int | None, int | None] = (0, None, None)

    def snapshot(self, *, steps: bool = True) -> RunRecord:
        """A copy the caller may change freely."""
        ordered = [replace(self.steps[p]) for p in sorted(self.steps)] if steps else []
        record = self.record
        headers, labels = dict(record.headers), list(record.labels)
        return replace(record, headers=headers, labels=labels, steps=ordered)


class Store:
    """What the backends of one name share: channels, runs, waits, and who listens."""

    def __init__(self, clock: Clock) -> None:
        self.lock = threading.Lock()
        self.clock = clock
        self.channels: dict[str, Channel] = {}
        self.runs: dict[str, StoredRun] = {}
        self.seq = 0
        self.index: dict[IndexKey, list[int]] = {}  # run seqs, oldest first
        self.by_seq: dict[int, str] = {}
        self.labels: dict[str, list[int]] = {}  # label -> run seqs, oldest first
        self.waits: dict[str, set[tuple[str, int]]] = {}  # event id -> (run id, position)
        self.lookback: dict[tuple[str, str], str] = {}  # (run id, event id) -> data
        # Flow control, by key: slots ((run id, position) -> (owner, epoch)), rate starts
        # (store times), waiters ((run id, position) -> since, in line order).
        self.slots: dict[str, dict[tuple[str, int], tuple[str, int]]] = {}
        self.starts: dict[str, list[int]] = {}
        self.flow_waiters: dict[str, dict[tuple[str, int], int]] = {}
        self.entries: dict[str, dict[str, str]] = {}  # kind -> key -> JSON text
        self.members: weakref.WeakSet[Member] = weakref.WeakSet()

    # -- channels (the caller holds ``lock``) ----------------------------------------------

    def append(
        self, channel: str, events: list[tuple[str, str]], policy: HistoryPolicy
    ) -> list[Message]:
        now = self.clock()
        state = self.channels.setdefault(channel, Channel())
        state.expire_if_due(now)
        key, messages = state.last, []
        for event, raw in events:
            key = (now, 0) if now > key[0] else (key[0], key[1] + 1)
            messages.append(Message(format_cursor(key), channel, event, raw, key))
            state.keys.append(key)
        state.messages.extend(messages)
        state.last = key
        excess = 0 if policy.max_length is None else len(state.keys) - policy.max_length
        if excess > 0:
            state.trimmed = state.keys[excess - 1]
            del state.keys[:excess], state.messages[:excess]
        if policy.expire_after is not None:
            state.expires_at = now + int(policy.expire_after * 1000)
        else:
            state.expires_at = None
        return messages

    def append_emits(self, emits: Iterable[Emit], policy: HistoryPolicy) -> None:
        by_channel: dict[str, list[tuple[str, str]]] = {}
        for emit in emits:
            by_channel.setdefault(emit.channel, []).append((emit.event, emit.raw))
        messages = []
        for channel, events in by_channel.items():
            messages += self.append(channel, events, policy)
        self.publish(messages)

    def publish(self, messages: list[Message]) -> None:
        if messages:
            for member in list(self.members):
                member.offer(messages)

    # -- runs (the caller holds ``lock``) ---------------------------------------------------

    def run(self, run_id: str) -> StoredRun:
        found = self.runs.get(run_id)
        if found is None:
            raise RunNotFound(run_id)
        return found

    def fence(self, lease: Lease) -> StoredRun:
        found = self.runs.get(lease.run_id)
        held = (RunState.STARTED, lease.owner, lease.epoch)
        if (
            found is None
            or (found.record.state, found.record.lease_owner, found.record.epoch) != held
        ):
            raise LeaseLost(f"run {lease.run_id} is no longer held by this execution")
        return found

    def indexed(self, run: StoredRun, add: bool) -> None:
        state, workflow = run.record.state.value, run.record.workflow
        keys = ((None, None), (state, None), (None, workflow), (state, workflow))
        lists = [self.index.setdefault(key, []) for key in keys]
        self.sorted_into(lists, run.seq, add)

    def labeled(self, run: StoredRun, add: bool) -> None:
        """Index ``run`` under its labels (they never change: once at creation)."""
        lists = [self.labels.setdefault(label, []) for label in dict.fromkeys(run.record.labels)]
        self.sorted_into(lists, run.seq, add)

    @staticmethod
    def sorted_into(lists: list[list[int]], seq: int, add: bool) -> None:
        for seqs in lists:
            if add:
                insort(seqs, seq)
            else:
                del seqs[bisect_left(seqs, seq)]

    def close(
        self, run: StoredRun, state: RunState, result: str | None, error: str | None, now: int
    ) -> None:
        """End ``run``: drop its lease, waits and kept events, cancel its steps still in
        progress, and resolve its parent's invoke step."""
        record = run.record
        self.indexed(run, add=False)
        record.state, record.completed_at = state, now
        record.result, record.error = result, error
        record.due_at = record.lease_owner = record.lease_until = None
        run.record = cleaned(record)
        self.indexed(run, add=True)
        for waiters in self.waits.values():
            waiters.difference_update({w for w in waiters if w[0] == record.id})
        for key in [k for k in self.lookback if k[0] == record.id]:
            del self.lookback[key]
        for step in run.steps.values():
            if step.state in (StepState.PROGRESS, StepState.RETRY):
                step.state, step.finished_at = StepState.CANCELED, now
        if record.parent is not None and record.parent_position is not None:
            out = dumps({"state": state.value, "result": result, "error": error})
            self.resolve(record.parent, record.parent_position, out)

    def resolve(
        self, run_id: str, position: int, out: str | None, *, before: int | None = None
    ) -> bool:
        """A notify or a finished child writes a step's ``out`` while it is in progress; its
        run becomes due now (its worker completes the step). ``before``: a notify's time,
        which finds a wait past its deadline timed out (its worker records that)."""
        run = self.runs.get(run_id)
        step = None if run is None else run.steps.get(position)
        if run is None or step is None or step.state is not StepState.PROGRESS or step.resolved:
            return False
        if before is not None and step.passed(before):
            return False
        step.out, step.resolved = out, True
        if run.record.state is RunState.STARTED:
            run.record.due_at = self.clock()
        return True

    def wake(self) -> None:
        for member in list(self.members):
            member.wake_local()


def store_named(name: str | None, clock: Clock) -> Store:
    if name is None:
        return Store(clock)
    with NAMED_LOCK:
        store = NAMED.get(name)
        if store is None:
            store = NAMED[name] = Store(clock)
        return store


def stored(step: StepRecord) -> StepRecord:
    """A copy of ``step`` as the other backends store it: through its JSON (so a lone surrogate
    becomes U+FFFD here too, see ``records.dumps``)."""
    return StepRecord.from_json(step.to_json())


def cleaned(record: RunRecord) -> RunRecord:
    """``record`` with its JSON-stored fields (payload, headers, error...) as stored elsewhere."""
    return record.with_meta(record.meta_json())


def claimable_at(record: RunRecord) -> int | None:
    if record.state is not RunState.STARTED or record.due_at is None:
        return None
    if record.lease_until is None:
        return record.due_at
    return max(record.due_at, record.lease_until + 1)


def due_by(record: RunRecord, now: int) -> bool:
    at = claimable_at(record)
    return at is not None and at <= now


def call_on(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    """Schedule ``fn`` on ``loop``, from that loop or any thread: it runs after the change,
    outside the store's lock (a sink may call back into the backend)."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        loop.call_soon(fn, *args)
    else:
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody to tell
            loop.call_soon_threadsafe(fn, *args)
