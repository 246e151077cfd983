//! `kube-kms key rotate|list|disable|enable|destroy --backend vault`
//! ([`VaultAdmin`]): the operations of [`super::transit`] on the versions of
//! one Transit key, under the ordering rules of Transit's floors.
use std::sync::Mutex;
use std::time::SystemTime;

use super::transit::{self, Transit, TransitError, TransitKey, VaultVersion};
use super::{connect, VaultConfig, VaultError};
use crate::backend::admin::{
    describe, AdminError, DestroyOptions, GateTarget, KeyAdmin, ListedVersion, Listing,
};
use crate::backend::aws_kms::format_time;

/// How running plugins learn of a change.
const REFRESH_HINT: &str =
    " (running plugins pick it up within --vault-refresh-interval, or at once on SIGHUP)";

/// The key operations on one Transit key.
#[derive(Debug)]
pub struct VaultAdmin {
    transit: Transit,
    /// The flags that name this key in a suggested command.
    selector: String,
    /// The key as the destroy gate judged it (a destroy is refused if the
    /// floors moved since).
    judged: Mutex<Option<TransitKey>>,
    notes: Mutex<Vec<String>>,
}

impl VaultAdmin {
    /// Logs in to `config`'s Vault (no key read yet); `selector`: the flags
    /// that name the key again in suggested commands.
    pub async fn connect(config: &VaultConfig, selector: String) -> Result<Self, VaultError> {
        Ok(Self {
            transit: connect(config).await?,
            selector,
            judged: Mutex::new(None),
            notes: Mutex::new(Vec::new()),
        })
    }
}

fn shown(version: &VaultVersion) -> String {
    describe(version.id, &version.key_id)
}

/// Version `id` of `key` for a message (its key_id when known).
fn shown_id(key: &TransitKey, id: u32) -> String {
    key.versions
        .get(&id)
        .map_or_else(|| format!("version {id}"), shown)
}

fn row(v: &VaultVersion) -> ListedVersion {
    ListedVersion {
        id: v.id,
        state: v.state,
        key_id: v.key_id.clone(),
        created: format_time(v.created),
        last: String::new(),
        json: serde_json::json!({
            "id": v.id,
            "key_id": v.key_id,
            "state": v.state.as_str(),
            "created": format_time(v.created),
        }),
    }
}

fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl KeyAdmin for VaultAdmin {
    async fn rotate(&self, _now: SystemTime) -> Result<String, AdminError> {
        let (key, created) = self
            .transit
            .rotate_or_create()
            .await
            .map_err(AdminError::root)?;
        let primary = key.primary().ok_or_else(|| {
            AdminError::root(TransitError::BadAnswer {
                path: key.path(),
                detail: "a rotated key has no primary".into(),
            })
        })?;
        if created {
            return Ok(format!(
                "created the Transit key {} (type {}): {} is primary",
                key.path(),
                key.key_type,
                shown(primary)
            ));
        }
        let previous = key
            .versions
            .get(&(primary.id - 1))
            .map_or_else(|| "the previous version".to_owned(), shown);
        Ok(format!(
            "rotated (Transit rotate): {} is now primary; {previous} stays enabled for decryption{REFRESH_HINT}",
            shown(primary),
        ))
    }

    async fn list(&self) -> Result<Listing, AdminError> {
        let key = self.transit.read_key().await.map_err(AdminError::root)?;
        Ok(Listing {
            versions: key.versions.values().map(row).collect(),
            last_column: None,
            footer: vec![format!(
                "# Transit key {} ({}): min_decryption_version {}, min_available_version {}",
                key.path(),
                key.key_type,
                key.min_decryption,
                key.min_available
            )],
            ignored_objects: None,
        })
    }

    async fn disable(&self, id: u32, _now: SystemTime) -> Result<String, AdminError> {
        let key = self.transit.disable(id).await.map_err(AdminError::root)?;
        let selector = &self.selector;
        Ok(format!(
            "disabled {} (min_decryption_version {}): seeds wrapped by it no longer decrypt{REFRESH_HINT}. Undo with `kube-kms key enable {id} {selector}`; erase it for good with `kube-kms key destroy {id} {selector}`",
            shown_id(&key, id),
            key.min_decryption
        ))
    }

    async fn enable(&self, id: u32, _now: SystemTime) -> Result<String, AdminError> {
        let key = self.transit.enable(id).await.map_err(AdminError::root)?;
        Ok(format!(
            "enabled {} (min_decryption_version {}): seeds wrapped by it decrypt again{REFRESH_HINT}",
            shown_id(&key, id),
            key.min_decryption
        ))
    }

    /// The floors decide first: an out-of-order destroy is refused with its
    /// reason before any report is read. Transit keeps no disable time: the
    /// reports must be newer than [`TransitKey::writes_ended`].
    async fn gate_target(&self, id: u32) -> Result<Option<GateTarget>, AdminError> {
        let current = self.transit.read_key().await.map_err(AdminError::root)?;
        transit::plan_destroy(&current, id).map_err(AdminError::root)?;
        let writes_ended = current.writes_ended();
        if let Some(at) = writes_ended {
            locked(&self.notes).push(format!(
                "Transit keeps no disable time: scan reports must be taken after {} (the creation of version {}, the oldest enabled one, plus {}s for plugins and kube-apiserver to stop writing under older versions)",
                humantime::format_rfc3339_seconds(at),
                current.min_decryption,
                transit::WRITES_SETTLE.as_secs()
            ));
        }
        let target = current.versions.get(&id).map(|v| GateTarget {
            key_id: v.key_id.clone(),
            state: v.state,
            disabled_at: writes_ended,
        });
        *locked(&self.judged) = Some(current);
        Ok(target)
    }

    async fn destroy(
        &self,
        id: u32,
        _now: SystemTime,
        _judged: Option<SystemTime>,
        _options: DestroyOptions,
    ) -> Result<String, AdminError> {
        let judged = locked(&self.judged).take();
        let judged = match judged {
            Some(judged) => judged,
            None => self.transit.read_key().await.map_err(AdminError::root)?,
        };
        let key = self
            .transit
            .destroy(id, &judged)
            .await
            .map_err(AdminError::root)?;
        Ok(format!(
            "destroyed {} (Transit trim, min_available_version {}): its key material is gone from Vault for good; the version number and key_id are never reused",
            shown_id(&key, id),
            key.min_available
        ))
    }

    fn take_notes(&self) -> Vec<String> {
        std::mem::take(&mut *locked(&self.notes))
    }
}
