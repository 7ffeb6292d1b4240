//! Logs and traces. Logs are human-readable lines by default, JSON with
//! `JOBMESH_LOG_FORMAT=json` (with `trace_id` and `span_id` on every line written
//! inside a traced span, whether or not traces are exported); the level comes
//! from `RUST_LOG` (default `info`).
//!
//! Traces go to an OTLP collector over gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, configured by the standard
//! variables (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`,
//! `OTEL_TRACES_SAMPLER_ARG`, `OTEL_BSP_*`); nothing is exported otherwise, or with
//! `OTEL_TRACES_EXPORTER=none`. Spans are exported in batches from a bounded
//! queue by a background thread: a collector that is down costs dropped spans,
//! never a stalled or slowed service.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;

use crate::trace::services;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// Flushes and stops the trace exporter when dropped (keep it alive in `main`).
#[must_use = "traces are flushed when the guard is dropped"]
pub struct Guard(Option<SdkTracerProvider>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take()
            && let Err(error) = provider.shutdown()
        {
            tracing::debug!(%error, "trace exporter shutdown");
        }
    }
}

/// Whether the environment asks for trace export.
pub fn traces_configured() -> bool {
    let exporter_off = std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|e| e == "none");
    let endpoint = [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|k| std::env::var(k).is_ok_and(|v| !v.is_empty()));
    endpoint && !exporter_off
}

/// The tracer provider for `service`: exporting when export is configured, and
/// without an exporter when only JSON logs want trace ids (spans get ids and
/// context still propagates, nothing leaves the process). With `split`, spans are
/// exported under the service their `jobmesh.service` attribute names.
fn provider(
    service: &str,
    json_logs: bool,
    split: bool,
) -> Result<Option<SdkTracerProvider>, String> {
    let export = traces_configured();
    if !export && !json_logs {
        return Ok(None);
    }
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok();
    let mut resource = opentelemetry_sdk::Resource::builder();
    if !named {
        resource = resource.with_service_name(service.to_owned());
    }
    let mut builder = SdkTracerProvider::builder().with_resource(resource.build());
    if export {
        let otlp = || {
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build()
                .map_err(|e| e.to_string())
        };
        let mut exporters = vec![(None, otlp()?)];
        // A service name the user chose applies to everything.
        if split && !named {
            for name in [
                services::GATEWAY,
                services::JOB_STORE,
                services::DISPATCHER,
                services::WORKER,
            ] {
                exporters.push((Some(name), otlp()?));
            }
        }
        builder = builder.with_batch_exporter(ByService { exporters });
    }
    Ok(Some(builder.build()))
}

/// Exports each span under the `service.name` its `jobmesh.service` attribute
/// names (one OTLP exporter, with its own resource, per service), and removes
/// that attribute: it only says where a span belongs, which the resource says.
/// A span of no listed service goes to the first exporter, the process's own.
#[derive(Debug)]
struct ByService {
    exporters: Vec<(Option<&'static str>, opentelemetry_otlp::SpanExporter)>,
}

impl opentelemetry_sdk::trace::SpanExporter for ByService {
    async fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        let mut groups: Vec<Vec<_>> = self.exporters.iter().map(|_| Vec::new()).collect();
        for mut span in batch {
            let mut index = 0;
            span.attributes.retain(|attribute| {
                if attribute.key.as_str() != services::ATTRIBUTE {
                    return true;
                }
                let value = attribute.value.as_str();
                if let Some(found) = self
                    .exporters
                    .iter()
                    .position(|(name, _)| *name == Some(value.as_ref()))
                {
                    index = found;
                }
                false
            });
            groups[index].push(span);
        }
        let mut result = Ok(());
        for (group, (_, exporter)) in groups.into_iter().zip(&self.exporters) {
            if !group.is_empty()
                && let Err(error) = exporter.export(group).await
            {
                result = Err(error);
            }
        }
        result
    }

    fn shutdown_with_timeout(
        &self,
        timeout: std::time::Duration,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        let mut result = Ok(());
        for (_, exporter) in &self.exporters {
            if let Err(error) = exporter.shutdown_with_timeout(timeout) {
                result = Err(error);
            }
        }
        result
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        let mut result = Ok(());
        for (_, exporter) in &self.exporters {
            if let Err(error) = exporter.force_flush() {
                result = Err(error);
            }
        }
        result
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        for (name, exporter) in &mut self.exporters {
            match name {
                None => exporter.set_resource(resource),
                Some(name) => exporter.set_resource(
                    &opentelemetry_sdk::Resource::builder_empty()
                        .with_attributes(
                            resource
                                .iter()
                                .map(|(k, v)| opentelemetry::KeyValue::new(k.clone(), v.clone())),
                        )
                        .with_service_name(*name)
                        .build(),
                ),
            }
        }
    }
}

/// Installs the global subscriber (logs, and traces when configured) and the W3C
/// trace-context propagator. Later calls only return an empty guard, which tests
/// rely on.
pub fn init(service: &str) -> Guard {
    install(service, false)
}

/// [`init`] for a process that runs several services (`jobmesh dev`): each span
/// is exported under its own service's name (`jobmesh-gateway`,
/// `jobmesh-job-store`, …), as if each ran alone, unless `OTEL_SERVICE_NAME`
/// names one for all.
pub fn init_mesh(service: &str) -> Guard {
    install(service, true)
}

fn install(service: &str, split: bool) -> Guard {
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("JOBMESH_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let (provider, failure) = match provider(service, json, split) {
        Ok(provider) => (provider, None),
        Err(error) => (None, Some(error)),
    };
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("jobmesh")));
    let logs = if json {
        tracing_subscriber::fmt::layer()
            .event_format(TraceIds(
                tracing_subscriber::fmt::format()
                    .json()
                    .with_current_span(false)
                    .with_span_list(true),
            ))
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .boxed()
    } else {
        // Colours only on a terminal: files, pipes and container logs get plain text.
        tracing_subscriber::fmt::layer()
            .with_target(false)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .boxed()
    };
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(otel)
        .with(logs)
        .try_init();
    if installed.is_err() {
        // Someone (a test) installed a subscriber first: keep theirs.
        if let Some(provider) = provider {
            let _ = provider.shutdown();
        }
        return Guard(None);
    }
    if let Some(provider) = &provider {
        opentelemetry::global::set_tracer_provider(provider.clone());
        if traces_configured() {
            tracing::info!(service, "exporting traces over OTLP");
        }
    }
    if let Some(error) = failure {
        tracing::warn!(%error, "traces not exported: cannot build the OTLP exporter");
    }
    Guard(provider)
}

/// The JSON event format with the innermost span's `trace_id` and `span_id`
/// lifted to the top level of the line.
struct TraceIds<F>(F);

impl<S, N, F> FormatEvent<S, N> for TraceIds<F>
where
    F: FormatEvent<S, N>,
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        let Ok(serde_json::Value::Object(mut object)) = serde_json::from_str(line.trim_end())
        else {
            return writer.write_str(&line);
        };
        let ids = object
            .get("spans")
            .and_then(|s| s.as_array())
            .and_then(|spans| {
                spans.iter().rev().find_map(|span| {
                    Some((span.get("trace_id")?.clone(), span.get("span_id")?.clone()))
                })
            });
        if let Some((trace_id, span_id)) = ids {
            object.insert("trace_id".to_owned(), trace_id);
            object.insert("span_id".to_owned(), span_id);
        }
        let mut out = serde_json::to_string(&object).map_err(|_| std::fmt::Error)?;
        out.push('\n');
        writer.write_str(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_are_lifted_from_the_innermost_traced_span() {
        let inner = TraceIds(
            tracing_subscriber::fmt::format()
                .json()
                .with_span_list(true),
        );
        let captured = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
        let sink = std::sync::Arc::clone(&captured);
        let subscriber = tracing_subscriber::fmt()
            .event_format(inner)
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .with_writer(move || Sink(std::sync::Arc::clone(&sink)))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "call",
                trace_id = "4bf92f3577b34da6a3ce929d0e0e4736",
                span_id = "00f067aa0ba902b7"
            );
            let _entered = span.enter();
            tracing::info!(job_id = "j1", "leased");
        });
        let text = String::from_utf8(captured.lock().map(|b| b.clone()).unwrap_or_default())
            .unwrap_or_default();
        let line: serde_json::Value = serde_json::from_str(text.trim()).expect("json");
        assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(line["span_id"], "00f067aa0ba902b7");
        assert_eq!(line["fields"]["job_id"], "j1");
    }

    struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut bytes) = self.0.lock() {
                bytes.extend_from_slice(buf);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
