//! Verification by decryption: proves that every encrypted value opens with
//! the keys at hand and holds a well-formed object of the expected kind.
//!
//! - kms v2 values: the seed or DEK comes from a [`DekUnwrapper`] (the real
//!   plugin through [`plugin::PluginUnwrapper`], or a [`SeedTable`] in tests),
//!   called once per distinct (`encryptedDEKSource`, key_id, annotations), as
//!   kube-apiserver caches; the data is opened with [`crate::envelope`] in
//!   either DEK mode with the etcd key as associated data.
//! - aescbc, aesgcm (associated data: the etcd key) and secretbox values: with
//!   the keys of an [`EncryptionConfig`].
//! - The plaintext must then pass [`object::check_object`]; it lives in a
//!   [`SecretBytes`] and is zeroized when the check returns.
//!
//! [`pool::VerifyPool`] runs verification on worker threads, so the scan
//! engine (a synchronous sink, also driven from inside the live source's
//! tokio runtime) only copies ciphertext into bounded batches.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use super::classify::{decode_encrypted_object, Classifier, Provider};
use super::encryption_config::{EncryptionConfig, KeyedProvider};
use crate::envelope;
use crate::secret::SecretBytes;

pub mod object;
pub mod plugin;
pub mod pool;

pub use object::ExpectedObject;

/// Why a value failed verification. Deliberately coarse: which byte or which
/// field was wrong is nobody's business.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VerifyFailure {
    /// The plugin answered Decrypt with an error (disabled or unknown key,
    /// tampered DEK source or annotations).
    PluginRefused,
    /// The plugin could not be reached or did not answer in time.
    PluginUnreachable,
    /// The EncryptionConfiguration has no key of the name the value carries.
    NoKey,
    /// The data did not decrypt: tampered, moved to another etcd key, or the
    /// wrong key.
    NotDecrypted,
    /// It decrypted, but not to a well-formed object of the expected kind
    /// (for aescbc, which has no MAC: usually the wrong key).
    NotAnObject,
}

impl VerifyFailure {
    /// Short code for JSON output.
    pub fn code(self) -> &'static str {
        match self {
            VerifyFailure::PluginRefused => "plugin-refused",
            VerifyFailure::PluginUnreachable => "plugin-unreachable",
            VerifyFailure::NoKey => "no-key",
            VerifyFailure::NotDecrypted => "not-decrypted",
            VerifyFailure::NotAnObject => "not-an-object",
        }
    }

    /// Sentence for the table output.
    pub fn describe(self) -> &'static str {
        match self {
            VerifyFailure::PluginRefused => "the KMS plugin refused to decrypt its DEK",
            VerifyFailure::PluginUnreachable => "the KMS plugin could not be reached",
            VerifyFailure::NoKey => "the EncryptionConfiguration has no key of this name",
            VerifyFailure::NotDecrypted => {
                "did not decrypt (tampered, moved to another etcd key, or the wrong key)"
            }
            VerifyFailure::NotAnObject => "decrypted, but not to a valid object of its kind",
        }
    }
}

/// What verification said about one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It decrypted to a well-formed object of the expected kind.
    Verified,
    /// It did not.
    Failed(VerifyFailure),
    /// Nothing to verify it with (plaintext, malformed, kms v1, or a provider
    /// whose keys were not given).
    NotVerified,
}

/// One Decrypt request: what kube-apiserver would send for a stored value.
#[derive(Debug, Clone, Copy)]
pub struct UnwrapRequest<'a> {
    /// The stored key_id.
    pub key_id: &'a str,
    /// The stored `encryptedDEKSource`.
    pub encrypted_dek_source: &'a [u8],
    /// The stored annotations, sorted by key, one entry per key.
    pub annotations: &'a [(&'a str, &'a [u8])],
}

/// Why an unwrapper did not return a seed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnwrapError {
    /// The plugin (or table) answered with a refusal.
    #[error("refused: {0}")]
    Refused(String),
    /// The plugin could not be reached or timed out.
    #[error("unreachable: {0}")]
    Unreachable(String),
}

/// Turns a stored `encryptedDEKSource` back into the seed or DEK it wraps.
/// Implemented by the plugin client ([`plugin::PluginUnwrapper`]) and, for
/// tests, by [`SeedTable`]. Synchronous: callable from any thread, including
/// one running inside a tokio runtime.
pub trait DekUnwrapper: Send + Sync {
    /// Decrypts one DEK source.
    fn unwrap_dek(&self, request: &UnwrapRequest<'_>) -> Result<SecretBytes, UnwrapError>;
    /// Where the seeds come from, for reports (`unix:///...`, `seed table`).
    fn describe(&self) -> String;
}

/// A table of DEK sources and the seeds they wrap, standing in for a plugin
/// in tests (the fixtures' `kms_v2_dek_sources` and `*.seeds.jsonl`). An
/// entry matches a request with the same key_id, DEK source and annotations;
/// one added with [`SeedTable::insert_any_annotations`] matches whatever
/// annotations the request carries (for a plugin that does not bind them to
/// its ciphertext, as the generated fixtures' plugin does not).
#[derive(Debug, Default)]
pub struct SeedTable {
    entries: HashMap<Vec<u8>, SecretBytes>,
    any_annotations: HashMap<Vec<u8>, SecretBytes>,
}

impl SeedTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the seed (or DEK) that `encrypted_dek_source` wraps under `key_id`
    /// with these annotations.
    pub fn insert(
        &mut self,
        key_id: &str,
        encrypted_dek_source: &[u8],
        annotations: &BTreeMap<String, Vec<u8>>,
        seed: SecretBytes,
    ) {
        let pairs: Vec<(&str, &[u8])> = annotations
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_slice()))
            .collect();
        let request = UnwrapRequest {
            key_id,
            encrypted_dek_source,
            annotations: &pairs,
        };
        self.entries.insert(cache_key(&request), seed);
    }

    /// Adds the seed (or DEK) that `encrypted_dek_source` wraps under
    /// `key_id`, whatever the annotations of the request.
    pub fn insert_any_annotations(
        &mut self,
        key_id: &str,
        encrypted_dek_source: &[u8],
        seed: SecretBytes,
    ) {
        let request = UnwrapRequest {
            key_id,
            encrypted_dek_source,
            annotations: &[],
        };
        self.any_annotations.insert(cache_key(&request), seed);
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len() + self.any_annotations.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl DekUnwrapper for SeedTable {
    fn unwrap_dek(&self, request: &UnwrapRequest<'_>) -> Result<SecretBytes, UnwrapError> {
        let without_annotations = UnwrapRequest {
            annotations: &[],
            ..*request
        };
        self.entries
            .get(&cache_key(request))
            .or_else(|| self.any_annotations.get(&cache_key(&without_annotations)))
            .cloned()
            .ok_or_else(|| UnwrapError::Refused("not in the seed table".into()))
    }

    fn describe(&self) -> String {
        "seed table".into()
    }
}

/// The cache key of a request: key_id, DEK source and annotations, each
/// length-prefixed so no two different requests share a key.
fn cache_key(request: &UnwrapRequest<'_>) -> Vec<u8> {
    let mut key = Vec::with_capacity(
        16 + request.key_id.len()
            + request.encrypted_dek_source.len()
            + request
                .annotations
                .iter()
                .map(|(k, v)| 16 + k.len() + v.len())
                .sum::<usize>(),
    );
    let mut put = |bytes: &[u8]| {
        key.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        key.extend_from_slice(bytes);
    };
    put(request.key_id.as_bytes());
    put(request.encrypted_dek_source);
    for (name, value) in request.annotations {
        put(name.as_bytes());
        put(value);
    }
    key
}

/// A Decrypt that failed, once per distinct DEK source (for the report).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnwrapFailure {
    /// The stored key_id.
    pub key_id: String,
    /// Refused or unreachable.
    pub failure: VerifyFailure,
    /// What the plugin said (its status code and message; no secret).
    pub detail: String,
}

type CachedSeed = Arc<OnceLock<Result<Arc<SecretBytes>, VerifyFailure>>>;

/// Verifies values with the keys it was given. Shared by the pool's workers.
pub struct Verifier {
    kms: Option<Arc<dyn DekUnwrapper>>,
    config: Option<EncryptionConfig>,
    cache: Mutex<HashMap<Vec<u8>, CachedSeed>>,
    decrypt_calls: AtomicU64,
    unwrap_failures: Mutex<Vec<UnwrapFailure>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("kms", &self.kms.as_ref().map(|kms| kms.describe()))
            .field("config", &self.config)
            .field("decrypt_calls", &self.decrypt_calls())
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier for kms v2 values (with `kms`) and aescbc/aesgcm/secretbox
    /// values (with `config`'s keys).
    pub fn new(kms: Option<Arc<dyn DekUnwrapper>>, config: Option<EncryptionConfig>) -> Self {
        Self {
            kms,
            config,
            cache: Mutex::new(HashMap::new()),
            decrypt_calls: AtomicU64::new(0),
            unwrap_failures: Mutex::new(Vec::new()),
        }
    }

    /// Whether values of `provider` are verified.
    pub fn verifies(&self, provider: Provider) -> bool {
        match provider {
            Provider::KmsV2 => self.kms.is_some(),
            Provider::Aescbc | Provider::Aesgcm | Provider::Secretbox => self.config.is_some(),
            _ => false,
        }
    }

    /// Where kms v2 seeds come from, if anywhere.
    pub fn kms_source(&self) -> Option<String> {
        self.kms.as_ref().map(|kms| kms.describe())
    }

    /// Decrypt calls made (one per distinct DEK source seen).
    pub fn decrypt_calls(&self) -> u64 {
        self.decrypt_calls.load(Ordering::Relaxed)
    }

    /// The Decrypt calls that failed, one per distinct DEK source.
    pub fn unwrap_failures(&self) -> Vec<UnwrapFailure> {
        self.unwrap_failures
            .lock()
            .map(|failures| failures.clone())
            .unwrap_or_default()
    }

    /// Verifies the value stored under `etcd_key` (see the module doc).
    pub fn verify(
        &self,
        classifier: &Classifier,
        etcd_key: &[u8],
        expected: ExpectedObject,
        value: &[u8],
    ) -> Verdict {
        let class = classifier.classify(value);
        let provider = class.provider();
        if !self.verifies(provider) {
            return Verdict::NotVerified;
        }
        let opened = match provider {
            Provider::KmsV2 => self.open_kms_v2(class.encrypted_object.unwrap_or(&[]), etcd_key),
            Provider::Aescbc | Provider::Aesgcm | Provider::Secretbox => {
                self.open_symmetric(provider, class.name.unwrap_or(&[]), value, etcd_key)
            }
            _ => return Verdict::NotVerified,
        };
        let plaintext = match opened {
            Ok(plaintext) => plaintext,
            Err(failure) => return Verdict::Failed(failure),
        };
        // `plaintext` is zeroized when it drops at the end of this function.
        match object::check_object(plaintext.expose_secret(), expected) {
            Ok(()) => Verdict::Verified,
            Err(_) => Verdict::Failed(VerifyFailure::NotAnObject),
        }
    }

    fn open_kms_v2(&self, object: &[u8], etcd_key: &[u8]) -> Result<SecretBytes, VerifyFailure> {
        let Some(kms) = &self.kms else {
            return Err(VerifyFailure::PluginUnreachable);
        };
        // The classifier already accepted the object; a failure here cannot
        // happen, but is a failed verification rather than a panic.
        let decoded = decode_encrypted_object(object).map_err(|_| VerifyFailure::NotDecrypted)?;
        let key_id =
            std::str::from_utf8(decoded.key_id).map_err(|_| VerifyFailure::NotDecrypted)?;
        // Go decodes the map: the last entry for a key wins; Decrypt gets them all once.
        let mut annotations: BTreeMap<&str, &[u8]> = BTreeMap::new();
        for (name, value) in decoded.annotations() {
            let name = std::str::from_utf8(name).map_err(|_| VerifyFailure::NotDecrypted)?;
            annotations.insert(name, value);
        }
        let annotations: Vec<(&str, &[u8])> = annotations.into_iter().collect();
        let request = UnwrapRequest {
            key_id,
            encrypted_dek_source: decoded.dek_source,
            annotations: &annotations,
        };
        let slot = {
            let mut cache = self
                .cache
                .lock()
                .map_err(|_| VerifyFailure::PluginUnreachable)?;
            Arc::clone(cache.entry(cache_key(&request)).or_default())
        };
        // The first worker to need this seed asks for it; the others wait.
        let seed = slot.get_or_init(|| {
            self.decrypt_calls.fetch_add(1, Ordering::Relaxed);
            match kms.unwrap_dek(&request) {
                Ok(seed) => Ok(Arc::new(seed)),
                Err(error) => {
                    let (failure, detail) = match error {
                        UnwrapError::Refused(detail) => (VerifyFailure::PluginRefused, detail),
                        UnwrapError::Unreachable(detail) => {
                            (VerifyFailure::PluginUnreachable, detail)
                        }
                    };
                    if let Ok(mut failures) = self.unwrap_failures.lock() {
                        failures.push(UnwrapFailure {
                            key_id: key_id.to_owned(),
                            failure,
                            detail,
                        });
                    }
                    Err(failure)
                }
            }
        });
        let seed = seed.as_ref().map_err(|failure| *failure)?;
        envelope::open_kms_v2(
            decoded.dek_source_type,
            seed.expose_secret(),
            decoded.data,
            etcd_key,
        )
        .map_err(|_| VerifyFailure::NotDecrypted)
    }

    fn open_symmetric(
        &self,
        provider: Provider,
        name: &[u8],
        value: &[u8],
        etcd_key: &[u8],
    ) -> Result<SecretBytes, VerifyFailure> {
        let (kind, prefix): (KeyedProvider, &[u8]) = match provider {
            Provider::Aescbc => (KeyedProvider::AesCbc, b"k8s:enc:aescbc:v1:"),
            Provider::Aesgcm => (KeyedProvider::AesGcm, b"k8s:enc:aesgcm:v1:"),
            _ => (KeyedProvider::Secretbox, b"k8s:enc:secretbox:v1:"),
        };
        let key = std::str::from_utf8(name)
            .ok()
            .and_then(|name| self.config.as_ref()?.key(kind, name))
            .ok_or(VerifyFailure::NoKey)?;
        // The classifier found `<prefix><name>:` at the start of the value.
        let payload = value
            .get(prefix.len() + name.len() + 1..)
            .ok_or(VerifyFailure::NotDecrypted)?;
        let opened = match kind {
            KeyedProvider::AesCbc => envelope::open_aescbc(key.expose_secret(), payload),
            KeyedProvider::AesGcm => envelope::open_aesgcm(key.expose_secret(), payload, etcd_key),
            KeyedProvider::Secretbox => envelope::open_secretbox(key.expose_secret(), payload),
        };
        opened.map_err(|_| VerifyFailure::NotDecrypted)
    }
}

/// What a finished verification pass reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifySummary {
    /// Where kms v2 seeds came from (`unix:///...`), if verified.
    pub kms_source: Option<String>,
    /// Whether an EncryptionConfiguration's keys were used.
    pub with_encryption_config: bool,
    /// Decrypt calls made (one per distinct DEK source).
    pub decrypt_calls: u64,
    /// Values verified, by provider.
    pub verified: BTreeMap<Provider, u64>,
    /// Values that failed, by reason.
    pub failed: BTreeMap<VerifyFailure, u64>,
    /// Encrypted values nothing could verify (kms v1; providers without keys), by provider.
    pub not_verified: BTreeMap<Provider, u64>,
    /// Failed Decrypt calls, one per distinct DEK source.
    pub unwrap_failures: Vec<UnwrapFailure>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::classify::build;

    const KEY: &[u8] = b"/registry/secrets/default/db-pass";

    fn sealed_secret(seed: &[u8], etcd_key: &[u8], dek_source: &[u8]) -> Vec<u8> {
        let object = build::plaintext_protobuf("v1", "Secret", b"\x0a\x03abc");
        let data = envelope::seal_kms_v2_seed(seed, &object, etcd_key).unwrap();
        build::kms_v2_with_dek_source(
            "kube-kms",
            "key-1",
            dek_source,
            Some(1),
            &[("version.example.io", b"1")],
            &data,
        )
    }

    fn table(seed: &[u8], dek_source: &[u8]) -> SeedTable {
        let mut table = SeedTable::new();
        let annotations = BTreeMap::from([("version.example.io".to_string(), b"1".to_vec())]);
        table.insert(
            "key-1",
            dek_source,
            &annotations,
            SecretBytes::copy_from(seed),
        );
        table
    }

    #[test]
    fn kms_v2_verifies_once_per_dek_source_and_fails_when_moved_or_flipped() {
        let seed = [9u8; 32];
        let verifier = Verifier::new(Some(Arc::new(table(&seed, b"wrapped-1"))), None);
        let classifier = Classifier::default();
        let secret = expected_for_secrets();
        for _ in 0..3 {
            let value = sealed_secret(&seed, KEY, b"wrapped-1");
            assert_eq!(
                verifier.verify(&classifier, KEY, secret, &value),
                Verdict::Verified
            );
        }
        assert_eq!(verifier.decrypt_calls(), 1);
        let value = sealed_secret(&seed, KEY, b"wrapped-1");
        assert_eq!(
            verifier.verify(
                &classifier,
                b"/registry/secrets/default/other",
                secret,
                &value
            ),
            Verdict::Failed(VerifyFailure::NotDecrypted)
        );
        let mut flipped = value.clone();
        let last = flipped.len() - 80;
        flipped[last] ^= 1;
        assert!(matches!(
            verifier.verify(&classifier, KEY, secret, &flipped),
            Verdict::Failed(_)
        ));
        // Under configmaps/ a Secret is the wrong kind.
        assert_eq!(
            verifier.verify(&classifier, KEY, ExpectedObject::Kind("ConfigMap"), &value),
            Verdict::Failed(VerifyFailure::NotAnObject)
        );
        let unknown = sealed_secret(&seed, KEY, b"wrapped-2");
        assert_eq!(
            verifier.verify(&classifier, KEY, secret, &unknown),
            Verdict::Failed(VerifyFailure::PluginRefused)
        );
        assert_eq!(verifier.decrypt_calls(), 2);
        assert_eq!(verifier.unwrap_failures().len(), 1);
        assert_eq!(
            verifier.verify(&classifier, KEY, secret, b"k8s\0plain"),
            Verdict::NotVerified
        );
    }

    fn expected_for_secrets() -> ExpectedObject {
        object::expected_for_resource(b"secrets")
    }
}
