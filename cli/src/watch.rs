//! `jobmesh watch` (and `submit --watch`): a live progress bar on a terminal, one
//! JSON line per change otherwise; `jobmesh list --watch`: every change of the
//! caller's jobs. Ctrl-C stops watching and leaves the jobs alone.

use std::fmt;
use std::io::{self, IsTerminal as _, Write as _};
use std::pin::pin;
use std::time::Duration;

use anyhow::{Context as _, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use jobmesh_proto::json::struct_to_json;
use jobmesh_proto::v1::{self, JobState};

use crate::client::{GatewayAddr, ListArgs, parse_state, status};
use crate::logs::{self, Printer};
use crate::output;

/// How long the log side stream may go on after the job has ended (its last
/// lines may still be on their way).
const LOG_DRAIN: Duration = Duration::from_secs(5);
/// Longest result shown on the closing line of the bar.
const MAX_RESULT_CHARS: usize = 500;
/// Redraws of the bar without a change, to keep the elapsed time moving.
const TICK: Duration = Duration::from_millis(200);

#[derive(clap::Args, Debug)]
pub(crate) struct WatchArgs {
    /// Job id.
    pub(crate) job_id: String,
    #[command(flatten)]
    pub(crate) view: ViewArgs,
    #[command(flatten)]
    pub(crate) addr: GatewayAddr,
}

#[derive(clap::Args, Debug, Clone, Copy)]
pub(crate) struct ViewArgs {
    /// One JSON line per change even on a terminal (the output when stdout is not
    /// a terminal).
    #[arg(long)]
    pub(crate) json: bool,
    /// Also print the job's log lines as they arrive (as `{"log": …}` lines in
    /// JSON).
    #[arg(long)]
    pub(crate) logs: bool,
}

/// Watching ended with Ctrl-C: the process exits 130 after saying this on stderr.
#[derive(Debug)]
pub(crate) struct Interrupted(String);

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Interrupted {}

pub(crate) async fn watch(args: WatchArgs) -> anyhow::Result<()> {
    let mut view = if !args.view.json && io::stdout().is_terminal() {
        View::Bar(Bar::default())
    } else {
        View::Json
    };
    let outcome = follow(&args, &mut view).await;
    let last = match outcome {
        Ok(Some(last)) => last,
        Ok(None) => {
            view.abandon();
            bail!("the watch ended without any event")
        }
        Err(error) => {
            view.abandon();
            return Err(error);
        }
    };
    view.end(&last)?;
    match last.state() {
        JobState::Succeeded => Ok(()),
        state => bail!("job ended {}", state.as_str_name()),
    }
}

/// Shows the job's changes (and log lines) until its watch ends; the last snapshot.
async fn follow(args: &WatchArgs, view: &mut View) -> anyhow::Result<Option<v1::Job>> {
    let mut jobs = args.addr.jobs()?;
    let mut changes = jobs
        .watch_job(v1::WatchJobRequest {
            job_id: args.job_id.clone(),
        })
        .await
        .map_err(status)?
        .into_inner();
    let mut side = args
        .view
        .logs
        .then(|| logs::follow(jobs.clone(), args.job_id.clone()));
    let mut ctrl_c = pin!(tokio::signal::ctrl_c());
    let mut drained = pin!(tokio::time::sleep(Duration::MAX));
    let mut watching = true;
    let mut last = None;
    while watching || side.is_some() {
        tokio::select! {
            _ = &mut ctrl_c => {
                view.abandon();
                return Err(Interrupted(format!(
                    "stopped watching; job {id} goes on (jobmesh watch {id} to follow it again)",
                    id = args.job_id
                ))
                .into());
            }
            change = changes.message(), if watching => match change.map_err(status)? {
                Some(change) => {
                    if let Some(job) = change.job {
                        view.job(&job)?;
                        last = Some(job);
                    }
                }
                None => {
                    watching = false;
                    drained.as_mut().reset(tokio::time::Instant::now() + LOG_DRAIN);
                }
            },
            entry = next(&mut side), if side.is_some() => match entry {
                Some(Ok(entry)) => view.log(&entry)?,
                Some(Err(error)) => {
                    view.notice(&format!("no log lines: {:#}", status(error)));
                    side = None;
                }
                None => side = None,
            },
            _ = &mut drained, if !watching => {
                view.notice(&format!(
                    "the log was still open {}s after the job ended (jobmesh logs {} shows every line)",
                    LOG_DRAIN.as_secs(),
                    args.job_id
                ));
                side = None;
            }
        }
    }
    Ok(last)
}

async fn next(side: &mut Option<logs::Side>) -> Option<Result<v1::LogEntry, tonic::Status>> {
    match side {
        Some(side) => side.recv().await,
        None => None,
    }
}

enum View {
    Json,
    Bar(Bar),
}

impl View {
    fn job(&mut self, job: &v1::Job) -> anyhow::Result<()> {
        match self {
            View::Json => json_line(&output::job(job)),
            View::Bar(bar) => bar.job(job),
        }
    }

    fn log(&mut self, entry: &v1::LogEntry) -> anyhow::Result<()> {
        match self {
            View::Json => json_line(&serde_json::json!({ "log": output::log_entry(entry) })),
            View::Bar(bar) => Ok(bar.log(entry)?),
        }
    }

    fn notice(&self, text: &str) {
        match self {
            View::Json => eprintln!("{text}"),
            View::Bar(bar) => bar.suspend(|| eprintln!("{text}")),
        }
    }

    /// The bar stays where it got to (after an error or Ctrl-C).
    fn abandon(&mut self) {
        if let View::Bar(bar) = self {
            bar.abandon();
        }
    }

    fn end(&mut self, last: &v1::Job) -> anyhow::Result<()> {
        match self {
            View::Json => Ok(()),
            View::Bar(bar) => bar.end(last),
        }
    }
}

fn json_line(value: &serde_json::Value) -> anyhow::Result<()> {
    let line = serde_json::to_string(value)?;
    writeln!(io::stdout().lock(), "{line}")?;
    Ok(())
}

/// One line redrawn in place: spinner, state, bar, percent, elapsed time since
/// the job was created, progress message. Log lines are printed above it.
#[derive(Default)]
struct Bar {
    bar: Option<ProgressBar>,
    printer: Printer,
}

impl Bar {
    fn job(&mut self, job: &v1::Job) -> anyhow::Result<()> {
        let bar = match &self.bar {
            Some(bar) => bar,
            None => self.bar.insert(new_bar(job)?),
        };
        let state = job.state().as_str_name().trim_start_matches("JOB_STATE_");
        bar.set_prefix(if job.cancel_requested && !job.state().is_terminal() {
            "CANCELLING"
        } else {
            state
        });
        let percent = job.progress.as_ref().map_or(0, |p| p.percent.clamp(0, 100));
        bar.set_position(u64::try_from(percent).unwrap_or(0));
        let message = job.progress.as_ref().map_or("", |p| p.message.as_str());
        bar.set_message(if job.attempt > 1 {
            format!("[attempt {}/{}] {message}", job.attempt, job.max_attempts)
        } else {
            message.to_owned()
        });
        Ok(())
    }

    fn log(&mut self, entry: &v1::LogEntry) -> io::Result<()> {
        let Bar { bar, printer } = self;
        match bar {
            Some(bar) => bar.suspend(|| printer.print(entry)),
            None => printer.print(entry),
        }
    }

    fn suspend(&self, f: impl FnOnce()) {
        match &self.bar {
            Some(bar) => bar.suspend(f),
            None => f(),
        }
    }

    fn abandon(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.abandon();
        }
    }

    /// Leaves the bar at its final state and prints a closing line under it.
    fn end(&mut self, job: &v1::Job) -> anyhow::Result<()> {
        let state = job.state();
        if let Some(bar) = self.bar.take() {
            // `finish` fills the bar; a job that did not succeed stays where it got to.
            if state == JobState::Succeeded {
                bar.finish();
            } else {
                bar.abandon();
            }
        }
        let took = output::between(
            if job.start_time.is_some() {
                &job.start_time
            } else {
                &job.create_time
            },
            &job.finish_time,
        )
        .map(output::span)
        .unwrap_or_else(|| "?".to_owned());
        let attempts = format!("attempt {} of {}", job.attempt, job.max_attempts);
        let name = state.as_str_name().trim_start_matches("JOB_STATE_");
        let line = match (&job.result, &job.error) {
            (Some(result), _) if state == JobState::Succeeded => {
                let result = serde_json::Value::Object(struct_to_json(result)).to_string();
                format!("{name} in {took} ({attempts}), result {}", cut(&result))
            }
            (_, Some(error)) => format!("{name} after {took} ({attempts}): {}", error.message),
            _ => format!("{name} after {took} ({attempts})"),
        };
        writeln!(io::stdout().lock(), "{line}")?;
        Ok(())
    }
}

fn new_bar(job: &v1::Job) -> anyhow::Result<ProgressBar> {
    let style = ProgressStyle::with_template(
        "{spinner:.cyan} {prefix:<10.bold} [{bar:30.cyan/blue}] {pos:>3}% {elapsed_precise} {wide_msg}",
    )
    .context("progress bar template")?
    .progress_chars("=> ");
    let elapsed = output::between(&job.create_time, &None).unwrap_or(Duration::ZERO);
    let bar = ProgressBar::with_draw_target(Some(100), ProgressDrawTarget::stdout())
        .with_style(style)
        .with_elapsed(elapsed);
    bar.enable_steady_tick(TICK);
    Ok(bar)
}

fn cut(text: &str) -> String {
    match text.char_indices().nth(MAX_RESULT_CHARS) {
        Some((at, _)) => format!("{}… (jobmesh get shows all of it)", &text[..at]),
        None => text.to_owned(),
    }
}

/// `jobmesh list --watch`: one JSON line per change of the caller's jobs that
/// match the filters, until Ctrl-C.
pub(crate) async fn jobs(args: ListArgs) -> anyhow::Result<()> {
    let state = args.state.as_deref().map(parse_state).transpose()?;
    let mut changes = args
        .addr
        .jobs()?
        .watch_jobs(v1::WatchJobsRequest {
            task: args.task.unwrap_or_default(),
            state: state.unwrap_or(JobState::Unspecified) as i32,
            labels: args.labels,
        })
        .await
        .map_err(status)?
        .into_inner();
    let mut ctrl_c = pin!(tokio::signal::ctrl_c());
    loop {
        let change = tokio::select! {
            _ = &mut ctrl_c => {
                return Err(Interrupted("stopped watching jobs".to_owned()).into());
            }
            change = changes.message() => change.map_err(status)?,
        };
        let Some(change) = change else {
            bail!("the gateway ended the watch (run it again to go on)");
        };
        let Some(job) = change.job else {
            continue;
        };
        let mut line = serde_json::json!({ "job": output::job(&job) });
        if let Some(object) = line.as_object_mut() {
            if change.skipped_changes > 0 {
                object.insert(
                    "skippedChanges".into(),
                    change.skipped_changes.to_string().into(),
                );
            }
            if change.dropped_changes > 0 {
                object.insert(
                    "droppedChanges".into(),
                    change.dropped_changes.to_string().into(),
                );
            }
        }
        json_line(&line)?;
    }
}
