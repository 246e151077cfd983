//! `etcd-inspect scan --file --deep` (issue 7): plaintext left in the free
//! pages of a backup after the Secrets were rewritten encrypted and etcd was
//! compacted. A real etcd writes the data; the keyspace scan is clean, the deep
//! scan finds the remnants (page, offset, key, kind) without printing values;
//! `etcdctl defrag` and a new snapshot clear them. Truncated and corrupted
//! copies end with exit 2 (or a clean report), never a panic; every shared
//! fixture scans with --deep.

use crate::common;
use crate::common::fixtures;

use std::path::Path;
use std::process::{Command, Output};

use common::etcd::Etcd;
use fixtures::{all_fixtures, scratch_copy};
use kube_kms::inspect::classify::build;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_etcd-inspect");
const SECRETS: usize = 60;
/// A marker inside every plaintext Secret's data: must never be printed.
const MARKER: &str = "deep-scan-secret-value-";

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("etcd-inspect runs")
}

/// (exit code, residue records, summary, raw stdout).
fn deep_json(path: &Path, extra: &[&str]) -> (i32, Vec<Value>, Value, String) {
    let mut args = vec![
        "scan",
        "--file",
        path.to_str().expect("utf-8 path"),
        "--format",
        "json",
    ];
    args.extend_from_slice(extra);
    let output = run(&args);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    let mut residue = Vec::new();
    let mut summary = Value::Null;
    for line in stdout.lines() {
        let record: Value = serde_json::from_str(line).expect("JSON line");
        match record["type"].as_str() {
            Some("residue") => residue.push(record["data"].clone()),
            Some("summary") => summary = record["data"].clone(),
            Some("value") => {}
            other => panic!("unexpected record type {other:?}"),
        }
    }
    assert!(summary.is_object(), "no summary; stderr: {stderr}");
    (output.status.code().unwrap_or(-1), residue, summary, stdout)
}

/// A Secret's protobuf object with one data entry (the value holds MARKER).
fn secret_raw(index: usize) -> Vec<u8> {
    use kube_kms::inspect::pb::encode;
    let mut entry = Vec::new();
    encode::bytes_field(&mut entry, 1, b"password");
    let mut value = format!("{MARKER}{index}-").into_bytes();
    value.resize(1500, b'x');
    encode::bytes_field(&mut entry, 2, &value);
    let mut raw = Vec::new();
    encode::bytes_field(&mut raw, 2, &entry);
    raw
}

fn key(index: usize) -> String {
    format!("/registry/secrets/team-{}/app-{index}", index % 3)
}

/// Writes every Secret in plaintext, rewrites each under kms v2, compacts
/// physically at the last revision.
fn write_then_encrypt(etcd: &Etcd) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        for index in 0..SECRETS {
            let value = build::plaintext_protobuf("v1", "Secret", &secret_raw(index));
            etcd.put(key(index), value).await;
        }
        let mut last = 0;
        for index in 0..SECRETS {
            let value = build::kms_v2("kube-kms", "key-1", Some(1), &[], &[0x5a; 1500]);
            last = etcd.put(key(index), value).await;
        }
        etcd.compact(last).await;
    });
}

#[test]
fn deep_scan_finds_plaintext_left_in_free_pages_until_defrag() {
    let etcd = Etcd::start();
    write_then_encrypt(&etcd);
    let dir = tempfile::Builder::new()
        .prefix("kk")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let before = dir.path().join("before.db");
    etcd.snapshot_save(&before);

    // The keyspace is clean: latest values encrypted, history compacted away.
    let (code, residue, summary, _) = deep_json(&before, &[]);
    assert_eq!(code, 0, "{summary}");
    assert!(residue.is_empty());
    assert!(summary["residue"].is_null(), "{summary}");
    assert_eq!(summary["values"], SECRETS, "{summary}");

    // The deep scan finds the old plaintext in free pages.
    let (code, residue, summary, stdout) = deep_json(&before, &["--deep"]);
    assert_eq!(code, 1, "{summary}");
    assert!(!stdout.contains(MARKER), "a value was printed");
    let plaintext: Vec<&Value> = residue.iter().filter(|r| r["plaintext"] == true).collect();
    assert!(!plaintext.is_empty(), "{summary}");
    assert_eq!(
        summary["residue"]["plaintext"].as_u64(),
        Some(plaintext.len() as u64)
    );
    assert_eq!(
        summary["findings"]["residue"].as_u64(),
        Some(plaintext.len() as u64)
    );
    let pages = summary["details"]["pages"].as_u64().unwrap();
    let page_size = summary["details"]["page_size"].as_u64().unwrap();
    for remnant in &plaintext {
        assert_eq!(remnant["kind"], "Secret", "{remnant}");
        assert_eq!(remnant["finding"], "residue", "{remnant}");
        let page = remnant["page"].as_u64().unwrap();
        let offset = remnant["offset"].as_u64().unwrap();
        assert!(page >= 2 && page < pages, "{remnant}");
        assert_eq!(offset / page_size, page, "{remnant}");
    }
    // Keys are recovered from the KeyValue records, and they are real ones.
    let keys: Vec<&str> = plaintext.iter().filter_map(|r| r["key"].as_str()).collect();
    assert!(!keys.is_empty(), "no key recovered: {plaintext:?}");
    let written: Vec<String> = (0..SECRETS).map(key).collect();
    for key in &keys {
        assert!(written.iter().any(|w| w == key), "{key}");
    }
    // The remnant is where the report says: the file holds the marker there.
    let bytes = std::fs::read(&before).unwrap();
    let first = plaintext[0]["offset"].as_u64().unwrap() as usize;
    let window = &bytes[first..(first + 4096).min(bytes.len())];
    assert!(
        window.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()),
        "no plaintext at the reported offset"
    );

    // --ignore-residue: listed, not findings.
    let (code, residue, summary, _) = deep_json(&before, &["--deep", "--ignore-residue"]);
    assert_eq!(code, 0, "{summary}");
    assert!(!residue.is_empty());
    assert!(residue.iter().all(|r| r["finding"].is_null()));

    // The table names the remedy and no values.
    let output = run(&["scan", "--file", before.to_str().unwrap(), "--deep"]);
    let table = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{table}");
    assert!(table.contains("etcdctl defrag"), "{table}");
    assert!(table.contains("residue  page"), "{table}");
    assert!(!table.contains(MARKER));

    // After defrag and a new backup, the deep scan is clean.
    etcd.etcdctl_ok(&["defrag"]);
    let after = dir.path().join("after.db");
    etcd.snapshot_save(&after);
    let (code, residue, summary, _) = deep_json(&after, &["--deep"]);
    assert_eq!(code, 0, "{summary}");
    assert!(
        residue.iter().all(|r| r["plaintext"] == false),
        "{residue:?}"
    );
    assert_eq!(summary["values"], SECRETS, "{summary}");

    // Truncated copies of the dirty backup: exit 2, no panic.
    let bytes = std::fs::read(&before).unwrap();
    for cut in [bytes.len() / 2, bytes.len() - 4096, 8192 + 7] {
        let path = dir.path().join(format!("cut-{cut}.db"));
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let output = run(&["scan", "--file", path.to_str().unwrap(), "--deep"]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "cut at {cut}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // Free pages overwritten with lookalike garbage (checksum skipped): no
    // panic, a report, and the keyspace still read.
    let mut garbage = bytes.clone();
    let pattern: &[u8] = b"k8s\x00\x0a\xff\xff\x0a\x05/registry/secrets/\x0a\x02";
    for remnant in &residue_pages(&before) {
        let start = (*remnant as usize) * page_size as usize;
        for at in (start..start + page_size as usize - pattern.len()).step_by(41) {
            garbage[at..at + pattern.len()].copy_from_slice(pattern);
        }
    }
    let path = dir.path().join("garbage.db");
    std::fs::write(&path, &garbage).unwrap();
    let (code, _, summary, _) = deep_json(&path, &["--deep", "--skip-checksum"]);
    assert!(code == 0 || code == 1, "{summary}");
    assert_eq!(summary["values"], SECRETS, "{summary}");
}

/// Pages of the plaintext remnants of a backup.
fn residue_pages(path: &Path) -> Vec<u64> {
    let (_, residue, _, _) = deep_json(path, &["--deep"]);
    let mut pages: Vec<u64> = residue.iter().filter_map(|r| r["page"].as_u64()).collect();
    pages.dedup();
    pages
}

#[test]
fn every_fixture_scans_deep_without_errors() {
    for fixture in all_fixtures() {
        let name = fixture.db.display().to_string();
        for resources in ["secrets", "all"] {
            let (code, residue, summary, _) =
                deep_json(&fixture.db, &["--deep", "--resources", resources]);
            assert!(code == 0 || code == 1, "{name}: {summary}");
            assert!(summary["read_errors"].as_array().is_some_and(Vec::is_empty));
            let report = &summary["residue"];
            assert_eq!(report["remnants"].as_u64(), Some(residue.len() as u64));
            let pages = summary["details"]["pages"].as_u64().unwrap();
            let reachable = summary["details"]["reachable_pages"].as_u64().unwrap();
            assert_eq!(
                report["pages_examined"].as_u64(),
                Some(pages - reachable),
                "{name}"
            );
            for remnant in &residue {
                let kind = remnant["kind"].as_str();
                if resources == "secrets" && remnant["plaintext"] == true {
                    assert_eq!(kind, Some("Secret"), "{name}: {remnant}");
                }
            }
        }
        // Truncated copies with --deep: exit 2, no panic.
        let bytes = std::fs::read(&fixture.db).unwrap();
        let (_dir, path) = scratch_copy(&fixture, &bytes[..bytes.len() / 2]);
        let output = run(&["scan", "--file", path.to_str().unwrap(), "--deep"]);
        assert_eq!(output.status.code(), Some(2), "{name}");
        assert!(!String::from_utf8_lossy(&output.stderr).contains("panicked"));
    }
}

#[test]
fn deep_needs_a_file() {
    let output = run(&["scan", "--endpoints", "http://127.0.0.1:1", "--deep"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--deep"));
}
