//! The `summary` record: what was examined (source, identity, scope), the
//! counts per resource and per provider/key, findings, the stale-key and
//! verification summaries, the deep scan's counts and the exit code.
use serde_json::{json, Map, Value};

use super::record::{
    self, AllResources, Field, GroupRecord, ResourceCounts, ResourceScope, Scope, SummaryRecord,
};
use super::{Report, RESIDUE_REMEDY};
use crate::inspect::audit::{AuditResult, ResourceFilter};
use crate::inspect::classify::Provider;
use crate::inspect::remnants::RemnantReport;
use crate::inspect::source::SourceInfo;
use crate::inspect::stale::stale_report;
use crate::inspect::verify::VerifySummary;

/// The summary's `residue` object.
fn residue_summary(residue: &RemnantReport) -> Value {
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
pub(super) fn scope(result: &AuditResult, source: &SourceInfo) -> Scope {
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
pub(super) fn summary_record(report: &Report) -> SummaryRecord {
    let (result, source, residue) = (&report.result, &report.source, report.remnants.as_ref());
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
        values: (result.values().count() + result.copies().count()) as u64,
        out_of_scope: result.out_of_scope(),
        resources,
        groups,
        findings,
        stale,
        verify: result.verification().map(verify_json),
        read_errors: result.read_errors().to_vec(),
        residue: residue.map(residue_summary),
        details: source.details.clone(),
        exit_code: report.exit_code(),
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
