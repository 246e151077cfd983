//! Rendering of a [`ScanResult`]: the terminal table and JSON Lines.
//!
//! Owns the output formats and the exit code. JSON Lines: one
//! `{"type":"value","data":{...}}` record per value examined (sorted by key,
//! then revision), then one `{"type":"summary","data":{...}}`. Keys and names
//! that are not UTF-8 are written as base64 (with `"key_encoding":"base64"`).
//! Values are never written: only what they are.

use std::io::{self, Write};

use base64::Engine as _;
use serde_json::{json, Map, Value};

use super::classify::Provider;
use super::residue::ResidueReport;
use super::scan::{Finding, ScanResult};
use super::verify::{stale_report, VerifySummary};

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
    /// Highest revision seen (file) or the revision the scan was pinned to (live).
    pub revision: i64,
    /// Last completed compaction, if known.
    pub compact_revision: Option<i64>,
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

/// The summary record's data.
pub fn summary_json(result: &ScanResult, source: &SourceInfo) -> Value {
    summary_json_deep(result, source, None)
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

/// The summary record's data, with the deep scan's counts when it ran.
pub fn summary_json_deep(
    result: &ScanResult,
    source: &SourceInfo,
    residue: Option<&ResidueReport>,
) -> Value {
    let resources: Map<String, Value> = result
        .resource_summaries()
        .into_iter()
        .map(|(resource, summary)| {
            (
                resource,
                json!({
                    "latest": summary.latest,
                    "history": summary.history,
                    "history_plaintext": summary.history_plaintext,
                    "deleted": summary.deleted,
                    "events": summary.events,
                }),
            )
        })
        .collect();
    let groups: Vec<Value> = result
        .groups()
        .into_iter()
        .map(|(group, counts)| {
            json!({
                "resource": group.resource,
                "provider": group.provider.as_str(),
                "provider_name": group.name,
                "key_id": group.key_id,
                "latest": counts.latest,
                "history": counts.history,
            })
        })
        .collect();
    let findings: Map<String, Value> = result
        .finding_counts()
        .into_iter()
        .map(|(finding, count)| (finding.code().to_string(), json!(count)))
        .collect();
    let values = result.values().count();
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
    let mut findings = findings;
    if let Some(residue) = residue {
        let plaintext = residue.plaintext_count();
        if plaintext > 0 && !residue.ignored {
            findings.insert("residue".to_string(), json!(plaintext));
        }
    }
    json!({
        "scanned_at": source
            .scanned_at
            .map(|time| humantime::format_rfc3339_seconds(time).to_string()),
        "source": source.kind,
        "location": source.location,
        "revision": source.revision,
        "compact_revision": source.compact_revision,
        "details": source.details,
        "prefix": String::from_utf8_lossy(&result.options().prefix),
        "keys": result.key_count(),
        "values": values,
        "out_of_scope": result.out_of_scope(),
        "resources": resources,
        "groups": groups,
        "findings": findings,
        "stale": stale,
        "verify": result.verification().map(verify_json),
        "read_errors": result.read_errors(),
        "residue": residue.map(residue_summary),
        "exit_code": exit_code_deep(result, residue),
    })
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

/// Whether `byte` must be escaped inside a JSON string (as written here:
/// controls, DEL, quote, backslash).
fn needs_escape(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\' || byte == 0x7f
}

/// Appends `text` as a JSON string.
fn push_json_str(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    let bytes = text.as_bytes();
    // Keys and names almost never need escaping: check the whole string in
    // one branch-free pass, then copy it at once.
    if !bytes
        .iter()
        .fold(false, |any, &byte| any | needs_escape(byte))
    {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (index, &byte) in bytes.iter().enumerate() {
        let escape: Option<&[u8]> = match byte {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            0..=0x1f | 0x7f => None,
            _ => continue,
        };
        out.extend_from_slice(bytes.get(start..index).unwrap_or(&[]));
        match escape {
            Some(escaped) => out.extend_from_slice(escaped),
            None => out.extend_from_slice(format!("\\u{byte:04x}").as_bytes()),
        }
        start = index + 1;
    }
    out.extend_from_slice(bytes.get(start..).unwrap_or(&[]));
    out.push(b'"');
}

/// Appends `value` in decimal (what `format!` would, without its machinery:
/// three integers per value record).
fn push_i64(out: &mut Vec<u8>, value: i64) {
    if value < 0 {
        out.push(b'-');
    }
    let mut magnitude = value.unsigned_abs();
    let mut digits = [0u8; 20];
    let mut first = digits.len();
    loop {
        first -= 1;
        if let Some(digit) = digits.get_mut(first) {
            *digit = b'0' + (magnitude % 10) as u8;
        }
        magnitude /= 10;
        if magnitude == 0 {
            break;
        }
    }
    out.extend_from_slice(digits.get(first..).unwrap_or(&[]));
}

/// Appends bytes as a JSON string: text if UTF-8, else base64.
fn push_json_bytes(out: &mut Vec<u8>, bytes: &[u8]) -> bool {
    match std::str::from_utf8(bytes) {
        Ok(text) => {
            push_json_str(out, text);
            true
        }
        Err(_) => {
            push_json_str(
                out,
                &base64::engine::general_purpose::STANDARD.encode(bytes),
            );
            false
        }
    }
}

fn push_optional(out: &mut Vec<u8>, result: &ScanResult, id: Option<u32>) {
    match id {
        Some(id) => {
            push_json_bytes(out, result.string(id));
        }
        None => out.extend_from_slice(b"null"),
    }
}

fn push_optional_static(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        Some(text) => push_json_str(out, text),
        None => out.extend_from_slice(b"null"),
    }
}

/// The part of a value record that depends only on the classification.
fn class_fragment(result: &ScanResult, class: &super::scan::ClassInfo) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b",\"encrypted\":");
    out.extend_from_slice(if class.provider.is_encrypted() {
        b"true"
    } else {
        b"false"
    });
    out.extend_from_slice(b",\"provider\":");
    push_json_str(&mut out, class.provider.as_str());
    out.extend_from_slice(b",\"provider_name\":");
    push_optional(&mut out, result, class.name);
    out.extend_from_slice(b",\"key_id\":");
    push_optional(&mut out, result, class.key_id);
    out.extend_from_slice(b",\"dek_source_type\":");
    push_optional_static(&mut out, class.dek_source_type.map(|t| t.as_str()));
    out.extend_from_slice(b",\"kind\":");
    push_optional(&mut out, result, class.kind);
    out.extend_from_slice(b",\"api_version\":");
    push_optional(&mut out, result, class.api_version);
    out.extend_from_slice(b",\"encoding\":");
    push_optional_static(&mut out, class.encoding.map(|e| e.as_str()));
    out.extend_from_slice(b",\"annotation_keys\":[");
    if let Some(id) = class.annotation_keys {
        let joined = String::from_utf8_lossy(result.string(id));
        for (index, key) in joined.split(',').enumerate() {
            if index > 0 {
                out.push(b',');
            }
            push_json_str(&mut out, key);
        }
    }
    out.extend_from_slice(b"],\"problem\":");
    push_optional_static(&mut out, class.malformation.map(|m| m.as_str()));
    out
}

/// Writes JSON Lines: a `value` record per value, then the `summary` record.
/// Records are assembled by hand (the per-classification part once per
/// classification): serde_json's `Value` maps cost more than the whole file
/// walk.
pub fn write_json(out: &mut dyn Write, result: &ScanResult, source: &SourceInfo) -> io::Result<()> {
    write_json_deep(out, result, source, None)
}

/// Writes JSON Lines with the deep scan's remnants: `value` records, one
/// `{"type":"residue","data":{page, offset, key, kind, plaintext, ...}}` per
/// remnant, then the `summary` record.
pub fn write_json_deep(
    out: &mut dyn Write,
    result: &ScanResult,
    source: &SourceInfo,
    residue: Option<&ResidueReport>,
) -> io::Result<()> {
    // Record parts that depend only on the classification, or only on the
    // resource, rendered once each.
    let mut fragments: Vec<Option<Vec<u8>>> = Vec::new();
    let mut resources: Vec<Option<Vec<u8>>> = Vec::new();
    let mut line = Vec::with_capacity(1024);
    for value in result.values() {
        line.clear();
        line.extend_from_slice(b"{\"type\":\"value\",\"data\":{\"key\":");
        let utf8 = push_json_bytes(&mut line, value.key);
        if !utf8 {
            line.extend_from_slice(b",\"key_encoding\":\"base64\"");
        }
        let slot = value.resource_id as usize;
        if resources.len() <= slot && slot < result.string_count() {
            resources.resize(slot + 1, None);
        }
        match resources.get_mut(slot) {
            Some(entry) => {
                let fragment = entry.get_or_insert_with(|| {
                    let mut fragment = b",\"resource\":".to_vec();
                    push_json_bytes(&mut fragment, value.resource);
                    fragment
                });
                line.extend_from_slice(fragment);
            }
            None => {
                line.extend_from_slice(b",\"resource\":");
                push_json_bytes(&mut line, value.resource);
            }
        }
        line.extend_from_slice(b",\"revision\":");
        push_i64(&mut line, value.revision.main);
        line.extend_from_slice(b",\"sub_revision\":");
        push_i64(&mut line, value.revision.sub);
        line.extend_from_slice(if value.latest {
            b",\"latest\":true"
        } else {
            b",\"latest\":false"
        });
        let slot = value.class_id as usize;
        if fragments.len() <= slot {
            fragments.resize(slot + 1, None);
        }
        if let Some(entry) = fragments.get_mut(slot) {
            let fragment = entry.get_or_insert_with(|| class_fragment(result, value.class));
            line.extend_from_slice(fragment);
        }
        line.extend_from_slice(b",\"finding\":");
        push_optional_static(&mut line, value.finding.map(Finding::code));
        if let Some(failure) = value.verify_failure {
            line.extend_from_slice(b",\"verify\":");
            push_json_str(&mut line, failure.code());
        }
        line.extend_from_slice(b"}}\n");
        out.write_all(&line)?;
    }
    for remnant in residue.map_or(&[][..], |residue| residue.remnants.as_slice()) {
        line.clear();
        line.extend_from_slice(
            format!(
                "{{\"type\":\"residue\",\"data\":{{\"form\":\"{}\",\"page\":{},\"offset\":{},\"key\":",
                remnant.form.as_str(),
                remnant.page,
                remnant.offset
            )
            .as_bytes(),
        );
        let mut utf8 = true;
        match &remnant.key {
            Some(key) => utf8 = push_json_bytes(&mut line, key),
            None => line.extend_from_slice(b"null"),
        }
        if !utf8 {
            line.extend_from_slice(b",\"key_encoding\":\"base64\"");
        }
        line.extend_from_slice(b",\"resource\":");
        push_optional_static(&mut line, remnant.resource.as_deref());
        line.extend_from_slice(b",\"kind\":");
        push_optional_static(&mut line, remnant.kind.as_deref());
        line.extend_from_slice(b",\"provider\":");
        push_optional_static(&mut line, remnant.provider.map(Provider::as_str));
        line.extend_from_slice(
            format!(",\"plaintext\":{},\"finding\":", remnant.plaintext).as_bytes(),
        );
        let finding = remnant.plaintext && residue.is_some_and(|residue| !residue.ignored);
        push_optional_static(&mut line, finding.then_some("residue"));
        line.extend_from_slice(b"}}\n");
        out.write_all(&line)?;
    }
    serde_json::to_writer(
        &mut *out,
        &json!({"type": "summary", "data": summary_json_deep(result, source, residue)}),
    )?;
    out.write_all(b"\n")?;
    out.flush()
}

fn display_bytes(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) if !text.chars().any(char::is_control) => text.to_string(),
        _ => format!(
            "base64:{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        ),
    }
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
            remnant.kind.as_deref().unwrap_or("-"),
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
            group.resource,
            group.provider.as_str().to_string(),
            group.name.unwrap_or_else(|| "-".into()),
            group.key_id.unwrap_or_else(|| "-".into()),
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
    writeln!(
        out,
        "Source: {} {} (revision {}, compacted at {})",
        source.kind,
        source.location,
        source.revision,
        source
            .compact_revision
            .map_or_else(|| "never".to_string(), |r| r.to_string())
    )?;
    writeln!(out)?;
    if rows.len() == 1 {
        writeln!(
            out,
            "No values in scope (prefix {}, resources {:?}).",
            String::from_utf8_lossy(&result.options().prefix),
            result.options().resources
        )?;
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
                    if let Some(kind) = result.text(class.kind) {
                        what = format!("{what} (kind {kind})");
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
                        result
                            .text(class.name)
                            .map_or_else(String::new, |name| format!(" {name}"))
                    );
                }
                Finding::StaleKeyId => {
                    if let Some(key_id) = result.text(class.key_id) {
                        what = format!("{what}: key_id {key_id}");
                    }
                }
                Finding::VerifyFailed => {
                    if let Some(failure) = value.verify_failure {
                        what = format!("{what}: {}", failure.describe());
                    }
                    if let Some(key_id) = result.text(class.key_id) {
                        what = format!("{what} (key_id {key_id})");
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
            writeln!(out, "  {error}")?;
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

fn write_stale_table(out: &mut dyn Write, result: &ScanResult) -> io::Result<()> {
    let Some(report) = stale_report(result) else {
        return Ok(());
    };
    writeln!(out)?;
    if report.by_key_id.is_empty() {
        writeln!(
            out,
            "Stale kms v2 key_ids: none (every kms v2 value is under {}).",
            report.current.join(", ")
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "Stale kms v2 key_ids (current: {}): {} current values to rewrite",
        report.current.join(", "),
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
            "  kms v2 seeds from {source}: {} Decrypt calls (one per distinct DEK source).",
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
            failure.detail
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
