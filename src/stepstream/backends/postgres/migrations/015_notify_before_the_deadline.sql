-- stepstream on PostgreSQL, version 15: a notify finds no waiter in a wait whose deadline has
-- passed.
--
-- A wait's run is due at its deadline; the worker that takes it then records the wait as timed
-- out, from the steps it read when it claimed the run. A notify in between resolved the step
-- and counted it as woken, and the worker's save then replaced the step: notify said 1, the run
-- said timed out, and the event's data was gone. Past its deadline a wait has timed out,
-- whether or not its worker has recorded that yet: the notify leaves it (with a run id, the
-- event is kept for that run's next wait for it, as for a notify that comes early). It also
-- locks each waiting run before that run's wait row, the order in which a run that ends takes
-- them: version 3 deleted every wait row of the event first, deadlocked with runs ending (a
-- notify to 1,000 waiters while some timed out), and its retry, a second later, found the
-- deadlines of more of them passed. Same signature and answers as version 3's, so processes
-- of earlier versions get this too.

CREATE OR REPLACE FUNCTION ss_notify(p_event text, p_raw text, p_run text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    state_now text;
    w record;
    woken integer := 0;
    deadline bigint;
BEGIN
    IF p_run IS NOT NULL THEN
        -- Locked, so the run's own wait_event (which locks it too) comes wholly before or after.
        SELECT state INTO state_now FROM runs WHERE id = p_run FOR UPDATE;
        IF NOT FOUND THEN
            RAISE EXCEPTION '%', p_run USING ERRCODE = 'SS003';
        END IF;
        IF state_now <> 'RUN_STARTED' THEN
            RAISE EXCEPTION 'run % already finished (%); nothing can wait anymore',
                p_run, state_now USING ERRCODE = 'SS002';
        END IF;
    END IF;
    FOR w IN
        SELECT run_id, position FROM waits
            WHERE event_id = p_event AND (p_run IS NULL OR run_id = p_run)
            ORDER BY run_id, position
    LOOP
        -- The run's lock before its wait's row, as a run that ends takes them (ss_close):
        -- version 3 deleted every wait of the event first, and deadlocked with runs ending.
        PERFORM 1 FROM runs WHERE id = w.run_id FOR UPDATE;
        DELETE FROM waits WHERE event_id = p_event AND run_id = w.run_id
            AND position = w.position;
        CONTINUE WHEN NOT FOUND;  -- taken meanwhile: by another notify, or the run's end
        SELECT (data::json ->> 'wake_at')::bigint INTO deadline FROM steps
            WHERE run_id = w.run_id AND position = w.position;
        -- Timed out already, by the time now (its run's lock held): a worker may have taken
        -- the run at its deadline while this loop went through the waits before it.
        CONTINUE WHEN deadline IS NOT NULL AND deadline <= ss_now();
        IF ss_resolve(w.run_id, w.position, p_raw) THEN
            woken := woken + 1;
        END IF;
    END LOOP;
    IF woken = 0 AND p_run IS NOT NULL THEN
        INSERT INTO lookback (run_id, event_id, data) VALUES (p_run, p_event, p_raw)
            ON CONFLICT (run_id, event_id) DO UPDATE SET data = excluded.data;
    END IF;
    RETURN woken;
END $$;
