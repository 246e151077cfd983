//! The `etcd-inspect` binary against a real etcd restored from each fixture:
//! the live scan (`--endpoints`, with `--history`) reports the same values,
//! classifications and findings as the file scan of the backup; TLS client
//! certificates work through the CLI flags; exit codes match.

use crate::common;
use crate::common::fixtures;

use std::collections::BTreeSet;
use std::process::{Command, Output};

use common::etcd::{Etcd, EtcdOptions};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_etcd-inspect");

fn run(args: &[String]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("etcd-inspect runs")
}

/// (code, value records reduced to what both sources know, summary).
fn scan(args: Vec<String>) -> (i32, BTreeSet<String>, Value) {
    let output = run(&args);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut values = BTreeSet::new();
    let mut summary = Value::Null;
    for line in stdout.lines() {
        let record: Value = serde_json::from_str(line).expect("JSON line");
        let data = &record["data"];
        if record["type"] == "summary" {
            summary = data.clone();
            continue;
        }
        // Sub revisions differ by source (a range does not tell them).
        let reduced: Vec<String> = [
            "key",
            "revision",
            "latest",
            "encrypted",
            "provider",
            "provider_name",
            "key_id",
            "dek_source_type",
            "kind",
            "encoding",
            "annotation_keys",
            "finding",
        ]
        .iter()
        .map(|field| format!("{field}={}", data[*field]))
        .collect();
        values.insert(reduced.join(" "));
    }
    assert!(
        summary.is_object(),
        "no summary; stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), values, summary)
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

#[test]
fn live_scan_of_restored_fixtures_agrees_with_file_scan() {
    let dir = fixtures::fixture_dir();
    for name in [
        "mixed.db",
        "plaintext.db",
        "apiserver/kmsv2-rotated.db",
        "apiserver/plaintext.db",
    ] {
        let file = dir.join(name);
        let etcd = Etcd::restore(&file);
        for extra in [
            &["--resources", "all"][..],
            &[][..],
            &["--resources", "secrets", "--ignore-history"][..],
        ] {
            let mut file_args = strings(&["scan", "--format", "json", "--file"]);
            file_args.push(file.display().to_string());
            file_args.extend(strings(extra));
            let mut live_args = strings(&["scan", "--format", "json", "--history", "--endpoints"]);
            live_args.push(etcd.endpoint.clone());
            live_args.extend(strings(extra));
            let (file_code, file_values, file_summary) = scan(file_args);
            let (live_code, live_values, live_summary) = scan(live_args);
            assert!(!file_values.is_empty(), "{name}");
            assert_eq!(file_values, live_values, "{name} {extra:?}");
            assert_eq!(file_code, live_code, "{name} {extra:?}");
            assert_eq!(
                file_summary["resources"], live_summary["resources"],
                "{name} {extra:?}"
            );
            assert_eq!(file_summary["findings"], live_summary["findings"], "{name}");
            assert_eq!(live_summary["source"], "live");
            assert!(
                live_summary["revision"].as_i64().unwrap_or(0)
                    >= file_summary["revision"].as_i64().unwrap_or(0)
            );
        }
        // With --ignore-history (and no --history) the live scan reads the
        // latest values only: the same latest records as the file. (Live
        // scans read history by default since issue 14.)
        let mut live_args = strings(&[
            "scan",
            "--format",
            "json",
            "--resources",
            "all",
            "--ignore-history",
            "--endpoints",
        ]);
        live_args.push(etcd.endpoint.clone());
        let (_, live_latest, summary) = scan(live_args);
        let mut file_args = strings(&["scan", "--format", "json", "--resources", "all", "--file"]);
        file_args.push(file.display().to_string());
        let (_, file_values, _) = scan(file_args);
        let file_latest: BTreeSet<String> = file_values
            .into_iter()
            .filter(|v| v.contains("latest=true"))
            .collect();
        assert_eq!(live_latest, file_latest, "{name}: latest only");
        assert_eq!(summary["compact_revision"], Value::Null);
        assert_eq!(summary["scope"]["history_examined"], false);
    }
}

#[test]
fn live_scan_over_tls_with_client_certificate() {
    let file = fixtures::fixture_dir().join("kmsv2-rotated.db");
    let etcd = Etcd::start_with(EtcdOptions {
        tls: true,
        restore: Some(file.clone()),
    });
    let tls = etcd.tls.as_ref().expect("tls files");
    let mut args = strings(&["scan", "--format", "json", "--endpoints"]);
    args.push(etcd.endpoint.clone());
    for (flag, path) in [
        ("--cacert", &tls.ca),
        ("--cert", &tls.client_cert),
        ("--key", &tls.client_key),
    ] {
        args.push(flag.to_string());
        args.push(path.display().to_string());
    }
    let (code, values, summary) = scan(args.clone());
    assert_eq!(code, 0, "{summary}");
    assert_eq!(values.len(), 40);
    args.extend(strings(&["--allowed-key-ids", "fixture-kek-2"]));
    let (code, values, _) = scan(args);
    assert_eq!(code, 1);
    assert_eq!(
        values
            .iter()
            .filter(|v| v.contains("finding=\"stale-key-id\""))
            .count(),
        20
    );
    // Without a client certificate: an error, exit 2.
    let output = run(&[
        "scan".into(),
        "--endpoints".into(),
        etcd.endpoint.clone(),
        "--cacert".into(),
        tls.ca.display().to_string(),
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("scanning etcd at"));
}

#[test]
fn live_empty_etcd_and_unmatched_prefix_are_clean() {
    let etcd = Etcd::start();
    let output = run(&strings(&["scan", "--endpoints", &etcd.endpoint]));
    assert_eq!(output.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&output.stdout).contains("No values in scope"));
    let restored = Etcd::restore(&fixtures::fixture_dir().join("plaintext.db"));
    let output = run(&strings(&[
        "scan",
        "--endpoints",
        &restored.endpoint,
        "--prefix",
        "/kubernetes.io",
    ]));
    assert_eq!(output.status.code(), Some(0));
    let output = run(&strings(&["scan", "--endpoints", &restored.endpoint]));
    assert_eq!(output.status.code(), Some(1));
}
