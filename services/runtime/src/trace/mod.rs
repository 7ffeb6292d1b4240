//! Trace context across services, in one place: W3C `traceparent` in and out of
//! gRPC metadata, HTTP headers and NATS message headers, and as a stored string
//! (job-store keeps each job's context so that work started later — a retry, a
//! delivery after a restart — joins the job's trace).
//!
//! Spans are `tracing` spans; the OpenTelemetry layer (installed by
//! [`crate::telemetry::init`] when an OTLP endpoint is configured) turns them into
//! OpenTelemetry spans. Without it every context here is empty and nothing is
//! propagated or exported.
//!
//! Every gRPC call's server span is opened by [`layer::SpanLayer`], the
//! outermost layer of every server's stack; a client channel opens its calls'
//! client spans with [`client_span`].

pub mod layer;

use std::collections::HashMap;

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

struct Metadata<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for Metadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        Vec::new()
    }
}

struct MetadataMut<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            value.parse(),
        ) {
            self.0.insert(key, value);
        }
    }
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        Vec::new()
    }
}

struct HeadersMut<'a>(&'a mut http::HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(key, value);
        }
    }
}

struct NatsHeaders<'a>(&'a async_nats::HeaderMap);

impl Extractor for NatsHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }
    fn keys(&self) -> Vec<&str> {
        Vec::new()
    }
}

struct NatsHeadersMut<'a>(&'a mut async_nats::HeaderMap);

impl Injector for NatsHeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

fn extract(extractor: &dyn Extractor) -> Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(extractor))
}

/// The context a gRPC caller sent.
pub fn from_metadata(metadata: &tonic::metadata::MetadataMap) -> Context {
    extract(&Metadata(metadata))
}

/// The context an HTTP/2 request carries in its headers (the server side of a
/// gRPC call, before tonic parsed it).
pub fn from_headers(headers: &http::HeaderMap) -> Context {
    extract(&Headers(headers))
}

/// The context a NATS message carries.
pub fn from_nats(headers: &async_nats::HeaderMap) -> Context {
    extract(&NatsHeaders(headers))
}

/// Adds `context` to outgoing gRPC metadata.
pub fn to_metadata(context: &Context, metadata: &mut tonic::metadata::MetadataMap) {
    if has_span(context) {
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(context, &mut MetadataMut(metadata));
        });
    }
}

/// Adds `context` to outgoing HTTP headers (replacing any `traceparent` there).
pub fn to_headers(context: &Context, headers: &mut http::HeaderMap) {
    if has_span(context) {
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(context, &mut HeadersMut(headers));
        });
    }
}

/// Adds `context` to outgoing NATS headers.
pub fn to_nats(context: &Context, headers: &mut async_nats::HeaderMap) {
    if has_span(context) {
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(context, &mut NatsHeadersMut(headers));
        });
    }
}

/// `context` as a `traceparent` string, to be stored; `None` without a span.
pub fn to_traceparent(context: &Context) -> Option<String> {
    if !has_span(context) {
        return None;
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(context, &mut carrier));
    carrier.remove("traceparent")
}

/// The context of a stored `traceparent` string.
pub fn from_traceparent(traceparent: &str) -> Context {
    let carrier: HashMap<String, String> =
        [("traceparent".to_owned(), traceparent.to_owned())].into();
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier))
}

/// The context of the current `tracing` span.
pub fn current() -> Context {
    tracing::Span::current().context()
}

/// Makes `span` a child of `parent` (when `parent` has a span) and records its
/// `trace_id` and `span_id` fields (declared empty by the caller), so JSON logs
/// inside it carry them.
pub fn adopt(span: &tracing::Span, parent: Context) {
    if has_span(&parent) {
        let _ = span.set_parent(parent);
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if span_context.is_valid() {
        span.record("trace_id", span_context.trace_id().to_string());
        span.record("span_id", span_context.span_id().to_string());
    }
}

/// Records which job (and attempt) the current server span is about, so a job's
/// spans can be found by `jobmesh.job_id` (the span declares the fields empty).
pub fn record_job(job_id: &str, task: Option<&str>, attempt: Option<i32>) {
    let span = tracing::Span::current();
    span.record("jobmesh.job_id", job_id);
    if let Some(task) = task {
        span.record("jobmesh.task", task);
    }
    if let Some(attempt) = attempt {
        span.record("jobmesh.attempt", attempt);
    }
}

/// Whether `context` holds a span (a trace to join).
pub fn has_span(context: &Context) -> bool {
    context.span().span_context().is_valid()
}

/// The `service.name` of each jobmesh service. A span carries the one it belongs
/// to in `jobmesh.service`, which the exporter turns into the resource's
/// `service.name` (so that `jobmesh dev`, one process, shows four services) and
/// removes from the span.
pub mod services {
    pub const GATEWAY: &str = "jobmesh-gateway";
    pub const JOB_STORE: &str = "jobmesh-job-store";
    pub const DISPATCHER: &str = "jobmesh-dispatcher";
    pub const WORKER: &str = "jobmesh-worker";
    /// The span attribute naming a span's service.
    pub const ATTRIBUTE: &str = "jobmesh.service";
}

/// The jobmesh service that serves the gRPC service `rpc_service`.
pub fn server_of(rpc_service: &str) -> &'static str {
    match rpc_service {
        "jobmesh.internal.v1.JobStoreService" => services::JOB_STORE,
        "jobmesh.internal.v1.DispatcherService" | "jobmesh.v1.WorkerService" => {
            services::DISPATCHER
        }
        _ => services::GATEWAY,
    }
}

/// Services whose calls are the roots of traces (the public API a user calls).
/// Only they start traces; every other call is traced only inside one (an
/// internal call on a job's behalf): health probes, reflection, lease renewals
/// and worker sessions would otherwise bury the jobs' traces under their own.
pub fn starts_traces(service: &str) -> bool {
    matches!(service, "jobmesh.v1.JobService" | "jobmesh.v1.TaskService")
}

/// Whether a call that ended with `code` marks its span as an error (OpenTelemetry's
/// gRPC conventions): on the server only the codes that are its own fault
/// (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS) —
/// a NOT_FOUND or INVALID_ARGUMENT is the caller's, and Jaeger would show every
/// refused request as a failure; on the client every code but OK.
fn is_span_error(side: crate::call::Side, code: usize) -> bool {
    match side {
        crate::call::Side::Client => code != 0,
        crate::call::Side::Server => matches!(code, 2 | 4 | 12 | 13 | 14 | 15),
    }
}

/// Records the end of the call of `span` (a server or client span) with the
/// gRPC status `code` (its number): `rpc.grpc.status_code`, and the span's
/// status when the code is an error on that side.
pub(crate) fn record_status(span: &tracing::Span, side: crate::call::Side, code: usize) {
    span.record("rpc.grpc.status_code", code as i64);
    if is_span_error(side, code) {
        span.record("otel.status_code", "ERROR");
    }
}

/// What a span watches in its call's response body ([`crate::body::Watch`]):
/// the code the call ends with, recorded on the span.
pub(crate) struct SpanEnd {
    pub(crate) span: tracing::Span,
    pub(crate) side: crate::call::Side,
}

impl crate::body::Watch for SpanEnd {
    fn end(&mut self, code: &str) {
        record_status(&self.span, self.side, crate::call::code_number(code));
    }
}

/// Marks a gRPC request that the gateway's REST shim made in-process for a REST
/// call (a request extension): its span is `internal`, a child of the REST call's
/// HTTP server span, rather than a second server span.
#[derive(Clone, Copy, Debug)]
pub struct Transcoded;

/// The server span of a gRPC call to `service`/`method`, a child of `parent`
/// (OpenTelemetry's RPC conventions: named `service/method`, `rpc.*` attributes;
/// the status code is recorded when the call ends).
pub fn server_span(
    service: &str,
    method: &str,
    parent: Context,
    transcoded: bool,
) -> tracing::Span {
    let span = tracing::info_span!(
        "grpc.server",
        otel.name = %format!("{service}/{method}"),
        otel.kind = if transcoded { "internal" } else { "server" },
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        rpc.grpc.status_code = tracing::field::Empty,
        jobmesh.job_id = tracing::field::Empty,
        jobmesh.task = tracing::field::Empty,
        jobmesh.attempt = tracing::field::Empty,
        jobmesh.service = server_of(service),
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    adopt(&span, parent);
    span
}

/// The client span of a call `caller` makes to `service`/`method`, when the
/// request carries a trace context (a call made inside a trace): a child of that
/// context, which the request then carries instead, so the server's span is the
/// client span's child. No span (and the headers unchanged) otherwise.
pub fn client_span(
    caller: &'static str,
    service: &str,
    method: &str,
    server: &http::Uri,
    headers: &mut http::HeaderMap,
) -> tracing::Span {
    let parent = from_headers(headers);
    if !has_span(&parent) {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "grpc.client",
        otel.name = %format!("{service}/{method}"),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        rpc.grpc.status_code = tracing::field::Empty,
        server.address = server.host().unwrap_or_default(),
        server.port = server.port_u16().map(i64::from),
        jobmesh.service = caller,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    adopt(&span, parent);
    to_headers(&span.context(), headers);
    span
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::Side;

    #[test]
    fn only_server_faults_mark_server_spans_as_errors() {
        for (code, server, client) in [
            (0, false, false),
            (3, false, true),
            (5, false, true),
            (7, false, true),
            (8, false, true),
            (9, false, true),
            (2, true, true),
            (4, true, true),
            (12, true, true),
            (13, true, true),
            (14, true, true),
            (15, true, true),
        ] {
            assert_eq!(is_span_error(Side::Server, code), server, "server {code}");
            assert_eq!(is_span_error(Side::Client, code), client, "client {code}");
        }
    }
}
