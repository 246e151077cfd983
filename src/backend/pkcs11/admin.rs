//! `kube-kms key rotate|list|disable|enable|destroy --backend pkcs11`
//! ([`Pkcs11Admin`]): the operations of [`super::store`] on a logged-in
//! token, under the keyring file's state-machine rules.
use std::sync::Mutex;
use std::time::SystemTime;

use super::{open_token, store, Pkcs11Config, Pkcs11Error, Token};
use crate::backend::admin::{
    describe, AdminError, DestroyOptions, GateTarget, KeyAdmin, ListedVersion, Listing,
};
use crate::keyring::ops::Transition;
use crate::keyring::VersionInfo;

/// How running plugins learn of a change.
const TOKEN_HINT: &str =
    " (running plugins on this token pick up the change within their reload poll interval)";

/// The key operations on one token.
#[derive(Debug)]
pub struct Pkcs11Admin {
    token: Token,
    /// The flags that name this token in a suggested command.
    selector: String,
    notes: Mutex<Vec<String>>,
}

impl Pkcs11Admin {
    /// Opens `config`'s token (loads the module, reads the PIN, logs in);
    /// `selector`: the flags that name it again in suggested commands.
    pub fn open(config: &Pkcs11Config, selector: String) -> Result<Self, Pkcs11Error> {
        Ok(Self {
            token: open_token(config)?,
            selector,
            notes: Mutex::new(Vec::new()),
        })
    }

    fn label(&self) -> &str {
        self.token.label()
    }
}

/// The non-secret fingerprint of a version: the random tag of its key_id.
fn fingerprint(key_id: &str) -> &str {
    key_id
        .strip_prefix(store::KEY_ID_PREFIX)
        .and_then(|rest| rest.split_once('-'))
        .map_or("-", |(_, hex)| hex)
}

fn shown(info: &VersionInfo) -> String {
    describe(info.id, &info.key_id)
}

impl KeyAdmin for Pkcs11Admin {
    async fn rotate(&self, now: SystemTime) -> Result<String, AdminError> {
        let change = store::rotate(&self.token, now).map_err(AdminError::root)?;
        Ok(match change.previous {
            Some(previous) => format!(
                "rotated: {} (generated in token {:?}) is now primary; {} stays enabled for decryption{TOKEN_HINT}",
                shown(&change.primary),
                self.label(),
                shown(&previous),
            ),
            None => format!(
                "created {} in token {:?}: it is primary{TOKEN_HINT}",
                shown(&change.primary),
                self.label(),
            ),
        })
    }

    async fn list(&self) -> Result<Listing, AdminError> {
        let keys = store::read(&self.token).map_err(AdminError::root)?;
        {
            let mut notes = self
                .notes
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for object in &keys.ignored {
                notes.push(format!(
                    "warning: token {:?}: ignoring {object} (not listed, never used)",
                    self.label()
                ));
            }
        }
        Ok(Listing {
            versions: keys
                .versions
                .iter()
                .map(|version| {
                    ListedVersion::with_fingerprint(&version.info(), fingerprint(&version.key_id))
                })
                .collect(),
            last_column: Some("FINGERPRINT"),
            footer: Vec::new(),
            ignored_objects: Some(keys.ignored.len()),
        })
    }

    async fn disable(&self, id: u32, now: SystemTime) -> Result<String, AdminError> {
        let info = store::transition(&self.token, id, Transition::Disable, now, None)
            .map_err(AdminError::root)?;
        let selector = &self.selector;
        Ok(format!(
            "disabled {}: seeds wrapped by it no longer decrypt{TOKEN_HINT}. Undo with `kube-kms key enable {id} {selector}`; erase it for good with `kube-kms key destroy {id} {selector}`",
            shown(&info),
        ))
    }

    async fn enable(&self, id: u32, now: SystemTime) -> Result<String, AdminError> {
        let info = store::transition(&self.token, id, Transition::Enable, now, None)
            .map_err(AdminError::root)?;
        Ok(format!(
            "enabled {}: seeds wrapped by it decrypt again{TOKEN_HINT}",
            shown(&info),
        ))
    }

    async fn gate_target(&self, id: u32) -> Result<Option<GateTarget>, AdminError> {
        let keys = store::read(&self.token).map_err(AdminError::root)?;
        Ok(keys.version(id).map(|v| GateTarget {
            key_id: v.key_id.clone(),
            state: v.state,
            disabled_at: v.disabled_at,
        }))
    }

    async fn destroy(
        &self,
        id: u32,
        now: SystemTime,
        judged: Option<SystemTime>,
        _options: DestroyOptions,
    ) -> Result<String, AdminError> {
        let info = store::transition(&self.token, id, Transition::Destroy, now, judged)
            .map_err(AdminError::root)?;
        Ok(format!(
            "destroyed {}: its key object is deleted from token {:?}; the version number and key_id stay reserved and are never reused",
            shown(&info),
            self.label()
        ))
    }

    fn take_notes(&self) -> Vec<String> {
        std::mem::take(
            &mut *self
                .notes
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }
}
