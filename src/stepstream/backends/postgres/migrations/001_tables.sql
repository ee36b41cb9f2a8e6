-- stepstream on PostgreSQL, version 1: the tables. Applied by migrate.py inside one
-- transaction, in the schema the backend URL names (search_path), under an advisory lock.
-- Times are epoch milliseconds of the database's clock (ss_now), never a worker's.

-- Realtime channels: the newest id ever handed out, the newest id removed (trimmed or
-- expired), how many events are kept, and when the whole history expires.
CREATE TABLE channels (
    name text PRIMARY KEY,
    last_ms bigint NOT NULL,
    last_seq bigint NOT NULL,
    trimmed_ms bigint NOT NULL DEFAULT -1,
    trimmed_seq bigint NOT NULL DEFAULT -1,
    length bigint NOT NULL DEFAULT 0,
    expires_at bigint
);
CREATE INDEX channels_expiry ON channels (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE events (
    channel text NOT NULL,
    ms bigint NOT NULL,
    seq bigint NOT NULL,
    event text NOT NULL,
    data text NOT NULL,
    PRIMARY KEY (channel, ms, seq)
);

-- Workflow runs. JSON texts (payload, headers, result) are stored verbatim and never parsed by
-- SQL: PostgreSQL's JSON functions reject a \u0000 escape, which Python's JSON writes.
CREATE TABLE runs (
    id text PRIMARY KEY,
    seq bigint GENERATED ALWAYS AS IDENTITY,
    workflow text NOT NULL,
    state text NOT NULL,
    created_at bigint NOT NULL,
    completed_at bigint,
    due_at bigint,
    lease_owner text,
    lease_until bigint,
    epoch bigint NOT NULL DEFAULT 0,
    parent text,
    parent_position integer,
    payload text NOT NULL,
    headers text NOT NULL,
    result text,
    error text,
    timeout_at bigint,
    phase text NOT NULL,
    failure_attempts integer NOT NULL,
    failed_step text
);
-- Claims scan unleased due runs oldest first, and runs whose lease expired (a worker died)
-- apart, so runs held by live workers are never scanned however many are in flight. Listing
-- pages newest first under every filter.
CREATE INDEX runs_due ON runs (due_at) WHERE state = 'RUN_STARTED' AND lease_owner IS NULL;
CREATE INDEX runs_leased ON runs (lease_until)
    WHERE state = 'RUN_STARTED' AND lease_owner IS NOT NULL;
CREATE INDEX runs_newest ON runs (seq);
CREATE INDEX runs_by_state ON runs (state, seq);
CREATE INDEX runs_by_workflow ON runs (workflow, seq);
CREATE INDEX runs_by_workflow_state ON runs (workflow, state, seq);

-- A step is the worker's JSON (data) plus the fields storage itself changes when a notify or a
-- child's end resolves it, or the run's end cancels it: those columns win over the JSON.
CREATE TABLE steps (
    run_id text NOT NULL,
    position integer NOT NULL,
    state text NOT NULL,
    resolved boolean NOT NULL,
    out text,
    finished_at bigint,
    data text NOT NULL,
    PRIMARY KEY (run_id, position)
);

CREATE TABLE waits (
    event_id text NOT NULL,
    run_id text NOT NULL,
    position integer NOT NULL,
    PRIMARY KEY (event_id, run_id, position)
);
CREATE INDEX waits_run ON waits (run_id);

CREATE TABLE lookback (
    run_id text NOT NULL,
    event_id text NOT NULL,
    data text NOT NULL,
    PRIMARY KEY (run_id, event_id)
);
