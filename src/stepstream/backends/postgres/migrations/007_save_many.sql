-- stepstream on PostgreSQL, version 7: group commit of step saves (backends/postgres/batch.py).
--
-- Under load most of a step's cost was its own transaction: a round trip, a commit and a WAL
-- flush per step. A process now sends the saves that queued while others were in flight as one
-- call of ss_save_many. Nothing else changes: processes of version 6 keep calling
-- ss_save_steps, which stays, and both lock a run's row before writing its steps.
--
-- Save the steps of several runs in one transaction (the Python side batches the writes that
-- wait while others are in flight: one commit, one round trip for all of them). Operation i
-- holds run p_ids[i] by claim (p_owners[i], p_epochs[i]); its steps are the entries of s_*
-- whose s_ops is i, its events e_*[e_from[i]:e_to[i]]. Runs are locked in id order (every
-- batch takes them in that order), steps saved by one statement, then each operation's events
-- appended. Returns the ids of the runs no longer held by their claim: nothing of theirs is
-- saved (what ss_fence refuses with SS001 one run at a time). Flow control slots are given
-- back by ss_save_steps only.
CREATE FUNCTION ss_save_many(
    p_ids text[], p_owners text[], p_epochs bigint[],
    s_ops integer[], s_positions integer[], s_states text[], s_resolved boolean[], s_outs text[],
    s_finished bigint[], s_datas text[],
    e_from integer[], e_to integer[], e_channels text[], e_events text[], e_datas text[],
    e_max bigint[], e_expire bigint[]
) RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
    held text[];
    i integer;
BEGIN
    held := ARRAY(
        SELECT r.id FROM runs r
        JOIN unnest(p_ids, p_owners, p_epochs) AS b(id, owner, epoch) ON r.id = b.id
        WHERE r.state = 'RUN_STARTED' AND r.lease_owner = b.owner AND r.epoch = b.epoch
        ORDER BY r.id FOR UPDATE OF r);
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
