//! Unit tests of `destroy_gate`.
use super::*;
use crate::inspect::report::record::{
    AllResources, Field, GroupRecord, Identity, SummaryRecord, ValueRecord,
};
use std::io::Write;
use std::time::Duration;

const DISABLED: &str = "2026-11-27T12:00:00Z";

fn write(dir: &Path, name: &str, records: &[Record<'_>]) -> PathBuf {
    let path = dir.join(name);
    let mut file = std::fs::File::create(&path).unwrap();
    for record in records {
        writeln!(file, "{}", serde_json::to_string(record).unwrap()).unwrap();
    }
    path
}

/// A complete summary of a `--resources all` scan with history, taken
/// after the disable, with `latest`/`history` values under key_id `old`.
fn summary(latest: u64, history: u64) -> SummaryRecord {
    SummaryRecord {
        schema_version: SCHEMA_VERSION,
        tool: "etcd-inspect".into(),
        tool_version: "0".into(),
        scanned_at: Some("2026-11-27T12:05:00Z".into()),
        source: "file".into(),
        location: "/b.db".into(),
        identity: Identity::default(),
        revision: 10,
        compact_revision: None,
        scope: Scope {
            prefix: "/registry".into(),
            resources: ResourceScope::All(AllResources::All),
            history_examined: true,
        },
        keys: 3,
        values: latest + history,
        out_of_scope: 0,
        resources: Default::default(),
        groups: vec![
            GroupRecord {
                resource: "secrets".into(),
                provider: "kms-v2".into(),
                provider_name: None,
                key_id: Some(Field::Text("old".into())),
                latest,
                history,
            },
            GroupRecord {
                resource: "secrets".into(),
                provider: "kms-v2".into(),
                provider_name: None,
                key_id: Some(Field::Text("new".into())),
                latest: 0,
                history: 0,
            },
        ],
        findings: Default::default(),
        stale: None,
        verify: None,
        read_errors: Vec::new(),
        residue: None,
        details: Default::default(),
        exit_code: 0,
    }
}

fn value(key: &str, latest: bool) -> Record<'static> {
    Record::Value(ValueRecord {
        location: None,
        key: Field::Text(key.to_string().into()),
        resource: Field::Text("secrets".into()),
        revision: 5,
        sub_revision: 0,
        latest,
        encrypted: true,
        provider: "kms-v2".into(),
        provider_name: None,
        key_id: Some(Field::Text("old".into())),
        dek_source_type: None,
        kind: None,
        api_version: None,
        encoding: None,
        annotation_keys: Vec::new(),
        problem: None,
        finding: None,
        verify: None,
    })
}

fn all() -> Coverage {
    Coverage {
        etcd_prefix: "/registry".into(),
        resources: RequiredResources::All,
    }
}

fn judge(path: &Path, coverage: &Coverage) -> Vec<Blocker> {
    let disabled = humantime::parse_rfc3339(DISABLED).unwrap();
    let verdict = evaluate(vec![read_report(path, "old").unwrap()], disabled, coverage);
    verdict.reports.into_iter().next().unwrap().1
}

fn one(dir: &Path, name: &str, summary: SummaryRecord) -> PathBuf {
    write(dir, name, &[Record::Summary(Box::new(summary))])
}

#[test]
fn a_complete_clean_report_passes() {
    let dir = tempfile::tempdir().unwrap();
    let clean = one(dir.path(), "clean.jsonl", summary(0, 0));
    assert_eq!(judge(&clean, &all()), []);
}

#[test]
fn a_data_dir_report_counts_and_wal_segments_alone_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let mut data_dir = summary(0, 0);
    data_dir.source = "data-dir".into();
    let data_dir = one(dir.path(), "data-dir.jsonl", data_dir);
    assert_eq!(judge(&data_dir, &all()), []);
    let mut wal = summary(0, 0);
    wal.source = "wal".into();
    let wal = one(dir.path(), "wal.jsonl", wal);
    assert_eq!(judge(&wal, &all()), [Blocker::NoDatabase]);
    // A WAL entry under the key_id is in use: etcd replays it on restart.
    let mut entry = value("/registry/secrets/a/b", false);
    if let Record::Value(value) = &mut entry {
        value.location = Some(crate::inspect::report::record::LocationRecord {
            kind: "wal".into(),
            file: Field::Text("0000000000000000-0000000000000000.wal".into()),
            offset: Some(64),
            term: Some(2),
            index: Some(9),
        });
    }
    let mut counted = summary(0, 0);
    counted.source = "data-dir".into();
    counted.values = 1;
    let used = write(
        dir.path(),
        "used.jsonl",
        &[entry, Record::Summary(Box::new(counted))],
    );
    assert_eq!(judge(&used, &all()), [Blocker::InUse]);
}

#[test]
fn refuses_use_old_reports_and_cut_files() {
    let dir = tempfile::tempdir().unwrap();
    let disabled = humantime::parse_rfc3339(DISABLED).unwrap();
    let used = write(
        dir.path(),
        "used.jsonl",
        &[
            value("/registry/secrets/a/b", false),
            Record::Summary(Box::new(summary(0, 1))),
        ],
    );
    let read = |path: &Path| read_report(path, "old").unwrap();
    let verdict = evaluate(vec![read(&used)], disabled, &all());
    assert!(!verdict.allows());
    assert_eq!(verdict.reports[0].0.history, 1);
    assert_eq!(verdict.reports[0].0.keys_listed, ["/registry/secrets/a/b"]);
    assert_eq!(verdict.reports[0].1, [Blocker::InUse]);

    let clean = one(dir.path(), "clean.jsonl", summary(0, 0));
    let mut early_summary = summary(0, 0);
    early_summary.scanned_at = Some("2026-11-27T11:59:00Z".into());
    let early = one(dir.path(), "early.jsonl", early_summary);
    assert!(evaluate(vec![read(&clean)], disabled, &all()).allows());
    assert!(!evaluate(vec![read(&clean), read(&early)], disabled, &all()).allows());
    assert!(!evaluate(vec![], disabled, &all()).allows());
    assert!(!evaluate(
        vec![read(&clean)],
        disabled + Duration::from_secs(3600),
        &all()
    )
    .allows());

    // Cut before its summary.
    let cut = write(
        dir.path(),
        "cut.jsonl",
        &[value("/registry/secrets/a/b", true)],
    );
    assert!(judge(&cut, &all()).contains(&Blocker::Incomplete));
    // Cut in the middle of its summary line.
    let text = std::fs::read_to_string(&used).unwrap();
    let half = dir.path().join("half.jsonl");
    std::fs::write(&half, &text[..text.len() - 40]).unwrap();
    let blockers = judge(&half, &all());
    assert!(blockers.contains(&Blocker::Incomplete), "{blockers:?}");
    // Something after the summary (reports pasted together).
    let mut after = std::fs::read_to_string(&clean).unwrap();
    after.push_str(&serde_json::to_string(&value("/registry/secrets/x/y", true)).unwrap());
    after.push('\n');
    let pasted = dir.path().join("pasted.jsonl");
    std::fs::write(&pasted, after).unwrap();
    let blockers = judge(&pasted, &all());
    assert!(blockers.contains(&Blocker::Incomplete), "{blockers:?}");
    assert!(blockers.contains(&Blocker::InUse), "{blockers:?}");

    let not_json = dir.path().join("table.txt");
    std::fs::write(&not_json, "Source: file x\n").unwrap();
    assert!(matches!(
        read_report(&not_json, "old"),
        Err(ReportError::NotJson { line: 1, .. })
    ));
}

#[test]
fn refuses_partial_resources() {
    let dir = tempfile::tempdir().unwrap();
    let mut secrets_only = summary(0, 0);
    secrets_only.scope.resources = ResourceScope::Only(vec!["secrets".into()]);
    let path = one(dir.path(), "secrets.jsonl", secrets_only);
    // Without an EncryptionConfiguration, only `--resources all` counts.
    assert_eq!(
        judge(&path, &all()),
        [Blocker::MissingResources(vec!["all".into()])]
    );
    let config = |names: &[&str]| Coverage {
        etcd_prefix: "/registry".into(),
        resources: RequiredResources::from_config(
            &names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        ),
    };
    assert_eq!(judge(&path, &config(&["secrets"])), []);
    assert_eq!(
        judge(&path, &config(&["secrets", "configmaps"])),
        [Blocker::MissingResources(vec!["configmaps".into()])]
    );
    for wide in ["*.*", "widgets.example.com", "deployments.apps"] {
        assert_eq!(
            judge(&path, &config(&["secrets", wide])),
            [Blocker::MissingResources(vec!["all".into()])],
            "{wide}"
        );
    }
}

#[test]
fn refuses_prefix_limited_history_ignored_and_empty_scans() {
    let dir = tempfile::tempdir().unwrap();
    let mut narrow = summary(0, 0);
    narrow.scope.prefix = "/registry/secrets/kube-system".into();
    let path = one(dir.path(), "narrow.jsonl", narrow);
    assert!(matches!(judge(&path, &all())[..], [Blocker::Prefix { .. }]));
    let mut slash = summary(0, 0);
    slash.scope.prefix = "/registry/".into();
    assert_eq!(judge(&one(dir.path(), "slash.jsonl", slash), &all()), []);

    let mut no_history = summary(0, 0);
    no_history.scope.history_examined = false;
    let path = one(dir.path(), "no-history.jsonl", no_history);
    assert_eq!(judge(&path, &all()), [Blocker::HistoryNotExamined]);

    let mut empty = summary(0, 0);
    empty.keys = 0;
    let path = one(dir.path(), "empty.jsonl", empty);
    assert_eq!(judge(&path, &all()), [Blocker::NoKeys]);
}

#[test]
fn refuses_other_schema_versions_and_edited_reports() {
    let dir = tempfile::tempdir().unwrap();
    let mut future = summary(0, 0);
    future.schema_version = SCHEMA_VERSION + 1;
    let path = one(dir.path(), "future.jsonl", future);
    assert_eq!(
        judge(&path, &all()),
        [Blocker::SchemaVersion(SCHEMA_VERSION + 1)]
    );

    // A report of schema 1 (before typed fields): bare strings, no scope.
    let old = dir.path().join("v1.jsonl");
    std::fs::write(
        &old,
        concat!(
            r#"{"type":"value","data":{"key":"/registry/secrets/a/b","provider":"kms-v2","key_id":"old","latest":true}}"#,
            "\n",
            r#"{"type":"summary","data":{"scanned_at":"2026-11-27T12:05:00Z","source":"file","location":"/b.db","groups":[],"read_errors":[],"exit_code":0}}"#,
            "\n"
        ),
    )
    .unwrap();
    let blockers = judge(&old, &all());
    assert!(
        blockers.contains(&Blocker::SchemaVersion(1)),
        "{blockers:?}"
    );
    assert!(blockers.contains(&Blocker::Incomplete), "{blockers:?}");

    // Value records dropped from a report whose summary counts them.
    let mut counted = summary(0, 0);
    counted.values = 4;
    let path = one(dir.path(), "edited.jsonl", counted);
    assert_eq!(
        judge(&path, &all()),
        [Blocker::Inconsistent {
            records: 0,
            summary: 4
        }]
    );
}

#[test]
fn key_ids_that_are_not_utf8_are_matched_as_bytes() {
    let field = Field::from_bytes(b"old\xff");
    assert!(!field.is(b"old"));
    assert!(Field::from_bytes(b"old").is(b"old"));
}
