//! The `exec` handler: runs a command per job, as `sh -c COMMAND` in its own process
//! group. The job's arguments arrive as one JSON object on stdin; the job's id,
//! attempt and task in `JOBMESH_JOB_ID`, `JOBMESH_ATTEMPT`, `JOBMESH_TASK`.
//!
//! Each stdout line that is a JSON object speaks to jobmesh:
//! - `{"progress": 40, "message": "epoch 4/10"}` reports progress,
//! - `{"result": {...}}` sets the job's result,
//! - `{"error": "bad input", "retryable": false}` sets the failure to report;
//!
//! any other line is a log line of the job (stream `stdout`), as is every stderr
//! line (stream `stderr`). Exit status 0 succeeds (with the result,
//! or `{}`), unless an error line was printed; any other status fails the attempt,
//! retryably unless an error line said otherwise, with the last stderr lines as the
//! message. On cancellation or timeout the whole process group gets SIGTERM, then
//! SIGKILL after a grace period, so children the command started stop too.

use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt as _;
use tokio::io::AsyncWriteExt as _;
use tokio_util::codec::{FramedRead, LinesCodec};

use jobmesh_proto::v1::LogStream;

use crate::handler::{Handlers, JobContext, TaskError};

/// Longest stdout or stderr line read; longer lines fail the attempt.
const MAX_LINE: usize = 64 * 1024;
/// stderr kept for the failure message.
const STDERR_TAIL: usize = 2048;
/// Between SIGTERM and SIGKILL of the process group.
const KILL_GRACE: Duration = Duration::from_secs(3);

/// Parses a `TASK=COMMAND` specification (as `--exec` takes it).
pub fn parse(spec: &str) -> Result<(String, String), String> {
    let (task, command) = spec
        .split_once('=')
        .ok_or_else(|| format!("--exec {spec:?} is not TASK=COMMAND"))?;
    let (task, command) = (task.trim(), command.trim());
    if !jobmesh_runtime::names::is_task_name(task) {
        return Err(format!("--exec {spec:?}: {task:?} is not a task name"));
    }
    if command.is_empty() {
        return Err(format!("--exec {spec:?}: the command is empty"));
    }
    Ok((task.to_owned(), command.to_owned()))
}

/// Registers a task that runs `command`.
pub fn register(handlers: &mut Handlers, task: &str, command: &str) {
    let command = command.to_owned();
    handlers.register(task, move |ctx| run(ctx, command.clone()));
}

async fn run(ctx: JobContext, command: String) -> Result<serde_json::Value, TaskError> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&command)
        .env("JOBMESH_JOB_ID", &ctx.job_id)
        .env("JOBMESH_ATTEMPT", ctx.attempt.to_string())
        .env("JOBMESH_TASK", &ctx.task)
        // jobmesh's own credentials are not the command's business (and would
        // end up in its logs if it printed its environment).
        .env_remove("JOBMESH_WORKER_TOKEN")
        .env_remove("JOBMESH_WORKER_TOKEN_FILE")
        .env_remove("JOBMESH_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| TaskError::retryable(format!("cannot start {command:?}: {e}")))?;
    let pid = child.id();
    if let Some(mut stdin) = child.stdin.take() {
        let args = serde_json::to_vec(&ctx.args).unwrap_or_default();
        // A command that does not read its stdin is fine.
        let _ = stdin.write_all(&args).await;
    }
    let stdout = child
        .stdout
        .take()
        .map(|s| FramedRead::new(s, LinesCodec::new_with_max_length(MAX_LINE)));
    let stderr = child
        .stderr
        .take()
        .map(|s| FramedRead::new(s, LinesCodec::new_with_max_length(MAX_LINE)));
    let (mut stdout, mut stderr) = match (stdout, stderr) {
        (Some(out), Some(err)) => (out, err),
        _ => {
            return Err(TaskError::retryable(
                "the command's output pipes are missing",
            ));
        }
    };
    let mut result: Option<serde_json::Value> = None;
    let mut error: Option<TaskError> = None;
    let mut tail = String::new();
    let (mut out_open, mut err_open) = (true, true);
    while out_open || err_open {
        tokio::select! {
            _ = ctx.cancelled() => {
                stop_group(pid, &mut child).await;
                return Err(TaskError::permanent("cancelled"));
            }
            line = stdout.next(), if out_open => match line {
                Some(Ok(line)) => handle_line(&ctx, line, &mut result, &mut error).await,
                Some(Err(e)) => {
                    stop_group(pid, &mut child).await;
                    return Err(TaskError::permanent(format!("unreadable stdout: {e}")));
                }
                None => out_open = false,
            },
            line = stderr.next(), if err_open => match line {
                Some(Ok(line)) => {
                    tail.push_str(&line);
                    tail.push('\n');
                    if tail.len() > STDERR_TAIL {
                        let mut cut = tail.len() - STDERR_TAIL;
                        while !tail.is_char_boundary(cut) {
                            cut += 1;
                        }
                        tail.drain(..cut);
                    }
                    ctx.log_to(LogStream::Stderr, line).await;
                }
                _ => err_open = false,
            },
        }
    }
    let status = tokio::select! {
        _ = ctx.cancelled() => {
            stop_group(pid, &mut child).await;
            return Err(TaskError::permanent("cancelled"));
        }
        status = child.wait() => status.map_err(|e| TaskError::retryable(format!("waiting for the command: {e}")))?,
    };
    // Children the command left behind in its group go with it.
    signal_group(pid, "KILL").await;
    match (status.success(), error) {
        (_, Some(error)) => Err(error),
        (true, None) => Ok(result.unwrap_or_else(|| serde_json::json!({}))),
        (false, None) => {
            let how = match status.code() {
                Some(code) => format!("exited with status {code}"),
                None => "was killed by a signal".to_owned(),
            };
            let detail = tail.trim();
            Err(TaskError::retryable(if detail.is_empty() {
                format!("the command {how}")
            } else {
                format!("the command {how}: {detail}")
            }))
        }
    }
}

async fn handle_line(
    ctx: &JobContext,
    line: String,
    result: &mut Option<serde_json::Value>,
    error: &mut Option<TaskError>,
) {
    let message = match serde_json::from_str::<serde_json::Value>(&line) {
        Ok(serde_json::Value::Object(message)) => message,
        _ => return ctx.log_to(LogStream::Stdout, line).await,
    };
    if let Some(percent) = message.get("progress").and_then(|p| p.as_f64()) {
        let text = message
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or_default();
        ctx.progress(percent.clamp(0.0, 100.0) as i32, text).await;
    } else if let Some(value) = message.get("result") {
        *result = Some(value.clone());
    } else if let Some(text) = message.get("error") {
        let text = text
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| text.to_string());
        let retryable = message
            .get("retryable")
            .and_then(|r| r.as_bool())
            .unwrap_or(true);
        *error = Some(TaskError {
            message: text,
            retryable,
        });
    } else {
        ctx.log_to(LogStream::Stdout, line).await;
    }
}

/// SIGTERM to the command's process group, SIGKILL after the grace period.
async fn stop_group(pid: Option<u32>, child: &mut tokio::process::Child) {
    signal_group(pid, "TERM").await;
    if tokio::time::timeout(KILL_GRACE, child.wait())
        .await
        .is_err()
    {
        signal_group(pid, "KILL").await;
        let _ = child.wait().await;
    }
    // The leader may be gone while others in its group are not.
    signal_group(pid, "KILL").await;
}

/// Signals every process of the group led by `pid` (kill(1) with a negative id).
async fn signal_group(pid: Option<u32>, signal: &str) {
    let Some(pid) = pid else { return };
    let _ = tokio::process::Command::new("kill")
        .args(["-s", signal, "--", &format!("-{pid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
}
