//! Key bundles: moving KEK versions between the keyrings of several plugin
//! instances (one per control-plane node) without copying keyring files.
//!
//! A bundle is an [age](https://age-encryption.org/v1) file (binary, not armored)
//! encrypted either to one or more X25519 recipients (`age1...`) or to a
//! passphrase (scrypt). age authenticates the header and every payload chunk, so
//! a bundle that was tampered with, truncated, or encrypted to someone else
//! fails to open before any of it is used. The age payload is JSON:
//!
//! ```json
//! {
//!   "format": "kube-kms-bundle/v1",
//!   "versions": [
//!     { "id": 2, "key_id": "kk-v2-…", "state": "enabled",
//!       "created": "2026-11-27T12:00:00Z", "material": "<base64 of 32 bytes>" }
//!   ]
//! }
//! ```
//!
//! `state` is a hint: the exporter's state of the version. A `primary` or
//! `enabled` version is imported as `enabled` (never primary: promotion is a
//! separate, deliberate step on each node), a `disabled` one as `disabled`.
//! Destroyed versions have no material and cannot be exported.
//!
//! Authenticity: age encryption to a node's X25519 recipient proves nothing
//! about who made the bundle (the recipient is public), so anyone could make
//! one that opens. The exporter therefore prints the bundle's [`fingerprint`]
//! (a hash of the whole decrypted payload: every id, key_id, state, time and
//! key), the operator carries it to the importing node over a channel an
//! attacker cannot write to (their terminal, the change ticket), and
//! [`import`] refuses a bundle whose payload does not hash to it
//! ([`check_fingerprint`]). A forged bundle made with only the public
//! recipient would need the same keys to match.
//!
//! An import never changes the primary unless asked (`set_primary`).
//! Import into a keyring file that does not exist yet (a new node) creates
//! it, with the version named by `set_primary` as primary (required there: a
//! keyring needs one). Import into an existing keyring ([`merge`], [`import`])
//! only adds versions the keyring lacks, then promotes `set_primary` if given.
//! It never
//! removes, demotes or re-enables a local version, never brings back the
//! material of a version destroyed locally, is idempotent, and refuses the whole
//! bundle, changing nothing, if any version's id or key_id is held locally with
//! other material. The material is held only in [`crate::secret::Key256`] and zeroizing
//! buffers; nothing here formats it.
use std::io::Write as _;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use zeroize::Zeroizing;

use super::wire::{DocumentOut, VersionOut};
use super::{KeyVersion, Keyring, KeyringError, VersionInfo};

mod import;
mod open;
mod protection;

pub use import::{import, merge, plan, ImportOutcome};
pub use open::{open, open_file, Bundle};
pub use protection::{Protection, Unlock};

/// The value of the payload's `format` field.
pub const FORMAT: &str = "kube-kms-bundle/v1";
/// The largest bundle file accepted (a bundle of 1000 versions is ~250 KiB).
pub const MAX_BUNDLE_LEN: u64 = 1 << 20;
/// Largest accepted scrypt work factor (log2 N) for passphrase bundles: 2^22 is
/// 4 GiB·s-class work at most, so a hostile bundle cannot pin the CPU for hours.
const MAX_SCRYPT_LOG_N: u8 = 22;

/// Everything that can go wrong exporting, opening or importing a bundle.
/// No message contains key material or passphrases.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// A file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The keyring could not be loaded or changed (or refused the import).
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    /// A version asked for cannot be exported.
    #[error("cannot export version {id}: {reason}")]
    NotExportable {
        /// The version.
        id: u32,
        /// Why, and what to do.
        reason: String,
    },
    /// The protection options are unusable (bad recipient, empty passphrase...).
    #[error("{0}")]
    Protection(String),
    /// age could not encrypt the bundle.
    #[error("cannot encrypt the bundle: {0}")]
    Encrypt(String),
    /// The bundle did not open: wrong identity or passphrase, tampered, truncated,
    /// or not an age file.
    #[error("cannot open bundle {path}: {reason}")]
    Open {
        /// The bundle file.
        path: PathBuf,
        /// What age reported, and what to do.
        reason: String,
    },
    /// The bundle opened, but it is not the one the exporter fingerprinted:
    /// anyone who knows the recipient can make a bundle that opens.
    #[error("the bundle's fingerprint is {actual}, not {expected}: it is not the bundle that was exported (anyone who knows this node's age recipient can make one that opens); nothing was imported. Check the fingerprint `kube-kms key export` printed on the exporting node")]
    NotAuthentic {
        /// What the operator gave.
        expected: String,
        /// What the bundle hashes to.
        actual: String,
    },
    /// The bundle opened but its contents are not a valid kube-kms bundle.
    #[error("bundle {path} is invalid: {problem}")]
    Invalid {
        /// The bundle file.
        path: PathBuf,
        /// What is wrong, without any key material.
        problem: String,
    },
}

/// What [`export`] put in the bundle.
#[derive(Debug, Clone)]
pub struct Exported {
    /// The age file's bytes (no key material in clear).
    pub bundle: Vec<u8>,
    /// The payload's [`fingerprint`], for `key import --expect-fingerprint`.
    pub fingerprint: String,
    /// The versions it holds, as they are in the exporting keyring.
    pub versions: Vec<VersionInfo>,
}

/// Encrypts versions `ids` of `keyring` into an age bundle.
pub fn export(
    keyring: &Keyring,
    ids: &[u32],
    protection: &Protection,
) -> Result<Exported, BundleError> {
    if ids.is_empty() {
        return Err(BundleError::Protection(
            "name at least one VERSION to export (`kube-kms key list` shows them)".into(),
        ));
    }
    let mut chosen: Vec<&KeyVersion> = Vec::with_capacity(ids.len());
    for &id in ids {
        let version = keyring.version(id).ok_or(BundleError::NotExportable {
            id,
            reason: "the keyring has no such version; `kube-kms key list` shows them".into(),
        })?;
        if version.material().is_none() {
            return Err(BundleError::NotExportable {
                id,
                reason: "it is destroyed; its material is gone".into(),
            });
        }
        if !chosen.iter().any(|v| v.id == id) {
            chosen.push(version);
        }
    }
    let encoded: Vec<Zeroizing<String>> = chosen
        .iter()
        .map(|version| {
            let mut text = Zeroizing::new(String::with_capacity(48));
            if let Some(key) = version.material() {
                BASE64.encode_string(key.expose_secret(), &mut text);
            }
            text
        })
        .collect();
    let out = DocumentOut {
        format: FORMAT,
        generation: None,
        versions: chosen
            .iter()
            .zip(&encoded)
            .map(|(version, material)| VersionOut {
                id: version.id,
                key_id: &version.key_id,
                state: version.state.as_str(),
                created: humantime::format_rfc3339(version.created).to_string(),
                disabled_at: None,
                material: Some(material.as_str()),
            })
            .collect(),
    };
    // Sized up front so the buffer never reallocates (which would leave an
    // un-zeroized copy of the key text behind).
    let mut payload = Zeroizing::new(Vec::with_capacity(256 + 256 * chosen.len()));
    serde_json::to_writer(&mut *payload, &out)
        .map_err(|error| BundleError::Encrypt(format!("cannot serialize: {error}")))?;
    let encryptor = match protection {
        Protection::Recipients(recipients) => {
            age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
                .map_err(|error| BundleError::Encrypt(error.to_string()))?
        }
        Protection::Passphrase(passphrase) => {
            age::Encryptor::with_user_passphrase(passphrase.clone())
        }
    };
    let mut bundle = Vec::with_capacity(payload.len() + 512);
    let mut writer = encryptor
        .wrap_output(&mut bundle)
        .map_err(|error| BundleError::Encrypt(error.to_string()))?;
    writer
        .write_all(&payload)
        .and_then(|()| writer.finish().map(|_| ()))
        .map_err(|error| BundleError::Encrypt(error.to_string()))?;
    Ok(Exported {
        bundle,
        fingerprint: fingerprint(&payload),
        versions: chosen.iter().map(|v| v.info()).collect(),
    })
}

/// Domain separation of the fingerprint hash.
const FINGERPRINT_DOMAIN: &[u8] = b"kube-kms/bundle-fingerprint/v1\0";

/// The fingerprint of a bundle payload: the first 128 bits of
/// SHA-256(domain || payload), as 8 groups of 4 hex digits. It is computed
/// over the decrypted payload, which holds the keys, so it cannot be matched
/// without them; it reveals nothing usable about them (a hash of 256-bit keys).
pub fn fingerprint(payload: &[u8]) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::new()
        .chain_update(FINGERPRINT_DOMAIN)
        .chain_update(payload)
        .finalize();
    let hex: Vec<String> = digest
        .iter()
        .take(16)
        .map(|byte| format!("{byte:02x}"))
        .collect();
    hex.chunks(2)
        .map(|pair| pair.concat())
        .collect::<Vec<_>>()
        .join("-")
}

fn normalized(fingerprint: &str) -> String {
    fingerprint
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Refuses `bundle` unless its payload's fingerprint is `expected` (as `key
/// export` printed it; case, dashes and spaces do not matter).
pub fn check_fingerprint(bundle: &Bundle, expected: &str) -> Result<(), BundleError> {
    let wanted = normalized(expected);
    if wanted.len() != 32 {
        return Err(BundleError::Protection(format!(
            "--expect-fingerprint {expected:?} is not a bundle fingerprint (32 hex digits, as `kube-kms key export` prints it)"
        )));
    }
    if normalized(&bundle.fingerprint) != wanted {
        return Err(BundleError::NotAuthentic {
            expected: expected.to_owned(),
            actual: bundle.fingerprint.clone(),
        });
    }
    Ok(())
}

/// Writes bundle bytes to a new file (mode 0600); never overwrites.
pub fn write_new(path: &Path, bundle: &[u8]) -> Result<(), BundleError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |action| {
        move |source| BundleError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io("cannot create bundle file (it must not exist yet)"))?;
    file.write_all(bundle)
        .and_then(|()| file.sync_all())
        .map_err(io("cannot write bundle file"))
}

#[cfg(test)]
mod tests;
