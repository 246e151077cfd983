//! The JSON Lines writer: the typed records of [`super::record`], one line
//! each; strings from etcd are [`Field`]s (`{"text":..}` or `{"bytes":..}`).
use std::io::{self, Write};

use super::record::{Field, LocationRecord, Record, ResidueRecord, ValueRecord};
use super::summary::summary_record;
use super::Report;
use crate::inspect::audit::{AuditResult, ClassInfo, CopyLocation};

fn optional_field(result: &AuditResult, id: Option<u32>) -> Option<Field<'_>> {
    id.map(|id| Field::from_bytes(result.string(id)))
}

/// A value record with what the classification says (revision 0, not
/// latest, no finding: the caller fills those in).
fn value_record<'r>(
    result: &'r AuditResult,
    key: &'r [u8],
    resource: &'r [u8],
    class: &'r ClassInfo,
) -> ValueRecord<'r> {
    let annotation_keys = match class.annotation_keys {
        Some(id) => result
            .string(id)
            .split(|&byte| byte == b',')
            .map(Field::from_bytes)
            .collect(),
        None => Vec::new(),
    };
    ValueRecord {
        key: Field::from_bytes(key),
        resource: Field::from_bytes(resource),
        revision: 0,
        sub_revision: 0,
        latest: false,
        encrypted: class.provider.is_encrypted(),
        provider: class.provider.as_str().into(),
        provider_name: optional_field(result, class.name),
        key_id: optional_field(result, class.key_id),
        dek_source_type: class.dek_source_type.map(|t| t.as_str().into()),
        kind: optional_field(result, class.kind),
        api_version: optional_field(result, class.api_version),
        encoding: class.encoding.map(|e| e.as_str().into()),
        annotation_keys,
        problem: class.malformation.map(|m| m.as_str().into()),
        finding: None,
        verify: None,
        location: None,
    }
}

fn write_record(out: &mut dyn Write, line: &mut Vec<u8>, record: &Record<'_>) -> io::Result<()> {
    line.clear();
    serde_json::to_writer(&mut *line, record)?;
    line.push(b'\n');
    out.write_all(line)
}

/// The `value` records, in the order written: each value examined, then
/// the copies outside the keyspace (WAL entries, leftover snap.db files) in
/// the order read, each with where it is.
fn value_records(result: &AuditResult) -> impl Iterator<Item = Record<'_>> {
    let values = result.values().map(move |value| {
        let mut record = value_record(result, value.key, value.resource, value.class);
        record.revision = value.revision.main;
        record.sub_revision = value.revision.sub;
        record.latest = value.latest;
        record.finding = value.finding.map(|finding| finding.code().into());
        record.verify = value.verify_failure.map(|failure| failure.code().into());
        Record::Value(record)
    });
    let copies = result.copies().map(move |copy| {
        let mut record = value_record(result, copy.key, copy.resource, copy.class);
        record.finding = copy.finding.map(|finding| finding.code().into());
        record.location = Some(match copy.location {
            CopyLocation::Wal {
                segment,
                offset,
                term,
                index,
            } => LocationRecord {
                kind: "wal".into(),
                file: Field::from_bytes(segment),
                offset: Some(offset),
                term: Some(term),
                index: Some(index),
            },
            CopyLocation::SnapDb { file, revision } => {
                record.revision = revision.main;
                record.sub_revision = revision.sub;
                LocationRecord {
                    kind: "snap-db".into(),
                    file: Field::from_bytes(file),
                    offset: None,
                    term: None,
                    index: None,
                }
            }
        });
        Record::Value(record)
    });
    values.chain(copies)
}

/// The first `value` lines of a result, formatted ahead of writing (while
/// the source's checksum still runs), at most about a budget of bytes.
#[derive(Debug, Default)]
pub struct JsonAhead {
    lines: Vec<u8>,
    records: usize,
}

impl JsonAhead {
    /// Formats the first value records of `result` until `budget` bytes
    /// are reached (the line that crosses it is kept whole).
    pub fn format(result: &AuditResult, budget: usize) -> Self {
        // Reserved once (pages untouched stay out of memory): growing by
        // doubling would copy megabytes on the way.
        let records = result.values().count() + result.copies().count();
        let mut ahead = Self {
            lines: Vec::with_capacity(
                budget
                    .saturating_add(1024)
                    .min(records.saturating_mul(1024)),
            ),
            records: 0,
        };
        let mut line = Vec::with_capacity(1024);
        for record in value_records(result) {
            if ahead.lines.len() >= budget {
                break;
            }
            // Writing to a Vec cannot fail; a record that would not
            // serialize is left to the writer, which reports it.
            if write_record(&mut ahead.lines, &mut line, &record).is_err() {
                break;
            }
            ahead.records += 1;
        }
        ahead
    }
}

/// Writes JSON Lines: a `value` record per value, one `residue` record per
/// remnant of the deep scan, then the `summary` record. `ahead` holds the
/// first value lines already formatted from the same result.
pub(super) fn write(out: &mut dyn Write, report: &Report, ahead: JsonAhead) -> io::Result<()> {
    let (result, residue) = (&report.result, report.remnants.as_ref());
    out.write_all(&ahead.lines)?;
    let mut line = Vec::with_capacity(1024);
    for record in value_records(result).skip(ahead.records) {
        write_record(out, &mut line, &record)?;
    }
    for remnant in residue.map_or(&[][..], |residue| residue.remnants.as_slice()) {
        let finding = remnant.plaintext && residue.is_some_and(|residue| !residue.ignored);
        let record = Record::Residue(ResidueRecord {
            form: remnant.form.as_str().into(),
            page: remnant.page,
            offset: remnant.offset,
            key: remnant.key.as_deref().map(Field::from_bytes),
            resource: remnant.resource.as_deref().map(Into::into),
            kind: remnant.kind.as_deref().map(Into::into),
            provider: remnant.provider.map(|p| p.as_str().into()),
            plaintext: remnant.plaintext,
            finding: finding.then_some("residue".into()),
        });
        write_record(out, &mut line, &record)?;
    }
    let summary = Record::Summary(Box::new(summary_record(report)));
    write_record(out, &mut line, &summary)?;
    out.flush()
}
