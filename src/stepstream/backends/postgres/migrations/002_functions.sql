-- stepstream on PostgreSQL, version 2: one function per storage operation, so each change of a
-- run and the events reporting it commit together in one round trip (like the Redis backend's
-- Lua scripts). Errors the Python side maps (connection.py): SS001 LeaseLost, SS002
-- RunConflict, SS003 RunNotFound, SS004 CursorUnavailable (message: the cursor, detail: the
-- channel).

CREATE FUNCTION ss_now() RETURNS bigint LANGUAGE sql VOLATILE AS
$$ SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint $$;

-- The NOTIFY topics of this schema: live events, and "a run is due now" for workers.
CREATE FUNCTION ss_topic(suffix text) RETURNS text LANGUAGE sql STABLE AS
$$ SELECT 'stepstream.' || current_schema() || suffix $$;

CREATE FUNCTION ss_wake() RETURNS void LANGUAGE plpgsql AS
$$ BEGIN PERFORM pg_notify(ss_topic('.wake'), ''); END $$;

-- Append events to one channel: the next ids, trimming to p_max, sliding expiry p_expire ms.
-- Each event is announced with NOTIFY, delivered at commit in commit order: the payload is
-- "channel\nid\nevent\ndata", or only "channel\nid" when that would pass NOTIFY's 8000-byte
-- limit (listeners then read the event from the table).
CREATE FUNCTION ss_append(
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
    topic text := ss_topic('');
    cut record;
BEGIN
    SELECT * INTO c FROM channels WHERE name = p_channel FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO channels (name, last_ms, last_seq) VALUES (p_channel, now_ms - 1, 0)
            ON CONFLICT (name) DO NOTHING;
        SELECT * INTO c FROM channels WHERE name = p_channel FOR UPDATE;
    END IF;
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
        payload := p_channel || E'\n' || id || E'\n' || p_events[i] || E'\n' || p_datas[i];
        IF octet_length(payload) > 7900 THEN
            payload := p_channel || E'\n' || id;
        END IF;
        PERFORM pg_notify(topic, payload);
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

-- The events reporting a run's change, grouped by channel in order of first appearance.
CREATE FUNCTION ss_emit(
    p_channels text[], p_events text[], p_datas text[], p_max bigint, p_expire bigint
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    ch text;
BEGIN
    IF coalesce(array_length(p_channels, 1), 0) = 0 THEN
        RETURN;
    END IF;
    IF p_channels[1] = ALL (p_channels) THEN  -- the usual case: one run's channel
        PERFORM ss_append(p_channels[1], p_events, p_datas, p_max, p_expire);
        RETURN;
    END IF;
    FOR ch IN
        SELECT u.c FROM unnest(p_channels) WITH ORDINALITY AS u(c, i) GROUP BY u.c ORDER BY min(u.i)
    LOOP
        PERFORM ss_append(
            ch,
            ARRAY(SELECT p_events[i] FROM generate_subscripts(p_channels, 1) AS i
                  WHERE p_channels[i] = ch ORDER BY i),
            ARRAY(SELECT p_datas[i] FROM generate_subscripts(p_channels, 1) AS i
                  WHERE p_channels[i] = ch ORDER BY i),
            p_max, p_expire);
    END LOOP;
END $$;

-- Events of a channel (one snapshot: STABLE), oldest first; p_limit: the latest p_limit,
-- p_page: the oldest p_page. SS004 when events after the cursor were removed.
CREATE FUNCTION ss_read(
    p_channel text, p_after_ms bigint, p_after_seq bigint, p_before_ms bigint,
    p_before_seq bigint, p_start bigint, p_end bigint, p_limit bigint, p_page bigint
) RETURNS TABLE (ms bigint, seq bigint, event text, data text) LANGUAGE plpgsql STABLE AS $$
DECLARE
    c channels%ROWTYPE;
    expired boolean;
    cond text := 'channel = $1';
BEGIN
    SELECT * INTO c FROM channels WHERE name = p_channel;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    expired := c.expires_at IS NOT NULL AND c.expires_at <= ss_now();
    IF expired THEN
        c.trimmed_ms := c.last_ms;
        c.trimmed_seq := c.last_seq;
    END IF;
    IF p_after_ms IS NOT NULL AND (c.trimmed_ms, c.trimmed_seq) > (p_after_ms, p_after_seq) THEN
        RAISE EXCEPTION '%', p_after_ms || '-' || p_after_seq
            USING ERRCODE = 'SS004', DETAIL = p_channel;
    END IF;
    IF expired THEN
        RETURN;
    END IF;
    IF p_after_ms IS NOT NULL THEN cond := cond || ' AND (ms, seq) > ($2, $3)'; END IF;
    IF p_before_ms IS NOT NULL THEN cond := cond || ' AND (ms, seq) < ($4, $5)'; END IF;
    IF p_start IS NOT NULL THEN cond := cond || ' AND ms >= $6'; END IF;
    IF p_end IS NOT NULL THEN cond := cond || ' AND ms <= $7'; END IF;
    IF p_limit IS NOT NULL THEN
        RETURN QUERY EXECUTE 'SELECT * FROM (SELECT e.ms, e.seq, e.event, e.data FROM events e '
            || 'WHERE ' || cond || ' ORDER BY ms DESC, seq DESC LIMIT $8) x ORDER BY ms, seq'
            USING p_channel, p_after_ms, p_after_seq, p_before_ms, p_before_seq, p_start, p_end,
                p_limit;
    ELSE
        RETURN QUERY EXECUTE 'SELECT e.ms, e.seq, e.event, e.data FROM events e WHERE '
            || cond || ' ORDER BY ms, seq LIMIT $8'
            USING p_channel, p_after_ms, p_after_seq, p_before_ms, p_before_seq, p_start, p_end,
                p_page;
    END IF;
END $$;

-- Delete the history of (at most 500) channels whose expiry has passed; returns how many.
CREATE FUNCTION ss_sweep() RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    ch text;
    n integer := 0;
BEGIN
    FOR ch IN SELECT name FROM channels WHERE expires_at <= ss_now()
              LIMIT 500 FOR UPDATE SKIP LOCKED LOOP
        DELETE FROM events WHERE channel = ch;
        UPDATE channels SET trimmed_ms = last_ms, trimmed_seq = last_seq, length = 0,
            expires_at = NULL WHERE name = ch;
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;

-- Lock the run for this change, or SS001 unless it runs and this very claim holds it.
CREATE FUNCTION ss_fence(p_id text, p_owner text, p_epoch bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM runs WHERE id = p_id AND state = 'RUN_STARTED' AND lease_owner = p_owner
        AND epoch = p_epoch FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'run % is no longer held by this execution', p_id USING ERRCODE = 'SS001';
    END IF;
END $$;

-- PL/pgSQL, not SQL, here and below: PostgreSQL caches a PL/pgSQL function's plans per
-- connection, while a SQL function is planned again on every call.
CREATE FUNCTION ss_put_steps(
    p_id text, p_positions integer[], p_states text[], p_resolved boolean[], p_outs text[],
    p_finished bigint[], p_datas text[]
) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO steps (run_id, position, state, resolved, out, finished_at, data)
    SELECT p_id, s.* FROM unnest(p_positions, p_states, p_resolved, p_outs, p_finished,
                                 p_datas) AS s
    ON CONFLICT (run_id, position) DO UPDATE SET state = excluded.state,
        resolved = excluded.resolved, out = excluded.out, finished_at = excluded.finished_at,
        data = excluded.data;
END $$;

-- A notify or a finished child writes a step's out while it is in progress; its run is due now.
CREATE FUNCTION ss_resolve(p_id text, p_position integer, p_out text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM runs WHERE id = p_id AND state = 'RUN_STARTED' FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE steps SET out = p_out, resolved = true WHERE run_id = p_id AND position = p_position
        AND state = 'STEP_PROGRESS' AND NOT resolved;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE runs SET due_at = ss_now() WHERE id = p_id;
    PERFORM ss_wake();
    RETURN true;
END $$;

-- End a run: drop its lease, waits and kept events, cancel its steps in progress, resolve
-- its parent's invoke step with p_parent_out.
CREATE FUNCTION ss_close(
    p_id text, p_state text, p_result text, p_error text, p_at bigint, p_parent_out text
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    UPDATE runs SET state = p_state, completed_at = p_at, due_at = NULL, lease_owner = NULL,
        lease_until = NULL, result = p_result, error = p_error
        WHERE id = p_id RETURNING parent, parent_position INTO r;
    DELETE FROM waits WHERE run_id = p_id;
    DELETE FROM lookback WHERE run_id = p_id;
    UPDATE steps SET state = 'STEP_CANCELED', finished_at = p_at
        WHERE run_id = p_id AND state IN ('STEP_PROGRESS', 'STEP_RETRY');
    IF r.parent IS NOT NULL AND r.parent_position IS NOT NULL THEN
        PERFORM ss_resolve(r.parent, r.parent_position, p_parent_out);
    END IF;
END $$;
