-- stepstream on PostgreSQL, version 10: fewer statements in a step's save.
--
-- A sequential step waits for its save, so the work PostgreSQL does in it is on every step's
-- path. ss_append's usual case (the channel exists, has not expired and needs no trimming)
-- is now one UPDATE ... RETURNING that takes the row lock, hands out the ids and refreshes the
-- expiry at once, where it was a SELECT ... FOR UPDATE (a lock written to the row) and a later
-- UPDATE. The ids are those the loop below would give: the events of one call share one
-- millisecond (the newest of the clock and the channel's last), numbered on from the last seq
-- or from 0 in a new millisecond. Any other case takes the path of version 6, unchanged.
-- ss_save_steps does the fence and the step upsert itself (what ss_fence and ss_put_steps do)
-- and appends to a single channel without ss_emit: three function calls fewer per save.
-- The UPDATE keeps version 6's order with ss_watch: both lock the channel row, and an UPDATE
-- that waited for a watch re-reads the row it returns (watched_until as the watch left it).

-- As version 6's, with the fast path first.
CREATE OR REPLACE FUNCTION ss_append(
    p_channel text, p_events text[], p_datas text[], p_max bigint, p_expire bigint
) RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
    now_ms bigint := ss_now();
    c channels%ROWTYPE;
    k_ms bigint;
    k_seq bigint;
    n integer := coalesce(array_length(p_events, 1), 0);
    ids text[] := '{}';
    id text;
    payload text;
    topic text;
    cut record;
    notify boolean;
    watched bigint;
BEGIN
    IF n > 0 THEN
        UPDATE channels SET
            last_seq = CASE WHEN now_ms > last_ms THEN n - 1 ELSE last_seq + n END,
            last_ms = greatest(last_ms, now_ms),
            length = length + n,
            expires_at = CASE WHEN p_expire IS NULL THEN NULL ELSE now_ms + p_expire END
        WHERE name = p_channel AND (expires_at IS NULL OR expires_at > now_ms)
            AND (p_max IS NULL OR length + n <= p_max)
        RETURNING last_ms, last_seq, watched_until INTO k_ms, k_seq, watched;
        IF FOUND THEN
            notify := coalesce(current_setting('stepstream.notify', true), '') <> 'watched'
                OR coalesce(watched, 0) >= now_ms;
            IF notify THEN
                topic := ss_topic('');
            END IF;
            k_seq := k_seq - n;
            FOR i IN 1 .. n LOOP
                k_seq := k_seq + 1;
                INSERT INTO events (channel, ms, seq, event, data)
                    VALUES (p_channel, k_ms, k_seq, p_events[i], p_datas[i]);
                id := k_ms || '-' || k_seq;
                ids := ids || id;
                IF notify THEN
                    payload := p_channel || E'\n' || id || E'\n' || p_events[i] || E'\n'
                        || p_datas[i];
                    IF octet_length(payload) > 7900 THEN
                        payload := p_channel || E'\n' || id;
                    END IF;
                    PERFORM pg_notify(topic, payload);
                END IF;
            END LOOP;
            RETURN ids;
        END IF;
    END IF;
    topic := ss_topic('');
    SELECT * INTO c FROM channels WHERE name = p_channel FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO channels (name, last_ms, last_seq) VALUES (p_channel, now_ms - 1, 0)
            ON CONFLICT (name) DO NOTHING;
        SELECT * INTO c FROM channels WHERE name = p_channel FOR UPDATE;
    END IF;
    notify := coalesce(current_setting('stepstream.notify', true), '') <> 'watched'
        OR coalesce(c.watched_until, 0) >= now_ms;
    IF c.expires_at IS NOT NULL AND c.expires_at <= now_ms THEN
        DELETE FROM events WHERE channel = p_channel;
        c.trimmed_ms := c.last_ms;
        c.trimmed_seq := c.last_seq;
        c.length := 0;
    END IF;
    k_ms := c.last_ms;
    k_seq := c.last_seq;
    FOR i IN 1 .. n LOOP
        IF now_ms > k_ms THEN
            k_ms := now_ms;
            k_seq := 0;
        ELSE
            k_seq := k_seq + 1;
        END IF;
        INSERT INTO events (channel, ms, seq, event, data)
            VALUES (p_channel, k_ms, k_seq, p_events[i], p_datas[i]);
        id := k_ms || '-' || k_seq;
        ids := ids || id;
        IF notify THEN
            payload := p_channel || E'\n' || id || E'\n' || p_events[i] || E'\n' || p_datas[i];
            IF octet_length(payload) > 7900 THEN
                payload := p_channel || E'\n' || id;
            END IF;
            PERFORM pg_notify(topic, payload);
        END IF;
    END LOOP;
    c.length := c.length + n;
    IF p_max IS NOT NULL AND c.length > p_max THEN
        SELECT ms, seq INTO cut FROM events WHERE channel = p_channel
            ORDER BY ms, seq OFFSET c.length - p_max - 1 LIMIT 1;
        DELETE FROM events WHERE channel = p_channel AND (ms, seq) <= (cut.ms, cut.seq);
        c.trimmed_ms := cut.ms;
        c.trimmed_seq := cut.seq;
        c.length := p_max;
    END IF;
    UPDATE channels SET last_ms = k_ms, last_seq = k_seq, length = c.length,
        trimmed_ms = c.trimmed_ms, trimmed_seq = c.trimmed_seq,
        expires_at = CASE WHEN p_expire IS NULL THEN NULL ELSE now_ms + p_expire END
        WHERE name = p_channel;
    RETURN ids;
END $$;

-- As version 4's (ss_fence, ss_put_steps and ss_emit inlined).
CREATE OR REPLACE FUNCTION ss_save_steps(
    p_id text, p_owner text, p_epoch bigint,
    s_positions integer[], s_states text[], s_resolved boolean[], s_outs text[],
    s_finished bigint[], s_datas text[],
    e_channels text[], e_events text[], e_datas text[], e_max bigint, e_expire bigint,
    r_key text, r_id text, r_position integer
) RETURNS integer LANGUAGE plpgsql AS $$
BEGIN
    IF r_key IS NOT NULL THEN
        PERFORM ss_flow_lock(r_key);  -- before the run's lock, like ss_acquire_slot
    END IF;
    PERFORM 1 FROM runs WHERE id = p_id AND state = 'RUN_STARTED' AND lease_owner = p_owner
        AND epoch = p_epoch FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'run % is no longer held by this execution', p_id USING ERRCODE = 'SS001';
    END IF;
    INSERT INTO steps (run_id, position, state, resolved, out, finished_at, data)
    SELECT p_id, s.* FROM unnest(s_positions, s_states, s_resolved, s_outs, s_finished,
                                 s_datas) AS s
    ON CONFLICT (run_id, position) DO UPDATE SET state = excluded.state,
        resolved = excluded.resolved, out = excluded.out, finished_at = excluded.finished_at,
        data = excluded.data;
    IF cardinality(e_channels) > 0 THEN
        IF e_channels[1] = ALL (e_channels) THEN  -- the usual case: the run's own channel
            PERFORM ss_append(e_channels[1], e_events, e_datas, e_max, e_expire);
        ELSE
            PERFORM ss_emit(e_channels, e_events, e_datas, e_max, e_expire);
        END IF;
    END IF;
    IF r_key IS NULL THEN
        RETURN 0;
    END IF;
    RETURN ss_free_slot(r_key, r_id, r_position);
END $$;
