//! What a root of trust is to [`super::KeyRing`] ([`Root`]: its key
//! operations and its key_id scheme) and what they exchange: the versions a
//! root reads ([`Listing`] of [`Version`]s), the [`Snapshot`] built from
//! them, how the root is self-tested ([`SelfTest`]) and the health text
//! Status serves ([`Health`]).
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use super::super::{BackendError, VersionCounts};
use crate::keyring::KeyState;
use crate::secret::SecretBytes;

/// One key version as a root reports it.
pub struct Version<K> {
    /// Its public key_id.
    pub key_id: Box<str>,
    /// Its lifecycle state.
    pub state: KeyState,
    /// What the root needs to use the key (`None`: it cannot unwrap; only
    /// taken from versions whose state unwraps).
    pub key: Option<K>,
}

/// What one read of a root yields: its versions and a marker that is equal
/// when nothing changed since an earlier read.
pub struct Listing<K, M> {
    /// The versions, in any order (the primary: the first primary with a key).
    pub versions: Vec<Version<K>>,
    /// Equal between two reads that found the same versions.
    pub marker: M,
}

/// The listing a root `R` reads.
pub type RootListing<R> = Listing<<R as Root>::Key, <R as Root>::Marker>;

/// The snapshot a [`super::KeyRing`] of root `R` serves.
pub type RootSnapshot<R> = Snapshot<<R as Root>::Key, <R as Root>::Marker>;

/// How a root is self-tested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelfTest {
    /// Wrap and unwrap answer at once (no I/O): every new snapshot is tested
    /// before it serves, and one that fails is refused.
    Inline,
    /// Every call goes to the root: the periodic round trip must finish
    /// within this time, else the root is unhealthy.
    Bounded(Duration),
}

/// The health text Status serves: [`crate::backend::HEALTHY`] or why the root cannot serve.
pub struct Health(ArcSwap<Arc<str>>);

impl Health {
    pub(super) fn new(text: &str) -> Self {
        Self(ArcSwap::from_pointee(Arc::from(text)))
    }

    /// The current text.
    pub fn get(&self) -> Arc<str> {
        Arc::clone(&self.0.load())
    }

    pub(super) fn set(&self, text: Arc<str>) {
        self.0.store(Arc::new(text));
    }

    /// A root call found the root broken: Status reports `reason` until the
    /// next self-test passes (logged once per distinct reason).
    pub fn mark_unhealthy(&self, reason: &str) {
        if !self.0.load().contains(reason) {
            tracing::warn!(reason = %reason, "root of trust call failed: Status reports unhealthy until a self-test passes");
        }
        self.set(Arc::from(reason));
    }
}

/// The key versions a [`super::KeyRing`] serves, as one consistent view.
pub struct Snapshot<K, M> {
    pub(super) primary_key_id: Arc<str>,
    pub(super) primary: Arc<K>,
    /// `None`: the version is known but cannot unwrap (disabled, destroyed).
    pub(super) keys: HashMap<Box<str>, Option<Arc<K>>>,
    pub(super) counts: VersionCounts,
    pub(super) marker: M,
}

impl<K, M> Snapshot<K, M> {
    /// The primary's key_id.
    pub fn primary_key_id(&self) -> &Arc<str> {
        &self.primary_key_id
    }

    /// The root's change marker of the read this snapshot came from.
    pub fn marker(&self) -> &M {
        &self.marker
    }

    /// How many versions the snapshot knows (whatever their state).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the snapshot knows no version (never: it has a primary).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key_ids of the versions that unwrap.
    pub fn usable_key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys
            .iter()
            .filter(|(_, key)| key.is_some())
            .map(|(key_id, _)| &**key_id)
    }

    /// The key for `key_id`: `Ok(None)` if unknown, an error if not usable.
    pub(super) fn lookup(&self, key_id: &str) -> Result<Option<&K>, BackendError> {
        match self.keys.get(key_id) {
            None => Ok(None),
            Some(None) => Err(BackendError::KeyDisabled),
            Some(Some(key)) => Ok(Some(key)),
        }
    }

    pub(super) fn build<R>(root: &R, listing: Listing<K, M>) -> Result<Self, BackendError>
    where
        R: Root<Key = K, Marker = M>,
    {
        let has_primary = listing
            .versions
            .iter()
            .any(|version| version.state == KeyState::Primary && version.key.is_some());
        if !has_primary {
            return Err(root.no_primary(&listing));
        }
        let mut counts = VersionCounts::default();
        let mut keys = HashMap::with_capacity(listing.versions.len());
        let mut primary = None;
        for version in listing.versions {
            *match version.state {
                KeyState::Primary => &mut counts.primary,
                KeyState::Enabled => &mut counts.enabled,
                KeyState::Disabled => &mut counts.disabled,
                KeyState::Destroyed => &mut counts.destroyed,
            } += 1;
            let key = version
                .key
                .filter(|_| version.state.can_unwrap())
                .map(Arc::new);
            if let (KeyState::Primary, Some(key), None) = (version.state, &key, &primary) {
                primary = Some((Arc::<str>::from(&*version.key_id), Arc::clone(key)));
            }
            keys.insert(version.key_id, key);
        }
        let (primary_key_id, primary) = primary.ok_or_else(|| {
            BackendError::Unavailable("the keys have no usable primary version".into())
        })?;
        Ok(Self {
            primary_key_id,
            primary,
            keys,
            counts,
            marker: listing.marker,
        })
    }
}

/// A kind of root of trust: its key operations and its key_id scheme.
/// [`super::KeyRing`] does the rest (see its module doc). Implementations keep
/// what the root needs (a path, a session pool, a client) and nothing secret
/// in `Debug`.
pub trait Root: Send + Sync + std::fmt::Debug + 'static {
    /// What wrap and unwrap need of one version (a prepared key, a remote
    /// key's name; `()` when the key_id is enough).
    type Key: Send + Sync + 'static;
    /// Equal between two reads that found the same versions.
    type Marker: PartialEq + Send + Sync + 'static;

    /// How the root is self-tested.
    fn self_test(&self) -> SelfTest;

    /// Wraps `plaintext` under `key` (the version `key_id`). The future may
    /// borrow only `self` and `health`: copy what it needs of the rest.
    /// Mark `health` unhealthy when the root itself failed.
    fn wrap<'a>(
        &'a self,
        key: &Self::Key,
        key_id: &Arc<str>,
        plaintext: &[u8],
        health: &'a Health,
    ) -> impl Future<Output = Result<Vec<u8>, BackendError>> + Send + use<'a, Self>;

    /// Unwraps `ciphertext` with `key` (the version `key_id`); a ciphertext
    /// that fails authentication is [`BackendError::DecryptFailed`].
    fn unwrap<'a>(
        &'a self,
        key: &Self::Key,
        key_id: &str,
        ciphertext: &[u8],
        health: &'a Health,
    ) -> impl Future<Output = Result<SecretBytes, BackendError>> + Send + use<'a, Self>;

    /// A cheap check of a ciphertext's shape before its key is looked up
    /// (a malformed one then never triggers an on-demand read).
    fn screen(&self, _ciphertext: &[u8]) -> Result<(), BackendError> {
        Ok(())
    }

    /// Reads the versions (blocking; called on a blocking thread or outside
    /// any runtime). `Ok(None)`: known unchanged since `current` without
    /// reading (`force` asks to read anyway). An error leaves `current`
    /// serving.
    fn read(
        &self,
        current: &RootSnapshot<Self>,
        force: bool,
        health: &Health,
    ) -> Result<Option<RootListing<Self>>, BackendError>;

    /// Why `listing` cannot serve: it has no primary that unwraps.
    fn no_primary(&self, _listing: &RootListing<Self>) -> BackendError {
        BackendError::Unavailable("the keys have no usable primary version".into())
    }

    /// Read at most this often unless forced (a remote root that is slow or
    /// billed per call); `None`: on every reload.
    fn refresh_interval(&self) -> Option<Duration> {
        None
    }

    /// Whether an unknown `key_id` is one of this root's scheme that a fresh
    /// read may find (then [`Root::read_now`] is asked, rate-limited).
    fn may_hold(&self, _key_id: &str) -> bool {
        false
    }

    /// Reads the versions now from async code (the on-demand read), within
    /// the root's own time limit. `known`: how many versions are served.
    fn read_now<'a>(
        &'a self,
        _known: usize,
        _health: &'a Health,
    ) -> impl Future<Output = Result<RootListing<Self>, BackendError>> + Send + 'a {
        async { Err(BackendError::Unavailable("no on-demand read".into())) }
    }

    /// Called after a self-test failed, before its verdict is recorded (e.g.
    /// to start afresh with new sessions).
    fn after_failed_self_test<'a>(
        &'a self,
        _health: &'a Health,
    ) -> impl Future<Output = ()> + Send + 'a {
        async {}
    }

    /// What the keys are, for messages ("keyring /etc/kube-kms/keyring.json").
    fn source(&self) -> String;

    /// See [`crate::backend::KeyBackend::rollbacks_refused`].
    fn rollbacks_refused(&self) -> u64 {
        0
    }

    /// See [`crate::backend::KeyBackend::ignored_objects`].
    fn ignored_objects(&self) -> u64 {
        0
    }
}
