//! Importing an opened bundle into a keyring: [`plan`] decides, [`merge`]
//! applies all or nothing, [`import`] does it on the keyring file under its
//! lock (creating the keyring on a new node).
use std::path::Path;

use super::super::{store, KeyState, KeyVersion, Keyring, KeyringError, VersionInfo};
use super::{Bundle, BundleError};

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
/// Check the bundle's [`super::fingerprint`] first ([`super::check_fingerprint`]).
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
