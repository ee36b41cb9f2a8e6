-- stepstream on PostgreSQL, version 12: a run's row is found through its primary key.
--
-- Every change to a run locks its row first, with a query on the run's id and its state (and
-- owner and epoch when a claim is checked). Before PostgreSQL has statistics on runs (a new
-- database, until autovacuum first analyzes it) the planner rated the index of runs by state,
-- or the partial index of leased runs whose predicate `state = 'RUN_STARTED' AND lease_owner =
-- ...` implies, as good as the primary key, and read every started or leased run to find one:
-- each step's save, each heartbeat, cost time in proportion to the runs in flight. Here the
-- state is compared as `state || ''`, an expression no index or partial-index predicate
-- matches, so the id is the only condition an index can serve. The queries are otherwise the
-- same: a row that does not match is still neither returned nor locked. Where a join on an
-- array of ids locked the rows (ss_save_many, ss_renew), a loop takes them one by one in id
-- order, the order every batch and heartbeat locks in (versions 7 and 9): a join can be
-- planned as a scan of the whole table; ss_acquire_slot reads its slots' runs by id the same
-- way. Same signatures and results (but for a slot whose run ends while ss_acquire_slot
-- counts, see there), so processes of earlier versions still running get this too.

-- As version 2's.
CREATE OR REPLACE FUNCTION ss_fence(p_id text, p_owner text, p_epoch bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM runs WHERE id = p_id AND state || '' = 'RUN_STARTED' AND lease_owner = p_owner
        AND epoch = p_epoch FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'run % is no longer held by this execution', p_id USING ERRCODE = 'SS001';
    END IF;
END $$;

-- As version 2's.
CREATE OR REPLACE FUNCTION ss_resolve(p_id text, p_position integer, p_out text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM runs WHERE id = p_id AND state || '' = 'RUN_STARTED' FOR UPDATE;
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

-- As version 4's.
CREATE OR REPLACE FUNCTION ss_free_slot(p_key text, p_id text, p_position integer) RETURNS integer
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
        PERFORM 1 FROM runs WHERE id = w.run_id AND state || '' = 'RUN_STARTED' FOR UPDATE;
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

-- As version 4's.
CREATE OR REPLACE FUNCTION ss_acquire_slot(
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
            -- Each slot's run read by id (a scalar subquery is never turned into a join,
            -- which a planner without statistics runs as a scan of runs). A slot whose run
            -- ended between the two statements no longer counts (the join counted it).
            DELETE FROM flow_slots s WHERE s.key = p_key AND NOT coalesce((
                SELECT r.state = 'RUN_STARTED' AND r.lease_owner = s.owner
                    AND r.epoch = s.epoch AND r.lease_until >= now_ms
                FROM runs r WHERE r.id = s.run_id), false);
            SELECT count(u.until), min(u.until) INTO held, soonest FROM (
                SELECT (SELECT r.lease_until FROM runs r WHERE r.id = s.run_id) AS until
                FROM flow_slots s WHERE s.key = p_key) AS u;
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

-- As version 7's, the runs locked one by one in id order.
CREATE OR REPLACE FUNCTION ss_save_many(
    p_ids text[], p_owners text[], p_epochs bigint[],
    s_ops integer[], s_positions integer[], s_states text[], s_resolved boolean[], s_outs text[],
    s_finished bigint[], s_datas text[],
    e_from integer[], e_to integer[], e_channels text[], e_events text[], e_datas text[],
    e_max bigint[], e_expire bigint[]
) RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
    held text[] := '{}';
    i integer;
BEGIN
    FOR i IN SELECT o FROM generate_subscripts(p_ids, 1) AS o ORDER BY p_ids[o] LOOP
        PERFORM 1 FROM runs WHERE id = p_ids[i] AND state || '' = 'RUN_STARTED'
            AND lease_owner = p_owners[i] AND epoch = p_epochs[i] FOR UPDATE;
        IF FOUND THEN
            held := held || p_ids[i];
        END IF;
    END LOOP;
    INSERT INTO steps (run_id, position, state, resolved, out, finished_at, data)
    SELECT p_ids[s.op], s.position, s.state, s.resolved, s.out, s.finished, s.data
    FROM unnest(s_ops, s_positions, s_states, s_resolved, s_outs, s_finished, s_datas)
        AS s(op, position, state, resolved, out, finished, data)
    WHERE p_ids[s.op] = ANY (held)
    ON CONFLICT (run_id, position) DO UPDATE SET state = excluded.state,
        resolved = excluded.resolved, out = excluded.out, finished_at = excluded.finished_at,
        data = excluded.data;
    FOR i IN SELECT o FROM generate_subscripts(p_ids, 1) AS o ORDER BY p_ids[o] LOOP
        IF p_ids[i] = ANY (held) AND e_from[i] <= e_to[i] THEN
            PERFORM ss_emit(e_channels[e_from[i]:e_to[i]], e_events[e_from[i]:e_to[i]],
                e_datas[e_from[i]:e_to[i]], e_max[i], e_expire[i]);
        END IF;
    END LOOP;
    RETURN ARRAY(SELECT id FROM unnest(p_ids) AS id WHERE NOT id = ANY (held));
END $$;

-- As version 9's, one run at a time in id order (each id once, as the join gave it).
CREATE OR REPLACE FUNCTION ss_renew(
    p_ids text[], p_owners text[], p_epochs bigint[], p_lease_ms bigint
) RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
    renewed text[] := '{}';
    got text;
    i integer;
BEGIN
    FOR i IN SELECT o FROM generate_subscripts(p_ids, 1) AS o ORDER BY p_ids[o] LOOP
        CONTINUE WHEN p_ids[i] = ANY (renewed);
        UPDATE runs SET lease_until = ss_now() + p_lease_ms
        WHERE id = p_ids[i] AND state || '' = 'RUN_STARTED' AND lease_owner = p_owners[i]
            AND epoch = p_epochs[i]
        RETURNING id INTO got;
        IF FOUND THEN
            renewed := renewed || got;
            RETURN NEXT got;
        END IF;
    END LOOP;
END $$;

-- As version 10's.
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
    PERFORM 1 FROM runs WHERE id = p_id AND state || '' = 'RUN_STARTED' AND lease_owner = p_owner
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

-- As version 11's.
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
    PERFORM 1 FROM runs WHERE id = p_id AND state || '' = 'RUN_STARTED' AND lease_owner = p_owner
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
