//! Where an audit reads from: one module per kind of source, each turning
//! what it reads into [`Observed`](super::Observed) events for one
//! [`ObservationSink`] and saying what it read ([`SourceInfo`]).
//!
//! - [`bbolt`]: an etcd backup file (`etcdctl snapshot save` output or a copy
//!   of a member's `member/snap/db`), and its deep scan (`--deep`).
//! - [`live`]: a running etcd over its v3 API.
//!
//! - [`wal`]: a member's write-ahead log segments, each put a copy with its
//!   segment, offset, raft term and index.
//! - [`data_dir`]: a member's whole data dir: its db, its WAL and leftover
//!   snap.db files, as one report.
//!
//! A new source is a module here implementing [`Source`]:
//! [`crate::inspect::audit`] drives any [`Source`], and the report does not
//! know which one it was.

use serde_json::{Map, Value};

use super::audit::LedgerOptions;
use super::classify::Classifier;
use super::remnants::RemnantReport;
use super::report::record::Identity;
use super::resource::ResourceFilter;
use super::ObservationSink;

pub mod bbolt;
pub mod data_dir;
pub mod live;
pub mod wal;

/// A place an audit reads etcd's keys from.
pub trait Source {
    /// What the progress line calls it (`file`, `etcd`).
    fn label(&self) -> &'static str;

    /// Reads everything in `scope` into `sink` (page-level problems go to
    /// [`ObservationSink::read_error`]); an `Err` means the read is
    /// incomplete and nothing the sink got may be reported. A check of what
    /// was read may still be running when this returns (a backup file's
    /// SHA-256): the caller may work on what the sink got meanwhile, but
    /// reports nothing before [`StartedRead::finish`] says the read stands.
    fn read(
        &mut self,
        scope: &ReadScope<'_>,
        sink: &mut dyn ObservationSink,
    ) -> Result<StartedRead, SourceError>;
}

/// A read whose last check may still be running. What it read is only
/// reachable through [`StartedRead::finish`], which waits for the check, so
/// no caller can report a read whose check failed or never ended.
#[must_use = "a read is only complete once finished"]
pub struct StartedRead {
    read: SourceRead,
    pending: Option<PendingCheck>,
}

/// Waits for a check and completes the read with its verdict (the file's
/// digest, its trailer status, the checksum thread's CPU time), or fails it.
pub type PendingCheck = Box<dyn FnOnce(&mut SourceRead) -> Result<(), SourceError> + Send>;

impl StartedRead {
    /// `read`, complete once `check` passes.
    pub fn checking(read: SourceRead, check: PendingCheck) -> Self {
        Self {
            read,
            pending: Some(check),
        }
    }

    /// True while a check may still be running (until [`StartedRead::finish`]).
    pub fn is_checking(&self) -> bool {
        self.pending.is_some()
    }

    /// Waits for the check still running, if any: the complete read, or
    /// why it does not stand (then nothing the sink got may be reported).
    pub fn finish(self) -> Result<SourceRead, SourceError> {
        let mut read = self.read;
        if let Some(check) = self.pending {
            check(&mut read)?;
        }
        Ok(read)
    }
}

impl From<SourceRead> for StartedRead {
    /// A read with nothing left to check.
    fn from(read: SourceRead) -> Self {
        Self {
            read,
            pending: None,
        }
    }
}

impl std::fmt::Debug for StartedRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartedRead")
            .field("read", &self.read)
            .field("pending", &self.pending.is_some())
            .finish()
    }
}

/// What the audit asks a source for (the same scope the ledger judges).
#[derive(Debug, Clone, Copy)]
pub struct ReadScope<'a> {
    /// Key prefix (`/registry`).
    pub prefix: &'a [u8],
    /// Resources in scope.
    pub resources: &'a ResourceFilter,
    /// `--ignore-history`: older revisions are not judged (a source may
    /// skip reading them).
    pub ignore_history: bool,
    /// The classifier (the deep scan classifies the records it recovers).
    pub classifier: &'a Classifier,
}

impl<'a> ReadScope<'a> {
    /// The scope of a ledger's options.
    pub fn of(options: &'a LedgerOptions) -> Self {
        Self {
            prefix: &options.prefix,
            resources: &options.resources,
            ignore_history: options.ignore_history,
            classifier: &options.classifier,
        }
    }
}

/// What a source read besides the observations.
#[derive(Debug, Default)]
pub struct SourceRead {
    /// What it was, for the report's summary.
    pub info: SourceInfo,
    /// The deep scan's remnants, when one was asked for.
    pub remnants: Option<RemnantReport>,
    /// CPU time of the read's threads (a file read measures them).
    pub timings: Option<Timings>,
    /// Things the operator should know that are not errors (e.g. the older
    /// meta page was used), in the order they happened.
    pub notices: Vec<String>,
}

/// Wall and per-thread CPU time of a read (`None`: not measured or not
/// measurable here, see [`crate::inspect::cputime`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// Wall time of the read.
    pub wall: std::time::Duration,
    /// The walk: parsing, decoding, classifying.
    pub walk: Option<std::time::Duration>,
    /// The read-ahead threads.
    pub read_ahead: Option<std::time::Duration>,
    /// The checksum thread (`None`: not run).
    pub checksum: Option<std::time::Duration>,
}

/// Where the values came from, for the summary.
#[derive(Debug, Clone, Default)]
pub struct SourceInfo {
    /// `file`, `live`, `data-dir` or `wal`.
    pub kind: &'static str,
    /// The file path or the endpoints.
    pub location: String,
    /// Which data: the file's SHA-256, or the cluster and member ids.
    pub identity: Identity,
    /// Highest revision seen (file) or the revision the scan was pinned to (live).
    pub revision: i64,
    /// Last completed compaction, if known.
    pub compact_revision: Option<i64>,
    /// False when older revisions were not examined (`--ignore-history`).
    pub history_examined: bool,
    /// Further facts (page size, trailer status...), shown as-is.
    pub details: Map<String, Value>,
    /// When the scan started (the destroy gate compares it with the time a
    /// key was disabled).
    pub scanned_at: Option<std::time::SystemTime>,
}

/// A source could not be read (completely). Its message says what was being
/// read; the cause follows in [`std::error::Error::source`].
#[derive(Debug, thiserror::Error)]
#[error("{context}")]
pub struct SourceError {
    context: String,
    #[source]
    cause: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl SourceError {
    /// `context` (what was being read), failed because of `cause`.
    pub fn new(
        context: impl Into<String>,
        cause: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Self {
            context: context.into(),
            cause: Some(cause.into()),
        }
    }

    /// A failure with no underlying error.
    pub fn plain(message: impl Into<String>) -> Self {
        Self {
            context: message.into(),
            cause: None,
        }
    }
}
