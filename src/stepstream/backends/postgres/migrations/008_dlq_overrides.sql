-- 008: resuming a run with new headers and flow control (ResumeRun.headers / .flow in
-- backends/base.py: the QStash gateway's DLQ resume with overrides).
-- A new overload: the version 5 ss_resume_run stays, for processes of the previous release
-- still running during a rolling upgrade. It does the resume (locking the run, refusing one
-- that is not failed or canceled); the run's headers and flow (JSON texts written by Python,
-- never parsed here) are then replaced in the same transaction when given (NULL keeps them).
-- The slots and waiters of a former flow control key stay for the key's own clean-up: their
-- claim ended with the resume, so they count for nothing.
CREATE FUNCTION ss_resume_run(
    p_id text, p_timeout_at bigint, p_headers text, p_flow text,
    e_channels text[], e_events text[], e_datas text[], e_max bigint, e_expire bigint
) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM ss_resume_run(p_id, p_timeout_at, e_channels, e_events, e_datas, e_max, e_expire);
    IF p_headers IS NOT NULL OR p_flow IS NOT NULL THEN
        UPDATE runs SET headers = coalesce(p_headers, headers), flow = coalesce(p_flow, flow)
            WHERE id = p_id;
    END IF;
END $$;
