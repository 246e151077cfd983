//! etcd's write-ahead log (`member/wal/*.wal`), read by our own code: every
//! put a raft entry carries becomes an [`Observed::Put`] handed to the sink
//! with its [`Location::Wal`] (segment, byte offset, raft term and index),
//! so the scan engine classifies it like a database value and reports it as
//! a copy outside the keyspace. The WAL keeps the value as the apiserver sent
//! it: a Secret written before encryption was enabled is plaintext here until
//! etcd purges the segment, however clean the database is.
//!
//! Owns: ordering segments by name (`%016x-%016x.wal`: sequence, first raft
//! index), carrying the CRC chain from one segment to the next when their
//! sequence numbers are consecutive, and turning damage into read errors that
//! name the segment and byte offset (the scan goes on with the next segment).
//! [`segment`] owns the framing and the CRC; [`request`] the protobuf.

pub mod request;
pub mod segment;

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use serde_json::json;

use self::request::{decode_entry, decode_request, Form, Op};
use self::segment::{RecordType, SegmentEnd, SegmentReader};
use super::{ReadScope, Source, SourceError, SourceInfo, SourceRead, StartedRead};
use crate::inspect::report::record::Identity;
use crate::inspect::{Location, ObservationSink, Observed, Revision};

/// Read buffer per segment (records are small; this amortizes the syscalls).
const READ_BUFFER: usize = 1 << 20;

/// A segment's name: `%016x-%016x.wal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SegmentName {
    /// Sequence number (consecutive in a log).
    pub sequence: u64,
    /// Raft index of the first entry after it.
    pub index: u64,
}

impl SegmentName {
    /// Parses a file name such as `0000000000000001-0000000000000a3c.wal`.
    pub fn parse(name: &str) -> Option<Self> {
        let stem = name.strip_suffix(".wal")?;
        let (sequence, index) = stem.split_once('-')?;
        if sequence.len() != 16 || index.len() != 16 {
            return None;
        }
        Some(Self {
            sequence: u64::from_str_radix(sequence, 16).ok()?,
            index: u64::from_str_radix(index, 16).ok()?,
        })
    }

    fn of(path: &Path) -> Option<Self> {
        path.file_name()?.to_str().and_then(Self::parse)
    }
}

/// What a WAL read covered, for the summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalSummary {
    /// Segments read (damaged ones included).
    pub segments: u64,
    /// Bytes of the segments (preallocated zeros included).
    pub bytes: u64,
    /// Records read.
    pub records: u64,
    /// Raft entries read.
    pub entries: u64,
    /// Puts found in them (any key).
    pub puts: u64,
    /// Deletes found in them.
    pub deletes: u64,
    /// Entries in the v2 request form.
    pub v2_requests: u64,
    /// Highest raft index seen.
    pub last_index: u64,
    /// Segments that ended at a torn record (tolerated): path and offset.
    pub torn: Vec<(String, u64)>,
    /// Segments that could not be read to their end.
    pub damaged: u64,
}

/// The segments in log order: by sequence number when the names are
/// etcd's, else by path.
pub fn order_segments(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut sorted = paths.to_vec();
    sorted
        .sort_by(|a, b| (SegmentName::of(a), a.as_path()).cmp(&(SegmentName::of(b), b.as_path())));
    sorted
}

/// The `*.wal` files of a directory (`member/wal`), in log order.
pub fn segments_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "wal") && path.is_file() {
            paths.push(path);
        }
    }
    Ok(order_segments(&paths))
}

/// Reads `paths` (in log order, see [`order_segments`]) and hands every put
/// to `sink` with its location. Damage is a read error naming the segment and
/// byte offset; the scan goes on with the next segment.
pub fn scan_segments(paths: &[PathBuf], sink: &mut dyn ObservationSink) -> WalSummary {
    let mut summary = WalSummary::default();
    let mut previous: Option<(SegmentName, u32)> = None;
    for (position, path) in paths.iter().enumerate() {
        let last = position + 1 == paths.len();
        let name = SegmentName::of(path);
        // The chain continues only into the next segment of the same log.
        let seed = match (previous, name) {
            (Some((before, crc)), Some(name))
                if before.sequence.checked_add(1) == Some(name.sequence) =>
            {
                crc
            }
            _ => 0,
        };
        previous = None;
        summary.segments += 1;
        let label = path.display().to_string();
        let file = match File::open(path).and_then(|file| {
            let size = file.metadata()?.len();
            Ok((file, size))
        }) {
            Ok(opened) => opened,
            Err(error) => {
                summary.damaged += 1;
                sink.read_error(format!("WAL segment {label}: cannot read it: {error}"));
                continue;
            }
        };
        let (file, size) = file;
        summary.bytes += size;
        let mut reader = SegmentReader::new(
            BufReader::with_capacity(READ_BUFFER, file),
            size,
            seed,
            last,
        );
        let complete = loop {
            let record = match reader.next_record() {
                Ok(Some(record)) => record,
                Ok(None) => break true,
                Err(error) => {
                    summary.damaged += 1;
                    sink.read_error(format!(
                        "WAL segment {label}: {error}; records after it were not read"
                    ));
                    break false;
                }
            };
            summary.records += 1;
            if record.kind != RecordType::Entry {
                continue;
            }
            summary.entries += 1;
            let entry = match decode_entry(record.data) {
                Ok(entry) => entry,
                Err(error) => {
                    sink.read_error(format!(
                        "WAL segment {label}: the entry at byte offset {} is not a raft entry: {error}",
                        record.offset
                    ));
                    continue;
                }
            };
            summary.last_index = summary.last_index.max(entry.index);
            if entry.entry_type != 0 {
                continue;
            }
            let mut ops = Vec::new();
            match decode_request(entry.data, &mut ops) {
                Ok(Form::V2) => summary.v2_requests += 1,
                Ok(_) => {}
                Err(error) => {
                    sink.read_error(format!(
                        "WAL segment {label}: the entry at byte offset {} (raft term {}, index {}): {error}",
                        record.offset, entry.term, entry.index
                    ));
                    continue;
                }
            }
            let location = Location::Wal {
                segment: &label,
                offset: record.offset,
                term: entry.term,
                index: entry.index,
            };
            for op in &ops {
                match *op {
                    Op::Put { key, value } => {
                        summary.puts += 1;
                        sink.observe_copy(
                            Observed::Put {
                                key,
                                revision: Revision::default(),
                                value,
                            },
                            location,
                        );
                    }
                    Op::Delete { .. } => summary.deletes += 1,
                }
            }
        };
        if let Some(SegmentEnd::Torn { offset }) = reader.end() {
            summary.torn.push((label.clone(), offset));
        }
        if complete {
            if let Some(name) = name {
                previous = Some((name, reader.crc()));
            }
        }
    }
    summary
}

/// WAL segments read alone (`scan --wal FILE...`): the report says nothing
/// of the database.
#[derive(Debug, Clone, Default)]
pub struct WalSource {
    /// The segments, in any order ([`order_segments`] sorts them).
    pub paths: Vec<PathBuf>,
}

impl Source for WalSource {
    fn label(&self) -> &'static str {
        "wal"
    }

    fn read(
        &mut self,
        _scope: &ReadScope<'_>,
        sink: &mut dyn ObservationSink,
    ) -> Result<StartedRead, SourceError> {
        if self.paths.is_empty() {
            return Err(SourceError::plain("--wal: no segment given"));
        }
        let ordered = order_segments(&self.paths);
        let summary = scan_segments(&ordered, sink);
        let mut details = serde_json::Map::new();
        details.insert("wal".into(), summary.details());
        Ok(SourceRead {
            info: SourceInfo {
                kind: "wal",
                location: ordered
                    .iter()
                    .map(|path| path.display().to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                identity: Identity::default(),
                revision: 0,
                compact_revision: None,
                // Every entry is read; an entry has no older revisions.
                history_examined: true,
                details,
                scanned_at: None,
            },
            ..SourceRead::default()
        }
        .into())
    }
}

impl WalSummary {
    /// The summary's `details.wal`.
    pub fn details(&self) -> serde_json::Value {
        json!({
            "segments": self.segments,
            "bytes": self.bytes,
            "records": self.records,
            "entries": self.entries,
            "puts": self.puts,
            "deletes": self.deletes,
            "v2_requests": self.v2_requests,
            "last_index": self.last_index,
            "damaged_segments": self.damaged,
            "torn_tails": self.torn.iter().map(|(segment, offset)| json!({"segment": segment, "offset": offset})).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests;
