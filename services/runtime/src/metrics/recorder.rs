//! The process's one recorder, and the help text of every metric.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Buckets of every histogram, in seconds: 1 ms to 1 h.
const BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0,
    3600.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's recorder, installed on first use. `None` when another recorder
/// was installed first (then nothing of ours is recorded).
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let installed = PrometheusBuilder::new()
                .set_buckets(&BUCKETS)
                .and_then(PrometheusBuilder::install_recorder);
            match installed {
                Ok(handle) => {
                    describe();
                    Some(handle)
                }
                Err(error) => {
                    tracing::warn!(%error, "metrics recorder not installed");
                    None
                }
            }
        })
        .as_ref()
}

/// The metrics in Prometheus text format.
pub fn render() -> String {
    handle().map(PrometheusHandle::render).unwrap_or_default()
}

/// Help text of every metric jobmesh records (promtool wants it).
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "grpc_server_started_total",
        "gRPC calls started on the server"
    );
    describe_counter!(
        "grpc_server_handled_total",
        "gRPC calls completed on the server, by status code"
    );
    describe_histogram!(
        "grpc_server_handling_seconds",
        Unit::Seconds,
        "time from a call's start to its end on the server (a stream's whole life)"
    );
    describe_counter!(
        "grpc_server_msg_received_total",
        "gRPC messages received by the server (requests; a stream's every message)"
    );
    describe_counter!(
        "grpc_server_msg_sent_total",
        "gRPC messages sent by the server (responses; a stream's every message)"
    );
    describe_counter!(
        "grpc_client_started_total",
        "gRPC calls started by this service as a client"
    );
    describe_counter!(
        "grpc_client_msg_sent_total",
        "gRPC messages this service sent as a client"
    );
    describe_counter!(
        "grpc_client_msg_received_total",
        "gRPC messages this service received as a client"
    );
    describe_counter!(
        "grpc_client_handled_total",
        "gRPC calls this service made that completed, by status code"
    );
    describe_histogram!(
        "grpc_client_handling_seconds",
        Unit::Seconds,
        "time from a client call's start to its end (a stream's whole life)"
    );
    describe_counter!(
        "jobmesh_jobs_submitted_total",
        "jobs created (idempotent resubmissions not counted), by task"
    );
    describe_counter!(
        "jobmesh_jobs_finished_total",
        "jobs that reached a terminal state, by task and state"
    );
    describe_counter!(
        "jobmesh_job_retries_total",
        "attempts queued again after a retryable failure or a lost lease, by task"
    );
    describe_counter!(
        "jobmesh_job_cancellations_total",
        "jobs that ended CANCELLED, by task"
    );
    describe_counter!(
        "jobmesh_stale_reports_total",
        "reports or leases refused because their attempt is no longer current, by kind"
    );
    describe_counter!(
        "jobmesh_progress_reports_total",
        "progress reports, by path: coalesced (sent to watchers at once, the newest per job written each interval) or direct (written before the answer)"
    );
    describe_histogram!(
        "jobmesh_job_queue_wait_seconds",
        Unit::Seconds,
        "time from submission (or schedule time) to the start of the first attempt, by task"
    );
    describe_histogram!(
        "jobmesh_job_run_seconds",
        Unit::Seconds,
        "time from a job's first start to its end, by task and state"
    );
    describe_gauge!(
        "jobmesh_gateway_connections_open",
        "connections open on the gateway's listener"
    );
    describe_counter!(
        "jobmesh_gateway_connections_refused_total",
        "connections the gateway closed at once, over --max-connections (limit=\"total\") or --max-connections-per-peer (limit=\"peer\")"
    );
    describe_counter!(
        "jobmesh_gateway_connections_idle_closed_total",
        "connections the gateway closed after --idle-timeout-ms with no request open"
    );
    describe_gauge!(
        "jobmesh_outbox_rows",
        "committed jobs not yet published to JetStream"
    );
    describe_gauge!(
        "jobmesh_outbox_lag_seconds",
        "age of the oldest committed job not yet published to JetStream"
    );
    describe_gauge!(
        "jobmesh_postgres_pool_connections",
        "PostgreSQL connections of job-store's pool, by state (open, idle, max)"
    );
    describe_gauge!(
        "jobmesh_postgres_pool_waiting",
        "requests waiting for a PostgreSQL connection"
    );
    describe_counter!(
        "jobmesh_worker_reports_refused_total",
        "worker reports the dispatcher dropped: invalid (answered with refused) or about an attempt the worker does not hold (answered with a cancellation)"
    );
    describe_gauge!(
        "jobmesh_workers_connected",
        "workers connected to this dispatcher that offer a task, by task"
    );
    describe_gauge!(
        "jobmesh_worker_slots_free",
        "free slots of the connected workers, by task"
    );
    describe_gauge!(
        "jobmesh_jetstream_pending",
        "messages waiting in JetStream for a task (the backlog an autoscaler scales on)"
    );
    describe_counter!(
        "jobmesh_worker_attempts_total",
        "attempts a worker ran, by task and outcome (succeeded, failed, timed_out, cancelled, panicked)"
    );
    describe_gauge!(
        "jobmesh_dependency_up",
        "whether a service reaches a dependency (1) or not (0), by dependency"
    );
}
