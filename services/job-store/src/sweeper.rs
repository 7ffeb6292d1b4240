//! The lease sweeper: by the database's clock, re-queues attempts whose lease
//! expired (their worker died or went silent) and ends CANCELLED the attempts that
//! ignored a cancellation past the grace period.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// Expired attempts handled per pass.
const BATCH: i64 = 500;
/// How long past its timeout an attempt may run before job-store fails it itself
/// (the worker normally stops it at the timeout and reports it).
const TIMEOUT_GRACE: Duration = Duration::from_secs(10);

pub(crate) async fn run(
    store: Store,
    interval: Duration,
    cancel_grace: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match store.expired_leases(BATCH).await {
            Ok(expired) => {
                for (id, attempt, worker) in expired {
                    let worker = worker.unwrap_or_default();
                    let message = format!("lease expired: worker {worker:?} stopped reporting");
                    match store.fail(id, attempt, &message, true).await {
                        Ok(job) => {
                            tracing::warn!(job_id = %id, attempt, worker, state = job.state.as_str(), "lease expired")
                        }
                        Err(error) => {
                            tracing::debug!(job_id = %id, attempt, %error, "expired lease already handled")
                        }
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "lease sweep failed"),
        }
        match store.overdue_attempts(TIMEOUT_GRACE, BATCH).await {
            Ok(overdue) => {
                for (id, attempt, timeout_ms) in overdue {
                    let message = format!(
                        "timed out after {:.1}s (the worker did not stop the attempt; lease revoked)",
                        timeout_ms as f64 / 1000.0
                    );
                    if store.fail(id, attempt, &message, true).await.is_ok() {
                        tracing::warn!(job_id = %id, attempt, timeout_ms, "attempt overran its timeout");
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "timeout sweep failed"),
        }
        match store
            .revoke_overdue_cancellations(cancel_grace, BATCH)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                jobs = n,
                "revoked leases of attempts that ignored a cancellation"
            ),
            Err(error) => tracing::warn!(%error, "cancellation sweep failed"),
        }
    }
}
