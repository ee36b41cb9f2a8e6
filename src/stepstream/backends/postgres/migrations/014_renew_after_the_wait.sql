-- stepstream on PostgreSQL, version 14: a renewal that waits for a run's row renews from when
-- the wait ends.
--
-- ss_renew renewed each run with one UPDATE whose new lease_until (ss_now() + the lease) was
-- computed before the statement found the row locked by another transaction and waited. When
-- that transaction only locked the row (a save, an operator's SELECT ... FOR UPDATE), the value
-- computed before the wait is what was stored: after a wait longer than the lease, a lease
-- already over, answered as renewed. Another worker's claim could take the run over the next
-- moment while this worker, told its run was still its own, ran the step body on (seen: the
-- claim 1 ms after the renewal). Now each run's row is locked first (FOR UPDATE waits, then
-- reads the row as committed: a claim or cancel in flight decides), and its lease is computed
-- once the lock is held. Same arguments and answers as version 12's ss_renew.

CREATE OR REPLACE FUNCTION ss_renew(
    p_ids text[], p_owners text[], p_epochs bigint[], p_lease_ms bigint
) RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
    renewed text[] := '{}';
    i integer;
BEGIN
    FOR i IN SELECT o FROM generate_subscripts(p_ids, 1) AS o ORDER BY p_ids[o] LOOP
        CONTINUE WHEN p_ids[i] = ANY (renewed);
        PERFORM 1 FROM runs WHERE id = p_ids[i] AND state || '' = 'RUN_STARTED'
            AND lease_owner = p_owners[i] AND epoch = p_epochs[i] FOR UPDATE;
        CONTINUE WHEN NOT FOUND;
        UPDATE runs SET lease_until = ss_now() + p_lease_ms WHERE id = p_ids[i];
        renewed := renewed || p_ids[i];
        RETURN NEXT p_ids[i];
    END LOOP;
END $$;
