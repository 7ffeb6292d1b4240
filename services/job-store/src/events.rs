//! Job events on core NATS: every committed change of a job is published on
//! `<prefix>.events.<tenant token>.<job_id>` as an encoded `jobmesh.v1.Job`, and cancellation
//! requests of running attempts on `<prefix>.cancel` for the dispatchers.
//!
//! Publishing is best effort and never blocks a state change: events go through a
//! bounded queue to one publisher task. The queue holds the newest event of each
//! job: while NATS is slower than the changes (a burst of progress reports), a newer
//! snapshot of a job replaces its older one still waiting, so a job's last change
//! (its end) is never dropped for its progress. Only past [`QUEUE`] jobs waiting
//! (NATS down) are events dropped; watchers of one job detect a missing version and
//! re-read the job from PostgreSQL, which stays the truth, and dispatchers get
//! cancellations on their next lease renewal.

use jobmesh_proto::internal::{CancelNotice, JobAttempt};
use jobmesh_proto::v1;
use jobmesh_runtime::NatsConfig;
use prost::Message as _;
use uuid::Uuid;

use crate::model::Job;

/// Events (of distinct jobs) waiting for the publisher task.
const QUEUE: usize = 8192;

/// What waits for the publisher: subjects in order, each with its newest payload.
/// A subject of one job is replaced in place; others (cancellations) queue up.
#[derive(Default)]
struct Waiting {
    order: std::collections::VecDeque<(String, bool)>,
    /// Per replaced subject: the payload's version (a job's, or a log's last
    /// sequence) and the payload.
    newest: std::collections::HashMap<String, (i64, bytes::Bytes)>,
    /// Payloads of subjects that are not replaced, in order.
    queued: std::collections::VecDeque<bytes::Bytes>,
}

/// Publisher of job events.
#[derive(Clone)]
pub(crate) struct Events {
    client: async_nats::Client,
    nats: NatsConfig,
    waiting: std::sync::Arc<std::sync::Mutex<Waiting>>,
    /// Wakes the publisher; it stops once every sender is gone.
    wake: tokio::sync::mpsc::Sender<()>,
}

impl Events {
    pub(crate) fn new(client: async_nats::Client, nats: NatsConfig) -> Self {
        let waiting = std::sync::Arc::new(std::sync::Mutex::new(Waiting::default()));
        let (wake, mut woken) = tokio::sync::mpsc::channel::<()>(1);
        let publisher = client.clone();
        let queue = std::sync::Arc::clone(&waiting);
        tokio::spawn(async move {
            loop {
                let next = {
                    let mut w = queue.lock().expect("event queue");
                    match w.order.pop_front() {
                        Some((subject, true)) => {
                            let payload = w.newest.remove(&subject).unwrap_or_default().1;
                            Some((subject, payload))
                        }
                        Some((subject, false)) => {
                            let payload = w.queued.pop_front().unwrap_or_default();
                            Some((subject, payload))
                        }
                        None => None,
                    }
                };
                match next {
                    Some((subject, payload)) => {
                        if let Err(error) = publisher.publish(subject, payload).await {
                            tracing::debug!(%error, "event not published; watchers re-read");
                        }
                    }
                    None => {
                        if woken.recv().await.is_none() {
                            break;
                        }
                    }
                }
            }
        });
        Self {
            client,
            nats,
            waiting,
            wake,
        }
    }

    /// Queues `payload` for `subject`. With `version` (one job's snapshots, its
    /// log notices), a payload still waiting for the same subject is replaced
    /// when this one is newer, and this one dropped when it is older (a late
    /// publish of an earlier write must not take the place of a later one).
    fn send(&self, subject: String, payload: Vec<u8>, version: Option<i64>) {
        let mut w = self.waiting.lock().expect("event queue");
        if let Some(version) = version
            && let Some(waiting) = w.newest.get_mut(&subject)
        {
            if version > waiting.0 {
                *waiting = (version, payload.into());
            }
            return;
        }
        let newest_only = version.is_some();
        if w.order.len() >= QUEUE {
            tracing::debug!(
                "event queue full (NATS slow or down); event dropped, watchers re-read"
            );
            return;
        }
        if let Some(version) = version {
            w.newest.insert(subject.clone(), (version, payload.into()));
        } else {
            w.queued.push_back(payload.into());
        }
        w.order.push_back((subject, newest_only));
        drop(w);
        // Full: a wake-up is already waiting.
        let _ = self.wake.try_send(());
    }

    pub(crate) fn client(&self) -> &async_nats::Client {
        &self.client
    }

    pub(crate) fn nats(&self) -> &NatsConfig {
        &self.nats
    }

    /// Announces a committed change of a job.
    pub(crate) async fn publish(&self, job: &Job) {
        let payload = v1::Job::from(job).encode_to_vec();
        self.send(
            self.nats.events_subject(&job.tenant, &job.id.to_string()),
            payload,
            Some(job.version),
        );
    }

    /// Announces that lines of a job are stored up to `last_sequence`.
    pub(crate) fn publish_logs(&self, id: Uuid, last_sequence: i64) {
        let notice = jobmesh_proto::internal::LogNotice { last_sequence };
        self.send(
            self.nats.logs_subject(&id.to_string()),
            notice.encode_to_vec(),
            Some(last_sequence),
        );
    }

    /// Tells every dispatcher that a running attempt must stop.
    pub(crate) async fn publish_cancel(&self, id: Uuid, attempt: i32) {
        let notice = CancelNotice {
            attempt: Some(JobAttempt {
                job_id: id.to_string(),
                attempt,
            }),
        };
        self.send(self.nats.cancel_subject(), notice.encode_to_vec(), None);
    }
}
