//! The stale-key report: kms v2 values under a key_id other than the current
//! one(s), counted by key_id, and the objects to rewrite. Read out of a
//! finished scan; it is a rotation aid, not verification.

use std::collections::BTreeMap;

use super::audit::{AuditResult, Finding, GroupCounts};
use super::classify::Provider;
use super::resource::object_name;

/// Stale kms v2 values: under a key_id other than the current one(s).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StaleReport {
    /// The current key_id(s).
    pub current: Vec<String>,
    /// Values (latest and history) by stale key_id.
    pub by_key_id: BTreeMap<String, GroupCounts>,
}

impl StaleReport {
    /// Latest values under a stale key_id (the objects to rewrite).
    pub fn latest(&self) -> u64 {
        self.by_key_id.values().map(|counts| counts.latest).sum()
    }
}

/// The stale-key report of a scan run with a current key_id
/// ([`super::audit::LedgerOptions::allowed_key_ids`]); `None` without one.
pub fn stale_report(result: &AuditResult) -> Option<StaleReport> {
    let allowed = result.options().allowed_key_ids.as_ref()?;
    let mut report = StaleReport {
        current: allowed
            .iter()
            .map(|id| String::from_utf8_lossy(id).into_owned())
            .collect(),
        by_key_id: BTreeMap::new(),
    };
    for value in result.values() {
        if value.class.provider != Provider::KmsV2 {
            continue;
        }
        let key_id = value.class.key_id.map_or(&[][..], |id| result.string(id));
        if allowed.iter().any(|allowed| allowed.as_slice() == key_id) {
            continue;
        }
        let counts = report
            .by_key_id
            .entry(String::from_utf8_lossy(key_id).into_owned())
            .or_default();
        if value.latest {
            counts.latest += 1;
        } else {
            counts.history += 1;
        }
    }
    Some(report)
}

/// The objects to rewrite: `namespace/name` (or `name` for cluster-scoped
/// resources) of every latest value under a stale key_id, in key order.
pub fn stale_objects(result: &AuditResult) -> Vec<String> {
    let prefix = result.options().prefix.clone();
    result
        .values()
        .filter(|value| value.latest && value.finding == Some(Finding::StaleKeyId))
        .filter_map(|value| object_name(value.key, &prefix))
        .collect()
}
