//! The `kube-kms key` changes to a Transit key ([`Transit::rotate_or_create`],
//! `disable`, `enable`, `destroy`) and the plans that check each against
//! Transit's floors first (`min_decryption_version`,
//! `min_available_version`): out-of-order changes are refused with the
//! reason.
use hyper::Method;

use super::{Transit, TransitError, TransitKey, CREATE_TYPE};
use crate::keyring::KeyState;

impl Transit {
    /// Creates the key (type [`CREATE_TYPE`]) if missing, else rotates it.
    /// Returns the key after the change and whether it was created.
    pub async fn rotate_or_create(&self) -> Result<(TransitKey, bool), TransitError> {
        let created = match self.read_key().await {
            Ok(_) => {
                let path = format!("{}/keys/{}/rotate", self.mount, self.key);
                self.call(Method::POST, &path, Some(b"{}")).await?;
                false
            }
            Err(TransitError::NoKey { .. }) => {
                let path = format!("{}/keys/{}", self.mount, self.key);
                let body = serde_json::to_vec(&serde_json::json!({ "type": CREATE_TYPE }))
                    .unwrap_or_default();
                self.call(Method::POST, &path, Some(&body)).await?;
                true
            }
            Err(error) => return Err(error),
        };
        Ok((self.read_key().await?, created))
    }

    async fn configure(&self, settings: serde_json::Value) -> Result<(), TransitError> {
        let path = format!("{}/keys/{}/config", self.mount, self.key);
        let body = serde_json::to_vec(&settings).unwrap_or_default();
        self.call(Method::POST, &path, Some(&body)).await?;
        Ok(())
    }

    /// Disables version `id`: raises `min_decryption_version` to `id + 1`.
    pub async fn disable(&self, id: u32) -> Result<TransitKey, TransitError> {
        let key = self.read_key().await?;
        plan_disable(&key, id)?;
        // Transit wants min_encryption_version (once set, e.g. by a destroy)
        // at or above min_decryption_version; kube-kms always encrypts under
        // the latest version, which is above both.
        let settings = if key.min_encryption != 0 && key.min_encryption < id + 1 {
            serde_json::json!({ "min_decryption_version": id + 1, "min_encryption_version": id + 1 })
        } else {
            serde_json::json!({ "min_decryption_version": id + 1 })
        };
        self.configure(settings).await?;
        self.read_key().await
    }

    /// Enables version `id`: lowers `min_decryption_version` to `id`.
    pub async fn enable(&self, id: u32) -> Result<TransitKey, TransitError> {
        let key = self.read_key().await?;
        plan_enable(&key, id)?;
        self.configure(serde_json::json!({ "min_decryption_version": id }))
            .await?;
        self.read_key().await
    }

    /// Destroys version `id`: raises `min_encryption_version` if needed
    /// (Transit's trim requires it) and trims to `id + 1`.
    /// `judged`: the key as the destroy gate saw it; refused if the floors
    /// moved since.
    pub async fn destroy(&self, id: u32, judged: &TransitKey) -> Result<TransitKey, TransitError> {
        let key = self.read_key().await?;
        plan_destroy(&key, id)?;
        if key.min_decryption != judged.min_decryption || key.min_available != judged.min_available
        {
            return Err(TransitError::Refused {
                action: "destroy",
                id,
                key: key.path(),
                reason: "the key's versions changed while the scan reports were checked; run the command again".into(),
            });
        }
        // Transit trims only below min_encryption_version, which must stay
        // at or above min_decryption_version. Encryption always names the
        // latest version, which is above both.
        let floor = (id + 1).max(key.min_decryption);
        if key.min_encryption < floor {
            self.configure(serde_json::json!({ "min_encryption_version": floor }))
                .await?;
        }
        let path = format!("{}/keys/{}/trim", self.mount, self.key);
        let body = serde_json::to_vec(&serde_json::json!({ "min_available_version": id + 1 }))
            .unwrap_or_default();
        self.call(Method::POST, &path, Some(&body)).await?;
        self.read_key().await
    }
}

fn refused(action: &'static str, id: u32, key: &TransitKey, reason: String) -> TransitError {
    TransitError::Refused {
        action,
        id,
        key: key.path(),
        reason,
    }
}

fn state_of(key: &TransitKey, action: &'static str, id: u32) -> Result<KeyState, TransitError> {
    key.versions.get(&id).map(|v| v.state).ok_or_else(|| {
        refused(
            action,
            id,
            key,
            format!("no such version (the key has versions 1 to {})", key.latest),
        )
    })
}

/// Whether disabling `id` is possible: only the lowest enabled version,
/// never the primary (Transit's `min_decryption_version` is a floor).
pub fn plan_disable(key: &TransitKey, id: u32) -> Result<(), TransitError> {
    match state_of(key, "disable", id)? {
        KeyState::Primary => Err(refused(
            "disable",
            id,
            key,
            "it is the primary; rotate first (`kube-kms key rotate`), then disable it".into(),
        )),
        KeyState::Disabled => Err(refused("disable", id, key, "it is already disabled".into())),
        KeyState::Destroyed => Err(refused("disable", id, key, "it is destroyed".into())),
        KeyState::Enabled if id != key.min_decryption => Err(refused(
            "disable",
            id,
            key,
            format!(
                "Transit disables versions in order (min_decryption_version is a floor) and version {} is still enabled below it; disable versions {} to {} first",
                key.min_decryption,
                key.min_decryption,
                id - 1
            ),
        )),
        KeyState::Enabled => Ok(()),
    }
}

/// Whether enabling `id` is possible: only the highest disabled version
/// (lowering the floor further would enable the ones between).
pub fn plan_enable(key: &TransitKey, id: u32) -> Result<(), TransitError> {
    match state_of(key, "enable", id)? {
        KeyState::Primary | KeyState::Enabled => {
            Err(refused("enable", id, key, "it is already enabled".into()))
        }
        KeyState::Destroyed => Err(refused(
            "enable",
            id,
            key,
            "it is destroyed (trimmed from Transit); nothing can enable it".into(),
        )),
        KeyState::Disabled if id + 1 != key.min_decryption => Err(refused(
            "enable",
            id,
            key,
            format!(
                "Transit enables versions in order (min_decryption_version is a floor): enabling it would also enable versions {} to {}; enable version {} first",
                id + 1,
                key.min_decryption - 1,
                key.min_decryption - 1
            ),
        )),
        KeyState::Disabled => Ok(()),
    }
}

/// Whether destroying `id` is possible: only the lowest kept version, and
/// only once disabled (Transit's trim removes every version below a floor).
pub fn plan_destroy(key: &TransitKey, id: u32) -> Result<(), TransitError> {
    match state_of(key, "destroy", id)? {
        KeyState::Primary | KeyState::Enabled => Err(refused(
            "destroy",
            id,
            key,
            "it is enabled; disable it first (`kube-kms key disable`), scan, then destroy".into(),
        )),
        KeyState::Destroyed => Err(refused("destroy", id, key, "it is already destroyed".into())),
        KeyState::Disabled if id != key.lowest_kept() => Err(refused(
            "destroy",
            id,
            key,
            format!(
                "Transit destroys versions in order (trim removes every version below min_available_version) and version {} is still kept below it; destroy versions {} to {} first",
                key.lowest_kept(),
                key.lowest_kept(),
                id - 1
            ),
        )),
        KeyState::Disabled => Ok(()),
    }
}
