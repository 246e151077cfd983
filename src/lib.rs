//! kube-kms: a KMS v2 plugin for kube-apiserver with a rotating keyring, and
//! `etcd-inspect`, an auditor that tells which stored objects are plaintext and
//! which key protects the rest.
//!
//! The binaries in `src/bin/` are thin: every piece of work lives in a module
//! here, so tests, benchmarks and both programs drive the same code.
//!
//! Plugin side: [`secret`] (zeroizing byte types), [`wrap`] (the wrapped-seed
//! format), [`keyring`] (the versioned key file), [`backend`] (the root of trust
//! behind the server), [`server`] (gRPC on a unix socket), [`client`] (a gRPC
//! client for that socket).
//! Auditor side: [`inspect`].
#![forbid(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms, unreachable_pub)]
// The lint wall (no unwrap, expect, panic, unchecked indexing or printing
// outside tests and binaries) is Cargo.toml's [lints] table.

pub mod backend;
pub mod client;
pub mod envelope;
pub mod inspect;
pub mod kdf;
pub mod keyring;
pub mod proto;
pub mod secret;
pub mod server;
pub mod wrap;
