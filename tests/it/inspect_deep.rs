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
    let keys: Vec<&str> = plaintext
        .iter()
        .filter_map(|r| r["key"]["text"].as_str())
        .collect();
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
                if resources == "secrets"
                    && remnant["plaintext"] == true
                    && remnant["form"] != "pem-private-key"
                {
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

/// A PEM block of `label` whose body is `len` bytes of base64 (not a real
/// key: only its shape matters), 64 characters a line.
fn pem_block(label: &str, seed: u8, len: usize) -> String {
    use base64::Engine as _;
    let bytes: Vec<u8> = (0..len * 3 / 4)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    let body = base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64"));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

/// Issue 14 §5: a ~20 KiB plaintext TLS Secret, migrated (rewritten
/// encrypted), compacted, and the first page of its old value reused by later
/// writes: its KeyValue record (the key, the `k8s\0` header) is gone, but the
/// overflow tail still holds the private key, which the deep scan reports as
/// a PEM private key remnant, without printing it.
#[test]
fn deep_scan_finds_the_pem_key_of_a_tls_secret_whose_header_was_overwritten() {
    let etcd = Etcd::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let tls_key = "/registry/secrets/ingress/wildcard-tls";
    let crt = pem_block("CERTIFICATE", 7, 16 * 1024);
    let key = pem_block("RSA PRIVATE KEY", 9, 3 * 1024);
    let key_line = key.lines().nth(5).expect("a body line").to_string();
    let secret = build::secret(
        "ingress",
        "wildcard-tls",
        "6f1c7a2e-0000-4000-8000-000000000001",
        1_700_000_000,
        &[("tls.crt", crt.as_bytes()), ("tls.key", key.as_bytes())],
    );
    assert!(secret.len() > 19 * 1024, "{}", secret.len());
    let dir = tempfile::Builder::new()
        .prefix("kk")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let snapshot = dir.path().join("tls.db");
    runtime.block_on(async {
        etcd.put(tls_key, secret.clone()).await;
        let sealed = build::kms_v2("kube-kms", "key-1", Some(1), &[], &vec![0x5a; secret.len()]);
        etcd.put(tls_key, sealed).await;
        // Later revisions in leaves of their own, so that the writes below
        // do not rewrite the leaf of the large values.
        let mut last = 0;
        for index in 0..20 {
            let value = build::kms_v2("kube-kms", "key-1", Some(1), &[], &[0x44; 200]);
            last = etcd
                .put(format!("/registry/configmaps/pad/p{index}"), value)
                .await;
        }
        etcd.compact(last).await;
    });
    // Small writes until the old value's first page has been reused: the
    // KeyValue record of the plaintext revision is no longer found.
    let mut fill = 0;
    let found = loop {
        etcd.snapshot_save(&snapshot);
        let (code, residue, summary, stdout) = deep_json(&snapshot, &["--deep"]);
        assert!(!stdout.contains(&key_line), "the private key was printed");
        let record = residue
            .iter()
            .any(|r| r["key"]["text"] == tls_key && r["plaintext"] == true);
        if !record {
            break (code, residue, summary);
        }
        assert!(fill < 100, "the old value's first page was never reused");
        // One small write per commit (the snapshot commits it): each takes a
        // page or two from the start of the free run.
        fill += 1;
        runtime.block_on(async {
            let value = build::kms_v2("kube-kms", "key-1", Some(1), &[], &[0x33; 200]);
            etcd.put(format!("/registry/configmaps/fill/c{fill}"), value)
                .await;
        });
        std::fs::remove_file(&snapshot).expect("remove the snapshot");
    };
    let (code, residue, summary) = found;
    assert_eq!(summary["values"], 1, "{summary}");
    let pem: Vec<&Value> = residue
        .iter()
        .filter(|r| r["form"] == "pem-private-key")
        .collect();
    assert!(
        !pem.is_empty(),
        "no PEM remnant after {fill} fills: {residue:?}"
    );
    for remnant in &pem {
        assert_eq!(remnant["plaintext"], true, "{remnant}");
        assert_eq!(remnant["finding"], "residue", "{remnant}");
    }
    assert_eq!(code, 1, "{summary}");
    // The remnant is where the report says: the file holds the key there.
    let bytes = std::fs::read(&snapshot).expect("snapshot");
    let at = pem[0]["offset"].as_u64().expect("offset") as usize;
    assert!(
        bytes[at..].starts_with(b"-----BEGIN RSA PRIVATE KEY-----")
            || bytes[at..].starts_with(b"-----END RSA PRIVATE KEY-----")
    );
}

/// Remnants found by content across the deep scan's read windows and across
/// the high-water mark: PEM private key blocks packed through 9 MiB of free
/// pages (several windows; each block is reported once, by its BEGIN line),
/// and a JSON Secret that starts in the last free page and ends in the slack
/// of a pre-grown file. Crafted file: page 2 is the root bucket, page 3 the
/// `key` bucket, every other page below the high-water mark is free.
#[test]
fn content_remnants_are_found_once_across_windows_and_into_the_slack() {
    use crate::common::bbolt_craft::{etcd_file, PAGE};
    let high_water = 2400usize;
    let mut craft = etcd_file(high_water + 8, &[]);
    craft
        .meta(0, 2, high_water as u64, 2)
        .meta(1, 2, high_water as u64, 1);
    let mut begins = Vec::new();
    let mut at = 4 * PAGE + 123;
    let mut seed = 0u8;
    while at + 4000 < (high_water - 1) * PAGE {
        let block = pem_block("EC PRIVATE KEY", seed, 3000);
        craft.put(at, block.as_bytes());
        begins.push(at as u64);
        at += block.len() + 97;
        seed = seed.wrapping_add(1);
    }
    let json = format!(
        "{{\"kind\":\"Secret\",\"apiVersion\":\"v1\",\"data\":{{\"k\":\"{MARKER}{}\"}}}}",
        "x".repeat(6000)
    );
    let json_at = high_water * PAGE - 200;
    craft.put(json_at, json.as_bytes());
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("packed.db");
    std::fs::write(&path, &craft.bytes).expect("write");

    let (code, residue, summary, stdout) = deep_json(&path, &["--deep", "--skip-checksum"]);
    assert_eq!(code, 1, "{summary}");
    assert!(!stdout.contains(MARKER), "a value was printed");
    let pem: Vec<u64> = residue
        .iter()
        .filter(|r| r["form"] == "pem-private-key")
        .map(|r| r["offset"].as_u64().expect("offset"))
        .collect();
    assert_eq!(pem, begins, "each PEM block once, at its BEGIN line");
    let json: Vec<&Value> = residue
        .iter()
        .filter(|r| r["form"] == "json-object")
        .collect();
    assert_eq!(json.len(), 1, "{json:?}");
    // The offset of its `"kind"` field, just after the `{`.
    assert_eq!(json[0]["offset"].as_u64(), Some(json_at as u64 + 1));
    assert_eq!(json[0]["kind"], "Secret");
    assert_eq!(json[0]["plaintext"], true);
    assert!(residue.iter().all(|r| r["plaintext"] == true));
    assert_eq!(
        summary["residue"]["slack_bytes"].as_u64(),
        Some(8 * PAGE as u64),
        "{summary}"
    );

    // Out of scope (configmaps only): neither PEM keys nor Secrets.
    let (_, residue, _, _) = deep_json(
        &path,
        &["--deep", "--skip-checksum", "--resources", "configmaps"],
    );
    assert!(residue.is_empty(), "{residue:?}");
}
