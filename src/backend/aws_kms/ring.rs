//! The KEK versions of one kube-kms ring in AWS KMS: where they live, how
//! their key_ids are formed, how their state maps onto KMS key states, and
//! the `kube-kms key` operations on them.
//!
//! Layout, for an alias prefix `P` (default `alias/kube-kms`):
//! - version `N` is one symmetric KMS key (`SYMMETRIC_DEFAULT`, generated
//!   inside KMS, never exported) named by the alias `P/vN`, tagged
//!   `kube-kms:version=N` and `kube-kms:ring=P`;
//! - the alias `P/primary` points at the primary version's key (a rotation
//!   moves it with one `UpdateAlias`, so every reader sees the old or the new
//!   primary, never none);
//! - the state is the KMS key state: `Enabled` is enabled (primary if
//!   `P/primary` points at it), `Disabled` is disabled, `PendingDeletion` is
//!   destroyed (KMS deletes the key after the waiting period, 7 to 30 days;
//!   until then `aws kms cancel-key-deletion` can still undo it); any other
//!   KMS state (`Unavailable`, `Creating`, ...) counts as disabled;
//! - the time of the last disable is the tag `kube-kms:disabled-at`
//!   (RFC 3339), which the destroy gate compares with scan reports.
//!
//! The key_id of version `N` is `kk-aws-vN-<KMS key id>` (the key id is the
//! KMS key's UUID, e.g. `kk-aws-v2-1234abcd-12ab-34cd-56ef-1234567890ab`):
//! public, stable, never reused for another key (KMS never reuses a key id),
//! and it names the exact KMS key that Decrypt passes as `KeyId`.
//!
//! Nothing is stored outside KMS: every plugin and every `kube-kms key`
//! command reads the same aliases, so there is no file to distribute.
use std::collections::BTreeMap;
use std::time::SystemTime;

use aws_sdk_kms::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kms::Client;

use crate::keyring::{KeyState, KeyringError};

/// Every AWS KMS key_id starts with this.
pub const KEY_ID_PREFIX: &str = "kk-aws-v";
/// The alias prefix used when none is given.
pub const DEFAULT_ALIAS_PREFIX: &str = "alias/kube-kms";
/// Tag holding the version number.
pub const TAG_VERSION: &str = "kube-kms:version";
/// Tag holding the alias prefix of the ring.
pub const TAG_RING: &str = "kube-kms:ring";
/// Tag holding the time of the last disable (RFC 3339).
pub const TAG_DISABLED_AT: &str = "kube-kms:disabled-at";
/// The alias name (after the prefix) of the primary.
const PRIMARY_ALIAS: &str = "primary";

/// Why a ring operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// The alias prefix is not usable.
    #[error("invalid alias prefix {prefix:?}: {problem}")]
    BadPrefix {
        /// The prefix given.
        prefix: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A KMS call failed (network, permissions, throttling, ...).
    #[error("AWS KMS {operation} failed: {detail}")]
    Kms {
        /// The API call.
        operation: &'static str,
        /// The error code KMS returned, if it answered.
        code: Option<String>,
        /// The SDK's description (no request contents).
        detail: String,
    },
    /// KMS answered without a field it always sends.
    #[error("AWS KMS {operation} answered without {field}")]
    Incomplete {
        /// The API call.
        operation: &'static str,
        /// The missing field.
        field: &'static str,
    },
    /// The aliases do not describe a valid ring.
    #[error("the kube-kms keys under {prefix} are inconsistent: {problem}")]
    Inconsistent {
        /// The alias prefix.
        prefix: String,
        /// What is wrong.
        problem: String,
    },
    /// No version exists under the prefix.
    #[error("no kube-kms keys under {prefix}: create the first with `kube-kms key rotate --backend aws-kms --aws-alias-prefix {prefix}`")]
    Empty {
        /// The alias prefix.
        prefix: String,
    },
    /// `key init` on a ring that exists.
    #[error("kube-kms keys already exist under {prefix} (versions {versions}); use `kube-kms key rotate` for a new version")]
    AlreadyExists {
        /// The alias prefix.
        prefix: String,
        /// The version numbers found.
        versions: String,
    },
    /// The version number names no version.
    #[error("no version {id} under {prefix} (see `kube-kms key list`)")]
    UnknownVersion {
        /// The alias prefix.
        prefix: String,
        /// The version asked for.
        id: u32,
    },
    /// The state machine refuses the change.
    #[error(transparent)]
    Refused(#[from] KeyringError),
    /// Another command changed the ring at the same time.
    #[error("another kube-kms command changed the keys under {prefix} at the same time ({detail}); run the command again")]
    Race {
        /// The alias prefix.
        prefix: String,
        /// What collided.
        detail: String,
    },
}

impl RingError {
    /// The KMS error code, when KMS answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            RingError::Kms { code, .. } => code.as_deref(),
            _ => None,
        }
    }
}

/// Wraps an SDK error with the operation that failed.
pub(crate) fn kms_error<E, R>(operation: &'static str, error: SdkError<E, R>) -> RingError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    RingError::Kms {
        operation,
        code: error
            .as_service_error()
            .and_then(|e| e.code())
            .map(str::to_owned),
        detail: DisplayErrorContext(&error).to_string(),
    }
}

/// Checks an alias prefix: `alias/` followed by letters, digits, `/ _ -`,
/// not AWS's reserved `alias/aws/`, no trailing `/`, short enough for the
/// longest alias built from it.
pub fn validate_prefix(prefix: &str) -> Result<(), RingError> {
    let bad = |problem| {
        Err(RingError::BadPrefix {
            prefix: prefix.to_owned(),
            problem,
        })
    };
    let Some(rest) = prefix.strip_prefix("alias/") else {
        return bad("it must start with alias/");
    };
    if rest.is_empty() || rest.ends_with('/') || rest.contains("//") {
        return bad("it needs a name after alias/, without empty segments or a trailing /");
    }
    if prefix.starts_with("alias/aws/") {
        return bad("alias/aws/ is reserved for AWS managed keys");
    }
    if !rest
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-'))
    {
        return bad("only letters, digits, '/', '_' and '-' are allowed");
    }
    // "/v4294967295" is the longest suffix; KMS allows 256 bytes.
    if prefix.len() + 12 > 256 {
        return bad("it is too long (at most 244 bytes)");
    }
    Ok(())
}

/// The key_id of version `version` held by the KMS key `kms_key_id`.
pub fn key_id_for(version: u32, kms_key_id: &str) -> String {
    format!("{KEY_ID_PREFIX}{version}-{kms_key_id}")
}

/// Splits an AWS key_id into version number and KMS key id; `None` unless it
/// is `kk-aws-vN-ID` with `N` in 1..=u32::MAX without leading zeros and
/// `ID` 1 to 128 bytes of letters, digits and `-`.
pub fn parse_key_id(key_id: &str) -> Option<(u32, &str)> {
    let rest = key_id.strip_prefix(KEY_ID_PREFIX)?;
    let (number, kms_key_id) = rest.split_once('-')?;
    if number.is_empty() || number.starts_with('0') || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let version: u32 = number.parse().ok()?;
    if kms_key_id.is_empty()
        || kms_key_id.len() > 128
        || !kms_key_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return None;
    }
    Some((version, kms_key_id))
}

/// One version as found in KMS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsVersion {
    /// Version number (from the alias `P/vN`).
    pub id: u32,
    /// The public key_id (`kk-aws-vN-<KMS key id>`).
    pub key_id: String,
    /// kube-kms state derived from the KMS key state and the primary alias.
    pub state: KeyState,
    /// The KMS key id (UUID).
    pub kms_key_id: String,
    /// The KMS key ARN (what Encrypt and Decrypt pass as `KeyId`).
    pub arn: String,
    /// The KMS key state as KMS names it (`Enabled`, `PendingDeletion`, ...).
    pub kms_state: String,
    /// When KMS created the key.
    pub created: Option<SystemTime>,
    /// When kube-kms last disabled it (tag), if read and present.
    pub disabled_at: Option<SystemTime>,
}

/// The versions of one ring, by number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsRing {
    /// The alias prefix.
    pub prefix: String,
    /// Versions by number.
    pub versions: BTreeMap<u32, AwsVersion>,
}

impl AwsRing {
    /// The primary version, if one is usable.
    pub fn primary(&self) -> Option<&AwsVersion> {
        self.versions
            .values()
            .find(|version| version.state == KeyState::Primary)
    }

    fn version(&self, id: u32) -> Result<&AwsVersion, RingError> {
        self.versions
            .get(&id)
            .ok_or_else(|| RingError::UnknownVersion {
                prefix: self.prefix.clone(),
                id,
            })
    }
}

/// What an alias under the prefix names.
#[derive(Debug, PartialEq, Eq)]
enum AliasRole {
    Version(u32),
    Primary,
}

fn alias_role(prefix: &str, alias: &str) -> Option<AliasRole> {
    let name = alias.strip_prefix(prefix)?.strip_prefix('/')?;
    if name == PRIMARY_ALIAS {
        return Some(AliasRole::Primary);
    }
    let number = name.strip_prefix('v')?;
    if number.is_empty() || number.starts_with('0') || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    number.parse().ok().map(AliasRole::Version)
}

fn version_alias(prefix: &str, id: u32) -> String {
    format!("{prefix}/v{id}")
}

fn primary_alias(prefix: &str) -> String {
    format!("{prefix}/{PRIMARY_ALIAS}")
}

fn to_system_time(time: &aws_sdk_kms::primitives::DateTime) -> Option<SystemTime> {
    SystemTime::try_from(*time).ok()
}

/// Maps a KMS key state onto the kube-kms state (`primary` decided by the caller).
pub fn state_from_kms(kms_state: &str) -> KeyState {
    match kms_state {
        "Enabled" => KeyState::Enabled,
        "PendingDeletion" | "PendingReplicaDeletion" => KeyState::Destroyed,
        _ => KeyState::Disabled,
    }
}

/// Reads the ring under `prefix`: one paginated `ListAliases`, one
/// `DescribeKey` per version, and with `with_tags` one `ListResourceTags`
/// per version (for `disabled_at`).
pub async fn fetch(client: &Client, prefix: &str, with_tags: bool) -> Result<AwsRing, RingError> {
    let mut version_targets: BTreeMap<u32, String> = BTreeMap::new();
    let mut primary_target: Option<String> = None;
    let mut marker: Option<String> = None;
    loop {
        let page = client
            .list_aliases()
            .set_marker(marker.take())
            .limit(100)
            .send()
            .await
            .map_err(|e| kms_error("ListAliases", e))?;
        for alias in page.aliases() {
            let (Some(name), Some(target)) = (alias.alias_name(), alias.target_key_id()) else {
                continue;
            };
            match alias_role(prefix, name) {
                Some(AliasRole::Version(id)) => {
                    version_targets.insert(id, target.to_owned());
                }
                Some(AliasRole::Primary) => primary_target = Some(target.to_owned()),
                None => {}
            }
        }
        match page.next_marker() {
            Some(next) if page.truncated() && !next.is_empty() => marker = Some(next.to_owned()),
            _ => break,
        }
    }

    let mut versions = BTreeMap::new();
    let mut seen_keys: BTreeMap<String, u32> = BTreeMap::new();
    for (id, target) in version_targets {
        if let Some(other) = seen_keys.insert(target.clone(), id) {
            return Err(RingError::Inconsistent {
                prefix: prefix.to_owned(),
                problem: format!("versions {other} and {id} name the same KMS key {target}"),
            });
        }
        let described = client
            .describe_key()
            .key_id(&target)
            .send()
            .await
            .map_err(|e| kms_error("DescribeKey", e))?;
        let metadata = described.key_metadata().ok_or(RingError::Incomplete {
            operation: "DescribeKey",
            field: "KeyMetadata",
        })?;
        let kms_state = metadata
            .key_state()
            .map(|state| state.as_str().to_owned())
            .unwrap_or_default();
        let mut state = state_from_kms(&kms_state);
        if state == KeyState::Enabled && primary_target.as_deref() == Some(metadata.key_id()) {
            state = KeyState::Primary;
        }
        let disabled_at = if with_tags {
            read_disabled_at(client, metadata.key_id()).await?
        } else {
            None
        };
        versions.insert(
            id,
            AwsVersion {
                id,
                key_id: key_id_for(id, metadata.key_id()),
                state,
                kms_key_id: metadata.key_id().to_owned(),
                arn: metadata.arn().unwrap_or(metadata.key_id()).to_owned(),
                kms_state,
                created: metadata.creation_date().and_then(to_system_time),
                disabled_at,
            },
        );
    }
    Ok(AwsRing {
        prefix: prefix.to_owned(),
        versions,
    })
}

async fn read_disabled_at(
    client: &Client,
    kms_key_id: &str,
) -> Result<Option<SystemTime>, RingError> {
    let tags = client
        .list_resource_tags()
        .key_id(kms_key_id)
        .send()
        .await
        .map_err(|e| kms_error("ListResourceTags", e))?;
    Ok(tags
        .tags()
        .iter()
        .find(|tag| tag.tag_key() == TAG_DISABLED_AT)
        .and_then(|tag| humantime::parse_rfc3339(tag.tag_value()).ok()))
}

mod ops;

pub use ops::{destroy, disable, enable, init, rotate, Rotation};

#[cfg(test)]
mod tests;
