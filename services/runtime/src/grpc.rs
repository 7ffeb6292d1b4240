//! gRPC limits shared by every service, serving on an already-bound listener,
//! and the deadline and trace context that internal calls carry on a caller's
//! behalf. How a server is built (its settings and middleware stack) is
//! [`crate::server`]; channels to other services are [`crate::client`].

use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;

/// Largest gRPC message any jobmesh service accepts or sends (4 MiB).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Streams a server lets one HTTP/2 connection carry at once.
pub const MAX_CONCURRENT_STREAMS: u32 = 1024;

/// The stream of connections of an already-bound listener, for
/// `Router::serve_with_incoming_shutdown`. `TCP_NODELAY` is set on every accepted
/// connection: the server builder's own setting applies only to listeners it binds,
/// and without it small replies wait for delayed ACKs (~40 ms per round trip).
pub fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(30)))
}

/// Resolves when `shutdown` is cancelled; the future given to tonic to stop
/// accepting connections.
pub async fn stopped(shutdown: CancellationToken) {
    shutdown.cancelled().await;
}

/// Longest deadline forwarded to an internal call.
const MAX_FORWARDED_DEADLINE: Duration = Duration::from_secs(3600);

/// The deadline a caller gave in its `grpc-timeout` header, if any, so the same
/// deadline can be applied to the internal calls made on its behalf.
pub fn deadline(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    parse_timeout(metadata.get("grpc-timeout")?.to_str().ok()?)
}

/// [`deadline`] from HTTP headers (the REST shim's `Grpc-Timeout`).
pub fn header_deadline(headers: &http::HeaderMap) -> Option<Duration> {
    parse_timeout(headers.get("grpc-timeout")?.to_str().ok()?)
}

fn parse_timeout(value: &str) -> Option<Duration> {
    if !value.is_ascii() {
        return None;
    }
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = digits.parse().ok()?;
    let duration = match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    };
    Some(duration.min(MAX_FORWARDED_DEADLINE))
}

/// A request for an internal call carrying the caller's deadline and the current
/// span's trace context.
pub fn forward<T>(incoming: &tonic::metadata::MetadataMap, message: T) -> tonic::Request<T> {
    let mut request = traced(message);
    if let Some(deadline) = deadline(incoming) {
        request.set_timeout(deadline);
    }
    request
}

/// A request for an internal call carrying the current span's trace context.
pub fn traced<T>(message: T) -> tonic::Request<T> {
    traced_in(&crate::trace::current(), message)
}

/// A request for an internal call carrying `context`.
pub fn traced_in<T>(context: &opentelemetry::Context, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    crate::trace::to_metadata(context, request.metadata_mut());
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_timeout(value: &str) -> tonic::metadata::MetadataMap {
        let mut metadata = tonic::metadata::MetadataMap::new();
        if let Ok(value) = value.parse() {
            metadata.insert("grpc-timeout", value);
        }
        metadata
    }

    #[test]
    fn a_callers_deadline_is_read_in_every_unit_and_capped() {
        for (header, want) in [
            ("1500m", Some(Duration::from_millis(1500))),
            ("5S", Some(Duration::from_secs(5))),
            ("2M", Some(Duration::from_secs(120))),
            ("250000u", Some(Duration::from_millis(250))),
            ("7n", Some(Duration::from_nanos(7))),
            ("2H", Some(MAX_FORWARDED_DEADLINE)),
            ("99999999H", Some(MAX_FORWARDED_DEADLINE)),
            ("5s", None),
            ("S", None),
            ("soon", None),
            ("", None),
        ] {
            assert_eq!(deadline(&with_timeout(header)), want, "{header:?}");
        }
        assert_eq!(deadline(&tonic::metadata::MetadataMap::new()), None);
    }

    proptest::proptest! {
        #[test]
        fn any_grpc_timeout_is_read_or_refused(value in "\\PC{0,24}") {
            let _ = parse_timeout(&value);
        }

        #[test]
        fn a_well_formed_grpc_timeout_means_what_it_says(
            amount in 0u64..100_000_000,
            unit in proptest::sample::select(vec!['H', 'M', 'S', 'm', 'u', 'n']),
        ) {
            let want = match unit {
                'H' => Duration::from_secs(amount * 3600),
                'M' => Duration::from_secs(amount * 60),
                'S' => Duration::from_secs(amount),
                'm' => Duration::from_millis(amount),
                'u' => Duration::from_micros(amount),
                _ => Duration::from_nanos(amount),
            };
            proptest::prop_assert_eq!(
                parse_timeout(&format!("{amount}{unit}")),
                Some(want.min(MAX_FORWARDED_DEADLINE))
            );
        }
    }

    #[test]
    fn an_internal_call_carries_the_callers_deadline() {
        let forwarded = forward(&with_timeout("1500m"), ());
        assert_eq!(
            deadline(forwarded.metadata()),
            Some(Duration::from_millis(1500)),
            "{:?}",
            forwarded.metadata()
        );
        // No deadline from the caller: the channel's default applies.
        assert_eq!(
            deadline(forward(&tonic::metadata::MetadataMap::new(), ()).metadata()),
            None
        );
    }
}
