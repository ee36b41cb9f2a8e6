"""The tables of the SQLite backend, and ``migrate`` for files made by earlier versions."""

from __future__ import annotations

import sqlite3

SCHEMA = """
CREATE TABLE IF NOT EXISTS rt_channels (
    name TEXT PRIMARY KEY,
    last_ms INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    trimmed_ms INTEGER NOT NULL DEFAULT -1,
    trimmed_seq INTEGER NOT NULL DEFAULT -1,
    length INTEGER NOT NULL DEFAULT 0,
    expires_at INTEGER
);
CREATE TABLE IF NOT EXISTS rt_events (
    pos INTEGER PRIMARY KEY AUTOINCREMENT,
    channel TEXT NOT NULL,
    ms INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    event TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS rt_events_by_channel ON rt_events (channel, ms, seq);
CREATE INDEX IF NOT EXISTS rt_channels_expiry ON rt_channels (expires_at)
    WHERE expires_at IS NOT NULL;

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
-- A time bound of a listing becomes a seq range through this index (recovery.py).
CREATE INDEX IF NOT EXISTS wf_runs_by_creation ON wf_runs (created_at, seq);
-- Each label a run was triggered with, newest run last: a label's listing reads its own range.
CREATE TABLE IF NOT EXISTS wf_run_labels (
    label TEXT NOT NULL,
    seq INTEGER NOT NULL,
    run_id TEXT NOT NULL,
    PRIMARY KEY (label, seq)
) WITHOUT ROWID;
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
-- Flow control: slots held by step executions (they count only while the run's claim that
-- took them holds it), rate starts, and runs waiting for a slot, in line order.
CREATE TABLE IF NOT EXISTS wf_slots (
    key TEXT NOT NULL,
    run_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    owner TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    PRIMARY KEY (key, run_id, position)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS wf_starts (
    key TEXT NOT NULL,
    at INTEGER NOT NULL,
    run_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (key, at, run_id, position)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS wf_flow_waiters (
    key TEXT NOT NULL,
    since INTEGER NOT NULL,
    run_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (key, run_id, position)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS wf_flow_waiters_line ON wf_flow_waiters (key, since, run_id);
CREATE TABLE IF NOT EXISTS entries (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (kind, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS wf_lookback (
    run_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (run_id, event_id)
) WITHOUT ROWID;
"""


def migrate(conn: sqlite3.Connection) -> None:
    """Bring a file made by an earlier version up to ``SCHEMA`` (run inside the schema
    transaction, so concurrent openers see it done or not at all). New tables and indexes need
    nothing here: ``SCHEMA`` creates them if missing (``wf_run_labels`` starts empty, as the
    runs of earlier versions have no labels); only new columns of existing tables do."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(wf_runs)")}
    if "epoch" not in columns:
        conn.execute("ALTER TABLE wf_runs ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0")
