//! The label set and metric handles of each gRPC method, and the status codes by
//! name, shared by the server layer and the client channel.

use std::sync::OnceLock;
use std::time::Duration;

use crate::call::Side;
#[cfg(test)]
use crate::call::code_number;

/// One gRPC method's labels and metric handles, made once per process: a call
/// costs one map lookup and a few atomic increments, and the label values are
/// bounded by the methods jobmesh serves (a path it does not serve is labelled
/// `unknown`, so no caller can grow the series without bound).
pub(crate) struct Method {
    pub(crate) service: String,
    pub(crate) method: String,
    /// `unary`, `client_stream`, `server_stream` or `bidi_stream`.
    pub(crate) kind: &'static str,
    server: SideMetrics,
    client: SideMetrics,
}

/// The handles of one side of a method, each registered on first use (a
/// service shows only the metrics of the calls it serves or makes).
#[derive(Default)]
struct SideMetrics {
    started: OnceLock<metrics::Counter>,
    requests: OnceLock<metrics::Counter>,
    responses: OnceLock<metrics::Counter>,
    handled: [OnceLock<metrics::Counter>; 17],
    seconds: OnceLock<metrics::Histogram>,
}

impl Method {
    fn new(service: &str, method: &str, kind: &'static str) -> Self {
        Self {
            service: service.to_owned(),
            method: method.to_owned(),
            kind,
            server: SideMetrics::default(),
            client: SideMetrics::default(),
        }
    }

    /// The method called at `path` (`/package.Service/Method`).
    pub(crate) fn of(path: &str) -> &'static Method {
        static METHODS: OnceLock<std::collections::HashMap<String, Method>> = OnceLock::new();
        static UNKNOWN: OnceLock<Method> = OnceLock::new();
        METHODS
            .get_or_init(known_methods)
            .get(path.trim_start_matches('/'))
            .unwrap_or_else(|| UNKNOWN.get_or_init(|| Method::new("unknown", "unknown", "unary")))
    }

    fn side(&self, side: Side) -> &SideMetrics {
        match side {
            Side::Server => &self.server,
            Side::Client => &self.client,
        }
    }

    fn counter<'a>(
        &self,
        cell: &'a OnceLock<metrics::Counter>,
        name: &'static str,
    ) -> &'a metrics::Counter {
        cell.get_or_init(|| {
            metrics::counter!(
                name,
                "grpc_type" => self.kind,
                "grpc_service" => self.service.clone(),
                "grpc_method" => self.method.clone()
            )
        })
    }

    pub(crate) fn started(&self, side: Side) -> &metrics::Counter {
        let name = match side {
            Side::Server => "grpc_server_started_total",
            Side::Client => "grpc_client_started_total",
        };
        self.counter(&self.side(side).started, name)
    }

    /// Messages of the request: received by a server, sent by a client.
    pub(crate) fn requests(&self, side: Side) -> &metrics::Counter {
        let name = match side {
            Side::Server => "grpc_server_msg_received_total",
            Side::Client => "grpc_client_msg_sent_total",
        };
        self.counter(&self.side(side).requests, name)
    }

    /// Messages of the response: sent by a server, received by a client.
    pub(crate) fn responses(&self, side: Side) -> &metrics::Counter {
        let name = match side {
            Side::Server => "grpc_server_msg_sent_total",
            Side::Client => "grpc_client_msg_received_total",
        };
        self.counter(&self.side(side).responses, name)
    }

    /// Records the end of a call with status `code` (its number) after `elapsed`.
    pub(crate) fn handled(&self, side: Side, code: usize, elapsed: Duration) {
        let (handled, seconds) = match side {
            Side::Server => ("grpc_server_handled_total", "grpc_server_handling_seconds"),
            Side::Client => ("grpc_client_handled_total", "grpc_client_handling_seconds"),
        };
        let metrics = self.side(side);
        let code = code.min(metrics.handled.len() - 1);
        metrics.handled[code]
            .get_or_init(|| {
                metrics::counter!(
                    handled,
                    "grpc_type" => self.kind,
                    "grpc_service" => self.service.clone(),
                    "grpc_method" => self.method.clone(),
                    "grpc_code" => CODE_NAMES[code]
                )
            })
            .increment(1);
        metrics
            .seconds
            .get_or_init(|| {
                metrics::histogram!(
                    seconds,
                    "grpc_type" => self.kind,
                    "grpc_service" => self.service.clone(),
                    "grpc_method" => self.method.clone()
                )
            })
            .record(elapsed.as_secs_f64());
    }
}

/// Every method jobmesh serves or calls, with its go-grpc-prometheus `grpc_type`,
/// from the descriptors of its services plus health and reflection.
fn known_methods() -> std::collections::HashMap<String, Method> {
    use prost::Message as _;
    let mut methods = std::collections::HashMap::new();
    let set = prost_types::FileDescriptorSet::decode(jobmesh_proto::FILE_DESCRIPTOR_SET)
        .unwrap_or_default();
    for file in &set.file {
        for svc in &file.service {
            let service = format!("{}.{}", file.package(), svc.name());
            for m in &svc.method {
                let kind = match (m.client_streaming(), m.server_streaming()) {
                    (false, false) => "unary",
                    (true, false) => "client_stream",
                    (false, true) => "server_stream",
                    (true, true) => "bidi_stream",
                };
                methods.insert(
                    format!("{service}/{}", m.name()),
                    Method::new(&service, m.name(), kind),
                );
            }
        }
    }
    for (service, method, kind) in [
        ("grpc.health.v1.Health", "Check", "unary"),
        ("grpc.health.v1.Health", "Watch", "server_stream"),
        (
            "grpc.reflection.v1.ServerReflection",
            "ServerReflectionInfo",
            "bidi_stream",
        ),
        (
            "grpc.reflection.v1alpha.ServerReflection",
            "ServerReflectionInfo",
            "bidi_stream",
        ),
    ] {
        methods.insert(
            format!("{service}/{method}"),
            Method::new(service, method, kind),
        );
    }
    methods
}

/// The gRPC code names go-grpc-prometheus uses, by code number.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_and_their_types_come_from_the_descriptors() {
        for (path, service, method, kind) in [
            (
                "/jobmesh.v1.JobService/SubmitJob",
                "jobmesh.v1.JobService",
                "SubmitJob",
                "unary",
            ),
            (
                "/jobmesh.v1.JobService/WatchJob",
                "jobmesh.v1.JobService",
                "WatchJob",
                "server_stream",
            ),
            (
                "/jobmesh.v1.WorkerService/Connect",
                "jobmesh.v1.WorkerService",
                "Connect",
                "bidi_stream",
            ),
            (
                "/jobmesh.internal.v1.JobStoreService/LeaseJob",
                "jobmesh.internal.v1.JobStoreService",
                "LeaseJob",
                "unary",
            ),
            (
                "/grpc.health.v1.Health/Watch",
                "grpc.health.v1.Health",
                "Watch",
                "server_stream",
            ),
            // Paths jobmesh does not serve share one label set, whatever a caller sends.
            ("/jobmesh.v1.JobService/Nope", "unknown", "unknown", "unary"),
            ("/x/y/z", "unknown", "unknown", "unary"),
        ] {
            let m = Method::of(path);
            assert_eq!(
                (m.service.as_str(), m.method.as_str(), m.kind),
                (service, method, kind),
                "{path}"
            );
        }
        assert!(std::ptr::eq(Method::of("/a/b"), Method::of("/c/d")));
    }

    #[test]
    fn status_codes_have_their_names() {
        assert_eq!(CODE_NAMES[code_number("0")], "OK");
        assert_eq!(CODE_NAMES[code_number("8")], "ResourceExhausted");
        assert_eq!(CODE_NAMES[code_number("16")], "Unauthenticated");
        for odd in ["17", "x", "", "-1"] {
            assert_eq!(CODE_NAMES[code_number(odd)], "Unknown", "{odd:?}");
        }
    }
}
