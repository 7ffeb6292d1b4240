//! Built-in demo tasks: `demo.echo`, `demo.sleep`, `demo.fail`, `demo.logs`.

use std::time::Duration;

use serde_json::json;

use crate::handler::{Handlers, JobContext, TaskError};

pub(crate) fn register(handlers: &mut Handlers) {
    handlers.register("demo.echo", echo);
    handlers.register("demo.sleep", sleep);
    handlers.register("demo.fail", fail);
    handlers.register("demo.logs", logs);
}

/// Prints `lines` log lines (default 10, at most 10 000 000) of about `width`
/// characters (default 40, at most 10 000), or the string `text` each time when
/// given, as fast as the mesh takes them, or one every `interval_ms`; reports
/// progress every tenth.
async fn logs(ctx: JobContext) -> Result<serde_json::Value, TaskError> {
    let number = |name: &str, default: u64, max: u64| -> Result<u64, TaskError> {
        match ctx.args.get(name) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .filter(|n| n.fract() == 0.0 && (0.0..=max as f64).contains(n))
                .map(|n| n as u64)
                .ok_or_else(|| {
                    TaskError::permanent(format!(
                        "args.{name}: {v} is not an integer between 0 and {max}"
                    ))
                }),
        }
    };
    let lines = number("lines", 10, 10_000_000)?;
    let width = number("width", 40, 10_000)? as usize;
    let interval = Duration::from_millis(number("interval_ms", 0, 60_000)?);
    let text = ctx
        .args
        .get("text")
        .and_then(|t| t.as_str())
        .map(str::to_owned);
    let tenth = (lines / 10).max(1);
    for n in 1..=lines {
        if ctx.is_cancelled() {
            return Err(TaskError::permanent("cancelled"));
        }
        let mut line = match &text {
            Some(text) => text.clone(),
            None => format!("line {n} of {lines} "),
        };
        while text.is_none() && line.len() < width {
            line.push('.');
        }
        ctx.log(line).await;
        if n % tenth == 0 {
            let percent = i32::try_from(n * 100 / lines).unwrap_or(100);
            ctx.progress(percent, format!("{n}/{lines} lines")).await;
        }
        if !interval.is_zero() {
            tokio::select! {
                _ = ctx.cancelled() => return Err(TaskError::permanent("cancelled")),
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
    Ok(json!({ "lines": lines }))
}

/// Returns its arguments.
async fn echo(ctx: JobContext) -> Result<serde_json::Value, TaskError> {
    Ok(ctx.args)
}

/// Sleeps `seconds` (default 1, at most 86400) in `steps` steps (default 10, at most
/// 10000), reporting progress after each; stops early when cancelled. The result
/// names the attempt that produced it.
async fn sleep(ctx: JobContext) -> Result<serde_json::Value, TaskError> {
    let seconds = match ctx.args.get("seconds") {
        None => 1.0,
        Some(v) => v
            .as_f64()
            .filter(|s| (0.0..=86_400.0).contains(s))
            .ok_or_else(|| {
                TaskError::permanent(format!(
                    "args.seconds: {v} is not a number between 0 and 86400"
                ))
            })?,
    };
    let steps = match ctx.args.get("steps") {
        None => 10,
        // JSON numbers arrive as floats through protobuf Struct: accept 4.0 as 4.
        Some(v) => v
            .as_f64()
            .filter(|s| s.fract() == 0.0 && (1.0..=10_000.0).contains(s))
            .map(|s| s as u64)
            .ok_or_else(|| {
                TaskError::permanent(format!(
                    "args.steps: {v} is not an integer between 1 and 10000"
                ))
            })?,
    };
    let step = Duration::from_secs_f64(seconds / steps as f64);
    for n in 1..=steps {
        tokio::select! {
            _ = ctx.cancelled() => return Err(TaskError::permanent("cancelled")),
            _ = tokio::time::sleep(step) => {}
        }
        let percent = i32::try_from(n * 100 / steps).unwrap_or(100);
        ctx.progress(percent, format!("step {n}/{steps}")).await;
    }
    Ok(json!({ "slept_seconds": seconds, "steps": steps, "attempt": ctx.attempt }))
}

/// Fails with `message` (default "demo failure"); `retryable` (default false).
async fn fail(ctx: JobContext) -> Result<serde_json::Value, TaskError> {
    let message = ctx
        .args
        .get("message")
        .and_then(|m| m.as_str())
        .unwrap_or("demo failure")
        .to_owned();
    let retryable = ctx
        .args
        .get("retryable")
        .and_then(|r| r.as_bool())
        .unwrap_or(false);
    Err(TaskError { message, retryable })
}
