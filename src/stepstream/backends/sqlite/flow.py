"""Flow control slots and named entries of the SQLite backend (``FlowStore`` and
``EntryStore`` in ``backends/base.py``). Each operation is one write job: SQLite's single
writer makes it atomic for every process sharing the file."""

from __future__ import annotations

import sqlite3

from stepstream.backends.base import AcquireSlot, Budget, ReleaseSlot
from stepstream.backends.sqlite.connection import Database
from stepstream.backends.sqlite.rows import fence, put_steps
from stepstream.clock import system_ms
from stepstream.errors import RunConflict
from stepstream.records import FLOW_CONTROL, StepRecord, StepState

STALE_WAITERS = 100  # at most so many moved-on waiters dropped by one release


class SQLiteFlow:
    """``FlowStore`` and ``EntryStore`` on the database thread of ``_db``."""

    _db: Database

    async def acquire_slot(self, op: AcquireSlot) -> Budget:
        return await self._db.submit(lambda conn: acquire(conn, op), write=True)

    async def release_slot(self, op: ReleaseSlot) -> int:
        return await self._db.submit(lambda conn: release(conn, op), write=True)

    async def put_entry(self, kind: str, key: str, value: str, *, create: bool = False) -> None:
        def put(conn: sqlite3.Connection) -> None:
            verb = "INSERT OR IGNORE" if create else "INSERT OR REPLACE"
            cursor = conn.execute(
                f"{verb} INTO entries (kind, key, value) VALUES (?, ?, ?)", (kind, key, value)
            )
            if create and not cursor.rowcount:
                raise RunConflict(f"{kind} {key!r} already exists")

        await self._db.submit(put, write=True)

    async def get_entry(self, kind: str, key: str) -> str | None:
        def get(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT value FROM entries WHERE kind = ? AND key = ?", (kind, key)
            ).fetchone()
            return None if row is None else str(row[0])

        return await self._db.submit(get, write=False)

    async def list_entries(self, kind: str) -> dict[str, str]:
        def entries(conn: sqlite3.Connection) -> dict[str, str]:
            rows = conn.execute("SELECT key, value FROM entries WHERE kind = ?", (kind,))
            return {key: value for key, value in rows}

        return await self._db.submit(entries, write=False)

    async def delete_entry(self, kind: str, key: str) -> bool:
        def delete(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute("DELETE FROM entries WHERE kind = ? AND key = ?", (kind, key))
            return bool(cursor.rowcount)

        return await self._db.submit(delete, write=True)


def acquire(conn: sqlite3.Connection, op: AcquireSlot) -> Budget:
    """``acquire_slot`` in one write job: count, take or wait (see ``FlowStore``)."""
    limits, lease, step = op.limits, op.lease, op.step
    key, run_id, position = limits.key, lease.run_id, step.position
    fence(conn, lease)
    now = system_ms()
    conn.execute(
        "DELETE FROM wf_slots WHERE key = ? AND run_id = ? AND position = ?",
        (key, run_id, position),
    )
    held, soonest = _held(conn, key, limits.parallelism, now)
    conn.execute("DELETE FROM wf_starts WHERE key = ? AND at <= ?", (key, now - limits.period_ms))
    started, oldest = conn.execute(
        "SELECT count(*), min(at) FROM wf_starts WHERE key = ?", (key,)
    ).fetchone()
    full = limits.parallelism is not None and held >= limits.parallelism
    spent = limits.rate is not None and started >= limits.rate
    if not full and not spent:
        if limits.parallelism is not None:
            conn.execute(
                "INSERT INTO wf_slots (key, run_id, position, owner, epoch) VALUES (?, ?, ?, ?, ?)",
                (key, run_id, position, lease.owner, lease.epoch),
            )
        if limits.rate is not None:
            conn.execute(
                "INSERT OR IGNORE INTO wf_starts (key, at, run_id, position) VALUES (?, ?, ?, ?)",
                (key, now, run_id, position),
            )
        conn.execute(
            "DELETE FROM wf_flow_waiters WHERE key = ? AND run_id = ? AND position = ?",
            (key, run_id, position),
        )
        return Budget(True)
    put_steps(conn, run_id, [step])
    retry_at = []
    if spent:
        retry_at.append(oldest + limits.period_ms)
    if full:
        conn.execute(
            "INSERT OR IGNORE INTO wf_flow_waiters (key, since, run_id, position) "
            "VALUES (?, ?, ?, ?)",
            (key, now, run_id, position),
        )
        retry_at.append((soonest or now) + 1)
    return Budget(False, max(retry_at))


def _held(
    conn: sqlite3.Connection, key: str, parallelism: int | None, now: int
) -> tuple[int, int | None]:
    """How many slots of ``key`` count, and (when that is the limit) the soonest lease end of
    their runs. Only a key full as counted pays for dropping the slots whose claim ended, so a
    key far below its limit costs O(1)."""
    (held,) = conn.execute("SELECT count(*) FROM wf_slots WHERE key = ?", (key,)).fetchone()
    if parallelism is None or held < parallelism:
        return int(held), None
    conn.execute(
        "DELETE FROM wf_slots WHERE key = ? AND NOT EXISTS (SELECT 1 FROM wf_runs r "
        "WHERE r.id = wf_slots.run_id AND r.state = 'RUN_STARTED' AND "
        "r.lease_owner = wf_slots.owner AND r.epoch = wf_slots.epoch AND r.lease_until >= ?)",
        (key, now),
    )
    return _slots(conn, key)


def release(conn: sqlite3.Connection, op: ReleaseSlot) -> int:
    """Give the slot up and wake the longest waiter still waiting; how many runs it woke."""
    conn.execute(
        "DELETE FROM wf_slots WHERE key = ? AND run_id = ? AND position = ?",
        (op.key, op.run_id, op.position),
    )
    line = conn.execute(
        "SELECT run_id, position FROM wf_flow_waiters WHERE key = ? ORDER BY since, run_id LIMIT ?",
        (op.key, STALE_WAITERS),
    ).fetchall()
    for run_id, position in line:
        conn.execute(
            "DELETE FROM wf_flow_waiters WHERE key = ? AND run_id = ? AND position = ?",
            (op.key, run_id, position),
        )
        if _wake(conn, run_id, position):
            return 1
    return 0


def _slots(conn: sqlite3.Connection, key: str) -> tuple[int, int | None]:
    """How many slots of ``key`` count, and the soonest lease end of their runs."""
    held, soonest = conn.execute(
        "SELECT count(*), min(r.lease_until) FROM wf_slots s JOIN wf_runs r ON r.id = s.run_id "
        "WHERE s.key = ?",
        (key,),
    ).fetchone()
    return int(held), soonest


def _wake(conn: sqlite3.Connection, run_id: str, position: int) -> bool:
    """Mark the waiting step resolved and its run due now, if it still waits for a slot."""
    row = conn.execute(
        "SELECT data FROM wf_steps WHERE run_id = ? AND position = ?", (run_id, position)
    ).fetchone()
    if row is None:
        return False
    step = StepRecord.from_json(row[0])
    if step.waiting_for != FLOW_CONTROL or step.state is not StepState.PROGRESS or step.resolved:
        return False
    step.resolved = True
    put_steps(conn, run_id, [step])
    cursor = conn.execute(
        "UPDATE wf_runs SET due_at = ? WHERE id = ? AND state = 'RUN_STARTED'",
        (system_ms(), run_id),
    )
    return bool(cursor.rowcount)
