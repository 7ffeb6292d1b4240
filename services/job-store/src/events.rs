//! Job events on core NATS: every committed change of a job is published on
//! `<prefix>.events.<job_id>` as an encoded `jobmesh.v1.Job`, and cancellation
//! requests of running attempts on `<prefix>.cancel` for the dispatchers.
//!
//! Publishing is best effort: watchers detect a missing version and re-read the job
//! from PostgreSQL, which stays the truth.

use jobmesh_proto::internal::{CancelNotice, JobAttempt};
use jobmesh_proto::v1;
use jobmesh_runtime::NatsConfig;
use prost::Message as _;
use uuid::Uuid;

use crate::model::Job;

/// Publisher of job events.
#[derive(Clone)]
pub(crate) struct Events {
    client: async_nats::Client,
    nats: NatsConfig,
}

impl Events {
    pub(crate) fn new(client: async_nats::Client, nats: NatsConfig) -> Self {
        Self { client, nats }
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
        let subject = self.nats.events_subject(&job.id.to_string());
        if let Err(error) = self.client.publish(subject, payload.into()).await {
            tracing::warn!(job_id = %job.id, %error, "job event not published; watchers will re-read");
        }
    }

    /// Tells every dispatcher that a running attempt must stop.
    pub(crate) async fn publish_cancel(&self, id: Uuid, attempt: i32) {
        let notice = CancelNotice {
            attempt: Some(JobAttempt {
                job_id: id.to_string(),
                attempt,
            }),
        };
        if let Err(error) = self
            .client
            .publish(self.nats.cancel_subject(), notice.encode_to_vec().into())
            .await
        {
            tracing::warn!(job_id = %id, %error, "cancel notice not published; the next lease check delivers it");
        }
    }
}
