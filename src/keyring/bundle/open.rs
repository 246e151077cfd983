//! Opening a bundle: age decryption (authenticated, bounded work), then the
//! payload's JSON checked version by version ([`Bundle`]).
use std::io::Read as _;

use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

use super::super::wire::{decode_key_material, parse_time, DocumentIn};
use super::super::{key_id, KeyState, KeyVersion, VersionInfo};
use super::{fingerprint, BundleError, Unlock, FORMAT, MAX_BUNDLE_LEN, MAX_SCRYPT_LOG_N};
use crate::secret::Key256;

/// The versions an opened bundle holds.
#[derive(Debug)]
pub struct Bundle {
    pub(super) versions: Vec<KeyVersion>,
    /// The payload's [`fingerprint`].
    pub(super) fingerprint: String,
    /// The id of the version that was primary where the bundle was made, if exported.
    pub(super) primary_at_export: Option<u32>,
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

pub(super) fn invalid(problem: impl Into<String>) -> BundleError {
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

pub(super) fn parse(payload: &[u8]) -> Result<Bundle, BundleError> {
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
