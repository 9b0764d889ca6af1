//! Generates the gRPC code for tollgate's own API and the Envoy rate-limit API.
//!
//! protoc comes from `protoc-bin-vendored`, so a fresh machine with only the
//! Rust toolchain can build (no system protobuf compiler needed).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let well_known = protoc_bin_vendored::include_path()?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);

    let protos = [
        PathBuf::from("proto/tollgate/v1/tollgate.proto"),
        PathBuf::from("proto/envoy/service/ratelimit/v3/rls.proto"),
    ];
    tonic_prost_build::configure()
        // Clients too: the load tool drives both APIs.
        .build_client(true)
        .file_descriptor_set_path(out_dir.join("tollgate_descriptor.bin"))
        .compile_with_config(config, &protos, &[PathBuf::from("proto"), well_known])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
