-- stepstream on PostgreSQL, version 9: lease renewal locks its runs in id order.
--
-- A group of step saves (ss_save_many, version 7) locks its runs in id order. ss_renew's
-- UPDATE locked them in the order its join happened to produce (the worker's order of claim,
-- or the table's), so a worker's heartbeat and its own group of saves could each hold a run
-- the other waited for: a deadlock, found only after deadlock_timeout (1 s) and then retried,
-- stalling up to 100 saves and the heartbeat. Taking the same locks first, in id order (the
-- runs it will renew, as ss_save_many takes them; NO KEY UPDATE is the lock the UPDATE takes
-- anyway), makes the later of the two wait for the earlier instead. Same signature and result,
-- so processes of earlier versions still running renew this way too.
CREATE OR REPLACE FUNCTION ss_renew(
    p_ids text[], p_owners text[], p_epochs bigint[], p_lease_ms bigint
) RETURNS SETOF text LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM runs r JOIN unnest(p_ids, p_owners, p_epochs) AS l(id, owner, epoch)
        ON r.id = l.id
        WHERE r.lease_owner = l.owner AND r.epoch = l.epoch AND r.state = 'RUN_STARTED'
        ORDER BY r.id FOR NO KEY UPDATE OF r;
    RETURN QUERY
    UPDATE runs r SET lease_until = ss_now() + p_lease_ms
    FROM unnest(p_ids, p_owners, p_epochs) AS l(id, owner, epoch)
    WHERE r.id = l.id AND r.lease_owner = l.owner AND r.epoch = l.epoch
        AND r.state = 'RUN_STARTED'
    RETURNING r.id;
END $$;
