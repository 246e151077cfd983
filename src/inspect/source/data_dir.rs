//! A member's data dir (etcd's `--data-dir`, or a copy of one) as one audit
//! [`Source`]: its database `member/snap/db` (read as a backup file, under
//! the same lock rule: refused while etcd runs), then every write-ahead log
//! segment `member/wal/*.wal` ([`super::wal`]) and every leftover
//! `member/snap/*.snap.db` (a database received from the leader). What the
//! WAL and the snap.db files hold is handed to the sink as copies
//! ([`ObservationSink::observe_copy`]): judged alone, never as the
//! keyspace's history.
use std::path::{Path, PathBuf};

use serde_json::json;

use super::bbolt::{read_file, FileOptions, FileSource};
use super::wal::{scan_segments, segments_in, WalSummary};
use super::{ReadScope, Source, SourceError, StartedRead};
use crate::inspect::{CopySink, ObservationSink};

/// A data dir to audit.
#[derive(Debug, Clone)]
pub struct DataDirSource {
    /// The directory holding `member/`.
    pub dir: PathBuf,
    /// Verify the db's trailer and hash it (`--skip-checksum` off).
    pub verify_trailer: bool,
    /// Also search the db's unreachable pages (`--deep`).
    pub deep: bool,
    /// With `deep`: list remnants, but do not count them as findings.
    pub ignore_residue: bool,
}

impl DataDirSource {
    /// `dir`, checksummed, without the deep scan.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            verify_trailer: true,
            deep: false,
            ignore_residue: false,
        }
    }
}

impl Source for DataDirSource {
    fn label(&self) -> &'static str {
        "data dir"
    }

    fn read(
        &mut self,
        scope: &ReadScope<'_>,
        sink: &mut dyn ObservationSink,
    ) -> Result<StartedRead, SourceError> {
        let member = self.dir.join("member");
        let snap = member.join("snap");
        let db = snap.join("db");
        if !db.is_file() {
            return Err(SourceError::plain(format!(
                "{}: not found: --data-dir takes the directory etcd's --data-dir names (it holds member/snap/db and member/wal); for WAL segments alone use --wal",
                db.display()
            )));
        }
        let mut db_source = FileSource {
            path: db.clone(),
            verify_trailer: self.verify_trailer,
            deep: self.deep,
            ignore_residue: self.ignore_residue,
        };
        // The WAL and the snap.db files are read while the db's checksum
        // still runs on its own thread.
        let started = db_source.read(scope, sink)?;
        let wal = read_wal(&member.join("wal"), sink);
        let snap_dbs = read_snap_dbs(&snap, sink);
        let mut read = started.finish()?;
        let info = &mut read.info;
        info.kind = "data-dir";
        info.location = self.dir.display().to_string();
        info.details
            .insert("db".into(), json!(db.display().to_string()));
        info.details.insert("wal".into(), wal.details());
        info.details.insert("snap_dbs".into(), json!(snap_dbs));
        Ok(read.into())
    }
}

/// Every segment of `wal_dir`; a missing or empty WAL is a read error (every
/// member has one: the report would not cover it).
fn read_wal(wal_dir: &Path, sink: &mut dyn ObservationSink) -> WalSummary {
    let segments = match segments_in(wal_dir) {
        Ok(segments) => segments,
        Err(error) => {
            sink.read_error(format!(
                "{}: cannot list the write-ahead log: {error}",
                wal_dir.display()
            ));
            return WalSummary::default();
        }
    };
    if segments.is_empty() {
        sink.read_error(format!(
            "{}: no WAL segment (*.wal): a member's data dir always has one; the report does not cover the write-ahead log",
            wal_dir.display()
        ));
    }
    scan_segments(&segments, sink)
}

/// Every leftover `*.snap.db` in `snap_dir`, read as copies; what each held.
fn read_snap_dbs(snap_dir: &Path, sink: &mut dyn ObservationSink) -> Vec<serde_json::Value> {
    let mut paths: Vec<PathBuf> = match std::fs::read_dir(snap_dir) {
        Ok(entries) => entries
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| {
                path.file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| name.ends_with(".snap.db"))
            })
            .collect(),
        Err(error) => {
            sink.read_error(format!("{}: cannot list it: {error}", snap_dir.display()));
            return Vec::new();
        }
    };
    paths.sort();
    let mut read = Vec::new();
    for path in paths {
        let label = path.display().to_string();
        let mut copies = CopySink {
            inner: &mut *sink,
            file: &label,
        };
        // A snap.db from the leader carries no snapshot trailer.
        let options = FileOptions {
            verify_trailer: false,
        };
        match read_file(&path, &mut copies, options) {
            Ok(summary) => read.push(json!({
                "file": label,
                "revision": summary.revision,
                "revisions": summary.revisions,
            })),
            Err(error) => sink.read_error(format!("{label}: {error}")),
        }
    }
    read
}
