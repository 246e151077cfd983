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
use super::scan::{Finding, ScanResult};

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
}

/// The exit code a result calls for.
pub fn exit_code(result: &ScanResult) -> u8 {
    if !result.read_errors().is_empty() {
        EXIT_ERROR
    } else if result.values().any(|value| value.finding.is_some()) {
        EXIT_FINDINGS
    } else {
        EXIT_CLEAN
    }
}

/// The summary record's data.
pub fn summary_json(result: &ScanResult, source: &SourceInfo) -> Value {
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
    json!({
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
        "read_errors": result.read_errors(),
        "exit_code": exit_code(result),
    })
}

/// Appends `text` as a JSON string.
fn push_json_str(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    let bytes = text.as_bytes();
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
    let mut fragments: Vec<Option<Vec<u8>>> = Vec::new();
    let mut line = Vec::with_capacity(1024);
    for value in result.values() {
        line.clear();
        line.extend_from_slice(b"{\"type\":\"value\",\"data\":{\"key\":");
        let utf8 = push_json_bytes(&mut line, value.key);
        if !utf8 {
            line.extend_from_slice(b",\"key_encoding\":\"base64\"");
        }
        line.extend_from_slice(b",\"resource\":");
        push_json_bytes(&mut line, value.resource);
        line.extend_from_slice(
            format!(
                ",\"revision\":{},\"sub_revision\":{},\"latest\":{}",
                value.revision.main, value.revision.sub, value.latest
            )
            .as_bytes(),
        );
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
        line.extend_from_slice(b"}}\n");
        out.write_all(&line)?;
    }
    serde_json::to_writer(
        &mut *out,
        &json!({"type": "summary", "data": summary_json(result, source)}),
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
