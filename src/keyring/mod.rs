//! The versioned KEK keyring: its in-memory model, its file format and the
//! operations that change it (`docs/keyring.md` is the operator's reference).
//!
//! - [`format`] parses and writes the JSON file (`kube-kms-keyring/v1`).
//! - [`key_id`] derives the public key_id of a KEK version.
//! - [`ops`] holds the state machine (init, rotate, add, promote, disable,
//!   enable, destroy) and [`Keyring::validate`], the invariants every loaded
//!   or written keyring satisfies.
//! - [`bundle`] exports versions to, and imports them from, encrypted age bundles.
//! - [`peer_check`] asks running plugin instances whether they hold the local versions.
//! - [`store`] reads the file (ownership and mode checked) and writes it
//!   atomically under an exclusive lock.
//! - `wire` holds the JSON shapes the file and bundles share.
//!
//! Invariants (checked on every load and before every write): exactly one
//! version is primary; ids and key_ids are unique; every key_id matches its
//! version and its material's fingerprint; a destroyed version has no material,
//! every other version has 32 bytes of it.
use std::path::PathBuf;
use std::time::SystemTime;

use crate::secret::Key256;

pub mod bundle;
pub mod destroy_gate;
pub mod format;
pub mod key_id;
pub mod ops;
pub mod peer_check;
pub mod store;
mod wire;

pub use store::{create, load, modify, remove_stale_temps, FileStamp, LoadedKeyring};

/// The lifecycle state of a KEK version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    /// Wraps new seeds (exactly one version) and unwraps.
    Primary,
    /// Unwraps seeds wrapped earlier; does not wrap.
    Enabled,
    /// Kept, but refuses to unwrap until enabled again.
    Disabled,
    /// Material erased for good; only the id and key_id remain.
    Destroyed,
}

impl KeyState {
    /// The word used in the file and in `key list`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Primary => "primary",
            KeyState::Enabled => "enabled",
            KeyState::Disabled => "disabled",
            KeyState::Destroyed => "destroyed",
        }
    }

    /// Parses the word used in the file.
    pub fn from_word(word: &str) -> Option<Self> {
        match word {
            "primary" => Some(KeyState::Primary),
            "enabled" => Some(KeyState::Enabled),
            "disabled" => Some(KeyState::Disabled),
            "destroyed" => Some(KeyState::Destroyed),
            _ => None,
        }
    }

    /// True when the version may unwrap (primary or enabled).
    pub fn can_unwrap(self) -> bool {
        matches!(self, KeyState::Primary | KeyState::Enabled)
    }
}

impl std::fmt::Display for KeyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One KEK version. The material is reachable only through [`KeyVersion::material`].
#[derive(Debug)]
pub struct KeyVersion {
    pub(crate) id: u32,
    pub(crate) key_id: String,
    pub(crate) state: KeyState,
    pub(crate) created: SystemTime,
    /// When it was last disabled (kept once destroyed; cleared by enable).
    pub(crate) disabled_at: Option<SystemTime>,
    pub(crate) material: Option<Key256>,
}

impl KeyVersion {
    /// The version number (1, 2, ...), never reused.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The public key_id (`kk-v{id}-{fingerprint}`).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The lifecycle state.
    pub fn state(&self) -> KeyState {
        self.state
    }

    /// When the version was created.
    pub fn created(&self) -> SystemTime {
        self.created
    }

    /// When the version was last disabled, if the keyring recorded it
    /// (keyrings written before this field existed did not).
    pub fn disabled_at(&self) -> Option<SystemTime> {
        self.disabled_at
    }

    /// The KEK, absent once destroyed.
    pub fn material(&self) -> Option<&Key256> {
        self.material.as_ref()
    }

    /// Public metadata (no material).
    pub fn info(&self) -> VersionInfo {
        VersionInfo::new(
            self.id,
            &self.key_id,
            self.state,
            self.created,
            self.disabled_at,
        )
    }
}

/// Public metadata of a version, as `key list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VersionInfo {
    /// Version number.
    pub id: u32,
    /// Public key_id.
    pub key_id: String,
    /// Lifecycle state.
    pub state: KeyState,
    /// Creation time, RFC 3339 UTC.
    pub created: String,
    /// When it was last disabled, RFC 3339 UTC (absent if never, or not recorded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled_at: Option<String>,
}

impl VersionInfo {
    /// The metadata of a version of any backend, times written as RFC 3339 UTC.
    pub fn new(
        id: u32,
        key_id: &str,
        state: KeyState,
        created: SystemTime,
        disabled_at: Option<SystemTime>,
    ) -> Self {
        Self {
            id,
            key_id: key_id.to_owned(),
            state,
            created: humantime::format_rfc3339(created).to_string(),
            disabled_at: disabled_at.map(|time| humantime::format_rfc3339(time).to_string()),
        }
    }
}

/// A keyring: the versions, ordered by id. Built by [`format::parse`] or
/// [`Keyring::initial`] and changed only through [`ops`], which keep the invariants.
#[derive(Debug)]
pub struct Keyring {
    pub(crate) versions: Vec<KeyVersion>,
    /// How many times the file was written (`generation` in the file; 0 for
    /// files written before the field existed). [`store`] bumps it on every
    /// write; a reload that sees it go down is a rollback.
    pub(crate) generation: u64,
}

impl Keyring {
    /// The write counter: bumped by every `create`/`modify`, so a file
    /// restored from an older backup has a lower one.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// All versions, ordered by id.
    pub fn versions(&self) -> &[KeyVersion] {
        &self.versions
    }

    /// Metadata of every version, ordered by id.
    pub fn metadata(&self) -> Vec<VersionInfo> {
        self.versions.iter().map(KeyVersion::info).collect()
    }

    /// The primary version (present in every valid keyring).
    pub fn primary(&self) -> Option<&KeyVersion> {
        self.versions.iter().find(|v| v.state == KeyState::Primary)
    }

    /// The version with this id.
    pub fn version(&self, id: u32) -> Option<&KeyVersion> {
        self.versions.iter().find(|v| v.id == id)
    }
}

/// Everything that can go wrong with a keyring file or a keyring operation.
/// Messages name the file and say how to fix the problem; none contains key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// The file could not be read, written, locked or synced.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("cannot read keyring", ...).
        action: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// No keyring at the path.
    #[error("keyring {path} does not exist: create one with `kube-kms key init --keyring {path}`")]
    NotFound {
        /// The path looked up.
        path: PathBuf,
    },
    /// `init` found a file already there.
    #[error("keyring {path} already exists; refusing to overwrite it (its keys would be lost). Use `kube-kms key rotate` to add a key, or choose another path")]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// The file is not owned by the effective user.
    #[error("keyring {path} is owned by uid {owner}, but kube-kms runs as uid {euid}: run `chown {euid} {path}` (or run kube-kms as uid {owner})")]
    WrongOwner {
        /// The file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The effective uid of this process.
        euid: u32,
    },
    /// Group or others have some permission on the file.
    #[error("keyring {path} has mode {mode:04o}, which lets group or others access the keys: run `chmod 600 {path}`")]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Not a regular file (directory, device, socket...).
    #[error("keyring {path} is not a regular file")]
    NotRegularFile {
        /// The path.
        path: PathBuf,
    },
    /// Writes go to the real file, not through a symlink.
    #[error("keyring {path} is a symbolic link; run key commands on the file it points to, so the atomic rename replaces that file")]
    Symlink {
        /// The path.
        path: PathBuf,
    },
    /// The file exceeds the size bound.
    #[error("keyring {path} is {size} bytes, more than the {max} bytes a keyring may have: it is not a kube-kms keyring")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The bound.
        max: u64,
    },
    /// The file changed while it was read.
    #[error("keyring {path} changed while it was being read: try again")]
    ChangedWhileReading {
        /// The file.
        path: PathBuf,
    },
    /// The contents are not a valid keyring. `problem` says what and how to fix it.
    #[error("keyring {path} is invalid: {problem}")]
    Invalid {
        /// The file ("<memory>" when parsed from bytes).
        path: PathBuf,
        /// What is wrong, without any key material.
        problem: String,
    },
    /// An operation names a version that does not exist.
    #[error("there is no version {id} in keyring {path}; `kube-kms key list --keyring {path}` shows the versions")]
    UnknownVersion {
        /// The keyring.
        path: PathBuf,
        /// The version asked for.
        id: u32,
    },
    /// An operation that the version's state forbids.
    #[error("cannot {action} version {id}: {reason}")]
    Refused {
        /// The operation ("disable", ...).
        action: &'static str,
        /// The version.
        id: u32,
        /// Why, and what to do instead.
        reason: String,
    },
    /// The operating system's random generator failed.
    #[error("cannot generate a key: the operating system's random number generator failed: {0}")]
    Random(getrandom::Error),
}

impl KeyringError {
    /// Attaches the file path to an error produced from bytes (whose path is `<memory>`).
    pub(crate) fn at(self, file: &std::path::Path) -> Self {
        match self {
            KeyringError::Invalid { problem, .. } => KeyringError::Invalid {
                path: file.to_path_buf(),
                problem,
            },
            KeyringError::UnknownVersion { id, .. } => KeyringError::UnknownVersion {
                path: file.to_path_buf(),
                id,
            },
            other => other,
        }
    }
}
