"""Finding, resuming and deleting runs, and listing the steps that wait for an event, in the
SQLite backend (``RecoveryStore`` in ``backends/base.py``, and ``list_runs``, which is
``find_runs`` by state and workflow). Each change is one write job: one transaction."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from stepstream.backends.base import ResumeRun, RunFilter, Waiter
from stepstream.backends.sqlite.channels import append_emits
from stepstream.backends.sqlite.connection import Database
from stepstream.backends.sqlite.rows import COLUMNS, run_from_row
from stepstream.clock import system_ms
from stepstream.errors import RunConflict, RunNotFound
from stepstream.records import (
    FAILURE_POSITIONS,
    RunPage,
    RunState,
    StepRecord,
    StepState,
    dumps,
)

RESUMABLE = (RunState.FAILED.value, RunState.CANCELED.value)
# Seq numbers runs in the order they are stored, and a run's ``created_at`` is read before its
# insert waits for the write lock: a run may be stored after one created up to this long after
# it. A time bound becomes a seq range widened by so much, so such a run is not left out.
CREATION_SKEW_MS = 60_000


class SQLiteRecovery:
    """``RecoveryStore`` and ``list_runs`` on the database thread of ``_db``."""

    _db: Database

    async def list_runs(
        self, *, state: str | None, workflow: str | None, cursor: str | None, count: int
    ) -> RunPage:
        return await self.find_runs(RunFilter(state, workflow), cursor=cursor, count=count)

    async def find_runs(self, where: RunFilter, *, cursor: str | None, count: int) -> RunPage:
        before = None if cursor is None else int(cursor)

        def page(conn: sqlite3.Connection) -> RunPage:
            # One snapshot for the seq range and the rows it bounds.
            conn.execute("BEGIN")
            try:
                sql, args = _listing(where, *_seq_range(conn, where), before)
                rows = conn.execute(sql, (*args, count + 1)).fetchall()
            finally:
                conn.execute("COMMIT")
            more = len(rows) > count
            rows = rows[:count]
            runs = [run_from_row(row[:-1]) for row in rows]
            return RunPage(runs, str(rows[-1][-1]) if more and rows else None)

        return await self._db.submit(page, write=False)

    async def resume_run(self, op: ResumeRun) -> None:
        run_id = op.run_id

        def resume(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT state, meta FROM wf_runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise RunNotFound(run_id)
            state, meta_text = row
            if state not in RESUMABLE:
                raise RunConflict(
                    f"run {run_id} is {state}: only failed or canceled runs can be resumed"
                )
            meta = json.loads(meta_text)
            conn.execute(
                "DELETE FROM wf_steps WHERE run_id = ? AND (position >= ? "
                "OR json_extract(data, '$.state') <> ?)",
                (run_id, FAILURE_POSITIONS, StepState.SUCCESS.value),
            )
            # A step that succeeded waits for nothing: every wait of the run is a dropped step's.
            conn.execute("DELETE FROM wf_waits WHERE run_id = ?", (run_id,))
            # Given new flow control, the run's slots under its former key go too (their claim
            # ended): a delete finds them by the run's key only.
            tables = ("wf_flow_waiters",) if op.flow is None else ("wf_flow_waiters", "wf_slots")
            _drop_flow_rows(conn, run_id, meta, tables)
            meta.update(
                result=None,
                error=None,
                failed_step=None,
                phase="run",
                failure_attempts=0,
                timeout_at=op.timeout_at,
            )
            if op.headers is not None:
                meta["headers"] = op.headers
            if op.flow is not None:
                meta["flow"] = op.flow.to_dict()
            conn.execute(
                "UPDATE wf_runs SET state = ?, completed_at = NULL, due_at = ?, "
                "lease_owner = NULL, lease_until = NULL, meta = ? WHERE id = ?",
                (RunState.STARTED.value, system_ms(), dumps(meta), run_id),
            )
            append_emits(conn, op.emits, op.policy)

        await self._db.submit(resume, write=True)

    async def delete_run(self, run_id: str) -> None:
        def delete(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                "SELECT state, seq, meta FROM wf_runs WHERE id = ?", (run_id,)
            ).fetchone()
            if row is None:
                raise RunNotFound(run_id)
            state, seq, meta_text = row
            if state == RunState.STARTED.value:
                raise RunConflict(
                    f"run {run_id} is still running: cancel it (or let it finish) to delete it"
                )
            meta = json.loads(meta_text)
            conn.execute("DELETE FROM wf_runs WHERE id = ?", (run_id,))
            conn.execute("DELETE FROM wf_steps WHERE run_id = ?", (run_id,))
            conn.execute("DELETE FROM wf_lookback WHERE run_id = ?", (run_id,))
            conn.executemany(
                "DELETE FROM wf_run_labels WHERE label = ? AND seq = ?",
                [(label, seq) for label in meta.get("labels", [])],
            )
            conn.execute("DELETE FROM wf_waits WHERE run_id = ?", (run_id,))
            # Its slots too: a new run under this id could otherwise match their claim.
            _drop_flow_rows(conn, run_id, meta, ("wf_flow_waiters", "wf_slots"))
            # The channel's head row goes too, not just its events: a new run that reuses the
            # id starts a fresh channel (no trim mark, ids from now), as if none had been.
            conn.execute("DELETE FROM rt_events WHERE channel = ?", (run_id,))
            conn.execute("DELETE FROM rt_channels WHERE name = ?", (run_id,))

        await self._db.submit(delete, write=True)

    async def list_waiters(self, event_id: str) -> list[Waiter]:
        def waiters(conn: sqlite3.Connection) -> list[Waiter]:
            rows = conn.execute(
                "SELECT w.run_id, s.data FROM wf_waits w "
                "JOIN wf_runs r ON r.id = w.run_id AND r.state = 'RUN_STARTED' "
                "JOIN wf_steps s ON s.run_id = w.run_id AND s.position = w.position "
                "WHERE w.event_id = ? ORDER BY w.run_id, w.position",
                (event_id,),
            ).fetchall()
            found = []
            for run_id, data in rows:
                step = StepRecord.from_json(data)
                # A wait row can outlive its step's wait (a timeout moved the step on).
                if step.state is StepState.PROGRESS and not step.resolved:
                    found.append(Waiter(run_id, step.position, step.name, step.wake_at))
            return found

        return await self._db.submit(waiters, write=False)


def _drop_flow_rows(
    conn: sqlite3.Connection, run_id: str, meta: dict[str, Any], tables: tuple[str, ...]
) -> None:
    """Delete the run's rows of the flow control ``tables``, by its key (their primary key
    starts with it) if it has one."""
    flow = meta.get("flow")
    if flow is None:
        return
    for table in tables:
        conn.execute(f"DELETE FROM {table} WHERE key = ? AND run_id = ?", (flow["key"], run_id))


def _seq_range(conn: sqlite3.Connection, where: RunFilter) -> tuple[int, int]:
    """A seq range holding every run created within ``where``'s time bounds, found through the
    ``(created_at, seq)`` index: from just after a run created ``CREATION_SKEW_MS`` or more
    before ``created_after`` to just before one created as long after ``created_before``. Only
    the runs created near a bound are read in vain (the listing checks ``created_at``
    exactly)."""
    low, high = 0, 2**63 - 1
    if where.created_after is not None:
        row = conn.execute(
            "SELECT seq FROM wf_runs WHERE created_at <= ? "
            "ORDER BY created_at DESC, seq DESC LIMIT 1",
            (where.created_after - CREATION_SKEW_MS,),
        ).fetchone()
        if row is not None:
            low = row[0] + 1
    if where.created_before is not None:
        row = conn.execute(
            "SELECT seq FROM wf_runs WHERE created_at >= ? ORDER BY created_at, seq LIMIT 1",
            (where.created_before + CREATION_SKEW_MS,),
        ).fetchone()
        if row is not None:
            high = row[0] - 1
    return low, high


def _listing(where: RunFilter, low: int, high: int, before: int | None) -> tuple[str, list[Any]]:
    """The query for one page of ``find_runs`` (its ``LIMIT`` the last parameter): newest first,
    seq within ``low``-``high`` and below ``before`` (the cursor). With a label it walks that
    label's rows of ``wf_run_labels`` (``CROSS JOIN`` keeps SQLite from driving the join from
    ``wf_runs``); without, the index of ``wf_runs`` by state and/or workflow, then seq."""
    terms: list[str] = []
    args: list[Any] = []
    if where.label is None:
        source, key = "wf_runs r", "r.seq"
    else:
        source, key = "wf_run_labels l CROSS JOIN wf_runs r ON r.id = l.run_id", "l.seq"
        terms.append("l.label = ?")
        args.append(where.label)
    terms.append(f"{key} BETWEEN ? AND ?")
    args.extend((low, high))
    if where.state is not None:
        terms.append("r.state = ?")
        args.append(where.state)
    if where.workflow is not None:
        terms.append("r.workflow = ?")
        args.append(where.workflow)
    if before is not None:
        terms.append(f"{key} < ?")
        args.append(before)
    # The exact bounds, checked on the rows of the seq range; the unary + keeps SQLite from
    # scanning the created_at index for them instead (that order is not the listing's).
    if where.created_after is not None:
        terms.append("+r.created_at > ?")
        args.append(where.created_after)
    if where.created_before is not None:
        terms.append("+r.created_at < ?")
        args.append(where.created_before)
    columns = ", ".join(f"r.{name.strip()}" for name in COLUMNS.split(","))
    sql = (
        f"SELECT {columns}, {key} FROM {source} WHERE {' AND '.join(terms)} "
        f"ORDER BY {key} DESC LIMIT ?"
    )
    return sql, args
