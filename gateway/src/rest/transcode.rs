//! The request of a REST call as the RPC's message and metadata: the body (JSON,
//! bounded), the query parameters and the path variables bound into fields,
//! and the headers grpc-gateway forwards.

use http::{HeaderMap, StatusCode, header};
use http_body_util::{BodyExt as _, Limited};
use jobmesh_runtime::call::HttpRequest;
use prost_reflect::{DeserializeOptions, DynamicMessage};
use tonic::Code;

use super::bind;
use super::errors::Refusal;
use super::routes::Route;
use crate::MAX_REQUEST_BYTES;

/// The request message and metadata of an HTTP request.
pub(super) async fn transcode(
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
        for (name, value) in bind::query_pairs(query) {
            if route.body == "*" || path_fields.contains(&name.as_str()) {
                return Err(Refusal::bad_request(format!(
                    "unknown query parameter {}",
                    jobmesh_runtime::quote::quoted(&name)
                )));
            }
            bind::bind(&mut message, &name, &value)
                .map_err(|e| Refusal::bad_request(e.to_string()))?;
        }
    }
    for (field, value) in bound {
        bind::bind(&mut message, &field, &value).map_err(|e| {
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
pub(super) fn metadata(headers: &HeaderMap) -> Result<tonic::metadata::MetadataMap, Refusal> {
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
