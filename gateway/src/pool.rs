//! Channels to job-store for the streams the gateway relays. One HTTP/2
//! connection carries at most job-store's `max_concurrent_streams` streams at
//! once, and a stream beyond it waits, unseen, for one to end; so the pool holds
//! enough connections for the gateway's whole stream limit and gives each new
//! stream the least-used one.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use jobmesh_proto::internal::job_store_service_client::JobStoreServiceClient;
use jobmesh_runtime::client::Channel;
use jobmesh_runtime::grpc::{MAX_CONCURRENT_STREAMS, MAX_MESSAGE_BYTES};
use jobmesh_runtime::trace::services::GATEWAY;

type Client = JobStoreServiceClient<Channel>;

/// Streaming channels to job-store, sized for a stream limit.
#[derive(Clone)]
pub(crate) struct StreamPool {
    channels: Arc<[(Client, Arc<AtomicUsize>)]>,
}

/// A stream's place on one channel of the pool, given back when dropped.
pub(crate) struct InUse(Arc<AtomicUsize>);

impl Drop for InUse {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl StreamPool {
    /// Enough channels to `url` that `max_streams` streams, spread by
    /// [`StreamPool::pick`], never wait for a place on a connection.
    pub(crate) fn new(url: &str, max_streams: usize) -> Result<Self, tonic::transport::Error> {
        let count = max_streams.max(1).div_ceil(MAX_CONCURRENT_STREAMS as usize);
        let channels = (0..count)
            .map(|_| {
                let client = JobStoreServiceClient::new(
                    jobmesh_runtime::client::streaming_channel(url)?.caller(GATEWAY),
                )
                .max_decoding_message_size(MAX_MESSAGE_BYTES);
                Ok((client, Arc::new(AtomicUsize::new(0))))
            })
            .collect::<Result<Vec<_>, tonic::transport::Error>>()?;
        Ok(Self {
            channels: channels.into(),
        })
    }

    /// The least-used channel, and the place taken on it. With at most
    /// `max_streams` places held, the least-used channel carries at most
    /// `max_streams / channels` streams, within job-store's per-connection bound.
    pub(crate) fn pick(&self) -> (Client, InUse) {
        let (client, load) = self
            .channels
            .iter()
            .min_by_key(|(_, load)| load.load(Ordering::Relaxed))
            .unwrap_or(&self.channels[0]);
        load.fetch_add(1, Ordering::Relaxed);
        (client.clone(), InUse(Arc::clone(load)))
    }

    /// Channels in the pool.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.channels.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_pool_covers_the_limit_and_spreads_streams_evenly() {
        let pool = StreamPool::new("127.0.0.1:1", 4096).expect("pool");
        assert_eq!(pool.len(), 4);
        assert_eq!(StreamPool::new("127.0.0.1:1", 4097).expect("pool").len(), 5);
        assert_eq!(StreamPool::new("127.0.0.1:1", 0).expect("pool").len(), 1);
        let held: Vec<_> = (0..8).map(|_| pool.pick().1).collect();
        let loads: Vec<usize> = pool
            .channels
            .iter()
            .map(|(_, load)| load.load(Ordering::Relaxed))
            .collect();
        assert_eq!(loads, [2, 2, 2, 2]);
        drop(held);
        assert!(
            pool.channels
                .iter()
                .all(|(_, load)| load.load(Ordering::Relaxed) == 0)
        );
    }
}
