"""Flow control slots and named entries of the in-memory backend (see ``FlowStore`` and
``EntryStore`` in ``backends/base.py``); each operation is one turn under the store's lock."""

from __future__ import annotations

from stepstream.backends.base import AcquireSlot, Budget, ReleaseSlot
from stepstream.backends.memory.store import Store, stored
from stepstream.errors import RunConflict
from stepstream.records import FLOW_CONTROL, RunState, StepState


class MemoryFlow:
    """``FlowStore`` and ``EntryStore`` on the shared ``Store``."""

    _store: Store

    async def acquire_slot(self, op: AcquireSlot) -> Budget:
        store, limits = self._store, op.limits
        holder = (op.lease.run_id, op.step.position)
        with store.lock:
            run = store.fence(op.lease)
            now = store.clock()
            slots = store.slots.setdefault(limits.key, {})
            slots.pop(holder, None)
            if limits.parallelism is not None and len(slots) >= limits.parallelism:
                # Full as counted: only now drop the slots whose claim ended.
                for other, claim in list(slots.items()):
                    if not _counts(store, other[0], claim, now):
                        del slots[other]
            starts = store.starts.setdefault(limits.key, [])
            starts[:] = [at for at in starts if at > now - limits.period_ms]
            full = limits.parallelism is not None and len(slots) >= limits.parallelism
            spent = limits.rate is not None and len(starts) >= limits.rate
            waiters = store.flow_waiters.setdefault(limits.key, {})
            if not full and not spent:
                if limits.parallelism is not None:
                    slots[holder] = (op.lease.owner, op.lease.epoch)
                if limits.rate is not None:
                    starts.append(now)
                waiters.pop(holder, None)
                return Budget(True)
            run.steps[op.step.position] = stored(op.step)
            retry_at = []
            if spent:
                retry_at.append(min(starts) + limits.period_ms)
            if full:
                waiters.setdefault(holder, now)
                retry_at.append(min(_lease_end(store, run_id) for run_id, _ in slots) + 1)
            return Budget(False, max(retry_at))

    async def release_slot(self, op: ReleaseSlot) -> int:
        with self._store.lock:
            return release(self._store, op)

    async def put_entry(self, kind: str, key: str, value: str, *, create: bool = False) -> None:
        store = self._store
        with store.lock:
            entries = store.entries.setdefault(kind, {})
            if create and key in entries:
                raise RunConflict(f"{kind} {key!r} already exists")
            entries[key] = value

    async def get_entry(self, kind: str, key: str) -> str | None:
        with self._store.lock:
            return self._store.entries.get(kind, {}).get(key)

    async def list_entries(self, kind: str) -> dict[str, str]:
        with self._store.lock:
            return dict(self._store.entries.get(kind, {}))

    async def delete_entry(self, kind: str, key: str) -> bool:
        with self._store.lock:
            return self._store.entries.get(kind, {}).pop(key, None) is not None


def release(store: Store, op: ReleaseSlot) -> int:
    """Give the slot up and wake the longest waiter still waiting (the caller holds the
    store's lock); how many runs it woke."""
    store.slots.get(op.key, {}).pop((op.run_id, op.position), None)
    waiters = store.flow_waiters.get(op.key, {})
    for waiter in sorted(waiters, key=lambda w: (waiters[w], w)):
        del waiters[waiter]
        run = store.runs.get(waiter[0])
        step = None if run is None else run.steps.get(waiter[1])
        if (
            step is not None
            and step.waiting_for == FLOW_CONTROL
            and step.state is StepState.PROGRESS
            and store.resolve(waiter[0], waiter[1], step.out)
        ):
            return 1
    return 0


def _counts(store: Store, run_id: str, claim: tuple[str, int], now: int) -> bool:
    """Whether a slot taken by ``claim`` (owner, epoch) of ``run_id`` still counts."""
    run = store.runs.get(run_id)
    if run is None:
        return False
    record = run.record
    return (
        record.state is RunState.STARTED
        and (record.lease_owner, record.epoch) == claim
        and record.lease_until is not None
        and record.lease_until >= now
    )


def _lease_end(store: Store, run_id: str) -> int:
    lease_until = store.runs[run_id].record.lease_until
    return lease_until if lease_until is not None else 0
