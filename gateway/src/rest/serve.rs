//! A REST request from its route to its answer: the dashboard and the OpenAPI
//! document, the route lookup, authentication before the body is read, the
//! body's bounded read, the call; and the call's HTTP server span.

use std::convert::Infallible;

use http::{HeaderValue, StatusCode, header};
use jobmesh_runtime::call::{HttpRequest, HttpResponse};
use tonic::Code;
use tracing::Instrument as _;

use super::errors::{Refusal, refusal, status_response};
use super::routes::{Lookup, Route};
use super::transcode::{metadata, transcode};
use super::{OPENAPI_PATH, Shim, call::call};

pub(super) async fn handle<S>(shim: &Shim, inner: S, request: HttpRequest) -> HttpResponse
where
    S: tower::Service<HttpRequest, Response = HttpResponse, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    // tonic's own Grpc-Timeout timer started when the request arrived.
    let arrived = std::time::Instant::now();
    let path = request.uri().path().to_owned();
    if path == "/ui" || path.starts_with(crate::ui::PREFIX) {
        return crate::ui::serve(request.method(), &path, &shim.ui);
    }
    if path == OPENAPI_PATH {
        return if request.method() == http::Method::GET {
            let mut response = http::Response::new(tonic::body::Body::new(
                http_body_util::Full::new(shim.openapi.clone()),
            ));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        } else {
            refusal(Refusal::new(
                StatusCode::METHOD_NOT_ALLOWED,
                Code::Unimplemented,
                "Method Not Allowed",
            ))
        };
    }
    let (route, bound) = match shim.table.lookup(request.method(), &path) {
        Lookup::Found(route, bound) => (route, bound),
        Lookup::WrongMethod(allow) => {
            let mut response = refusal(Refusal::new(
                StatusCode::METHOD_NOT_ALLOWED,
                Code::Unimplemented,
                format!(
                    "Method Not Allowed: {} takes {allow}",
                    jobmesh_runtime::quote::quoted(&path)
                ),
            ));
            if let Ok(value) = HeaderValue::from_str(&allow) {
                response.headers_mut().insert(header::ALLOW, value);
            }
            return response;
        }
        Lookup::NotFound => {
            return refusal(Refusal::new(
                StatusCode::NOT_FOUND,
                Code::NotFound,
                "Not Found",
            ));
        }
    };
    // The REST call's HTTP server span (OpenTelemetry's HTTP conventions), a
    // child of the caller's `traceparent`; the gRPC call it becomes is its child.
    let span = http_span(route, &request);
    let response = serve_route(shim, inner, request, route, bound, arrived)
        .instrument(span.clone())
        .await;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    response
}

/// The HTTP server span of a REST call to `route`.
fn http_span(route: &Route, request: &HttpRequest) -> tracing::Span {
    let span = tracing::info_span!(
        "http.server",
        otel.name = %format!("{} {}", route.method, route.template),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %route.method,
        http.route = %route.template,
        url.path = request.uri().path(),
        url.scheme = "http",
        user_agent.original = request
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok()),
        http.response.status_code = tracing::field::Empty,
        jobmesh.service = jobmesh_runtime::trace::services::GATEWAY,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    jobmesh_runtime::trace::adopt(
        &span,
        jobmesh_runtime::trace::from_headers(request.headers()),
    );
    span
}

/// Serves a REST call to `route`: authentication, the body, the gRPC call.
async fn serve_route<S>(
    shim: &Shim,
    inner: S,
    request: HttpRequest,
    route: &Route,
    bound: Vec<(String, String)>,
    arrived: std::time::Instant,
) -> HttpResponse
where
    S: tower::Service<HttpRequest, Response = HttpResponse, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    // A caller without valid credentials is refused before its body is read: it
    // cannot hold a read slot by sending slowly.
    let caller = match &shim.auth {
        Some(auth) => {
            let credentials = match metadata(request.headers()) {
                Ok(credentials) => credentials,
                Err(refused) => return refusal(refused),
            };
            match auth.authenticate(&credentials) {
                Ok(caller) => caller,
                Err(status) => {
                    crate::limits::drain(request.into_body()).await;
                    return status_response(&status);
                }
            }
        }
        None => jobmesh_auth::Caller::anonymous(),
    };
    let reading = match shim.reads.take(crate::limits::tenant_key(&caller)) {
        Ok(reading) => reading,
        Err(status) => {
            crate::limits::drain(request.into_body()).await;
            return status_response(&status);
        }
    };
    let transcoded = tokio::time::timeout(shim.body_timeout, transcode(route, bound, request))
        .await
        .unwrap_or_else(|_| {
            Err(Refusal::new(
                StatusCode::REQUEST_TIMEOUT,
                Code::DeadlineExceeded,
                format!(
                    "the request body did not arrive within {} ms",
                    shim.body_timeout.as_millis()
                ),
            ))
        });
    drop(reading);
    match transcoded {
        Ok((message, metadata)) => call(route, inner, message, metadata, arrived).await,
        Err(refused) => refusal(refused),
    }
}
