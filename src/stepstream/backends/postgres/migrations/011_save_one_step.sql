-- stepstream on PostgreSQL, version 11: the save of one step, its arguments as plain values.
--
-- Nearly every save a workflow makes is one step with its events on its run's own channel (named
-- by the run's id) and no flow control slot to give back. ss_save_step takes that step's
-- columns as scalars (the driver encodes a one-element array at several times the cost of a
-- value, nine of them per call in ss_save_steps) and does what ss_save_steps and ss_append do
-- for it with fewer statements and no nested function call: one INSERT for all of its events,
-- where there was one per event. The NOTIFYs stay a loop: plpgsql evaluates PERFORM
-- pg_notify(...) as a simple expression, without the executor that a query over the events
-- would start (measured: the query made a watched save slower than version 10's). Ids,
-- trimming, expiry and the NOTIFY payloads are those of version 10; any case but the usual one
-- (a new or expired channel, one over max_length) goes through ss_append as before.
CREATE OR REPLACE FUNCTION ss_save_step(
    p_id text, p_owner text, p_epoch bigint,
    s_position integer, s_state text, s_resolved boolean, s_out text, s_finished bigint,
    s_data text,
    e_events text[], e_datas text[], e_max bigint, e_expire bigint
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    n integer := coalesce(array_length(e_events, 1), 0);
    now_ms bigint;
    k_ms bigint;
    k_seq bigint;  -- the seq before the first of these events
    watched bigint;
    topic text;
    payload text;
BEGIN
    PERFORM 1 FROM runs WHERE id = p_id AND state = 'RUN_STARTED' AND lease_owner = p_owner
        AND epoch = p_epoch FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'run % is no longer held by this execution', p_id USING ERRCODE = 'SS001';
    END IF;
    INSERT INTO steps (run_id, position, state, resolved, out, finished_at, data)
    VALUES (p_id, s_position, s_state, s_resolved, s_out, s_finished, s_data)
    ON CONFLICT (run_id, position) DO UPDATE SET state = excluded.state,
        resolved = excluded.resolved, out = excluded.out, finished_at = excluded.finished_at,
        data = excluded.data;
    IF n = 0 THEN
        RETURN;
    END IF;
    now_ms := ss_now();
    -- ss_append's fast path (version 10), the same ids: one millisecond for all n events.
    UPDATE channels SET
        last_seq = CASE WHEN now_ms > last_ms THEN n - 1 ELSE last_seq + n END,
        last_ms = greatest(last_ms, now_ms),
        length = length + n,
        expires_at = CASE WHEN e_expire IS NULL THEN NULL ELSE now_ms + e_expire END
    WHERE name = p_id AND (expires_at IS NULL OR expires_at > now_ms)
        AND (e_max IS NULL OR length + n <= e_max)
    RETURNING last_ms, last_seq - n, watched_until INTO k_ms, k_seq, watched;
    IF NOT FOUND THEN
        PERFORM ss_append(p_id, e_events, e_datas, e_max, e_expire);
        RETURN;
    END IF;
    -- unnest, not e_events[i] over generate_subscripts: on a connection's first calls the
    -- plan holds the arrays as constants, and indexing one walks it from the start each time.
    INSERT INTO events (channel, ms, seq, event, data)
    SELECT p_id, k_ms, k_seq + e.i, e.event, e.data
    FROM unnest(e_events, e_datas) WITH ORDINALITY AS e(event, data, i);
    IF coalesce(current_setting('stepstream.notify', true), '') <> 'watched'
            OR coalesce(watched, 0) >= now_ms THEN
        topic := ss_topic('');
        FOR i IN 1 .. n LOOP
            payload := p_id || E'\n' || k_ms || '-' || (k_seq + i) || E'\n' || e_events[i]
                || E'\n' || e_datas[i];
            IF octet_length(payload) > 7900 THEN
                payload := p_id || E'\n' || k_ms || '-' || (k_seq + i);
            END IF;
            PERFORM pg_notify(topic, payload);
        END LOOP;
    END IF;
END $$;
