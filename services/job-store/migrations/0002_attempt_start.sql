-- When the current attempt was leased: the job-store side of execution timeouts
-- (a worker that neither finishes nor reports a timeout is overruled).
ALTER TABLE jobs ADD COLUMN attempt_start_time timestamptz;
CREATE INDEX jobs_running_timeout ON jobs (attempt_start_time)
    WHERE state = 'running' AND timeout_ms IS NOT NULL;
