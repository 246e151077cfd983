//! Vault's (or OpenBao's) Transit engine as a root of trust ([`VaultRoot`],
//! served as [`VaultBackend`]): each KEK
//! version is a version of one Transit key that never leaves Vault; seeds
//! are wrapped with `transit/encrypt` and unwrapped with `transit/decrypt`,
//! the version named and the key_id bound as associated data.
//!
//! This module owns the root (encrypt and decrypt calls, reading the key,
//! the refresh policy, the token upkeep task); the serving state is
//! [`KeyRing`]'s. [`http`] owns the HTTP client (one pooled keep-alive
//! client, TLS, deadlines, retries), [`auth`] the token (token file,
//! AppRole, TLS certificate login, renewal, re-login after a 403) and
//! [`transit`] the key_id scheme, the stored form, the version states and
//! the `kube-kms key` operations.
//!
//! Serving state is one swapped snapshot of the key's versions (primary
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
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::ring::{Health, KeyRing, Listing, Root, SelfTest, Snapshot, Version};
use super::BackendError;
use crate::secret::SecretBytes;

pub mod admin;
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

/// The versions of `key` as a [`Listing`]: a version that unwraps has its
/// number (what Transit's encrypt and decrypt name).
fn listing(key: &TransitKey) -> Listing<u32, (u32, u32, u32)> {
    Listing {
        versions: key
            .versions
            .values()
            .map(|version| Version {
                key_id: Box::from(version.key_id.as_str()),
                state: version.state,
                key: Some(version.id),
            })
            .collect(),
        // (latest, min_decryption, min_available): what a refresh compares.
        marker: (key.latest, key.min_decryption, key.min_available),
    }
}

/// A [`super::KeyBackend`] over a Vault Transit key. Build with
/// [`VaultBackend::connect`] inside a Tokio runtime (it keeps a handle to
/// run refreshes on, and a task that renews the token).
pub type VaultBackend = KeyRing<VaultRoot>;

/// One Transit key as a [`Root`].
pub struct VaultRoot {
    transit: Arc<Transit>,
    config: VaultConfig,
    runtime: tokio::runtime::Handle,
    upkeep: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for VaultRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultRoot")
            .field("transit", &self.transit)
            .finish_non_exhaustive()
    }
}

impl Drop for VaultRoot {
    fn drop(&mut self) {
        self.upkeep.abort();
    }
}

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

impl KeyRing<VaultRoot> {
    /// Logs in, reads the key (it must be an AEAD key with a version) and
    /// runs a first self-test. Must run inside a Tokio runtime.
    pub async fn connect(config: VaultConfig) -> Result<Self, VaultError> {
        let transit = connect(&config).await?;
        let key = transit.read_key().await?;
        let upkeep = spawn_upkeep(Arc::downgrade(transit.auth()));
        tracing::info!(
            address = %config.address,
            key = %transit.path(),
            auth = config.auth.kind(),
            key_type = %key.key_type,
            "serving a Vault Transit key"
        );
        let root = VaultRoot {
            transit: Arc::new(transit),
            config,
            runtime: tokio::runtime::Handle::current(),
            upkeep,
        };
        let backend = KeyRing::new(root, listing(&key)).map_err(|error| {
            VaultError::from(TransitError::BadAnswer {
                path: key.path(),
                detail: error.to_string(),
            })
        })?;
        super::KeyBackend::self_test(&backend).await;
        Ok(backend)
    }

    /// The longest a self-test may take: an encrypt and a decrypt, each
    /// bounded by the call timeout, plus a new login after a 403.
    pub fn self_test_timeout(&self) -> Duration {
        self.root().self_test_timeout()
    }
}

impl VaultRoot {
    fn self_test_timeout(&self) -> Duration {
        self.config.call_timeout.saturating_mul(3)
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

impl Root for VaultRoot {
    type Key = u32;
    type Marker = (u32, u32, u32);

    fn self_test(&self) -> SelfTest {
        SelfTest::Bounded(self.self_test_timeout())
    }

    fn wrap<'a>(
        &'a self,
        version: &u32,
        key_id: &Arc<str>,
        plaintext: &[u8],
        _health: &'a Health,
    ) -> impl Future<Output = Result<Vec<u8>, BackendError>> + Send + use<'a> {
        let refused = (plaintext.is_empty() || plaintext.len() > transit::MAX_PLAINTEXT_LEN)
            .then(|| {
                BackendError::InvalidInput(format!(
                    "plaintext is {} bytes; the Vault backend wraps 1 to {} bytes (kube-apiserver sends 32-byte seeds)",
                    plaintext.len(),
                    transit::MAX_PLAINTEXT_LEN
                ))
            });
        let seed = SecretBytes::copy_from(if refused.is_none() { plaintext } else { &[] });
        let (version, key_id) = (*version, Arc::clone(key_id));
        async move {
            if let Some(refused) = refused {
                return Err(refused);
            }
            self.transit
                .encrypt(version, seed.expose_secret())
                .await
                .map_err(|error| {
                    BackendError::Unavailable(format!(
                        "Vault encrypt under {key_id} failed: {error}"
                    ))
                })
        }
    }

    fn unwrap<'a>(
        &'a self,
        version: &u32,
        key_id: &str,
        ciphertext: &[u8],
        _health: &'a Health,
    ) -> impl Future<Output = Result<SecretBytes, BackendError>> + Send + use<'a> {
        let (version, key_id, ciphertext) = (*version, key_id.to_owned(), ciphertext.to_vec());
        async move {
            self.transit
                .decrypt(version, &key_id, &ciphertext)
                .await
                .map_err(|failure| match failure {
                    transit::DecryptFailure::Authentication => BackendError::DecryptFailed,
                    transit::DecryptFailure::Disabled => BackendError::KeyDisabled,
                    transit::DecryptFailure::Other(error) => BackendError::Unavailable(format!(
                        "Vault decrypt under {key_id} failed: {error}"
                    )),
                })
        }
    }

    fn read(
        &self,
        _current: &Snapshot<u32, Self::Marker>,
        _force: bool,
        _health: &Health,
    ) -> Result<Option<Listing<u32, Self::Marker>>, BackendError> {
        Ok(Some(listing(&self.fetch_blocking()?)))
    }

    fn no_primary(&self, _listing: &Listing<u32, Self::Marker>) -> BackendError {
        BackendError::Unavailable(format!(
            "Transit key {} has no primary",
            self.transit.path()
        ))
    }

    fn refresh_interval(&self) -> Option<Duration> {
        Some(self.config.refresh_interval)
    }

    /// A key_id of this Transit key (a version newer than the snapshot's:
    /// another node saw a Transit `rotate` first).
    fn may_hold(&self, key_id: &str) -> bool {
        transit::parse_key_id(key_id).is_some_and(|(_, mount, key)| {
            mount == self.transit.mount() && key == self.transit.key()
        })
    }

    async fn read_now(
        &self,
        _known: usize,
        _health: &Health,
    ) -> Result<Listing<u32, Self::Marker>, BackendError> {
        self.transit
            .read_key()
            .await
            .map(|key| listing(&key))
            .map_err(|error| BackendError::Unavailable(error.to_string()))
    }

    fn source(&self) -> String {
        format!("Transit key {}", self.transit.path())
    }
}
