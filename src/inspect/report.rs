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

fn bytes_field(map: &mut Map<String, Value>, name: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => {
            map.insert(name.to_string(), Value::String(text.to_string()));
        }
        Err(_) => {
            map.insert(
                name.to_string(),
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
            );
            map.insert(format!("{name}_encoding"), Value::String("base64".into()));
        }
    }
}

fn text_or_null(result: &ScanResult, id: Option<u32>) -> Value {
    match id {
        None => Value::Null,
        Some(id) => {
            let bytes = result.string(id);
            match std::str::from_utf8(bytes) {
                Ok(text) => Value::String(text.to_string()),
                Err(_) => Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
            }
        }
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

/// Writes JSON Lines.
pub fn write_json(out: &mut dyn Write, result: &ScanResult, source: &SourceInfo) -> io::Result<()> {
    for value in result.values() {
        let class = value.class;
        let mut data = Map::new();
        bytes_field(&mut data, "key", value.key);
        data.insert(
            "resource".into(),
            json!(String::from_utf8_lossy(value.resource)),
        );
        data.insert("revision".into(), json!(value.revision.main));
        data.insert("sub_revision".into(), json!(value.revision.sub));
        data.insert("latest".into(), json!(value.latest));
        data.insert("encrypted".into(), json!(class.provider.is_encrypted()));
        data.insert("provider".into(), json!(class.provider.as_str()));
        data.insert("provider_name".into(), text_or_null(result, class.name));
        data.insert("key_id".into(), text_or_null(result, class.key_id));
        data.insert(
            "dek_source_type".into(),
            json!(class.dek_source_type.map(|t| t.as_str())),
        );
        data.insert("kind".into(), text_or_null(result, class.kind));
        data.insert(
            "api_version".into(),
            text_or_null(result, class.api_version),
        );
        data.insert("encoding".into(), json!(class.encoding.map(|e| e.as_str())));
        let annotations: Vec<Value> = class
            .annotation_keys
            .map(|id| String::from_utf8_lossy(result.string(id)).into_owned())
            .map(|joined| joined.split(',').map(|k| json!(k)).collect())
            .unwrap_or_default();
        data.insert("annotation_keys".into(), Value::Array(annotations));
        data.insert(
            "problem".into(),
            json!(class.malformation.map(|m| m.as_str())),
        );
        data.insert("finding".into(), json!(value.finding.map(Finding::code)));
        serde_json::to_writer(&mut *out, &json!({"type": "value", "data": data}))?;
        out.write_all(b"\n")?;
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
