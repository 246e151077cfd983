//! What an audit found: [`AuditResult`], every value examined with its
//! classification, whether it is the latest revision of its key, its
//! finding and verification failure; copies outside the keyspace (WAL,
//! leftover snap.db); and the counts the report is made of (per resource,
//! per provider and key, per finding).
use std::collections::HashMap;

use super::ledger::{ClassInfo, CopyRecord, KeyInfo, Record, TOMBSTONE};
use super::policy::{Finding, LedgerOptions};
use crate::inspect::classify::Provider;
use crate::inspect::intern::{FastMap, Interner};
use crate::inspect::verify::{VerifyFailure, VerifySummary};
use crate::inspect::Revision;

/// One value as reported: borrowed from the [`AuditResult`].
#[derive(Debug, Clone, Copy)]
pub struct ValueView<'r> {
    /// The etcd key.
    pub key: &'r [u8],
    /// Its resource.
    pub resource: &'r [u8],
    /// Revision of this value.
    pub revision: Revision,
    /// True if this is the key's current value.
    pub latest: bool,
    /// Classification.
    pub class: &'r ClassInfo,
    /// What is wrong, if anything.
    pub finding: Option<Finding>,
    /// Id of the resource string (see [`AuditResult::string`]).
    pub resource_id: u32,
    /// Id of the classification (same id, same classification).
    pub class_id: u32,
    /// Why verification failed, if it did.
    pub verify_failure: Option<VerifyFailure>,
}

/// Where a copy is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyLocation<'r> {
    /// A raft entry of a WAL segment.
    Wal {
        /// The segment file.
        segment: &'r [u8],
        /// Byte offset of the entry's record.
        offset: u64,
        /// Raft term.
        term: u64,
        /// Raft index.
        index: u64,
    },
    /// A revision in a leftover snap.db.
    SnapDb {
        /// The file.
        file: &'r [u8],
        /// The revision.
        revision: Revision,
    },
}

/// One value read from a copy outside the keyspace, as reported.
#[derive(Debug, Clone, Copy)]
pub struct CopyView<'r> {
    /// The etcd key.
    pub key: &'r [u8],
    /// Its resource.
    pub resource: &'r [u8],
    /// Classification.
    pub class: &'r ClassInfo,
    /// Where it is.
    pub location: CopyLocation<'r>,
    /// What is wrong, if anything.
    pub finding: Option<Finding>,
}

/// Counts of one (resource, provider, name, key_id) group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupCounts {
    /// Latest values.
    pub latest: u64,
    /// History values.
    pub history: u64,
}

/// Per-resource counts, shaped like the fixtures' summaries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceSummary {
    /// Latest values by label (`identity`, `aescbc`, `kms-v2:<key_id>`...).
    pub latest: std::collections::BTreeMap<String, u64>,
    /// History values that are plaintext.
    pub history_plaintext: u64,
    /// History values (any provider).
    pub history: u64,
    /// Keys whose latest revision is a tombstone.
    pub deleted: u64,
    /// Revisions seen, tombstones included.
    pub events: u64,
}

/// The outcome of a scan.
#[derive(Debug)]
pub struct AuditResult {
    pub(super) options: LedgerOptions,
    pub(super) keys: Interner,
    pub(super) key_info: Vec<KeyInfo>,
    pub(super) strings: Interner,
    pub(super) classes: Vec<ClassInfo>,
    pub(super) records: Vec<Record>,
    pub(super) copies: Vec<CopyRecord>,
    pub(super) latest: Vec<bool>,
    pub(super) read_errors: Vec<String>,
    pub(super) out_of_scope: u64,
    pub(super) verify_failures: HashMap<(u32, Revision), VerifyFailure>,
    pub(super) verification: Option<VerifySummary>,
}

impl AuditResult {
    /// What verification did, when the scan verified values.
    pub fn verification(&self) -> Option<&VerifySummary> {
        self.verification.as_ref()
    }

    /// An interned string (name, key_id, kind, resource...).
    pub fn string(&self, id: u32) -> &[u8] {
        self.strings.get(id)
    }

    /// Number of interned strings (ids `0..string_count()`).
    pub fn string_count(&self) -> usize {
        self.strings.len()
    }

    /// An optional interned string as text (lossy for non-UTF-8).
    pub fn text(&self, id: Option<u32>) -> Option<std::borrow::Cow<'_, str>> {
        id.map(|id| String::from_utf8_lossy(self.strings.get(id)))
    }

    /// Non-fatal read problems reported by the source.
    pub fn read_errors(&self) -> &[String] {
        &self.read_errors
    }

    /// Adds a read problem found after the scan (e.g. by the caller).
    pub fn push_read_error(&mut self, message: String) {
        self.read_errors.push(message);
    }

    /// Revisions of keys outside the prefix or the resources in scope.
    pub fn out_of_scope(&self) -> u64 {
        self.out_of_scope
    }

    /// The options the scan ran with.
    pub fn options(&self) -> &LedgerOptions {
        &self.options
    }

    /// The label used in summaries: `kms-v2:<key_id>` for kms v2, else the provider.
    pub fn label(&self, class: &ClassInfo) -> String {
        match (class.provider, class.key_id) {
            (Provider::KmsV2, Some(key_id)) => {
                format!(
                    "kms-v2:{}",
                    String::from_utf8_lossy(self.strings.get(key_id))
                )
            }
            (provider, _) => provider.as_str().to_string(),
        }
    }

    fn finding(
        &self,
        class: &ClassInfo,
        latest: bool,
        verify_failure: Option<VerifyFailure>,
    ) -> Option<Finding> {
        let options = &self.options;
        if class.provider == Provider::Malformed {
            return (latest || !options.ignore_history).then_some(Finding::Malformed);
        }
        if verify_failure.is_some() && (latest || !options.ignore_history) {
            return Some(Finding::VerifyFailed);
        }
        if !latest {
            return (class.provider == Provider::Identity && !options.ignore_history)
                .then_some(Finding::PlaintextHistory);
        }
        if class.provider == Provider::Identity {
            return Some(Finding::Plaintext);
        }
        if let Some(required) = &options.require_provider {
            let name_ok = required.name.as_ref().is_none_or(|name| {
                class
                    .name
                    .is_some_and(|id| self.strings.get(id) == name.as_slice())
            });
            if class.provider != required.provider || !name_ok {
                return Some(Finding::WrongProvider);
            }
        }
        if let (Provider::KmsV2, Some(allowed)) = (class.provider, &options.allowed_key_ids) {
            let key_id = class.key_id.map_or(&[][..], |id| self.strings.get(id));
            if !allowed.iter().any(|allowed| allowed.as_slice() == key_id) {
                return Some(Finding::StaleKeyId);
            }
        }
        None
    }

    /// Every value examined (tombstones excluded), sorted by key then revision.
    pub fn values(&self) -> impl Iterator<Item = ValueView<'_>> + '_ {
        self.records
            .iter()
            .zip(self.latest.iter())
            .filter(|(record, _)| record.class != TOMBSTONE)
            .filter_map(move |(record, &latest)| {
                let class = self.classes.get(record.class as usize)?;
                let resource_id = self
                    .key_info
                    .get(record.key as usize)
                    .map_or(u32::MAX, |info| info.resource);
                let verify_failure = if self.verify_failures.is_empty() {
                    None
                } else {
                    self.verify_failures
                        .get(&(record.key, record.revision))
                        .copied()
                };
                Some(ValueView {
                    key: self.keys.get(record.key),
                    resource: self.strings.get(resource_id),
                    revision: record.revision,
                    latest,
                    class,
                    finding: self.finding(class, latest, verify_failure),
                    resource_id,
                    class_id: record.class,
                    verify_failure,
                })
            })
    }

    /// Every value read from a copy outside the keyspace (WAL entries,
    /// leftover snap.db files), in the order read. Plaintext is a finding
    /// wherever it is; malformed values too.
    pub fn copies(&self) -> impl Iterator<Item = CopyView<'_>> + '_ {
        self.copies.iter().filter_map(move |copy| {
            let class = self.classes.get(copy.class as usize)?;
            let resource = self
                .key_info
                .get(copy.key as usize)
                .map_or(&[][..], |info| self.strings.get(info.resource));
            let origin = self.strings.get(copy.origin);
            let location = if copy.wal {
                CopyLocation::Wal {
                    segment: origin,
                    offset: copy.offset,
                    term: copy.term,
                    index: copy.index,
                }
            } else {
                CopyLocation::SnapDb {
                    file: origin,
                    revision: copy.revision,
                }
            };
            let finding = match class.provider {
                Provider::Identity if copy.wal => Some(Finding::PlaintextWal),
                Provider::Identity => Some(Finding::PlaintextSnapDb),
                Provider::Malformed => Some(Finding::Malformed),
                _ => None,
            };
            Some(CopyView {
                key: self.keys.get(copy.key),
                resource,
                class,
                location,
                finding,
            })
        })
    }

    /// Number of keys in scope.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Per-resource summary.
    pub fn resource_summaries(&self) -> std::collections::BTreeMap<String, ResourceSummary> {
        // Count by (resource id, class id) first: no string work per record.
        #[derive(Default)]
        struct Counts {
            events: u64,
            deleted: u64,
            latest: FastMap<u32, u64>,
            history: FastMap<u32, u64>,
        }
        let mut by_resource: FastMap<u32, Counts> = FastMap::default();
        for (index, record) in self.records.iter().enumerate() {
            let resource = self
                .key_info
                .get(record.key as usize)
                .map_or(u32::MAX, |info| info.resource);
            let counts = by_resource.entry(resource).or_default();
            counts.events += 1;
            if record.class == TOMBSTONE {
                let is_last = self
                    .records
                    .get(index + 1)
                    .is_none_or(|next| next.key != record.key);
                if is_last {
                    counts.deleted += 1;
                }
            } else if self.latest.get(index).copied().unwrap_or(false) {
                *counts.latest.entry(record.class).or_default() += 1;
            } else {
                *counts.history.entry(record.class).or_default() += 1;
            }
        }
        let mut summaries = std::collections::BTreeMap::new();
        for (resource, counts) in by_resource {
            let mut summary = ResourceSummary {
                deleted: counts.deleted,
                events: counts.events,
                ..ResourceSummary::default()
            };
            for (class, count) in counts.latest {
                if let Some(class) = self.classes.get(class as usize) {
                    *summary.latest.entry(self.label(class)).or_default() += count;
                }
            }
            for (class, count) in counts.history {
                summary.history += count;
                if self
                    .classes
                    .get(class as usize)
                    .is_some_and(|class| class.provider == Provider::Identity)
                {
                    summary.history_plaintext += count;
                }
            }
            summaries.insert(
                String::from_utf8_lossy(self.strings.get(resource)).into_owned(),
                summary,
            );
        }
        summaries
    }

    /// Counts by (resource, provider, name, key_id), for the summary table.
    pub fn groups(&self) -> Vec<(GroupKey, GroupCounts)> {
        let mut by_ids: FastMap<(u32, u32), GroupCounts> = FastMap::default();
        for value in self.values() {
            let counts = by_ids
                .entry((value.resource_id, value.class_id))
                .or_default();
            if value.latest {
                counts.latest += 1;
            } else {
                counts.history += 1;
            }
        }
        let mut groups: std::collections::BTreeMap<GroupKey, GroupCounts> = Default::default();
        for ((resource, class), counts) in by_ids {
            let Some(class) = self.classes.get(class as usize) else {
                continue;
            };
            let key = GroupKey {
                resource: String::from_utf8_lossy(self.strings.get(resource)).into_owned(),
                provider: class.provider,
                name: class.name.map(|id| self.strings.get(id).to_vec()),
                key_id: class.key_id.map(|id| self.strings.get(id).to_vec()),
            };
            let group = groups.entry(key).or_default();
            group.latest += counts.latest;
            group.history += counts.history;
        }
        groups.into_iter().collect()
    }

    /// Number of values with each finding.
    pub fn finding_counts(&self) -> std::collections::BTreeMap<Finding, u64> {
        let mut counts = std::collections::BTreeMap::new();
        let findings = self
            .values()
            .map(|value| value.finding)
            .chain(self.copies().map(|copy| copy.finding));
        for finding in findings.flatten() {
            *counts.entry(finding).or_insert(0) += 1;
        }
        counts
    }
}

/// A row of the summary table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct GroupKey {
    /// Resource.
    pub resource: String,
    /// Provider.
    pub provider: Provider,
    /// Key/provider name, as stored.
    pub name: Option<Vec<u8>>,
    /// kms v2 key_id, as stored.
    pub key_id: Option<Vec<u8>>,
}
