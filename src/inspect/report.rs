//! Rendering of a [`ScanResult`]: the terminal table and JSON Lines.
//!
//! Owns the output formats and the exit code. JSON Lines: the typed records
//! of [`super::record`] (one `value` record per value examined, sorted by key
//! then revision, one `residue` record per `--deep` remnant, then the
//! `summary` record, which states the scope: source and its identity,
//! prefix, resources, whether history was examined). Strings from etcd are
//! [`Field`]s (`{"text":..}` or `{"bytes":..}`). Values are never written:
//! only what they are. In the table every string from etcd is escaped
//! ([`escape`]): a key cannot move the cursor or forge a line.

use std::io::{self, Write};

use serde_json::{json, Map, Value};

use super::classify::Provider;
use super::record::{
    self, AllResources, Field, GroupRecord, Identity, Record, ResidueRecord, ResourceCounts,
    ResourceScope, Scope, SummaryRecord, ValueRecord,
};
use super::residue::ResidueReport;
use super::scan::{Finding, ResourceFilter, ScanResult};
use super::stale::stale_report;
use super::verify::VerifySummary;

/// Exit code: nothing wrong.
pub const EXIT_CLEAN: u8 = 0;
/// Exit code: findings.
pub const EXIT_FINDINGS: u8 = 1;
/// Exit code: an error (also a non-fatal read error during the scan).
pub const EXIT_ERROR: u8 = 2;

/// Where the values came from, for the summary.
#[derive(Debug, Clone, Default)]
pub struct SourceInfo {
    /// `file` or `live`.
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

/// The exit code a result calls for.
pub fn exit_code(result: &ScanResult) -> u8 {
    exit_code_deep(result, None)
}

/// The exit code a result and a deep scan's remnants call for: plaintext
/// remnants are findings unless `--ignore-residue`.
pub fn exit_code_deep(result: &ScanResult, residue: Option<&ResidueReport>) -> u8 {
    if !result.read_errors().is_empty() {
        EXIT_ERROR
    } else if result.values().any(|value| value.finding.is_some())
        || residue.is_some_and(ResidueReport::has_findings)
    {
        EXIT_FINDINGS
    } else {
        EXIT_CLEAN
    }
}

/// The summary record's data, as JSON.
pub fn summary_json(result: &ScanResult, source: &SourceInfo) -> Value {
    summary_json_deep(result, source, None)
}

/// The summary record's data with the deep scan's counts, as JSON.
pub fn summary_json_deep(
    result: &ScanResult,
    source: &SourceInfo,
    residue: Option<&ResidueReport>,
) -> Value {
    serde_json::to_value(summary_record(result, source, residue)).unwrap_or(Value::Null)
}

/// What clears remnants in free pages.
pub const RESIDUE_REMEDY: &str = "remnants in free pages stay in the etcd file until compaction, then `etcdctl defrag`, then a new backup (backups taken before keep them)";

/// The summary's `residue` object.
fn residue_summary(residue: &ResidueReport) -> Value {
    json!({
        "remnants": residue.remnants.len(),
        "plaintext": residue.plaintext_count(),
        "with_key": residue.remnants.iter().filter(|r| r.key.is_some()).count(),
        "pages_examined": residue.pages_examined,
        "slack_bytes": residue.slack_bytes,
        "bytes_read": residue.bytes_read,
        "ignored": residue.ignored,
        "remedy": RESIDUE_REMEDY,
    })
}

/// The scope a result was scanned with.
pub fn scope(result: &ScanResult, source: &SourceInfo) -> Scope {
    let options = result.options();
    Scope {
        prefix: String::from_utf8_lossy(&options.prefix).into_owned(),
        resources: match &options.resources {
            ResourceFilter::All => ResourceScope::All(AllResources::All),
            ResourceFilter::Only(names) => ResourceScope::Only(names.clone()),
        },
        history_examined: source.history_examined && !options.ignore_history,
    }
}

/// The summary record, with the deep scan's counts when it ran.
pub fn summary_record(
    result: &ScanResult,
    source: &SourceInfo,
    residue: Option<&ResidueReport>,
) -> SummaryRecord {
    let resources = result
        .resource_summaries()
        .into_iter()
        .map(|(resource, summary)| {
            (
                resource,
                ResourceCounts {
                    latest: summary.latest,
                    history: summary.history,
                    history_plaintext: summary.history_plaintext,
                    deleted: summary.deleted,
                    events: summary.events,
                },
            )
        })
        .collect();
    let owned = |bytes: &Option<Vec<u8>>| {
        bytes
            .as_deref()
            .map(|bytes| match Field::from_bytes(bytes) {
                Field::Text(text) => Field::Text(text.into_owned().into()),
                Field::Bytes(encoded) => Field::Bytes(encoded.into_owned().into()),
            })
    };
    let groups = result
        .groups()
        .into_iter()
        .map(|(group, counts)| GroupRecord {
            resource: group.resource,
            provider: group.provider.as_str().to_string(),
            provider_name: owned(&group.name),
            key_id: owned(&group.key_id),
            latest: counts.latest,
            history: counts.history,
        })
        .collect();
    let mut findings: std::collections::BTreeMap<String, u64> = result
        .finding_counts()
        .into_iter()
        .map(|(finding, count)| (finding.code().to_string(), count))
        .collect();
    let stale = stale_report(result).map(|report| {
        let latest = report.latest();
        let by_key_id: Map<String, Value> = report
            .by_key_id
            .into_iter()
            .map(|(key_id, counts)| {
                (
                    key_id,
                    json!({"latest": counts.latest, "history": counts.history}),
                )
            })
            .collect();
        json!({"current_key_ids": report.current, "key_ids": by_key_id, "latest": latest})
    });
    if let Some(residue) = residue {
        let plaintext = residue.plaintext_count();
        if plaintext > 0 && !residue.ignored {
            findings.insert("residue".to_string(), plaintext as u64);
        }
    }
    SummaryRecord {
        schema_version: record::SCHEMA_VERSION,
        tool: record::TOOL.to_string(),
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        scanned_at: source
            .scanned_at
            .map(|time| humantime::format_rfc3339_seconds(time).to_string()),
        source: source.kind.to_string(),
        location: source.location.clone(),
        identity: source.identity.clone(),
        revision: source.revision,
        compact_revision: source.compact_revision,
        scope: scope(result, source),
        keys: result.key_count() as u64,
        values: result.values().count() as u64,
        out_of_scope: result.out_of_scope(),
        resources,
        groups,
        findings,
        stale,
        verify: result.verification().map(verify_json),
        read_errors: result.read_errors().to_vec(),
        residue: residue.map(residue_summary),
        details: source.details.clone(),
        exit_code: exit_code_deep(result, residue),
    }
}

fn verify_json(summary: &VerifySummary) -> Value {
    let by_provider = |counts: &std::collections::BTreeMap<Provider, u64>| -> Map<String, Value> {
        counts
            .iter()
            .map(|(provider, count)| (provider.as_str().to_string(), json!(count)))
            .collect()
    };
    let failed: Map<String, Value> = summary
        .failed
        .iter()
        .map(|(failure, count)| (failure.code().to_string(), json!(count)))
        .collect();
    let decrypt_failures: Vec<Value> = summary
        .unwrap_failures
        .iter()
        .map(|failure| {
            json!({
                "key_id": failure.key_id,
                "reason": failure.failure.code(),
                "detail": failure.detail,
            })
        })
        .collect();
    json!({
        "kms_plugin": summary.kms_source,
        "encryption_config": summary.with_encryption_config,
        "decrypt_calls": summary.decrypt_calls,
        "verified": by_provider(&summary.verified),
        "failed": failed,
        "not_verified": by_provider(&summary.not_verified),
        "decrypt_failures": decrypt_failures,
    })
}

fn optional_field(result: &ScanResult, id: Option<u32>) -> Option<Field<'_>> {
    id.map(|id| Field::from_bytes(result.string(id)))
}

/// Writes JSON Lines: a `value` record per value, then the `summary` record.
pub fn write_json(out: &mut dyn Write, result: &ScanResult, source: &SourceInfo) -> io::Result<()> {
    write_json_deep(out, result, source, None)
}

fn write_record(out: &mut dyn Write, line: &mut Vec<u8>, record: &Record<'_>) -> io::Result<()> {
    line.clear();
    serde_json::to_writer(&mut *line, record)?;
    line.push(b'\n');
    out.write_all(line)
}

/// Writes JSON Lines with the deep scan's remnants: `value` records, one
/// `residue` record per remnant, then the `summary` record.
pub fn write_json_deep(
    out: &mut dyn Write,
    result: &ScanResult,
    source: &SourceInfo,
    residue: Option<&ResidueReport>,
) -> io::Result<()> {
    let mut line = Vec::with_capacity(1024);
    for value in result.values() {
        let class = value.class;
        let annotation_keys = match class.annotation_keys {
            Some(id) => result
                .string(id)
                .split(|&byte| byte == b',')
                .map(Field::from_bytes)
                .collect(),
            None => Vec::new(),
        };
        let record = Record::Value(ValueRecord {
            key: Field::from_bytes(value.key),
            resource: Field::from_bytes(value.resource),
            revision: value.revision.main,
            sub_revision: value.revision.sub,
            latest: value.latest,
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
            finding: value.finding.map(|finding| finding.code().into()),
            verify: value.verify_failure.map(|failure| failure.code().into()),
        });
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
    let summary = Record::Summary(Box::new(summary_record(result, source, residue)));
    write_record(out, &mut line, &summary)?;
    out.flush()
}

/// Makes bytes from etcd safe to print on a terminal: UTF-8 text stays as it
/// is, except control characters (C0, DEL, C1), bidirectional and other
/// invisible formatting characters, and `\`, which are written as `\n`,
/// `\e`, `\u{202e}`, `\\`; bytes that are not UTF-8 are written as `\xff`.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    let mut rest = bytes;
    loop {
        let (valid, invalid) = match std::str::from_utf8(rest) {
            Ok(text) => (text, None),
            Err(error) => {
                let (head, tail) = rest.split_at(error.valid_up_to());
                let bad = error.error_len().unwrap_or(tail.len());
                (
                    std::str::from_utf8(head).unwrap_or_default(),
                    Some(tail.split_at(bad.min(tail.len()))),
                )
            }
        };
        for ch in valid.chars() {
            match ch {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{1b}' => out.push_str("\\e"),
                ch if ch.is_control() || is_invisible_format(ch) => {
                    out.push_str(&format!("\\u{{{:x}}}", ch as u32));
                }
                ch => out.push(ch),
            }
        }
        match invalid {
            None => return out,
            Some((bad, tail)) => {
                for byte in bad {
                    out.push_str(&format!("\\x{byte:02x}"));
                }
                rest = tail;
            }
        }
    }
}

/// Characters that change how the text around them is shown without being
/// seen themselves (bidi overrides and isolates, zero-width, BOM).
fn is_invisible_format(ch: char) -> bool {
    matches!(ch,
        '\u{00ad}' | '\u{061c}' | '\u{180e}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}'
        | '\u{2060}'..='\u{206f}' | '\u{feff}' | '\u{fff9}'..='\u{fffb}')
}

fn display_bytes(bytes: &[u8]) -> String {
    escape(bytes)
}

/// A string from etcd for the table, escaped.
fn display(text: &str) -> String {
    escape(text.as_bytes())
}

/// Writes the human-readable report: summary table, findings, read errors.
pub fn write_table(
    out: &mut dyn Write,
    result: &ScanResult,
    source: &SourceInfo,
) -> io::Result<()> {
    write_table_deep(out, result, source, None)
}

/// The deep scan's part of the table: every remnant (plaintext first), and
/// what clears them.
fn write_residue_table(out: &mut dyn Write, residue: &ResidueReport) -> io::Result<()> {
    let plaintext = residue.plaintext_count();
    writeln!(
        out,
        "\nDeep scan: {} unreachable pages and {} bytes of slack examined; {} remnants of values in scope, {plaintext} plaintext{}.",
        residue.pages_examined,
        residue.slack_bytes,
        residue.remnants.len(),
        if residue.ignored { " (--ignore-residue: not findings)" } else { "" }
    )?;
    let mut ordered: Vec<_> = residue.remnants.iter().collect();
    ordered.sort_by_key(|remnant| (!remnant.plaintext, remnant.offset));
    for remnant in ordered {
        writeln!(
            out,
            "  residue  page {}  offset {}  {}  {}  kind {}  {}",
            remnant.page,
            remnant.offset,
            remnant
                .key
                .as_deref()
                .map_or_else(|| "(key not recovered)".to_string(), display_bytes),
            remnant.form.as_str(),
            remnant
                .kind
                .as_deref()
                .map_or_else(|| "-".to_string(), display),
            if remnant.plaintext {
                "plaintext".to_string()
            } else {
                format!(
                    "encrypted ({})",
                    remnant.provider.map_or("unknown", Provider::as_str)
                )
            }
        )?;
    }
    if !residue.remnants.is_empty() {
        writeln!(
            out,
            "\nRemnants: {RESIDUE_REMEDY}; --ignore-residue skips them."
        )?;
    }
    Ok(())
}

/// Writes the human-readable report with the deep scan's remnants.
pub fn write_table_deep(
    out: &mut dyn Write,
    result: &ScanResult,
    source: &SourceInfo,
    residue: Option<&ResidueReport>,
) -> io::Result<()> {
    let mut rows: Vec<[String; 6]> = vec![[
        "RESOURCE".into(),
        "PROVIDER".into(),
        "NAME".into(),
        "KEY ID".into(),
        "LATEST".into(),
        "HISTORY".into(),
    ]];
    for (group, counts) in result.groups() {
        rows.push([
            display(&group.resource),
            group.provider.as_str().to_string(),
            group
                .name
                .as_deref()
                .map_or_else(|| "-".into(), display_bytes),
            group
                .key_id
                .as_deref()
                .map_or_else(|| "-".into(), display_bytes),
            counts.latest.to_string(),
            counts.history.to_string(),
        ]);
    }
    let mut widths = [0usize; 6];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row.iter()) {
            *width = (*width).max(cell.chars().count());
        }
    }
    write_scope_header(out, result, source)?;
    writeln!(out)?;
    if rows.len() == 1 {
        writeln!(out, "No values in scope.")?;
    } else {
        for row in &rows {
            let line: Vec<String> = row
                .iter()
                .zip(widths.iter())
                .enumerate()
                .map(|(column, (cell, width))| {
                    if column >= 4 {
                        format!("{cell:>width$}")
                    } else {
                        format!("{cell:<width$}")
                    }
                })
                .collect();
            writeln!(out, "{}", line.join("  ").trim_end())?;
        }
    }
    let findings: Vec<_> = result
        .values()
        .filter_map(|value| value.finding.map(|finding| (value, finding)))
        .collect();
    writeln!(out)?;
    if findings.is_empty() {
        writeln!(out, "No findings.")?;
    } else {
        writeln!(out, "Findings ({}):", findings.len())?;
        for (value, finding) in &findings {
            let mut what = finding.describe().to_string();
            let class = value.class;
            match finding {
                Finding::Plaintext | Finding::PlaintextHistory => {
                    if let Some(kind) = class.kind {
                        what = format!("{what} (kind {})", display_bytes(result.string(kind)));
                    }
                }
                Finding::Malformed => {
                    if let Some(problem) = class.malformation {
                        what = format!("{what}: {}", problem.as_str());
                    }
                }
                Finding::WrongProvider => {
                    what = format!(
                        "{what}: {}{}",
                        class.provider.as_str(),
                        class.name.map_or_else(String::new, |name| format!(
                            " {}",
                            display_bytes(result.string(name))
                        ))
                    );
                }
                Finding::StaleKeyId => {
                    if let Some(key_id) = class.key_id {
                        what = format!("{what}: key_id {}", display_bytes(result.string(key_id)));
                    }
                }
                Finding::VerifyFailed => {
                    if let Some(failure) = value.verify_failure {
                        what = format!("{what}: {}", failure.describe());
                    }
                    if let Some(key_id) = class.key_id {
                        what = format!("{what} (key_id {})", display_bytes(result.string(key_id)));
                    }
                }
            }
            writeln!(
                out,
                "  {}  revision {}  {}",
                display_bytes(value.key),
                value.revision.main,
                what
            )?;
        }
        let history = result
            .values()
            .filter(|v| v.finding == Some(Finding::PlaintextHistory))
            .count();
        if history > 0 {
            writeln!(
                out,
                "\nPlaintext history stays in etcd until compaction, in its file until `etcdctl defrag`, and in every backup taken before; --ignore-history skips it."
            )?;
        }
    }
    write_stale_table(out, result)?;
    if let Some(summary) = result.verification() {
        write_verify_table(out, summary)?;
    }
    if let Some(residue) = residue {
        write_residue_table(out, residue)?;
    }
    if !result.read_errors().is_empty() {
        writeln!(out, "\nRead errors ({}):", result.read_errors().len())?;
        for error in result.read_errors() {
            writeln!(out, "  {}", display(error))?;
        }
    }
    let encrypted = result
        .values()
        .filter(|v| v.latest && v.class.provider.is_encrypted())
        .count();
    let latest = result.values().filter(|v| v.latest).count();
    let plaintext = result
        .values()
        .filter(|v| v.latest && v.class.provider == Provider::Identity)
        .count();
    writeln!(
        out,
        "\n{} keys, {latest} current values ({encrypted} encrypted, {plaintext} plaintext), {} values examined.",
        result.key_count(),
        result.values().count()
    )?;
    out.flush()
}

/// The table's header: what was examined, so a table pasted into a ticket
/// says what it proves.
fn write_scope_header(
    out: &mut dyn Write,
    result: &ScanResult,
    source: &SourceInfo,
) -> io::Result<()> {
    let scope = scope(result, source);
    let identity = &source.identity;
    let id = match (&identity.sha256, &identity.cluster_id) {
        (Some(sha256), _) => format!(", sha256 {sha256}"),
        (None, Some(cluster)) => format!(
            ", cluster {cluster}{}",
            identity
                .member_id
                .as_deref()
                .map_or_else(String::new, |member| format!(" member {member}"))
        ),
        (None, None) if source.kind == "file" => ", sha256 not computed (--skip-checksum)".into(),
        (None, None) => String::new(),
    };
    writeln!(
        out,
        "Source: {} {}{id}",
        source.kind,
        display(&source.location)
    )?;
    writeln!(
        out,
        "Revision {}, compacted at {}; etcd-inspect {}",
        source.revision,
        source
            .compact_revision
            .map_or_else(|| "never".to_string(), |r| r.to_string()),
        env!("CARGO_PKG_VERSION")
    )?;
    let resources = match &scope.resources {
        ResourceScope::All(_) => "all".to_string(),
        ResourceScope::Only(names) => names.join(","),
    };
    writeln!(
        out,
        "Scope: prefix {}, resources {}, {}; {} keys, {} values examined",
        display(&scope.prefix),
        display(&resources),
        if scope.history_examined {
            "history examined"
        } else {
            "history not examined"
        },
        result.key_count(),
        result.values().count()
    )
}

fn write_stale_table(out: &mut dyn Write, result: &ScanResult) -> io::Result<()> {
    let Some(report) = stale_report(result) else {
        return Ok(());
    };
    writeln!(out)?;
    if report.by_key_id.is_empty() {
        writeln!(
            out,
            "Stale kms v2 key_ids: none (every kms v2 value is under {}).",
            display(&report.current.join(", "))
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "Stale kms v2 key_ids (current: {}): {} current values to rewrite",
        display(&report.current.join(", ")),
        report.latest()
    )?;
    let width = report
        .by_key_id
        .keys()
        .map(|key_id| key_id.chars().count())
        .max()
        .unwrap_or(0)
        .max("KEY ID".len());
    writeln!(
        out,
        "  {:<width$}  {:>7}  {:>7}",
        "KEY ID", "LATEST", "HISTORY"
    )?;
    for (key_id, counts) in &report.by_key_id {
        writeln!(
            out,
            "  {:<width$}  {:>7}  {:>7}",
            display_bytes(key_id.as_bytes()),
            counts.latest,
            counts.history
        )?;
    }
    Ok(())
}

fn write_verify_table(out: &mut dyn Write, summary: &VerifySummary) -> io::Result<()> {
    let verified: u64 = summary.verified.values().sum();
    let failed: u64 = summary.failed.values().sum();
    let list = |counts: &std::collections::BTreeMap<Provider, u64>| {
        counts
            .iter()
            .map(|(provider, count)| format!("{} {count}", provider.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    writeln!(out)?;
    writeln!(
        out,
        "Verification: {verified} values decrypted to valid objects ({}), {failed} failed.",
        if verified == 0 {
            "none".to_string()
        } else {
            list(&summary.verified)
        }
    )?;
    if let Some(source) = &summary.kms_source {
        writeln!(
            out,
            "  kms v2 seeds from {}: {} Decrypt calls (one per distinct DEK source).",
            display(source),
            summary.decrypt_calls
        )?;
    }
    for (failure, count) in &summary.failed {
        writeln!(out, "  {count} {}: {}", failure.code(), failure.describe())?;
    }
    for failure in &summary.unwrap_failures {
        writeln!(
            out,
            "  Decrypt under key_id {} failed ({}): {}",
            display_bytes(failure.key_id.as_bytes()),
            failure.failure.code(),
            display(&failure.detail)
        )?;
    }
    if !summary.not_verified.is_empty() {
        writeln!(
            out,
            "  Not verified (no key given for them): {}.",
            list(&summary.not_verified)
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn escape_leaves_no_control_or_invisible_character() {
        assert_eq!(escape(b"/registry/secrets/a/b"), "/registry/secrets/a/b");
        assert_eq!(
            escape(b"a\x1b[2J\nb\r\t\\\x07\x7f"),
            "a\\e[2J\\nb\\r\\t\\\\\\u{7}\\u{7f}"
        );
        assert_eq!(
            escape("x\u{9b}y\u{202e}z\u{200b}".as_bytes()),
            "x\\u{9b}y\\u{202e}z\\u{200b}"
        );
        assert_eq!(escape(b"ok\xff\xfe\xc3"), "ok\\xff\\xfe\\xc3");
        assert_eq!(escape("héllo ✓".as_bytes()), "héllo ✓");
        for byte in 0..=255u8 {
            let shown = escape(&[b'a', byte, b'b']);
            assert!(
                !shown.chars().any(|c| c.is_control()),
                "{byte:#x}: {shown:?}"
            );
        }
    }
}
