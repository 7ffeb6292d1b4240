//! The fault harness. The scenarios are in `cli/tests/faults.rs` (they run the
//! real `jobmesh` binary); this is what they stand on:
//!
//! - [`cluster`]: every service of the mesh as its own process (the binary's
//!   service modes) and an own `nats-server`, started, stopped and restarted;
//! - [`process`]: one child process that can be killed, stopped, continued and
//!   restarted with the same command line;
//! - [`proxy`]: TCP proxies that can cut a link (job-store ↔ PostgreSQL,
//!   worker ↔ dispatcher);
//! - [`ports`]: loopback ports that stay free while a service is down;
//! - [`workload`]: a mixed workload that retries with idempotency keys, and the
//!   accounting every scenario asserts.

pub mod cluster;
pub mod ports;
pub mod process;
pub mod proxy;
pub mod workload;

pub use cluster::{Cluster, ClusterOptions};
pub use ports::free_port;
pub use process::Proc;
pub use proxy::Proxy;
pub use workload::{Accounting, Kind, Submitted, account, submit_workload};
