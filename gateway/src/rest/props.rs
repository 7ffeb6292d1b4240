//! Property tests of what parses untrusted input in the REST shim: the router
//! and its path templates, and the JSON ↔ proto mapping. Any input is routed or
//! refused with the right status; none panics.

use http::{Method, StatusCode};
use proptest::prelude::*;
use prost_reflect::{DescriptorPool, DynamicMessage, ReflectMessage as _};

use super::routes::{Lookup, Table};

/// The route table, built once for every case.
fn table() -> &'static Table {
    static TABLE: std::sync::LazyLock<Table> = std::sync::LazyLock::new(|| {
        let pool = DescriptorPool::decode(jobmesh_proto::FILE_DESCRIPTOR_SET).expect("pool");
        Table::build(&pool, &crate::PUBLIC_SERVICES).expect("table")
    });
    &TABLE
}

fn method() -> impl Strategy<Value = Method> {
    prop::sample::select(vec![
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::HEAD,
        Method::OPTIONS,
    ])
}

/// A request to `path` with `body`, as the shim receives it.
fn request(
    method: Method,
    path: &str,
    body: Vec<u8>,
) -> Option<jobmesh_runtime::call::HttpRequest> {
    http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(tonic::body::Body::new(http_body_util::Full::new(
            bytes::Bytes::from(body),
        )))
        .ok()
}

/// What the shim makes of a request: the message it would call with, or the
/// HTTP status of its refusal.
fn transcoded(
    table: &Table,
    request: jobmesh_runtime::call::HttpRequest,
) -> Result<DynamicMessage, StatusCode> {
    let path = request.uri().path().to_owned();
    let Lookup::Found(route, bound) = table.lookup(request.method(), &path) else {
        return Err(StatusCode::NOT_FOUND);
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime
        .block_on(super::transcode::transcode(route, bound, request))
        .map(|(message, _)| message)
        .map_err(|refused| refused.http)
}

fn text_field(message: &DynamicMessage, name: &str) -> String {
    message
        .get_field_by_name(name)
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_method_and_path_is_routed_or_refused(method in method(), path in "\\PC{0,80}") {
                match table().lookup(&method, &path) {
            Lookup::Found(route, bound) => {
                prop_assert_eq!(&route.method, &method);
                prop_assert!(bound.iter().all(|(field, _)| route.path_fields().any(|f| f == field)));
            }
            Lookup::WrongMethod(_) | Lookup::NotFound => {}
        }
    }

    #[test]
    fn a_job_id_in_the_path_is_bound_whatever_it_is(id in "[A-Za-z0-9._~-]{1,60}") {
                for (method, path, rpc) in [
            (Method::GET, format!("/v1/jobs/{id}"), "GetJob"),
            (Method::POST, format!("/v1/jobs/{id}:cancel"), "CancelJob"),
            (Method::GET, format!("/v1/jobs/{id}/logs"), "ReadJobLogs"),
        ] {
            if id.contains(':') || id == "." || id == ".." {
                continue;
            }
            match table().lookup(&method, &path) {
                Lookup::Found(route, bound) => {
                    prop_assert_eq!(route.rpc.name(), rpc, "{}", path);
                    prop_assert_eq!(bound, vec![("job_id".to_owned(), id.clone())]);
                }
                _ => prop_assert!(false, "{} {} was not routed", method, path),
            }
        }
    }

    #[test]
    fn any_body_is_transcoded_or_refused_with_a_client_error(
        body in prop::collection::vec(any::<u8>(), 0..256),
        path in prop::sample::select(vec!["/v1/jobs", "/v1/jobs/x:cancel"]),
    ) {
                let Some(request) = request(Method::POST, path, body) else {
            return Ok(());
        };
        if let Err(status) = transcoded(table(), request) {
            prop_assert_eq!(status, StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn any_json_value_is_transcoded_or_refused_with_400(value in json(3)) {
                let body = serde_json::to_vec(&value).expect("json");
        let Some(request) = request(Method::POST, "/v1/jobs", body) else {
            return Ok(());
        };
        if let Err(status) = transcoded(table(), request) {
            prop_assert_eq!(status, StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn a_submission_means_what_its_json_says(
        task in "\\PC{0,40}",
        labels in prop::collection::btree_map("[a-z]{1,8}", "\\PC{0,16}", 0..4),
        idempotency_key in "\\PC{0,20}",
    ) {
                let body = serde_json::json!({
            "task": task,
            "labels": labels,
            "idempotencyKey": idempotency_key,
        });
        let request = request(Method::POST, "/v1/jobs", serde_json::to_vec(&body).expect("json"))
            .expect("request");
        let message = transcoded(table(), request).expect("a well-formed submission");
        prop_assert_eq!(text_field(&message, "task"), task);
        prop_assert_eq!(text_field(&message, "idempotency_key"), idempotency_key);
        let bound = message
            .get_field_by_name("labels")
            .and_then(|v| v.as_map().map(|m| m.len()))
            .unwrap_or(0);
        prop_assert_eq!(bound, labels.len());
    }

    #[test]
    fn query_parameters_bind_or_are_refused_with_400(query in "[A-Za-z0-9=&%._~+-]{0,60}") {
                let Some(request) = request(Method::GET, &format!("/v1/jobs?{query}"), Vec::new()) else {
            return Ok(());
        };
        if let Err(status) = transcoded(table(), request) {
            prop_assert_eq!(status, StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn any_reply_bytes_become_json_or_an_error(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        for name in ["jobmesh.v1.SubmitJobResponse", "jobmesh.v1.ListJobsResponse", "jobmesh.v1.ReadJobLogsResponse"] {
            let desc = table().routes[0].rpc.parent_pool().get_message_by_name(name).expect("message");
            if let Ok(json) = super::json::to_json(&desc, &bytes) {
                prop_assert!(serde_json::from_str::<serde_json::Value>(&json).is_ok(), "{}", json);
            }
        }
    }
}

/// Any JSON value, up to `depth` levels deep, with keys that are sometimes
/// field names.
fn json(depth: u32) -> impl Strategy<Value = serde_json::Value> {
    let key = prop::sample::select(vec![
        "task",
        "args",
        "labels",
        "priority",
        "maxAttempts",
        "timeout",
        "idempotencyKey",
        "x",
        "@type",
        "seconds",
    ])
    .prop_map(str::to_owned);
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map_or(serde_json::Value::Null, serde_json::Value::Number)),
        "\\PC{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(depth, 32, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..5)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

#[test]
fn the_descriptor_names_used_here_exist() {
    let pool = DescriptorPool::decode(jobmesh_proto::FILE_DESCRIPTOR_SET).expect("pool");
    let submit = pool
        .get_message_by_name("jobmesh.v1.SubmitJobRequest")
        .expect("SubmitJobRequest");
    for field in ["task", "labels", "idempotency_key"] {
        assert!(submit.get_field_by_name(field).is_some(), "{field}");
    }
    let _ = DynamicMessage::new(submit).descriptor();
}
