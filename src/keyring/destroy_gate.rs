//! The gate in front of `kube-kms key destroy`: reads the JSON Lines reports
//! of `etcd-inspect scan --format json` (live etcd and the backups you keep)
//! with the record types that wrote them ([`crate::inspect::report::record`]) and
//! decides whether a key_id is provably unused.
//!
//! A destroy may go ahead only when every report
//! - is complete: its last record is a summary of this schema version, every
//!   line is a record, the value records match the summary, no read errors;
//! - examined what matters: history examined, at least one key, the prefix
//!   kube-apiserver writes under, and every resource the
//!   EncryptionConfiguration encrypts with a kms v2 provider (without the
//!   configuration, `--resources all`);
//! - was taken after the version was disabled (its `scanned_at` is later than
//!   the keyring's `disabled_at`);
//! - and shows zero values, latest or history, under the version's key_id.
//!
//! Otherwise the verdict lists, per report, what still uses the key_id
//! (counts and the first few etcd keys) or what the report does not cover.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::inspect::report::record::{Record, ResourceScope, Scope, SCHEMA_VERSION};

/// How many etcd keys under the key_id a report lists at most.
pub const LISTED_KEYS: usize = 5;

/// Why a report could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The file could not be opened or read.
    #[error("cannot read scan report {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A line is not JSON.
    #[error("scan report {path} line {line} is not JSON: produce reports with `etcd-inspect scan ... --format json > FILE`")]
    NotJson {
        /// The file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
    },
}

/// Which resources a report must cover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequiredResources {
    /// Every resource: only a `--resources all` scan covers it (no
    /// EncryptionConfiguration given, or it names group or wildcard resources).
    All,
    /// These core resources (`secrets`, `configmaps`).
    Only(Vec<String>),
}

impl RequiredResources {
    /// What the EncryptionConfiguration's resources (those encrypted with a
    /// kms v2 provider) require. A core resource (no `.`) must be scanned by
    /// name. A group resource needs `--resources all`: kube-apiserver stores
    /// some under `<prefix>/<resource>/` (deployments.apps), custom resources
    /// under `<prefix>/<group>/<resource>/`, and a few under other names
    /// (ingresses.networking.k8s.io under `ingress/`), so no name list is
    /// sure to reach them. Wildcards (`*.*`, `*.apps`) need it too.
    pub fn from_config(resources: &[String]) -> Self {
        let mut names = Vec::new();
        for resource in resources {
            let name = resource.trim().trim_end_matches('.');
            if name.contains('.') || name.contains('*') || name.is_empty() {
                return RequiredResources::All;
            }
            if !names.iter().any(|known| known == name) {
                names.push(name.to_string());
            }
        }
        RequiredResources::Only(names)
    }

    /// The resources in `required` that `scope` does not cover.
    pub fn missing(&self, scope: &ResourceScope) -> Vec<String> {
        match (self, scope) {
            (_, ResourceScope::All(_)) => Vec::new(),
            (RequiredResources::All, ResourceScope::Only(_)) => vec!["all".to_string()],
            (RequiredResources::Only(names), ResourceScope::Only(scanned)) => names
                .iter()
                .filter(|name| !scanned.contains(name))
                .cloned()
                .collect(),
        }
    }
}

/// What every report must have examined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coverage {
    /// kube-apiserver's `--etcd-prefix`: the report's `--prefix` must be it.
    pub etcd_prefix: String,
    /// The resources the report must cover.
    pub resources: RequiredResources,
}

/// What one report says about one key_id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportUse {
    /// The file.
    pub path: PathBuf,
    /// `file` or `live`, and its location, from the summary.
    pub source: String,
    /// The summary's `source` alone (`file`, `live`, `data-dir`, `wal`).
    pub source_kind: String,
    /// `scanned_at` of the summary.
    pub scanned_at: Option<SystemTime>,
    /// Whether the last record is a summary.
    pub complete: bool,
    /// The summary's schema version (`None`: no summary of a known shape).
    pub schema_version: Option<u32>,
    /// The first line that is not a record of [`SCHEMA_VERSION`] (1-based).
    pub unreadable_line: Option<usize>,
    /// Value records in the file, and the summary's count of them.
    pub value_records: u64,
    /// The summary's `values`.
    pub summary_values: u64,
    /// What the scan examined, from the summary.
    pub scope: Option<Scope>,
    /// Keys in scope, from the summary.
    pub keys: u64,
    /// Read errors or a non-zero error exit recorded in the summary.
    pub read_errors: usize,
    /// Latest values under the key_id.
    pub latest: u64,
    /// History values under the key_id.
    pub history: u64,
    /// The first [`LISTED_KEYS`] etcd keys with a value under the key_id.
    pub keys_listed: Vec<String>,
}

/// Reads one report and counts the values under `key_id`.
pub fn read_report(path: &Path, key_id: &str) -> Result<ReportUse, ReportError> {
    let file = std::fs::File::open(path).map_err(|source| ReportError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    read_records(std::io::BufReader::new(file), path, key_id)
}

/// [`read_report`] on any reader (`path` names it in errors).
pub fn read_records(
    reader: impl BufRead,
    path: &Path,
    key_id: &str,
) -> Result<ReportUse, ReportError> {
    let mut usage = ReportUse {
        path: path.to_path_buf(),
        ..ReportUse::default()
    };
    let mut counted_from_values = (0u64, 0u64);
    let key_id = key_id.as_bytes();
    for (index, line) in reader.lines().enumerate() {
        let line = line.map_err(|source| ReportError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        // Anything after a summary means the summary is not the last word.
        usage.complete = false;
        let record: Record<'_> = match serde_json::from_str(&line) {
            Ok(record) => record,
            Err(_) => {
                if index == 0 && serde_json::from_str::<serde_json::Value>(&line).is_err() {
                    return Err(ReportError::NotJson {
                        path: path.to_path_buf(),
                        line: 1,
                    });
                }
                // JSON of another schema version, or a line cut short.
                usage.unreadable_line.get_or_insert(index + 1);
                if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) {
                    if value.get("type").is_some_and(|kind| kind == "summary") {
                        usage.schema_version = Some(
                            value
                                .pointer("/data/schema_version")
                                .and_then(serde_json::Value::as_u64)
                                .map_or(1, |v| v.min(u64::from(u32::MAX)) as u32),
                        );
                    }
                }
                continue;
            }
        };
        match record {
            Record::Value(value) => {
                usage.value_records += 1;
                let under_key_id = value.provider == "kms-v2"
                    && value.key_id.as_ref().is_some_and(|id| id.is(key_id));
                if under_key_id {
                    if value.latest {
                        counted_from_values.0 += 1;
                    } else {
                        counted_from_values.1 += 1;
                    }
                    if usage.keys_listed.len() < LISTED_KEYS {
                        usage.keys_listed.push(value.key.lossy());
                    }
                }
            }
            Record::Residue(_) => {}
            Record::Summary(summary) => {
                if usage.schema_version.is_some() || usage.scope.is_some() {
                    // A second summary: reports pasted together.
                    usage.unreadable_line.get_or_insert(index + 1);
                }
                usage.complete = true;
                usage.schema_version = Some(summary.schema_version);
                usage.source = format!("{} {}", summary.source, summary.location);
                usage.source_kind = summary.source.clone();
                usage.scanned_at = summary
                    .scanned_at
                    .as_deref()
                    .and_then(|text| humantime::parse_rfc3339(text).ok());
                usage.read_errors = summary.read_errors.len();
                if summary.exit_code == 2 && usage.read_errors == 0 {
                    usage.read_errors = 1;
                }
                usage.keys = summary.keys;
                usage.summary_values = summary.values;
                usage.scope = Some(summary.scope);
                usage.latest = 0;
                usage.history = 0;
                for group in &summary.groups {
                    let under_key_id = group.provider == "kms-v2"
                        && group.key_id.as_ref().is_some_and(|id| id.is(key_id));
                    if under_key_id {
                        usage.latest += group.latest;
                        usage.history += group.history;
                    }
                }
            }
        }
    }
    // The value records and the summary must agree; take the larger count.
    usage.latest = usage.latest.max(counted_from_values.0);
    usage.history = usage.history.max(counted_from_values.1);
    Ok(usage)
}

/// Why a report does not allow the destroy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocker {
    /// The report shows values under the key_id.
    InUse,
    /// The last record is not a summary: the scan did not finish, or the file is cut.
    Incomplete,
    /// A line is not a record of this schema (1-based line number).
    Unreadable(usize),
    /// The summary is of another schema version.
    SchemaVersion(u32),
    /// The summary counts a different number of value records than the file holds.
    Inconsistent {
        /// Value records in the file.
        records: u64,
        /// The summary's count.
        summary: u64,
    },
    /// The scan recorded read errors: it may have missed values.
    ReadErrors,
    /// No `scanned_at` (a report from an older etcd-inspect).
    NoTimestamp,
    /// Taken before (or at the same second as) the disable.
    TakenBeforeDisable,
    /// Older revisions were not examined (`--ignore-history`).
    HistoryNotExamined,
    /// No key in scope: the scan saw nothing (wrong prefix, empty etcd).
    NoKeys,
    /// The scan's `--prefix` is not kube-apiserver's prefix.
    Prefix {
        /// The report's prefix.
        found: String,
        /// The one required.
        expected: String,
    },
    /// Resources the EncryptionConfiguration encrypts that the scan did not cover.
    MissingResources(Vec<String>),
    /// A report of WAL segments alone (`scan --wal`): it does not cover the database.
    NoDatabase,
}

impl Blocker {
    /// Sentence for the refusal.
    pub fn describe(&self) -> String {
        match self {
            Blocker::InUse => "values are still stored under this key_id".into(),
            Blocker::Incomplete => "the report does not end with a summary record (the scan did not finish or the file is cut); scan again".into(),
            Blocker::Unreadable(line) => format!("line {line} is not a record of report schema version {SCHEMA_VERSION} (cut, edited, two reports pasted together, or written by another version of etcd-inspect); scan again with this version"),
            Blocker::SchemaVersion(found) => format!("the report has schema version {found}, this gate reads version {SCHEMA_VERSION}; scan again with the etcd-inspect of this release"),
            Blocker::Inconsistent { records, summary } => format!("the report holds {records} value records but its summary counts {summary}: the file was edited or cut; scan again"),
            Blocker::ReadErrors => "the scan recorded read errors and may have missed values; fix them and scan again".into(),
            Blocker::NoTimestamp => "the report has no scanned_at time; scan again with this version of etcd-inspect".into(),
            Blocker::TakenBeforeDisable => "the scan was taken before the version was disabled; scan again now".into(),
            Blocker::HistoryNotExamined => "history not examined (--ignore-history): older revisions may still be under this key_id; scan again without --ignore-history".into(),
            Blocker::NoKeys => "the scan saw no key at all (wrong --prefix or --resources, or the wrong etcd); a report that examined nothing proves nothing".into(),
            Blocker::Prefix { found, expected } => format!("the scan's --prefix is {found:?}, not kube-apiserver's prefix {expected:?} (kube-kms key destroy --etcd-prefix); scan again with --prefix {expected}"),
            Blocker::NoDatabase => "the report covers write-ahead log segments alone (scan --wal), not the database; scan the database (--data-dir, --file or --endpoints)".into(),
            Blocker::MissingResources(missing) => {
                if missing.iter().any(|name| name == "all") {
                    "resources not covered: the scan must use --resources all (no --encryption-config given to the destroy, or the configuration encrypts group or wildcard resources with kms v2)".into()
                } else {
                    format!("resources not covered: {} (encrypted with kms v2 by the EncryptionConfiguration); scan again with --resources all or add them to --resources", missing.join(", "))
                }
            }
        }
    }
}

/// The gate's decision for one key_id over a set of reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateVerdict {
    /// Each report, with what blocks it (empty: this report allows the destroy).
    pub reports: Vec<(ReportUse, Vec<Blocker>)>,
}

impl GateVerdict {
    /// True when every report allows the destroy (and there is at least one).
    pub fn allows(&self) -> bool {
        !self.reports.is_empty() && self.reports.iter().all(|(_, blockers)| blockers.is_empty())
    }
}

fn normalize_prefix(prefix: &str) -> &str {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() {
        "/"
    } else {
        trimmed
    }
}

/// What blocks one report.
fn blockers(usage: &ReportUse, disabled_at: SystemTime, coverage: &Coverage) -> Vec<Blocker> {
    let mut blockers = Vec::new();
    if !usage.complete {
        blockers.push(Blocker::Incomplete);
    }
    if let Some(line) = usage.unreadable_line {
        blockers.push(Blocker::Unreadable(line));
    }
    match usage.schema_version {
        Some(version) if version != SCHEMA_VERSION => {
            blockers.push(Blocker::SchemaVersion(version));
        }
        _ => {}
    }
    if usage.complete && usage.value_records != usage.summary_values {
        blockers.push(Blocker::Inconsistent {
            records: usage.value_records,
            summary: usage.summary_values,
        });
    }
    if usage.read_errors > 0 {
        blockers.push(Blocker::ReadErrors);
    }
    match usage.scanned_at {
        None if usage.complete => blockers.push(Blocker::NoTimestamp),
        Some(at) if at <= disabled_at => blockers.push(Blocker::TakenBeforeDisable),
        _ => {}
    }
    if let Some(scope) = &usage.scope {
        if !scope.history_examined {
            blockers.push(Blocker::HistoryNotExamined);
        }
        if usage.keys == 0 {
            blockers.push(Blocker::NoKeys);
        }
        let expected = normalize_prefix(&coverage.etcd_prefix);
        if normalize_prefix(&scope.prefix) != expected {
            blockers.push(Blocker::Prefix {
                found: scope.prefix.clone(),
                expected: expected.to_string(),
            });
        }
        let missing = coverage.resources.missing(&scope.resources);
        if !missing.is_empty() {
            blockers.push(Blocker::MissingResources(missing));
        }
    }
    if usage.complete && usage.source_kind == "wal" {
        blockers.push(Blocker::NoDatabase);
    }
    if usage.latest + usage.history > 0 {
        blockers.push(Blocker::InUse);
    }
    blockers
}

/// Evaluates reports for a version disabled at `disabled_at`; each must
/// cover `coverage`.
pub fn evaluate(
    reports: Vec<ReportUse>,
    disabled_at: SystemTime,
    coverage: &Coverage,
) -> GateVerdict {
    let reports = reports
        .into_iter()
        .map(|usage| {
            let blockers = blockers(&usage, disabled_at, coverage);
            (usage, blockers)
        })
        .collect();
    GateVerdict { reports }
}

#[cfg(test)]
mod tests;
