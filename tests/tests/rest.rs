//! The REST shim over a real mesh, byte for byte on the wire: canonical JSON shapes
//! (golden files), grpc-gateway error bodies and statuses for every bad input
//! (and nothing created by them), newline-delimited watch streams, forwarded
//! headers, and the OpenAPI document kept in sync with its committed copy.

use std::time::Duration;

use jobmesh_auth::scope;
use jobmesh_tests::http::{Reply, request};
use jobmesh_tests::{Mesh, MeshOptions, TENANT, golden, normalised};
use serde_json::json;

/// (method, path, extra headers, body, HTTP status, error body)
type Case<'a> = (
    &'a str,
    &'a str,
    Vec<(&'a str, &'a str)>,
    &'a str,
    u16,
    serde_json::Value,
);

struct Rest {
    address: String,
    token: String,
}

impl Rest {
    fn of(mesh: &Mesh) -> Self {
        Self {
            address: mesh.gateway_url.trim_start_matches("http://").to_owned(),
            token: mesh.token(TENANT, &scope::USER),
        }
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        extra: &[(&str, &str)],
        body: &str,
    ) -> anyhow::Result<Reply> {
        let bearer = format!("Bearer {}", self.token);
        let mut headers = vec![("Authorization", bearer.as_str())];
        let typed = extra
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-type"));
        if !body.is_empty() && !typed {
            headers.push(("Content-Type", "application/json"));
        }
        headers.extend_from_slice(extra);
        request(&self.address, method, path, &headers, body.as_bytes()).await
    }

    async fn get(&self, path: &str) -> anyhow::Result<Reply> {
        self.send("GET", path, &[], "").await
    }

    async fn post(&self, path: &str, body: &str) -> anyhow::Result<Reply> {
        self.send("POST", path, &[], body).await
    }

    async fn job_count(&self) -> anyhow::Result<usize> {
        let reply = self.get("/v1/jobs?pageSize=1000").await?;
        assert_eq!(reply.status, 200, "{:?}", reply.json());
        Ok(reply.json()?["jobs"].as_array().map_or(0, Vec::len))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_speaks_canonical_json() -> anyhow::Result<()> {
    let mesh = Mesh::start(MeshOptions::default()).await?;
    let rest = Rest::of(&mesh);

    // Submit: both field spellings are accepted; the answer is lowerCamelCase,
    // enums by name, int64 as strings, durations as "1s", defaults present.
    let reply = rest
        .post(
            "/v1/jobs",
            r#"{"task":"demo.echo","args":{"greeting":"hi","n":2},"labels":{"via":"rest"},"max_attempts":2,"idempotencyKey":"rest-1"}"#,
        )
        .await?;
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let submitted = reply.json()?;
    golden("rest/submit.json", &normalised(&submitted))?;
    let id = submitted["job"]["id"].as_str().expect("id").to_owned();

    // Watch: one {"result": ...} line per change until the terminal state.
    let reply = rest.get(&format!("/v1/jobs/{id}:watch")).await?;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/x-ndjson"));
    let lines = reply.lines()?;
    assert!(!lines.is_empty());
    for line in &lines {
        assert!(line.get("result").is_some(), "{line}");
        assert!(line.get("error").is_none(), "{line}");
    }
    let last = &lines[lines.len() - 1]["result"]["job"];
    assert_eq!(last["state"], "JOB_STATE_SUCCEEDED");

    // Get: the finished job, with its result.
    let reply = rest.get(&format!("/v1/jobs/{id}")).await?;
    assert_eq!(reply.status, 200);
    golden("rest/get_succeeded.json", &normalised(&reply.json()?))?;

    // List with query parameters, by either spelling.
    let reply = rest
        .get("/v1/jobs?page_size=5&state=JOB_STATE_SUCCEEDED&task=demo.echo&labels=via%3Drest")
        .await?;
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    let listed = reply.json()?;
    assert_eq!(listed["jobs"].as_array().map(Vec::len), Some(1));
    assert_eq!(listed["jobs"][0]["id"], id.as_str());
    assert_eq!(listed["nextPageToken"], "");

    // Cancel a job no worker takes: it ends CANCELLED; the body may be empty.
    let reply = rest.post("/v1/jobs", r#"{"task":"nobody.home"}"#).await?;
    let queued = reply.json()?["job"]["id"].as_str().expect("id").to_owned();
    let reply = rest
        .send("POST", &format!("/v1/jobs/{queued}:cancel"), &[], "")
        .await?;
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    assert_eq!(reply.json()?["job"]["state"], "JOB_STATE_CANCELLED");

    // Tasks: int64 queue depth as a string.
    let reply = rest.get("/v1/tasks").await?;
    assert_eq!(reply.status, 200);
    let tasks = reply.json()?;
    let echo = tasks["tasks"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["name"] == "demo.echo"))
        .expect("demo.echo listed")
        .clone();
    assert_eq!(echo["workers"], 1);
    assert_eq!(echo["queueDepth"], "0");
    mesh.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_exact_statuses_and_bodies_and_create_nothing() -> anyhow::Result<()> {
    let mesh = Mesh::start(MeshOptions::default()).await?;
    let rest = Rest::of(&mesh);
    let done = rest
        .post("/v1/jobs", r#"{"task":"demo.echo"}"#)
        .await?
        .json()?;
    let done_id = done["job"]["id"].as_str().expect("id").to_owned();
    mesh.finished(&done_id, Duration::from_secs(20)).await?;
    let before = rest.job_count().await?;
    let unknown_id = "01a209d6-0000-7000-8000-000000000000";
    let huge = format!(
        r#"{{"task":"demo.echo","args":{{"x":"{}"}}}}"#,
        "a".repeat(5 * 1024 * 1024)
    );
    let cancel_done = format!("/v1/jobs/{done_id}:cancel");
    let get_unknown = format!("/v1/jobs/{unknown_id}");

    // (method, path, extra headers, body, HTTP status, body)
    let cases: Vec<Case<'_>> = vec![
        (
            "POST",
            "/v1/jobs",
            vec![],
            r#"{"task":"#,
            400,
            json!({"code": 3, "message": "invalid JSON body: EOF while parsing a value at line 1 column 8", "reason": "INVALID_ARGUMENT"}),
        ),
        (
            "POST",
            "/v1/jobs",
            vec![],
            r#"{"task":5}"#,
            400,
            json!({"code": 3, "message": "invalid JSON body: invalid type: integer `5`, expected a string at line 1 column 9", "reason": "INVALID_ARGUMENT"}),
        ),
        (
            "POST",
            "/v1/jobs",
            vec![],
            r#"{"task":"demo.echo","tsak":1}"#,
            400,
            json!({"code": 3, "message": "invalid JSON body: unrecognized field name 'tsak' at line 1 column 26", "reason": "INVALID_ARGUMENT"}),
        ),
        (
            "POST",
            "/v1/jobs",
            vec![("Content-Type", "text/plain")],
            "task=demo.echo",
            415,
            json!({"code": 3, "message": "the body must be JSON: send Content-Type: application/json (got \"text/plain\")", "reason": "INVALID_ARGUMENT"}),
        ),
        (
            "POST",
            "/v1/jobs",
            vec![],
            &huge,
            413,
            json!({"code": 8, "message": "the request body is larger than 1048576 bytes", "reason": "REQUEST_TOO_LARGE"}),
        ),
        (
            "POST",
            "/v1/jobs",
            vec![],
            r#"{"task":"not a task"}"#,
            400,
            json!({"code": 3, "message": "task: \"not a task\" is not a task name: use dot-separated segments of letters, digits, '_' or '-', each starting with a letter, at most 128 characters", "reason": "INVALID_FIELD", "field": "task"}),
        ),
        (
            "GET",
            "/v1/nothing",
            vec![],
            "",
            404,
            json!({"code": 5, "message": "Not Found", "reason": "NOT_FOUND"}),
        ),
        (
            "DELETE",
            "/v1/jobs",
            vec![],
            "",
            405,
            json!({"code": 12, "message": "Method Not Allowed: \"/v1/jobs\" takes GET, POST", "reason": "UNIMPLEMENTED"}),
        ),
        (
            "GET",
            "/v1/jobs/not-a-uuid",
            vec![],
            "",
            400,
            json!({"code": 3, "message": "job_id: \"not-a-uuid\" is not a job id (a UUID)", "reason": "INVALID_FIELD", "field": "job_id"}),
        ),
        (
            "GET",
            &get_unknown,
            vec![],
            "",
            404,
            json!({"code": 5, "message": format!("job {unknown_id} not found"), "reason": "JOB_NOT_FOUND"}),
        ),
        (
            "GET",
            "/v1/jobs?pageSize=ten",
            vec![],
            "",
            400,
            json!({"code": 3, "message": "query parameter \"pageSize\": \"ten\" is not a valid 32-bit integer", "reason": "INVALID_ARGUMENT"}),
        ),
        (
            "GET",
            "/v1/jobs?colour=red",
            vec![],
            "",
            400,
            json!({"code": 3, "message": "unknown query parameter \"colour\"", "reason": "INVALID_ARGUMENT"}),
        ),
        (
            "GET",
            "/v1/tasks",
            vec![("Grpc-Timeout", "soon")],
            "",
            400,
            json!({"code": 3, "message": "Grpc-Timeout must be 1 to 8 digits and a unit (H, M, S, m, u, n), e.g. 5S or 500m", "reason": "INVALID_ARGUMENT"}),
        ),
        (
            "GET",
            "/v1/tasks",
            vec![("Grpc-Timeout", "1n")],
            "",
            504,
            json!({"code": 4, "message": "the call did not finish within its Grpc-Timeout", "reason": "DEADLINE_EXCEEDED"}),
        ),
        (
            "POST",
            &cancel_done,
            vec![],
            "",
            400,
            json!({"code": 9, "message": format!("job {done_id} already succeeded"), "reason": "JOB_ALREADY_FINISHED"}),
        ),
    ];
    for (method, path, extra, body, status, expected) in &cases {
        let reply = rest.send(method, path, extra, body).await?;
        let what = format!("{method} {path} {extra:?}");
        assert_eq!(reply.status, *status, "{what}: {:?}", reply.json());
        assert_eq!(
            reply.header("content-type"),
            Some("application/json"),
            "{what}"
        );
        let got = reply.json()?;
        // Messages from the JSON parser may vary in position detail; the rest is exact.
        assert_eq!(got["code"], expected["code"], "{what}: {got}");
        assert_eq!(got["message"], expected["message"], "{what}: {got}");
        // The details a program reads: the reason always, the field of a bad
        // one, when to retry an overload (never a body too large).
        let info = &got["details"][0];
        assert_eq!(
            info["@type"], "type.googleapis.com/google.rpc.ErrorInfo",
            "{what}: {got}"
        );
        assert_eq!(info["domain"], "jobmesh.dev", "{what}: {got}");
        assert_eq!(info["reason"], expected["reason"], "{what}: {got}");
        let typed = |kind: &str| {
            got["details"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|d| d["@type"] == format!("type.googleapis.com/google.rpc.{kind}"))
                .cloned()
        };
        match expected.get("field") {
            Some(field) => assert_eq!(
                typed("BadRequest").map(|b| b["fieldViolations"][0]["field"].clone()),
                Some(field.clone()),
                "{what}: {got}"
            ),
            None => assert!(typed("BadRequest").is_none(), "{what}: {got}"),
        }
        assert!(typed("RetryInfo").is_none(), "{what}: {got}");
    }
    // A JSON body is read as JSON whatever its Content-Type says (curl -d
    // sends form encoding), as grpc-gateway's wildcard marshaler does.
    let reply = rest
        .send(
            "POST",
            "/v1/jobs",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            r#"{"task":"demo.echo"}"#,
        )
        .await?;
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    let created = reply.json()?["job"]["id"].as_str().map(str::to_owned);
    // A wrong method says which ones the path takes.
    let reply = rest.send("DELETE", "/v1/jobs", &[], "").await?;
    assert_eq!(reply.header("allow"), Some("GET, POST"));

    // Credentials: missing, and a token without the scope.
    let address = rest.address.clone();
    let reply = request(&address, "GET", "/v1/jobs", &[], b"").await?;
    assert_eq!(reply.status, 401);
    assert_eq!(
        reply.header("www-authenticate"),
        Some("Bearer realm=\"jobmesh\"")
    );
    assert_eq!(
        reply.json()?,
        json!({"code": 16, "message": "missing credentials: send `authorization: Bearer <token>`", "details": [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "TOKEN_MISSING", "domain": "jobmesh.dev", "metadata": {}}
        ]})
    );
    let reader = format!("Bearer {}", mesh.token(TENANT, &[scope::READ]));
    let reply = request(
        &address,
        "POST",
        "/v1/jobs",
        &[
            ("Authorization", &reader),
            ("Content-Type", "application/json"),
        ],
        br#"{"task":"demo.echo"}"#,
    )
    .await?;
    assert_eq!(reply.status, 403);
    assert_eq!(
        reply.json()?,
        json!({"code": 7, "message": "this call needs the scope \"jobs:submit\"; the token has [jobs:read]", "details": [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "SCOPE_MISSING", "domain": "jobmesh.dev", "metadata": {"scope": "jobs:submit"}}
        ]})
    );

    assert_eq!(
        rest.job_count().await?,
        before + usize::from(created.is_some()),
        "a refused request created a job"
    );
    mesh.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_become_metadata_and_deadlines_end_streams() -> anyhow::Result<()> {
    let mesh = Mesh::start(MeshOptions::default()).await?;
    let rest = Rest::of(&mesh);
    let reply = rest
        .post("/v1/jobs", r#"{"task":"demo.sleep","args":{"seconds":30}}"#)
        .await?;
    let id = reply.json()?["job"]["id"].as_str().expect("id").to_owned();

    // Grpc-Timeout bounds the watch: the stream ends with an error line.
    let reply = rest
        .send(
            "GET",
            &format!("/v1/jobs/{id}:watch"),
            &[("Grpc-Timeout", "1S")],
            "",
        )
        .await?;
    assert_eq!(reply.status, 200);
    let lines = reply.lines()?;
    let last = lines.last().expect("at least the snapshot and the error");
    assert_eq!(last["error"]["code"], 4, "{last}");
    assert!(lines.len() >= 2, "{lines:?}");
    assert!(lines[0]["result"]["job"]["id"] == id.as_str());

    // The token may come as Grpc-Metadata-Authorization as well.
    let bearer = format!("Bearer {}", rest.token);
    let reply = request(
        &rest.address,
        "GET",
        &format!("/v1/jobs/{id}"),
        &[("Grpc-Metadata-Authorization", &bearer)],
        b"",
    )
    .await?;
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    rest.post(&format!("/v1/jobs/{id}:cancel"), "{}").await?;
    mesh.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_served_and_matches_the_committed_copy() -> anyhow::Result<()> {
    let mesh = Mesh::start(MeshOptions::default()).await?;
    let address = mesh.gateway_url.trim_start_matches("http://").to_owned();
    // Served without credentials: it describes the API, it is not the API.
    let reply = request(&address, "GET", "/openapi.json", &[], b"").await?;
    assert_eq!(reply.status, 200);
    let served = String::from_utf8(reply.body.clone())?;
    assert_eq!(served, jobmesh_gateway::openapi_document()?);
    let doc = reply.json()?;
    assert_eq!(doc["openapi"], "3.0.3");
    for (path, method) in [
        ("/v1/jobs", "post"),
        ("/v1/jobs", "get"),
        ("/v1/jobs/{job_id}", "get"),
        ("/v1/jobs/{job_id}:cancel", "post"),
        ("/v1/jobs/{job_id}:watch", "get"),
        ("/v1/tasks", "get"),
    ] {
        assert!(doc["paths"][path][method].is_object(), "{method} {path}");
    }
    // The committed copy, for readers and client generators, is the same text.
    let committed = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&committed, &served)?;
    }
    let on_disk = std::fs::read_to_string(&committed)?;
    assert!(
        on_disk == served,
        "docs/openapi.json is out of date: run `UPDATE_GOLDEN=1 cargo test -p jobmesh-tests --test rest` and commit it"
    );
    mesh.stop().await;
    Ok(())
}

/// A huge invalid value is refused with INVALID_ARGUMENT and a short message that
/// quotes only its start: never echoed whole (a 1 MB echo made gRPC clients see
/// RESOURCE_EXHAUSTED for the metadata and REST answer a 1 MB 400).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_values_are_quoted_short_in_errors() -> anyhow::Result<()> {
    let mesh = Mesh::start(MeshOptions::default()).await?;
    let huge = "x".repeat(1_000_000);
    let status = mesh
        .jobs()
        .get_job(jobmesh_proto::v1::GetJobRequest {
            job_id: huge.clone(),
        })
        .await
        .expect_err("not a job id");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().len() < 300,
        "{} bytes",
        status.message().len()
    );
    assert!(
        status
            .message()
            .ends_with("… (cut, 1000000 characters in all) is not a job id (a UUID)"),
        "{}",
        status.message()
    );
    let status = mesh
        .jobs()
        .submit_job(jobmesh_proto::v1::SubmitJobRequest {
            task: format!("bad {huge}"),
            ..Default::default()
        })
        .await
        .expect_err("not a task name");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().len() < 400,
        "{} bytes",
        status.message().len()
    );
    let rest = Rest::of(&mesh);
    let long_id = "y".repeat(50_000);
    let reply = request(
        &rest.address,
        "GET",
        &format!("/v1/jobs/{long_id}"),
        &[("Authorization", &format!("Bearer {}", rest.token))],
        b"",
    )
    .await?;
    assert_eq!(reply.status, 400);
    // The message and its BadRequest description each quote the value cut short.
    assert!(reply.body.len() < 1000, "{} bytes", reply.body.len());
    assert_eq!(reply.json()?["code"], 3);
    let listed = mesh
        .jobs()
        .list_jobs(jobmesh_proto::v1::ListJobsRequest::default())
        .await?
        .into_inner();
    assert!(listed.jobs.is_empty(), "nothing was created");
    mesh.stop().await;
    Ok(())
}
