//! Compiles the KMS v2 service definition in `proto/`.
#![forbid(unsafe_code)]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&["proto/kms_v2.proto"], &["proto"])?;
    Ok(())
}
