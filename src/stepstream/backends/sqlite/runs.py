"""The workflow half of the SQLite backend. Every change runs as one write job on the database
thread, so a state change and the events reporting it (``append_emits``) commit together.
Listing, resuming and deleting runs: ``recovery.py``."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from stepstream.backends.base import (
    CancelRun,
    Claim,
    CreateRun,
    FinishRun,
    Notify,
    ReleaseRun,
    RenewsAtOnce,
    SaveSteps,
    WaitEvent,
)
from stepstream.backends.sqlite.channels import append_emits
from stepstream.backends.sqlite.connection import Database
from stepstream.backends.sqlite.flow import release
from stepstream.backends.sqlite.rows import COLUMNS, fence, put_steps, run_from_row
from stepstream.clock import system_ms
from stepstream.errors import RunConflict, RunNotFound
from stepstream.records import (
    Lease,
    RunRecord,
    RunState,
    StepRecord,
    StepState,
    dumps,
    next_takeovers,
)


class SQLiteRuns(RenewsAtOnce):
    """``RunStore`` on the database thread of ``_db``."""

    _db: Database

    async def create_run(self, op: CreateRun) -> None:
        run = op.run

        def create(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT 1 FROM wf_runs WHERE id = ?", (run.id,)).fetchone():
                raise RunConflict(
                    f"a workflow run with id {run.id!r} already exists: ids are single-use"
                )
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
            conn.executemany(
                "INSERT OR IGNORE INTO wf_run_labels (label, seq, run_id) VALUES (?, ?, ?)",
                [(label, seq, run.id) for label in run.labels],
            )
            put_steps(conn, run.id, run.steps)
            append_emits(conn, op.emits, op.policy)

        await self._db.submit(create, write=True)

    async def get_run(self, run_id: str) -> RunRecord | None:
        def get(conn: sqlite3.Connection) -> RunRecord | None:
            row = conn.execute(f"SELECT {COLUMNS} FROM wf_runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                return None
            run = run_from_row(row)
            run.steps = _steps(conn, run_id)
            return run

        return await self._db.submit(get, write=False)

    async def claim_runs(self, op: Claim) -> list[RunRecord]:
        owner, lease_ms = op.owner, op.lease_ms
        names, skip = json.dumps(list(op.workflows)), json.dumps(list(op.exclude))

        def claim(conn: sqlite3.Connection) -> list[RunRecord]:
            now = system_ms()
            rows = conn.execute(
                f"SELECT {COLUMNS} FROM wf_runs WHERE state = 'RUN_STARTED' AND due_at <= ? "
                "AND (lease_until IS NULL OR lease_until < ?) "
                "AND workflow IN (SELECT value FROM json_each(?)) "
                "AND id NOT IN (SELECT value FROM json_each(?)) ORDER BY due_at LIMIT ?",
                (now, now, names, skip, op.limit),
            ).fetchall()
            runs = []
            for row in rows:
                run = run_from_row(row)
                run.steps = _steps(conn, run.id)
                if run.lease_owner is not None:  # its lease expired: a takeover
                    _taken_over(conn, run, json.loads(row[-1]))
                else:
                    run.takeovers = 0
                run.lease_owner, run.lease_until, run.epoch = owner, now + lease_ms, run.epoch + 1
                conn.execute(
                    "UPDATE wf_runs SET lease_owner = ?, lease_until = ?, epoch = ? WHERE id = ?",
                    (owner, run.lease_until, run.epoch, run.id),
                )
                runs.append(run)
            return runs

        return await self._db.submit(claim, write=True)

    async def renew_leases(self, leases: list[Lease], lease_ms: int) -> list[str]:
        def renew(conn: sqlite3.Connection) -> list[str]:
            until = system_ms() + lease_ms
            held = []
            for lease in leases:
                cursor = conn.execute(
                    "UPDATE wf_runs SET lease_until = ? WHERE id = ? AND lease_owner = ? "
                    "AND epoch = ? AND state = 'RUN_STARTED'",
                    (until, lease.run_id, lease.owner, lease.epoch),
                )
                if cursor.rowcount:
                    held.append(lease.run_id)
            return held

        return await self._db.submit(renew, write=True)

    async def save_steps(self, op: SaveSteps) -> int:
        def save(conn: sqlite3.Connection) -> int:
            fence(conn, op.lease)
            put_steps(conn, op.lease.run_id, op.steps)
            append_emits(conn, op.emits, op.policy)
            return 0 if op.release is None else release(conn, op.release)

        return await self._db.submit(save, write=True)

    async def release_run(self, op: ReleaseRun) -> None:
        run_id, patch = op.lease.run_id, op.patch

        def release(conn: sqlite3.Connection) -> None:
            fence(conn, op.lease)
            if patch:
                (meta,) = conn.execute(
                    "SELECT meta FROM wf_runs WHERE id = ?", (run_id,)
                ).fetchone()
                conn.execute(
                    "UPDATE wf_runs SET meta = ? WHERE id = ?",
                    (dumps({**json.loads(meta), **patch}), run_id),
                )
            # A notify or a finished child may have resolved a step while we held the run: then
            # it is due now, whatever we planned.
            resolved = (
                not op.hold
                and conn.execute(
                    "SELECT 1 FROM wf_steps WHERE run_id = ? "
                    "AND json_extract(data, '$.resolved') = 1 "
                    "AND json_extract(data, '$.state') = 'STEP_PROGRESS' LIMIT 1",
                    (run_id,),
                ).fetchone()
            )
            conn.execute(
                "UPDATE wf_runs SET due_at = ?, lease_owner = NULL, lease_until = NULL "
                "WHERE id = ?",
                (system_ms() if resolved else op.due_at, run_id),
            )
            append_emits(conn, op.emits, op.policy)

        await self._db.submit(release, write=True)

    async def finish_run(self, op: FinishRun) -> None:
        def finish(conn: sqlite3.Connection) -> None:
            fence(conn, op.lease)
            _close(conn, op.lease.run_id, op.state, op.result, op.error, op.at)
            append_emits(conn, op.emits, op.policy)

        await self._db.submit(finish, write=True)

    async def wait_event(self, op: WaitEvent) -> str | None:
        step, run_id, event_id = op.step, op.lease.run_id, op.step.event_id
        assert event_id is not None

        def wait(conn: sqlite3.Connection) -> str | None:
            fence(conn, op.lease)
            row = conn.execute(
                "SELECT data FROM wf_lookback WHERE run_id = ? AND event_id = ?",
                (run_id, event_id),
            ).fetchone()
            data: str | None = None
            saved = step
            if row is not None:
                # Consume the event and record the step resolved in one transaction: a crash
                # right after cannot lose the event, and the step's start is reported like any
                # other.
                conn.execute(
                    "DELETE FROM wf_lookback WHERE run_id = ? AND event_id = ?", (run_id, event_id)
                )
                data = row[0]
                saved = replace(step, out=data, resolved=True)
            else:
                conn.execute(
                    "INSERT OR IGNORE INTO wf_waits (event_id, run_id, position) VALUES (?, ?, ?)",
                    (event_id, run_id, step.position),
                )
            put_steps(conn, run_id, [saved])
            append_emits(conn, op.emits, op.policy)
            return data

        return await self._db.submit(wait, write=True)

    async def notify(self, op: Notify) -> int:
        event_id, raw, run_id = op.event_id, op.raw, op.run_id

        def resolve_waits(conn: sqlite3.Connection) -> int:
            if run_id is not None:
                row = conn.execute("SELECT state FROM wf_runs WHERE id = ?", (run_id,)).fetchone()
                if row is None:
                    raise RunNotFound(run_id)
                if row[0] != RunState.STARTED.value:
                    raise RunConflict(
                        f"run {run_id} already finished ({row[0]}); nothing can wait anymore"
                    )
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
                woken += _resolve(conn, waiter, position, raw, before=system_ms())
            if not woken and run_id is not None:
                conn.execute(
                    "INSERT OR REPLACE INTO wf_lookback (run_id, event_id, data) VALUES (?, ?, ?)",
                    (run_id, event_id, raw),
                )
            return woken

        return await self._db.submit(resolve_waits, write=True)

    async def cancel_run(self, op: CancelRun) -> None:
        run_id = op.run_id

        def cancel(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT state FROM wf_runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise RunNotFound(run_id)
            if row[0] != RunState.STARTED.value:
                raise RunConflict(
                    f"run {run_id} already finished ({row[0]}); only running runs can be canceled"
                )
            _close(conn, run_id, RunState.CANCELED, None, "canceled", op.at)
            append_emits(conn, op.emits, op.policy)

        await self._db.submit(cancel, write=True)

    async def wake_workers(self) -> None:
        """Nothing to send: other processes see the commit through ``PRAGMA data_version``."""

    async def listen_wakeups(self, callback: Callable[[], None]) -> None:
        callbacks = self._db.feed.wake_callbacks

        def register(conn: sqlite3.Connection) -> None:
            if callback not in callbacks:
                callbacks.append(callback)

        await self._db.submit(register, write=False)

    def wakeups_active(self) -> bool:
        return self._db.running


def _steps(conn: sqlite3.Connection, run_id: str) -> list[StepRecord]:
    rows = conn.execute(
        "SELECT data FROM wf_steps WHERE run_id = ? ORDER BY position", (run_id,)
    ).fetchall()
    return [StepRecord.from_json(data) for (data,) in rows]


def _close(
    conn: sqlite3.Connection,
    run_id: str,
    state: RunState,
    result: str | None,
    error: str | None,
    now: int,
) -> None:
    """End the run (``finish_run``, ``cancel_run``): drop its lease, waits and kept events,
    cancel its steps still in progress, and resolve its parent's invoke step."""
    row = conn.execute("SELECT parent, meta FROM wf_runs WHERE id = ?", (run_id,)).fetchone()
    parent, meta_text = row
    meta = json.loads(meta_text)
    meta.update(result=result, error=error)
    conn.execute(
        "UPDATE wf_runs SET state = ?, completed_at = ?, due_at = NULL, lease_owner = NULL, "
        "lease_until = NULL, meta = ? WHERE id = ?",
        (state.value, now, dumps(meta), run_id),
    )
    conn.execute("DELETE FROM wf_waits WHERE run_id = ?", (run_id,))
    conn.execute("DELETE FROM wf_lookback WHERE run_id = ?", (run_id,))
    # A finished run leaves no step in progress (canceled, timed out, or abandoned).
    for step in _steps(conn, run_id):
        if step.state in (StepState.PROGRESS, StepState.RETRY):
            step.state = StepState.CANCELED
            step.finished_at = now
            put_steps(conn, run_id, [step])
    if parent is not None and meta.get("parent_position") is not None:
        out = dumps({"state": state.value, "result": result, "error": error})
        _resolve(conn, parent, meta["parent_position"], out)


def _resolve(
    conn: sqlite3.Connection, run_id: str, position: int, out: str, before: int | None = None
) -> bool:
    """A notify or a finished child writes a step's ``out`` while it is still in progress; its
    run becomes due now (the run's worker completes the step). ``before``: a notify's time,
    which finds a wait past its deadline timed out (its worker records that)."""
    row = conn.execute(
        "SELECT data FROM wf_steps WHERE run_id = ? AND position = ?", (run_id, position)
    ).fetchone()
    if row is None:
        return False
    step = StepRecord.from_json(row[0])
    if step.state is not StepState.PROGRESS or step.resolved:
        return False
    if before is not None and step.passed(before):
        return False
    step.out, step.resolved = out, True
    put_steps(conn, run_id, [step])
    conn.execute(
        "UPDATE wf_runs SET due_at = ? WHERE id = ? AND state = 'RUN_STARTED'",
        (system_ms(), run_id),
    )
    return True


def _taken_over(conn: sqlite3.Connection, run: RunRecord, meta: dict[str, Any]) -> None:
    """Count a takeover of ``run`` (``next_takeovers``), kept in its ``meta`` with the epoch
    it leaves and the steps it saw."""
    run.takeovers = next_takeovers(
        int(meta.get("takeovers", 0)),
        meta.get("takeover_epoch"),
        meta.get("takeover_steps"),
        run.epoch,
        len(run.steps),
    )
    conn.execute(
        "UPDATE wf_runs SET meta = json_set(meta, '$.takeovers', ?, '$.takeover_epoch', ?, "
        "'$.takeover_steps', ?) WHERE id = ?",
        (run.takeovers, run.epoch + 1, len(run.steps), run.id),
    )
