//! Generates a client for the one etcd RPC the comparison needs (KV.Put) and for finding its leader
//! (Maintenance.Status).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded.
    unsafe { std::env::set_var("PROTOC", protoc) };
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(&["proto/etcd.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/etcd.proto");
    Ok(())
}
