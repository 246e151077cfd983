//! The ledger: the [`ObservationSink`] every source feeds during an audit.
//!
//! Owns scope (`--prefix`, `--resources`), classification of each value as it
//! arrives (values are not retained: each becomes a compact record of interned
//! key, revision and interned classification), history (the latest revision
//! of a key is the highest one, unless it is a tombstone; every other revision
//! is history), policy (which values are findings) and the summary counts.
//! Observations may arrive in any order; everything that depends on order is
//! decided in [`Ledger::finish`].

use std::collections::HashMap;

use super::policy::LedgerOptions;
use super::result::AuditResult;
use crate::inspect::classify::{Classification, DekSourceType, Encoding, Malformation, Provider};
use crate::inspect::intern::{sorted_ids, FastMap, Interner};
use crate::inspect::resource::resource_name;
use crate::inspect::verify::pool::VerifyPool;
use crate::inspect::verify::{object::expected_for_resource, VerifyFailure};
use crate::inspect::{Location, ObservationSink, Observed, Revision};

/// An interned classification (strings are ids into [`AuditResult::string`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClassInfo {
    /// Provider.
    pub provider: Provider,
    /// Plaintext encoding.
    pub encoding: Option<Encoding>,
    /// Key or provider name.
    pub name: Option<u32>,
    /// kms v2 key_id.
    pub key_id: Option<u32>,
    /// kms v2 DEK source type.
    pub dek_source_type: Option<DekSourceType>,
    /// Plaintext protobuf apiVersion.
    pub api_version: Option<u32>,
    /// Plaintext protobuf kind.
    pub kind: Option<u32>,
    /// kms v2 annotation keys, joined with `,`.
    pub annotation_keys: Option<u32>,
    /// Why malformed.
    pub malformation: Option<Malformation>,
}

pub(super) const TOMBSTONE: u32 = u32::MAX;

/// One change: 24 bytes, however large the value was.
#[derive(Debug, Clone, Copy)]
pub(super) struct Record {
    pub(super) key: u32,
    pub(super) class: u32,
    pub(super) revision: Revision,
}

/// A value read from a copy outside the keyspace (WAL entry, leftover
/// snap.db), with where it is.
#[derive(Debug, Clone, Copy)]
pub(super) struct CopyRecord {
    pub(super) key: u32,
    pub(super) class: u32,
    /// Interned segment or file name.
    pub(super) origin: u32,
    /// True for a WAL entry, false for a snap.db revision.
    pub(super) wal: bool,
    pub(super) offset: u64,
    pub(super) term: u64,
    pub(super) index: u64,
    pub(super) revision: Revision,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct KeyInfo {
    /// Id of the key bytes in the key interner.
    pub(super) resource: u32,
}

/// The engine. Feed it with a source, then call [`Ledger::finish`].
#[derive(Debug)]
pub struct Ledger {
    options: LedgerOptions,
    keys: Interner,
    key_info: Vec<KeyInfo>,
    out_of_scope_keys: FastMap<Vec<u8>, ()>,
    strings: Interner,
    classes: Vec<ClassInfo>,
    class_ids: FastMap<ClassInfo, u32>,
    records: Vec<Record>,
    copies: Vec<CopyRecord>,
    read_errors: Vec<String>,
    out_of_scope: u64,
    scratch: Vec<u8>,
    /// The class of the previous value (see [`Ledger::intern_class`]).
    last_class: Option<u32>,
    verify: Option<VerifyPool>,
}

impl Ledger {
    /// A fresh scan with these options.
    pub fn new(options: LedgerOptions) -> Self {
        let mut prefix = options.prefix.clone();
        while prefix.last() == Some(&b'/') {
            prefix.pop();
        }
        Self {
            options: LedgerOptions { prefix, ..options },
            keys: Interner::default(),
            key_info: Vec::new(),
            out_of_scope_keys: FastMap::default(),
            strings: Interner::default(),
            classes: Vec::new(),
            class_ids: FastMap::default(),
            records: Vec::new(),
            copies: Vec::new(),
            read_errors: Vec::new(),
            out_of_scope: 0,
            scratch: Vec::new(),
            last_class: None,
            verify: None,
        }
    }

    /// Verifies every encrypted value the pool's verifier has keys for, as
    /// values arrive (see [`crate::inspect::verify`]); results land in the
    /// [`AuditResult`] (findings [`Finding::VerifyFailed`], and
    /// [`AuditResult::verification`]).
    pub fn verify_with(&mut self, pool: VerifyPool) {
        self.verify = Some(pool);
    }

    /// The key id of `key` if it is in scope (interning it on first sight).
    fn key_in_scope(&mut self, key: &[u8]) -> Option<u32> {
        let hash = self.keys.hash(key);
        if let Some(id) = self.keys.find(hash, key) {
            return Some(id);
        }
        if self.out_of_scope_keys.contains_key(key) {
            return None;
        }
        let in_scope = resource_name(key, &self.options.prefix)
            .filter(|resource| self.options.resources.includes(resource));
        match in_scope {
            Some(resource) => {
                let resource = self.strings.intern(resource.as_bytes());
                let id = self.keys.insert(hash, key);
                self.key_info.push(KeyInfo { resource });
                Some(id)
            }
            None => {
                // Remember (bounded) so repeated revisions are cheap to skip.
                if self.out_of_scope_keys.len() < 100_000 {
                    self.out_of_scope_keys.insert(key.to_vec(), ());
                }
                None
            }
        }
    }

    /// Whether `c` is the classification interned as `id` (for values without
    /// annotations; those take the full path).
    fn same_class(&self, id: u32, c: &Classification<'_>) -> bool {
        let Some(info) = self.classes.get(id as usize) else {
            return false;
        };
        let same = |interned: Option<u32>, bytes: Option<&[u8]>| match (interned, bytes) {
            (Some(interned), Some(bytes)) => self.strings.get(interned) == bytes,
            (None, None) => true,
            _ => false,
        };
        info.provider == c.provider()
            && info.encoding == c.encoding
            && info.dek_source_type == c.dek_source_type
            && info.malformation == c.malformation
            && info.annotation_keys.is_none()
            && same(info.name, c.name)
            && same(info.key_id, c.key_id)
            && same(info.api_version, c.api_version)
            && same(info.kind, c.kind)
    }

    fn intern_class(&mut self, value: &[u8]) -> u32 {
        let c = self.options.classifier.classify(value);
        // Runs of values classify alike (all `v1 Secret`, or one key_id):
        // compare with the previous classification before any hashing.
        if c.encrypted_object.is_none() {
            if let Some(last) = self.last_class {
                if self.same_class(last, &c) {
                    return last;
                }
            }
        }
        let annotation_keys = if c.encrypted_object.is_some() {
            self.scratch.clear();
            for key in c.annotation_keys() {
                if !self.scratch.is_empty() {
                    self.scratch.push(b',');
                }
                self.scratch.extend_from_slice(key);
            }
            (!self.scratch.is_empty()).then(|| self.strings.intern(&self.scratch))
        } else {
            None
        };
        let info = ClassInfo {
            provider: c.provider(),
            encoding: c.encoding,
            name: c.name.map(|name| self.strings.intern(name)),
            key_id: c.key_id.map(|key_id| self.strings.intern(key_id)),
            dek_source_type: c.dek_source_type,
            api_version: c.api_version.map(|v| self.strings.intern(v)),
            kind: c.kind.map(|kind| self.strings.intern(kind)),
            annotation_keys,
            malformation: c.malformation,
        };
        if let Some(&id) = self.class_ids.get(&info) {
            self.last_class = Some(id);
            return id;
        }
        let id = self.classes.len() as u32;
        self.classes.push(info);
        self.class_ids.insert(info, id);
        self.last_class = Some(id);
        id
    }

    /// Resolves history and policy. The result holds every record, sorted by
    /// key then revision.
    pub fn finish(self) -> AuditResult {
        let Ledger {
            options,
            keys,
            key_info,
            strings,
            classes,
            records,
            copies,
            mut read_errors,
            out_of_scope,
            verify,
            ..
        } = self;
        // Failures are tagged with their record's index: resolve them to
        // (key, revision) before the records are sorted.
        let mut verify_failures = HashMap::new();
        let verification = verify.map(|pool| {
            let outcome = pool.finish();
            for (tag, failure) in outcome.failures {
                if let Some(record) = usize::try_from(tag).ok().and_then(|i| records.get(i)) {
                    verify_failures.insert((record.key, record.revision), failure);
                }
            }
            for failure in &outcome.summary.unwrap_failures {
                if failure.failure == VerifyFailure::PluginUnreachable {
                    read_errors.push(format!(
                        "verification incomplete: Decrypt for key_id {:?} failed: {}",
                        failure.key_id, failure.detail
                    ));
                }
            }
            outcome.summary
        });
        // Sort keys once, then records by (key rank, revision).
        let order = sorted_ids(&keys);
        let mut rank = vec![0u32; order.len()];
        for (position, &key) in order.iter().enumerate() {
            if let Some(slot) = rank.get_mut(key as usize) {
                *slot = position as u32;
            }
        }
        let rank_of = |key: u32| rank.get(key as usize).copied().unwrap_or(0) as usize;
        // A counting sort by key rank (linear, keeps arrival order within a
        // key), then each key's revisions sorted where they are not already:
        // a file yields them in revision order, a live scan one per key.
        let mut next_slot = vec![0usize; rank.len() + 1];
        for record in &records {
            if let Some(count) = next_slot.get_mut(rank_of(record.key) + 1) {
                *count += 1;
            }
        }
        for index in 1..next_slot.len() {
            let before = next_slot.get(index - 1).copied().unwrap_or(0);
            if let Some(slot) = next_slot.get_mut(index) {
                *slot += before;
            }
        }
        let starts = next_slot.clone();
        let mut sorted = vec![
            Record {
                key: 0,
                class: TOMBSTONE,
                revision: Revision::default(),
            };
            records.len()
        ];
        for record in &records {
            if let Some(slot) = next_slot.get_mut(rank_of(record.key)) {
                if let Some(target) = sorted.get_mut(*slot) {
                    *target = *record;
                }
                *slot += 1;
            }
        }
        for bounds in starts.windows(2) {
            if let (Some(&start), Some(&end)) = (bounds.first(), bounds.get(1)) {
                if let Some(group) = sorted.get_mut(start..end) {
                    if !group.is_sorted_by_key(|record| record.revision) {
                        group.sort_unstable_by_key(|record| record.revision);
                    }
                }
            }
        }
        let records = sorted;
        let mut result = AuditResult {
            options,
            keys,
            key_info,
            strings,
            classes,
            records,
            copies,
            latest: Vec::new(),
            read_errors,
            out_of_scope,
            verify_failures,
            verification,
        };
        // The last record of each key (sorted) is its latest state.
        let records = &result.records;
        result.latest = records
            .iter()
            .enumerate()
            .map(|(index, record)| {
                let is_last = records
                    .get(index + 1)
                    .is_none_or(|next| next.key != record.key);
                is_last && record.class != TOMBSTONE
            })
            .collect();
        result
    }
}

impl ObservationSink for Ledger {
    fn observe(&mut self, observed: Observed<'_>) {
        match observed {
            Observed::Put {
                key,
                revision,
                value,
            } => {
                let Some(key) = self.key_in_scope(key) else {
                    self.out_of_scope += 1;
                    return;
                };
                let class = self.intern_class(value);
                if let Some(pool) = &mut self.verify {
                    let provider = self
                        .classes
                        .get(class as usize)
                        .map_or(Provider::Malformed, |info| info.provider);
                    let resource = self
                        .key_info
                        .get(key as usize)
                        .map_or(&[][..], |info| self.strings.get(info.resource));
                    let tag = self.records.len() as u64;
                    let expected = expected_for_resource(resource);
                    let etcd_key = self.keys.get(key);
                    pool.submit(tag, provider, etcd_key, expected, value);
                }
                self.records.push(Record {
                    key,
                    class,
                    revision,
                });
            }
            Observed::Delete { key, revision } => {
                let Some(key) = self.key_in_scope(key) else {
                    self.out_of_scope += 1;
                    return;
                };
                self.records.push(Record {
                    key,
                    class: TOMBSTONE,
                    revision,
                });
            }
        }
    }

    fn read_error(&mut self, message: String) {
        self.read_errors.push(message);
    }

    /// A copy is judged alone (plaintext anywhere is a finding), never as
    /// part of the keyspace's history; deletes in a copy leave no value.
    fn observe_copy(&mut self, observed: Observed<'_>, location: Location<'_>) {
        let Observed::Put {
            key,
            revision,
            value,
        } = observed
        else {
            return;
        };
        let Some(key) = self.key_in_scope(key) else {
            self.out_of_scope += 1;
            return;
        };
        let class = self.intern_class(value);
        let record = match location {
            Location::Wal {
                segment,
                offset,
                term,
                index,
            } => CopyRecord {
                key,
                class,
                origin: self.strings.intern(segment.as_bytes()),
                wal: true,
                offset,
                term,
                index,
                revision,
            },
            Location::SnapDb { file } => CopyRecord {
                key,
                class,
                origin: self.strings.intern(file.as_bytes()),
                wal: false,
                offset: 0,
                term: 0,
                index: 0,
                revision,
            },
        };
        self.copies.push(record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::audit::{CopyLocation, Finding, RequiredProvider};
    use crate::inspect::classify::build;

    fn put(scan: &mut Ledger, key: &str, main: i64, value: &[u8]) {
        scan.observe(Observed::Put {
            key: key.as_bytes(),
            revision: Revision { main, sub: 0 },
            value,
        });
    }

    #[test]
    fn keys_sort_in_byte_order() {
        let mut interner = Interner::default();
        let mut keys: Vec<Vec<u8>> = vec![
            b"/registry/secrets/ns-a/x".to_vec(),
            b"/registry/secrets/ns-a/x\0".to_vec(),
            b"/registry/secrets/ns-a/x\0\0\0\0\0\0\0\0\0y".to_vec(),
            b"/registry/secrets/ns-a/".to_vec(),
            b"/registry/secrets/ns-b/long-name-of-a-secret-1".to_vec(),
            b"/registry/secrets/ns-b/long-name-of-a-secret-0".to_vec(),
            b"/registry/secrets/ns-b/long-name-of-a-secret-10".to_vec(),
            b"/registry/secrets/ns-a/\xff".to_vec(),
            b"/registry/secrets/".to_vec(),
        ];
        for index in 0..300u32 {
            keys.push(
                format!(
                    "/registry/secrets/ns-{}/s-{}",
                    index % 7,
                    index * 7919 % 1000
                )
                .into_bytes(),
            );
        }
        for key in &keys {
            interner.intern(key);
        }
        let sorted: Vec<&[u8]> = sorted_ids(&interner)
            .into_iter()
            .map(|id| interner.get(id))
            .collect();
        let mut expected: Vec<&[u8]> = (0..interner.len() as u32)
            .map(|id| interner.get(id))
            .collect();
        expected.sort();
        assert_eq!(sorted, expected);
        assert!(sorted_ids(&Interner::default()).is_empty());
    }

    #[test]
    fn latest_history_and_tombstones_in_any_order() {
        let mut scan = Ledger::new(LedgerOptions::default());
        let plain = build::plaintext_protobuf("v1", "Secret", b"");
        let kms = build::kms_v2("kube-kms", "k1", Some(1), &[], &[1; 40]);
        // Observed out of order on purpose.
        put(&mut scan, "/registry/secrets/a/migrated", 5, &kms);
        put(&mut scan, "/registry/secrets/a/migrated", 2, &plain);
        scan.observe(Observed::Delete {
            key: b"/registry/secrets/a/deleted",
            revision: Revision { main: 4, sub: 0 },
        });
        put(&mut scan, "/registry/secrets/a/deleted", 3, &plain);
        put(&mut scan, "/registry/secrets/a/plain", 1, &plain);
        put(&mut scan, "/registry/configmaps/a/c", 1, &plain);
        let result = scan.finish();
        let values: Vec<_> = result
            .values()
            .map(|v| {
                (
                    String::from_utf8_lossy(v.key).into_owned(),
                    v.revision.main,
                    v.latest,
                    v.finding,
                )
            })
            .collect();
        assert_eq!(
            values,
            vec![
                (
                    "/registry/secrets/a/deleted".into(),
                    3,
                    false,
                    Some(Finding::PlaintextHistory)
                ),
                (
                    "/registry/secrets/a/migrated".into(),
                    2,
                    false,
                    Some(Finding::PlaintextHistory)
                ),
                ("/registry/secrets/a/migrated".into(), 5, true, None),
                (
                    "/registry/secrets/a/plain".into(),
                    1,
                    true,
                    Some(Finding::Plaintext)
                ),
            ]
        );
        let summary = result.resource_summaries();
        let secrets = summary.get("secrets").unwrap();
        assert_eq!(secrets.deleted, 1);
        assert_eq!(secrets.history_plaintext, 2);
        assert_eq!(secrets.events, 5);
        assert_eq!(secrets.latest.get("kms-v2:k1"), Some(&1));
        assert_eq!(result.out_of_scope(), 1);
    }

    #[test]
    fn copies_are_judged_alone_and_leave_the_keyspace_alone() {
        let mut scan = Ledger::new(LedgerOptions::default());
        let plain = build::plaintext_protobuf("v1", "Secret", b"");
        let kms = build::kms_v2("kube-kms", "k1", Some(1), &[], &[1; 40]);
        put(&mut scan, "/registry/secrets/a/s", 5, &kms);
        let wal = |term, index| Location::Wal {
            segment: "member/wal/0000000000000000-0000000000000000.wal",
            offset: 64 * index,
            term,
            index,
        };
        for (index, value) in [(3, &plain), (4, &kms)] {
            scan.observe_copy(
                Observed::Put {
                    key: b"/registry/secrets/a/s",
                    revision: Revision::default(),
                    value,
                },
                wal(2, index),
            );
        }
        scan.observe_copy(
            Observed::Put {
                key: b"/registry/secrets/a/t",
                revision: Revision { main: 9, sub: 0 },
                value: &plain,
            },
            Location::SnapDb { file: "x.snap.db" },
        );
        scan.observe_copy(
            Observed::Put {
                key: b"/registry/configmaps/a/c",
                revision: Revision::default(),
                value: &plain,
            },
            wal(2, 5),
        );
        let result = scan.finish();
        // The keyspace: one current, encrypted value, no finding.
        let values: Vec<_> = result.values().map(|v| (v.latest, v.finding)).collect();
        assert_eq!(values, vec![(true, None)]);
        let copies: Vec<_> = result
            .copies()
            .map(|c| (c.key.to_vec(), c.location, c.finding))
            .collect();
        assert_eq!(
            copies,
            vec![
                (
                    b"/registry/secrets/a/s".to_vec(),
                    CopyLocation::Wal {
                        segment: b"member/wal/0000000000000000-0000000000000000.wal",
                        offset: 192,
                        term: 2,
                        index: 3
                    },
                    Some(Finding::PlaintextWal)
                ),
                (
                    b"/registry/secrets/a/s".to_vec(),
                    CopyLocation::Wal {
                        segment: b"member/wal/0000000000000000-0000000000000000.wal",
                        offset: 256,
                        term: 2,
                        index: 4
                    },
                    None
                ),
                (
                    b"/registry/secrets/a/t".to_vec(),
                    CopyLocation::SnapDb {
                        file: b"x.snap.db",
                        revision: Revision { main: 9, sub: 0 }
                    },
                    Some(Finding::PlaintextSnapDb)
                ),
            ]
        );
        assert_eq!(result.out_of_scope(), 1);
        let counts = result.finding_counts();
        assert_eq!(counts.get(&Finding::PlaintextWal), Some(&1));
        assert_eq!(counts.get(&Finding::PlaintextSnapDb), Some(&1));
        // The key only seen in a copy is a key in scope, with no keyspace value.
        assert_eq!(result.key_count(), 2);
    }

    #[test]
    fn policies() {
        let options = LedgerOptions {
            require_provider: RequiredProvider::parse("kms-v2:kube-kms"),
            allowed_key_ids: Some(vec![b"new".to_vec()]),
            ignore_history: true,
            ..LedgerOptions::default()
        };
        let mut scan = Ledger::new(options);
        put(
            &mut scan,
            "/registry/secrets/a/old",
            1,
            &build::kms_v2("kube-kms", "old", Some(1), &[], &[1; 9]),
        );
        put(
            &mut scan,
            "/registry/secrets/a/new",
            1,
            &build::kms_v2("kube-kms", "new", Some(1), &[], &[1; 9]),
        );
        put(
            &mut scan,
            "/registry/secrets/a/other",
            1,
            &build::kms_v2("other", "new", Some(1), &[], &[1; 9]),
        );
        put(
            &mut scan,
            "/registry/secrets/a/cbc",
            1,
            &build::symmetric("aescbc", "k", 32),
        );
        put(
            &mut scan,
            "/registry/secrets/a/hist",
            1,
            &build::plaintext_protobuf("v1", "Secret", b""),
        );
        put(
            &mut scan,
            "/registry/secrets/a/hist",
            2,
            &build::symmetric("aescbc", "k", 32),
        );
        let result = scan.finish();
        let findings: Vec<_> = result
            .values()
            .map(|v| (String::from_utf8_lossy(v.key).into_owned(), v.finding))
            .collect();
        assert_eq!(
            findings,
            vec![
                (
                    "/registry/secrets/a/cbc".into(),
                    Some(Finding::WrongProvider)
                ),
                ("/registry/secrets/a/hist".into(), None),
                (
                    "/registry/secrets/a/hist".into(),
                    Some(Finding::WrongProvider)
                ),
                ("/registry/secrets/a/new".into(), None),
                ("/registry/secrets/a/old".into(), Some(Finding::StaleKeyId)),
                (
                    "/registry/secrets/a/other".into(),
                    Some(Finding::WrongProvider)
                ),
            ]
        );
    }
}
