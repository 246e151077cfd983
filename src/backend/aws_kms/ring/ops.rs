//! The `kube-kms key` changes to a ring in AWS KMS: [`init`], [`rotate`]
//! (the alias `P/vN` as the compare-and-swap), [`disable`], [`enable`] and
//! [`destroy`] (`ScheduleKeyDeletion`), under the keyring file's rules.
use std::time::{Duration, SystemTime};

use aws_sdk_kms::types::{KeySpec, KeyUsageType, Tag};
use aws_sdk_kms::Client;

use super::{
    fetch, kms_error, primary_alias, validate_prefix, version_alias, AwsRing, AwsVersion,
    RingError, PRIMARY_ALIAS, TAG_DISABLED_AT, TAG_RING, TAG_VERSION,
};
use crate::keyring::ops::Transition;
use crate::keyring::KeyringError;

fn tag(key: &str, value: impl Into<String>) -> Result<Tag, RingError> {
    Tag::builder()
        .tag_key(key)
        .tag_value(value)
        .build()
        .map_err(|_| RingError::Incomplete {
            operation: "TagResource",
            field: "tag",
        })
}

/// Creates the KMS key of version `id` and its alias `P/vN` (not primary).
async fn create_version(client: &Client, prefix: &str, id: u32) -> Result<String, RingError> {
    let created = client
        .create_key()
        .description(format!("kube-kms KEK version {id} of {prefix}"))
        .key_usage(KeyUsageType::EncryptDecrypt)
        .key_spec(KeySpec::SymmetricDefault)
        .tags(tag(TAG_VERSION, id.to_string())?)
        .tags(tag(TAG_RING, prefix)?)
        .send()
        .await
        .map_err(|e| kms_error("CreateKey", e))?;
    let kms_key_id = created
        .key_metadata()
        .map(|metadata| metadata.key_id().to_owned())
        .ok_or(RingError::Incomplete {
            operation: "CreateKey",
            field: "KeyMetadata",
        })?;
    if let Err(error) = client
        .create_alias()
        .alias_name(version_alias(prefix, id))
        .target_key_id(&kms_key_id)
        .send()
        .await
    {
        let error = kms_error("CreateAlias", error);
        // The new key was never used: schedule it away rather than leave an orphan.
        let _ = client
            .schedule_key_deletion()
            .key_id(&kms_key_id)
            .pending_window_in_days(7)
            .send()
            .await;
        if error.code() == Some("AlreadyExistsException") {
            return Err(RingError::Race {
                prefix: prefix.to_owned(),
                detail: format!("version {id} was created by someone else"),
            });
        }
        return Err(error);
    }
    Ok(kms_key_id)
}

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// The new primary.
    pub primary: AwsVersion,
    /// The previous primary (now enabled).
    pub previous: AwsVersion,
}

/// Creates version 1 and makes it primary. Refuses if any version exists.
pub async fn init(client: &Client, prefix: &str) -> Result<AwsVersion, RingError> {
    validate_prefix(prefix)?;
    let ring = fetch(client, prefix, false).await?;
    if !ring.versions.is_empty() {
        return Err(RingError::AlreadyExists {
            prefix: prefix.to_owned(),
            versions: ring
                .versions
                .keys()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let kms_key_id = create_version(client, prefix, 1).await?;
    client
        .create_alias()
        .alias_name(primary_alias(prefix))
        .target_key_id(&kms_key_id)
        .send()
        .await
        .map_err(|e| kms_error("CreateAlias", e))?;
    fetched_version(client, prefix, 1).await
}

async fn fetched_version(client: &Client, prefix: &str, id: u32) -> Result<AwsVersion, RingError> {
    let ring = fetch(client, prefix, true).await?;
    ring.version(id).cloned()
}

/// How many times a rotation that lost the race for a version number tries
/// the next one.
const ROTATE_ATTEMPTS: u32 = 8;

/// Adds version N+1 and makes it primary; the old primary stays enabled.
///
/// The alias `P/vN` is the compare-and-swap: `CreateAlias` fails when it
/// exists, so of two rotations at once only one gets version N+1; the other
/// schedules its unused new key for deletion, reads the ring again and tries
/// N+2 (up to `ROTATE_ATTEMPTS` times). No version's key_id is lost.
pub async fn rotate(client: &Client, prefix: &str) -> Result<Rotation, RingError> {
    validate_prefix(prefix)?;
    let mut attempt = 1;
    loop {
        match rotate_once(client, prefix).await {
            Err(RingError::Race { .. }) if attempt < ROTATE_ATTEMPTS => {
                attempt += 1;
                let mut pause = [0u8; 1];
                let _ = getrandom::getrandom(&mut pause);
                tokio::time::sleep(Duration::from_millis(20 + u64::from(pause[0]))).await;
            }
            result => return result,
        }
    }
}

async fn rotate_once(client: &Client, prefix: &str) -> Result<Rotation, RingError> {
    let ring = fetch(client, prefix, false).await?;
    let previous = ring.primary().cloned().ok_or_else(|| no_primary(&ring))?;
    let highest = ring.versions.keys().next_back().copied().unwrap_or(0);
    let id = highest.checked_add(1).ok_or_else(|| {
        RingError::Refused(KeyringError::Refused {
            action: "rotate to",
            id: highest,
            reason: "version numbers are exhausted; use a new alias prefix".into(),
        })
    })?;
    let kms_key_id = create_version(client, prefix, id).await?;
    client
        .update_alias()
        .alias_name(primary_alias(prefix))
        .target_key_id(&kms_key_id)
        .send()
        .await
        .map_err(|e| kms_error("UpdateAlias", e))?;
    let ring = fetch(client, prefix, true).await?;
    Ok(Rotation {
        primary: ring.version(id)?.clone(),
        previous: ring.version(previous.id)?.clone(),
    })
}

fn no_primary(ring: &AwsRing) -> RingError {
    if ring.versions.is_empty() {
        return RingError::Empty {
            prefix: ring.prefix.clone(),
        };
    }
    RingError::Inconsistent {
        prefix: ring.prefix.clone(),
        problem: format!(
            "no usable primary: {}/{PRIMARY_ALIAS} is missing or points at a key that is not an enabled version",
            ring.prefix
        ),
    }
}

/// Disables version `id` (records `disabled_at`, then `DisableKey`).
pub async fn disable(
    client: &Client,
    prefix: &str,
    id: u32,
    now: SystemTime,
) -> Result<AwsVersion, RingError> {
    let ring = fetch(client, prefix, false).await?;
    let version = ring.version(id)?;
    Transition::Disable.check(id, version.state)?;
    // Whole seconds, as the keyring file records it.
    let seconds = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(seconds);
    client
        .tag_resource()
        .key_id(&version.kms_key_id)
        .tags(tag(
            TAG_DISABLED_AT,
            humantime::format_rfc3339(at).to_string(),
        )?)
        .send()
        .await
        .map_err(|e| kms_error("TagResource", e))?;
    client
        .disable_key()
        .key_id(&version.kms_key_id)
        .send()
        .await
        .map_err(|e| kms_error("DisableKey", e))?;
    fetched_version(client, prefix, id).await
}

/// Enables a disabled version again (`EnableKey`, then drops `disabled_at`).
pub async fn enable(client: &Client, prefix: &str, id: u32) -> Result<AwsVersion, RingError> {
    let ring = fetch(client, prefix, false).await?;
    let version = ring.version(id)?;
    Transition::Enable.check(id, version.state)?;
    client
        .enable_key()
        .key_id(&version.kms_key_id)
        .send()
        .await
        .map_err(|e| kms_error("EnableKey", e))?;
    client
        .untag_resource()
        .key_id(&version.kms_key_id)
        .tag_keys(TAG_DISABLED_AT)
        .send()
        .await
        .map_err(|e| kms_error("UntagResource", e))?;
    fetched_version(client, prefix, id).await
}

/// Destroys a disabled version: `ScheduleKeyDeletion` with a waiting period
/// of `pending_days` (7..=30). `expected_disabled_at`: the disable time the
/// caller's checks were made against; refused if it changed since.
pub async fn destroy(
    client: &Client,
    prefix: &str,
    id: u32,
    pending_days: i32,
    expected_disabled_at: Option<SystemTime>,
) -> Result<AwsVersion, RingError> {
    let ring = fetch(client, prefix, true).await?;
    let version = ring.version(id)?;
    Transition::Destroy.check(id, version.state)?;
    if expected_disabled_at.is_some() && version.disabled_at != expected_disabled_at {
        return Err(RingError::Refused(KeyringError::Refused {
            action: "destroy",
            id,
            reason: "the key changed while the scan reports were checked; run the command again"
                .into(),
        }));
    }
    client
        .schedule_key_deletion()
        .key_id(&version.kms_key_id)
        .pending_window_in_days(pending_days)
        .send()
        .await
        .map_err(|e| kms_error("ScheduleKeyDeletion", e))?;
    fetched_version(client, prefix, id).await
}
