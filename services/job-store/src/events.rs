//! Job events on core NATS: every committed change of a job is published on
//! `<prefix>.events.<tenant token>.<job_id>` as an encoded `jobmesh.v1.Job`, and cancellation
//! requests of running attempts on `<prefix>.cancel` for the dispatchers.
//!
//! Publishing is best effort and never blocks a state change: events go through a
//! bounded queue to one publisher task, and are dropped when the queue is full (NATS
//! down or slow). Watchers detect a missing version and re-read the job from
//! PostgreSQL, which stays the truth; dispatchers get cancellations on their next
//! lease renewal.

use jobmesh_proto::internal::{CancelNotice, JobAttempt};
use jobmesh_proto::v1;
use jobmesh_runtime::NatsConfig;
use prost::Message as _;
use uuid::Uuid;

use crate::model::Job;

/// Events waiting for the publisher task.
const QUEUE: usize = 8192;

/// Publisher of job events.
#[derive(Clone)]
pub(crate) struct Events {
    client: async_nats::Client,
    nats: NatsConfig,
    queue: tokio::sync::mpsc::Sender<(String, bytes::Bytes)>,
}

impl Events {
    pub(crate) fn new(client: async_nats::Client, nats: NatsConfig) -> Self {
        let (queue, mut rx) = tokio::sync::mpsc::channel::<(String, bytes::Bytes)>(QUEUE);
        let publisher = client.clone();
        tokio::spawn(async move {
            while let Some((subject, payload)) = rx.recv().await {
                if let Err(error) = publisher.publish(subject, payload).await {
                    tracing::debug!(%error, "event not published; watchers re-read");
                }
            }
        });
        Self {
            client,
            nats,
            queue,
        }
    }

    fn send(&self, subject: String, payload: Vec<u8>) {
        if self.queue.try_send((subject, payload.into())).is_err() {
            tracing::debug!(
                "event queue full (NATS slow or down); event dropped, watchers re-read"
            );
        }
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
        );
    }

    /// Announces that lines of a job are stored up to `last_sequence`.
    pub(crate) fn publish_logs(&self, id: Uuid, last_sequence: i64) {
        let notice = jobmesh_proto::internal::LogNotice { last_sequence };
        self.send(
            self.nats.logs_subject(&id.to_string()),
            notice.encode_to_vec(),
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
        self.send(self.nats.cancel_subject(), notice.encode_to_vec());
    }
}
