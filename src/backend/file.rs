//! The file keyring as a [`KeyBackend`]: KEKs from a `kube-kms-keyring/v1`
//! file (see [`crate::keyring`]), held in memory as one immutable snapshot.
//!
//! Every call reads one [`ArcSwap`] snapshot (primary key_id + key_id → key),
//! so Status and Encrypt agree even while a reload swaps in a new keyring.
//! Wrapping and unwrapping take microseconds and run inline. A reload that
//! fails leaves the previous snapshot serving.
//!
//! Rollback: a reload that would drop a version the snapshot serves (its
//! key_id gone from the file), or whose file has a lower `generation` than the
//! one serving (a backup restored over the live file), is refused like a
//! broken file: the previous snapshot keeps serving, the reload error turns
//! `/readyz` red, and [`KeyBackend::rollbacks_refused`] counts it (once per
//! file). [`FileBackend::allow_rollback`] lets it through, with a warning.
use std::collections::{BTreeMap, HashMap};
use std::future::{ready, Future};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::{BackendError, KeyBackend, KeyStatus, ReloadOutcome, VersionCounts, Wrapped};
use crate::keyring::{self, FileStamp, KeyState, Keyring, KeyringError};
use crate::secret::SecretBytes;
use crate::wrap::{WrapError, WrapKey};

/// Re-exported from [`crate::backend`], where every backend finds it.
pub use super::HEALTHY;

/// A key known to the snapshot. Disabled and destroyed keys are remembered
/// (without material) so Decrypt can say "disabled" instead of "unknown".
enum Slot {
    Usable(Arc<WrapKey>),
    Disabled,
}

/// One consistent view of the keyring.
struct Snapshot {
    primary_key_id: Arc<str>,
    primary: Arc<WrapKey>,
    keys: HashMap<Box<str>, Slot>,
    stamp: FileStamp,
    counts: VersionCounts,
    generation: u64,
}

impl Snapshot {
    fn from_keyring(keyring: &Keyring, stamp: FileStamp) -> Result<Self, BackendError> {
        let mut keys = HashMap::with_capacity(keyring.versions().len());
        let mut primary = None;
        let mut counts = VersionCounts::default();
        for version in keyring.versions() {
            let counter = match version.state() {
                KeyState::Primary => &mut counts.primary,
                KeyState::Enabled => &mut counts.enabled,
                KeyState::Disabled => &mut counts.disabled,
                KeyState::Destroyed => &mut counts.destroyed,
            };
            *counter += 1;
            let slot = match (version.state(), version.material()) {
                (state, Some(kek)) if state.can_unwrap() => {
                    // One prepared key serves as primary and in the map.
                    let key = Arc::new(WrapKey::new(kek));
                    if state == KeyState::Primary {
                        primary = Some((Arc::<str>::from(version.key_id()), Arc::clone(&key)));
                    }
                    Slot::Usable(key)
                }
                _ => Slot::Disabled,
            };
            keys.insert(Box::from(version.key_id()), slot);
        }
        let (primary_key_id, primary) = primary.ok_or_else(|| {
            BackendError::Unavailable("the keyring has no primary version".into())
        })?;
        Ok(Self {
            primary_key_id,
            primary,
            keys,
            stamp,
            counts,
            generation: keyring.generation(),
        })
    }

    fn wrap(&self, plaintext: &[u8]) -> Result<Wrapped, BackendError> {
        let ciphertext = self
            .primary
            .wrap(&self.primary_key_id, plaintext)
            .map_err(|error| match error {
                WrapError::PlaintextTooLarge { .. } => {
                    BackendError::InvalidInput(error.to_string())
                }
                other => BackendError::Unavailable(other.to_string()),
            })?;
        Ok(Wrapped {
            ciphertext,
            key_id: Arc::clone(&self.primary_key_id),
            annotations: BTreeMap::new(),
        })
    }

    fn unwrap(&self, key_id: &str, ciphertext: &[u8]) -> Result<SecretBytes, BackendError> {
        match self.keys.get(key_id) {
            None => Err(BackendError::UnknownKeyId),
            Some(Slot::Disabled) => Err(BackendError::KeyDisabled),
            Some(Slot::Usable(kek)) => kek
                .unwrap(key_id, ciphertext)
                .map_err(|_| BackendError::DecryptFailed),
        }
    }

    /// Why replacing this snapshot with `next` would be a rollback, if it would.
    fn rollback_to(&self, next: &Keyring) -> Option<String> {
        if next.generation() < self.generation {
            return Some(format!(
                "its generation {} is lower than the serving keyring's {} (an older copy of the file, e.g. restored from a backup)",
                next.generation(),
                self.generation
            ));
        }
        let mut dropped: Vec<&str> = self
            .keys
            .iter()
            .filter(|(_, slot)| matches!(slot, Slot::Usable(_)))
            .map(|(key_id, _)| &**key_id)
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

    /// Wraps and unwraps a random canary; `Ok` or the reason it failed.
    fn self_test(&self) -> Result<(), String> {
        let canary = super::self_test_canary()?;
        let wrapped = self.wrap(canary.expose_secret()).map_err(|error| {
            format!(
                "self-test: wrap under {} failed: {error}",
                self.primary_key_id
            )
        })?;
        let opened = self
            .unwrap(&wrapped.key_id, &wrapped.ciphertext)
            .map_err(|error| {
                format!(
                    "self-test: unwrap under {} failed: {error}",
                    self.primary_key_id
                )
            })?;
        super::check_self_test_canary(&canary, &opened, &self.primary_key_id)
    }
}

/// A [`KeyBackend`] serving the keyring file at a path.
///
/// Use [`FileBackend::open`], then the [`KeyBackend`] methods; call
/// [`KeyBackend::reload`] when the file may have changed (file watch, SIGHUP)
/// and [`KeyBackend::self_test`] periodically.
pub struct FileBackend {
    path: PathBuf,
    snapshot: ArcSwap<Snapshot>,
    healthz: ArcSwap<Arc<str>>,
    /// Serializes reloads so two of them cannot interleave their swaps; holds
    /// the stamp of the last file refused as a rollback (counted once).
    reloading: Mutex<Option<FileStamp>>,
    /// Accept rollbacks (`serve --allow-keyring-rollback`).
    allow_rollback: bool,
    rollbacks_refused: AtomicU64,
}

impl std::fmt::Debug for FileBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileBackend")
            .field("path", &self.path)
            .field("primary_key_id", &self.snapshot.load().primary_key_id)
            .finish_non_exhaustive()
    }
}

impl FileBackend {
    /// Loads and validates the keyring at `path` (ownership and mode checked,
    /// see [`crate::keyring::store`]) and runs a first self-test.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, KeyringError> {
        let path = path.as_ref().to_path_buf();
        let loaded = keyring::load(&path)?;
        let snapshot = Snapshot::from_keyring(&loaded.keyring, loaded.stamp).map_err(|error| {
            KeyringError::Invalid {
                path: path.clone(),
                problem: error.to_string(),
            }
        })?;
        let verdict = super::health_text(snapshot.self_test());
        Ok(Self {
            path,
            snapshot: ArcSwap::from_pointee(snapshot),
            healthz: ArcSwap::from_pointee(verdict),
            reloading: Mutex::new(None),
            allow_rollback: false,
            rollbacks_refused: AtomicU64::new(0),
        })
    }

    /// Accept reloads that drop a served version or lower the generation
    /// (`serve --allow-keyring-rollback`), logging a warning each time.
    pub fn allow_rollback(mut self, allow: bool) -> Self {
        self.allow_rollback = allow;
        self
    }

    /// The keyring file this backend serves.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn reload_now(&self, force: bool) -> Result<ReloadOutcome, BackendError> {
        let mut refused = self
            .reloading
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let current = self.snapshot.load();
        if !force {
            if let Ok(stamp) = FileStamp::of_path(&self.path) {
                if stamp == current.stamp {
                    return Ok(ReloadOutcome::Unchanged);
                }
            }
        }
        let loaded = keyring::load(&self.path)
            .map_err(|error| BackendError::Unavailable(error.to_string()))?;
        if let Some(reason) = current.rollback_to(&loaded.keyring) {
            if self.allow_rollback {
                tracing::warn!(keyring = %self.path.display(), %reason, "accepting a keyring rollback (--allow-keyring-rollback)");
            } else {
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
        let fresh = Snapshot::from_keyring(&loaded.keyring, loaded.stamp)?;
        let verdict = fresh.self_test();
        if let Err(reason) = &verdict {
            return Err(BackendError::Unavailable(format!(
                "new keyring {} rejected: {reason}",
                self.path.display()
            )));
        }
        let primary_key_id = Arc::clone(&fresh.primary_key_id);
        self.snapshot.store(Arc::new(fresh));
        self.healthz.store(Arc::new(super::health_text(verdict)));
        Ok(ReloadOutcome::Reloaded { primary_key_id })
    }
}

impl KeyBackend for FileBackend {
    fn status(&self) -> KeyStatus {
        KeyStatus {
            key_id: Arc::clone(&self.snapshot.load().primary_key_id),
            healthz: Arc::clone(&self.healthz.load()),
        }
    }

    fn wrap(&self, plaintext: &[u8]) -> impl Future<Output = Result<Wrapped, BackendError>> + Send {
        ready(self.snapshot.load().wrap(plaintext))
    }

    fn unwrap(
        &self,
        key_id: &str,
        ciphertext: &[u8],
        _annotations: &BTreeMap<String, Vec<u8>>,
    ) -> impl Future<Output = Result<SecretBytes, BackendError>> + Send {
        ready(self.snapshot.load().unwrap(key_id, ciphertext))
    }

    fn self_test(&self) -> impl Future<Output = ()> + Send {
        let verdict = self.snapshot.load().self_test();
        self.healthz.store(Arc::new(super::health_text(verdict)));
        ready(())
    }

    fn reload(&self, force: bool) -> Result<ReloadOutcome, BackendError> {
        self.reload_now(force)
    }

    fn version_counts(&self) -> VersionCounts {
        self.snapshot.load().counts
    }

    fn rollbacks_refused(&self) -> u64 {
        self.rollbacks_refused.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn block_on<F: Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
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
