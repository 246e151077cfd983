//! Vault's (or OpenBao's) Transit engine as a [`KeyBackend`]: each KEK
//! version is a version of one Transit key that never leaves Vault; seeds
//! are wrapped with `transit/encrypt` and unwrapped with `transit/decrypt`,
//! the version named and the key_id bound as associated data.
//!
//! This module owns the backend (serving state, self-test, refresh, the
//! token upkeep task). [`http`] owns the HTTP client (one pooled keep-alive
//! client, TLS, deadlines, retries), [`auth`] the token (token file,
//! AppRole, TLS certificate login, renewal, re-login after a 403) and
//! [`transit`] the key_id scheme, the stored form, the version states and
//! the `kube-kms key` operations.
//!
//! Serving state is one [`ArcSwap`] snapshot of the key's versions (primary
//! version and key_id, the state of every version), so Status (no I/O),
//! Encrypt (wraps under the snapshot's primary and returns that same
//! key_id) and Decrypt (selects the version by the request's key_id: no
//! trial decryption) read one consistent view. The snapshot is re-read from
//! Vault at most every `refresh_interval` (the server's reload poll asks
//! every second; a SIGHUP forces it) and, rate-limited, when a Decrypt names
//! a version newer than the snapshot knows (another node saw a Transit
//! `rotate` first). A refresh that fails leaves the previous snapshot
//! serving and reports the reason to `/readyz`.
//!
//! Health: the periodic self-test wraps and unwraps a random canary through
//! Transit; Status serves its verdict, so kube-apiserver sees `healthz` turn
//! to the reason when Vault is away and back to `ok` when it returns, while
//! it keeps serving from its cached seeds.
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::{BackendError, KeyBackend, KeyStatus, ReloadOutcome, VersionCounts, Wrapped};
use crate::keyring::KeyState;
use crate::secret::SecretBytes;

pub mod auth;
pub mod http;
pub mod transit;

pub use auth::{AuthError, AuthMethod};
pub use http::{HttpError, TlsError, TlsOptions, VaultHttp};
pub use transit::{Transit, TransitError, TransitKey, VaultVersion, DEFAULT_MOUNT};

/// How to reach Vault, how to log in, and which key to serve.
#[derive(Clone, Debug)]
pub struct VaultConfig {
    /// `https://vault.example:8200`.
    pub address: String,
    /// Vault Enterprise / OpenBao namespace, if any.
    pub namespace: Option<String>,
    /// The Transit mount (default `transit`).
    pub mount: String,
    /// The Transit key's name.
    pub key: String,
    /// CA and client certificate.
    pub tls: TlsOptions,
    /// How to get a token.
    pub auth: AuthMethod,
    /// Upper bound of one Vault call, retries included.
    pub call_timeout: Duration,
    /// How old the key snapshot may get before a reload poll re-reads it.
    pub refresh_interval: Duration,
}

/// The default call timeout.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// The default refresh interval.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// Why the backend (or a `kube-kms key` session) could not start.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The HTTP client could not be set up.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// No token.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The key is missing, unusable, or Vault failed.
    #[error(transparent)]
    Transit(#[from] TransitError),
}

/// Builds the HTTP client, gets a token and returns Transit calls on the
/// configured key (no key read yet). Must run inside a Tokio runtime.
pub async fn connect(config: &VaultConfig) -> Result<Transit, VaultError> {
    transit::validate_mount(&config.mount)?;
    transit::validate_key(&config.key)?;
    let connect_timeout = config.call_timeout.min(Duration::from_secs(1));
    let http = VaultHttp::new(
        &config.address,
        config.namespace.as_deref(),
        &config.tls,
        connect_timeout,
    )?;
    let auth = auth::Auth::start(config.auth.clone(), http.clone(), config.call_timeout).await?;
    Ok(Transit::new(
        http,
        Arc::new(auth),
        &config.mount,
        &config.key,
        config.call_timeout,
    )?)
}

/// One consistent view of the key.
struct Snapshot {
    primary_version: u32,
    primary_key_id: Arc<str>,
    states: HashMap<u32, KeyState>,
    /// (latest, min_decryption, min_available): what a refresh compares.
    fingerprint: (u32, u32, u32),
    counts: VersionCounts,
}

impl Snapshot {
    fn from_key(key: &TransitKey) -> Result<Self, BackendError> {
        let primary = key.primary().ok_or_else(|| {
            BackendError::Unavailable(format!("Transit key {} has no primary", key.path()))
        })?;
        let mut counts = VersionCounts::default();
        let mut states = HashMap::with_capacity(key.versions.len());
        for version in key.versions.values() {
            let counter = match version.state {
                KeyState::Primary => &mut counts.primary,
                KeyState::Enabled => &mut counts.enabled,
                KeyState::Disabled => &mut counts.disabled,
                KeyState::Destroyed => &mut counts.destroyed,
            };
            *counter += 1;
            states.insert(version.id, version.state);
        }
        Ok(Self {
            primary_version: primary.id,
            primary_key_id: Arc::from(primary.key_id.as_str()),
            states,
            fingerprint: (key.latest, key.min_decryption, key.min_available),
            counts,
        })
    }
}

/// The outcome of the last refresh attempt, for rate limiting.
struct RefreshAttempt {
    at: Instant,
    error: Option<String>,
}

/// A [`KeyBackend`] over a Vault Transit key. Build with
/// [`VaultBackend::connect`] inside a Tokio runtime (it keeps a handle to
/// run refreshes on, and a task that renews the token).
pub struct VaultBackend {
    transit: Arc<Transit>,
    config: VaultConfig,
    snapshot: ArcSwap<Snapshot>,
    healthz: ArcSwap<Arc<str>>,
    runtime: tokio::runtime::Handle,
    /// Serializes reloads and remembers the last attempt.
    last_refresh: Mutex<RefreshAttempt>,
    /// Coalesces the refreshes triggered by unknown versions.
    on_demand: tokio::sync::Mutex<Option<Instant>>,
    upkeep: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for VaultBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultBackend")
            .field("transit", &self.transit)
            .field("primary_key_id", &self.snapshot.load().primary_key_id)
            .finish_non_exhaustive()
    }
}

impl Drop for VaultBackend {
    fn drop(&mut self) {
        self.upkeep.abort();
    }
}

/// Least time between two refreshes triggered by unknown versions.
const ON_DEMAND_SPACING: Duration = Duration::from_secs(2);

/// Renews the token (or logs in again) for as long as the backend lives.
fn spawn_upkeep(auth: Weak<auth::Auth>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Some(auth) = auth.upgrade() else { return };
            let pause = auth.maintain().await;
            drop(auth);
            tokio::time::sleep(pause).await;
        }
    })
}

impl VaultBackend {
    /// Logs in, reads the key (it must be an AEAD key with a version) and
    /// runs a first self-test. Must run inside a Tokio runtime.
    pub async fn connect(config: VaultConfig) -> Result<Self, VaultError> {
        let transit = connect(&config).await?;
        let key = transit.read_key().await?;
        let snapshot = Snapshot::from_key(&key).map_err(|error| TransitError::BadAnswer {
            path: key.path(),
            detail: error.to_string(),
        })?;
        let upkeep = spawn_upkeep(Arc::downgrade(transit.auth()));
        tracing::info!(
            address = %config.address,
            key = %transit.path(),
            auth = config.auth.kind(),
            key_type = %key.key_type,
            "serving a Vault Transit key"
        );
        let backend = Self {
            transit: Arc::new(transit),
            snapshot: ArcSwap::from_pointee(snapshot),
            healthz: ArcSwap::from_pointee(Arc::from("self-test: not run yet")),
            runtime: tokio::runtime::Handle::current(),
            last_refresh: Mutex::new(RefreshAttempt {
                at: Instant::now(),
                error: None,
            }),
            on_demand: tokio::sync::Mutex::new(None),
            upkeep,
            config,
        };
        backend.run_self_test().await;
        Ok(backend)
    }

    async fn encrypt(
        &self,
        snapshot: &Snapshot,
        plaintext: &[u8],
    ) -> Result<Wrapped, BackendError> {
        if plaintext.is_empty() || plaintext.len() > transit::MAX_PLAINTEXT_LEN {
            return Err(BackendError::InvalidInput(format!(
                "plaintext is {} bytes; the Vault backend wraps 1 to {} bytes (kube-apiserver sends 32-byte seeds)",
                plaintext.len(),
                transit::MAX_PLAINTEXT_LEN
            )));
        }
        let key_id = Arc::clone(&snapshot.primary_key_id);
        let ciphertext = self
            .transit
            .encrypt(snapshot.primary_version, plaintext)
            .await
            .map_err(|error| {
                BackendError::Unavailable(format!("Vault encrypt under {key_id} failed: {error}"))
            })?;
        Ok(Wrapped {
            ciphertext,
            key_id,
            annotations: BTreeMap::new(),
        })
    }

    async fn decrypt(&self, key_id: &str, ciphertext: &[u8]) -> Result<SecretBytes, BackendError> {
        let Some((version, mount, key)) = transit::parse_key_id(key_id) else {
            return Err(BackendError::UnknownKeyId);
        };
        if mount != self.transit.mount() || key != self.transit.key() {
            return Err(BackendError::UnknownKeyId);
        }
        let state = match self.state_of(version) {
            Some(state) => state,
            None => {
                self.refresh_for_unknown(version).await;
                self.state_of(version).ok_or(BackendError::UnknownKeyId)?
            }
        };
        if !state.can_unwrap() {
            return Err(BackendError::KeyDisabled);
        }
        self.transit
            .decrypt(version, key_id, ciphertext)
            .await
            .map_err(|failure| match failure {
                transit::DecryptFailure::Authentication => BackendError::DecryptFailed,
                transit::DecryptFailure::Disabled => BackendError::KeyDisabled,
                transit::DecryptFailure::Other(error) => BackendError::Unavailable(format!(
                    "Vault decrypt under {key_id} failed: {error}"
                )),
            })
    }

    fn state_of(&self, version: u32) -> Option<KeyState> {
        self.snapshot.load().states.get(&version).copied()
    }

    /// Re-reads the key when a version newer than the snapshot's is asked
    /// for (at most once per [`ON_DEMAND_SPACING`]).
    async fn refresh_for_unknown(&self, version: u32) {
        let mut last = self.on_demand.lock().await;
        let recent = last.is_some_and(|at| at.elapsed() < ON_DEMAND_SPACING);
        if recent || self.state_of(version).is_some() {
            return;
        }
        *last = Some(Instant::now());
        match self.transit.read_key().await {
            Ok(key) => match Snapshot::from_key(&key) {
                Ok(fresh) => {
                    if fresh.states.contains_key(&version) {
                        tracing::info!(version, "learned a new key version from Vault");
                    }
                    self.snapshot.store(Arc::new(fresh));
                }
                Err(error) => {
                    tracing::warn!(%error, "Vault key refresh for an unknown version: keeping the previous versions")
                }
            },
            Err(error) => {
                tracing::warn!(%error, "Vault key refresh for an unknown version failed")
            }
        }
    }

    /// The longest a self-test may take: an encrypt and a decrypt, each
    /// bounded by the call timeout, plus a new login after a 403.
    pub fn self_test_timeout(&self) -> Duration {
        self.config.call_timeout.saturating_mul(3)
    }

    async fn run_self_test(&self) {
        let verdict = super::self_test_round_trip(self, self.self_test_timeout()).await;
        self.healthz.store(Arc::new(super::health_text(verdict)));
    }

    fn reload_now(&self, force: bool) -> Result<ReloadOutcome, BackendError> {
        let mut last = self
            .last_refresh
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !force && last.at.elapsed() < self.config.refresh_interval {
            return match &last.error {
                Some(error) => Err(BackendError::Unavailable(error.clone())),
                None => Ok(ReloadOutcome::Unchanged),
            };
        }
        last.at = Instant::now();
        let outcome = self.fetch_blocking().and_then(|key| {
            let fresh = Snapshot::from_key(&key)?;
            let current = self.snapshot.load();
            if !force && fresh.fingerprint == current.fingerprint {
                return Ok(ReloadOutcome::Unchanged);
            }
            let primary_key_id = Arc::clone(&fresh.primary_key_id);
            self.snapshot.store(Arc::new(fresh));
            Ok(ReloadOutcome::Reloaded { primary_key_id })
        });
        last.error = outcome.as_ref().err().map(ToString::to_string);
        outcome
    }

    /// Reads the key on the runtime and waits for it from this (blocking)
    /// thread: the server calls `reload` on a blocking thread.
    fn fetch_blocking(&self) -> Result<TransitKey, BackendError> {
        let (sender, receiver) = std::sync::mpsc::channel();
        let transit = Arc::clone(&self.transit);
        self.runtime.spawn(async move {
            let _ = sender.send(transit.read_key().await);
        });
        let limit = self.config.call_timeout.saturating_mul(2) + Duration::from_millis(250);
        match receiver.recv_timeout(limit) {
            Ok(Ok(key)) => Ok(key),
            Ok(Err(error)) => Err(BackendError::Unavailable(format!(
                "reading the Transit key {} failed: {error}",
                self.transit.path()
            ))),
            Err(_) => Err(BackendError::Unavailable(format!(
                "reading the Transit key {} timed out",
                self.transit.path()
            ))),
        }
    }
}

impl KeyBackend for VaultBackend {
    fn status(&self) -> KeyStatus {
        KeyStatus {
            key_id: Arc::clone(&self.snapshot.load().primary_key_id),
            healthz: Arc::clone(&self.healthz.load()),
        }
    }

    fn wrap(&self, plaintext: &[u8]) -> impl Future<Output = Result<Wrapped, BackendError>> + Send {
        let snapshot = self.snapshot.load_full();
        async move { self.encrypt(&snapshot, plaintext).await }
    }

    fn unwrap(
        &self,
        key_id: &str,
        ciphertext: &[u8],
        _annotations: &BTreeMap<String, Vec<u8>>,
    ) -> impl Future<Output = Result<SecretBytes, BackendError>> + Send {
        self.decrypt(key_id, ciphertext)
    }

    fn self_test(&self) -> impl Future<Output = ()> + Send {
        self.run_self_test()
    }

    fn reload(&self, force: bool) -> Result<ReloadOutcome, BackendError> {
        self.reload_now(force)
    }

    fn version_counts(&self) -> VersionCounts {
        self.snapshot.load().counts
    }
}
