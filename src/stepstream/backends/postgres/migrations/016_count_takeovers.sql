-- stepstream on PostgreSQL, version 16: a claim counts the takeovers of a run in a row.
--
-- A run whose worker stalls past its lease every time it runs a step (blocking code in an
-- async def step holds up its event loop, heartbeats included; a step that kills its process)
-- was taken over and the step run again without end. A claim that takes a run over from an
-- expired lease now counts it: one more than the run's last takeover if that one left the run
-- at this epoch (no claim came between) with as many steps stored, else 1; any other claim
-- sets 0 (records.next_takeovers states the rule; the engine fails a run past a bound).
-- Same signature and answers as version 3's plus three columns, which processes of earlier
-- versions do not read.

ALTER TABLE runs ADD COLUMN takeovers integer NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN takeover_epoch bigint;
ALTER TABLE runs ADD COLUMN takeover_steps integer;

CREATE OR REPLACE FUNCTION ss_claim(
    p_owner text, p_lease_ms bigint, p_limit integer, p_workflows text[], p_exclude text[]
) RETURNS SETOF runs LANGUAGE plpgsql AS $$
DECLARE
    now_ms bigint := ss_now();
    taken integer;
BEGIN
    RETURN QUERY
    UPDATE runs r SET lease_owner = p_owner, lease_until = now_ms + p_lease_ms,
        epoch = r.epoch + 1,
        takeovers = CASE WHEN r.takeover_epoch = r.epoch AND r.takeover_steps = picked.steps
                         THEN r.takeovers + 1 ELSE 1 END,
        takeover_epoch = r.epoch + 1, takeover_steps = picked.steps
    FROM (SELECT id, (SELECT count(*) FROM steps s WHERE s.run_id = runs.id)::integer AS steps
          FROM runs
          WHERE state = 'RUN_STARTED' AND lease_owner IS NOT NULL AND lease_until < now_ms
            AND due_at <= now_ms AND workflow = ANY (p_workflows) AND NOT (id = ANY (p_exclude))
          ORDER BY lease_until LIMIT p_limit FOR UPDATE SKIP LOCKED) picked
    WHERE r.id = picked.id
    RETURNING r.*;
    GET DIAGNOSTICS taken = ROW_COUNT;
    IF taken < p_limit THEN
        RETURN QUERY
        UPDATE runs r SET lease_owner = p_owner, lease_until = now_ms + p_lease_ms,
            epoch = r.epoch + 1, takeovers = 0
        FROM (SELECT id FROM runs
              WHERE state = 'RUN_STARTED' AND lease_owner IS NULL AND due_at <= now_ms
                AND workflow = ANY (p_workflows) AND NOT (id = ANY (p_exclude))
              ORDER BY due_at LIMIT p_limit - taken FOR UPDATE SKIP LOCKED) picked
        WHERE r.id = picked.id
        RETURNING r.*;
    END IF;
END $$;
