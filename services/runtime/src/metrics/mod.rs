//! Prometheus metrics: one recorder per process (the `metrics` facade with the
//! Prometheus exporter), served as text at `GET /metrics` on `--metrics-listen`
//! ([`endpoint`]), and the gRPC server and client metrics of every service in the
//! go-grpc-prometheus style (`grpc_{server,client}_started_total`, `_handled_total`,
//! `_msg_received_total`, `_msg_sent_total`, `_handling_seconds`, each labelled
//! with `grpc_type`, `grpc_service` and `grpc_method`), recorded by one tower
//! layer on the server ([`server`]) and by [`crate::client::Channel`] on the
//! client, both counting messages with what they watch in a body ([`body`]).

pub(crate) mod body;
pub mod endpoint;
mod recorder;
pub(crate) mod rpc;
pub mod server;

use std::sync::OnceLock;

pub use endpoint::{MetricsConfig, bind, serve};
pub use recorder::{handle, render};
pub use server::GrpcMetricsLayer;

/// Most distinct `task` label values a process records. Task names come from
/// callers; the first this many get their own series, later ones share
/// `task="_other"`, so no caller can grow the series (and the memory behind
/// them) without bound by inventing task names.
pub const MAX_TASK_LABELS: usize = 1000;

/// The `task` label to record `task` under (see [`MAX_TASK_LABELS`]).
pub fn task_label(task: &str) -> String {
    static SEEN: OnceLock<std::sync::Mutex<std::collections::HashSet<String>>> = OnceLock::new();
    let mut seen = SEEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if seen.contains(task) {
        return task.to_owned();
    }
    if seen.len() < MAX_TASK_LABELS {
        seen.insert(task.to_owned());
        return task.to_owned();
    }
    OTHER_TASKS.to_owned()
}

/// The `task` label of the tasks beyond [`MAX_TASK_LABELS`].
pub const OTHER_TASKS: &str = "_other";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_labels_are_bounded() {
        for n in 0..MAX_TASK_LABELS {
            assert_eq!(task_label(&format!("t.{n}")), format!("t.{n}"));
        }
        assert_eq!(task_label("one.more"), OTHER_TASKS);
        assert_eq!(task_label("and.another"), OTHER_TASKS);
        assert_eq!(
            task_label("t.7"),
            "t.7",
            "a task seen before keeps its label"
        );
    }
}
