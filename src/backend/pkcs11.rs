//! A PKCS#11 token (an HSM, or SoftHSM2 for a trial) as a root of trust
//! ([`Pkcs11Root`], served as [`Pkcs11Backend`]):
//! the KEKs are AES-256 keys generated inside the token that never leave it;
//! the token itself wraps and unwraps the DEK seeds with CKM_AES_GCM.
//!
//! - [`store`] owns the token objects (keys and their state records), the
//!   key_id scheme and the `kube-kms key` operations on a token.
//! - `token` owns the module, the PIN and the pool of logged-in sessions;
//!   `lock` the token-wide lock of the key commands; [`admin`] the
//!   `kube-kms key` operations ([`admin::Pkcs11Admin`]).
//!
//! Wrapped seed (what Encrypt returns, 62 bytes for a 32-byte seed):
//! `0x70 ('p') | 0x01 (format 1) | IV (12 random bytes from the OS) | GCM
//! ciphertext | tag (16)`, the AAD being `kube-kms/pkcs11/v1`, a zero byte
//! and the key_id, so a ciphertext presented under another key_id fails.
//!
//! Calls to the token block, so they run on tokio's blocking threads, at most
//! [`MAX_IN_FLIGHT`] at once, each on a session borrowed from the pool. The
//! turn (a semaphore permit) moves into the blocking closure and is released
//! only when the token call returns: a caller that gives up (its timeout, or
//! kube-apiserver cancelling at its 3 s deadline) does not free a turn while
//! a thread still blocks in the token, so a hung token ties up at most
//! [`MAX_IN_FLIGHT`] threads and sessions. Each call, waiting for a turn
//! included, is bounded by the call timeout; one that runs out answers
//! Unavailable and marks the backend unhealthy. A self-test is bounded by
//! [`Pkcs11Root`]'s self-test timeout (three call timeouts).
//! Status reads only memory: the primary's key_id from the last reload, and
//! the verdict of the last self-test (or of the last call that found the
//! token broken). Reload (polled by the server) re-reads the state records,
//! so `kube-kms key rotate --backend pkcs11` on any node sharing the token
//! takes effect within a poll interval.
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;

use super::ring::{Health, KeyRing, Listing, Root, SelfTest, Snapshot, Version};
use super::BackendError;
use crate::keyring::KeyringError;
use crate::secret::SecretBytes;
use gcm::{classify, open, seal, CallFailure};

pub mod admin;
mod gcm;
mod lock;
pub mod store;
mod token;

pub use token::{read_pin_file, Token};

/// Token calls running at once (more wait for a turn).
pub const MAX_IN_FLIGHT: usize = 16;
/// First byte of a wrapped seed.
pub const CIPHERTEXT_TAG: u8 = b'p';
/// Second byte: the format version.
pub const CIPHERTEXT_FORMAT: u8 = 1;
const IV_LEN: usize = 12;
const GCM_TAG_LEN: usize = 16;
const HEADER_LEN: usize = 2 + IV_LEN;
/// Largest plaintext wrapped (kube-apiserver sends 32 bytes; the ciphertext
/// must stay under its 1 KiB limit).
pub const MAX_PLAINTEXT_LEN: usize = 1024 - HEADER_LEN - GCM_TAG_LEN;
const AAD_PREFIX: &[u8] = b"kube-kms/pkcs11/v1\0";

/// Where the keys are and how to log in.
#[derive(Debug, Clone)]
pub struct Pkcs11Config {
    /// The token's PKCS#11 module (a shared library).
    pub module: PathBuf,
    /// The token's label.
    pub token_label: String,
    /// The file holding the user PIN.
    pub pin_file: PathBuf,
    /// Upper bound of one token call, the wait for a free session included.
    pub call_timeout: Duration,
}

/// The call timeout used when none is configured: under kube-apiserver's
/// default 3 s KMS timeout.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// What can go wrong with the token. Messages name the token and the PKCS#11
/// function that failed; none carries the PIN or key material.
#[derive(Debug, thiserror::Error)]
pub enum Pkcs11Error {
    /// The module could not be loaded or initialized.
    #[error("cannot use the PKCS#11 module {path}: {problem}")]
    Module {
        /// The module path.
        path: PathBuf,
        /// What failed.
        problem: String,
    },
    /// The PIN file is unusable.
    #[error("PIN file {path} {problem}")]
    PinFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// No token with that label.
    #[error("no token labelled {label:?} in {module} (tokens present: {present}); check --token-label, or create the token (SoftHSM2: `softhsm2-util --init-token --free --label {label}`)")]
    NoToken {
        /// The label looked for.
        label: String,
        /// The module.
        module: PathBuf,
        /// Labels of the tokens found.
        present: String,
    },
    /// A PKCS#11 call failed.
    #[error("token {label:?}: {operation} failed: {detail}")]
    Token {
        /// The token.
        label: String,
        /// What was being done.
        operation: &'static str,
        /// The PKCS#11 function and return value.
        detail: String,
    },
    /// The token's kube-kms objects are inconsistent.
    #[error("token {label:?}: {problem}")]
    State {
        /// The token.
        label: String,
        /// What is wrong.
        problem: String,
    },
    /// The token holds no primary version.
    #[error("token {label:?} holds no primary key: create the first one with `kube-kms key rotate --backend pkcs11 ...`")]
    NoPrimary {
        /// The token.
        label: String,
    },
    /// No version with that number.
    #[error("token {label:?} has no version {id}; `kube-kms key list --backend pkcs11 ...` shows the versions")]
    UnknownVersion {
        /// The token.
        label: String,
        /// The version asked for.
        id: u32,
    },
    /// The state machine refused the change.
    #[error(transparent)]
    Refused(#[from] KeyringError),
    /// The operating system's random generator failed.
    #[error("the operating system's random number generator failed: {0}")]
    Random(getrandom::Error),
}

/// Opens `config`'s token: loads the module, reads the PIN, logs in.
pub fn open_token(config: &Pkcs11Config) -> Result<Token, Pkcs11Error> {
    Token::open(&config.module, &config.token_label, &config.pin_file)
}

/// The token's versions as a [`Listing`]: every version that unwraps has a
/// key (`()`: the key_id names the key object).
fn listing(keys: &store::TokenKeys) -> Listing<(), Vec<(u32, u64)>> {
    Listing {
        versions: keys
            .versions
            .iter()
            .map(|version| Version {
                key_id: Box::from(version.key_id.as_str()),
                state: version.state,
                key: Some(()),
            })
            .collect(),
        marker: keys.fingerprint(),
    }
}

/// A [`super::KeyBackend`] whose KEKs live in a PKCS#11 token.
pub type Pkcs11Backend = KeyRing<Pkcs11Root>;

/// A logged-in PKCS#11 token as a [`Root`].
pub struct Pkcs11Root {
    token: Arc<Token>,
    turns: Arc<Semaphore>,
    call_timeout: Duration,
    /// The lookalike objects the last read ignored (to log them when they
    /// change, not on every poll).
    last_ignored: Mutex<Vec<store::IgnoredObject>>,
    /// How many lookalike objects the last read ignored (a metric).
    ignored: AtomicU64,
}

impl std::fmt::Debug for Pkcs11Root {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Root")
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl KeyRing<Pkcs11Root> {
    /// Opens the token of `config` and reads its key versions (a primary
    /// must exist). Status says the self-test has not run until the first
    /// one (the server runs one before serving).
    pub fn open(config: &Pkcs11Config) -> Result<Self, Pkcs11Error> {
        let token = open_token(config)?;
        let keys = store::read(&token)?;
        if keys.primary().is_none() {
            return Err(Pkcs11Error::NoPrimary {
                label: token.label().to_owned(),
            });
        }
        let label = token.label().to_owned();
        let root = Pkcs11Root {
            token: Arc::new(token),
            turns: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            call_timeout: config.call_timeout.max(Duration::from_millis(10)),
            last_ignored: Mutex::new(Vec::new()),
            ignored: AtomicU64::new(0),
        };
        root.note_ignored(&keys.ignored);
        KeyRing::new(root, listing(&keys)).map_err(|error| Pkcs11Error::State {
            label,
            problem: error.to_string(),
        })
    }

    /// The longest a self-test may take: a wrap, an unwrap and a reset.
    pub fn self_test_timeout(&self) -> Duration {
        self.root().self_test_timeout()
    }
}

impl Pkcs11Root {
    /// The longest a self-test may take: a wrap, an unwrap and a reset.
    fn self_test_timeout(&self) -> Duration {
        self.call_timeout.saturating_mul(3)
    }

    /// Counts the lookalike objects a read ignored, and logs them when they
    /// changed since the last read (labels and reasons only).
    fn note_ignored(&self, now: &[store::IgnoredObject]) {
        // What it guards is a log throttle: a panic cannot leave it harmful.
        let mut last = self
            .last_ignored
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.ignored.store(
            u64::try_from(now.len()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        if last.as_slice() == now {
            return;
        }
        for object in now.iter().filter(|object| !last.contains(object)) {
            tracing::warn!(
                token = %self.token.label(),
                kind = object.kind,
                label = %object.label,
                reason = object.reason,
                "ignoring a token object that looks like kube-kms' but is not trusted"
            );
        }
        *last = now.to_vec();
    }

    /// Runs `work` on a blocking thread when a turn is free, within the call
    /// timeout. The turn moves into the blocking closure: if the caller
    /// stops waiting (timeout, cancelled request), the turn stays taken
    /// until the token call actually returns.
    async fn on_token<T: Send + 'static>(
        &self,
        health: &Health,
        work: impl FnOnce(&Token) -> T + Send + 'static,
    ) -> Result<T, BackendError> {
        let turns = Arc::clone(&self.turns);
        let token = Arc::clone(&self.token);
        let call = async move {
            let turn = turns
                .acquire_owned()
                .await
                .map_err(|_| BackendError::Unavailable("the token pool is closed".into()))?;
            tokio::task::spawn_blocking(move || {
                let result = work(&token);
                drop(turn);
                result
            })
            .await
            .map_err(|error| BackendError::Unavailable(format!("token call aborted: {error}")))
        };
        match tokio::time::timeout(self.call_timeout, call).await {
            Ok(result) => result,
            Err(_) => {
                let busy = MAX_IN_FLIGHT - self.turns.available_permits();
                let reason = format!(
                    "token {:?}: no answer within the call timeout of {:?} ({busy} of {MAX_IN_FLIGHT} token calls still waiting for the token)",
                    self.token.label(),
                    self.call_timeout
                );
                health.mark_unhealthy(&reason);
                Err(BackendError::Unavailable(reason))
            }
        }
    }
}

impl Root for Pkcs11Root {
    type Key = ();
    type Marker = Vec<(u32, u64)>;

    fn self_test(&self) -> SelfTest {
        SelfTest::Bounded(self.self_test_timeout())
    }

    fn wrap<'a>(
        &'a self,
        _key: &(),
        key_id: &Arc<str>,
        plaintext: &[u8],
        health: &'a Health,
    ) -> impl Future<Output = Result<Vec<u8>, BackendError>> + Send + use<'a> {
        let too_large = plaintext.len() > MAX_PLAINTEXT_LEN;
        let length = plaintext.len();
        let key_id = Arc::clone(key_id);
        let seed = SecretBytes::copy_from(plaintext);
        async move {
            if too_large {
                return Err(BackendError::InvalidInput(format!(
                    "plaintext of {length} bytes is larger than the {MAX_PLAINTEXT_LEN} bytes this backend wraps"
                )));
            }
            let id = Arc::clone(&key_id);
            let result = self
                .on_token(health, move |token| {
                    token.call(|session| seal(token, session, &id, seed.expose_secret()))
                })
                .await?;
            match result {
                Ok(Some(ciphertext)) => Ok(ciphertext),
                Ok(None) => {
                    let reason = format!(
                        "token {:?}: the key object of primary {key_id} is missing",
                        self.token.label()
                    );
                    health.mark_unhealthy(&reason);
                    Err(BackendError::Unavailable(reason))
                }
                Err(error) => {
                    let reason = match classify(&self.token, error, false) {
                        CallFailure::Token(reason) => reason,
                        CallFailure::Rejected | CallFailure::KeyMissing => {
                            "the token refused to encrypt".to_owned()
                        }
                    };
                    health.mark_unhealthy(&reason);
                    Err(BackendError::Unavailable(reason))
                }
            }
        }
    }

    fn unwrap<'a>(
        &'a self,
        _key: &(),
        key_id: &str,
        ciphertext: &[u8],
        health: &'a Health,
    ) -> impl Future<Output = Result<SecretBytes, BackendError>> + Send + use<'a> {
        let malformed = ciphertext.len() < HEADER_LEN + GCM_TAG_LEN
            || ciphertext.len() > 1024
            || ciphertext.first() != Some(&CIPHERTEXT_TAG)
            || ciphertext.get(1) != Some(&CIPHERTEXT_FORMAT);
        let key_id = key_id.to_owned();
        let sealed = if malformed {
            Vec::new()
        } else {
            ciphertext.to_vec()
        };
        async move {
            if malformed {
                return Err(BackendError::DecryptFailed);
            }
            let id = key_id.clone();
            let result = self
                .on_token(health, move |token| {
                    token.call(|session| open(token, session, &id, &sealed))
                })
                .await?;
            let failure = match result {
                Ok(Some(seed)) => return Ok(seed),
                Ok(None) => CallFailure::KeyMissing,
                Err(error) => classify(&self.token, error, true),
            };
            match failure {
                CallFailure::Rejected => Err(BackendError::DecryptFailed),
                CallFailure::KeyMissing => Err(BackendError::Unavailable(format!(
                    "token {:?}: the key object of {key_id} is missing",
                    self.token.label()
                ))),
                CallFailure::Token(reason) => {
                    health.mark_unhealthy(&reason);
                    Err(BackendError::Unavailable(reason))
                }
            }
        }
    }

    fn read(
        &self,
        _current: &Snapshot<(), Vec<(u32, u64)>>,
        _force: bool,
        health: &Health,
    ) -> Result<Option<Listing<(), Vec<(u32, u64)>>>, BackendError> {
        let keys = match tokio::runtime::Handle::try_current() {
            // The server calls reload on a blocking thread: bound the read
            // like any token call.
            Ok(runtime) => runtime.block_on(self.on_token(health, store::read))?,
            Err(_) => store::read(&self.token),
        }
        .map_err(|error| BackendError::Unavailable(error.to_string()))?;
        self.note_ignored(&keys.ignored);
        Ok(Some(listing(&keys)))
    }

    fn no_primary(&self, _listing: &Listing<(), Vec<(u32, u64)>>) -> BackendError {
        BackendError::Unavailable(
            Pkcs11Error::NoPrimary {
                label: self.token.label().to_owned(),
            }
            .to_string(),
        )
    }

    async fn after_failed_self_test(&self, health: &Health) {
        // Start afresh next time: new sessions, a new login. On a blocking
        // thread and bounded: closing sessions is a token call.
        let _ = self.on_token(health, |token| token.reset()).await;
    }

    fn source(&self) -> String {
        format!("token {:?}", self.token.label())
    }

    fn ignored_objects(&self) -> u64 {
        self.ignored.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests;
