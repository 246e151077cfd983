//! The gate in front of `kube-kms key destroy`: reads the JSON Lines reports
//! of `etcd-inspect scan --format json` (live etcd and the backups you keep)
//! and decides whether a key_id is provably unused.
//!
//! A destroy may go ahead only when every report is complete (a summary
//! record, no read errors), was taken after the version was disabled (its
//! `scanned_at` is later than the keyring's `disabled_at`), and shows zero
//! values, latest or history, under the version's key_id. Otherwise the
//! verdict lists, per report, what still uses it (counts and the first few
//! etcd keys) or why the report does not count.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

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

/// What one report says about one key_id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportUse {
    /// The file.
    pub path: PathBuf,
    /// `file` or `live`, and its location, from the summary.
    pub source: String,
    /// `scanned_at` of the summary.
    pub scanned_at: Option<SystemTime>,
    /// Whether a summary record was found.
    pub complete: bool,
    /// Read errors or a non-zero error exit recorded in the summary.
    pub read_errors: usize,
    /// Latest values under the key_id.
    pub latest: u64,
    /// History values under the key_id.
    pub history: u64,
    /// The first [`LISTED_KEYS`] etcd keys with a value under the key_id.
    pub keys: Vec<String>,
    /// A live scan without `--history` (older revisions not examined).
    pub live_without_history: bool,
}

/// Reads one report and counts the values under `key_id`.
pub fn read_report(path: &Path, key_id: &str) -> Result<ReportUse, ReportError> {
    let file = std::fs::File::open(path).map_err(|source| ReportError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut usage = ReportUse {
        path: path.to_path_buf(),
        ..ReportUse::default()
    };
    let mut counted_from_values = (0u64, 0u64);
    for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| ReportError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let record: serde_json::Value =
            serde_json::from_str(&line).map_err(|_| ReportError::NotJson {
                path: path.to_path_buf(),
                line: index + 1,
            })?;
        let data = &record["data"];
        match record["type"].as_str() {
            Some("value") if data["provider"] == "kms-v2" && data["key_id"] == key_id => {
                if data["latest"] == true {
                    counted_from_values.0 += 1;
                } else {
                    counted_from_values.1 += 1;
                }
                if usage.keys.len() < LISTED_KEYS {
                    if let Some(key) = data["key"].as_str() {
                        usage.keys.push(key.to_owned());
                    }
                }
            }
            Some("summary") => {
                usage.complete = true;
                usage.source = format!(
                    "{} {}",
                    data["source"].as_str().unwrap_or("?"),
                    data["location"].as_str().unwrap_or("?")
                );
                usage.scanned_at = data["scanned_at"]
                    .as_str()
                    .and_then(|text| humantime::parse_rfc3339(text).ok());
                usage.read_errors = data["read_errors"].as_array().map_or(0, Vec::len);
                if data["exit_code"].as_u64() == Some(2) && usage.read_errors == 0 {
                    usage.read_errors = 1;
                }
                usage.live_without_history =
                    data["source"] == "live" && data["details"]["history"] != true;
                for group in data["groups"].as_array().into_iter().flatten() {
                    if group["provider"] == "kms-v2" && group["key_id"] == key_id {
                        usage.latest += group["latest"].as_u64().unwrap_or(0);
                        usage.history += group["history"].as_u64().unwrap_or(0);
                    }
                }
            }
            _ => {}
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
    /// No summary record: the scan did not finish, or the file is cut.
    Incomplete,
    /// The scan recorded read errors: it may have missed values.
    ReadErrors,
    /// No `scanned_at` (a report from an older etcd-inspect).
    NoTimestamp,
    /// Taken before (or at the same second as) the disable.
    TakenBeforeDisable,
}

impl Blocker {
    /// Sentence for the refusal.
    pub fn describe(&self) -> &'static str {
        match self {
            Blocker::InUse => "values are still stored under this key_id",
            Blocker::Incomplete => "the report has no summary record (the scan did not finish or the file is cut); scan again",
            Blocker::ReadErrors => "the scan recorded read errors and may have missed values; fix them and scan again",
            Blocker::NoTimestamp => "the report has no scanned_at time; scan again with this version of etcd-inspect",
            Blocker::TakenBeforeDisable => "the scan was taken before the version was disabled; scan again now",
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

/// Evaluates reports for a version disabled at `disabled_at`.
pub fn evaluate(reports: Vec<ReportUse>, disabled_at: SystemTime) -> GateVerdict {
    let reports = reports
        .into_iter()
        .map(|usage| {
            let mut blockers = Vec::new();
            if !usage.complete {
                blockers.push(Blocker::Incomplete);
            }
            if usage.read_errors > 0 {
                blockers.push(Blocker::ReadErrors);
            }
            match usage.scanned_at {
                None if usage.complete => blockers.push(Blocker::NoTimestamp),
                Some(at) if at <= disabled_at => blockers.push(Blocker::TakenBeforeDisable),
                _ => {}
            }
            if usage.latest + usage.history > 0 {
                blockers.push(Blocker::InUse);
            }
            (usage, blockers)
        })
        .collect();
    GateVerdict { reports }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    fn report(dir: &Path, name: &str, lines: &[serde_json::Value]) -> PathBuf {
        let path = dir.join(name);
        let mut file = std::fs::File::create(&path).unwrap();
        for line in lines {
            writeln!(file, "{line}").unwrap();
        }
        path
    }

    fn summary(scanned_at: &str, latest: u64, history: u64) -> serde_json::Value {
        serde_json::json!({"type": "summary", "data": {
            "scanned_at": scanned_at, "source": "file", "location": "/b.db",
            "groups": [{"provider": "kms-v2", "key_id": "old", "latest": latest, "history": history},
                       {"provider": "kms-v2", "key_id": "new", "latest": 9, "history": 0}],
            "read_errors": [], "exit_code": 0}})
    }

    #[test]
    fn refuses_use_old_reports_and_cut_files_and_allows_clean_later_ones() {
        let dir = tempfile::tempdir().unwrap();
        let disabled = humantime::parse_rfc3339("2026-11-27T12:00:00Z").unwrap();
        let value = serde_json::json!({"type": "value", "data": {
            "key": "/registry/secrets/a/b", "provider": "kms-v2", "key_id": "old", "latest": false}});
        let used = report(
            dir.path(),
            "used.jsonl",
            &[value.clone(), summary("2026-11-27T12:05:00Z", 0, 1)],
        );
        let clean = report(
            dir.path(),
            "clean.jsonl",
            &[summary("2026-11-27T12:05:00Z", 0, 0)],
        );
        let early = report(
            dir.path(),
            "early.jsonl",
            &[summary("2026-11-27T11:59:00Z", 0, 0)],
        );
        let cut = report(dir.path(), "cut.jsonl", &[value]);
        let read = |path: &Path| read_report(path, "old").unwrap();
        let verdict = evaluate(vec![read(&used)], disabled);
        assert!(!verdict.allows());
        assert_eq!(verdict.reports[0].0.history, 1);
        assert_eq!(verdict.reports[0].0.keys, ["/registry/secrets/a/b"]);
        assert_eq!(verdict.reports[0].1, [Blocker::InUse]);
        assert!(evaluate(vec![read(&clean)], disabled).allows());
        assert!(!evaluate(vec![read(&clean), read(&early)], disabled).allows());
        let cut_verdict = evaluate(vec![read(&cut)], disabled);
        assert!(cut_verdict.reports[0].1.contains(&Blocker::Incomplete));
        assert!(!evaluate(vec![], disabled).allows());
        assert!(!evaluate(vec![read(&clean)], disabled + Duration::from_secs(3600)).allows());
        let not_json = report(dir.path(), "table.txt", &[]);
        std::fs::write(&not_json, "Source: file x\n").unwrap();
        assert!(matches!(
            read_report(&not_json, "old"),
            Err(ReportError::NotJson { line: 1, .. })
        ));
    }
}
