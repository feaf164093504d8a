//! Generates the gRPC code from `node.proto` and `raft.proto` with a vendored protoc, so a
//! fresh machine needs nothing but cargo.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { env::set_var("PROTOC", protoc) };
    let out = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("dllm_descriptor.bin"))
        .compile_protos(&["node.proto", "raft.proto"], &["."])?;
    println!("cargo:rerun-if-changed=node.proto");
    println!("cargo:rerun-if-changed=raft.proto");
    Ok(())
}
