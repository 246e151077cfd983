//! `kube-kms key rotate|list|disable|enable|destroy` on a keyring file
//! ([`FileAdmin`]): each a call into [`crate::keyring`] (which keeps the
//! invariants and writes atomically under a lock).
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

use crate::backend::admin::{
    describe, AdminError, DestroyOptions, GateTarget, KeyAdmin, ListedVersion, Listing,
};
use crate::keyring::{self, KeyringError, LoadedKeyring};

/// How running plugins learn of a change.
const RELOAD_HINT: &str = " (running plugins pick up the change when they reload the file)";

/// The key operations on the keyring file at a path.
#[derive(Debug)]
pub struct FileAdmin {
    path: PathBuf,
    /// The flags that name this keyring in a suggested command.
    selector: String,
    notes: Mutex<Vec<String>>,
}

impl FileAdmin {
    /// The keyring at `path`; `selector`: the flags that name it again in
    /// the commands messages suggest.
    pub fn new(path: PathBuf, selector: String) -> Self {
        Self {
            path,
            selector,
            notes: Mutex::new(Vec::new()),
        }
    }

    fn note(&self, note: String) {
        self.notes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(note);
    }

    /// Loads the keyring for a command that does not write it, after
    /// removing the temp files a crashed writer left next to it (each holds
    /// every key). Writing commands get the same cleanup inside
    /// [`keyring::modify`].
    fn load(&self) -> Result<LoadedKeyring, AdminError> {
        match keyring::store::remove_stale_temps(&self.path) {
            Ok(0) => {}
            Ok(removed) => self.note(format!(
                "removed {removed} temporary keyring file(s) left next to {} by an interrupted write (each held every key)",
                self.path.display()
            )),
            Err(error) => self.note(format!(
                "warning: could not check for temporary keyring files left by an interrupted write: {error}"
            )),
        }
        keyring::load(&self.path).map_err(AdminError::root)
    }
}

/// The non-secret fingerprint of a version: the hex part of its key_id.
fn fingerprint(key_id: &str) -> &str {
    keyring::key_id::parse(key_id).map_or("-", |(_, hex)| hex)
}

impl KeyAdmin for FileAdmin {
    async fn rotate(&self, now: SystemTime) -> Result<String, AdminError> {
        let change =
            keyring::modify(&self.path, |ring| ring.rotate(now)).map_err(AdminError::root)?;
        Ok(format!(
            "rotated: {} is now primary; {} stays enabled for decryption{RELOAD_HINT}",
            describe(change.primary.id, &change.primary.key_id),
            describe(change.previous.id, &change.previous.key_id),
        ))
    }

    async fn list(&self) -> Result<Listing, AdminError> {
        let versions = self
            .load()?
            .keyring
            .metadata()
            .iter()
            .map(|info| ListedVersion::with_fingerprint(info, fingerprint(&info.key_id)))
            .collect();
        Ok(Listing {
            versions,
            last_column: Some("FINGERPRINT"),
            footer: Vec::new(),
            ignored_objects: None,
        })
    }

    async fn disable(&self, id: u32, _now: SystemTime) -> Result<String, AdminError> {
        let info =
            keyring::modify(&self.path, |ring| ring.disable(id)).map_err(AdminError::root)?;
        let selector = &self.selector;
        Ok(format!(
            "disabled {}: seeds wrapped by it no longer decrypt{RELOAD_HINT}. Undo with `kube-kms key enable {id} {selector}`; erase it for good with `kube-kms key destroy {id} {selector}`",
            describe(info.id, &info.key_id),
        ))
    }

    async fn enable(&self, id: u32, _now: SystemTime) -> Result<String, AdminError> {
        let info = keyring::modify(&self.path, |ring| ring.enable(id)).map_err(AdminError::root)?;
        Ok(format!(
            "enabled {}: seeds wrapped by it decrypt again{RELOAD_HINT}",
            describe(info.id, &info.key_id),
        ))
    }

    async fn gate_target(&self, id: u32) -> Result<Option<GateTarget>, AdminError> {
        Ok(self.load()?.keyring.version(id).map(|v| GateTarget {
            key_id: v.key_id().to_owned(),
            state: v.state(),
            disabled_at: v.disabled_at(),
        }))
    }

    async fn destroy(
        &self,
        id: u32,
        _now: SystemTime,
        judged: Option<SystemTime>,
        _options: DestroyOptions,
    ) -> Result<String, AdminError> {
        let info = keyring::modify(&self.path, |ring| {
            // The reports were judged against one disable time; a version
            // re-enabled and disabled again since then needs new scans.
            if let Some(judged) = judged {
                if ring.version(id).and_then(|v| v.disabled_at()) != Some(judged) {
                    return Err(KeyringError::Refused {
                        action: "destroy",
                        id,
                        reason: "the keyring changed while the scan reports were checked; run the command again".to_string(),
                    });
                }
            }
            ring.destroy(id)
        })
        .map_err(AdminError::root)?;
        Ok(format!(
            "destroyed {}: its key material is erased for good; the id and key_id stay reserved and are never reused",
            describe(info.id, &info.key_id)
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
