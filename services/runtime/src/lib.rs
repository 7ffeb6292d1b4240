//! What every jobmesh service shares: NATS naming, telemetry, shutdown, and the
//! gRPC server and client settings. Services depend on this crate, never on each
//! other.

pub mod grpc;
pub mod names;
pub mod nats;
pub mod shutdown;
pub mod telemetry;

pub use nats::NatsConfig;
