//! The keyring state machine. Every operation checks its preconditions, makes
//! its change, and re-checks all invariants ([`Keyring::validate`]) before
//! reporting success, so a keyring that passes through here is always valid.
//!
//! ```text
//!            rotate/add            promote
//!  (new) ──────────────▶ enabled ◀──────────▶ primary   (exactly one primary)
//!                          │  ▲
//!                  disable │  │ enable
//!                          ▼  │
//!                        disabled ──destroy──▶ destroyed (material erased, for good)
//! ```
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{format, key_id, KeyState, KeyVersion, Keyring, KeyringError, VersionInfo};
use crate::secret::Key256;

/// What `promote` (and `rotate`) changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Promotion {
    /// The version that is primary now.
    pub primary: VersionInfo,
    /// The version that was primary and is now enabled.
    pub previous: VersionInfo,
}

/// A state change of one version. [`Transition::check`] is the one place that
/// says which state allows which change; the file keyring and the other
/// backends (e.g. a PKCS#11 token) all apply it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// enabled → primary (the old primary becomes enabled).
    Promote,
    /// enabled → disabled.
    Disable,
    /// disabled → enabled.
    Enable,
    /// disabled → destroyed.
    Destroy,
}

impl Transition {
    /// The verb used in messages ("disable", ...).
    pub fn action(self) -> &'static str {
        match self {
            Transition::Promote => "promote",
            Transition::Disable => "disable",
            Transition::Enable => "enable",
            Transition::Destroy => "destroy",
        }
    }

    /// The state version `id` ends in if it is now in `state`, or
    /// [`KeyringError::Refused`] saying why not and what to do instead.
    pub fn check(self, id: u32, state: KeyState) -> Result<KeyState, KeyringError> {
        let action = self.action();
        match (self, state) {
            (Transition::Promote, KeyState::Enabled) => Ok(KeyState::Primary),
            (Transition::Promote, KeyState::Primary) => {
                Err(refused(action, id, "it is already the primary"))
            }
            (Transition::Promote, KeyState::Disabled) => Err(refused(
                action,
                id,
                "it is disabled; enable it first (`kube-kms key enable`)",
            )),
            (Transition::Promote, KeyState::Destroyed) => Err(refused(
                action,
                id,
                "it is destroyed; its material is gone. Use `kube-kms key rotate` for a new key",
            )),
            (Transition::Disable, KeyState::Enabled) => Ok(KeyState::Disabled),
            (Transition::Disable, KeyState::Primary) => Err(refused(
                action,
                id,
                "it is the primary; rotate (`kube-kms key rotate`) or promote another version first",
            )),
            (Transition::Disable, KeyState::Disabled) => {
                Err(refused(action, id, "it is already disabled"))
            }
            (Transition::Disable, KeyState::Destroyed) => {
                Err(refused(action, id, "it is destroyed"))
            }
            (Transition::Enable, KeyState::Disabled) => Ok(KeyState::Enabled),
            (Transition::Enable, KeyState::Primary | KeyState::Enabled) => {
                Err(refused(action, id, "it is already enabled"))
            }
            (Transition::Enable, KeyState::Destroyed) => Err(refused(
                action,
                id,
                "it is destroyed; its material is gone for good",
            )),
            (Transition::Destroy, KeyState::Disabled) => Ok(KeyState::Destroyed),
            (Transition::Destroy, KeyState::Primary) => Err(refused(
                action,
                id,
                "it is the primary; rotate, then disable it, then destroy it",
            )),
            (Transition::Destroy, KeyState::Enabled) => Err(refused(
                action,
                id,
                "it is enabled; disable it first (`kube-kms key disable`), check that nothing fails to decrypt, then destroy it",
            )),
            (Transition::Destroy, KeyState::Destroyed) => {
                Err(refused(action, id, "it is already destroyed"))
            }
        }
    }
}

fn refused(action: &'static str, id: u32, reason: impl Into<String>) -> KeyringError {
    KeyringError::Refused {
        action,
        id,
        reason: reason.into(),
    }
}

fn whole_seconds(time: SystemTime) -> SystemTime {
    let seconds = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    UNIX_EPOCH + Duration::from_secs(seconds)
}

fn new_version(id: u32, state: KeyState, now: SystemTime) -> Result<KeyVersion, KeyringError> {
    let kek = Key256::generate().map_err(KeyringError::Random)?;
    Ok(KeyVersion {
        id,
        key_id: key_id::for_version(id, &kek),
        state,
        created: whole_seconds(now),
        disabled_at: None,
        material: Some(kek),
    })
}

impl Keyring {
    /// Checks every invariant (see the [module docs](super)).
    pub fn validate(&self) -> Result<(), KeyringError> {
        format::check_invariants(self)
    }

    /// A new keyring: version 1, primary, with a fresh random KEK.
    pub fn initial(now: SystemTime) -> Result<Keyring, KeyringError> {
        let keyring = Keyring {
            generation: 0,
            versions: vec![new_version(1, KeyState::Primary, now)?],
        };
        keyring.validate()?;
        Ok(keyring)
    }

    fn next_id(&self, action: &'static str) -> Result<u32, KeyringError> {
        let highest = self.versions.iter().map(|v| v.id).max().unwrap_or(0);
        highest.checked_add(1).ok_or_else(|| {
            refused(
                action,
                highest,
                "version numbers are exhausted; create a new keyring",
            )
        })
    }

    fn index_of(&self, id: u32) -> Result<usize, KeyringError> {
        self.versions
            .iter()
            .position(|v| v.id == id)
            .ok_or(KeyringError::UnknownVersion {
                path: PathBuf::from("<memory>"),
                id,
            })
    }

    fn primary_index(&self) -> Result<usize, KeyringError> {
        self.versions
            .iter()
            .position(|v| v.state == KeyState::Primary)
            .ok_or_else(|| KeyringError::Invalid {
                path: PathBuf::from("<memory>"),
                problem: "no version is primary".into(),
            })
    }

    /// Adds version N+1 as primary; the old primary stays enabled for decryption.
    pub fn rotate(&mut self, now: SystemTime) -> Result<Promotion, KeyringError> {
        let id = self.next_id("rotate to")?;
        self.primary_index()?;
        self.versions.push(new_version(id, KeyState::Enabled, now)?);
        self.promote(id)
    }

    /// Adds version N+1 as enabled (not primary): it can be distributed to
    /// every plugin instance before it is promoted.
    pub fn add(&mut self, now: SystemTime) -> Result<VersionInfo, KeyringError> {
        let id = self.next_id("add")?;
        let version = new_version(id, KeyState::Enabled, now)?;
        let info = version.info();
        self.versions.push(version);
        self.validate()?;
        Ok(info)
    }

    /// Makes an enabled version the primary; the old primary becomes enabled.
    pub fn promote(&mut self, id: u32) -> Result<Promotion, KeyringError> {
        let target = self.index_of(id)?;
        let old = self.primary_index()?;
        self.check(Transition::Promote, target, id)?;
        self.set_state(old, KeyState::Enabled);
        self.set_state(target, KeyState::Primary);
        self.validate()?;
        Ok(Promotion {
            primary: self.info_at(target)?,
            previous: self.info_at(old)?,
        })
    }

    /// Disables an enabled version: it stops unwrapping. The primary cannot be
    /// disabled. Records the time (`disabled_at`) for the destroy gate.
    pub fn disable(&mut self, id: u32) -> Result<VersionInfo, KeyringError> {
        self.disable_at(id, SystemTime::now())
    }

    /// [`Keyring::disable`], recording `now` as the disable time.
    pub fn disable_at(&mut self, id: u32, now: SystemTime) -> Result<VersionInfo, KeyringError> {
        let index = self.index_of(id)?;
        self.check(Transition::Disable, index, id)?;
        self.set_state(index, KeyState::Disabled);
        if let Some(version) = self.versions.get_mut(index) {
            version.disabled_at = Some(whole_seconds(now));
        }
        self.validate()?;
        self.info_at(index)
    }

    /// Enables a disabled version again.
    pub fn enable(&mut self, id: u32) -> Result<VersionInfo, KeyringError> {
        let index = self.index_of(id)?;
        self.check(Transition::Enable, index, id)?;
        self.set_state(index, KeyState::Enabled);
        if let Some(version) = self.versions.get_mut(index) {
            version.disabled_at = None;
        }
        self.validate()?;
        self.info_at(index)
    }

    /// Destroys a disabled version: its material is erased (zeroized in memory,
    /// gone from the file once written); id and key_id stay, so neither is reused.
    pub fn destroy(&mut self, id: u32) -> Result<VersionInfo, KeyringError> {
        let index = self.index_of(id)?;
        self.check(Transition::Destroy, index, id)?;
        if let Some(version) = self.versions.get_mut(index) {
            version.state = KeyState::Destroyed;
            // Dropping the Key256 zeroizes it.
            version.material = None;
        }
        self.validate()?;
        self.info_at(index)
    }

    /// Applies the state machine's rule for `transition` to the version at `index`.
    fn check(
        &self,
        transition: Transition,
        index: usize,
        id: u32,
    ) -> Result<KeyState, KeyringError> {
        let state = self
            .versions
            .get(index)
            .map_or(KeyState::Destroyed, |v| v.state);
        transition.check(id, state)
    }

    fn set_state(&mut self, index: usize, state: KeyState) {
        if let Some(version) = self.versions.get_mut(index) {
            version.state = state;
        }
    }

    fn info_at(&self, index: usize) -> Result<VersionInfo, KeyringError> {
        self.versions
            .get(index)
            .map(KeyVersion::info)
            .ok_or_else(|| KeyringError::Invalid {
                path: PathBuf::from("<memory>"),
                problem: "internal: version vanished".into(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn states(keyring: &Keyring) -> Vec<(u32, KeyState)> {
        keyring
            .versions()
            .iter()
            .map(|v| (v.id(), v.state()))
            .collect()
    }

    fn refused_reason(result: Result<impl std::fmt::Debug, KeyringError>) -> String {
        match result {
            Err(KeyringError::Refused { reason, .. }) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn lifecycle() {
        let now = SystemTime::now();
        let mut ring = Keyring::initial(now).unwrap();
        assert_eq!(states(&ring), [(1, KeyState::Primary)]);
        let rotated = ring.rotate(now).unwrap();
        assert_eq!(rotated.primary.id, 2);
        assert_eq!(rotated.previous.id, 1);
        assert_eq!(
            states(&ring),
            [(1, KeyState::Enabled), (2, KeyState::Primary)]
        );
        assert!(refused_reason(ring.disable(2)).contains("primary"));
        assert!(refused_reason(ring.destroy(1)).contains("disable it first"));
        ring.disable(1).unwrap();
        assert!(refused_reason(ring.disable(1)).contains("already"));
        assert!(refused_reason(ring.promote(1)).contains("enable it first"));
        ring.enable(1).unwrap();
        ring.disable(1).unwrap();
        let destroyed = ring.destroy(1).unwrap();
        assert_eq!(destroyed.state, KeyState::Destroyed);
        assert!(ring.version(1).unwrap().material().is_none());
        assert!(refused_reason(ring.enable(1)).contains("gone for good"));
        let added = ring.add(now).unwrap();
        assert_eq!((added.id, added.state), (3, KeyState::Enabled));
        let promoted = ring.promote(3).unwrap();
        assert_eq!((promoted.primary.id, promoted.previous.id), (3, 2));
        assert_eq!(
            states(&ring),
            [
                (1, KeyState::Destroyed),
                (2, KeyState::Enabled),
                (3, KeyState::Primary)
            ]
        );
        assert!(matches!(
            ring.disable(9),
            Err(KeyringError::UnknownVersion { id: 9, .. })
        ));
        // A destroyed id is never reused.
        assert_eq!(ring.rotate(now).unwrap().primary.id, 4);
        ring.validate().unwrap();
    }

    #[test]
    fn key_ids_are_unique_and_match_material() {
        let now = SystemTime::now();
        let mut ring = Keyring::initial(now).unwrap();
        for _ in 0..5 {
            ring.rotate(now).unwrap();
        }
        let mut ids: Vec<&str> = ring.versions().iter().map(|v| v.key_id()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 6);
        for version in ring.versions() {
            assert_eq!(
                version.key_id(),
                key_id::for_version(version.id(), version.material().unwrap())
            );
        }
    }

    proptest::proptest! {
        /// Any sequence of operations (refused ones included) keeps every
        /// invariant, and the result survives a write/read round trip.
        #[test]
        fn random_operation_sequences_keep_the_invariants(
            steps in proptest::collection::vec((0u8..6, 1u32..8), 0..40)
        ) {
            let now = SystemTime::now();
            let mut ring = Keyring::initial(now).unwrap();
            for (operation, id) in steps {
                let before = ring.metadata();
                let result = match operation {
                    0 => ring.rotate(now).map(|_| ()),
                    1 => ring.add(now).map(|_| ()),
                    2 => ring.promote(id).map(|_| ()),
                    3 => ring.disable(id).map(|_| ()),
                    4 => ring.enable(id).map(|_| ()),
                    _ => ring.destroy(id).map(|_| ()),
                };
                if result.is_err() {
                    proptest::prop_assert_eq!(&ring.metadata(), &before, "a refused operation changed the keyring");
                }
                ring.validate().unwrap();
                let reread = format::parse(&format::serialize(&ring).unwrap()).unwrap();
                proptest::prop_assert_eq!(reread.metadata(), ring.metadata());
            }
        }
    }
}
