//! Deadline arithmetic of a REST call. tonic's own `Grpc-Timeout` timer bounds
//! every request of the server, this shim's included, and answers in gRPC framing
//! (a REST caller would see 200 and an empty body); the shim's timers end a little
//! earlier, so a REST caller always gets a REST answer.

use std::time::{Duration, Instant};

/// How long the whole REST exchange may take: the `Grpc-Timeout` header less a
/// millisecond (this timer runs in the same task as tonic's and is polled first).
pub(super) fn answer_within(headers: &http::HeaderMap) -> Option<Duration> {
    jobmesh_runtime::grpc::header_deadline(headers)
        .map(|d| d.saturating_sub(Duration::from_millis(1)))
}

/// How long the in-process gRPC call may take: the caller's deadline less 5 %
/// (at least 5 ms), counted from the request's arrival (reading and parsing the
/// body took some of it), so it ends before tonic's timer does.
pub(super) fn call_within(
    metadata: &tonic::metadata::MetadataMap,
    arrived: Instant,
) -> Option<Duration> {
    jobmesh_runtime::grpc::deadline(metadata).map(|d| {
        d.saturating_sub((d / 20).max(Duration::from_millis(5)))
            .saturating_sub(arrived.elapsed())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shim_answers_before_tonics_timer() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(answer_within(&headers), None);
        headers.insert("grpc-timeout", http::HeaderValue::from_static("200m"));
        assert_eq!(answer_within(&headers), Some(Duration::from_millis(199)));
        let metadata = tonic::metadata::MetadataMap::from_headers(headers);
        let within = call_within(&metadata, Instant::now()).expect("a deadline");
        assert!(within <= Duration::from_millis(190), "{within:?}");
        assert!(within >= Duration::from_millis(150), "{within:?}");
    }
}
