//! The KEK versions of one Transit key: the key_id scheme, the stored
//! ciphertext form, how version states map onto Transit's version floors,
//! the encrypt/decrypt calls, and the `kube-kms key` operations.
//!
//! Layout, for mount `M` (default `transit`) and key `K`:
//! - version `N` of kube-kms is version `N` of the Transit key `M/keys/K`;
//!   the primary is the key's `latest_version` (a Transit `rotate` makes a
//!   new primary); kube-kms always names the version (`key_version`);
//! - states come from the key's floors: a version below
//!   `min_available_version` is destroyed (trimmed: its material is gone), a
//!   version below `min_decryption_version` is disabled, the latest is
//!   primary, the rest are enabled. The floors act in order, so
//!   `kube-kms key disable|enable|destroy` accept only the version at the
//!   floor and refuse others with the reason;
//! - the key must be an AEAD type (`aes256-gcm96`, `aes128-gcm96`,
//!   `chacha20-poly1305`), not derived nor convergent: anything else is
//!   refused at start.
//!
//! The key_id of version `N` is `kk-vault-vN-M/K` (e.g.
//! `kk-vault-v3-transit/kube-kms`); the Vault namespace is not part of it.
//! It is public and names the exact Transit key and version decrypt uses.
//! A Transit key deleted and created again under the same name restarts at
//! version 1 and would repeat key_ids: do not reuse key names.
//!
//! Every encrypt and decrypt passes `associated_data` =
//! `kube-kms:dek-seed:v1:` + key_id, so a ciphertext opens only under the
//! key_id it was made for, and someone with `encrypt` on the key cannot
//! forge a seed for kube-kms without the same binding.
//!
//! Stored form (what Encrypt returns to kube-apiserver): `0xB1`, the
//! version as 4 bytes big-endian, then the bytes of Transit's base64
//! ciphertext (nonce, ciphertext, tag). Decrypt checks that version against
//! the key_id's and rebuilds `vault:vN:<base64>` for Transit.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hyper::Method;
use zeroize::Zeroizing;

use super::auth::Auth;
use super::http::{HttpError, VaultHttp};
use crate::keyring::KeyState;
use crate::secret::SecretBytes;

/// Every Vault key_id starts with this.
pub const KEY_ID_PREFIX: &str = "kk-vault-v";
/// The default Transit mount.
pub const DEFAULT_MOUNT: &str = "transit";
/// The first byte of the stored form.
pub const FORMAT_BYTE: u8 = 0xB1;
/// Prefix of the associated data bound to every ciphertext.
const AD_LABEL: &str = "kube-kms:dek-seed:v1:";
/// Key types that take `associated_data`.
pub const AEAD_TYPES: [&str; 3] = ["aes256-gcm96", "aes128-gcm96", "chacha20-poly1305"];
/// The type `kube-kms key rotate` creates a missing key with.
pub const CREATE_TYPE: &str = "aes256-gcm96";
/// Largest seed wrapped (kube-apiserver sends 32 bytes).
pub const MAX_PLAINTEXT_LEN: usize = 4096;
/// Largest stored form accepted (kube-apiserver caps it at 1 KiB anyway).
const MAX_STORED_LEN: usize = 8192;
/// How long after a version stopped being the oldest usable one writes under
/// it are taken to have ended: the plugins' refresh (30s by default) plus
/// kube-apiserver's Status poll (a minute) with room to spare. Transit keeps
/// no disable time, so the destroy gate needs reports taken after this.
pub const WRITES_SETTLE: Duration = Duration::from_secs(300);

/// Why a Transit operation failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TransitError {
    /// The mount or key name is not usable.
    #[error("invalid {what} {value:?}: {problem}")]
    BadName {
        /// mount or key.
        what: &'static str,
        /// The value given.
        value: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// A Vault call failed.
    #[error("{0}")]
    Vault(#[from] HttpError),
    /// The key does not exist.
    #[error("no Transit key {mount}/keys/{key}: create it with `kube-kms key rotate --backend vault ...` (or `bao write -f {mount}/keys/{key} type=aes256-gcm96`)")]
    NoKey {
        /// The mount.
        mount: String,
        /// The key name.
        key: String,
    },
    /// The key cannot bind associated data.
    #[error("Transit key {mount}/keys/{key} is {problem}; kube-kms needs a key of type aes256-gcm96, aes128-gcm96 or chacha20-poly1305, not derived and not convergent (it binds each ciphertext to its key_id as associated data)")]
    NotAead {
        /// The mount.
        mount: String,
        /// The key name.
        key: String,
        /// What it is instead.
        problem: String,
    },
    /// Vault answered something kube-kms cannot use.
    #[error("Transit {path} answered {detail}")]
    BadAnswer {
        /// The API path.
        path: String,
        /// What was wrong.
        detail: String,
    },
    /// The state machine (Transit's floors) refuses the change.
    #[error("refusing to {action} version {id} of {key}: {reason}")]
    Refused {
        /// What was asked.
        action: &'static str,
        /// The version.
        id: u32,
        /// mount/key.
        key: String,
        /// Why, and what to do.
        reason: String,
    },
}

/// One version as `kube-kms key list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultVersion {
    /// The version number (Transit's).
    pub id: u32,
    /// Its key_id.
    pub key_id: String,
    /// Its state.
    pub state: KeyState,
    /// When Transit created it (Transit lists times only for versions at or
    /// above `min_decryption_version`).
    pub created: Option<SystemTime>,
}

/// A Transit key's versions and floors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitKey {
    /// The mount.
    pub mount: String,
    /// The key name.
    pub name: String,
    /// The key type (`aes256-gcm96`, ...).
    pub key_type: String,
    /// The latest (primary) version.
    pub latest: u32,
    /// Versions below it are disabled.
    pub min_decryption: u32,
    /// Versions below it are trimmed (0: none).
    pub min_available: u32,
    /// Transit refuses to encrypt below it (0: no floor).
    pub min_encryption: u32,
    /// Every version 1..=latest, by number.
    pub versions: BTreeMap<u32, VaultVersion>,
}

impl TransitKey {
    /// mount/key, for messages.
    pub fn path(&self) -> String {
        format!("{}/{}", self.mount, self.name)
    }

    /// The primary (latest) version.
    pub fn primary(&self) -> Option<&VaultVersion> {
        self.versions.get(&self.latest)
    }

    /// The lowest version not trimmed.
    fn lowest_kept(&self) -> u32 {
        self.min_available.max(1)
    }

    /// When nothing can have been written under a disabled version any more
    /// (see [`WRITES_SETTLE`]): the creation of the oldest enabled version,
    /// which came after every disabled one stopped being primary.
    pub fn writes_ended(&self) -> Option<SystemTime> {
        self.versions
            .get(&self.min_decryption)
            .and_then(|v| v.created)
            .map(|at| at + WRITES_SETTLE)
    }

    /// Builds the view from `keys/:name`'s `data`.
    fn from_data(mount: &str, name: &str, data: &KeyData) -> Result<Self, TransitError> {
        let not_aead = |problem: String| TransitError::NotAead {
            mount: mount.to_owned(),
            key: name.to_owned(),
            problem,
        };
        if !AEAD_TYPES.contains(&data.key_type.as_str()) {
            return Err(not_aead(format!("of type {}", data.key_type)));
        }
        if data.derived {
            return Err(not_aead("derived (it needs a context per call)".into()));
        }
        if data.convergent_encryption {
            return Err(not_aead("convergent".into()));
        }
        let latest = data.latest_version;
        if latest == 0 || data.min_decryption_version == 0 {
            return Err(TransitError::BadAnswer {
                path: format!("{mount}/keys/{name}"),
                detail: "a key without versions".into(),
            });
        }
        let mut versions = BTreeMap::new();
        for id in 1..=latest {
            let state = if id < data.min_available_version {
                KeyState::Destroyed
            } else if id < data.min_decryption_version {
                KeyState::Disabled
            } else if id == latest {
                KeyState::Primary
            } else {
                KeyState::Enabled
            };
            let created = data
                .keys
                .get(&id.to_string())
                .and_then(serde_json::Value::as_u64)
                .map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
            versions.insert(
                id,
                VaultVersion {
                    id,
                    key_id: key_id_for(mount, name, id),
                    state,
                    created,
                },
            );
        }
        Ok(Self {
            mount: mount.to_owned(),
            name: name.to_owned(),
            key_type: data.key_type.clone(),
            latest,
            min_decryption: data.min_decryption_version,
            min_available: data.min_available_version,
            min_encryption: data.min_encryption_version,
            versions,
        })
    }
}

/// The fields of `keys/:name` kube-kms reads.
#[derive(serde::Deserialize)]
struct KeyData {
    #[serde(rename = "type")]
    key_type: String,
    latest_version: u32,
    #[serde(default)]
    min_decryption_version: u32,
    #[serde(default)]
    min_available_version: u32,
    #[serde(default)]
    min_encryption_version: u32,
    #[serde(default)]
    derived: bool,
    #[serde(default)]
    convergent_encryption: bool,
    #[serde(default)]
    keys: serde_json::Map<String, serde_json::Value>,
}

#[derive(serde::Deserialize)]
struct Answer<T> {
    data: T,
}

#[derive(serde::Deserialize)]
struct EncryptData {
    ciphertext: String,
}

#[derive(serde::Deserialize)]
struct DecryptData {
    plaintext: Zeroizing<String>,
}

/// Why a decrypt failed, before mapping to the backend's coarse error.
#[derive(Debug)]
pub enum DecryptFailure {
    /// Transit could not authenticate the ciphertext (wrong key_id, tampered).
    Authentication,
    /// The version is below `min_decryption_version` or trimmed.
    Disabled,
    /// Anything else (Vault away, permission denied, ...).
    Other(TransitError),
}

/// Transit calls for one mount and key, with the backend's token.
pub struct Transit {
    http: VaultHttp,
    auth: Arc<Auth>,
    mount: String,
    key: String,
    call_timeout: Duration,
}

impl std::fmt::Debug for Transit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transit")
            .field("address", &self.http.address())
            .field("mount", &self.mount)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Transit {
    /// Transit calls on `mount/keys/key`.
    pub fn new(
        http: VaultHttp,
        auth: Arc<Auth>,
        mount: &str,
        key: &str,
        call_timeout: Duration,
    ) -> Result<Self, TransitError> {
        validate_mount(mount)?;
        validate_key(key)?;
        Ok(Self {
            http,
            auth,
            mount: mount.to_owned(),
            key: key.to_owned(),
            call_timeout,
        })
    }

    /// mount/key.
    pub fn path(&self) -> String {
        format!("{}/{}", self.mount, self.key)
    }

    /// The mount.
    pub fn mount(&self) -> &str {
        &self.mount
    }

    /// The key name.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The token holder.
    pub fn auth(&self) -> &Arc<Auth> {
        &self.auth
    }

    /// One call with the current token; on 403, one more after
    /// [`Auth::recover`] got a new token.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Zeroizing<Vec<u8>>, HttpError> {
        let deadline = Instant::now() + self.call_timeout;
        let session = self.auth.session();
        let first = self
            .http
            .request(method.clone(), path, session.header(), body, deadline)
            .await;
        match first {
            Err(HttpError::PermissionDenied { .. })
                if self.auth.recover(session.generation).await =>
            {
                let session = self.auth.session();
                // The login took time of its own: the retry gets at least
                // half a call timeout.
                let again = deadline.max(Instant::now() + self.call_timeout / 2);
                self.http
                    .request(method, path, session.header(), body, again)
                    .await
            }
            other => other,
        }
    }

    /// Reads the key's versions and floors; refuses a non-AEAD key.
    pub async fn read_key(&self) -> Result<TransitKey, TransitError> {
        let path = format!("{}/keys/{}", self.mount, self.key);
        let body = match self.call(Method::GET, &path, None).await {
            Err(HttpError::Refused { status: 404, .. }) => {
                return Err(TransitError::NoKey {
                    mount: self.mount.clone(),
                    key: self.key.clone(),
                })
            }
            other => other?,
        };
        let answer: Answer<KeyData> =
            serde_json::from_slice(&body).map_err(|error| TransitError::BadAnswer {
                path: path.clone(),
                detail: format!("key metadata kube-kms cannot read: {error}"),
            })?;
        TransitKey::from_data(&self.mount, &self.key, &answer.data)
    }

    /// Encrypts `plaintext` under `version`, bound to its key_id; returns
    /// the stored form.
    pub async fn encrypt(&self, version: u32, plaintext: &[u8]) -> Result<Vec<u8>, TransitError> {
        let key_id = key_id_for(&self.mount, &self.key, version);
        let path = format!("{}/encrypt/{}", self.mount, self.key);
        let encoded = Zeroizing::new(B64.encode(plaintext));
        let body = Zeroizing::new(
            serde_json::to_vec(&serde_json::json!({
                "plaintext": encoded.as_str(),
                "key_version": version,
                "associated_data": associated_data(&key_id),
            }))
            .unwrap_or_default(),
        );
        let answer = self.call(Method::POST, &path, Some(&body)).await?;
        let parsed: Answer<EncryptData> =
            serde_json::from_slice(&answer).map_err(|_| TransitError::BadAnswer {
                path: path.clone(),
                detail: "without data.ciphertext".into(),
            })?;
        compact(version, &parsed.data.ciphertext)
            .map_err(|detail| TransitError::BadAnswer { path, detail })
    }

    /// Decrypts a stored form made under `key_id` (version `version`).
    pub async fn decrypt(
        &self,
        version: u32,
        key_id: &str,
        stored: &[u8],
    ) -> Result<SecretBytes, DecryptFailure> {
        let ciphertext = expand(version, stored).ok_or(DecryptFailure::Authentication)?;
        let path = format!("{}/decrypt/{}", self.mount, self.key);
        let body = serde_json::to_vec(&serde_json::json!({
            "ciphertext": ciphertext,
            "associated_data": associated_data(key_id),
        }))
        .unwrap_or_default();
        let answer = match self.call(Method::POST, &path, Some(&body)).await {
            Ok(answer) => answer,
            Err(HttpError::Refused {
                status: 400,
                errors,
                ..
            }) => {
                return Err(
                    if errors.contains("too old") || errors.contains("disallowed") {
                        DecryptFailure::Disabled
                    } else {
                        DecryptFailure::Authentication
                    },
                )
            }
            Err(error) => return Err(DecryptFailure::Other(error.into())),
        };
        let parsed: Answer<DecryptData> = serde_json::from_slice(&answer).map_err(|_| {
            DecryptFailure::Other(TransitError::BadAnswer {
                path: path.clone(),
                detail: "without data.plaintext".into(),
            })
        })?;
        let plaintext = B64.decode(parsed.data.plaintext.as_bytes()).map_err(|_| {
            DecryptFailure::Other(TransitError::BadAnswer {
                path,
                detail: "a plaintext that is not base64".into(),
            })
        })?;
        Ok(SecretBytes::new(plaintext))
    }
}

mod ops;
mod scheme;

pub use ops::{plan_destroy, plan_disable, plan_enable};
pub use scheme::{
    associated_data, compact, expand, key_id_for, parse_key_id, validate_key, validate_mount,
};

#[cfg(test)]
mod tests;
