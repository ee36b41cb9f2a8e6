-- stepstream on PostgreSQL, version 13: renewing a worker's leases takes part in no lock cycle.
--
-- A save that gives a flow control slot back locks its own run, then the waiter it wakes
-- (ss_free_slot). A heartbeat (ss_renew) locked every run its worker holds, in id order, in
-- one transaction. When the worker held both runs and the waiter's id came first, the
-- heartbeat held the waiter and waited for the saving run while the save held that run and
-- waited for the waiter: a lock cycle, which PostgreSQL ends after deadlock_timeout (a second)
-- by rolling one of them back.
--
-- ss_heartbeat renews as ss_renew does, but passes over a run that another transaction holds
-- locked (FOR UPDATE SKIP LOCKED), so it never waits, and a transaction that never waits is
-- part of no cycle. A run passed over is returned as busy when, as last committed, it is still
-- this claim's; runs that are not this claim's are neither returned nor locked, as in version
-- 12. The backend then renews each busy run on its own, with ss_renew in a transaction of its
-- own, which waits for the change in flight and so answers what it decided (a claim taking the
-- run over, a cancel): a transaction that holds no lock while it waits closes no cycle
-- either. ss_renew is unchanged, so processes of version 12 renew as before.

CREATE FUNCTION ss_heartbeat(
    p_ids text[], p_owners text[], p_epochs bigint[], p_lease_ms bigint
) RETURNS TABLE (run_id text, busy boolean) LANGUAGE plpgsql AS $$
DECLARE
    seen text[] := '{}';  -- renewed or reported busy: a repeated id is looked at once
    i integer;
BEGIN
    FOR i IN SELECT o FROM generate_subscripts(p_ids, 1) AS o ORDER BY p_ids[o] LOOP
        CONTINUE WHEN p_ids[i] = ANY (seen);
        PERFORM 1 FROM runs WHERE id = p_ids[i] AND state || '' = 'RUN_STARTED'
            AND lease_owner = p_owners[i] AND epoch = p_epochs[i] FOR UPDATE SKIP LOCKED;
        IF FOUND THEN
            UPDATE runs SET lease_until = ss_now() + p_lease_ms WHERE id = p_ids[i];
            busy := false;
        ELSE
            -- Not this claim's, or locked by another transaction: the committed row says which.
            PERFORM 1 FROM runs WHERE id = p_ids[i] AND state || '' = 'RUN_STARTED'
                AND lease_owner = p_owners[i] AND epoch = p_epochs[i];
            CONTINUE WHEN NOT FOUND;
            busy := true;
        END IF;
        seen := seen || p_ids[i];
        run_id := p_ids[i];
        RETURN NEXT;
    END LOOP;
END $$;
