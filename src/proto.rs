//! The KMS v2 gRPC messages and service stubs, generated from
//! `proto/kms_v2.proto` at build time.
//!
//! `EncryptRequest`, `DecryptResponse` (and `DecryptRequest`'s ciphertext) carry
//! seeds or their wrapped form: never log these messages with `{:?}`.
#![allow(missing_docs, unreachable_pub, clippy::all)]

/// `package v2`: the service kube-apiserver calls.
pub mod v2 {
    tonic::include_proto!("v2");
}
