//! `jobmesh logs`: the lines a job printed, and the log side stream of
//! `jobmesh watch --logs`.

use std::io::{self, Write as _};

use jobmesh_proto::v1::{self, LogStream};
use tokio::sync::mpsc;

use crate::client::{GatewayAddr, JobClient, status};
use crate::output;

/// Log entries buffered between the log stream and the terminal.
const SIDE_BUFFER: usize = 256;

#[derive(clap::Args, Debug)]
pub(crate) struct LogsArgs {
    /// Job id.
    pub(crate) job_id: String,
    /// Keep printing new lines until the job has ended.
    #[arg(short, long)]
    pub(crate) follow: bool,
    /// Only the lines of this attempt (default: every attempt).
    #[arg(long, value_name = "N", default_value_t = 0, hide_default_value = true)]
    pub(crate) attempt: i32,
    /// Only the lines after this sequence number (the last one seen, to resume).
    #[arg(
        long,
        value_name = "SEQ",
        default_value_t = 0,
        hide_default_value = true
    )]
    pub(crate) after: i64,
    /// One JSON object per line instead of the text.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) addr: GatewayAddr,
}

pub(crate) async fn logs(args: LogsArgs) -> anyhow::Result<()> {
    match print_logs(args).await {
        // `jobmesh logs <id> | head` is done once `head` has what it wants.
        Err(error) if broken_pipe(&error) => Ok(()),
        outcome => outcome,
    }
}

async fn print_logs(args: LogsArgs) -> anyhow::Result<()> {
    let mut stream = args
        .addr
        .jobs()?
        .read_job_logs(v1::ReadJobLogsRequest {
            job_id: args.job_id,
            attempt: args.attempt,
            after_sequence: args.after,
            follow: args.follow,
        })
        .await
        .map_err(status)?
        .into_inner();
    let mut printer = Printer::default();
    while let Some(message) = stream.message().await.map_err(status)? {
        let Some(entry) = message.entry else {
            continue;
        };
        if args.json {
            let line = serde_json::to_string(&output::log_entry(&entry))?;
            writeln!(io::stdout().lock(), "{line}")?;
        } else {
            printer.print(&entry)?;
        }
    }
    Ok(())
}

fn broken_pipe(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<io::Error>()
        .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
}

/// Prints log lines as text: stderr lines on stderr, the others on stdout, with
/// the notices (dropped lines, a new attempt) on stderr so that stdout holds
/// exactly what the job printed.
#[derive(Default)]
pub(crate) struct Printer {
    attempt: Option<i32>,
}

impl Printer {
    pub(crate) fn print(&mut self, entry: &v1::LogEntry) -> io::Result<()> {
        let mut err = io::stderr().lock();
        if entry.dropped > 0 {
            writeln!(
                err,
                "[... {} earlier lines dropped (the job's log passed its size limit)]",
                entry.dropped
            )?;
        }
        // A header where the attempt changes, and before the first line when
        // earlier attempts printed nothing that is shown.
        let changed = match self.attempt {
            Some(previous) => previous != entry.attempt,
            None => entry.attempt > 1,
        };
        if changed {
            writeln!(err, "--- attempt {} ---", entry.attempt)?;
        }
        self.attempt = Some(entry.attempt);
        let cut = if entry.truncated {
            format!(" [cut at {} characters]", entry.line.chars().count())
        } else {
            String::new()
        };
        if entry.stream() == LogStream::Stderr {
            writeln!(err, "{}{cut}", entry.line)
        } else {
            drop(err);
            writeln!(io::stdout().lock(), "{}{cut}", entry.line)
        }
    }
}

/// What the log side stream delivers: entries, then possibly an error, then the
/// channel closes.
pub(crate) type Side = mpsc::Receiver<Result<v1::LogEntry, tonic::Status>>;

/// Follows a job's log in a task of its own, for `watch --logs`.
pub(crate) fn follow(mut jobs: JobClient, job_id: String) -> Side {
    let (tx, rx) = mpsc::channel(SIDE_BUFFER);
    tokio::spawn(async move {
        let request = v1::ReadJobLogsRequest {
            job_id,
            follow: true,
            ..Default::default()
        };
        let mut stream = match jobs.read_job_logs(request).await {
            Ok(response) => response.into_inner(),
            Err(error) => {
                let _ = tx.send(Err(error)).await;
                return;
            }
        };
        loop {
            let item = match stream.message().await {
                Ok(Some(message)) => match message.entry {
                    Some(entry) => Ok(entry),
                    None => continue,
                },
                Ok(None) => return,
                Err(error) => Err(error),
            };
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                return;
            }
        }
    });
    rx
}
