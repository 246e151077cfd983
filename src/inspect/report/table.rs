//! The table writer, for people: scope header, counts per resource and
//! provider/key, findings, stale keys, verification, remnants, read errors.
//! Every string from etcd is escaped ([`super::escape`]): a key cannot move
//! the cursor or forge a line.
use std::io::{self, Write};

use super::record::ResourceScope;
use super::summary::scope;
use super::{display, display_bytes, Report, RESIDUE_REMEDY};
use crate::inspect::audit::{AuditResult, CopyLocation, Finding};
use crate::inspect::classify::Provider;
use crate::inspect::remnants::RemnantReport;
use crate::inspect::source::SourceInfo;
use crate::inspect::stale::stale_report;
use crate::inspect::verify::VerifySummary;
use serde_json::Value;

/// The deep scan's part of the table: every remnant (plaintext first), and
/// what clears them.
fn write_residue_table(out: &mut dyn Write, residue: &RemnantReport) -> io::Result<()> {
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

/// Writes the human-readable report: scope, summary table, findings, the
/// deep scan's remnants, read errors.
pub(super) fn write(out: &mut dyn Write, report: &Report) -> io::Result<()> {
    let (result, source, residue) = (&report.result, &report.source, report.remnants.as_ref());
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
    let copy_findings: Vec<_> = result
        .copies()
        .filter_map(|copy| copy.finding.map(|finding| (copy, finding)))
        .collect();
    writeln!(out)?;
    if findings.is_empty() && copy_findings.is_empty() {
        writeln!(out, "No findings.")?;
    }
    if !findings.is_empty() {
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
                // Only copies carry these; they are listed below.
                Finding::PlaintextWal | Finding::PlaintextSnapDb => {}
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
    write_copy_findings(out, result, &copy_findings, !findings.is_empty())?;
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
    let copies = result.copies().count();
    if copies > 0 {
        writeln!(
            out,
            "{copies} values examined outside the keyspace (WAL entries, leftover snap.db files)."
        )?;
    }
    out.flush()
}

/// Findings in copies outside the keyspace: key, where it is, what.
fn write_copy_findings(
    out: &mut dyn Write,
    result: &AuditResult,
    findings: &[(crate::inspect::audit::CopyView<'_>, Finding)],
    after_others: bool,
) -> io::Result<()> {
    if findings.is_empty() {
        return Ok(());
    }
    if after_others {
        writeln!(out)?;
    }
    writeln!(out, "Findings outside the keyspace ({}):", findings.len())?;
    for (copy, finding) in findings {
        let mut what = finding.describe().to_string();
        if let Some(kind) = copy.class.kind {
            what = format!("{what} (kind {})", display_bytes(result.string(kind)));
        }
        if let (Finding::Malformed, Some(problem)) = (finding, copy.class.malformation) {
            what = format!("{what}: {}", problem.as_str());
        }
        let location = match copy.location {
            CopyLocation::Wal {
                segment,
                offset,
                term,
                index,
            } => format!(
                "WAL segment {}  byte offset {offset}  raft term {term} index {index}",
                display_bytes(segment)
            ),
            CopyLocation::SnapDb { file, revision } => format!(
                "snap.db {}  revision {}",
                display_bytes(file),
                revision.main
            ),
        };
        writeln!(out, "  {}  {location}  {what}", display_bytes(copy.key))?;
    }
    Ok(())
}

/// The table's header: what was examined, so a table pasted into a ticket
/// says what it proves.
fn write_scope_header(
    out: &mut dyn Write,
    result: &AuditResult,
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
    )?;
    if let Some(wal) = source.details.get("wal") {
        let count = |name: &str| wal.get(name).and_then(Value::as_u64).unwrap_or(0);
        writeln!(
            out,
            "Write-ahead log: {} segments, {} entries read ({} puts)",
            count("segments"),
            count("entries"),
            count("puts")
        )?;
    }
    Ok(())
}

fn write_stale_table(out: &mut dyn Write, result: &AuditResult) -> io::Result<()> {
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
