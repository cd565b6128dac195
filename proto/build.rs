//! Compiles `protos/cffs.proto` for both the real and the simulated (madsim) build.
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
    Ok(())
}
