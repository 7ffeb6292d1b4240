//! Trace context across services, in one place: W3C `traceparent` in and out of
//! gRPC metadata, HTTP headers and NATS message headers, and as a stored string
//! (job-store keeps each job's context so that work started later — a retry, a
//! delivery after a restart — joins the job's trace).
//!
//! Spans are `tracing` spans; the OpenTelemetry layer (installed by
//! [`crate::telemetry::init`] when an OTLP endpoint is configured) turns them into
//! OpenTelemetry spans. Without it every context here is empty and nothing is
//! propagated or exported.

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
