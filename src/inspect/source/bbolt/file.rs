//! A bbolt backup file as an audit [`Source`]: reads its keyspace
//! ([`super::keyspace`]), then, when asked, its deep scan ([`super::deep`]),
//! and describes the file for the report (size, pages, txid, trailer, SHA-256).
use std::path::PathBuf;

use serde_json::json;

use super::keyspace::{self, FileOptions, FileSummary};
use super::{Database, TrailerStatus};
use crate::inspect::remnants::RemnantScope;
use crate::inspect::report::record::{self, Identity};
use crate::inspect::source::{
    PendingCheck, ReadScope, Source, SourceError, SourceInfo, SourceRead, StartedRead, Timings,
};
use crate::inspect::ObservationSink;

/// A backup file to audit.
#[derive(Debug, Clone)]
pub struct FileSource {
    /// The file: `etcdctl snapshot save` output or a copy of a member's
    /// `member/snap/db` (never the live file of a running etcd).
    pub path: PathBuf,
    /// Verify the snapshot trailer and hash the file (`--skip-checksum` off).
    pub verify_trailer: bool,
    /// Also search the pages the current meta page does not reach.
    pub deep: bool,
    /// With `deep`: list remnants, but do not count them as findings.
    pub ignore_residue: bool,
}

impl FileSource {
    /// `path`, checksummed, without the deep scan.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            verify_trailer: true,
            deep: false,
            ignore_residue: false,
        }
    }
}

impl Source for FileSource {
    fn label(&self) -> &'static str {
        "file"
    }

    fn read(
        &mut self,
        scope: &ReadScope<'_>,
        sink: &mut dyn ObservationSink,
    ) -> Result<StartedRead, SourceError> {
        let path = &self.path;
        let options = FileOptions {
            verify_trailer: self.verify_trailer,
        };
        let started = std::time::Instant::now();
        let context = format!("scanning {}", path.display());
        let scan_error = |error| SourceError::new(context.clone(), error);
        let (mut summary, pending) =
            keyspace::start_read_file(path, sink, options).map_err(scan_error)?;
        let mut notices = Vec::new();
        if let Some(notice) = &summary.meta_fallback {
            notices.push(notice.clone());
        }
        let remnants = if self.deep {
            let remnant_scope = RemnantScope {
                prefix: scope.prefix.to_vec(),
                resources: scope.resources.clone(),
                classifier: scope.classifier.clone(),
            };
            // The deep scan runs while the checksum does.
            match self.deep_scan(&summary, &remnant_scope) {
                Ok(mut report) => {
                    report.ignored = self.ignore_residue;
                    Some(report)
                }
                Err(error) => {
                    // A checksum that fails explains the rest.
                    if let Some(pending) = pending {
                        pending.finish(&mut summary).map_err(scan_error)?;
                    }
                    return Err(error);
                }
            }
        } else {
            None
        };
        let read = SourceRead {
            info: self.info(&summary),
            remnants,
            timings: Some(timings(&summary, started)),
            notices,
        };
        let Some(pending) = pending else {
            return Ok(read.into());
        };
        // The caller works while the checksum runs: the read is complete
        // when it finishes (StartedRead::finish), with the digest in it.
        let source = self.clone();
        let check: PendingCheck = Box::new(move |read: &mut SourceRead| {
            pending
                .finish(&mut summary)
                .map_err(|error| SourceError::new(context, error))?;
            read.info = source.info(&summary);
            read.timings = Some(timings(&summary, started));
            Ok(())
        });
        Ok(StartedRead::checking(read, check))
    }
}

/// The read's wall time (to now) and its threads' CPU times.
fn timings(summary: &FileSummary, started: std::time::Instant) -> Timings {
    Timings {
        wall: started.elapsed(),
        walk: summary.cpu.walk,
        read_ahead: Some(summary.cpu.read_ahead),
        checksum: summary.cpu.checksum,
    }
}

impl FileSource {
    /// The deep scan: the pages the keyspace walk did not reach.
    fn deep_scan(
        &self,
        summary: &FileSummary,
        scope: &RemnantScope,
    ) -> Result<crate::inspect::remnants::RemnantReport, SourceError> {
        let path = &self.path;
        let file = std::fs::File::open(path).map_err(|error| {
            SourceError::new(
                format!("opening {} for the deep scan", path.display()),
                error,
            )
        })?;
        let deep_error =
            |error| SourceError::new(format!("deep scan of {}", path.display()), error);
        let db = Database::open(file).map_err(deep_error)?;
        if db.meta().txid != summary.txid {
            return Err(SourceError::plain(format!(
                "deep scan of {}: the file changed during the scan (txid {} then {}); scan a copy or a snapshot",
                path.display(),
                summary.txid,
                db.meta().txid
            )));
        }
        super::deep::search(&db, &summary.reachable, scope).map_err(deep_error)
    }

    /// What the report says about the file.
    fn info(&self, summary: &FileSummary) -> SourceInfo {
        let mut details = serde_json::Map::new();
        details.insert("file_size".into(), json!(summary.file_size));
        details.insert("page_size".into(), json!(summary.page_size));
        details.insert("pages".into(), json!(summary.pages));
        details.insert("reachable_pages".into(), json!(summary.reachable_pages));
        details.insert("txid".into(), json!(summary.txid));
        details.insert("revisions".into(), json!(summary.revisions));
        details.insert(
            "scheduled_compact_revision".into(),
            json!(summary.scheduled_compact_revision),
        );
        details.insert("consistent_index".into(), json!(summary.consistent_index));
        details.insert("meta_fallback".into(), json!(summary.meta_fallback));
        details.insert(
            "snapshot_checksum".into(),
            json!(match summary.trailer {
                Some(TrailerStatus::Verified) => "verified",
                Some(TrailerStatus::Absent) => "absent",
                None => "not checked",
            }),
        );
        SourceInfo {
            kind: "file",
            location: self.path.display().to_string(),
            identity: Identity {
                sha256: summary.sha256.map(|digest| record::hex(&digest)),
                ..Identity::default()
            },
            revision: summary.revision,
            compact_revision: summary.compact_revision,
            // Every revision in the file is read; --ignore-history only stops
            // judging the older ones, and the scope says so.
            history_examined: true,
            details,
            scanned_at: None,
        }
    }
}
