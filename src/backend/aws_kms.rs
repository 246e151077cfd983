//! AWS KMS as a [`KeyBackend`]: each KEK version is a KMS key that never
//! leaves KMS; seeds are wrapped with KMS `Encrypt` and unwrapped with
//! `Decrypt`, both bound to the key_id by an encryption context.
//!
//! This module owns the backend (serving state, self-test, refresh) and the
//! SDK client set-up ([`connect`]). [`ring`] owns the layout of versions in
//! KMS (aliases, key_id scheme, states, `kube-kms key` operations) and
//! [`blob`] the stored ciphertext format.
//!
//! Serving state is one [`ArcSwap`] snapshot of the ring (primary key_id and
//! ARN, key_id → KMS key and state), so Status (no I/O), Encrypt (wraps
//! under the snapshot's primary and returns that same key_id) and Decrypt
//! (selects the KMS key by the request's key_id, passes it as `KeyId`: no
//! trial decryption) all read one consistent view. The snapshot is re-read
//! from KMS at most every `refresh_interval` (the server's reload poll asks
//! every second; a SIGHUP forces it) and, rate-limited, when a Decrypt names
//! a well-formed key_id the snapshot does not know yet (a version another
//! node's `kube-kms key rotate` just made). A refresh that fails leaves the
//! previous snapshot serving and reports the reason to `/readyz`.
//!
//! Health: the periodic self-test wraps and unwraps a random canary through
//! KMS; Status serves its verdict, so kube-apiserver sees `healthz` turn to
//! the reason when KMS is unreachable and back to `ok` when it returns.
//!
//! Credentials come only from the AWS SDK's default chain (environment,
//! shared profile, web identity, ECS/EKS container credentials, EC2 instance
//! metadata). Plaintext seeds pass through the SDK's request and response
//! buffers, which kube-kms cannot zeroize; what kube-kms holds is in
//! [`SecretBytes`].
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use aws_sdk_kms::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::Client;

use super::{BackendError, KeyBackend, KeyStatus, ReloadOutcome, VersionCounts, Wrapped};
use crate::keyring::KeyState;
use crate::secret::SecretBytes;

pub mod blob;
pub mod ring;

pub use ring::{AwsRing, AwsVersion, RingError, DEFAULT_ALIAS_PREFIX};

pub use super::HEALTHY;

/// How to reach KMS and which ring to serve.
#[derive(Clone, Debug)]
pub struct AwsKmsConfig {
    /// Alias prefix of the ring (`alias/kube-kms` unless set).
    pub alias_prefix: String,
    /// Region; `None`: the SDK's chain (`AWS_REGION`, profile, IMDS).
    pub region: Option<String>,
    /// Endpoint URL instead of the region's (a VPC endpoint, a test server).
    pub endpoint_url: Option<String>,
    /// Upper bound of one KMS call, retries included.
    pub call_timeout: Duration,
    /// How old the ring snapshot may get before a reload poll re-reads it.
    pub refresh_interval: Duration,
}

impl Default for AwsKmsConfig {
    fn default() -> Self {
        Self {
            alias_prefix: DEFAULT_ALIAS_PREFIX.to_owned(),
            region: None,
            endpoint_url: None,
            call_timeout: Duration::from_secs(2),
            refresh_interval: Duration::from_secs(30),
        }
    }
}

/// Why the backend could not start.
#[derive(Debug, thiserror::Error)]
pub enum AwsKmsError {
    /// No region from the flag nor from the SDK's chain.
    #[error("no AWS region: give --aws-region or set AWS_REGION (or a region in the AWS profile)")]
    NoRegion,
    /// Reading the ring failed.
    #[error(transparent)]
    Ring(#[from] RingError),
}

/// Builds a KMS client: rustls (ring) HTTPS client, region and endpoint from
/// `config` or the SDK's chain, credentials from the SDK's default chain,
/// `call_timeout` as the operation timeout with at most 2 attempts.
pub async fn connect(config: &AwsKmsConfig) -> Result<Client, AwsKmsError> {
    use aws_config::retry::RetryConfig;
    use aws_config::timeout::TimeoutConfig;
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};

    let http_client = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let attempt = config
        .call_timeout
        .mul_f64(0.6)
        .max(Duration::from_millis(100));
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http_client)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(attempt.min(Duration::from_secs(1)))
                .operation_attempt_timeout(attempt)
                .operation_timeout(config.call_timeout)
                .build(),
        )
        .retry_config(RetryConfig::standard().with_max_attempts(2));
    if let Some(region) = &config.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(url) = &config.endpoint_url {
        loader = loader.endpoint_url(url.clone());
    }
    let shared = loader.load().await;
    if shared.region().is_none() {
        return Err(AwsKmsError::NoRegion);
    }
    Ok(Client::new(&shared))
}

/// A version as the server needs it.
struct Served {
    arn: String,
    usable: bool,
}

/// One consistent view of the ring.
struct Snapshot {
    primary_key_id: Arc<str>,
    primary_arn: String,
    keys: HashMap<Box<str>, Served>,
    /// States by version, to tell whether a refresh changed anything.
    fingerprint: Vec<(u32, String, KeyState)>,
    counts: VersionCounts,
}

impl Snapshot {
    fn from_ring(ring: &AwsRing) -> Result<Self, BackendError> {
        let primary = ring.primary().ok_or_else(|| {
            BackendError::Unavailable(if ring.versions.is_empty() {
                RingError::Empty {
                    prefix: ring.prefix.clone(),
                }
                .to_string()
            } else {
                format!(
                    "no usable primary under {}: {}/primary is missing or its key is not enabled in KMS",
                    ring.prefix, ring.prefix
                )
            })
        })?;
        let mut counts = VersionCounts::default();
        let mut keys = HashMap::with_capacity(ring.versions.len());
        for version in ring.versions.values() {
            let counter = match version.state {
                KeyState::Primary => &mut counts.primary,
                KeyState::Enabled => &mut counts.enabled,
                KeyState::Disabled => &mut counts.disabled,
                KeyState::Destroyed => &mut counts.destroyed,
            };
            *counter += 1;
            keys.insert(
                Box::from(version.key_id.as_str()),
                Served {
                    arn: version.arn.clone(),
                    usable: version.state.can_unwrap(),
                },
            );
        }
        Ok(Self {
            primary_key_id: Arc::from(primary.key_id.as_str()),
            primary_arn: primary.arn.clone(),
            keys,
            fingerprint: ring
                .versions
                .values()
                .map(|v| (v.id, v.key_id.clone(), v.state))
                .collect(),
            counts,
        })
    }
}

/// The outcome of the last refresh attempt, for rate limiting.
struct RefreshAttempt {
    at: Instant,
    error: Option<String>,
}

/// A [`KeyBackend`] over AWS KMS. Build with [`AwsKmsBackend::connect`]
/// inside a Tokio runtime (it keeps a handle to run refreshes on).
pub struct AwsKmsBackend {
    client: Client,
    config: AwsKmsConfig,
    snapshot: ArcSwap<Snapshot>,
    healthz: ArcSwap<Arc<str>>,
    runtime: tokio::runtime::Handle,
    /// Serializes reloads and remembers the last attempt.
    last_refresh: Mutex<RefreshAttempt>,
    /// Coalesces the refreshes triggered by unknown key_ids.
    on_demand: tokio::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for AwsKmsBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsKmsBackend")
            .field("alias_prefix", &self.config.alias_prefix)
            .field("primary_key_id", &self.snapshot.load().primary_key_id)
            .finish_non_exhaustive()
    }
}

/// Least time between two refreshes triggered by unknown key_ids.
const ON_DEMAND_SPACING: Duration = Duration::from_secs(2);

impl AwsKmsBackend {
    /// Connects, reads the ring (it must have a usable primary) and runs a
    /// first self-test. Must run inside a Tokio runtime.
    pub async fn connect(config: AwsKmsConfig) -> Result<Self, AwsKmsError> {
        ring::validate_prefix(&config.alias_prefix)?;
        let client = connect(&config).await?;
        Self::with_client(client, config).await
    }

    /// As [`AwsKmsBackend::connect`], with a client built elsewhere.
    pub async fn with_client(client: Client, config: AwsKmsConfig) -> Result<Self, AwsKmsError> {
        let ring = ring::fetch(&client, &config.alias_prefix, false).await?;
        let snapshot = Snapshot::from_ring(&ring).map_err(|error| {
            AwsKmsError::Ring(RingError::Inconsistent {
                prefix: config.alias_prefix.clone(),
                problem: error.to_string(),
            })
        })?;
        let backend = Self {
            client,
            snapshot: ArcSwap::from_pointee(snapshot),
            healthz: ArcSwap::from_pointee(Arc::from("self-test: not run yet")),
            runtime: tokio::runtime::Handle::current(),
            last_refresh: Mutex::new(RefreshAttempt {
                at: Instant::now(),
                error: None,
            }),
            on_demand: tokio::sync::Mutex::new(None),
            config,
        };
        backend.run_self_test().await;
        Ok(backend)
    }

    /// The alias prefix served.
    pub fn alias_prefix(&self) -> &str {
        &self.config.alias_prefix
    }

    async fn encrypt(
        &self,
        snapshot: &Snapshot,
        plaintext: &[u8],
    ) -> Result<Wrapped, BackendError> {
        if plaintext.is_empty() || plaintext.len() > blob::MAX_PLAINTEXT_LEN {
            return Err(BackendError::InvalidInput(format!(
                "plaintext is {} bytes; AWS KMS wraps 1 to {} bytes (kube-apiserver sends 32-byte seeds)",
                plaintext.len(),
                blob::MAX_PLAINTEXT_LEN
            )));
        }
        let key_id = Arc::clone(&snapshot.primary_key_id);
        let mut request = self
            .client
            .encrypt()
            .key_id(&snapshot.primary_arn)
            .plaintext(Blob::new(plaintext.to_vec()));
        for (name, value) in blob::encryption_context(&key_id) {
            request = request.encryption_context(name, value);
        }
        let output = self
            .bounded("Encrypt", request.send())
            .await?
            .map_err(|error| {
                BackendError::Unavailable(format!(
                    "AWS KMS Encrypt under {key_id} failed: {}",
                    DisplayErrorContext(&error)
                ))
            })?;
        let ciphertext_blob = output.ciphertext_blob().ok_or_else(|| {
            BackendError::Unavailable("AWS KMS Encrypt answered without CiphertextBlob".into())
        })?;
        let ciphertext = blob::frame(ciphertext_blob.as_ref()).map_err(|error| {
            BackendError::Unavailable(format!("AWS KMS Encrypt under {key_id}: {error}"))
        })?;
        Ok(Wrapped {
            ciphertext,
            key_id,
            annotations: BTreeMap::new(),
        })
    }

    async fn decrypt(&self, key_id: &str, ciphertext: &[u8]) -> Result<SecretBytes, BackendError> {
        let ciphertext_blob = blob::unframe(ciphertext).map_err(|_| BackendError::DecryptFailed)?;
        let arn = match self.lookup(key_id) {
            Some(found) => found?,
            None => {
                self.refresh_for_unknown(key_id).await;
                self.lookup(key_id).ok_or(BackendError::UnknownKeyId)??
            }
        };
        let mut request = self
            .client
            .decrypt()
            .key_id(&arn)
            .ciphertext_blob(Blob::new(ciphertext_blob.to_vec()));
        for (name, value) in blob::encryption_context(key_id) {
            request = request.encryption_context(name, value);
        }
        let mut output = self
            .bounded("Decrypt", request.send())
            .await?
            .map_err(|error| decrypt_error(key_id, error))?;
        match output.plaintext.take() {
            Some(plaintext) => Ok(SecretBytes::new(plaintext.into_inner())),
            None => Err(BackendError::Unavailable(
                "AWS KMS Decrypt answered without Plaintext".into(),
            )),
        }
    }

    /// The ARN for `key_id`: `None` if unknown, `Some(Err)` if not usable.
    fn lookup(&self, key_id: &str) -> Option<Result<String, BackendError>> {
        let snapshot = self.snapshot.load();
        snapshot.keys.get(key_id).map(|served| {
            if served.usable {
                Ok(served.arn.clone())
            } else {
                Err(BackendError::KeyDisabled)
            }
        })
    }

    /// Re-reads the ring when a well-formed key_id of this scheme is not in
    /// the snapshot (at most once per [`ON_DEMAND_SPACING`]).
    async fn refresh_for_unknown(&self, key_id: &str) {
        if ring::parse_key_id(key_id).is_none() {
            return;
        }
        let mut last = self.on_demand.lock().await;
        let recent = last.is_some_and(|at| at.elapsed() < ON_DEMAND_SPACING);
        if recent || self.snapshot.load().keys.contains_key(key_id) {
            return;
        }
        *last = Some(Instant::now());
        let limit = self.fetch_timeout();
        let fetched = tokio::time::timeout(
            limit,
            ring::fetch(&self.client, &self.config.alias_prefix, false),
        )
        .await
        .unwrap_or_else(|_| {
            Err(RingError::Kms {
                operation: "ListAliases/DescribeKey",
                code: None,
                detail: format!("no answer within {limit:?}"),
            })
        });
        match fetched {
            Ok(ring) => match Snapshot::from_ring(&ring) {
                Ok(fresh) => {
                    if fresh.keys.contains_key(key_id) {
                        tracing::info!(key_id, "learned a new key version from AWS KMS");
                    }
                    self.snapshot.store(Arc::new(fresh));
                }
                Err(error) => {
                    tracing::warn!(error = %error, "AWS KMS ring refresh for an unknown key_id: keeping the previous keys")
                }
            },
            Err(error) => {
                tracing::warn!(error = %error, "AWS KMS ring refresh for an unknown key_id failed")
            }
        }
    }

    /// Awaits one KMS call for at most the call timeout (the SDK enforces
    /// it too; this also covers what happens outside its operation timer).
    async fn bounded<T>(
        &self,
        operation: &str,
        call: impl Future<Output = T>,
    ) -> Result<T, BackendError> {
        let limit = self.config.call_timeout + Duration::from_millis(250);
        tokio::time::timeout(limit, call).await.map_err(|_| {
            BackendError::Unavailable(format!("AWS KMS {operation}: no answer within {limit:?}"))
        })
    }

    /// The longest a ring fetch may take: ListAliases plus one DescribeKey
    /// per known version, each bounded by the call timeout.
    fn fetch_timeout(&self) -> Duration {
        let calls = u32::try_from(self.snapshot.load().fingerprint.len())
            .unwrap_or(u32::MAX)
            .saturating_add(2);
        self.config
            .call_timeout
            .saturating_mul(calls)
            .max(Duration::from_secs(5))
    }

    /// The longest a self-test may take: an Encrypt and a Decrypt (each
    /// bounded by the call timeout) and a refresh of the ring.
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
        let result = self.fetch_blocking();
        let outcome = result.and_then(|ring| {
            let fresh = Snapshot::from_ring(&ring)?;
            let current = self.snapshot.load();
            if !force && fresh.fingerprint == current.fingerprint {
                self.snapshot.store(Arc::new(fresh));
                return Ok(ReloadOutcome::Unchanged);
            }
            let primary_key_id = Arc::clone(&fresh.primary_key_id);
            self.snapshot.store(Arc::new(fresh));
            Ok(ReloadOutcome::Reloaded { primary_key_id })
        });
        last.error = outcome.as_ref().err().map(ToString::to_string);
        outcome
    }

    /// Runs a ring fetch on the runtime and waits for it from this
    /// (blocking) thread: the server calls `reload` on a blocking thread.
    fn fetch_blocking(&self) -> Result<AwsRing, BackendError> {
        let (sender, receiver) = std::sync::mpsc::channel();
        let client = self.client.clone();
        let prefix = self.config.alias_prefix.clone();
        self.runtime.spawn(async move {
            let _ = sender.send(ring::fetch(&client, &prefix, false).await);
        });
        match receiver.recv_timeout(self.fetch_timeout()) {
            Ok(Ok(ring)) => Ok(ring),
            Ok(Err(error)) => Err(BackendError::Unavailable(format!(
                "reading the kube-kms keys under {} failed: {error}",
                self.config.alias_prefix
            ))),
            Err(_) => Err(BackendError::Unavailable(format!(
                "reading the kube-kms keys under {} timed out",
                self.config.alias_prefix
            ))),
        }
    }
}

/// Maps a failed Decrypt to the coarse backend error.
fn decrypt_error<E, R>(key_id: &str, error: SdkError<E, R>) -> BackendError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match error.as_service_error().and_then(|e| e.code()) {
        Some("InvalidCiphertextException" | "IncorrectKeyException") => BackendError::DecryptFailed,
        Some("DisabledException" | "KMSInvalidStateException" | "NotFoundException") => {
            BackendError::KeyDisabled
        }
        _ => BackendError::Unavailable(format!(
            "AWS KMS Decrypt under {key_id} failed: {}",
            DisplayErrorContext(&error)
        )),
    }
}

impl KeyBackend for AwsKmsBackend {
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

/// When a version was created or disabled, for listings.
pub fn format_time(time: Option<SystemTime>) -> String {
    time.map_or_else(
        || "-".to_owned(),
        |time| humantime::format_rfc3339_seconds(time).to_string(),
    )
}
