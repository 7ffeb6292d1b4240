//! Credentials never reach the logs: with every service logging at debug, good
//! and refused tokens over gRPC and REST leave no token and no key in the output,
//! and the passwords in the PostgreSQL and NATS URLs appear nowhere.

use std::io::Write;
use std::sync::{Arc, Mutex};

use jobmesh_auth::scope;
use jobmesh_proto::v1;
use jobmesh_tests::http::request;
use jobmesh_tests::{Mesh, MeshOptions, TENANT};

/// Everything logged, kept in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_or_key_is_ever_logged() -> anyhow::Result<()> {
    let logs = Captured::default();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
        .with_writer(logs.clone())
        .with_ansi(false)
        .init();
    // The local servers do not check these credentials; the services must still
    // keep them out of every line.
    let mesh = Mesh::start(MeshOptions {
        store: |config| {
            config.database_url =
                config
                    .database_url
                    .replacen("postgres@", "postgres:pg-s3cret-pw@", 1);
            config.nats.url =
                config
                    .nats
                    .url
                    .replacen("nats://", "nats://nats-user:nats-s3cret-pw@", 1);
        },
        dispatcher: |config| {
            config.nats.url =
                config
                    .nats
                    .url
                    .replacen("nats://", "nats://nats-user:nats-s3cret-pw@", 1);
        },
        ..MeshOptions::default()
    })
    .await?;
    let good = mesh.token(TENANT, &scope::USER);
    let reader = mesh.token(TENANT, &[scope::READ]);
    let forged = format!("{}x", &good[..good.len() - 1]);
    let job = mesh
        .submit(v1::SubmitJobRequest {
            task: "demo.echo".into(),
            ..Default::default()
        })
        .await?;
    mesh.finished(&job.id, std::time::Duration::from_secs(20))
        .await?;
    for token in [&good, &reader, &forged] {
        let _ = mesh
            .jobs_with(Some(token))
            .submit_job(v1::SubmitJobRequest {
                task: "demo.echo".into(),
                ..Default::default()
            })
            .await;
        let address = mesh.gateway_url.trim_start_matches("http://");
        let bearer = format!("Bearer {token}");
        request(
            address,
            "POST",
            "/v1/jobs",
            &[
                ("Authorization", &bearer),
                ("Content-Type", "application/json"),
            ],
            br#"{"task":"demo.echo"}"#,
        )
        .await?;
        request(
            address,
            "GET",
            "/v1/jobs/nope",
            &[("Authorization", &bearer)],
            b"",
        )
        .await?;
    }
    let key = std::fs::read_to_string(&mesh.key_file)?;
    mesh.stop().await;

    let text =
        String::from_utf8_lossy(&logs.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
    assert!(
        text.contains("request refused: unauthenticated"),
        "the refusals were logged (with their reason): debug logging is on"
    );
    assert!(
        text.contains("nats-user:***@"),
        "the NATS URL is logged, redacted: debug logging is on"
    );
    for (what, secret) in [
        ("the PostgreSQL password", "pg-s3cret-pw"),
        ("the NATS password", "nats-s3cret-pw"),
        ("a valid token", good.as_str()),
        ("a read token", reader.as_str()),
        ("a forged token", forged.as_str()),
        ("the signing key", key.trim()),
    ] {
        // The signature part alone is enough to be a leak.
        let tail = &secret[secret.len().saturating_sub(24)..];
        let line = text.lines().find(|l| l.contains(tail)).unwrap_or_default();
        assert!(!text.contains(tail), "{what} appears in the logs: {line}");
    }
    Ok(())
}
