//! AWS KMS as a root of trust ([`AwsKmsRoot`], served as [`AwsKmsBackend`]):
//! each KEK version is a KMS key that never
//! leaves KMS; seeds are wrapped with KMS `Encrypt` and unwrapped with
//! `Decrypt`, both bound to the key_id by an encryption context.
//!
//! This module owns the root (Encrypt and Decrypt calls, reading the ring,
//! the refresh policy) and the SDK client set-up ([`connect`]); the serving
//! state is [`KeyRing`]'s. [`ring`] owns the layout of versions in
//! KMS (aliases, key_id scheme, states, `kube-kms key` operations) and
//! [`blob`] the stored ciphertext format.
//!
//! Serving state is one swapped snapshot of the ring (primary key_id and
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
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_kms::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::Client;

use super::ring::{Health, KeyRing, Listing, Root, SelfTest, Snapshot, Version};
use super::BackendError;
use crate::keyring::KeyState;
use crate::secret::SecretBytes;

pub mod admin;
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

/// The versions of `ring` as a [`Listing`]: a version that unwraps has its
/// KMS key ARN (what Encrypt and Decrypt pass as `KeyId`).
fn listing(ring: &AwsRing) -> Listing<String, Vec<(u32, String, KeyState)>> {
    Listing {
        versions: ring
            .versions
            .values()
            .map(|version| Version {
                key_id: Box::from(version.key_id.as_str()),
                state: version.state,
                key: Some(version.arn.clone()),
            })
            .collect(),
        marker: ring
            .versions
            .values()
            .map(|v| (v.id, v.key_id.clone(), v.state))
            .collect(),
    }
}

/// A [`super::KeyBackend`] over AWS KMS. Build with [`AwsKmsBackend::connect`]
/// inside a Tokio runtime (it keeps a handle to run refreshes on).
pub type AwsKmsBackend = KeyRing<AwsKmsRoot>;

/// One ring of KMS keys (an alias prefix) as a [`Root`].
pub struct AwsKmsRoot {
    client: Client,
    config: AwsKmsConfig,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for AwsKmsRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsKmsRoot")
            .field("alias_prefix", &self.config.alias_prefix)
            .finish_non_exhaustive()
    }
}

impl KeyRing<AwsKmsRoot> {
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
        let prefix = config.alias_prefix.clone();
        let root = AwsKmsRoot {
            client,
            config,
            runtime: tokio::runtime::Handle::current(),
        };
        let backend = KeyRing::new(root, listing(&ring)).map_err(|error| {
            AwsKmsError::Ring(RingError::Inconsistent {
                prefix,
                problem: error.to_string(),
            })
        })?;
        super::KeyBackend::self_test(&backend).await;
        Ok(backend)
    }

    /// The alias prefix served.
    pub fn alias_prefix(&self) -> &str {
        &self.root().config.alias_prefix
    }

    /// The longest a self-test may take: an Encrypt and a Decrypt (each
    /// bounded by the call timeout) and a refresh of the ring.
    pub fn self_test_timeout(&self) -> Duration {
        self.root().self_test_timeout()
    }
}

impl AwsKmsRoot {
    fn self_test_timeout(&self) -> Duration {
        self.config.call_timeout.saturating_mul(3)
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
    fn fetch_timeout(&self, known: usize) -> Duration {
        let calls = u32::try_from(known).unwrap_or(u32::MAX).saturating_add(2);
        self.config
            .call_timeout
            .saturating_mul(calls)
            .max(Duration::from_secs(5))
    }

    /// Runs a ring fetch on the runtime and waits for it from this
    /// (blocking) thread: the server calls `reload` on a blocking thread.
    fn fetch_blocking(&self, known: usize) -> Result<AwsRing, BackendError> {
        let (sender, receiver) = std::sync::mpsc::channel();
        let client = self.client.clone();
        let prefix = self.config.alias_prefix.clone();
        self.runtime.spawn(async move {
            let _ = sender.send(ring::fetch(&client, &prefix, false).await);
        });
        match receiver.recv_timeout(self.fetch_timeout(known)) {
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

impl Root for AwsKmsRoot {
    type Key = String;
    type Marker = Vec<(u32, String, KeyState)>;

    fn self_test(&self) -> SelfTest {
        SelfTest::Bounded(self.self_test_timeout())
    }

    fn wrap<'a>(
        &'a self,
        arn: &String,
        key_id: &Arc<str>,
        plaintext: &[u8],
        _health: &'a Health,
    ) -> impl Future<Output = Result<Vec<u8>, BackendError>> + Send + use<'a> {
        let refused = (plaintext.is_empty() || plaintext.len() > blob::MAX_PLAINTEXT_LEN)
            .then(|| {
                BackendError::InvalidInput(format!(
                    "plaintext is {} bytes; AWS KMS wraps 1 to {} bytes (kube-apiserver sends 32-byte seeds)",
                    plaintext.len(),
                    blob::MAX_PLAINTEXT_LEN
                ))
            });
        let key_id = Arc::clone(key_id);
        let mut request = self.client.encrypt().key_id(arn);
        if refused.is_none() {
            request = request.plaintext(Blob::new(plaintext.to_vec()));
        }
        for (name, value) in blob::encryption_context(&key_id) {
            request = request.encryption_context(name, value);
        }
        async move {
            if let Some(refused) = refused {
                return Err(refused);
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
            blob::frame(ciphertext_blob.as_ref()).map_err(|error| {
                BackendError::Unavailable(format!("AWS KMS Encrypt under {key_id}: {error}"))
            })
        }
    }

    fn unwrap<'a>(
        &'a self,
        arn: &String,
        key_id: &str,
        ciphertext: &[u8],
        _health: &'a Health,
    ) -> impl Future<Output = Result<SecretBytes, BackendError>> + Send + use<'a> {
        let key_id = key_id.to_owned();
        let request = blob::unframe(ciphertext).map(|ciphertext_blob| {
            let mut request = self
                .client
                .decrypt()
                .key_id(arn)
                .ciphertext_blob(Blob::new(ciphertext_blob.to_vec()));
            for (name, value) in blob::encryption_context(&key_id) {
                request = request.encryption_context(name, value);
            }
            request
        });
        async move {
            let request = request.map_err(|_| BackendError::DecryptFailed)?;
            let mut output = self
                .bounded("Decrypt", request.send())
                .await?
                .map_err(|error| decrypt_error(&key_id, error))?;
            match output.plaintext.take() {
                Some(plaintext) => Ok(SecretBytes::new(plaintext.into_inner())),
                None => Err(BackendError::Unavailable(
                    "AWS KMS Decrypt answered without Plaintext".into(),
                )),
            }
        }
    }

    fn screen(&self, ciphertext: &[u8]) -> Result<(), BackendError> {
        blob::unframe(ciphertext)
            .map(|_| ())
            .map_err(|_| BackendError::DecryptFailed)
    }

    fn read(
        &self,
        current: &Snapshot<String, Self::Marker>,
        _force: bool,
        _health: &Health,
    ) -> Result<Option<Listing<String, Self::Marker>>, BackendError> {
        Ok(Some(listing(&self.fetch_blocking(current.len())?)))
    }

    fn no_primary(&self, listing: &Listing<String, Self::Marker>) -> BackendError {
        let prefix = &self.config.alias_prefix;
        BackendError::Unavailable(if listing.versions.is_empty() {
            RingError::Empty {
                prefix: prefix.clone(),
            }
            .to_string()
        } else {
            format!(
                "no usable primary under {prefix}: {prefix}/primary is missing or its key is not enabled in KMS"
            )
        })
    }

    fn refresh_interval(&self) -> Option<Duration> {
        Some(self.config.refresh_interval)
    }

    fn may_hold(&self, key_id: &str) -> bool {
        ring::parse_key_id(key_id).is_some()
    }

    async fn read_now(
        &self,
        known: usize,
        _health: &Health,
    ) -> Result<Listing<String, Self::Marker>, BackendError> {
        let limit = self.fetch_timeout(known);
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
        fetched
            .map(|ring| listing(&ring))
            .map_err(|error| BackendError::Unavailable(error.to_string()))
    }

    fn source(&self) -> String {
        format!("AWS KMS keys under {}", self.config.alias_prefix)
    }
}

/// When a version was created or disabled, for listings.
pub fn format_time(time: Option<SystemTime>) -> String {
    time.map_or_else(
        || "-".to_owned(),
        |time| humantime::format_rfc3339_seconds(time).to_string(),
    )
}
