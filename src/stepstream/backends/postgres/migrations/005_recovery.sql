-- stepstream on PostgreSQL, version 5: finding, resuming and deleting runs (RecoveryStore in
-- backends/base.py), and the labels and origins a run is triggered with.
--
-- ss_create_run gains parameters, so it is a new overload: the version 4 one stays, for
-- processes of the previous release still running during a rolling upgrade (their runs have
-- no labels and no origin, as the defaults say).

-- A constant default: existing rows are not rewritten, they read back as '{}'.
ALTER TABLE runs ADD COLUMN labels text[] NOT NULL DEFAULT '{}';
ALTER TABLE runs ADD COLUMN restarted_from text;
ALTER TABLE runs ADD COLUMN forked_from text;

-- A run under each of its labels, newest first by the run's seq: a label filter pages this
-- index and joins runs by seq (runs_newest) for the other filters. From the runs side (a time
-- range scanned first), the same join is a probe of this primary key. Labels never change
-- after a run is created: only ss_create_run and ss_delete_run write here.
CREATE TABLE run_labels (
    label text NOT NULL,
    seq bigint NOT NULL,
    PRIMARY KEY (label, seq)
);

-- Time bounds of a listing: a narrow span is a range of this index (its runs, then sorted by
-- seq) rather than a filter on a newest-first scan that would read every run outside it.
CREATE INDEX runs_created ON runs (created_at);

CREATE FUNCTION ss_create_run(
    p_id text, p_workflow text, p_state text, p_created bigint, p_completed bigint,
    p_due bigint, p_parent text, p_parent_position integer, p_payload text, p_headers text,
    p_result text, p_error text, p_timeout bigint, p_phase text, p_failure_attempts integer,
    p_failed_step text, p_flow text, p_labels text[], p_restarted_from text,
    p_forked_from text,
    s_positions integer[], s_states text[], s_resolved boolean[], s_outs text[],
    s_finished bigint[], s_datas text[],
    e_channels text[], e_events text[], e_datas text[], e_max bigint, e_expire bigint
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    new_seq bigint;
BEGIN
    INSERT INTO runs (id, workflow, state, created_at, completed_at, due_at, parent,
        parent_position, payload, headers, result, error, timeout_at, phase, failure_attempts,
        failed_step, flow, labels, restarted_from, forked_from)
    VALUES (p_id, p_workflow, p_state, p_created, p_completed, p_due, p_parent,
        p_parent_position, p_payload, p_headers, p_result, p_error, p_timeout, p_phase,
        p_failure_attempts, p_failed_step, p_flow, p_labels, p_restarted_from, p_forked_from)
    ON CONFLICT (id) DO NOTHING
    RETURNING seq INTO new_seq;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'a workflow run with id % already exists: ids are single-use', p_id
            USING ERRCODE = 'SS002';
    END IF;
    INSERT INTO run_labels (label, seq) SELECT DISTINCT l, new_seq FROM unnest(p_labels) AS l;
    PERFORM ss_put_steps(p_id, s_positions, s_states, s_resolved, s_outs, s_finished, s_datas);
    PERFORM ss_emit(e_channels, e_events, e_datas, e_max, e_expire);
    IF p_due IS NOT NULL AND p_due <= ss_now() THEN
        PERFORM ss_wake();
    END IF;
END $$;

-- Continue a failed or canceled run in place: what succeeded stays, every other step (and
-- every failure-function step, position >= 1000000: records.FAILURE_POSITIONS) goes with its
-- waits, and the run is due now, unleased, its epoch kept so earlier claims stay fenced off.
CREATE FUNCTION ss_resume_run(
    p_id text, p_timeout_at bigint,
    e_channels text[], e_events text[], e_datas text[], e_max bigint, e_expire bigint
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    state_now text;
BEGIN
    SELECT state INTO state_now FROM runs WHERE id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION '%', p_id USING ERRCODE = 'SS003';
    END IF;
    IF state_now NOT IN ('RUN_FAILED', 'RUN_CANCELED') THEN
        RAISE EXCEPTION 'run % is %: only failed or canceled runs can be resumed',
            p_id, state_now USING ERRCODE = 'SS002';
    END IF;
    WITH gone AS (
        DELETE FROM steps WHERE run_id = p_id
            AND (state <> 'STEP_SUCCESS' OR position >= 1000000)
        RETURNING position)
    DELETE FROM waits WHERE run_id = p_id AND position IN (SELECT position FROM gone);
    UPDATE runs SET state = 'RUN_STARTED', completed_at = NULL, result = NULL, error = NULL,
        failed_step = NULL, phase = 'run', failure_attempts = 0, due_at = ss_now(),
        timeout_at = p_timeout_at,
        lease_owner = NULL, lease_until = NULL
        WHERE id = p_id;
    PERFORM ss_emit(e_channels, e_events, e_datas, e_max, e_expire);
    PERFORM ss_wake();
END $$;

-- Delete a finished run and everything kept for it: steps, waits, lookback events, label
-- entries, its flow control slot and waiter rows, and its channel's whole history (the channel
-- row too, so a new run reusing the id starts from nothing). The key's rate starts stay: those
-- steps did start, and the window forgets them on its own.
CREATE FUNCTION ss_delete_run(p_id text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    r record;
    flow_json text;
    flow_key text;
BEGIN
    -- The flow control key first, for its lock before the run's (the order ss_flow_lock
    -- keeps); a run's flow limits never change, so reading them unlocked is safe. The JSON is
    -- parsed only when it holds no \u0000 escape (which PostgreSQL refuses to decode): such a
    -- key never reached the flow tables, whose text cannot hold a NUL.
    SELECT flow INTO flow_json FROM runs WHERE id = p_id;
    IF flow_json IS NOT NULL AND strpos(flow_json, '\u0000') = 0 THEN
        flow_key := flow_json::json ->> 'key';
        PERFORM ss_flow_lock(flow_key);
    END IF;
    SELECT state, seq, labels INTO r FROM runs WHERE id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION '%', p_id USING ERRCODE = 'SS003';
    END IF;
    IF r.state = 'RUN_STARTED' THEN
        RAISE EXCEPTION 'run % is still running: cancel it first, then delete it', p_id
            USING ERRCODE = 'SS002';
    END IF;
    DELETE FROM run_labels WHERE label = ANY (r.labels) AND seq = r.seq;
    DELETE FROM steps WHERE run_id = p_id;
    DELETE FROM waits WHERE run_id = p_id;
    DELETE FROM lookback WHERE run_id = p_id;
    IF flow_key IS NOT NULL THEN
        DELETE FROM flow_slots WHERE key = flow_key AND run_id = p_id;
        DELETE FROM flow_waiters WHERE key = flow_key AND run_id = p_id;
    END IF;
    DELETE FROM events WHERE channel = p_id;
    DELETE FROM channels WHERE name = p_id;
    DELETE FROM runs WHERE id = p_id;
END $$;
