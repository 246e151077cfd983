//! The scan engine: the [`ObservationSink`] every source feeds.
//!
//! Owns scope (`--prefix`, `--resources`), classification of each value as it
//! arrives (values are not retained: each becomes a compact record of interned
//! key, revision and interned classification), history (the latest revision
//! of a key is the highest one, unless it is a tombstone; every other revision
//! is history), policy (which values are findings) and the summary counts.
//! Observations may arrive in any order; everything that depends on order is
//! decided in [`Ledger::finish`].

use std::collections::HashMap;

use crate::inspect::classify::{
    Classification, Classifier, DekSourceType, Encoding, Malformation, Provider,
};
use crate::inspect::intern::{FastMap, Interner};
use crate::inspect::resource::resource_name;
pub use crate::inspect::resource::{resource_of, ResourceFilter};
use crate::inspect::verify::pool::VerifyPool;
use crate::inspect::verify::{object::expected_for_resource, VerifyFailure, VerifySummary};
use crate::inspect::{Location, ObservationSink, Observed, Revision};

/// Default key prefix of kube-apiserver.
pub const DEFAULT_PREFIX: &str = "/registry";

/// A `--require-provider` policy: a provider, optionally with its name
/// (`kms-v2:kube-kms`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequiredProvider {
    /// The provider every latest value must use.
    pub provider: Provider,
    /// The key/provider name it must have, if given.
    pub name: Option<Vec<u8>>,
}

impl RequiredProvider {
    /// Parses `PROVIDER` or `PROVIDER:NAME`.
    pub fn parse(spec: &str) -> Option<Self> {
        let (label, name) = match spec.split_once(':') {
            Some((label, name)) => (label, Some(name.as_bytes().to_vec())),
            None => (spec, None),
        };
        Some(Self {
            provider: Provider::parse(label)?,
            name,
        })
    }
}

/// Scope and policy of a scan.
#[derive(Debug, Clone)]
pub struct LedgerOptions {
    /// Key prefix (`/registry`); keys outside it are ignored.
    pub prefix: Vec<u8>,
    /// Resources in scope.
    pub resources: ResourceFilter,
    /// Do not report plaintext (or malformed) history revisions.
    pub ignore_history: bool,
    /// Every latest value must use this provider.
    pub require_provider: Option<RequiredProvider>,
    /// kms v2 latest values must use one of these key_ids.
    pub allowed_key_ids: Option<Vec<Vec<u8>>>,
    /// Classifier (with configured names, if any).
    pub classifier: Classifier,
}

impl Default for LedgerOptions {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.as_bytes().to_vec(),
            resources: ResourceFilter::Only(vec!["secrets".to_string()]),
            ignore_history: false,
            require_provider: None,
            allowed_key_ids: None,
            classifier: Classifier::default(),
        }
    }
}

/// What is wrong with a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Finding {
    /// The latest revision is plaintext.
    Plaintext,
    /// An older revision is plaintext (still on disk until compaction).
    PlaintextHistory,
    /// A `k8s:enc:` value that does not parse.
    Malformed,
    /// Not the provider `--require-provider` asks for.
    WrongProvider,
    /// kms v2 under a key_id not in `--allowed-key-ids`.
    StaleKeyId,
    /// Did not decrypt to a valid object with the keys given (`--verify-with`,
    /// `--encryption-config`).
    VerifyFailed,
    /// Plaintext in a raft entry of the write-ahead log.
    PlaintextWal,
    /// Plaintext in a leftover `member/snap/*.snap.db`.
    PlaintextSnapDb,
}

impl Finding {
    /// Short code for JSON output.
    pub fn code(self) -> &'static str {
        match self {
            Finding::Plaintext => "plaintext",
            Finding::PlaintextHistory => "plaintext-history",
            Finding::Malformed => "malformed",
            Finding::WrongProvider => "wrong-provider",
            Finding::StaleKeyId => "stale-key-id",
            Finding::VerifyFailed => "verify-failed",
            Finding::PlaintextWal => "plaintext-wal",
            Finding::PlaintextSnapDb => "plaintext-snap-db",
        }
    }

    /// Sentence for the table output.
    pub fn describe(self) -> &'static str {
        match self {
            Finding::Plaintext => "stored in plaintext",
            Finding::PlaintextHistory => {
                "older revision stored in plaintext (stays until compaction + defrag; in backups forever)"
            }
            Finding::Malformed => "encrypted-looking value that does not parse",
            Finding::WrongProvider => "not under the required provider",
            Finding::StaleKeyId => "kms v2 key_id not in the allowed list (stale; rewrite it)",
            Finding::VerifyFailed => "failed verification",
            Finding::PlaintextWal => {
                "in the write-ahead log: stays until etcd purges this segment; in every copy of the data dir"
            }
            Finding::PlaintextSnapDb => {
                "in a leftover snap.db: stays until the file is removed; in every copy of the data dir"
            }
        }
    }
}

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

const TOMBSTONE: u32 = u32::MAX;

/// One change: 24 bytes, however large the value was.
#[derive(Debug, Clone, Copy)]
struct Record {
    key: u32,
    class: u32,
    revision: Revision,
}

/// A value read from a copy outside the keyspace (WAL entry, leftover
/// snap.db), with where it is.
#[derive(Debug, Clone, Copy)]
struct CopyRecord {
    key: u32,
    class: u32,
    /// Interned segment or file name.
    origin: u32,
    /// True for a WAL entry, false for a snap.db revision.
    wal: bool,
    offset: u64,
    term: u64,
    index: u64,
    revision: Revision,
}

#[derive(Debug, Clone, Copy)]
struct KeyInfo {
    /// Id of the key bytes in the key interner.
    resource: u32,
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

/// The ids of `keys` in byte order of the keys. Keys share a long prefix
/// (`/registry/secrets/`) and then often a namespace: a most-significant-first
/// radix refinement sorts by 8 bytes at a time as one integer, and only the
/// runs still tied move on to the next 8 bytes, so comparisons rarely touch
/// the keys themselves (a comparison sort of whole keys was 8% of a scan).
fn sorted_ids(keys: &Interner) -> Vec<u32> {
    let count = keys.len() as u32;
    let first = keys.get(0);
    let mut shared = first.len();
    for id in 1..count {
        let key = keys.get(id);
        shared = shared.min(
            first
                .iter()
                .zip(key)
                .take(shared)
                .take_while(|(a, b)| a == b)
                .count(),
        );
    }
    // Big-endian with zero padding orders like the bytes; keys that differ
    // only past their end (a shorter key padded) are settled by whole-key
    // comparison once every key of the run has ended.
    let word_at = |id: u32, depth: usize| {
        let mut word = [0u8; 8];
        let rest = keys.get(id).get(depth..).unwrap_or(&[]);
        let take = rest.len().min(8);
        if let (Some(target), Some(source)) = (word.get_mut(..take), rest.get(..take)) {
            target.copy_from_slice(source);
        }
        u64::from_be_bytes(word)
    };
    let mut order: Vec<(u64, u32)> = (0..count).map(|id| (word_at(id, shared), id)).collect();
    order.sort_unstable();
    // Runs of equal words still to order, with the depth their words are
    // at (an explicit stack: a crafted long key must not recurse deeply).
    let mut tied = Vec::new();
    push_tied_runs(&order, 0, shared, &mut tied);
    while let Some((start, end, depth)) = tied.pop() {
        let Some(run) = order.get_mut(start..end) else {
            continue;
        };
        let next = depth + 8;
        if run.iter().all(|&(_, id)| keys.get(id).len() <= next) {
            run.sort_unstable_by(|&(_, a), &(_, b)| keys.get(a).cmp(keys.get(b)));
            continue;
        }
        for entry in run.iter_mut() {
            entry.0 = word_at(entry.1, next);
        }
        run.sort_unstable();
        push_tied_runs(run, start, next, &mut tied);
    }
    order.into_iter().map(|(_, id)| id).collect()
}

/// Pushes `(start, end, depth)` for every run of 2+ equal words in `run`
/// (which begins at `offset` in the whole order).
fn push_tied_runs(
    run: &[(u64, u32)],
    offset: usize,
    depth: usize,
    tied: &mut Vec<(usize, usize, usize)>,
) {
    let mut start = 0;
    while let Some(&(word, _)) = run.get(start) {
        let length = run
            .get(start..)
            .unwrap_or(&[])
            .iter()
            .take_while(|&&(other, _)| other == word)
            .count()
            .max(1);
        if length > 1 {
            tied.push((offset + start, offset + start + length, depth));
        }
        start += length;
    }
}

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
    options: LedgerOptions,
    keys: Interner,
    key_info: Vec<KeyInfo>,
    strings: Interner,
    classes: Vec<ClassInfo>,
    records: Vec<Record>,
    copies: Vec<CopyRecord>,
    latest: Vec<bool>,
    read_errors: Vec<String>,
    out_of_scope: u64,
    verify_failures: HashMap<(u32, Revision), VerifyFailure>,
    verification: Option<VerifySummary>,
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

#[cfg(test)]
mod tests {
    use super::*;
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
