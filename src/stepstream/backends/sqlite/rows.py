"""Row helpers the SQLite operations share: reading a run's row, the fence every change of a
held run passes, and writing steps."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

from stepstream.errors import LeaseLost
from stepstream.records import Lease, RunRecord, RunState, StepRecord

COLUMNS = (
    "id, workflow, state, created_at, completed_at, due_at, lease_owner, lease_until, parent, "
    "epoch, meta"
)
"""The columns of ``wf_runs`` that ``run_from_row`` reads, in its order."""


def run_from_row(row: tuple[Any, ...]) -> RunRecord:
    """The run (without steps) in a row of ``COLUMNS``."""
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


def fence(conn: sqlite3.Connection, lease: Lease) -> None:
    row = conn.execute(
        "SELECT state, lease_owner, epoch FROM wf_runs WHERE id = ?", (lease.run_id,)
    ).fetchone()
    if row is None or tuple(row) != (RunState.STARTED.value, lease.owner, lease.epoch):
        raise LeaseLost(f"run {lease.run_id} is no longer held by this execution")


def put_steps(conn: sqlite3.Connection, run_id: str, steps: Iterable[StepRecord]) -> None:
    conn.executemany(
        "INSERT OR REPLACE INTO wf_steps (run_id, position, data) VALUES (?, ?, ?)",
        [(run_id, step.position, step.to_json()) for step in steps],
    )
