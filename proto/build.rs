//! Generates the Rust code and the descriptor set (for reflection and the REST shim)
//! from `proto/`. protoc comes from `protoc-bin-vendored`, so a fresh clone builds
//! without a system protoc.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        "jobmesh/v1/job.proto",
        "jobmesh/v1/job_service.proto",
        "jobmesh/v1/task_service.proto",
        "jobmesh/v1/worker_service.proto",
        "jobmesh/internal/v1/job_store.proto",
        "jobmesh/internal/v1/dispatcher.proto",
    ]
    .map(PathBuf::from);
    let well_known = protoc_bin_vendored::include_path()?;
    let includes = [
        PathBuf::from("."),
        PathBuf::from("third_party/googleapis"),
        well_known,
    ];
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // No `connect` constructors: WorkerService has an RPC named Connect; clients are
    // built from a `Channel` with `new`.
    tonic_prost_build::configure()
        .build_transport(false)
        // Smaller per-call buffers than tonic's default (src/codec.rs).
        .codec_path("crate::codec::SmallBuffers")
        .file_descriptor_set_path(out_dir.join("jobmesh_descriptor.bin"))
        .compile_with_config(config, &protos, &includes)?;
    println!("cargo:rerun-if-changed=jobmesh");
    println!("cargo:rerun-if-changed=third_party");
    Ok(())
}
