"""The workflow tables of the SQLite backend. Every function runs inside one transaction on the
backend's database thread (see ``sqlite.py``), so a state change and the events reporting it
commit together."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Collection
from dataclasses import replace
from typing import Any

from stepstream.clock import system_ms
from stepstream.errors import LeaseLost, RunConflict, RunNotFound
from stepstream.records import (
    Emit,
    HistoryPolicy,
    Lease,
    RunPage,
    RunRecord,
    RunState,
    StepRecord,
    StepState,
    dumps,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS wf_runs (
    id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    completed_at INTEGER,
    due_at INTEGER,
    lease_owner TEXT,
    lease_until INTEGER,
    parent TEXT,
    seq INTEGER NOT NULL,
    meta TEXT NOT NULL,
    epoch INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS wf_runs_due ON wf_runs (due_at) WHERE state = 'RUN_STARTED';
CREATE INDEX IF NOT EXISTS wf_runs_newest ON wf_runs (seq);
CREATE INDEX IF NOT EXISTS wf_runs_by_state ON wf_runs (state, seq);
CREATE INDEX IF NOT EXISTS wf_runs_by_workflow ON wf_runs (workflow, seq);
CREATE INDEX IF NOT EXISTS wf_runs_by_workflow_state ON wf_runs (workflow, state, seq);
CREATE TABLE IF NOT EXISTS wf_steps (
    run_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (run_id, position)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS wf_waits (
    event_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (event_id, run_id, position)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS wf_waits_run ON wf_waits (run_id);
CREATE TABLE IF NOT EXISTS wf_lookback (
    run_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (run_id, event_id)
) WITHOUT ROWID;
"""

Append = Callable[[sqlite3.Connection, str, list[tuple[str, str]], HistoryPolicy], Any]

COLUMNS = (
    "id, workflow, state, created_at, completed_at, due_at, lease_owner, lease_until, parent, "
    "epoch, meta"
)


def migrate(conn: sqlite3.Connection) -> None:
    """Bring a file made by an earlier version up to ``SCHEMA`` (run inside the schema
    transaction, so concurrent openers see it done or not at all)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(wf_runs)")}
    if "epoch" not in columns:
        conn.execute("ALTER TABLE wf_runs ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0")


def _run(row: tuple[Any, ...]) -> RunRecord:
    run_id, workflow, state, created, completed, due, owner, until, parent, epoch, meta = row
    base = RunRecord(
        id=run_id,
        workflow=workflow,
        state=RunState(state),
        created_at=created,
        completed_at=completed,
        due_at=due,
        lease_owner=owner,
        lease_until=until,
        parent=parent,
        epoch=epoch,
    )
    return base.with_meta(meta)


def _steps(conn: sqlite3.Connection, run_id: str) -> list[StepRecord]:
    rows = conn.execute(
        "SELECT data FROM wf_steps WHERE run_id = ? ORDER BY position", (run_id,)
    ).fetchall()
    return [StepRecord.from_json(data) for (data,) in rows]


def _emit(
    conn: sqlite3.Connection, append: Append, emits: list[Emit], policy: HistoryPolicy
) -> None:
    by_channel: dict[str, list[tuple[str, str]]] = {}
    for emit in emits:
        by_channel.setdefault(emit.channel, []).append((emit.event, emit.raw))
    for channel, events in by_channel.items():
        append(conn, channel, events, policy)


def _fence(conn: sqlite3.Connection, lease: Lease) -> None:
    row = conn.execute(
        "SELECT state, lease_owner, epoch FROM wf_runs WHERE id = ?", (lease.run_id,)
    ).fetchone()
    if row is None or tuple(row) != (RunState.STARTED.value, lease.owner, lease.epoch):
        raise LeaseLost(f"run {lease.run_id} is no longer held by this execution")


def _put_steps(conn: sqlite3.Connection, run_id: str, steps: list[StepRecord]) -> None:
    conn.executemany(
        "INSERT OR REPLACE INTO wf_steps (run_id, position, data) VALUES (?, ?, ?)",
        [(run_id, step.position, step.to_json()) for step in steps],
    )


def create_run(
    conn: sqlite3.Connection,
    append: Append,
    run: RunRecord,
    emits: list[Emit],
    policy: HistoryPolicy,
) -> None:
    if conn.execute("SELECT 1 FROM wf_runs WHERE id = ?", (run.id,)).fetchone():
        raise RunConflict(f"a workflow run with id {run.id!r} already exists: ids are single-use")
    (seq,) = conn.execute("SELECT coalesce(max(seq), 0) + 1 FROM wf_runs").fetchone()
    conn.execute(
        f"INSERT INTO wf_runs ({COLUMNS}, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            run.id,
            run.workflow,
            run.state.value,
            run.created_at,
            run.completed_at,
            run.due_at,
            None,
            None,
            run.parent,
            0,
            run.meta_json(),
            seq,
        ),
    )
    _put_steps(conn, run.id, run.steps)
    _emit(conn, append, emits, policy)


def get_run(conn: sqlite3.Connection, run_id: str) -> RunRecord | None:
    row = conn.execute(f"SELECT {COLUMNS} FROM wf_runs WHERE id = ?", (run_id,)).fetchone()
    if row is None:
        return None
    run = _run(row)
    run.steps = _steps(conn, run_id)
    return run


def list_runs(
    conn: sqlite3.Connection,
    state: str | None,
    workflow: str | None,
    cursor: str | None,
    count: int,
) -> RunPage:
    where: list[str] = ["1 = 1"]
    args: list[Any] = []
    if state is not None:
        where.append("state = ?")
        args.append(state)
    if workflow is not None:
        where.append("workflow = ?")
        args.append(workflow)
    if cursor is not None:
        where.append("seq < ?")
        args.append(int(cursor))
    rows = conn.execute(
        f"SELECT {COLUMNS}, seq FROM wf_runs WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT ?",
        (*args, count + 1),
    ).fetchall()
    more = len(rows) > count
    rows = rows[:count]
    runs = [_run(row[:-1]) for row in rows]
    return RunPage(runs, str(rows[-1][-1]) if more and rows else None)


def claim_runs(
    conn: sqlite3.Connection,
    owner: str,
    lease_ms: int,
    limit: int,
    workflows: Collection[str],
    exclude: Collection[str],
) -> list[RunRecord]:
    now = system_ms()
    rows = conn.execute(
        f"SELECT {COLUMNS} FROM wf_runs WHERE state = 'RUN_STARTED' AND due_at <= ? "
        "AND (lease_until IS NULL OR lease_until < ?) "
        "AND workflow IN (SELECT value FROM json_each(?)) "
        "AND id NOT IN (SELECT value FROM json_each(?)) ORDER BY due_at LIMIT ?",
        (now, now, json.dumps(list(workflows)), json.dumps(list(exclude)), limit),
    ).fetchall()
    runs = []
    for row in rows:
        run = _run(row)
        run.lease_owner, run.lease_until, run.epoch = owner, now + lease_ms, run.epoch + 1
        conn.execute(
            "UPDATE wf_runs SET lease_owner = ?, lease_until = ?, epoch = ? WHERE id = ?",
            (owner, run.lease_until, run.epoch, run.id),
        )
        run.steps = _steps(conn, run.id)
        runs.append(run)
    return runs


def renew_leases(conn: sqlite3.Connection, leases: list[Lease], lease_ms: int) -> list[str]:
    until = system_ms() + lease_ms
    held = []
    for lease in leases:
        cursor = conn.execute(
            "UPDATE wf_runs SET lease_until = ? WHERE id = ? AND lease_owner = ? AND epoch = ? "
            "AND state = 'RUN_STARTED'",
            (until, lease.run_id, lease.owner, lease.epoch),
        )
        if cursor.rowcount:
            held.append(lease.run_id)
    return held


def save_steps(
    conn: sqlite3.Connection,
    append: Append,
    lease: Lease,
    steps: list[StepRecord],
    emits: list[Emit],
    policy: HistoryPolicy,
) -> None:
    _fence(conn, lease)
    _put_steps(conn, lease.run_id, steps)
    _emit(conn, append, emits, policy)


def release_run(
    conn: sqlite3.Connection,
    append: Append,
    lease: Lease,
    due_at: int | None,
    patch: dict[str, Any],
    emits: list[Emit],
    policy: HistoryPolicy,
    *,
    hold: bool = False,
) -> None:
    _fence(conn, lease)
    run_id = lease.run_id
    if patch:
        (meta,) = conn.execute("SELECT meta FROM wf_runs WHERE id = ?", (run_id,)).fetchone()
        conn.execute(
            "UPDATE wf_runs SET meta = ? WHERE id = ?",
            (dumps({**json.loads(meta), **patch}), run_id),
        )
    # A notify or a finished child may have resolved a step while we held the run: then it is
    # due now, whatever we planned.
    resolved = (
        not hold
        and conn.execute(
            "SELECT 1 FROM wf_steps WHERE run_id = ? AND json_extract(data, '$.resolved') = 1 "
            "AND json_extract(data, '$.state') = 'STEP_PROGRESS' LIMIT 1",
            (run_id,),
        ).fetchone()
    )
    if resolved:
        due_at = system_ms()
    conn.execute(
        "UPDATE wf_runs SET due_at = ?, lease_owner = NULL, lease_until = NULL WHERE id = ?",
        (due_at, run_id),
    )
    _emit(conn, append, emits, policy)


def finish_run(
    conn: sqlite3.Connection,
    append: Append,
    lease: Lease,
    state: str,
    result: str | None,
    error: str | None,
    now: int,
    emits: list[Emit],
    policy: HistoryPolicy,
) -> None:
    _fence(conn, lease)
    _close(conn, lease.run_id, state, result, error, now)
    _emit(conn, append, emits, policy)


def _close(
    conn: sqlite3.Connection,
    run_id: str,
    state: str,
    result: str | None,
    error: str | None,
    now: int,
) -> None:
    row = conn.execute("SELECT parent, meta FROM wf_runs WHERE id = ?", (run_id,)).fetchone()
    parent, meta_text = row
    meta = json.loads(meta_text)
    meta.update(result=result, error=error)
    conn.execute(
        "UPDATE wf_runs SET state = ?, completed_at = ?, due_at = NULL, lease_owner = NULL, "
        "lease_until = NULL, meta = ? WHERE id = ?",
        (state, now, dumps(meta), run_id),
    )
    conn.execute("DELETE FROM wf_waits WHERE run_id = ?", (run_id,))
    conn.execute("DELETE FROM wf_lookback WHERE run_id = ?", (run_id,))
    # A finished run leaves no step in progress (canceled, timed out, or abandoned).
    for step in _steps(conn, run_id):
        if step.state in (StepState.PROGRESS, StepState.RETRY):
            step.state = StepState.CANCELED
            step.finished_at = now
            _put_steps(conn, run_id, [step])
    if parent is not None and meta.get("parent_position") is not None:
        out = dumps({"state": state, "result": result, "error": error})
        _resolve(conn, parent, meta["parent_position"], out)


def _resolve(conn: sqlite3.Connection, run_id: str, position: int, out: str) -> bool:
    row = conn.execute(
        "SELECT data FROM wf_steps WHERE run_id = ? AND position = ?", (run_id, position)
    ).fetchone()
    if row is None:
        return False
    step = StepRecord.from_json(row[0])
    if step.state is not StepState.PROGRESS or step.resolved:
        return False
    step.out, step.resolved = out, True
    _put_steps(conn, run_id, [step])
    conn.execute(
        "UPDATE wf_runs SET due_at = ? WHERE id = ? AND state = 'RUN_STARTED'",
        (system_ms(), run_id),
    )
    return True


def wait_event(
    conn: sqlite3.Connection,
    append: Append,
    lease: Lease,
    step: StepRecord,
    emits: list[Emit],
    policy: HistoryPolicy,
) -> str | None:
    _fence(conn, lease)
    run_id = lease.run_id
    assert step.event_id is not None
    row = conn.execute(
        "SELECT data FROM wf_lookback WHERE run_id = ? AND event_id = ?", (run_id, step.event_id)
    ).fetchone()
    data: str | None = None
    if row is not None:
        # Consume the event and record the step resolved in one transaction: a crash right
        # after cannot lose the event, and the step's start is reported like any other.
        conn.execute(
            "DELETE FROM wf_lookback WHERE run_id = ? AND event_id = ?", (run_id, step.event_id)
        )
        data = row[0]
        step = replace(step, out=data, resolved=True)
    else:
        conn.execute(
            "INSERT OR IGNORE INTO wf_waits (event_id, run_id, position) VALUES (?, ?, ?)",
            (step.event_id, run_id, step.position),
        )
    _put_steps(conn, run_id, [step])
    _emit(conn, append, emits, policy)
    return data


def notify(conn: sqlite3.Connection, event_id: str, raw: str, run_id: str | None, now: int) -> int:
    if run_id is not None:
        row = conn.execute("SELECT state FROM wf_runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise RunNotFound(run_id)
        if row[0] != RunState.STARTED.value:
            raise RunConflict(f"run {run_id} already finished ({row[0]}); nothing can wait anymore")
        waits = conn.execute(
            "SELECT run_id, position FROM wf_waits WHERE event_id = ? AND run_id = ?",
            (event_id, run_id),
        ).fetchall()
    else:
        waits = conn.execute(
            "SELECT run_id, position FROM wf_waits WHERE event_id = ?", (event_id,)
        ).fetchall()
    woken = 0
    for waiter, position in waits:
        conn.execute(
            "DELETE FROM wf_waits WHERE event_id = ? AND run_id = ? AND position = ?",
            (event_id, waiter, position),
        )
        woken += _resolve(conn, waiter, position, raw)
    if not woken and run_id is not None:
        conn.execute(
            "INSERT OR REPLACE INTO wf_lookback (run_id, event_id, data) VALUES (?, ?, ?)",
            (run_id, event_id, raw),
        )
    return woken


def cancel_run(
    conn: sqlite3.Connection,
    append: Append,
    run_id: str,
    now: int,
    emits: list[Emit],
    policy: HistoryPolicy,
) -> None:
    row = conn.execute("SELECT state FROM wf_runs WHERE id = ?", (run_id,)).fetchone()
    if row is None:
        raise RunNotFound(run_id)
    if row[0] != RunState.STARTED.value:
        raise RunConflict(
            f"run {run_id} already finished ({row[0]}); only running runs can be canceled"
        )
    _close(conn, run_id, RunState.CANCELED.value, None, "canceled", now)
    _emit(conn, append, emits, policy)
