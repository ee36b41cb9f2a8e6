"""Row helpers the SQLite operations share: the fence every change of a held run passes, and
writing steps."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from stepstream.errors import LeaseLost
from stepstream.records import Lease, RunState, StepRecord


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
