//! Keeps the leases of held attempts alive while their workers are connected, and
//! delivers cancellations: at once from the `<prefix>.cancel` subject, and on every
//! renewal from job-store's answer (which covers a missed notice).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use jobmesh_proto::internal::{CancelNotice, ExtendLeasesRequest, JobAttempt};
use prost::Message as _;
use tokio_util::sync::CancellationToken;

use crate::Dispatcher;
use crate::session::cancellation;

/// Attempts renewed per call.
const RENEW_BATCH: usize = 5_000;

/// Renews leases every third of the lease.
pub(crate) async fn renew_leases(ctx: Arc<Dispatcher>, shutdown: CancellationToken) {
    let lease = ctx.config.lease();
    let mut ticker = tokio::time::interval(lease / 3);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let held = ctx.registry.leased();
        for chunk in held.chunks(RENEW_BATCH) {
            let request = ExtendLeasesRequest {
                attempts: chunk
                    .iter()
                    .map(|(job_id, attempt)| JobAttempt {
                        job_id: job_id.clone(),
                        attempt: *attempt,
                    })
                    .collect(),
                lease_duration: prost_types::Duration::try_from(lease).ok(),
            };
            match ctx.job_store().extend_leases(request).await {
                Ok(response) => {
                    let response = response.into_inner();
                    for lost in response.lost {
                        stop(&ctx, &lost, "the lease of this attempt was lost", true);
                    }
                    for cancelled in response.cancel_requested {
                        stop(&ctx, &cancelled, "cancelled by request", false);
                    }
                }
                Err(status) => tracing::warn!(%status, "lease renewal failed"),
            }
        }
    }
}

/// Forwards cancellation notices to the worker holding the attempt, if it is
/// connected here.
pub(crate) async fn cancellations(ctx: Arc<Dispatcher>, shutdown: CancellationToken) {
    let subject = ctx.config.nats.cancel_subject();
    let mut subscriber = loop {
        match ctx.nats.subscribe(subject.clone()).await {
            Ok(subscriber) => break subscriber,
            Err(error) => {
                tracing::warn!(%error, "cannot subscribe to cancellations, retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => return,
            message = subscriber.next() => message,
        };
        let Some(message) = message else { return };
        if let Ok(CancelNotice {
            attempt: Some(attempt),
        }) = CancelNotice::decode(message.payload)
        {
            stop(&ctx, &attempt, "cancelled by request", false);
        }
    }
}

fn stop(ctx: &Dispatcher, attempt: &JobAttempt, reason: &str, release: bool) {
    let key = (attempt.job_id.clone(), attempt.attempt);
    if let Some((session, tx)) = ctx.registry.holder(&key) {
        tracing::info!(job_id = %attempt.job_id, attempt = attempt.attempt, reason, "telling the worker to stop");
        if release {
            ctx.registry.release(session, &key);
        }
        if tx
            .try_send(cancellation(&attempt.job_id, attempt.attempt, reason))
            .is_err()
        {
            tracing::warn!(job_id = %attempt.job_id, "worker queue full, cancellation retried at next renewal");
        }
    }
}
