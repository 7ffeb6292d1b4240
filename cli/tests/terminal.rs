//! The terminal side of the `jobmesh` binary against a real mesh: `watch` draws
//! one redrawn progress line under a pseudo-terminal and stays JSON lines when
//! piped; `logs` prints exactly what the job printed.

use std::io::Read as _;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use jobmesh_auth::scope;
use jobmesh_proto::json::json_to_struct;
use jobmesh_proto::v1::{self, JobState};
use jobmesh_tests::{Mesh, MeshOptions, TENANT, WorkerSpec};

/// Longest a command may run before the test gives up on it (a hang guard, not
/// a speed check).
const PATIENCE: Duration = Duration::from_secs(90);

async fn mesh() -> anyhow::Result<Mesh> {
    let mut handlers = jobmesh_worker::Handlers::builtin();
    jobmesh_worker::register_exec(&mut handlers, "demo.lines", "printf 'one\\ntwo\\nthree\\n'");
    Mesh::start(MeshOptions {
        workers: vec![WorkerSpec {
            worker_id: "worker-1".to_owned(),
            slots: 4,
            handlers,
        }],
        ..Default::default()
    })
    .await
}

/// `jobmesh` talking to the mesh as a user of [`TENANT`], with nothing of the
/// test's own environment.
fn jobmesh(mesh: &Mesh, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_jobmesh"));
    for (key, _) in std::env::vars() {
        if key.starts_with("JOBMESH_") {
            command.env_remove(key);
        }
    }
    command
        .args(args)
        .env("JOBMESH_GATEWAY_URL", &mesh.gateway_url)
        .env("JOBMESH_TOKEN", mesh.token(TENANT, &scope::USER))
        .env("TERM", "xterm-256color")
        .stdin(Stdio::null());
    command
}

async fn submit(mesh: &Mesh, task: &str, args: serde_json::Value) -> anyhow::Result<v1::Job> {
    let serde_json::Value::Object(args) = args else {
        anyhow::bail!("args must be an object");
    };
    mesh.submit(v1::SubmitJobRequest {
        task: task.to_owned(),
        args: Some(json_to_struct(&args)),
        ..Default::default()
    })
    .await
}

/// Runs `command` to its end with stdout and stderr piped.
async fn piped(mut command: Command) -> anyhow::Result<Output> {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = tokio::process::Command::from(command)
        .kill_on_drop(true)
        .spawn()?;
    tokio::time::timeout(PATIENCE, child.wait_with_output())
        .await
        .context("jobmesh did not end")?
        .context("jobmesh")
}

/// Runs `command` with stdout on a new pseudo-terminal (120 columns) and stderr
/// piped; returns the exit status, everything written to the terminal, and stderr.
fn on_terminal(mut command: Command) -> anyhow::Result<(std::process::ExitStatus, String, String)> {
    use rustix::fs::{Mode, OFlags};
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    rustix::termios::tcsetwinsize(
        &master,
        rustix::termios::Winsize {
            ws_row: 24,
            ws_col: 120,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )?;
    let name = ptsname(&master, Vec::new())?;
    let terminal = rustix::fs::open(
        name.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    command
        .stdout(std::fs::File::from(terminal))
        .stderr(Stdio::piped());
    let mut child = command.spawn()?;
    // Only the child holds the terminal side now: reading ends when it exits.
    drop(command);
    let mut master = std::fs::File::from(master);
    let reader = std::thread::spawn(move || {
        let mut screen = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            match master.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => screen.extend_from_slice(&buffer[..n]),
                // Linux answers EIO once the last holder of the terminal closed it.
                Err(_) => break,
            }
        }
        screen
    });
    let mut stderr = child.stderr.take().context("stderr")?;
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > PATIENCE {
            let _ = child.kill();
            anyhow::bail!("jobmesh did not end within {PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let screen = reader.join().map_err(|_| anyhow::anyhow!("reader"))?;
    let errors = errors
        .join()
        .map_err(|_| anyhow::anyhow!("stderr reader"))?;
    Ok((
        status,
        String::from_utf8_lossy(&screen).into_owned(),
        errors,
    ))
}

/// Every `NN%` in the text, in order.
fn percents(text: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for (at, _) in text.match_indices('%') {
        let digits: String = text[..at]
            .chars()
            .rev()
            .take_while(char::is_ascii_digit)
            .collect();
        if let Ok(percent) = digits.chars().rev().collect::<String>().parse() {
            found.push(percent);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_on_a_terminal_redraws_one_progress_line() -> anyhow::Result<()> {
    let mesh = mesh().await?;
    let job = submit(
        &mesh,
        "demo.sleep",
        serde_json::json!({"seconds": 2, "steps": 4}),
    )
    .await?;
    let command = jobmesh(&mesh, &["watch", &job.id]);
    let (status, screen, stderr) =
        tokio::task::spawn_blocking(move || on_terminal(command)).await??;
    mesh.stop().await;

    assert!(status.success(), "{status}: {screen:?} {stderr}");
    // Cursor control: the line is cleared and drawn again, not appended to.
    assert!(screen.contains("\x1b["), "no cursor control: {screen:?}");
    // The bar is one line redrawn in place: one terminal line shows several
    // percentages, in the order the job reached them.
    let line_of_bar = screen
        .split('\n')
        .map(percents)
        .max_by_key(Vec::len)
        .unwrap_or_default();
    assert!(line_of_bar.len() >= 2, "no line was redrawn: {screen:?}");
    let all = percents(&screen);
    assert!(
        all.windows(2).all(|w| w[0] <= w[1]),
        "the percentage went back: {all:?} in {screen:?}"
    );
    assert!(
        all.iter().any(|p| (1..100).contains(p)),
        "no progress between 0 and 100 was shown: {all:?} in {screen:?}"
    );
    assert_eq!(all.last(), Some(&100), "{screen:?}");
    assert!(screen.contains("RUNNING"), "{screen:?}");
    assert!(
        screen.contains("SUCCEEDED in "),
        "no closing line: {screen:?}"
    );
    // No JSON on a terminal.
    for piece in screen.split(['\r', '\n']) {
        assert!(
            serde_json::from_str::<serde_json::Value>(piece.trim()).is_err(),
            "a JSON line on the terminal: {piece:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_without_a_terminal_prints_json_lines() -> anyhow::Result<()> {
    let mesh = mesh().await?;
    let job = submit(
        &mesh,
        "demo.sleep",
        serde_json::json!({"seconds": 2, "steps": 4}),
    )
    .await?;
    let output = piped(jobmesh(&mesh, &["watch", &job.id])).await?;
    mesh.stop().await;

    let stdout = String::from_utf8(output.stdout)?;
    assert!(
        output.status.success(),
        "{}: {stdout} {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let mut versions = Vec::new();
    let mut last_state = String::new();
    for line in stdout.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("not JSON: {line:?}"))?;
        assert_eq!(value["id"], job.id.as_str(), "{line}");
        let version: u64 = value["version"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no version: {line}"))?;
        versions.push(version);
        last_state = value["state"].as_str().unwrap_or_default().to_owned();
    }
    assert!(versions.len() >= 2, "{stdout}");
    assert!(
        versions.windows(2).all(|w| w[0] < w[1]),
        "versions not increasing: {versions:?}"
    );
    assert_eq!(last_state, JobState::Succeeded.as_str_name(), "{stdout}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_prints_what_the_job_printed() -> anyhow::Result<()> {
    let mesh = mesh().await?;
    let job = submit(&mesh, "demo.lines", serde_json::json!({})).await?;
    let finished = mesh.finished(&job.id, PATIENCE).await?;
    assert_eq!(finished.state(), JobState::Succeeded, "{finished:?}");
    let output = piped(jobmesh(&mesh, &["logs", &job.id])).await?;
    mesh.stop().await;

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{}: {stderr}", output.status);
    assert_eq!(
        String::from_utf8(output.stdout)?,
        "one\ntwo\nthree\n",
        "{stderr}"
    );
    Ok(())
}

/// `jobmesh list | head`: the reader closes the pipe early, and `jobmesh` ends
/// quietly (exit 0, nothing on stderr) instead of `error: Broken pipe`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_into_a_closed_pipe_ends_quietly() -> anyhow::Result<()> {
    let mesh = mesh().await?;
    // Queued jobs of a task no worker offers: a page of them is ~200 KB of JSON,
    // more than a pipe holds.
    for _ in 0..300 {
        submit(
            &mesh,
            "nobody.runs.this",
            serde_json::json!({"pad": "x".repeat(200)}),
        )
        .await?;
    }
    let mut command = jobmesh(&mesh, &["list", "--page-size", "300"]);
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Read a little, as `head` does, then close the pipe.
    let mut stdout = child.stdout.take().context("stdout")?;
    let mut first = [0u8; 64];
    stdout.read_exact(&mut first)?;
    drop(stdout);
    let started = Instant::now();
    let output = loop {
        if let Some(_status) = child.try_wait()? {
            break child.wait_with_output()?;
        }
        anyhow::ensure!(started.elapsed() < PATIENCE, "jobmesh list did not end");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(output.status.success(), "{:?}", output.status);
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "",
        "nothing to say"
    );
    mesh.stop().await;
    Ok(())
}

/// A mistyped task does not sit QUEUED without a word: `jobmesh submit` warns
/// when no connected worker offers it, and names the tasks that are offered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_warns_when_no_worker_offers_the_task() -> anyhow::Result<()> {
    let mesh = mesh().await?;
    let typo = piped(jobmesh(&mesh, &["submit", "demo.slep"])).await?;
    assert!(typo.status.success(), "the job is accepted: {typo:?}");
    let said = String::from_utf8_lossy(&typo.stderr);
    assert!(
        said.contains("no connected worker offers task \"demo.slep\"")
            && said.contains("demo.sleep"),
        "warned, with the tasks offered: {said}"
    );
    let fine = piped(jobmesh(&mesh, &["submit", "demo.echo"])).await?;
    assert!(fine.status.success(), "{fine:?}");
    assert_eq!(
        String::from_utf8_lossy(&fine.stderr),
        "",
        "no warning for an offered task"
    );
    mesh.stop().await;
    Ok(())
}
