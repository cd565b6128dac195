//! Compiles `protos/cffs.proto` for both the real and the simulated (madsim) build, and the
//! client side of `protos/etcd_kv.proto` (the peer `cffs bench --peer etcd` measures).
//! protoc comes from `protoc-bin-vendored`, so no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    println!("cargo:rerun-if-changed=protos/cffs.proto");
    // Block payloads are `Bytes`: a block is sent to three replicas without three copies.
    tonic_build::configure()
        .bytes([".cffs.v1.PutBlockRequest.data", ".cffs.v1.GetBlockResponse.data"])
        .compile_protos(&["protos/cffs.proto"], &["protos"])?;
    println!("cargo:rerun-if-changed=protos/etcd_kv.proto");
    tonic_build::configure().build_server(false).compile_protos(&["protos/etcd_kv.proto"], &["protos"])?;
    Ok(())
}
