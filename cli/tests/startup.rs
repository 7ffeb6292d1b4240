//! A production start without a verification key is refused, and says what to
//! give; `--insecure-no-auth` starts, loudly.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn jobmesh() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_jobmesh"));
    for (key, _) in std::env::vars() {
        if key.starts_with("JOBMESH_") {
            command.env_remove(key);
        }
    }
    command.env("RUST_LOG", "info");
    command
}

#[test]
fn gateway_and_dispatcher_refuse_to_start_without_a_key() {
    for mode in ["gateway", "dispatcher"] {
        let output = jobmesh()
            .args([mode, "--listen", "127.0.0.1:0"])
            .output()
            .expect("run jobmesh");
        assert!(!output.status.success(), "{mode} started without a key");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("no token verification key configured: give --auth-hs256-secret-file, --auth-public-key-file or --auth-jwks-file, or --insecure-no-auth"),
            "{mode}: {stderr}"
        );
    }
}

#[test]
fn insecure_no_auth_starts_and_warns() {
    let mut child = jobmesh()
        .args(["gateway", "--listen", "127.0.0.1:0", "--insecure-no-auth"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run jobmesh");
    // It serves until stopped; give it a moment, then read what it said.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the gateway exited: {status}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let output = child.wait_with_output().expect("output");
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(logs.contains("AUTHENTICATION IS OFF"), "{logs}");
}
