//! Compiles the KMS v2 service definition in `proto/`.
#![forbid(unsafe_code)]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    // The Encrypt and Decrypt messages carry seeds or their wrapped form:
    // their Debug is written by hand in src/proto.rs (lengths, not bytes).
    tonic_prost_build::configure()
        .skip_debug([
            ".v2.DecryptRequest",
            ".v2.DecryptResponse",
            ".v2.EncryptRequest",
            ".v2.EncryptResponse",
        ])
        .build_client(true)
        .build_server(true)
        .compile_protos(&["proto/kms_v2.proto"], &["proto"])?;
    Ok(())
}
