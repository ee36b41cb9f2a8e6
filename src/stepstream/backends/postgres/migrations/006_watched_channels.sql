-- stepstream on PostgreSQL, version 6: NOTIFY only the events of channels some process watches.
--
-- A transaction that notifies takes one cluster-wide lock before its commit and keeps it until
-- the commit's WAL flush is done, so notifying commits cannot share a flush: every step of every
-- workflow used to pay for that, watched or not. Now a process that watches channels records
-- how long it will (channels.watched_until, the database's clock, renewed by its LISTEN
-- connection's checks), and an append notifies only while that time lies ahead.
--
-- Why no event is lost: ss_watch locks the channel's row, ss_append too (FOR UPDATE), so they
-- are ordered. An append that locked first commits before the watch does, and the subscriber
-- reads the history after its watch committed: the event is there. An append that locked after
-- reads the row as the watch left it (READ COMMITTED re-reads a row it waited for) and
-- notifies, and the watching connection was LISTENing before it registered.
--
-- Rolling upgrades: only connections that say so (the setting stepstream.notify = 'watched',
-- which this version's processes set) skip the NOTIFY; a process of an earlier version still
-- notifies every event, and its listener, which registers nothing, hears only those.

ALTER TABLE channels ADD COLUMN watched_until bigint;

CREATE FUNCTION ss_watch(p_channels text[], p_ttl bigint) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    now_ms bigint := ss_now();
BEGIN
    INSERT INTO channels (name, last_ms, last_seq)
        SELECT DISTINCT c, now_ms - 1, 0 FROM unnest(p_channels) AS c ORDER BY 1
        ON CONFLICT (name) DO NOTHING;
    PERFORM 1 FROM channels WHERE name = ANY (p_channels) ORDER BY name FOR UPDATE;
    UPDATE channels SET watched_until = greatest(coalesce(watched_until, 0), now_ms + p_ttl)
        WHERE name = ANY (p_channels);
END $$;

-- As version 2's, with the NOTIFY skipped for an unwatched channel (see above).
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
    topic text := ss_topic('');
    cut record;
    notify boolean;
BEGIN
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

-- As version 5's, keeping a watched channel's row (and so its watch) when its run is deleted.
CREATE OR REPLACE FUNCTION ss_delete_run(p_id text) RETURNS void LANGUAGE plpgsql AS $$
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
    DELETE FROM channels WHERE name = p_id AND coalesce(watched_until, 0) < ss_now();
    UPDATE channels SET length = 0, trimmed_ms = -1, trimmed_seq = -1, expires_at = NULL
        WHERE name = p_id;  -- still watched: the row keeps that, the id starts clean
    DELETE FROM runs WHERE id = p_id;
END $$;
