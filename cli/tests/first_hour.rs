//! A new user's first hour with `jobmesh worker` (issue #16): next to the dev
//! key it needs no token, an `--exec` worker offers only what it was given
//! (`--demo-tasks` adds the demo tasks), and a worker without any credential
//! says how to get one instead of only "missing credentials".

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jobmesh_proto::v1::{self, JobState};
use jobmesh_tests::{Mesh, MeshOptions};

const PATIENCE: Duration = Duration::from_secs(30);

/// `jobmesh worker` against the mesh's dispatcher, with nothing of the test's
/// own environment but the dev key file given.
/// A worker process, killed (and reaped) when dropped: also when a test fails.
struct Worker(Option<Child>);

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn worker(mesh: &Mesh, key_file: &std::path::Path, id: &str, args: &[&str]) -> Worker {
    let mut command = Command::new(env!("CARGO_BIN_EXE_jobmesh"));
    for (key, _) in std::env::vars() {
        if key.starts_with("JOBMESH_") || key.starts_with("OTEL_") {
            command.env_remove(key);
        }
    }
    command
        .arg("worker")
        .args(["--dispatcher-url", &mesh.dispatcher_url, "--worker-id", id])
        .args(args)
        .env("JOBMESH_DEV_KEY_FILE", key_file)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map(|child| Worker(Some(child)))
        .expect("the jobmesh binary runs")
}

/// The workers connected now.
async fn connected(mesh: &Mesh) -> anyhow::Result<Vec<v1::WorkerInfo>> {
    Ok(mesh
        .tasks_with(Some(&mesh.operator_token()))
        .list_workers(v1::ListWorkersRequest {})
        .await?
        .into_inner()
        .workers)
}

/// The tasks worker `id` offers once it is connected.
async fn offered(mesh: &Mesh, id: &str) -> anyhow::Result<Vec<String>> {
    let until = Instant::now() + PATIENCE;
    loop {
        let workers = connected(mesh).await?;
        if let Some(worker) = workers.iter().find(|w| w.worker_id == id) {
            let mut tasks = worker.tasks.clone();
            tasks.sort();
            return Ok(tasks);
        }
        anyhow::ensure!(
            Instant::now() < until,
            "worker {id} did not connect: {workers:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn stop(mut worker: Worker) -> String {
    let Some(mut child) = worker.0.take() else {
        return String::new();
    };
    let _ = child.kill();
    let output = child.wait_with_output().expect("the worker's output");
    // Its log goes to stdout, clap's errors to stderr.
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_worker_next_to_the_dev_key_needs_no_token_and_offers_only_its_tasks()
-> anyhow::Result<()> {
    let mesh = Mesh::start(MeshOptions {
        workers: Vec::new(),
        ..Default::default()
    })
    .await?;
    // The dev key is the mesh's own signing key, as with `jobmesh dev`.
    let exec = worker(
        &mesh,
        &mesh.key_file,
        "exec-only",
        &[
            "--exec",
            r#"ml.train=echo '{"result": {"accuracy": 0.93}}'"#,
        ],
    );
    let tasks = offered(&mesh, "exec-only").await?;
    assert_eq!(tasks, ["ml.train"], "only the task it was given");
    let job = mesh
        .submit(v1::SubmitJobRequest {
            task: "ml.train".into(),
            ..Default::default()
        })
        .await?;
    let done = mesh.finished(&job.id, PATIENCE).await?;
    assert_eq!(done.state(), JobState::Succeeded, "{done:?}");
    let log = stop(exec);
    assert!(
        log.contains("using one minted with the dev key"),
        "says where its token came from: {log}"
    );

    let with_demo = worker(
        &mesh,
        &mesh.key_file,
        "exec-and-demo",
        &["--exec", "ml.train=true", "--demo-tasks"],
    );
    let tasks = offered(&mesh, "exec-and-demo").await?;
    assert!(
        tasks.contains(&"ml.train".to_owned()) && tasks.contains(&"demo.sleep".to_owned()),
        "--demo-tasks adds the demo tasks: {tasks:?}"
    );
    stop(with_demo);
    mesh.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_without_a_credential_says_how_to_get_one() -> anyhow::Result<()> {
    let mesh = Mesh::start(MeshOptions {
        workers: Vec::new(),
        ..Default::default()
    })
    .await?;
    let nowhere = std::env::temp_dir().join(format!("no-such-key-{}", std::process::id()));
    let lost = worker(&mesh, &nowhere, "no-credential", &[]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let workers = connected(&mesh).await?;
    assert!(
        workers.iter().all(|w| w.worker_id != "no-credential"),
        "refused: {workers:?}"
    );
    let log = stop(lost);
    assert!(
        log.contains("this worker has no credential")
            && log.contains("jobmesh token --scope worker"),
        "the refusal says what to do: {log}"
    );
    mesh.stop().await;
    Ok(())
}
