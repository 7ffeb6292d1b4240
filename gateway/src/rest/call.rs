//! The in-process gRPC call a REST request becomes, and its answer as REST: one
//! JSON object, or one line per message of a server stream.

use std::convert::Infallible;

use bytes::Bytes;
use futures::StreamExt as _;
use http::{HeaderValue, header};
use http_body_util::StreamBody;
use jobmesh_runtime::call::HttpResponse;
use jobmesh_runtime::grpc::MAX_MESSAGE_BYTES;
use prost_reflect::DynamicMessage;
use tonic::{Code, Status};

use super::errors::{error_body, status_response};
use super::json::to_json;
use super::routes::Route;
use super::{NDJSON, codec, deadline};
use jobmesh_runtime::call::HttpRequest;

/// Calls the RPC in-process and transcodes the answer.
pub(super) async fn call<S>(
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
        let deadline = deadline::call_within(request.metadata(), arrived);
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
