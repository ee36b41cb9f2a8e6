-- stepstream on PostgreSQL, version 3: the operations that change runs (backends/base.py).
-- Steps travel as parallel arrays (position, state, resolved, out, finished_at, JSON), events
-- as (channel, event, data) arrays with the history policy (max length, expiry ms).

CREATE FUNCTION ss_create_run(
    p_id text, p_workflow text, p_state text, p_created bigint, p_completed bigint,
    p_due bigint, p_parent text, p_parent_position integer, p_payload text, p_headers text,
    p_result text, p_error text, p_timeout bigint, p_phase text, p_failure_attempts integer,
    p_failed_step text,
    s_positions integer[], s_states text[], s_resolved boolean[], s_outs text[],
    s_finished bigint[], s_datas text[],
    e_channels text[], e_events text[], e_datas text[], e_max bigint, e_expire bigint
) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO runs (id, workflow, state, created_at, completed_at, due_at, parent,
        parent_position, payload, headers, result, error, timeout_at, phase, failure_attempts,
        failed_step)
    VALUES (p_id, p_workflow, p_state, p_created, p_completed, p_due, p_parent,
        p_parent_position, p_payload, p_headers, p_result, p_error, p_timeout, p_phase,
        p_failure_attempts, p_failed_step)
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

CREATE FUNCTION ss_save_steps(
    p_id text, p_owner text, p_epoch bigint,
    s_positions integer[], s_states text[], s_resolved boolean[], s_outs text[],
    s_finished bigint[], s_datas text[],
    e_channels text[], e_events text[], e_datas text[], e_max bigint, e_expire bigint
) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM ss_fence(p_id, p_owner, p_epoch);
    PERFORM ss_put_steps(p_id, s_positions, s_states, s_resolved, s_outs, s_finished, s_datas);
    PERFORM ss_emit(e_channels, e_events, e_datas, e_max, e_expire);
END $$;

-- p_fields names the run fields to change (phase, error, failure_attempts, failed_step).
CREATE FUNCTION ss_release_run(
    p_id text, p_owner text, p_epoch bigint, p_due bigint, p_hold boolean, p_fields text[],
    p_phase text, p_error text, p_failure_attempts integer, p_failed_step text,
    e_channels text[], e_events text[], e_datas text[], e_max bigint, e_expire bigint
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    due bigint := p_due;
BEGIN
    PERFORM ss_fence(p_id, p_owner, p_epoch);
    -- A notify or a finished child may have resolved a step while we held the run: then it is
    -- due now, whatever we planned (unless parked: it waits for a deploy, not its events).
    IF NOT p_hold AND EXISTS (SELECT 1 FROM steps WHERE run_id = p_id AND resolved
                               AND state = 'STEP_PROGRESS') THEN
        due := ss_now();
    END IF;
    UPDATE runs SET due_at = due, lease_owner = NULL, lease_until = NULL,
        phase = CASE WHEN 'phase' = ANY (p_fields) THEN p_phase ELSE phase END,
        error = CASE WHEN 'error' = ANY (p_fields) THEN p_error ELSE error END,
        failure_attempts = CASE WHEN 'failure_attempts' = ANY (p_fields)
                                THEN p_failure_attempts ELSE failure_attempts END,
        failed_step = CASE WHEN 'failed_step' = ANY (p_fields)
                           THEN p_failed_step ELSE failed_step END
        WHERE id = p_id;
    PERFORM ss_emit(e_channels, e_events, e_datas, e_max, e_expire);
    IF due IS NOT NULL AND due <= ss_now() THEN
        PERFORM ss_wake();
    END IF;
END $$;

CREATE FUNCTION ss_finish_run(
    p_id text, p_owner text, p_epoch bigint, p_state text, p_result text, p_error text,
    p_at bigint, p_parent_out text,
    e_channels text[], e_events text[], e_datas text[], e_max bigint, e_expire bigint
) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM ss_fence(p_id, p_owner, p_epoch);
    PERFORM ss_close(p_id, p_state, p_result, p_error, p_at, p_parent_out);
    PERFORM ss_emit(e_channels, e_events, e_datas, e_max, e_expire);
END $$;

-- Save a wait step; if the event was already sent to this run (lookback), consume it and
-- save the step resolved with it, returning the data.
CREATE FUNCTION ss_wait_event(
    p_id text, p_owner text, p_epoch bigint, p_event text,
    s_position integer, s_state text, s_finished bigint, s_data text,
    e_channels text[], e_events text[], e_datas text[], e_max bigint, e_expire bigint
) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    kept text;
BEGIN
    PERFORM ss_fence(p_id, p_owner, p_epoch);
    DELETE FROM lookback WHERE run_id = p_id AND event_id = p_event RETURNING data INTO kept;
    IF NOT FOUND THEN
        INSERT INTO waits (event_id, run_id, position) VALUES (p_event, p_id, s_position)
            ON CONFLICT DO NOTHING;
    END IF;
    PERFORM ss_put_steps(p_id, ARRAY[s_position], ARRAY[s_state], ARRAY[kept IS NOT NULL],
        ARRAY[kept], ARRAY[s_finished], ARRAY[s_data]);
    PERFORM ss_emit(e_channels, e_events, e_datas, e_max, e_expire);
    RETURN kept;
END $$;

CREATE FUNCTION ss_notify(p_event text, p_raw text, p_run text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    state_now text;
    w record;
    woken integer := 0;
BEGIN
    IF p_run IS NOT NULL THEN
        -- Locked, so the run's own wait_event (which locks it too) comes wholly before or after.
        SELECT state INTO state_now FROM runs WHERE id = p_run FOR UPDATE;
        IF NOT FOUND THEN
            RAISE EXCEPTION '%', p_run USING ERRCODE = 'SS003';
        END IF;
        IF state_now <> 'RUN_STARTED' THEN
            RAISE EXCEPTION 'run % already finished (%); nothing can wait anymore',
                p_run, state_now USING ERRCODE = 'SS002';
        END IF;
    END IF;
    FOR w IN
        WITH gone AS (
            DELETE FROM waits WHERE event_id = p_event AND (p_run IS NULL OR run_id = p_run)
            RETURNING run_id, position)
        SELECT run_id, position FROM gone ORDER BY run_id, position
    LOOP
        IF ss_resolve(w.run_id, w.position, p_raw) THEN
            woken := woken + 1;
        END IF;
    END LOOP;
    IF woken = 0 AND p_run IS NOT NULL THEN
        INSERT INTO lookback (run_id, event_id, data) VALUES (p_run, p_event, p_raw)
            ON CONFLICT (run_id, event_id) DO UPDATE SET data = excluded.data;
    END IF;
    RETURN woken;
END $$;

CREATE FUNCTION ss_cancel_run(
    p_id text, p_at bigint, p_parent_out text,
    e_channels text[], e_events text[], e_datas text[], e_max bigint, e_expire bigint
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    state_now text;
BEGIN
    SELECT state INTO state_now FROM runs WHERE id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION '%', p_id USING ERRCODE = 'SS003';
    END IF;
    IF state_now <> 'RUN_STARTED' THEN
        RAISE EXCEPTION 'run % already finished (%); only running runs can be canceled',
            p_id, state_now USING ERRCODE = 'SS002';
    END IF;
    PERFORM ss_close(p_id, 'RUN_CANCELED', NULL, 'canceled', p_at, p_parent_out);
    PERFORM ss_emit(e_channels, e_events, e_datas, e_max, e_expire);
END $$;

-- Lease up to p_limit due runs of p_workflows to p_owner: first those whose lease expired (their
-- worker died or stalled), then unleased ones, oldest due first. Workers skip each other's
-- locked rows instead of queueing on them.
CREATE FUNCTION ss_claim(
    p_owner text, p_lease_ms bigint, p_limit integer, p_workflows text[], p_exclude text[]
) RETURNS SETOF runs LANGUAGE plpgsql AS $$
DECLARE
    now_ms bigint := ss_now();
    taken integer;
BEGIN
    RETURN QUERY
    UPDATE runs r SET lease_owner = p_owner, lease_until = now_ms + p_lease_ms,
        epoch = r.epoch + 1
    FROM (SELECT id FROM runs
          WHERE state = 'RUN_STARTED' AND lease_owner IS NOT NULL AND lease_until < now_ms
            AND due_at <= now_ms AND workflow = ANY (p_workflows) AND NOT (id = ANY (p_exclude))
          ORDER BY lease_until LIMIT p_limit FOR UPDATE SKIP LOCKED) picked
    WHERE r.id = picked.id
    RETURNING r.*;
    GET DIAGNOSTICS taken = ROW_COUNT;
    IF taken < p_limit THEN
        RETURN QUERY
        UPDATE runs r SET lease_owner = p_owner, lease_until = now_ms + p_lease_ms,
            epoch = r.epoch + 1
        FROM (SELECT id FROM runs
              WHERE state = 'RUN_STARTED' AND lease_owner IS NULL AND due_at <= now_ms
                AND workflow = ANY (p_workflows) AND NOT (id = ANY (p_exclude))
              ORDER BY due_at LIMIT p_limit - taken FOR UPDATE SKIP LOCKED) picked
        WHERE r.id = picked.id
        RETURNING r.*;
    END IF;
END $$;

CREATE FUNCTION ss_renew(p_ids text[], p_owners text[], p_epochs bigint[], p_lease_ms bigint)
RETURNS SETOF text LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY
    UPDATE runs r SET lease_until = ss_now() + p_lease_ms
    FROM unnest(p_ids, p_owners, p_epochs) AS l(id, owner, epoch)
    WHERE r.id = l.id AND r.lease_owner = l.owner AND r.epoch = l.epoch
        AND r.state = 'RUN_STARTED'
    RETURNING r.id;
END $$;
