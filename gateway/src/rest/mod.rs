//! The REST shim, grpc-gateway compatible, served on the gRPC port: requests whose
//! content type is not `application/grpc*` are transcoded from JSON to protobuf
//! with the descriptors built with the code (prost-reflect), sent in-process
//! through the same gRPC services (so authentication, validation, limits and
//! deadlines are the gRPC ones), and the answer transcoded back to proto3
//! canonical JSON. Errors use grpc-gateway's body and status table; server
//! streams are newline-delimited JSON.

mod codec;
pub(crate) mod openapi;
pub(crate) mod routes;

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::StreamExt as _;
use futures::future::{BoxFuture, FutureExt as _};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body_util::{BodyExt as _, Limited, StreamBody};
use jobmesh_runtime::grpc::MAX_MESSAGE_BYTES;

use crate::MAX_REQUEST_BYTES;
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, SerializeOptions};
use tonic::{Code, Status};
use tracing::Instrument as _;

use crate::limits::RETRY_AFTER;
use routes::{Lookup, Route, Table};

use jobmesh_runtime::grpc::{HttpRequest, HttpResponse};

/// Content type of streamed responses: one JSON object per line.
pub(crate) const NDJSON: &str = "application/x-ndjson";

/// Path of the generated OpenAPI document.
pub(crate) const OPENAPI_PATH: &str = "/openapi.json";

/// What the shim knows, built once at start-up.
pub(crate) struct Shim {
    table: Table,
    openapi: Bytes,
    /// Request bodies being read and transcoded. A body is read before the call
    /// reaches the in-flight cap, so limits of the same size bound the reads (and
    /// the memory they hold: at most that many bodies of up to 4 MiB), in all and
    /// per tenant.
    reads: Arc<crate::limits::Shares>,
    /// Callers are authenticated before their body is read, and have
    /// `body_timeout` to send it.
    auth: Option<jobmesh_runtime::auth::Authenticator>,
    body_timeout: std::time::Duration,
    /// What the dashboard's pages are told (`/ui/config.json`).
    ui: crate::ui::Settings,
}

impl Shim {
    /// Routes for `services` from the descriptor set built with the code; at
    /// most `reads` request bodies are read at once.
    pub(crate) fn new(
        services: &[&str],
        reads: Arc<crate::limits::Shares>,
    ) -> Result<Self, routes::TableError> {
        let pool = DescriptorPool::decode(jobmesh_proto::FILE_DESCRIPTOR_SET)?;
        let table = Table::build(&pool, services)?;
        let openapi = Bytes::from(openapi::document(&table));
        Ok(Self {
            table,
            openapi,
            reads,
            auth: None,
            body_timeout: std::time::Duration::from_secs(5),
            ui: crate::ui::Settings::default(),
        })
    }

    /// The shim refusing callers without valid credentials before it reads their
    /// body, and bodies that take longer than `body_timeout`.
    /// The shim telling the dashboard `ui`.
    pub(crate) fn with_ui(mut self, ui: crate::ui::Settings) -> Self {
        self.ui = ui;
        self
    }

    pub(crate) fn guarded(
        mut self,
        auth: jobmesh_runtime::auth::Authenticator,
        body_timeout: std::time::Duration,
    ) -> Self {
        self.auth = Some(auth);
        self.body_timeout = body_timeout;
        self
    }
}

/// Installs the shim in front of the gRPC routes.
#[derive(Clone)]
pub(crate) struct RestLayer(Arc<Shim>);

impl RestLayer {
    pub(crate) fn new(shim: Shim) -> Self {
        Self(Arc::new(shim))
    }
}

impl<S> tower::Layer<S> for RestLayer {
    type Service = Rest<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Rest {
            inner,
            shim: Arc::clone(&self.0),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Rest<S> {
    inner: S,
    shim: Arc<Shim>,
}

impl<S> tower::Service<HttpRequest> for Rest<S>
where
    S: tower::Service<HttpRequest, Response = HttpResponse, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<HttpResponse, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: HttpRequest) -> Self::Future {
        let inner = jobmesh_runtime::grpc::take_ready(&mut self.inner);
        if jobmesh_runtime::grpc::is_grpc(request.headers()) {
            let mut inner = inner;
            return inner.call(request).boxed();
        }
        let shim = Arc::clone(&self.shim);
        // tonic's own Grpc-Timeout timer wraps every service of the server, this
        // one included, and answers in gRPC framing (a REST caller would see 200
        // and an empty body). This timer ends a millisecond earlier, in the same
        // task, and is polled first: a REST caller always gets a REST answer.
        let limit = jobmesh_runtime::grpc::header_deadline(request.headers())
            .map(|d| d.saturating_sub(std::time::Duration::from_millis(1)));
        async move {
            let handling = handle(&shim, inner, request);
            Ok(match limit {
                Some(limit) => tokio::time::timeout(limit, handling)
                    .await
                    .unwrap_or_else(|_| {
                        status_response(&Status::deadline_exceeded(
                            "the call did not finish within its Grpc-Timeout",
                        ))
                    }),
                None => handling.await,
            })
        }
        .boxed()
    }
}

/// A refusal of the shim itself (before any RPC ran), with its HTTP status.
struct Refusal {
    http: StatusCode,
    code: Code,
    message: String,
    /// The `ErrorInfo` reason, when more precise than the code's.
    reason: Option<&'static str>,
}

impl Refusal {
    fn new(http: StatusCode, code: Code, message: impl Into<String>) -> Self {
        Self {
            http,
            code,
            message: message.into(),
            reason: None,
        }
    }

    fn because(mut self, reason: &'static str) -> Self {
        self.reason = Some(reason);
        self
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, Code::InvalidArgument, message)
    }
}

async fn handle<S>(shim: &Shim, inner: S, request: HttpRequest) -> HttpResponse
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
        None => jobmesh_runtime::auth::Caller::anonymous(),
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

/// The request message and metadata of an HTTP request.
async fn transcode(
    route: &Route,
    bound: Vec<(String, String)>,
    request: HttpRequest,
) -> Result<(DynamicMessage, tonic::metadata::MetadataMap), Refusal> {
    let (parts, body) = request.into_parts();
    let metadata = metadata(&parts.headers)?;
    let too_large = || {
        Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            Code::ResourceExhausted,
            format!("the request body is larger than {MAX_REQUEST_BYTES} bytes"),
        )
        .because(jobmesh_runtime::errors::REQUEST_TOO_LARGE)
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_REQUEST_BYTES as u64) {
        return Err(too_large());
    }
    let body = Limited::new(body, MAX_REQUEST_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                too_large()
            } else {
                Refusal::bad_request(format!("cannot read the request body: {e}"))
            }
        })?
        .to_bytes();

    let input = route.rpc.input();
    let mut message = DynamicMessage::new(input.clone());
    if !body.is_empty() && !route.body.is_empty() {
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_ascii_lowercase()
            });
        // Like grpc-gateway's wildcard marshaler, a body that is JSON is read as
        // JSON whatever its type says (`curl -d '{...}'` sends form encoding);
        // only a body that is not JSON under another type is refused as such.
        let not_json = |t: &String| {
            t != "application/json"
                && serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err()
        };
        if let Some(found) = content_type.filter(not_json) {
            return Err(Refusal::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Code::InvalidArgument,
                format!(
                    "the body must be JSON: send Content-Type: application/json (got {})",
                    jobmesh_runtime::quote::quoted(&found)
                ),
            ));
        }
        let options = DeserializeOptions::new().deny_unknown_fields(true);
        let mut json = serde_json::Deserializer::from_slice(&body);
        let parse = |json: &mut serde_json::Deserializer<_>, desc| {
            let message = DynamicMessage::deserialize_with_options(desc, &mut *json, &options)?;
            json.end()?;
            Ok::<_, serde_json::Error>(message)
        };
        if route.body == "*" {
            message = parse(&mut json, input.clone())
                .map_err(|e| Refusal::bad_request(format!("invalid JSON body: {e}")))?;
        } else if let Some(field) = input.get_field_by_name(&route.body) {
            let prost_reflect::Kind::Message(desc) = field.kind() else {
                return Err(Refusal::bad_request("the body field is not a message"));
            };
            let value = parse(&mut json, desc)
                .map_err(|e| Refusal::bad_request(format!("invalid JSON body: {e}")))?;
            message.set_field(&field, prost_reflect::Value::Message(value));
        }
    }
    if let Some(query) = parts.uri.query().filter(|q| !q.is_empty()) {
        let path_fields: Vec<&str> = route.path_fields().collect();
        for (name, value) in routes::query_pairs(query) {
            if route.body == "*" || path_fields.contains(&name.as_str()) {
                return Err(Refusal::bad_request(format!(
                    "unknown query parameter {}",
                    jobmesh_runtime::quote::quoted(&name)
                )));
            }
            routes::bind(&mut message, &name, &value)
                .map_err(|e| Refusal::bad_request(e.to_string()))?;
        }
    }
    for (field, value) in bound {
        routes::bind(&mut message, &field, &value).map_err(|e| {
            Refusal::bad_request(format!(
                "path variable {}: {e}",
                jobmesh_runtime::quote::quoted(&field)
            ))
        })?;
    }
    Ok((message, metadata))
}

/// gRPC metadata from HTTP headers, as grpc-gateway forwards them:
/// `Authorization`, `Grpc-Metadata-<name>` (as `<name>`), `Grpc-Timeout`, and the
/// W3C trace context.
fn metadata(headers: &HeaderMap) -> Result<tonic::metadata::MetadataMap, Refusal> {
    let mut forwarded = HeaderMap::new();
    for (name, value) in headers {
        let name = name.as_str();
        let target = if let Some(stripped) = name.strip_prefix("grpc-metadata-") {
            stripped
        } else if matches!(
            name,
            "authorization" | "grpc-timeout" | "traceparent" | "tracestate"
        ) {
            name
        } else {
            continue;
        };
        let Ok(target) = http::HeaderName::from_bytes(target.as_bytes()) else {
            continue;
        };
        forwarded.append(target, value.clone());
    }
    if let Some(timeout) = forwarded.get("grpc-timeout") {
        let valid = timeout.to_str().ok().is_some_and(|t| {
            t.len() >= 2
                && t.len() <= 9
                && t[..t.len() - 1].bytes().all(|b| b.is_ascii_digit())
                && matches!(
                    t.as_bytes()[t.len() - 1],
                    b'H' | b'M' | b'S' | b'm' | b'u' | b'n'
                )
        });
        if !valid {
            return Err(Refusal::bad_request(
                "Grpc-Timeout must be 1 to 8 digits and a unit (H, M, S, m, u, n), e.g. 5S or 500m",
            ));
        }
    }
    Ok(tonic::metadata::MetadataMap::from_headers(forwarded))
}

/// Calls the RPC in-process and transcodes the answer.
async fn call<S>(
    route: &Route,
    inner: S,
    message: DynamicMessage,
    metadata: tonic::metadata::MetadataMap,
    arrived: std::time::Instant,
) -> HttpResponse
where
    S: tower::Service<HttpRequest, Response = HttpResponse, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    let mut request = tonic::Request::new(Bytes::from(prost::Message::encode_to_vec(&message)));
    *request.metadata_mut() = metadata;
    // The gRPC call is a child of the REST call's span, an internal one.
    jobmesh_runtime::trace::to_metadata(&jobmesh_runtime::trace::current(), request.metadata_mut());
    request
        .extensions_mut()
        .insert(jobmesh_runtime::trace::Transcoded);
    let Ok(path) = http::uri::PathAndQuery::try_from(route.grpc_path.as_str()) else {
        return status_response(&Status::internal("bad route path"));
    };
    let mut grpc = tonic::client::Grpc::new(inner)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    if grpc.ready().await.is_err() {
        return status_response(&Status::unavailable("the gateway is not ready"));
    }
    let output = route.rpc.output();
    if route.server_streaming() {
        match grpc.server_streaming(request, path, codec::Raw).await {
            Ok(response) => {
                let lines = response.into_inner().map(move |item| {
                    let line = match item {
                        Ok(bytes) => match to_json(&output, &bytes) {
                            Ok(json) => format!("{{\"result\":{json}}}\n"),
                            Err(status) => format!("{{\"error\":{}}}\n", error_body(&status)),
                        },
                        Err(status) => format!("{{\"error\":{}}}\n", error_body(&status)),
                    };
                    Ok::<_, Infallible>(http_body::Frame::data(Bytes::from(line)))
                });
                // The stream ends after the first error line.
                let mut failed = false;
                let lines = lines.take_while(move |frame| {
                    let go = !failed;
                    if let Ok(frame) = frame {
                        failed = frame
                            .data_ref()
                            .is_some_and(|d| d.starts_with(b"{\"error\""));
                    }
                    futures::future::ready(go)
                });
                let mut response =
                    http::Response::new(tonic::body::Body::new(StreamBody::new(lines)));
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
                response
            }
            Err(status) => status_response(&status),
        }
    } else {
        // tonic bounds the whole HTTP exchange by the same Grpc-Timeout and would
        // answer in gRPC framing; finishing a little earlier keeps the answer REST.
        // Counted from the request's arrival (reading and parsing the body took
        // some of it), and ending a little before tonic's timer does.
        let deadline = jobmesh_runtime::grpc::deadline(request.metadata()).map(|d| {
            d.saturating_sub((d / 20).max(std::time::Duration::from_millis(5)))
                .saturating_sub(arrived.elapsed())
        });
        let call = grpc.unary(request, path, codec::Raw);
        let outcome = match deadline {
            Some(limit) => tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
                Err(Status::deadline_exceeded(
                    "the call did not finish within its Grpc-Timeout",
                ))
            }),
            None => call.await,
        };
        // tonic reports its own grpc-timeout expiry as CANCELLED "Timeout expired".
        let outcome = outcome.map_err(|status| {
            if status.code() == Code::Cancelled && status.message() == "Timeout expired" {
                Status::deadline_exceeded("the call did not finish within its Grpc-Timeout")
            } else {
                status
            }
        });
        match outcome {
            Ok(response) => match to_json(&output, response.get_ref()) {
                Ok(json) => {
                    let mut response = http::Response::new(tonic::body::Body::new(
                        http_body_util::Full::new(Bytes::from(json)),
                    ));
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    response
                }
                Err(status) => status_response(&status),
            },
            Err(status) => status_response(&status),
        }
    }
}

/// Proto3 canonical JSON of a response message, default values included.
fn to_json(desc: &prost_reflect::MessageDescriptor, bytes: &[u8]) -> Result<String, Status> {
    let message = DynamicMessage::decode(desc.clone(), bytes)
        .map_err(|e| Status::internal(format!("cannot decode the response: {e}")))?;
    let mut out = serde_json::Serializer::new(Vec::new());
    message
        .serialize_with_options(
            &mut out,
            &SerializeOptions::new().skip_default_fields(false),
        )
        .map_err(|e| Status::internal(format!("cannot encode the response: {e}")))?;
    let mut json: serde_json::Value = serde_json::from_slice(&out.into_inner())
        .map_err(|e| Status::internal(format!("cannot encode the response: {e}")))?;
    emit_unpopulated(desc, &mut json);
    integral_floats(&mut json);
    serde_json::to_string(&json)
        .map_err(|e| Status::internal(format!("cannot encode the response: {e}")))
}

/// Doubles with no fraction as integers (`2`, not `2.0`), as protojson writes them.
fn integral_floats(json: &mut serde_json::Value) {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    match json {
        serde_json::Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
                && f.abs() < EXACT
            {
                let whole = f as i64;
                *json = serde_json::Value::from(whole);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(integral_floats),
        serde_json::Value::Object(map) => map.values_mut().for_each(integral_floats),
        _ => {}
    }
}

/// Every field of the schema in the answer, in field order, unset message fields
/// as `null`: what grpc-gateway's marshaler (protojson `EmitUnpopulated`) sends.
fn emit_unpopulated(desc: &prost_reflect::MessageDescriptor, json: &mut serde_json::Value) {
    if desc.full_name().starts_with("google.protobuf.") {
        return;
    }
    let serde_json::Value::Object(object) = json else {
        return;
    };
    let mut ordered = serde_json::Map::new();
    for field in desc.fields() {
        let present = object.remove(field.json_name());
        if present.is_none() && field.containing_oneof().is_some() {
            continue;
        }
        let mut value = present.unwrap_or(serde_json::Value::Null);
        if let prost_reflect::Kind::Message(inner) = field.kind()
            && !field.is_map()
        {
            match &mut value {
                serde_json::Value::Array(items) => {
                    items
                        .iter_mut()
                        .for_each(|item| emit_unpopulated(&inner, item));
                }
                item => emit_unpopulated(&inner, item),
            }
        }
        ordered.insert(field.json_name().to_owned(), value);
    }
    ordered.append(object);
    *object = ordered;
}

/// grpc-gateway's HTTP status for a gRPC code.
pub(crate) fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// `{"code": <grpc code>, "message": "...", "details": [...]}` for a refusal of
/// the shim itself (no gRPC call made): the details its code implies.
fn error_body_of(code: Code, message: &str) -> String {
    error_body(&jobmesh_runtime::errors::complete(Status::new(
        code, message,
    )))
}

/// grpc-gateway's error body: the code, the message and the status's
/// `google.rpc` details, each with its `@type` (ErrorInfo, BadRequest,
/// RetryInfo, as `grpc-status-details-bin` carries them).
fn error_body(status: &Status) -> String {
    use tonic_types::StatusExt as _;
    // The shim's own errors (a deadline it enforced) get their details here.
    let status = &jobmesh_runtime::errors::complete(status.clone());
    let found = status.get_error_details();
    let mut details = Vec::new();
    if let Some(info) = found.error_info() {
        let metadata: serde_json::Map<String, serde_json::Value> = info
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        details.push(serde_json::json!({
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": info.reason,
            "domain": info.domain,
            "metadata": metadata,
        }));
    }
    if let Some(bad) = found.bad_request() {
        let violations: Vec<serde_json::Value> = bad
            .field_violations
            .iter()
            .map(|v| serde_json::json!({"field": v.field, "description": v.description}))
            .collect();
        details.push(serde_json::json!({
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": violations,
        }));
    }
    if let Some(delay) = found.retry_info().and_then(|r| r.retry_delay) {
        details.push(serde_json::json!({
            "@type": "type.googleapis.com/google.rpc.RetryInfo",
            "retryDelay": format!("{}s", delay.as_secs_f64()),
        }));
    }
    serde_json::json!({
        "code": status.code() as i32,
        "message": status.message(),
        "details": details,
    })
    .to_string()
}

fn json_error(http: StatusCode, body: String) -> HttpResponse {
    let mut response = http::Response::new(tonic::body::Body::new(http_body_util::Full::new(
        Bytes::from(body),
    )));
    *response.status_mut() = http;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn status_response(status: &Status) -> HttpResponse {
    let mut response = json_error(http_status(status.code()), error_body(status));
    if status.code() == Code::Unauthenticated {
        // RFC 6750: say how to authenticate.
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"jobmesh\""),
        );
    }
    if let Some(retry) = status.metadata().get(RETRY_AFTER)
        && let Ok(value) = HeaderValue::from_bytes(retry.as_encoded_bytes())
    {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

fn refusal(refused: Refusal) -> HttpResponse {
    let body = match refused.reason {
        Some(reason) => error_body(&jobmesh_runtime::errors::error(
            refused.code,
            refused.message,
            reason,
            &[],
        )),
        None => error_body_of(refused.code, &refused.message),
    };
    json_error(refused.http, body)
}

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_grpc_gateway_statuses() {
        let table = [
            (Code::InvalidArgument, 400),
            (Code::FailedPrecondition, 400),
            (Code::OutOfRange, 400),
            (Code::Unauthenticated, 401),
            (Code::PermissionDenied, 403),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::Aborted, 409),
            (Code::ResourceExhausted, 429),
            (Code::Cancelled, 499),
            (Code::Unknown, 500),
            (Code::Internal, 500),
            (Code::DataLoss, 500),
            (Code::Unimplemented, 501),
            (Code::Unavailable, 503),
            (Code::DeadlineExceeded, 504),
        ];
        for (code, http) in table {
            assert_eq!(http_status(code).as_u16(), http, "{code:?}");
        }
    }

    #[test]
    fn error_bodies_have_grpc_gateway_shape() {
        let body = error_body_of(Code::NotFound, "job \"x\" not found");
        assert_eq!(
            body,
            r#"{"code":5,"message":"job \"x\" not found","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"NOT_FOUND","domain":"jobmesh.dev","metadata":{}}]}"#
        );
    }
}
