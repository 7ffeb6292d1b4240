//! What every jobmesh service shares: NATS naming, telemetry, shutdown, and the
//! gRPC server and client settings. Services depend on this crate, never on each
//! other.

pub(crate) mod body;
pub mod call;
pub mod client;
pub mod errors;
pub mod grpc;
pub mod health;
pub mod host;
pub mod metrics;
pub mod names;
pub mod nats;
pub mod quote;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod trace;

pub use nats::NatsConfig;
