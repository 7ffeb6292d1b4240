//! Who may call, and what they see, over real gRPC and REST: every public RPC
//! refuses missing and bad credentials and missing scopes; tenants never see each
//! other's jobs; workers need a worker token; the submit rate is per tenant; an
//! overloaded gateway refuses at once and loses nothing.

use std::time::Duration;

use jobmesh_auth::{self as auth, scope};
use jobmesh_proto::v1::{self, connect_request, worker_service_client::WorkerServiceClient};
use jobmesh_tests::http::request;
use jobmesh_tests::{Mesh, MeshOptions, TENANT};
use tonic::Code;

/// Each public RPC called once with `token`; the codes, in a fixed order.
async fn codes_of_every_rpc(mesh: &Mesh, token: Option<&str>, job_id: &str) -> Vec<(String, Code)> {
    let mut jobs = mesh.jobs_with(token);
    let mut tasks = mesh.tasks_with(token);
    let id = || job_id.to_owned();
    let code = |r: Result<(), tonic::Status>| r.err().map_or(Code::Ok, |s| s.code());
    vec![
        (
            "SubmitJob".into(),
            code(
                jobs.submit_job(v1::SubmitJobRequest {
                    task: "demo.echo".into(),
                    ..Default::default()
                })
                .await
                .map(drop),
            ),
        ),
        (
            "GetJob".into(),
            code(
                jobs.get_job(v1::GetJobRequest { job_id: id() })
                    .await
                    .map(drop),
            ),
        ),
        (
            "ListJobs".into(),
            code(
                jobs.list_jobs(v1::ListJobsRequest::default())
                    .await
                    .map(drop),
            ),
        ),
        (
            "CountJobs".into(),
            code(
                jobs.count_jobs(v1::CountJobsRequest::default())
                    .await
                    .map(drop),
            ),
        ),
        (
            "CancelJob".into(),
            code(
                jobs.cancel_job(v1::CancelJobRequest { job_id: id() })
                    .await
                    .map(drop),
            ),
        ),
        (
            "WatchJob".into(),
            code(
                jobs.watch_job(v1::WatchJobRequest { job_id: id() })
                    .await
                    .map(drop),
            ),
        ),
        (
            "ListTasks".into(),
            code(tasks.list_tasks(v1::ListTasksRequest {}).await.map(drop)),
        ),
    ]
}

async fn job_count(mesh: &Mesh, tenant: &str) -> anyhow::Result<usize> {
    let token = mesh.token(tenant, &[scope::READ]);
    let listed = mesh
        .jobs_with(Some(&token))
        .list_jobs(v1::ListJobsRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(listed.jobs.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_public_rpc_refuses_bad_credentials_and_missing_scopes() -> anyhow::Result<()> {
    let mesh = Mesh::start(MeshOptions::default()).await?;
    let job = mesh
        .submit(v1::SubmitJobRequest {
            task: "nobody.home".into(),
            ..Default::default()
        })
        .await?;
    let before = job_count(&mesh, TENANT).await?;

    // A token signed by a key the mesh does not know.
    let stranger_key = std::env::temp_dir().join(format!("jobmesh-stranger-{}.key", job.id));
    auth::ensure_dev_key(&stranger_key)?;
    let stranger = auth::Minter::hs256_file(&stranger_key)?.mint(
        "mallory",
        Some(TENANT),
        &[scope::ADMIN],
        Duration::from_secs(60),
    )?;
    let _ = std::fs::remove_file(&stranger_key);

    for (label, token) in [
        ("no token", None),
        ("garbage", Some("not.a.jwt")),
        ("foreign signature", Some(stranger.as_str())),
    ] {
        for (rpc, code) in codes_of_every_rpc(&mesh, token, &job.id).await {
            assert_eq!(code, Code::Unauthenticated, "{label}: {rpc}");
        }
    }
    // The message says which check failed.
    let status = mesh
        .jobs_with(Some(&stranger))
        .get_job(v1::GetJobRequest {
            job_id: job.id.clone(),
        })
        .await
        .expect_err("foreign signature");
    assert_eq!(status.message(), "the token signature does not verify");

    // A token with no scopes is authenticated but may do nothing.
    let nothing = mesh.token(TENANT, &[]);
    for (rpc, code) in codes_of_every_rpc(&mesh, Some(&nothing), &job.id).await {
        assert_eq!(code, Code::PermissionDenied, "{rpc}");
    }
    // Each scope opens exactly its RPCs.
    let expect = |allowed: &[&str], rpc: &str| {
        if allowed.contains(&rpc) {
            Code::Ok
        } else {
            Code::PermissionDenied
        }
    };
    let reader = mesh.token(TENANT, &[scope::READ]);
    for (rpc, code) in codes_of_every_rpc(&mesh, Some(&reader), &job.id).await {
        let want = expect(
            &["GetJob", "ListJobs", "CountJobs", "WatchJob", "ListTasks"],
            &rpc,
        );
        assert_eq!(code, want, "jobs:read {rpc}");
    }
    let worker = mesh.token(TENANT, &[scope::WORKER]);
    for (rpc, code) in codes_of_every_rpc(&mesh, Some(&worker), &job.id).await {
        assert_eq!(code, Code::PermissionDenied, "worker token on {rpc}");
    }
    // Refused calls created and cancelled nothing.
    assert_eq!(job_count(&mesh, TENANT).await?, before);
    let still = mesh
        .jobs()
        .get_job(v1::GetJobRequest {
            job_id: job.id.clone(),
        })
        .await?
        .into_inner()
        .job
        .expect("job");
    assert_eq!(still.state(), v1::JobState::Queued);
    assert!(!still.cancel_requested);

    // The submitter scope alone may submit (and only that).
    let submitter = mesh.token(TENANT, &[scope::SUBMIT]);
    for (rpc, code) in codes_of_every_rpc(&mesh, Some(&submitter), &job.id).await {
        assert_eq!(code, expect(&["SubmitJob"], &rpc), "jobs:submit {rpc}");
    }
    // A token without a tenant claim cannot use the job API.
    let tenantless = mesh.token_without_tenant(&scope::USER);
    let status = mesh
        .jobs_with(Some(&tenantless))
        .list_jobs(v1::ListJobsRequest::default())
        .await
        .expect_err("no tenant");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(
        status.message(),
        "the token has no \"tenant\" claim naming the tenant"
    );
    mesh.jobs()
        .cancel_job(v1::CancelJobRequest { job_id: job.id })
        .await?;
    mesh.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_never_see_each_others_jobs() -> anyhow::Result<()> {
    let mesh = Mesh::start(MeshOptions::default()).await?;
    let job = mesh
        .submit(v1::SubmitJobRequest {
            task: "nobody.home".into(),
            ..Default::default()
        })
        .await?;
    let other = mesh.token("tenant-b", &scope::USER);
    let mut theirs = mesh.jobs_with(Some(&other));

    // gRPC: get, watch and cancel answer NOT_FOUND, exactly as for a missing id.
    let get = theirs
        .get_job(v1::GetJobRequest {
            job_id: job.id.clone(),
        })
        .await
        .expect_err("get");
    assert_eq!(get.code(), Code::NotFound);
    assert_eq!(get.message(), format!("job {} not found", job.id));
    let watch = theirs
        .watch_job(v1::WatchJobRequest {
            job_id: job.id.clone(),
        })
        .await
        .expect_err("watch");
    assert_eq!(watch.code(), Code::NotFound);
    let cancel = theirs
        .cancel_job(v1::CancelJobRequest {
            job_id: job.id.clone(),
        })
        .await
        .expect_err("cancel");
    assert_eq!(cancel.code(), Code::NotFound);
    let listed = theirs
        .list_jobs(v1::ListJobsRequest::default())
        .await?
        .into_inner();
    assert!(listed.jobs.is_empty(), "{:?}", listed.jobs);
    // The same idempotency key in two tenants makes two jobs.
    let keyed = |key: &str| v1::SubmitJobRequest {
        task: "nobody.home".into(),
        idempotency_key: key.into(),
        ..Default::default()
    };
    let mine = mesh.submit(keyed("shared-key")).await?;
    let theirs_job = theirs
        .submit_job(keyed("shared-key"))
        .await?
        .into_inner()
        .job
        .expect("job");
    assert_ne!(mine.id, theirs_job.id);

    // REST: the same walls.
    let address = mesh.gateway_url.trim_start_matches("http://").to_owned();
    let bearer = format!("Bearer {other}");
    for (method, path) in [
        ("GET", format!("/v1/jobs/{}", job.id)),
        ("GET", format!("/v1/jobs/{}:watch", job.id)),
        ("POST", format!("/v1/jobs/{}:cancel", job.id)),
    ] {
        let reply = request(&address, method, &path, &[("Authorization", &bearer)], b"").await?;
        assert_eq!(reply.status, 404, "{method} {path}");
        assert_eq!(reply.json()?["code"], 5);
    }
    let reply = request(
        &address,
        "GET",
        "/v1/jobs",
        &[("Authorization", &bearer)],
        b"",
    )
    .await?;
    let ids: Vec<String> = reply.json()?["jobs"]
        .as_array()
        .map(|jobs| {
            jobs.iter()
                .filter_map(|j| j["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(ids, vec![theirs_job.id.clone()]);

    // The owner's job is untouched by the other tenant's cancel.
    let still = mesh
        .jobs()
        .get_job(v1::GetJobRequest {
            job_id: job.id.clone(),
        })
        .await?
        .into_inner()
        .job
        .expect("job");
    assert_eq!(still.state(), v1::JobState::Queued);
    assert!(!still.cancel_requested);
    mesh.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_need_a_worker_token() -> anyhow::Result<()> {
    let mesh = Mesh::start(MeshOptions::default()).await?;
    let hello = || {
        futures::stream::iter([v1::ConnectRequest {
            message: Some(connect_request::Message::Hello(v1::WorkerHello {
                worker_id: "intruder".into(),
                tasks: vec!["demo.echo".into()],
                slots: 4,
                ..Default::default()
            })),
        }])
    };
    let channel = jobmesh_runtime::client::streaming_channel(&mesh.dispatcher_url)?;
    for (token, code, message) in [
        (
            None,
            Code::Unauthenticated,
            "missing credentials: send `authorization: Bearer <token>`".to_owned(),
        ),
        (
            Some(mesh.token(TENANT, &[scope::ADMIN])),
            Code::PermissionDenied,
            "this call needs the scope \"worker\"; the token has [admin]".to_owned(),
        ),
    ] {
        let mut client =
            WorkerServiceClient::new(auth::with_token(channel.clone(), token.as_deref()));
        let status = client.connect(hello()).await.expect_err("refused");
        assert_eq!(status.code(), code);
        assert_eq!(status.message(), message);
    }
    // Only the mesh's own worker is connected.
    let tasks = mesh
        .tasks()
        .list_tasks(v1::ListTasksRequest {})
        .await?
        .into_inner()
        .tasks;
    let echo = tasks
        .iter()
        .find(|t| t.name == "demo.echo")
        .expect("listed");
    assert_eq!(echo.workers, 1);
    assert_eq!(echo.slots, 8);
    mesh.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_submit_rate_is_limited_per_tenant() -> anyhow::Result<()> {
    let mesh = Mesh::start(MeshOptions {
        gateway: |config| {
            config.submit_rate = 0.5;
            config.submit_burst = 2;
        },
        ..MeshOptions::default()
    })
    .await?;
    let request_of = || v1::SubmitJobRequest {
        task: "nobody.home".into(),
        ..Default::default()
    };
    // The mesh's readiness probe lists jobs; it does not spend the bucket.
    let mut mine = mesh.jobs();
    mine.submit_job(request_of()).await?;
    mine.submit_job(request_of()).await?;
    let refused = mine
        .submit_job(request_of())
        .await
        .expect_err("over the rate");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused.message().starts_with(
            "tenant \"tenant-a\" is over its submit rate (0.5 per second, burst 2); retry in "
        ),
        "{}",
        refused.message()
    );
    assert_eq!(
        refused
            .metadata()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("2")
    );
    // REST: 429 with Retry-After.
    let address = mesh.gateway_url.trim_start_matches("http://").to_owned();
    let bearer = format!("Bearer {}", mesh.token(TENANT, &scope::USER));
    let reply = request(
        &address,
        "POST",
        "/v1/jobs",
        &[
            ("Authorization", &bearer),
            ("Content-Type", "application/json"),
        ],
        br#"{"task":"nobody.home"}"#,
    )
    .await?;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.header("retry-after"), Some("2"));
    assert_eq!(reply.json()?["code"], 8);
    // Another tenant has its own bucket.
    let other = mesh.token("tenant-b", &scope::USER);
    mesh.jobs_with(Some(&other))
        .submit_job(request_of())
        .await?;
    // Exactly the accepted submits were stored.
    assert_eq!(job_count(&mesh, TENANT).await?, 2);
    assert_eq!(job_count(&mesh, "tenant-b").await?, 1);
    mesh.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_gateway_refuses_at_once_and_loses_nothing() -> anyhow::Result<()> {
    let mesh = Mesh::start(MeshOptions {
        gateway: |config| config.max_inflight = 2,
        ..MeshOptions::default()
    })
    .await?;
    let jobs = mesh.jobs();
    let calls = (0..200).map(|n| {
        let mut jobs = jobs.clone();
        async move {
            jobs.submit_job(v1::SubmitJobRequest {
                task: "nobody.home".into(),
                idempotency_key: format!("overload-{n}"),
                ..Default::default()
            })
            .await
        }
    });
    let results = futures::future::join_all(calls).await;
    let accepted = results.iter().filter(|r| r.is_ok()).count();
    let refused: Vec<&tonic::Status> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        !refused.is_empty(),
        "200 concurrent calls never exceeded 2 in flight"
    );
    for status in &refused {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert_eq!(
            status.message(),
            "the gateway is overloaded (2 calls in flight, its limit --max-inflight); retry with backoff"
        );
    }
    // REST callers get the same refusal as JSON: 429 with Retry-After.
    let address = mesh.gateway_url.trim_start_matches("http://").to_owned();
    let bearer = format!("Bearer {}", mesh.token(TENANT, &scope::USER));
    let posts = (0..100).map(|n| {
        let (address, bearer) = (address.clone(), bearer.clone());
        async move {
            let body = format!(r#"{{"task":"nobody.home","idempotencyKey":"overload-rest-{n}"}}"#);
            request(
                &address,
                "POST",
                "/v1/jobs",
                &[
                    ("Authorization", &bearer),
                    ("Content-Type", "application/json"),
                ],
                body.as_bytes(),
            )
            .await
        }
    });
    let mut rest_accepted = 0;
    let mut rest_refused = 0;
    for reply in futures::future::join_all(posts).await {
        let reply = reply?;
        match reply.status {
            200 => rest_accepted += 1,
            429 => {
                rest_refused += 1;
                assert_eq!(reply.header("retry-after"), Some("1"));
                assert_eq!(
                    reply.json()?,
                    serde_json::json!({"code": 8, "message": "the gateway is overloaded (2 calls in flight, its limit --max-inflight); retry with backoff", "details": [
                        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "GATEWAY_OVERLOADED", "domain": "jobmesh.dev", "metadata": {"limit": "--max-inflight"}},
                        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}
                    ]})
                );
            }
            other => panic!("REST submit answered {other}: {:?}", reply.json()),
        }
    }
    assert!(
        rest_refused > 0,
        "100 concurrent REST calls never exceeded 2 in flight"
    );
    assert_eq!(
        job_count(&mesh, TENANT).await?,
        accepted + rest_accepted,
        "accepted = stored"
    );
    mesh.stop().await;
    Ok(())
}

/// Key rotation without a restart: the gateway reads its key file again (here
/// every second), so once the secret is replaced, tokens signed with the new one
/// are accepted and tokens signed with the old one are refused, over gRPC and
/// REST alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_signing_key_takes_effect_without_a_restart() -> anyhow::Result<()> {
    let mesh = Mesh::start(MeshOptions {
        gateway: |config| config.auth.auth_reload_secs = 1,
        ..MeshOptions::default()
    })
    .await?;
    let old = mesh.token(TENANT, &[scope::READ]);
    let list = |token: String| {
        let mut client = mesh.jobs_with(Some(&token));
        async move { client.list_jobs(v1::ListJobsRequest::default()).await }
    };
    list(old.clone()).await?;

    let rotated = std::env::temp_dir().join(format!(
        "jobmesh-rotated-{}.key",
        uuid::Uuid::new_v4().simple()
    ));
    auth::ensure_dev_key(&rotated)?;
    let new = auth::Minter::hs256_file(&rotated)?.mint(
        "test",
        Some(TENANT),
        &[scope::READ],
        Duration::from_secs(300),
    )?;
    let refused = list(new.clone()).await.expect_err("not the key in use yet");
    assert_eq!(refused.code(), Code::Unauthenticated);
    // Replace the file in one step, as a secret store or a ConfigMap update does.
    let staged = mesh.key_file.with_extension("next");
    std::fs::copy(&rotated, &staged)?;
    std::fs::rename(&staged, &mesh.key_file)?;
    let _ = std::fs::remove_file(&rotated);

    let until = std::time::Instant::now() + Duration::from_secs(15);
    while let Err(status) = list(new.clone()).await {
        anyhow::ensure!(
            std::time::Instant::now() < until,
            "the rotated key was not in use within 15 s: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let refused = list(old.clone()).await.expect_err("the retired key");
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(
        refused.message().contains("signature"),
        "says which check failed: {}",
        refused.message()
    );

    let address = mesh.gateway_url.trim_start_matches("http://").to_owned();
    for (token, status) in [(&new, 200), (&old, 401)] {
        let bearer = format!("Bearer {token}");
        let reply = request(
            &address,
            "GET",
            "/v1/jobs",
            &[("Authorization", &bearer)],
            b"",
        )
        .await?;
        assert_eq!(reply.status, status, "GET /v1/jobs");
    }
    mesh.stop().await;
    Ok(())
}

/// A REST body counts against the cap while it is read, before its call exists:
/// a caller that sends its headers and then trickles its body holds a slot, so
/// a second REST caller is refused at once (its body never buffered), and is
/// accepted once the slow one has gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_bodies_being_read_count_against_the_cap() -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt as _;
    let mesh = Mesh::start(MeshOptions {
        gateway: |config| config.max_inflight = 1,
        ..MeshOptions::default()
    })
    .await?;
    let address = mesh.gateway_url.trim_start_matches("http://").to_owned();
    let bearer = format!("Bearer {}", mesh.token(TENANT, &scope::USER));
    let headers = [
        ("Authorization", bearer.as_str()),
        ("Content-Type", "application/json"),
    ];
    let mut slow = tokio::net::TcpStream::connect(&address).await?;
    slow.write_all(
        format!(
            "POST /v1/jobs HTTP/1.1\r\nHost: {address}\r\nAuthorization: {bearer}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"task\":",
        )
        .as_bytes(),
    )
    .await?;
    slow.flush().await?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let body = br#"{"task":"nobody.home","idempotencyKey":"after-the-slow-one"}"#;
    let reply = request(&address, "POST", "/v1/jobs", &headers, body).await?;
    assert_eq!(reply.status, 429, "{:?}", reply.json());
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(
        reply.json()?,
        serde_json::json!({"code": 8, "message": "the gateway is overloaded (1 calls in flight, its limit --max-inflight); retry with backoff", "details": [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "GATEWAY_OVERLOADED", "domain": "jobmesh.dev", "metadata": {"limit": "--max-inflight"}},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}
        ]})
    );
    assert_eq!(job_count(&mesh, TENANT).await?, 0, "nothing was created");

    drop(slow);
    let until = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let reply = request(&address, "POST", "/v1/jobs", &headers, body).await?;
        if reply.status == 200 {
            break;
        }
        anyhow::ensure!(
            reply.status == 429 && std::time::Instant::now() < until,
            "after the slow caller left: {} {:?}",
            reply.status,
            reply.json()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(job_count(&mesh, TENANT).await?, 1);
    mesh.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_authorization_headers_are_refused() -> anyhow::Result<()> {
    let mesh = Mesh::start(MeshOptions::default()).await?;
    let good = mesh.token(TENANT, &scope::USER);
    let bearer = format!("Bearer {good}");
    // gRPC: the same valid token twice is still two credentials.
    let channel = jobmesh_runtime::client::channel(&mesh.gateway_url)?;
    let mut jobs = v1::job_service_client::JobServiceClient::new(channel);
    let mut request = tonic::Request::new(v1::ListJobsRequest::default());
    for _ in 0..2 {
        request
            .metadata_mut()
            .append("authorization", bearer.parse()?);
    }
    let status = jobs.list_jobs(request).await.expect_err("two credentials");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        status.message(),
        "2 authorization headers were sent; send exactly one"
    );
    // REST: the same.
    let address = mesh.gateway_url.trim_start_matches("http://");
    let reply = jobmesh_tests::http::request(
        address,
        "POST",
        "/v1/jobs",
        &[
            ("Authorization", &bearer),
            ("Authorization", &bearer),
            ("Content-Type", "application/json"),
        ],
        br#"{"task":"demo.echo"}"#,
    )
    .await?;
    assert_eq!(
        reply.status,
        401,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(job_count(&mesh, TENANT).await?, 0, "nothing was created");
    mesh.stop().await;
    Ok(())
}
