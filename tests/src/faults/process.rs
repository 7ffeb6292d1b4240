//! One child process of a cluster, by PID: killed, stopped, continued, restarted.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use tokio::process::{Child, Command};

/// One child process that can be killed, stopped, continued and restarted with the
/// same command line.
pub struct Proc {
    pub name: String,
    program: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    pub fn new(
        name: &str,
        program: &Path,
        args: &[String],
        envs: &[(&str, String)],
        dir: &Path,
    ) -> Self {
        Self {
            name: name.to_owned(),
            program: program.to_owned(),
            args: args.to_vec(),
            envs: envs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            log: dir.join(format!("{name}.log")),
            child: None,
        }
    }

    /// Adds environment variables.
    pub fn with_env(mut self, extra: &[(&str, String)]) -> Self {
        self.envs
            .extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        self
    }

    /// Starts the process, its output appended to `<dir>/<name>.log`.
    pub fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.envs.iter().cloned())
            .env(
                "RUST_LOG",
                std::env::var("JOBMESH_FAULT_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} ({})", self.name, self.program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Sends a signal by name (`KILL`, `TERM`, `STOP`, `CONT`) with kill(1).
    pub async fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self
            .pid()
            .with_context(|| format!("{} is not running", self.name))?;
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .await?;
        ensure!(status.success(), "kill -{signal} {pid} failed");
        Ok(())
    }

    /// `kill -9`, then reaps the process.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        self.signal("KILL").await?;
        if let Some(mut child) = self.child.take() {
            child.wait().await?;
        }
        Ok(())
    }

    /// `kill -TERM` and waits (at most `grace`) for the process to exit.
    pub async fn terminate(&mut self, grace: Duration) -> anyhow::Result<bool> {
        self.signal("TERM").await?;
        self.exited(grace).await
    }

    /// Waits (at most `limit`) for the process to exit; whether it exited 0 in
    /// time (if not, it is killed).
    pub async fn exited(&mut self, limit: Duration) -> anyhow::Result<bool> {
        let Some(mut child) = self.child.take() else {
            return Ok(true);
        };
        match tokio::time::timeout(limit, child.wait()).await {
            Ok(status) => Ok(status?.success()),
            Err(_) => {
                child.kill().await?;
                Ok(false)
            }
        }
    }

    /// The tail of the process's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = match std::fs::read(&self.log) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(error) => format!("(cannot read {}: {error})", self.log.display()),
        };
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}
