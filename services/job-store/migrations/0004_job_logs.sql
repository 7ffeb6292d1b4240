-- Job logs. A job's lines are numbered from 1 across all its attempts; the head
-- row allocates the numbers (its row lock orders concurrent appends, so lines
-- commit in sequence order) and counts the bytes kept.
CREATE TABLE job_log_heads (
    job_id        uuid PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    next_sequence bigint NOT NULL,
    bytes         bigint NOT NULL,
    update_time   timestamptz NOT NULL DEFAULT now()
);
-- Retention finds heads that stopped changing long ago.
CREATE INDEX job_log_heads_update_time ON job_log_heads (update_time);

-- Lines are stored in chunks, one row per batch the dispatcher forwarded: a job
-- printing thousands of lines a second costs one row per batch, not per line.
-- Sequences of one job have no gaps except where the oldest chunks were dropped
-- (the per-job size limit), which is how readers learn what was dropped.
CREATE TABLE job_logs (
    job_id         uuid NOT NULL REFERENCES job_log_heads (job_id) ON DELETE CASCADE,
    first_sequence bigint NOT NULL,
    last_sequence  bigint NOT NULL,
    attempt        integer NOT NULL,
    bytes          integer NOT NULL,
    times          timestamptz[] NOT NULL,
    streams        smallint[] NOT NULL,
    truncated      boolean[] NOT NULL,
    lines          text[] NOT NULL,
    PRIMARY KEY (job_id, first_sequence)
);
