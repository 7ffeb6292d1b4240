-- Jobs: the source of truth. Every state change goes through job-store and bumps
-- `version`; `attempt` fences every report from workers.
CREATE TABLE jobs (
    id                  uuid PRIMARY KEY,
    tenant              text NOT NULL,
    task                text NOT NULL,
    args                jsonb NOT NULL,
    state               text NOT NULL
        CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    progress_percent    integer NOT NULL DEFAULT 0,
    progress_message    text NOT NULL DEFAULT '',
    result              jsonb,
    error_message       text,
    error_retryable     boolean,
    error_attempt       integer,
    attempt             integer NOT NULL DEFAULT 1,
    max_attempts        integer NOT NULL,
    labels              jsonb NOT NULL DEFAULT '{}',
    priority            integer NOT NULL DEFAULT 0,
    timeout_ms          bigint,
    schedule_time       timestamptz,
    idempotency_key     text,
    retry_initial_ms    bigint NOT NULL,
    retry_max_ms        bigint NOT NULL,
    retry_multiplier    double precision NOT NULL,
    retry_jitter        double precision NOT NULL,
    cancel_requested    boolean NOT NULL DEFAULT false,
    cancel_request_time timestamptz,
    worker_id           text,
    lease_ms            bigint,
    lease_expires_at    timestamptz,
    create_time         timestamptz NOT NULL DEFAULT now(),
    start_time          timestamptz,
    finish_time         timestamptz,
    update_time         timestamptz NOT NULL DEFAULT now(),
    version             bigint NOT NULL DEFAULT 1
);

-- Listing is newest first per tenant (UUIDv7 ids sort by creation time).
CREATE INDEX jobs_tenant_id ON jobs (tenant, id DESC);
CREATE INDEX jobs_tenant_task_id ON jobs (tenant, task, id DESC);
CREATE INDEX jobs_tenant_state_id ON jobs (tenant, state, id DESC);
CREATE INDEX jobs_labels ON jobs USING gin (labels jsonb_path_ops);
CREATE UNIQUE INDEX jobs_tenant_idempotency_key ON jobs (tenant, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- The lease sweeper scans running jobs by expiry.
CREATE INDEX jobs_running_lease ON jobs (lease_expires_at) WHERE state = 'running';

-- Outbox: runnable attempts committed with the job, published to JetStream by the
-- relay and deleted once JetStream acknowledged them. A crash between commit and
-- publish leaves the row here, so the attempt is published later.
CREATE TABLE outbox (
    id           bigserial PRIMARY KEY,
    job_id       uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt      integer NOT NULL,
    task         text NOT NULL,
    available_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_available_at ON outbox (available_at, id);
