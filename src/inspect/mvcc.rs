//! etcd's MVCC layout inside its bbolt file, and the backup-file source.
//!
//! Owns: revision keys of the `key` bucket (8-byte big-endian main revision,
//! `_`, 8-byte big-endian sub revision, and a trailing `t` for a tombstone),
//! `mvccpb.KeyValue` decoding (key = 1, create_revision = 2, mod_revision = 3,
//! version = 4, value = 5, lease = 6), the `meta` bucket's compaction marks, and
//! [`scan_file`]: open a backup, verify its snapshot trailer, walk every
//! revision in the `key` bucket and hand each to an [`ObservationSink`] as an
//! [`Observed::Put`] or [`Observed::Delete`]. Entries come in physical page
//! order, not revision order; the sink sorts history out.
// A parser of untrusted bytes: no panics, no unchecked indexing (tests may).
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

use std::path::Path;

use super::bbolt::{self, BboltError, Database, ReadAt, TrailerStatus};
use super::cputime;
use super::pb::{self, PbError};
use super::{ObservationSink, Observed, Revision};

/// The bucket holding every revision of every key.
pub const KEY_BUCKET: &[u8] = b"key";
/// The bucket holding etcd's own bookkeeping (consistent index, compaction).
pub const META_BUCKET: &[u8] = b"meta";
const FINISHED_COMPACT: &[u8] = b"finishedCompactRev";
const SCHEDULED_COMPACT: &[u8] = b"scheduledCompactRev";
const CONSISTENT_INDEX: &[u8] = b"consistent_index";

/// Problems with the file as a whole or with one MVCC record.
#[derive(Debug, thiserror::Error)]
pub enum MvccError {
    /// The file could not be opened.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The path given.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Another process holds a lock on the file: etcd locks its live
    /// `member/snap/db`, whose pages it rewrites while they are read.
    #[error("{path} is locked by another process: it is the live database of a running etcd, whose pages change while they are read; take a consistent copy with `etcdctl snapshot save FILE` and scan that, or scan the member live with --endpoints")]
    Locked {
        /// The path given.
        path: String,
    },
    /// The bbolt layer failed (not bbolt, truncated, I/O, checksum).
    #[error(transparent)]
    Bbolt(#[from] BboltError),
    /// The database has no `key` bucket: a bbolt file, but not etcd's.
    #[error("no `key` bucket in the root bucket (buckets found: {found}): not an etcd backend database, or its root page is corrupt{cause}")]
    NotEtcd {
        /// Names of the buckets found, for the message.
        found: String,
        /// The first page problem met, if any (`; first problem: ...`).
        cause: String,
    },
    /// A bucket key that is not a 17- or 18-byte revision.
    #[error("bad revision key of {len} bytes (expected 17, or 18 ending in 't')")]
    BadRevisionKey {
        /// Its length.
        len: usize,
    },
    /// A value that does not decode as `mvccpb.KeyValue`.
    #[error("bad KeyValue: {0}")]
    BadKeyValue(#[from] PbError),
    /// A KeyValue without its `key` field.
    #[error("KeyValue has no key")]
    MissingKey,
}

/// A decoded revision key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevisionKey {
    /// The revision.
    pub revision: Revision,
    /// True for a deletion.
    pub tombstone: bool,
}

/// Parses a `key` bucket key: `main(8, BE) '_' sub(8, BE) ['t']`.
pub fn parse_revision_key(bytes: &[u8]) -> Result<RevisionKey, MvccError> {
    let bad = MvccError::BadRevisionKey { len: bytes.len() };
    let tombstone = match bytes.len() {
        17 => false,
        18 if bytes.get(17) == Some(&b't') => true,
        _ => return Err(bad),
    };
    let (Some(main), Some(b'_'), Some(sub)) = (bytes.get(0..8), bytes.get(8), bytes.get(9..17))
    else {
        return Err(bad);
    };
    let mut main_bytes = [0u8; 8];
    main_bytes.copy_from_slice(main);
    let mut sub_bytes = [0u8; 8];
    sub_bytes.copy_from_slice(sub);
    Ok(RevisionKey {
        revision: Revision {
            main: i64::from_be_bytes(main_bytes),
            sub: i64::from_be_bytes(sub_bytes),
        },
        tombstone,
    })
}

/// Encodes a revision key (tests and tools).
pub fn revision_key(revision: Revision, tombstone: bool) -> Vec<u8> {
    let mut key = Vec::with_capacity(18);
    key.extend_from_slice(&revision.main.to_be_bytes());
    key.push(b'_');
    key.extend_from_slice(&revision.sub.to_be_bytes());
    if tombstone {
        key.push(b't');
    }
    key
}

/// `mvccpb.KeyValue`, borrowing from the encoded bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyValue<'a> {
    /// The etcd key.
    pub key: &'a [u8],
    /// Revision of the key's creation.
    pub create_revision: i64,
    /// Revision of this change.
    pub mod_revision: i64,
    /// Number of changes since creation.
    pub version: i64,
    /// The stored value (possibly secret: never print it).
    pub value: &'a [u8],
    /// Lease id, 0 if none.
    pub lease: i64,
}

/// Decodes a `mvccpb.KeyValue`; unknown fields are skipped.
pub fn decode_key_value(bytes: &[u8]) -> Result<KeyValue<'_>, MvccError> {
    let mut kv = KeyValue::default();
    let mut has_key = false;
    for field in pb::Reader::new(bytes) {
        let field = field?;
        match field.number {
            1 => {
                kv.key = field.bytes()?;
                has_key = true;
            }
            2 => kv.create_revision = field.int64()?,
            3 => kv.mod_revision = field.int64()?,
            4 => kv.version = field.int64()?,
            5 => kv.value = field.bytes()?,
            6 => kv.lease = field.int64()?,
            _ => {}
        }
    }
    if !has_key || kv.key.is_empty() {
        return Err(MvccError::MissingKey);
    }
    Ok(kv)
}

/// How to scan a file.
#[derive(Debug, Clone, Copy)]
pub struct FileScanOptions {
    /// Verify the SHA-256 trailer of a snapshot and compute the file's
    /// SHA-256 (on by default). Runs on a second thread while the keyspace
    /// is read.
    pub verify_trailer: bool,
}

impl Default for FileScanOptions {
    fn default() -> Self {
        Self {
            verify_trailer: true,
        }
    }
}

/// What a file scan found besides the observations.
#[derive(Debug, Clone, Default)]
pub struct FileSummary {
    /// Highest main revision in the `key` bucket.
    pub revision: i64,
    /// Last completed compaction (`finishedCompactRev`), if any.
    pub compact_revision: Option<i64>,
    /// Last scheduled compaction (`scheduledCompactRev`), if any.
    pub scheduled_compact_revision: Option<i64>,
    /// etcd's consistent index, if stored.
    pub consistent_index: Option<u64>,
    /// Whether a snapshot trailer was present and verified.
    pub trailer: Option<TrailerStatus>,
    /// SHA-256 of the whole file (`None` when the checksum was skipped).
    pub sha256: Option<[u8; 32]>,
    /// Page size.
    pub page_size: u64,
    /// High-water mark of the current meta page.
    pub pages: u64,
    /// Pages reachable from the current meta page (the rest are free).
    pub reachable_pages: u64,
    /// txid of the meta page used.
    pub txid: u64,
    /// Bytes read by the walk (the trailer check reads the file once more).
    pub bytes_read: u64,
    /// Revisions read from the `key` bucket (puts and tombstones).
    pub revisions: u64,
    /// Size of the file.
    pub file_size: u64,
    /// Why the older meta page was used (the newest points past the end of
    /// the file: a copy taken mid-commit); `None` normally.
    pub meta_fallback: Option<String>,
    /// The pages reachable from the current meta page (for the deep scan of
    /// the others, [`super::residue::scan`]).
    pub reachable: bbolt::PageSet,
    /// CPU time of each thread of the scan.
    pub cpu: ScanCpu,
}

/// CPU time of each thread of a file scan (`None`: not measurable here, see
/// [`super::cputime`]). The scan's wall time is about the largest of them.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScanCpu {
    /// The walk: parsing pages, decoding revisions, classifying values
    /// (and reading, without a read-ahead thread).
    pub walk: Option<std::time::Duration>,
    /// The read-ahead threads, which read the walk's next chunks (zero when
    /// the checksum thread keeps the other core busy instead).
    pub read_ahead: std::time::Duration,
    /// The snapshot checksum thread: reading the whole image and its SHA-256
    /// (`None` when not checked).
    pub checksum: Option<std::time::Duration>,
}

/// Scans the etcd backup at `path` into `sink`. See [`scan_source`].
///
/// A file another process holds a lock on is refused ([`MvccError::Locked`]):
/// bbolt (so etcd) holds an exclusive `flock` on its database while it runs.
/// Otherwise a shared lock is held during the scan, so no bbolt writer opens
/// the file meanwhile (where `flock` is not supported, the meta pages are
/// still compared before and after).
pub fn scan_file(
    path: &Path,
    sink: &mut dyn ObservationSink,
    options: FileScanOptions,
) -> Result<FileSummary, MvccError> {
    let file = std::fs::File::open(path).map_err(|source| MvccError::Open {
        path: path.display().to_string(),
        source,
    })?;
    if let Err(std::fs::TryLockError::WouldBlock) = file.try_lock_shared() {
        return Err(MvccError::Locked {
            path: path.display().to_string(),
        });
    }
    scan_source(file, sink, options)
}

/// Scans an etcd bbolt image from any [`ReadAt`] source: every revision of the
/// `key` bucket goes to `sink`; page-level problems go to
/// [`ObservationSink::read_error`] and the scan goes on; a file that is not
/// bbolt, not etcd, truncated, or whose trailer does not match is an `Err`,
/// and so is one whose meta pages (or size) changed during the walk
/// ([`BboltError::Changed`]: what the sink got must then be discarded).
pub fn scan_source<R: ReadAt + Sync>(
    source: R,
    sink: &mut dyn ObservationSink,
    options: FileScanOptions,
) -> Result<FileSummary, MvccError> {
    let db = Database::open(source)?;
    if let Err(problem) = db.other_meta() {
        sink.read_error(format!(
            "{problem}; using meta page {} (txid {})",
            db.meta().page,
            db.meta().txid
        ));
    }
    let mut visitor = MvccVisitor {
        sink,
        summary: FileSummary::default(),
        first_page_error: None,
    };
    let mut cpu = ScanCpu::default();
    let (walk, trailer) = std::thread::scope(|scope| {
        let verifier = options.verify_trailer.then(|| {
            scope.spawn(|| {
                let cpu = cputime::thread_cpu_time();
                let hashed = db.hash_file();
                (hashed, cputime::thread_cpu_since(cpu))
            })
        });
        // With the checksum thread busy on the second core, the walk reads
        // on its own thread: a read-ahead thread would only take turns with
        // the hash, which is the longer of the two.
        let walk_cpu = cputime::thread_cpu_time();
        let walk = db.walk_with(&mut visitor, verifier.is_none());
        cpu.walk = cputime::thread_cpu_since(walk_cpu);
        let trailer = verifier.map(|handle| {
            let (status, checksum_cpu) = handle.join().unwrap_or((
                Err(BboltError::Page {
                    pgid: 0,
                    offset: 0,
                    problem: "checksum thread died".to_string(),
                }),
                None,
            ));
            cpu.checksum = checksum_cpu;
            status
        });
        (walk, trailer)
    });
    let hashed = trailer.transpose()?;
    let walk = walk?;
    db.check_unchanged()?;
    let has_key_bucket = walk
        .buckets
        .iter()
        .any(|path| path.len() == 1 && path.first().is_some_and(|name| name == KEY_BUCKET));
    if !has_key_bucket {
        let found: Vec<String> = walk
            .buckets
            .iter()
            .filter(|path| !path.is_empty())
            .map(|path| {
                path.iter()
                    .map(|name| String::from_utf8_lossy(name).into_owned())
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .collect();
        return Err(MvccError::NotEtcd {
            found: if found.is_empty() {
                "none".to_string()
            } else {
                found.join(", ")
            },
            cause: visitor
                .first_page_error
                .map(|error| format!("; first problem: {error}"))
                .unwrap_or_default(),
        });
    }
    let mut summary = visitor.summary;
    summary.sha256 = hashed.map(|(_, digest)| digest);
    summary.trailer = if db.has_trailer() {
        hashed.map(|(status, _)| status)
    } else {
        Some(TrailerStatus::Absent)
    };
    summary.page_size = db.page_size();
    summary.pages = db.meta().high_water;
    summary.reachable_pages = walk.reachable.count();
    summary.reachable = walk.reachable;
    summary.txid = db.meta().txid;
    summary.bytes_read = walk.bytes_read;
    cpu.read_ahead = walk.read_ahead_cpu;
    summary.cpu = cpu;
    summary.file_size = db.file_size();
    summary.meta_fallback = db.meta_fallback().map(str::to_string);
    Ok(summary)
}

struct MvccVisitor<'s> {
    sink: &'s mut dyn ObservationSink,
    summary: FileSummary,
    first_page_error: Option<String>,
}

impl MvccVisitor<'_> {
    fn key_entry(&mut self, key: &[u8], value: &[u8]) -> Result<(), MvccError> {
        let revision_key = parse_revision_key(key)?;
        let kv = decode_key_value(value)?;
        self.summary.revisions += 1;
        self.summary.revision = self.summary.revision.max(revision_key.revision.main);
        let observed = if revision_key.tombstone {
            Observed::Delete {
                key: kv.key,
                revision: revision_key.revision,
            }
        } else {
            Observed::Put {
                key: kv.key,
                revision: revision_key.revision,
                value: kv.value,
            }
        };
        self.sink.observe(observed);
        Ok(())
    }

    fn meta_entry(&mut self, key: &[u8], value: &[u8]) {
        let revision = || parse_revision_key(value).ok().map(|key| key.revision.main);
        if key == FINISHED_COMPACT {
            self.summary.compact_revision = revision();
        } else if key == SCHEDULED_COMPACT {
            self.summary.scheduled_compact_revision = revision();
        } else if key == CONSISTENT_INDEX {
            if let Ok(bytes) = <[u8; 8]>::try_from(value) {
                self.summary.consistent_index = Some(u64::from_be_bytes(bytes));
            }
        }
    }
}

impl bbolt::Visitor for MvccVisitor<'_> {
    fn entry(&mut self, bucket: &[Vec<u8>], key: &[u8], value: &[u8], offset: u64) {
        match bucket {
            [name] if name == KEY_BUCKET => {
                if let Err(error) = self.key_entry(key, value) {
                    self.sink.read_error(format!(
                        "`key` bucket entry at offset {offset} skipped: {error}"
                    ));
                }
            }
            [name] if name == META_BUCKET => self.meta_entry(key, value),
            _ => {}
        }
    }

    fn page_error(&mut self, error: BboltError) {
        let message = error.to_string();
        if self.first_page_error.is_none() {
            self.first_page_error = Some(message.clone());
        }
        self.sink.read_error(message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::pb::encode;

    #[test]
    fn revision_keys_round_trip() {
        let revision = Revision { main: 42, sub: 3 };
        let key = revision_key(revision, false);
        assert_eq!(key.len(), 17);
        assert_eq!(
            parse_revision_key(&key).unwrap(),
            RevisionKey {
                revision,
                tombstone: false
            }
        );
        let tomb = revision_key(revision, true);
        assert!(parse_revision_key(&tomb).unwrap().tombstone);
        assert!(parse_revision_key(&tomb[..16]).is_err());
        let mut bad = tomb.clone();
        bad[17] = b'x';
        assert!(parse_revision_key(&bad).is_err());
        bad = key.clone();
        bad[8] = b'-';
        assert!(parse_revision_key(&bad).is_err());
    }

    #[test]
    fn key_value_decodes_and_requires_key() {
        let mut bytes = Vec::new();
        encode::bytes_field(&mut bytes, 1, b"/registry/secrets/a/b");
        encode::varint_field(&mut bytes, 2, 5);
        encode::varint_field(&mut bytes, 3, 7);
        encode::varint_field(&mut bytes, 4, 2);
        encode::bytes_field(&mut bytes, 5, b"k8s\0");
        encode::varint_field(&mut bytes, 6, 99);
        encode::varint_field(&mut bytes, 15, 1);
        let kv = decode_key_value(&bytes).unwrap();
        assert_eq!(kv.key, b"/registry/secrets/a/b");
        assert_eq!(
            (kv.create_revision, kv.mod_revision, kv.version, kv.lease),
            (5, 7, 2, 99)
        );
        assert_eq!(kv.value, b"k8s\0");
        let mut no_key = Vec::new();
        encode::bytes_field(&mut no_key, 5, b"x");
        assert!(matches!(
            decode_key_value(&no_key),
            Err(MvccError::MissingKey)
        ));
    }
}
