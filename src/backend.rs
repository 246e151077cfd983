//! The root of trust behind the plugin: "wrap and unwrap a DEK seed under KEK
//! version N". The gRPC server knows only this trait, so the file keyring, a
//! PKCS#11 token, a cloud KMS and Vault Transit plug in without touching the server.
//!
//! Contract every backend keeps:
//! - [`KeyBackend::status`] is cheap (no I/O, no crypto, no remote call): it
//!   reports the primary's key_id and the result of the last self-test.
//! - [`KeyBackend::wrap`] uses one consistent view of the keys: the key_id it
//!   returns is the key_id that [`KeyBackend::status`] reported for that same
//!   view, so kube-apiserver never discards a seed mid-rotation.
//! - [`KeyBackend::unwrap`] selects the key by key_id (no trial decryption) and
//!   fails with a coarse [`BackendError`] that says nothing about the secret.
//!
//! Layout: [`ring`] holds what every root shares when it serves
//! ([`ring::KeyRing`]: the swapped snapshot, status, reload, self-test,
//! counts, Debug); [`admin`] the `kube-kms key` operations every root offers
//! ([`admin::KeyAdmin`]). Each root is one module: [`mod@file`], [`pkcs11`],
//! [`aws_kms`], [`vault`].
//!
//! A new root plugs in as one module `src/backend/NAME.rs` (or `NAME/`):
//! 1. implement [`ring::Root`] for a `NameRoot` (its key operations: wrap and
//!    unwrap under one version's key; `read`: its versions with their states,
//!    as a [`ring::Listing`]; its key_id scheme: every key_id starts with a
//!    prefix of its own, e.g. `kk-NAME-vN-...`, and [`ring::Root::may_hold`]
//!    says which unknown key_ids are worth an on-demand read), and export
//!    `pub type NameBackend = ring::KeyRing<NameRoot>` with an `open`/`connect`
//!    that builds it with [`ring::KeyRing::new`];
//! 2. implement [`admin::KeyAdmin`] for its `kube-kms key` operations;
//! 3. register both in the binary (`src/bin/kube-kms/`): its flags and
//!    `--backend-config` section in `backend_NAME.rs` (see `backend_aws.rs`),
//!    a `--backend` value in `backend_args.rs` (`BackendKind`,
//!    `BackendChoice`, `resolve`), one arm in `serve.rs` (`serve`: open it,
//!    `serve_with`) and one in `key/run.rs` (`on_backend`: open its admin).
//!
//! The server (`crate::server`) sees only [`KeyBackend`], never a root.
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use crate::secret::SecretBytes;

pub mod admin;
pub mod aws_kms;
pub mod file;
pub mod pkcs11;
pub mod ring;
pub mod vault;

/// The health string of a backend whose last self-test passed (what Status'
/// healthz must say for kube-apiserver to call the plugin healthy).
pub const HEALTHY: &str = "ok";

/// What Status reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyStatus {
    /// key_id of the current write (primary) key.
    pub key_id: Arc<str>,
    /// `"ok"`, or why the backend cannot wrap and unwrap right now.
    pub healthz: Arc<str>,
}

/// The result of wrapping a seed: what Encrypt returns to kube-apiserver.
#[derive(Debug)]
pub struct Wrapped {
    /// The wrapped seed (public: stored in etcd).
    pub ciphertext: Vec<u8>,
    /// key_id of the key that wrapped it.
    pub key_id: Arc<str>,
    /// Annotations to store beside it (keys are FQDNs).
    pub annotations: BTreeMap<String, Vec<u8>>,
}

/// Why a backend call failed. The server maps each variant to a gRPC code and a
/// generic message in one place; the variant name is the metrics/log reason.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum BackendError {
    /// The request names a key_id this backend does not hold.
    #[error("unknown key_id")]
    UnknownKeyId,
    /// The key exists but is disabled or destroyed.
    #[error("key is disabled or destroyed")]
    KeyDisabled,
    /// The ciphertext is malformed, truncated, tampered, or bound to another key_id.
    #[error("ciphertext failed authentication")]
    DecryptFailed,
    /// The request itself is out of bounds (e.g. plaintext too large to wrap).
    #[error("invalid request: {0}")]
    InvalidInput(String),
    /// The root of trust cannot serve right now (no primary, token gone, ...).
    #[error("backend unavailable: {0}")]
    Unavailable(String),
}

impl BackendError {
    /// A short, stable label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            BackendError::UnknownKeyId => "unknown_key_id",
            BackendError::KeyDisabled => "key_disabled",
            BackendError::DecryptFailed => "authentication_failed",
            BackendError::InvalidInput(_) => "invalid_input",
            BackendError::Unavailable(_) => "unavailable",
        }
    }
}

/// How many key versions a backend holds in each lifecycle state (the
/// `kube_kms_keyring_versions` metric).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VersionCounts {
    /// Versions that wrap (normally exactly one).
    pub primary: u64,
    /// Versions that only unwrap.
    pub enabled: u64,
    /// Versions kept but refusing to unwrap.
    pub disabled: u64,
    /// Versions whose material is erased.
    pub destroyed: u64,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// Nothing changed on disk (or in the token) since the last load.
    Unchanged,
    /// New keys are serving; the key_id now primary.
    Reloaded {
        /// key_id of the primary after the reload.
        primary_key_id: Arc<str>,
    },
}

/// A root of trust that wraps and unwraps DEK seeds.
pub trait KeyBackend: Send + Sync + 'static {
    /// The primary's key_id and the last self-test's verdict. No I/O.
    fn status(&self) -> KeyStatus;

    /// Wraps `plaintext` under the primary key.
    fn wrap(&self, plaintext: &[u8]) -> impl Future<Output = Result<Wrapped, BackendError>> + Send;

    /// Unwraps `ciphertext` with the key named by `key_id`.
    fn unwrap(
        &self,
        key_id: &str,
        ciphertext: &[u8],
        annotations: &BTreeMap<String, Vec<u8>>,
    ) -> impl Future<Output = Result<SecretBytes, BackendError>> + Send;

    /// Wraps and unwraps a canary under the primary and records the verdict that
    /// [`KeyBackend::status`] reports. Called periodically by the server.
    fn self_test(&self) -> impl Future<Output = ()> + Send;

    /// Reloads the keys if their source changed (`force`: even if it looks
    /// unchanged, as on SIGHUP). On error the previous keys keep serving.
    fn reload(&self, force: bool) -> Result<ReloadOutcome, BackendError>;

    /// The key versions currently served, by state. Cheap (no I/O). Backends
    /// that cannot tell report zeros.
    fn version_counts(&self) -> VersionCounts {
        VersionCounts::default()
    }

    /// How many changed key sources were refused as a rollback (a version
    /// being served dropped, or the write counter lowered). Backends without
    /// the check report 0.
    fn rollbacks_refused(&self) -> u64 {
        0
    }

    /// How many objects that look like this backend's keys or key records
    /// were ignored at the last look because they are not trusted (e.g.
    /// public objects in a PKCS#11 token). Cheap (no I/O).
    fn ignored_objects(&self) -> u64 {
        0
    }
}
