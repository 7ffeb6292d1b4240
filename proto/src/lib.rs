//! jobmesh's gRPC contract: the public API (`jobmesh.v1`), the internal API between
//! services (`jobmesh.internal.v1`), the encoded descriptor set, and conversions
//! between `google.protobuf.Struct` and JSON.

pub mod codec;
pub mod json;

/// Generated code, one module per proto package (the nesting mirrors the package
/// names because generated code refers to other packages with `super::`).
pub mod generated {
    /// `jobmesh.*` packages.
    pub mod jobmesh {
        /// The public API, package `jobmesh.v1`.
        pub mod v1 {
            #![allow(missing_docs, unreachable_pub, clippy::all, clippy::restriction)]
            tonic::include_proto!("jobmesh.v1");
        }
        /// The API between jobmesh's own services.
        pub mod internal {
            /// Package `jobmesh.internal.v1`.
            pub mod v1 {
                #![allow(missing_docs, unreachable_pub, clippy::all, clippy::restriction)]
                tonic::include_proto!("jobmesh.internal.v1");
            }
        }
    }
    /// `google.*` packages.
    pub mod google {
        /// The google.api HTTP annotations.
        pub mod api {
            #![allow(missing_docs, unreachable_pub, clippy::all, clippy::restriction)]
            tonic::include_proto!("google.api");
        }
    }
}

pub use generated::jobmesh::internal::v1 as internal;
pub use generated::jobmesh::v1;

/// Encoded `FileDescriptorSet` of every proto file, for server reflection and the
/// REST shim.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("jobmesh_descriptor");

/// Fully-qualified service names, as used by health checks and reflection.
pub mod service_names {
    /// Public job API.
    pub const JOB_SERVICE: &str = "jobmesh.v1.JobService";
    /// Public task API.
    pub const TASK_SERVICE: &str = "jobmesh.v1.TaskService";
    /// Worker protocol.
    pub const WORKER_SERVICE: &str = "jobmesh.v1.WorkerService";
    /// Internal job-store API.
    pub const JOB_STORE_SERVICE: &str = "jobmesh.internal.v1.JobStoreService";
    /// Internal dispatcher API.
    pub const DISPATCHER_SERVICE: &str = "jobmesh.internal.v1.DispatcherService";
}

impl v1::JobState {
    /// Whether no further change can happen in this state.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            v1::JobState::Succeeded | v1::JobState::Failed | v1::JobState::Cancelled
        )
    }
}
