-- stepstream on PostgreSQL, version 4: flow control (FlowStore in backends/base.py) and named
-- entries (EntryStore), and the flow limits a run is triggered with.
--
-- ss_create_run and ss_save_steps gain parameters, so they are new overloads: the version 3
-- ones stay, for processes of the previous release still running during a rolling upgrade.

-- The run's FlowLimits as JSON text written by Python, never parsed here (like payload).
ALTER TABLE runs ADD COLUMN flow text;

-- Slots held by step executions. One counts only while the claim that took it (owner, epoch)
-- still holds its run, so a crashed worker's slots come back when its lease ends, without
-- anyone releasing them.
CREATE TABLE flow_slots (
    key text NOT NULL,
    run_id text NOT NULL,
    position integer NOT NULL,
    owner text NOT NULL,
    epoch bigint NOT NULL,
    PRIMARY KEY (key, run_id, position)
);

-- Starts within a key's rate window.
CREATE TABLE flow_starts (
    key text NOT NULL,
    at bigint NOT NULL,
    run_id text NOT NULL,
    position integer NOT NULL,
    PRIMARY KEY (key, at, run_id, position)
);

-- Steps waiting for a slot of a key; the line is (since, run_id).
CREATE TABLE flow_waiters (
    key text NOT NULL,
    since bigint NOT NULL,
    run_id text NOT NULL,
    position integer NOT NULL,
    PRIMARY KEY (key, run_id, position)
);
CREATE INDEX flow_waiters_line ON flow_waiters (key, since, run_id);

-- Small named JSON documents by kind (schedules, paused workflows).
CREATE TABLE entries (
    kind text NOT NULL,
    key text NOT NULL,
    value text NOT NULL,
    PRIMARY KEY (kind, key)
);

-- Every operation on a key's slots, starts and waiters holds this lock until commit, taken
-- before any run's row lock (so acquire, release and save-with-release lock in one order and
-- cannot deadlock each other). Serialising per key is what keeps two acquires from both taking
-- the last slot, and a release from missing a waiter that registers at the same moment.
-- An advisory lock rather than a per-key row locked FOR UPDATE: a new key needs no row to be
-- inserted first (an upsert on every acquire would be a write, with WAL and dead tuples, and a
-- table to clean up); a hash collision only makes two keys wait for each other.
CREATE FUNCTION ss_flow_lock(p_key text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(current_schema() || E'\n' || p_key, 0));
END $$;

-- Give a slot up and wake the longest-waiting waiter of the key whose step still waits for one:
-- its step resolved and its run due now, like a notify (ss_resolve, which also NOTIFYs the
-- wake topic). Waiters whose run moved on are dropped on the way (at most 100 per call).
-- Returns how many runs it woke. The caller holds ss_flow_lock(p_key).
CREATE FUNCTION ss_free_slot(p_key text, p_id text, p_position integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    w record;
    kept text;
BEGIN
    DELETE FROM flow_slots WHERE key = p_key AND run_id = p_id AND position = p_position;
    FOR w IN SELECT run_id, position FROM flow_waiters WHERE key = p_key
             ORDER BY since, run_id LIMIT 100 LOOP
        DELETE FROM flow_waiters
            WHERE key = p_key AND run_id = w.run_id AND position = w.position;
        -- The run's lock first, so the step read next is the one ss_resolve changes.
        PERFORM 1 FROM runs WHERE id = w.run_id AND state = 'RUN_STARTED' FOR UPDATE;
        CONTINUE WHEN NOT FOUND;
        -- "waiting_for":"flowControl" (StepRecord.waiting_for) matched as text: the JSON is
        -- never parsed here. Inside a string value the quotes would be escaped, so it cannot
        -- match there.
        SELECT out INTO kept FROM steps WHERE run_id = w.run_id AND position = w.position
            AND state = 'STEP_PROGRESS' AND NOT resolved
            AND strpos(data, '"waiting_for":"flowControl"') > 0;
        IF FOUND AND ss_resolve(w.run_id, w.position, kept) THEN
            RETURN 1;
        END IF;
    END LOOP;
    RETURN 0;
END $$;

-- Start the step at s_position under the key's limits, if it has budget (granted); if not,
-- save the step (its waiting form) and, when slots are the limit, register it as a waiter
-- (an earlier registration keeps its place); retry_at as FlowStore.acquire_slot says.
CREATE FUNCTION ss_acquire_slot(
    p_id text, p_owner text, p_epoch bigint, p_key text, p_parallelism bigint,
    p_rate bigint, p_period bigint,
    s_position integer, s_state text, s_resolved boolean, s_out text, s_finished bigint,
    s_data text,
    OUT granted boolean, OUT retry_at bigint
) LANGUAGE plpgsql AS $$
DECLARE
    now_ms bigint;
    held bigint := 0;
    soonest bigint;
    started bigint := 0;
    oldest bigint;
    is_full boolean;
    is_spent boolean;
BEGIN
    PERFORM ss_flow_lock(p_key);
    PERFORM ss_fence(p_id, p_owner, p_epoch);
    now_ms := ss_now();
    IF p_parallelism IS NOT NULL THEN
        -- This step's own slot (a retry) never counts against it.
        DELETE FROM flow_slots WHERE key = p_key AND run_id = p_id AND position = s_position;
        SELECT count(*) INTO held FROM flow_slots WHERE key = p_key;
        IF held >= p_parallelism THEN
            -- Full as counted: only now is it worth dropping the slots whose claim ended, so a
            -- key far below its limit never reads a run.
            DELETE FROM flow_slots s WHERE s.key = p_key AND NOT EXISTS (
                SELECT 1 FROM runs r WHERE r.id = s.run_id AND r.state = 'RUN_STARTED'
                    AND r.lease_owner = s.owner AND r.epoch = s.epoch
                    AND r.lease_until >= now_ms);
            SELECT count(*), min(r.lease_until) INTO held, soonest
                FROM flow_slots s JOIN runs r ON r.id = s.run_id WHERE s.key = p_key;
        END IF;
    END IF;
    IF p_rate IS NOT NULL THEN
        DELETE FROM flow_starts WHERE key = p_key AND at <= now_ms - p_period;
        SELECT count(*), min(at) INTO started, oldest FROM flow_starts WHERE key = p_key;
    END IF;
    is_full := p_parallelism IS NOT NULL AND held >= p_parallelism;
    is_spent := p_rate IS NOT NULL AND started >= p_rate;
    IF NOT is_full AND NOT is_spent THEN
        IF p_parallelism IS NOT NULL THEN
            INSERT INTO flow_slots (key, run_id, position, owner, epoch)
                VALUES (p_key, p_id, s_position, p_owner, p_epoch);
        END IF;
        IF p_rate IS NOT NULL THEN
            INSERT INTO flow_starts (key, at, run_id, position)
                VALUES (p_key, now_ms, p_id, s_position) ON CONFLICT DO NOTHING;
        END IF;
        DELETE FROM flow_waiters WHERE key = p_key AND run_id = p_id AND position = s_position;
        granted := true;
        RETURN;
    END IF;
    PERFORM ss_put_steps(p_id, ARRAY[s_position], ARRAY[s_state], ARRAY[s_resolved],
        ARRAY[s_out], ARRAY[s_finished], ARRAY[s_data]);
    granted := false;
    IF is_spent THEN
        retry_at := oldest + p_period;  -- when the oldest start leaves the window
    END IF;
    IF is_full THEN
        INSERT INTO flow_waiters (key, since, run_id, position)
            VALUES (p_key, now_ms, p_id, s_position) ON CONFLICT DO NOTHING;
        -- When the soonest holder's lease could have expired (greatest ignores a NULL).
        retry_at := greatest(retry_at, coalesce(soonest, now_ms) + 1);
    END IF;
END $$;

-- Not fenced: whoever ran the step gives its slot up.
CREATE FUNCTION ss_release_slot(p_key text, p_id text, p_position integer) RETURNS integer
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM ss_flow_lock(p_key);
    RETURN ss_free_slot(p_key, p_id, p_position);
END $$;

-- Save steps; with r_key, give that slot up in the same transaction. Returns how many runs
-- that woke.
CREATE FUNCTION ss_save_steps(
    p_id text, p_owner text, p_epoch bigint,
    s_positions integer[], s_states text[], s_resolved boolean[], s_outs text[],
    s_finished bigint[], s_datas text[],
    e_channels text[], e_events text[], e_datas text[], e_max bigint, e_expire bigint,
    r_key text, r_id text, r_position integer
) RETURNS integer LANGUAGE plpgsql AS $$
BEGIN
    IF r_key IS NOT NULL THEN
        PERFORM ss_flow_lock(r_key);  -- before the run's lock (ss_fence), like ss_acquire_slot
    END IF;
    PERFORM ss_fence(p_id, p_owner, p_epoch);
    PERFORM ss_put_steps(p_id, s_positions, s_states, s_resolved, s_outs, s_finished, s_datas);
    PERFORM ss_emit(e_channels, e_events, e_datas, e_max, e_expire);
    IF r_key IS NULL THEN
        RETURN 0;
    END IF;
    RETURN ss_free_slot(r_key, r_id, r_position);
END $$;

CREATE FUNCTION ss_create_run(
    p_id text, p_workflow text, p_state text, p_created bigint, p_completed bigint,
    p_due bigint, p_parent text, p_parent_position integer, p_payload text, p_headers text,
    p_result text, p_error text, p_timeout bigint, p_phase text, p_failure_attempts integer,
    p_failed_step text, p_flow text,
    s_positions integer[], s_states text[], s_resolved boolean[], s_outs text[],
    s_finished bigint[], s_datas text[],
    e_channels text[], e_events text[], e_datas text[], e_max bigint, e_expire bigint
) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO runs (id, workflow, state, created_at, completed_at, due_at, parent,
        parent_position, payload, headers, result, error, timeout_at, phase, failure_attempts,
        failed_step, flow)
    VALUES (p_id, p_workflow, p_state, p_created, p_completed, p_due, p_parent,
        p_parent_position, p_payload, p_headers, p_result, p_error, p_timeout, p_phase,
        p_failure_attempts, p_failed_step, p_flow)
    ON CONFLICT (id) DO NOTHING;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'a workflow run with id % already exists: ids are single-use', p_id
            USING ERRCODE = 'SS002';
    END IF;
    PERFORM ss_put_steps(p_id, s_positions, s_states, s_resolved, s_outs, s_finished, s_datas);
    PERFORM ss_emit(e_channels, e_events, e_datas, e_max, e_expire);
    IF p_due IS NOT NULL AND p_due <= ss_now() THEN
        PERFORM ss_wake();
    END IF;
END $$;
