//! `kube-kms key rotate|list|disable|enable|destroy --backend aws-kms`
//! ([`AwsKmsAdmin`]): the operations of [`super::ring`] on the versions in
//! AWS KMS, under the keyring file's state-machine rules.
use std::time::SystemTime;

use aws_sdk_kms::Client;

use super::ring::{self, AwsVersion, RingError};
use super::{connect, format_time, AwsKmsConfig, AwsKmsError};
use crate::backend::admin::{
    describe, AdminError, DestroyOptions, GateTarget, KeyAdmin, ListedVersion, Listing,
};

/// How running plugins learn of a change.
const REFRESH_HINT: &str =
    " (running plugins pick it up within --aws-refresh-interval, or at once on SIGHUP)";

/// The key operations on one ring (alias prefix) in AWS KMS.
pub struct AwsKmsAdmin {
    client: Client,
    prefix: String,
    /// The flags that name this ring in a suggested command.
    selector: String,
}

impl std::fmt::Debug for AwsKmsAdmin {
    // Not the client's: its configuration is the SDK's to show.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsKmsAdmin")
            .field("alias_prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl AwsKmsAdmin {
    /// Checks the alias prefix and builds the KMS client of `config`;
    /// `selector`: the flags that name the ring again in suggested commands.
    pub async fn connect(config: &AwsKmsConfig, selector: String) -> Result<Self, AwsKmsError> {
        ring::validate_prefix(&config.alias_prefix)?;
        Ok(Self {
            client: connect(config).await?,
            prefix: config.alias_prefix.clone(),
            selector,
        })
    }
}

fn shown(version: &AwsVersion) -> String {
    describe(version.id, &version.key_id)
}

fn row(v: &AwsVersion) -> ListedVersion {
    let mut json = serde_json::json!({
        "id": v.id,
        "key_id": v.key_id,
        "state": v.state.as_str(),
        "created": format_time(v.created),
        "kms_key_arn": v.arn,
        "kms_state": v.kms_state,
    });
    if let (Some(object), Some(_)) = (json.as_object_mut(), v.disabled_at) {
        object.insert("disabled_at".into(), format_time(v.disabled_at).into());
    }
    ListedVersion {
        id: v.id,
        state: v.state,
        key_id: v.key_id.clone(),
        created: format_time(v.created),
        last: v.kms_state.clone(),
        json,
    }
}

impl KeyAdmin for AwsKmsAdmin {
    async fn rotate(&self, _now: SystemTime) -> Result<String, AdminError> {
        let (client, prefix) = (&self.client, self.prefix.as_str());
        let empty = ring::fetch(client, prefix, false)
            .await
            .map_err(AdminError::root)?
            .versions
            .is_empty();
        // Another rotation may create version 1 first: then rotate on it.
        let created = if empty {
            match ring::init(client, prefix).await {
                Ok(primary) => Some(primary),
                Err(RingError::Race { .. } | RingError::AlreadyExists { .. }) => None,
                Err(error) => return Err(AdminError::root(error)),
            }
        } else {
            None
        };
        if let Some(primary) = created {
            return Ok(format!(
                "created version 1 under {prefix} in AWS KMS: {} is primary (KMS key {})",
                shown(&primary),
                primary.arn
            ));
        }
        let rotation = ring::rotate(client, prefix)
            .await
            .map_err(AdminError::root)?;
        Ok(format!(
            "rotated: {} is now primary; {} stays enabled for decryption{REFRESH_HINT}",
            shown(&rotation.primary),
            shown(&rotation.previous),
        ))
    }

    async fn list(&self) -> Result<Listing, AdminError> {
        let ring = ring::fetch(&self.client, &self.prefix, true)
            .await
            .map_err(AdminError::root)?;
        Ok(Listing {
            versions: ring.versions.values().map(row).collect(),
            last_column: Some("KMS_STATE"),
            footer: Vec::new(),
            ignored_objects: None,
        })
    }

    async fn disable(&self, id: u32, now: SystemTime) -> Result<String, AdminError> {
        let version = ring::disable(&self.client, &self.prefix, id, now)
            .await
            .map_err(AdminError::root)?;
        let selector = &self.selector;
        Ok(format!(
            "disabled {} (DisableKey): seeds wrapped by it no longer decrypt{REFRESH_HINT}. Undo with `kube-kms key enable {id} {selector}`; erase it for good with `kube-kms key destroy {id} {selector}`",
            shown(&version),
        ))
    }

    async fn enable(&self, id: u32, _now: SystemTime) -> Result<String, AdminError> {
        let version = ring::enable(&self.client, &self.prefix, id)
            .await
            .map_err(AdminError::root)?;
        Ok(format!(
            "enabled {} (EnableKey): seeds wrapped by it decrypt again{REFRESH_HINT}",
            shown(&version)
        ))
    }

    async fn gate_target(&self, id: u32) -> Result<Option<GateTarget>, AdminError> {
        let current = ring::fetch(&self.client, &self.prefix, true)
            .await
            .map_err(AdminError::root)?;
        Ok(current.versions.get(&id).map(|v| GateTarget {
            key_id: v.key_id.clone(),
            state: v.state,
            disabled_at: v.disabled_at,
        }))
    }

    async fn destroy(
        &self,
        id: u32,
        _now: SystemTime,
        judged: Option<SystemTime>,
        options: DestroyOptions,
    ) -> Result<String, AdminError> {
        let days = options.pending_window_days;
        let version = ring::destroy(&self.client, &self.prefix, id, days, judged)
            .await
            .map_err(AdminError::root)?;
        Ok(format!(
            "destroyed {}: KMS deletes the key after {days} days (ScheduleKeyDeletion); until then `aws kms cancel-key-deletion --key-id {}` can undo it. The version number and key_id are never reused",
            shown(&version),
            version.arn
        ))
    }
}
