//! The `kube-kms key` operations every root of trust offers on the versions
//! it keeps ([`KeyAdmin`]): rotate, list, disable, enable, and destroy behind
//! the scan-report gate. Each root implements them under the same state
//! machine ([`crate::keyring::ops::Transition`]); the binary parses the
//! flags, opens the root's admin and calls these, and prints what they say.
//!
//! Operations return what changed in words for the operator (the message
//! `kube-kms key` prints), because what is worth saying differs per root
//! (a KMS key ARN, a token label, how running plugins pick it up).
use std::future::Future;
use std::time::SystemTime;

use crate::keyring::{KeyState, VersionInfo};

/// Why a key operation failed: the root's own error, message unchanged.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The root refused or failed.
    #[error(transparent)]
    Root(Box<dyn std::error::Error + Send + Sync + 'static>),
    /// The command does not apply to this root.
    #[error("this command does not support --backend {backend}")]
    Unsupported {
        /// The `--backend` value.
        backend: &'static str,
    },
}

impl AdminError {
    /// Wraps a root's error.
    pub fn root(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        AdminError::Root(Box::new(error))
    }
}

/// One row of `key list`.
#[derive(Debug, Clone)]
pub struct ListedVersion {
    /// Version number.
    pub id: u32,
    /// Lifecycle state.
    pub state: KeyState,
    /// Public key_id.
    pub key_id: String,
    /// Creation time, RFC 3339 UTC (`-` if unknown).
    pub created: String,
    /// The root's last column (see [`Listing::last_column`]; empty if none).
    pub last: String,
    /// The version as `key list --format json` shows it.
    pub json: serde_json::Value,
}

impl ListedVersion {
    /// A row from a version's metadata, `fingerprint` as the last column and
    /// as `"fingerprint"` in the JSON.
    pub fn with_fingerprint(info: &VersionInfo, fingerprint: &str) -> Self {
        let mut json = serde_json::json!(info);
        if let Some(object) = json.as_object_mut() {
            object.insert("fingerprint".into(), fingerprint.into());
        }
        Self {
            id: info.id,
            state: info.state,
            key_id: info.key_id.clone(),
            created: info.created.clone(),
            last: fingerprint.to_owned(),
            json,
        }
    }
}

/// How messages name a version: `version N (KEY_ID)`.
pub fn describe(id: u32, key_id: &str) -> String {
    format!("version {id} ({key_id})")
}

/// What `key list` shows.
#[derive(Debug, Clone)]
pub struct Listing {
    /// The versions, by number.
    pub versions: Vec<ListedVersion>,
    /// The heading of the table's column after CREATED (`FINGERPRINT`,
    /// `KMS_STATE`), if the root has one.
    pub last_column: Option<&'static str>,
    /// Lines the table ends with (e.g. the key's own settings).
    pub footer: Vec<String>,
    /// Untrusted lookalike objects ignored, for roots that look for them
    /// (`"ignored_objects"` in the JSON).
    pub ignored_objects: Option<usize>,
}

/// The version the destroy gate judges.
#[derive(Debug, Clone)]
pub struct GateTarget {
    /// Its key_id (what the scan reports are searched for).
    pub key_id: String,
    /// Its state (only a disabled version is judged).
    pub state: KeyState,
    /// When it was last disabled (reports must be newer).
    pub disabled_at: Option<SystemTime>,
}

/// Options of a destroy.
#[derive(Debug, Clone, Copy)]
pub struct DestroyOptions {
    /// Days a root with delayed deletion waits (AWS KMS: 7 to 30).
    pub pending_window_days: i32,
}

/// The `kube-kms key` operations on one root's versions. Methods are async
/// (a remote root); local roots answer at once.
pub trait KeyAdmin {
    /// Adds a version and makes it primary; the old primary stays enabled.
    /// A root that can start empty creates version 1.
    fn rotate(&self, now: SystemTime) -> impl Future<Output = Result<String, AdminError>>;

    /// The versions (metadata only).
    fn list(&self) -> impl Future<Output = Result<Listing, AdminError>>;

    /// Stops version `id` from decrypting (not the primary).
    fn disable(&self, id: u32, now: SystemTime)
        -> impl Future<Output = Result<String, AdminError>>;

    /// Lets a disabled version decrypt again.
    fn enable(&self, id: u32, now: SystemTime) -> impl Future<Output = Result<String, AdminError>>;

    /// What the destroy gate judges: version `id`, if it exists.
    fn gate_target(&self, id: u32) -> impl Future<Output = Result<Option<GateTarget>, AdminError>>;

    /// Destroys disabled version `id`. `judged`: the disable time the scan
    /// reports were checked against; refused if it changed since.
    fn destroy(
        &self,
        id: u32,
        now: SystemTime,
        judged: Option<SystemTime>,
        options: DestroyOptions,
    ) -> impl Future<Output = Result<String, AdminError>>;

    /// What the operations so far found worth a warning (for stderr, without
    /// the `kube-kms: ` prefix); taking them empties the list.
    fn take_notes(&self) -> Vec<String> {
        Vec::new()
    }
}
