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
//! other material. The material is held only in [`Key256`] and zeroizing
//! buffers; nothing here formats it.
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use age::secrecy::SecretString;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use zeroize::Zeroizing;

use super::wire::{decode_key_material, parse_time, DocumentIn, DocumentOut, VersionOut};
use super::{key_id, store, KeyState, KeyVersion, Keyring, KeyringError, VersionInfo};
use crate::secret::Key256;

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

/// How a bundle is protected when exported.
pub enum Protection {
    /// Encrypted to these age X25519 recipients (any of their identities opens it).
    Recipients(Vec<age::x25519::Recipient>),
    /// Encrypted to a passphrase (age scrypt).
    Passphrase(SecretString),
}

/// How a bundle is opened when imported.
pub enum Unlock {
    /// age X25519 identities (the contents of an age identity file).
    Identities(Vec<age::x25519::Identity>),
    /// The passphrase the bundle was exported with.
    Passphrase(SecretString),
}

impl Protection {
    /// Parses `age1...` recipient strings (at least one).
    pub fn recipients(texts: &[String]) -> Result<Self, BundleError> {
        if texts.is_empty() {
            return Err(BundleError::Protection(
                "give at least one --recipient (age1...) or a --passphrase-file".into(),
            ));
        }
        let mut recipients = Vec::with_capacity(texts.len());
        for text in texts {
            let recipient = text.trim().parse::<age::x25519::Recipient>().map_err(|_| {
                BundleError::Protection(format!(
                    "{text:?} is not an age X25519 recipient (it starts with age1; `age-keygen -y IDENTITY_FILE` prints it)"
                ))
            })?;
            recipients.push(recipient);
        }
        Ok(Protection::Recipients(recipients))
    }

    /// Reads a passphrase from the first line of `path`.
    pub fn passphrase_file(path: &Path) -> Result<Self, BundleError> {
        Ok(Protection::Passphrase(read_passphrase(path)?))
    }
}

impl Unlock {
    /// Reads an age identity file (`AGE-SECRET-KEY-1...` lines, `#` comments).
    pub fn identity_file(path: &Path) -> Result<Self, BundleError> {
        let text = read_small_secret(path, "cannot read identity file")?;
        let text = std::str::from_utf8(&text).map_err(|_| {
            BundleError::Protection(format!(
                "identity file {} is not UTF-8 text; it must hold AGE-SECRET-KEY-1... lines (age-keygen output)",
                path.display()
            ))
        })?;
        let mut identities = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // The line is secret: the error names its number only.
            let identity = line.parse::<age::x25519::Identity>().map_err(|_| {
                BundleError::Protection(format!(
                    "identity file {} line {}: not an age X25519 identity (AGE-SECRET-KEY-1...)",
                    path.display(),
                    index + 1
                ))
            })?;
            identities.push(identity);
        }
        if identities.is_empty() {
            return Err(BundleError::Protection(format!(
                "identity file {} holds no AGE-SECRET-KEY-1... line (create one with age-keygen)",
                path.display()
            )));
        }
        Ok(Unlock::Identities(identities))
    }

    /// Reads a passphrase from the first line of `path`.
    pub fn passphrase_file(path: &Path) -> Result<Self, BundleError> {
        Ok(Unlock::Passphrase(read_passphrase(path)?))
    }
}

fn read_small_secret(path: &Path, action: &'static str) -> Result<Zeroizing<Vec<u8>>, BundleError> {
    let io = |source| BundleError::Io {
        action,
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut buffer = Zeroizing::new(Vec::with_capacity(4096));
    file.take(64 * 1024).read_to_end(&mut buffer).map_err(io)?;
    Ok(buffer)
}

fn read_passphrase(path: &Path) -> Result<SecretString, BundleError> {
    let text = read_small_secret(path, "cannot read passphrase file")?;
    let first_line = text.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let first_line = first_line.strip_suffix(b"\r").unwrap_or(first_line);
    let passphrase = std::str::from_utf8(first_line).map_err(|_| {
        BundleError::Protection(format!(
            "passphrase file {} is not UTF-8 text",
            path.display()
        ))
    })?;
    if passphrase.chars().count() < 12 {
        return Err(BundleError::Protection(format!(
            "the passphrase in {} is shorter than 12 characters; use a long random one (e.g. `openssl rand -base64 32`)",
            path.display()
        )));
    }
    Ok(SecretString::from(passphrase.to_owned()))
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

/// The versions an opened bundle holds.
#[derive(Debug)]
pub struct Bundle {
    versions: Vec<KeyVersion>,
    /// The payload's [`fingerprint`].
    fingerprint: String,
    /// The id of the version that was primary where the bundle was made, if exported.
    primary_at_export: Option<u32>,
}

impl Bundle {
    /// Metadata of the versions, with the state they will have once imported.
    pub fn metadata(&self) -> Vec<VersionInfo> {
        self.versions.iter().map(KeyVersion::info).collect()
    }

    /// The payload's [`fingerprint`].
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The version that was primary where the bundle was exported, if it holds it.
    pub fn primary_at_export(&self) -> Option<u32> {
        self.primary_at_export
    }
}

/// Reads and opens the bundle file at `path`.
pub fn open_file(path: &Path, unlock: &Unlock) -> Result<Bundle, BundleError> {
    let io = |source| BundleError::Io {
        action: "cannot read bundle",
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    file.take(MAX_BUNDLE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_BUNDLE_LEN {
        return Err(BundleError::Invalid {
            path: path.to_path_buf(),
            problem: format!("it is larger than {MAX_BUNDLE_LEN} bytes: not a kube-kms bundle"),
        });
    }
    open(&bytes, unlock).map_err(|error| error.at(path))
}

impl BundleError {
    fn at(self, file: &Path) -> Self {
        match self {
            BundleError::Open { reason, .. } => BundleError::Open {
                path: file.to_path_buf(),
                reason,
            },
            BundleError::Invalid { problem, .. } => BundleError::Invalid {
                path: file.to_path_buf(),
                problem,
            },
            other => other,
        }
    }
}

fn memory() -> PathBuf {
    PathBuf::from("<memory>")
}

fn invalid(problem: impl Into<String>) -> BundleError {
    BundleError::Invalid {
        path: memory(),
        problem: problem.into(),
    }
}

/// Decrypts and parses bundle bytes. Fails, using nothing, unless age
/// authenticates the whole file.
pub fn open(bytes: &[u8], unlock: &Unlock) -> Result<Bundle, BundleError> {
    let failed = |reason: String| BundleError::Open {
        path: memory(),
        reason,
    };
    let decryptor = age::Decryptor::new_buffered(bytes).map_err(|error| {
        failed(format!(
            "{error} (it is not an intact age file: damaged, truncated or tampered with; export it again)"
        ))
    })?;
    let passphrase_identity;
    let identities: Vec<&dyn age::Identity> = match unlock {
        Unlock::Identities(identities) => {
            if decryptor.is_scrypt() {
                return Err(failed(
                    "it is protected by a passphrase; use --passphrase-file".into(),
                ));
            }
            identities.iter().map(|i| i as &dyn age::Identity).collect()
        }
        Unlock::Passphrase(passphrase) => {
            if !decryptor.is_scrypt() {
                return Err(failed(
                    "it is encrypted to age recipients, not a passphrase; use --identity".into(),
                ));
            }
            let mut identity = age::scrypt::Identity::new(passphrase.clone());
            identity.set_max_work_factor(MAX_SCRYPT_LOG_N);
            passphrase_identity = identity;
            vec![&passphrase_identity as &dyn age::Identity]
        }
    };
    let reader = decryptor.decrypt(identities.into_iter()).map_err(|error| {
        failed(match error {
            age::DecryptError::NoMatchingKeys => {
                "none of the given identities opens it (it was exported to other recipients)".into()
            }
            age::DecryptError::DecryptionFailed => {
                "wrong passphrase, or the bundle was tampered with".into()
            }
            other => format!("{other} (the bundle may have been tampered with)"),
        })
    })?;
    let mut payload = Zeroizing::new(Vec::with_capacity(bytes.len()));
    reader
        .take(MAX_BUNDLE_LEN)
        .read_to_end(&mut payload)
        .map_err(|error| {
            failed(format!(
                "{error}: the bundle failed authentication (tampered with or truncated); nothing was imported"
            ))
        })?;
    parse(&payload)
}

fn parse(payload: &[u8]) -> Result<Bundle, BundleError> {
    let parsed: DocumentIn<'_> = serde_json::from_slice(payload).map_err(|error| {
        // serde_json quotes offending values; report the position only.
        invalid(format!(
            "its contents are not kube-kms-bundle/v1 JSON (line {}, column {})",
            error.line(),
            error.column()
        ))
    })?;
    if parsed.format != FORMAT {
        return Err(invalid(format!(
            "the \"format\" field must be \"{FORMAT}\"; export it again with this kube-kms version"
        )));
    }
    if parsed.generation.is_some() {
        return Err(invalid(
            "it has a \"generation\" field, which only keyring files have",
        ));
    }
    if parsed.versions.is_empty() {
        return Err(invalid("it holds no versions"));
    }
    let mut versions: Vec<KeyVersion> = Vec::with_capacity(parsed.versions.len());
    let mut primary_at_export = None;
    for version in parsed.versions {
        let id = version.id;
        let hint = KeyState::from_word(&version.state).ok_or_else(|| {
            invalid(format!(
                "version {id}: state must be primary, enabled or disabled"
            ))
        })?;
        if hint == KeyState::Primary {
            if primary_at_export.is_some() {
                return Err(invalid("two versions are marked primary"));
            }
            primary_at_export = Some(id);
        }
        let state = match hint {
            KeyState::Primary | KeyState::Enabled => KeyState::Enabled,
            KeyState::Disabled => KeyState::Disabled,
            KeyState::Destroyed => {
                return Err(invalid(format!(
                    "version {id} is marked destroyed; a bundle carries only versions with material"
                )))
            }
        };
        let created = parse_time(&version.created)
            .ok_or_else(|| invalid(format!("version {id}: created is not an RFC 3339 time")))?;
        if version.disabled_at.is_some() {
            return Err(invalid(format!(
                "version {id}: a bundle carries no disabled_at"
            )));
        }
        let material = version.material.ok_or_else(|| {
            invalid(format!(
                "version {id}: material is missing; a bundle carries only versions with material"
            ))
        })?;
        let material = decode_material(id, material.0)?;
        let key_id = version.key_id.into_owned();
        if key_id::parse(&key_id).map(|(n, _)| n) != Some(id)
            || !bool::from(subtle::ConstantTimeEq::ct_eq(
                key_id::for_version(id, &material).as_bytes(),
                key_id.as_bytes(),
            ))
        {
            return Err(invalid(format!(
                "version {id}: key_id {key_id} does not match its id and material"
            )));
        }
        if versions.iter().any(|v| v.id == id) {
            return Err(invalid(format!("version {id} appears twice")));
        }
        versions.push(KeyVersion {
            id,
            key_id,
            state,
            created,
            disabled_at: None,
            material: Some(material),
        });
    }
    versions.sort_by_key(|v| v.id);
    Ok(Bundle {
        versions,
        fingerprint: fingerprint(payload),
        primary_at_export,
    })
}

fn decode_material(id: u32, text: &str) -> Result<Key256, BundleError> {
    decode_key_material(text).ok_or_else(|| {
        invalid(format!(
            "version {id}: material must be 32 bytes in standard padded base64"
        ))
    })
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportOutcome {
    /// Versions added to the keyring (state `enabled`, or `disabled` if so exported).
    pub added: Vec<VersionInfo>,
    /// Versions the keyring already held with the same material (left as they are).
    pub present: Vec<VersionInfo>,
    /// Versions destroyed locally: their material is not brought back.
    pub destroyed_locally: Vec<VersionInfo>,
    /// True when the keyring file did not exist and was created from the bundle.
    pub created_keyring: bool,
    /// The version made primary (`set_primary`), if the primary changed.
    pub promoted: Option<u32>,
}

impl ImportOutcome {
    /// True when the import would add nothing.
    pub fn is_noop(&self) -> bool {
        self.added.is_empty()
    }
}

fn conflict(id: u32, reason: String) -> KeyringError {
    KeyringError::Refused {
        action: "import",
        id,
        reason,
    }
}

/// Merges `bundle` into `keyring`: all or nothing (on a conflict the keyring is
/// left exactly as it was).
pub fn merge(keyring: &mut Keyring, bundle: &Bundle) -> Result<ImportOutcome, KeyringError> {
    let outcome = plan(keyring, bundle)?;
    for incoming in &bundle.versions {
        if outcome.added.iter().any(|v| v.id == incoming.id) {
            keyring.versions.push(KeyVersion {
                id: incoming.id,
                key_id: incoming.key_id.clone(),
                state: incoming.state,
                created: incoming.created,
                disabled_at: incoming.disabled_at,
                material: incoming.material.clone(),
            });
        }
    }
    keyring.versions.sort_by_key(|v| v.id);
    if let Err(error) = keyring.validate() {
        keyring
            .versions
            .retain(|v| !outcome.added.iter().any(|a| a.id == v.id));
        return Err(error);
    }
    Ok(outcome)
}

/// Decides, without changing anything, what merging `bundle` would do.
pub fn plan(keyring: &Keyring, bundle: &Bundle) -> Result<ImportOutcome, KeyringError> {
    let mut outcome = ImportOutcome::default();
    for incoming in &bundle.versions {
        let same_key_id = keyring
            .versions
            .iter()
            .find(|v| v.key_id == incoming.key_id);
        match (keyring.version(incoming.id), same_key_id) {
            (None, None) => outcome.added.push(incoming.info()),
            (Some(local), _) if local.key_id != incoming.key_id => {
                return Err(conflict(
                    incoming.id,
                    format!(
                        "this keyring already has a version {} with other material (key_id {} here, {} in the bundle): the keyrings were created separately. Nothing was imported; do not mix keyrings of different clusters",
                        incoming.id, local.key_id, incoming.key_id
                    ),
                ));
            }
            (Some(local), _) => match (&local.material, &incoming.material) {
                (None, _) => outcome.destroyed_locally.push(local.info()),
                (Some(mine), Some(theirs)) => {
                    if bool::from(subtle::ConstantTimeEq::ct_eq(
                        &mine.expose_secret()[..],
                        &theirs.expose_secret()[..],
                    )) {
                        outcome.present.push(local.info());
                    } else {
                        return Err(conflict(
                            incoming.id,
                            format!(
                                "key_id {} is held here with other material; nothing was imported",
                                local.key_id
                            ),
                        ));
                    }
                }
                (Some(_), None) => {
                    return Err(conflict(incoming.id, "the bundle has no material".into()))
                }
            },
            (None, Some(local)) => {
                return Err(conflict(
                    incoming.id,
                    format!(
                        "key_id {} is already held here as version {}; nothing was imported",
                        local.key_id, local.id
                    ),
                ));
            }
        }
    }
    Ok(outcome)
}

/// Imports `bundle` into the keyring file at `path`, under the keyring's lock
/// and with its atomic write, then makes version `set_primary` primary if
/// given. Writes nothing when nothing is to be added or promoted (so a
/// repeated import leaves the file untouched) or when a version conflicts.
///
/// When no keyring exists at `path` (a new node), it is created from the
/// bundle with `set_primary` as primary, which is then required (a new node
/// must write with the key the others use; the caller says which).
/// Check the bundle's [`fingerprint`] first ([`check_fingerprint`]).
pub fn import(
    path: &Path,
    bundle: &Bundle,
    set_primary: Option<u32>,
) -> Result<ImportOutcome, BundleError> {
    let loaded = match store::load(path) {
        Ok(loaded) => loaded,
        Err(KeyringError::NotFound { .. }) => return create_from(path, bundle, set_primary),
        Err(other) => return Err(other.into()),
    };
    let preview = plan(&loaded.keyring, bundle).map_err(|error| error.at(path))?;
    let promote = set_primary.filter(|&id| loaded.keyring.primary().map(|p| p.id) != Some(id));
    if preview.is_noop() && promote.is_none() {
        return Ok(preview);
    }
    Ok(store::modify(path, |keyring| {
        let mut outcome = merge(keyring, bundle)?;
        if let Some(id) = promote {
            keyring.promote(id)?;
            outcome.promoted = Some(id);
        }
        Ok(outcome)
    })?)
}

fn create_from(
    path: &Path,
    bundle: &Bundle,
    set_primary: Option<u32>,
) -> Result<ImportOutcome, BundleError> {
    let Some(primary) = set_primary else {
        let hint = match bundle.primary_at_export {
            Some(id) => format!(" (version {id} was primary where the bundle was exported)"),
            None => String::new(),
        };
        return Err(BundleError::Protection(format!(
            "keyring {} does not exist: importing creates it, and a keyring needs a primary; name it with --set-primary VERSION{hint}. Nothing was imported",
            path.display()
        )));
    };
    if !bundle
        .versions
        .iter()
        .any(|v| v.id == primary && v.state == KeyState::Enabled)
    {
        return Err(BundleError::Protection(format!(
            "--set-primary {primary}: the bundle holds no enabled version {primary}; nothing was imported"
        )));
    }
    let mut keyring = Keyring {
        generation: 0,
        versions: bundle
            .versions
            .iter()
            .map(|v| KeyVersion {
                id: v.id,
                key_id: v.key_id.clone(),
                state: if v.id == primary {
                    KeyState::Primary
                } else {
                    v.state
                },
                created: v.created,
                disabled_at: v.disabled_at,
                material: v.material.clone(),
            })
            .collect(),
    };
    keyring.versions.sort_by_key(|v| v.id);
    keyring.validate()?;
    store::create(path, &keyring)?;
    Ok(ImportOutcome {
        added: keyring.metadata(),
        created_keyring: true,
        promoted: Some(primary),
        ..ImportOutcome::default()
    })
}

#[cfg(test)]
mod tests;
