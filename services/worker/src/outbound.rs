//! The worker's outbound stream. Reports (progress, outcomes, heartbeats) go
//! ahead of log lines, so one job printing fast does not hold the other jobs'
//! reports back behind its lines; an outcome still goes after every line its
//! attempt queued before it, so a job's last lines are stored before it ends.

use std::collections::HashMap;

use futures::Stream;
use jobmesh_proto::v1::ConnectRequest;
use tokio::sync::mpsc;

/// One attempt: job id and attempt number.
pub(crate) type Key = (String, i32);

/// Most attempts whose sent lines the stream counts; cleared past it (a count
/// is needed only between an attempt's lines and its outcome).
const MAX_COUNTED: usize = 100_000;

struct Report {
    message: ConnectRequest,
    /// Send only once this many lines of this attempt are sent.
    after: Option<(Key, u64)>,
}

/// The sending side, shared by the session and its handlers.
#[derive(Clone)]
pub(crate) struct Outbound {
    reports: mpsc::Sender<Report>,
    logs: mpsc::Sender<(Key, ConnectRequest)>,
}

/// The outbound queue closed: the session is over.
#[derive(Debug)]
pub(crate) struct Closed;

impl Outbound {
    /// Queues of `capacity` reports and `capacity` lines, and the stream that
    /// merges them for the Connect call.
    pub(crate) fn new(capacity: usize) -> (Self, impl Stream<Item = ConnectRequest> + Send) {
        let (reports, reports_rx) = mpsc::channel(capacity);
        let (logs, logs_rx) = mpsc::channel(capacity);
        let merge = Merge {
            reports: Some(reports_rx),
            logs: Some(logs_rx),
            sent: HashMap::new(),
            held: None,
        };
        (
            Self { reports, logs },
            futures::stream::unfold(merge, Merge::next),
        )
    }

    /// Queues a report; waits while the queue is full.
    pub(crate) async fn send(&self, message: ConnectRequest) -> Result<(), Closed> {
        self.reports
            .send(Report {
                message,
                after: None,
            })
            .await
            .map_err(|_| Closed)
    }

    /// Queues a report unless the queue is full.
    pub(crate) fn try_send(&self, message: ConnectRequest) -> bool {
        self.reports
            .try_send(Report {
                message,
                after: None,
            })
            .is_ok()
    }

    /// Queues an outcome that goes after the first `lines` lines of `attempt`.
    pub(crate) async fn send_after(
        &self,
        message: ConnectRequest,
        attempt: Key,
        lines: u64,
    ) -> Result<(), Closed> {
        let after = (lines > 0).then_some((attempt, lines));
        self.reports
            .send(Report { message, after })
            .await
            .map_err(|_| Closed)
    }

    /// Queues a log line of `attempt`; waits while the line queue is full.
    pub(crate) async fn log(&self, attempt: Key, message: ConnectRequest) -> Result<(), Closed> {
        self.logs.send((attempt, message)).await.map_err(|_| Closed)
    }
}

/// The receiving side: reports first, lines otherwise.
struct Merge {
    reports: Option<mpsc::Receiver<Report>>,
    logs: Option<mpsc::Receiver<(Key, ConnectRequest)>>,
    /// Lines sent per attempt.
    sent: HashMap<Key, u64>,
    /// An outcome waiting for its attempt's lines.
    held: Option<Report>,
}

impl Merge {
    fn count(&mut self, attempt: Key) {
        if self.sent.len() >= MAX_COUNTED {
            self.sent.clear();
        }
        *self.sent.entry(attempt).or_default() += 1;
    }

    /// A report whose lines are all sent, or `None` when it must wait.
    fn ready(&mut self, report: Report) -> Option<ConnectRequest> {
        match &report.after {
            Some((attempt, lines)) if self.sent.get(attempt).copied().unwrap_or(0) < *lines => {
                self.held = Some(report);
                None
            }
            Some((attempt, _)) => {
                self.sent.remove(attempt);
                Some(report.message)
            }
            None => Some(report.message),
        }
    }

    async fn next(mut self) -> Option<(ConnectRequest, Self)> {
        loop {
            if let Some(report) = self.held.take() {
                if let Some(message) = self.ready(report) {
                    return Some((message, self));
                }
                // Held: its attempt's lines go first, in queue order.
                if let Some(logs) = self.logs.as_mut() {
                    match logs.recv().await {
                        Some((attempt, line)) => {
                            self.count(attempt);
                            return Some((line, self));
                        }
                        None => self.logs = None,
                    }
                }
                if self.logs.is_none() {
                    // No line will come any more: the outcome goes as it is.
                    let report = self.held.take()?;
                    return Some((report.message, self));
                }
                continue;
            }
            let (reports_open, logs_open) = (self.reports.is_some(), self.logs.is_some());
            if !reports_open && !logs_open {
                return None;
            }
            tokio::select! {
                biased;
                report = async { self.reports.as_mut()?.recv().await }, if reports_open => match report {
                    Some(report) => {
                        if let Some(message) = self.ready(report) {
                            return Some((message, self));
                        }
                    }
                    None => self.reports = None,
                },
                line = async { self.logs.as_mut()?.recv().await }, if logs_open => match line {
                    Some((attempt, line)) => {
                        self.count(attempt);
                        return Some((line, self));
                    }
                    None => self.logs = None,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt as _;
    use jobmesh_proto::v1::{JobLog, JobSucceeded, WorkerHeartbeat, connect_request};

    fn line(job: &str, text: &str) -> ConnectRequest {
        ConnectRequest {
            message: Some(connect_request::Message::Log(JobLog {
                job_id: job.to_owned(),
                attempt: 1,
                line: text.to_owned(),
                stream: 0,
            })),
        }
    }

    fn done(job: &str) -> ConnectRequest {
        ConnectRequest {
            message: Some(connect_request::Message::Succeeded(JobSucceeded {
                job_id: job.to_owned(),
                attempt: 1,
                result: None,
            })),
        }
    }

    fn name(message: &ConnectRequest) -> String {
        match &message.message {
            Some(connect_request::Message::Log(l)) => format!("{}:{}", l.job_id, l.line),
            Some(connect_request::Message::Succeeded(s)) => format!("{}:done", s.job_id),
            Some(connect_request::Message::Heartbeat(_)) => "beat".to_owned(),
            _ => "other".to_owned(),
        }
    }

    #[tokio::test]
    async fn reports_overtake_lines_but_an_outcome_follows_its_own_lines() {
        let (out, stream) = Outbound::new(16);
        let key = |job: &str| (job.to_owned(), 1);
        for n in 0..3 {
            out.log(key("chatty"), line("chatty", &n.to_string()))
                .await
                .expect("open");
        }
        out.send_after(done("chatty"), key("chatty"), 3)
            .await
            .expect("open");
        out.send_after(done("quiet"), key("quiet"), 0)
            .await
            .expect("open");
        out.send(ConnectRequest {
            message: Some(connect_request::Message::Heartbeat(WorkerHeartbeat {})),
        })
        .await
        .expect("open");
        drop(out);
        let order: Vec<String> = stream.map(|m| name(&m)).collect().await;
        assert_eq!(
            order,
            [
                "chatty:0",
                "chatty:1",
                "chatty:2",
                "chatty:done",
                "quiet:done",
                "beat"
            ],
            "the held outcome drains its lines first; what follows it waits in order"
        );
    }

    #[tokio::test]
    async fn a_quiet_job_finishes_ahead_of_queued_lines() {
        let (out, stream) = Outbound::new(16);
        for n in 0..5 {
            out.log(("chatty".to_owned(), 1), line("chatty", &n.to_string()))
                .await
                .expect("open");
        }
        out.send_after(done("quiet"), ("quiet".to_owned(), 1), 0)
            .await
            .expect("open");
        drop(out);
        let order: Vec<String> = stream.map(|m| name(&m)).collect().await;
        assert_eq!(order[0], "quiet:done");
        assert_eq!(order.len(), 6);
    }
}
