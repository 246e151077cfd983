//! etcd's keyspace in a bbolt image: open a backup file (refusing one a
//! running etcd holds locked), verify its snapshot trailer, walk every
//! revision in the `key` bucket and hand each to an [`ObservationSink`] as an
//! [`Observed::Put`] or [`Observed::Delete`]; read the `meta` bucket's
//! compaction marks. Entries come in physical page order, not revision order;
//! the sink sorts history out. Records are decoded by [`crate::inspect::mvcc`].

use std::path::Path;
use std::sync::Arc;

use super::walk::WalkStats;
use super::{BboltError, Database, PageSet, ReadAt, TrailerStatus, Visitor};
use crate::inspect::cputime;
use crate::inspect::mvcc::{decode_key_value, parse_revision_key, MvccError};
use crate::inspect::{ObservationSink, Observed};

/// The bucket holding every revision of every key.
pub const KEY_BUCKET: &[u8] = b"key";
/// The bucket holding etcd's own bookkeeping (consistent index, compaction).
pub const META_BUCKET: &[u8] = b"meta";
const FINISHED_COMPACT: &[u8] = b"finishedCompactRev";
const SCHEDULED_COMPACT: &[u8] = b"scheduledCompactRev";
const CONSISTENT_INDEX: &[u8] = b"consistent_index";

/// Problems with a backup file as a whole (one bad record is a read error, not this).
#[derive(Debug, thiserror::Error)]
pub enum FileError {
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
}

/// How to read a file.
#[derive(Debug, Clone, Copy)]
pub struct FileOptions {
    /// Verify the SHA-256 trailer of a snapshot and compute the file's
    /// SHA-256 (on by default). Runs on a second thread while the keyspace
    /// is read.
    pub verify_trailer: bool,
}

impl Default for FileOptions {
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
    /// the others, [`super::deep`]).
    pub reachable: PageSet,
    /// CPU time of each thread of the scan.
    pub cpu: ReadCpu,
}

/// CPU time of each thread of a file scan (`None`: not measurable here, see
/// [`crate::inspect::cputime`]). On two cores the scan's wall time is about
/// the larger of the largest of them and half their sum.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadCpu {
    /// The walk: parsing pages, decoding revisions, classifying values
    /// (and reading, without a read-ahead thread).
    pub walk: Option<std::time::Duration>,
    /// The read-ahead threads: without the checksum, the one that reads the
    /// walk's next chunks; with it, the one that reads the file for the
    /// checksum thread (the walk then reads on its own thread).
    pub read_ahead: std::time::Duration,
    /// The snapshot checksum thread: the SHA-256 of the whole file
    /// (`None` when not checked).
    pub checksum: Option<std::time::Duration>,
}

/// Scans the etcd backup at `path` into `sink`. See [`read_image`].
///
/// A file another process holds a lock on is refused ([`FileError::Locked`]):
/// bbolt (so etcd) holds an exclusive `flock` on its database while it runs.
/// Otherwise a shared lock is held during the scan, so no bbolt writer opens
/// the file meanwhile (where `flock` is not supported, the meta pages are
/// still compared before and after).
pub fn read_file(
    path: &Path,
    sink: &mut dyn ObservationSink,
    options: FileOptions,
) -> Result<FileSummary, FileError> {
    let (mut summary, pending) = start_read_file(path, sink, options)?;
    if let Some(pending) = pending {
        pending.finish(&mut summary)?;
    }
    Ok(summary)
}

/// [`read_file`], returning as soon as the walk is done while the file's
/// SHA-256 may still run on its own thread: the caller does its own work
/// meanwhile, then [`PendingHash::finish`]es the summary. Until then the
/// summary has no `sha256` and no trailer status, and nothing the sink got
/// may be reported: a file whose trailer does not match is an `Err` there.
pub fn start_read_file(
    path: &Path,
    sink: &mut dyn ObservationSink,
    options: FileOptions,
) -> Result<(FileSummary, Option<PendingHash>), FileError> {
    let file = std::fs::File::open(path).map_err(|source| FileError::Open {
        path: path.display().to_string(),
        source,
    })?;
    if let Err(std::fs::TryLockError::WouldBlock) = file.try_lock_shared() {
        return Err(FileError::Locked {
            path: path.display().to_string(),
        });
    }
    let db = Arc::new(Database::open(file)?);
    report_other_meta(&db, sink);
    let hasher = options.verify_trailer.then(|| {
        let db = Arc::clone(&db);
        std::thread::spawn(move || hash_timed(&db))
    });
    let mut visitor = MvccVisitor::new(sink);
    let walk = walk_timed(&db, &mut visitor, hasher.is_none());
    let pending = hasher.map(|thread| PendingHash {
        thread,
        has_trailer: db.has_trailer(),
    });
    match summarize(&db, walk, visitor) {
        Ok(summary) => Ok((summary, pending)),
        // As read_image: a checksum that fails explains the rest.
        Err(error) => match pending.map(PendingHash::join) {
            Some((Err(hash_error), ..)) => Err(hash_error.into()),
            _ => Err(error),
        },
    }
}

/// Scans an etcd bbolt image from any [`ReadAt`] source: every revision of the
/// `key` bucket goes to `sink`; page-level problems go to
/// [`ObservationSink::read_error`] and the scan goes on; a file that is not
/// bbolt, not etcd, truncated, or whose trailer does not match is an `Err`,
/// and so is one whose meta pages (or size) changed during the walk
/// ([`BboltError::Changed`]: what the sink got must then be discarded).
pub fn read_image<R: ReadAt + Sync>(
    source: R,
    sink: &mut dyn ObservationSink,
    options: FileOptions,
) -> Result<FileSummary, FileError> {
    let db = Database::open(source)?;
    report_other_meta(&db, sink);
    let mut visitor = MvccVisitor::new(sink);
    let (walk, hashed) = std::thread::scope(|scope| {
        let hasher = options
            .verify_trailer
            .then(|| scope.spawn(|| hash_timed(&db)));
        let walk = walk_timed(&db, &mut visitor, hasher.is_none());
        (
            walk,
            hasher.map(|thread| thread.join().unwrap_or_else(|_| died())),
        )
    });
    // A checksum that fails explains whatever else went wrong.
    if let Some((Err(error), ..)) = hashed {
        return Err(error.into());
    }
    let mut summary = summarize(&db, walk, visitor)?;
    if let Some(hashed) = hashed {
        apply_hash(&mut summary, db.has_trailer(), hashed)?;
    }
    Ok(summary)
}

/// The file's SHA-256 (and trailer check) running on its own thread while
/// the caller works: [`PendingHash::finish`] waits for it.
#[must_use = "the summary has no checksum verdict until the hash is finished"]
#[derive(Debug)]
pub struct PendingHash {
    thread: std::thread::JoinHandle<HashOutcome>,
    has_trailer: bool,
}

impl PendingHash {
    /// Waits for the hash and puts its verdict, digest and CPU times in
    /// `summary`; a trailer that does not match (or a read that failed) is
    /// the `Err` the whole read would have been.
    pub fn finish(self, summary: &mut FileSummary) -> Result<(), FileError> {
        let has_trailer = self.has_trailer;
        apply_hash(summary, has_trailer, self.join())
    }

    fn join(self) -> HashOutcome {
        self.thread.join().unwrap_or_else(|_| died())
    }
}

/// What the checksum thread returns: the verdict and digest, its own CPU
/// time and its reader's.
type HashOutcome = (
    Result<(TrailerStatus, [u8; 32]), BboltError>,
    Option<std::time::Duration>,
    Option<std::time::Duration>,
);

fn hash_timed<R: ReadAt + Sync>(db: &Database<R>) -> HashOutcome {
    let cpu = cputime::thread_cpu_time();
    let (hashed, reader_cpu) = db.hash_file_timed(super::meta::HASH_BLOCK);
    (hashed, cputime::thread_cpu_since(cpu), reader_cpu)
}

fn died() -> HashOutcome {
    let problem = "checksum thread died".to_string();
    (
        Err(BboltError::Page {
            pgid: 0,
            offset: 0,
            problem,
        }),
        None,
        None,
    )
}

fn apply_hash(
    summary: &mut FileSummary,
    has_trailer: bool,
    (hashed, checksum_cpu, reader_cpu): HashOutcome,
) -> Result<(), FileError> {
    summary.cpu.checksum = checksum_cpu;
    summary.cpu.read_ahead += reader_cpu.unwrap_or_default();
    let (status, digest) = hashed?;
    summary.sha256 = Some(digest);
    summary.trailer = Some(if has_trailer {
        status
    } else {
        TrailerStatus::Absent
    });
    Ok(())
}

fn report_other_meta<R: ReadAt>(db: &Database<R>, sink: &mut dyn ObservationSink) {
    if let Err(problem) = db.other_meta() {
        sink.read_error(format!(
            "{problem}; using meta page {} (txid {})",
            db.meta().page,
            db.meta().txid
        ));
    }
}

/// The walk, timed. With the checksum thread busy on the second core, the
/// walk reads on its own thread: a read-ahead thread would only take turns
/// with the hash, which is the longer of the two.
fn walk_timed<R: ReadAt + Sync>(
    db: &Database<R>,
    visitor: &mut MvccVisitor<'_>,
    read_ahead: bool,
) -> (Result<WalkStats, BboltError>, Option<std::time::Duration>) {
    let cpu = cputime::thread_cpu_time();
    let walk = db.walk_with(visitor, read_ahead);
    (walk, cputime::thread_cpu_since(cpu))
}

/// The summary of a finished walk (all but the checksum's part), or why the
/// file cannot be reported: the walk failed, the file changed meanwhile, or
/// it is not etcd's.
fn summarize<R: ReadAt>(
    db: &Database<R>,
    (walk, walk_cpu): (Result<WalkStats, BboltError>, Option<std::time::Duration>),
    visitor: MvccVisitor<'_>,
) -> Result<FileSummary, FileError> {
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
        return Err(FileError::NotEtcd {
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
    // Until a hash says otherwise: not checked, or no trailer to check.
    summary.trailer = (!db.has_trailer()).then_some(TrailerStatus::Absent);
    summary.sha256 = None;
    summary.page_size = db.page_size();
    summary.pages = db.meta().high_water;
    summary.reachable_pages = walk.reachable.count();
    summary.reachable = walk.reachable;
    summary.txid = db.meta().txid;
    summary.bytes_read = walk.bytes_read;
    summary.cpu = ReadCpu {
        walk: walk_cpu,
        read_ahead: walk.read_ahead_cpu,
        checksum: None,
    };
    summary.file_size = db.file_size();
    summary.meta_fallback = db.meta_fallback().map(str::to_string);
    Ok(summary)
}

struct MvccVisitor<'s> {
    sink: &'s mut dyn ObservationSink,
    summary: FileSummary,
    first_page_error: Option<String>,
}

impl<'s> MvccVisitor<'s> {
    fn new(sink: &'s mut dyn ObservationSink) -> Self {
        Self {
            sink,
            summary: FileSummary::default(),
            first_page_error: None,
        }
    }
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

impl Visitor for MvccVisitor<'_> {
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
