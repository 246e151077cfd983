//! The file keyring as a root of trust: KEKs from a `kube-kms-keyring/v1`
//! file (see [`crate::keyring`]), served by [`FileBackend`] (a
//! [`KeyRing`] over [`FileRoot`]). Wrapping and unwrapping take
//! microseconds and run inline (AES-256-GCM in [`crate::wrap`]); every new
//! snapshot is self-tested before it serves. The key_id scheme is the
//! keyring's: `kk-vN-<fingerprint>` ([`crate::keyring::key_id`]).
//!
//! Reload: the file is re-read when its stamp (inode, size, mtime) changed,
//! or always when forced. A reload that fails leaves the previous snapshot
//! serving.
//!
//! Rollback: a reload that would drop a version the snapshot serves (its
//! key_id gone from the file), or whose file has a lower `generation` than the
//! one serving (a backup restored over the live file), is refused like a
//! broken file: the previous snapshot keeps serving, the reload error turns
//! `/readyz` red, and [`KeyBackend::rollbacks_refused`] counts it (once per
//! file). [`FileBackend::allow_rollback`] lets it through, with a warning.
use std::future::{ready, Future};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::ring::{Health, KeyRing, Listing, Root, SelfTest, Snapshot, Version};
use super::BackendError;
#[cfg(doc)]
use super::KeyBackend;
use crate::keyring::{self, FileStamp, Keyring, KeyringError};
use crate::secret::SecretBytes;
use crate::wrap::{WrapError, WrapKey};

mod admin;

pub use admin::FileAdmin;

/// Re-exported from [`crate::backend`], where every backend finds it.
pub use super::HEALTHY;

/// A [`super::KeyBackend`] serving the keyring file at a path.
///
/// Use [`FileBackend::open`], then the [`super::KeyBackend`] methods; call
/// `reload` when the file may have changed (file watch, SIGHUP) and
/// `self_test` periodically.
pub type FileBackend = KeyRing<FileRoot>;

/// The keyring file at a path, as a [`Root`].
#[derive(Debug)]
pub struct FileRoot {
    path: PathBuf,
    /// Accept rollbacks (`serve --allow-keyring-rollback`).
    allow_rollback: bool,
    /// The stamp of the last file refused as a rollback (counted once).
    refused: Mutex<Option<FileStamp>>,
    rollbacks_refused: AtomicU64,
}

/// What tells two reads of the file apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMarker {
    stamp: FileStamp,
    generation: u64,
}

/// The versions of `keyring` (read with `stamp`), keys prepared.
fn listing(keyring: &Keyring, stamp: FileStamp) -> Listing<WrapKey, FileMarker> {
    let versions = keyring
        .versions()
        .iter()
        .map(|version| Version {
            key_id: Box::from(version.key_id()),
            state: version.state(),
            key: version
                .material()
                .filter(|_| version.state().can_unwrap())
                .map(WrapKey::new),
        })
        .collect();
    Listing {
        versions,
        marker: FileMarker {
            stamp,
            generation: keyring.generation(),
        },
    }
}

impl FileRoot {
    /// Why replacing `current` with `next` would be a rollback, if it would.
    fn rollback_to(current: &Snapshot<WrapKey, FileMarker>, next: &Keyring) -> Option<String> {
        let serving = current.marker().generation;
        if next.generation() < serving {
            return Some(format!(
                "its generation {} is lower than the serving keyring's {serving} (an older copy of the file, e.g. restored from a backup)",
                next.generation(),
            ));
        }
        let mut dropped: Vec<&str> = current
            .usable_key_ids()
            .filter(|key_id| !next.versions().iter().any(|v| v.key_id() == *key_id))
            .collect();
        if dropped.is_empty() {
            return None;
        }
        dropped.sort_unstable();
        Some(format!(
            "it lacks {} that the plugin serves (seeds wrapped under them would no longer decrypt)",
            dropped.join(", ")
        ))
    }
}

impl Root for FileRoot {
    type Key = WrapKey;
    type Marker = FileMarker;

    fn self_test(&self) -> SelfTest {
        SelfTest::Inline
    }

    fn wrap<'a>(
        &'a self,
        key: &WrapKey,
        key_id: &Arc<str>,
        plaintext: &[u8],
        _health: &'a Health,
    ) -> impl Future<Output = Result<Vec<u8>, BackendError>> + Send + use<'a> {
        ready(key.wrap(key_id, plaintext).map_err(|error| match error {
            WrapError::PlaintextTooLarge { .. } => BackendError::InvalidInput(error.to_string()),
            other => BackendError::Unavailable(other.to_string()),
        }))
    }

    fn unwrap<'a>(
        &'a self,
        key: &WrapKey,
        key_id: &str,
        ciphertext: &[u8],
        _health: &'a Health,
    ) -> impl Future<Output = Result<SecretBytes, BackendError>> + Send + use<'a> {
        ready(
            key.unwrap(key_id, ciphertext)
                .map_err(|_| BackendError::DecryptFailed),
        )
    }

    fn read(
        &self,
        current: &Snapshot<WrapKey, FileMarker>,
        force: bool,
        _health: &Health,
    ) -> Result<Option<Listing<WrapKey, FileMarker>>, BackendError> {
        if !force {
            if let Ok(stamp) = FileStamp::of_path(&self.path) {
                if stamp == current.marker().stamp {
                    return Ok(None);
                }
            }
        }
        let loaded = keyring::load(&self.path)
            .map_err(|error| BackendError::Unavailable(error.to_string()))?;
        if let Some(reason) = Self::rollback_to(current, &loaded.keyring) {
            if self.allow_rollback {
                tracing::warn!(keyring = %self.path.display(), %reason, "accepting a keyring rollback (--allow-keyring-rollback)");
            } else {
                let mut refused = self
                    .refused
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                if *refused != Some(loaded.stamp) {
                    *refused = Some(loaded.stamp);
                    self.rollbacks_refused.fetch_add(1, Ordering::Relaxed);
                }
                return Err(BackendError::Unavailable(format!(
                    "new keyring {} refused as a rollback: {reason}; the previous keyring keeps serving. Restore the newer file, or restart with --allow-keyring-rollback if this is intended",
                    self.path.display()
                )));
            }
        }
        Ok(Some(listing(&loaded.keyring, loaded.stamp)))
    }

    fn no_primary(&self, _listing: &Listing<WrapKey, FileMarker>) -> BackendError {
        BackendError::Unavailable("the keyring has no primary version".into())
    }

    fn source(&self) -> String {
        format!("keyring {}", self.path.display())
    }

    fn rollbacks_refused(&self) -> u64 {
        self.rollbacks_refused.load(Ordering::Relaxed)
    }
}

impl KeyRing<FileRoot> {
    /// Loads and validates the keyring at `path` (ownership and mode checked,
    /// see [`crate::keyring::store`]) and runs a first self-test.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, KeyringError> {
        let path = path.as_ref().to_path_buf();
        let loaded = keyring::load(&path)?;
        let root = FileRoot {
            path: path.clone(),
            allow_rollback: false,
            refused: Mutex::new(None),
            rollbacks_refused: AtomicU64::new(0),
        };
        KeyRing::new(root, listing(&loaded.keyring, loaded.stamp)).map_err(|error| {
            KeyringError::Invalid {
                path,
                problem: error.to_string(),
            }
        })
    }

    /// Accept reloads that drop a served version or lower the generation
    /// (`serve --allow-keyring-rollback`), logging a warning each time.
    pub fn allow_rollback(mut self, allow: bool) -> Self {
        self.root_mut().allow_rollback = allow;
        self
    }

    /// The keyring file this backend serves.
    pub fn path(&self) -> &Path {
        &self.root().path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{KeyBackend, ReloadOutcome};
    use std::collections::BTreeMap;
    use std::time::SystemTime;

    fn block_on<F: Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    /// The shared Debug shows the root (the path) and the primary's key_id,
    /// never key material.
    #[test]
    fn debug_shows_no_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ring.json");
        keyring::create(&path, &Keyring::initial(SystemTime::now()).unwrap()).unwrap();
        let backend = FileBackend::open(&path).unwrap();
        let shown = format!("{backend:?}");
        assert!(shown.contains(&*backend.status().key_id), "{shown}");
        assert!(shown.contains("ring.json"), "{shown}");
        let file = std::fs::read_to_string(&path).unwrap();
        let material = file
            .split("\"material\": \"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap();
        assert!(!shown.contains(material), "{shown}");
    }

    #[test]
    fn status_wrap_unwrap_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ring.json");
        keyring::create(&path, &Keyring::initial(SystemTime::now()).unwrap()).unwrap();
        let backend = FileBackend::open(&path).unwrap();
        let status = backend.status();
        assert_eq!(&*status.healthz, HEALTHY);
        assert!(status.key_id.starts_with("kk-v1-"));
        let wrapped = block_on(backend.wrap(&[3u8; 32])).unwrap();
        assert_eq!(wrapped.key_id, status.key_id);
        let none = BTreeMap::new();
        let seed = block_on(backend.unwrap(&wrapped.key_id, &wrapped.ciphertext, &none)).unwrap();
        assert_eq!(seed.expose_secret(), &[3u8; 32]);
        assert_eq!(
            block_on(backend.unwrap("kk-v9-0000000000000000", &wrapped.ciphertext, &none))
                .unwrap_err(),
            BackendError::UnknownKeyId
        );
        assert_eq!(backend.reload(false).unwrap(), ReloadOutcome::Unchanged);
        keyring::modify(&path, |ring| ring.rotate(SystemTime::now())).unwrap();
        let ReloadOutcome::Reloaded { primary_key_id } = backend.reload(false).unwrap() else {
            panic!("rotation not picked up");
        };
        assert!(primary_key_id.starts_with("kk-v2-"));
        assert_eq!(backend.status().key_id, primary_key_id);
        // Forced reload re-reads even when unchanged.
        assert!(matches!(
            backend.reload(true).unwrap(),
            ReloadOutcome::Reloaded { .. }
        ));
        let old = block_on(backend.unwrap(&wrapped.key_id, &wrapped.ciphertext, &none)).unwrap();
        assert_eq!(old.expose_secret(), &[3u8; 32]);
        // Disabled: refused as disabled (not unknown); enabled again: works.
        keyring::modify(&path, |ring| ring.disable(1)).unwrap();
        backend.reload(false).unwrap();
        assert_eq!(
            block_on(backend.unwrap(&wrapped.key_id, &wrapped.ciphertext, &none)).unwrap_err(),
            BackendError::KeyDisabled
        );
        keyring::modify(&path, |ring| ring.enable(1)).unwrap();
        backend.reload(false).unwrap();
        block_on(backend.unwrap(&wrapped.key_id, &wrapped.ciphertext, &none)).unwrap();
        let mut tampered = wrapped.ciphertext.clone();
        tampered[40] ^= 1;
        assert_eq!(
            block_on(backend.unwrap(&wrapped.key_id, &tampered, &none)).unwrap_err(),
            BackendError::DecryptFailed
        );
        // A broken file is refused; the previous snapshot keeps serving.
        let serving = backend.status().key_id;
        std::fs::write(&path, b"{ broken").unwrap();
        let error = backend.reload(false).unwrap_err();
        assert!(error.to_string().contains("is invalid"), "{error}");
        assert_eq!(backend.status().key_id, serving);
        block_on(backend.self_test());
        assert_eq!(&*backend.status().healthz, HEALTHY);
        block_on(backend.unwrap(&wrapped.key_id, &wrapped.ciphertext, &none)).unwrap();
        let too_large = vec![0u8; crate::wrap::MAX_PLAINTEXT_LEN + 1];
        assert!(matches!(
            block_on(backend.wrap(&too_large)),
            Err(BackendError::InvalidInput(_))
        ));
    }
}
