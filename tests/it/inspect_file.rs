//! etcd-inspect on backup files: every shared fixture (snapshot and member db)
//! must give exactly what its `.json` lists; exit codes through the real
//! binary; truncated and corrupted copies end with exit 2 and a message naming
//! the page/offset, never a panic.

use crate::common::fixtures;

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};

use fixtures::{all_fixtures, expected, scratch_copy, Fixture};
use kube_kms::inspect::source::bbolt::{self, Database, FileError, FileOptions};

use kube_kms::inspect::audit::{Ledger, LedgerOptions};
use kube_kms::inspect::{ObservationSink, Observed, Revision};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_etcd-inspect");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("etcd-inspect runs")
}

fn scan_json(path: &std::path::Path, extra: &[&str]) -> (i32, Vec<Value>, Value) {
    let path = path.to_str().expect("utf-8 path");
    let mut args = vec!["scan", "--file", path, "--format", "json"];
    args.extend_from_slice(extra);
    let output = run(&args);
    let stdout = String::from_utf8(output.stdout).expect("utf-8 output");
    let mut values = Vec::new();
    let mut summary = Value::Null;
    for line in stdout.lines() {
        let record: Value = serde_json::from_str(line).expect("each line is JSON");
        match record["type"].as_str() {
            Some("value") => values.push(record["data"].clone()),
            Some("summary") => summary = record["data"].clone(),
            other => panic!("unexpected record type {other:?}"),
        }
    }
    assert!(
        summary.is_object(),
        "no summary record; stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), values, summary)
}

/// The provider label the fixtures use: JSON plaintext is `identity-json`.
fn fixture_provider(value: &Value) -> String {
    let provider = value["provider"].as_str().unwrap_or_default();
    if provider == "identity" && value["encoding"] == "json" {
        "identity-json".to_string()
    } else {
        provider.to_string()
    }
}

fn opt_str(value: &Value) -> Option<String> {
    value.as_str().map(str::to_string)
}

/// A string field of a record (`{"text": ...}`; `None` for null or bytes).
fn opt_text(value: &Value) -> Option<String> {
    value["text"].as_str().map(str::to_string)
}

#[test]
fn every_fixture_matches_its_json() {
    for fixture in all_fixtures() {
        let name = fixture.db.display().to_string();
        let expected = expected(&fixture);
        let (_, values, summary) = scan_json(&fixture.db, &["--resources", "all"]);
        assert!(
            summary["read_errors"].as_array().is_some_and(Vec::is_empty),
            "{name}: {summary}"
        );
        // Values by key, in revision order (the output is sorted).
        let mut by_key: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
        for value in &values {
            by_key
                .entry(
                    value["key"]["text"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
                .or_default()
                .push(value);
        }
        for (key, want) in &expected.keys {
            let records = by_key.get(key).cloned().unwrap_or_default();
            let latest: Vec<_> = records.iter().filter(|v| v["latest"] == true).collect();
            let history: Vec<String> = records
                .iter()
                .filter(|v| v["latest"] == false)
                .map(|v| fixture_provider(v))
                .collect();
            assert_eq!(history, want.history, "{name}: history of {key}");
            match &want.latest {
                None => assert!(latest.is_empty(), "{name}: {key} should be deleted"),
                Some(want_latest) => {
                    assert_eq!(latest.len(), 1, "{name}: one latest value for {key}");
                    let got = latest[0];
                    assert_eq!(
                        fixture_provider(got),
                        want_latest.provider,
                        "{name}: provider of {key}"
                    );
                    assert_eq!(
                        got["encrypted"],
                        !want_latest.provider.starts_with("identity"),
                        "{name}: {key}"
                    );
                    if want_latest.name.is_some() {
                        assert_eq!(
                            opt_text(&got["provider_name"]),
                            want_latest.name,
                            "{name}: name of {key}"
                        );
                    }
                    assert_eq!(
                        opt_text(&got["key_id"]),
                        want_latest.key_id,
                        "{name}: key_id of {key}"
                    );
                    if want_latest.dek_source_type.is_some() {
                        assert_eq!(
                            opt_str(&got["dek_source_type"]),
                            want_latest.dek_source_type,
                            "{name}: {key}"
                        );
                    }
                    if let Some(want_keys) = &want_latest.annotation_keys {
                        let got_keys: Vec<String> = got["annotation_keys"]
                            .as_array()
                            .map(|keys| keys.iter().filter_map(opt_str_ref).collect())
                            .unwrap_or_default();
                        assert_eq!(&got_keys, want_keys, "{name}: annotations of {key}");
                    }
                    if want_latest.provider == "identity" {
                        let kind = got["kind"]["text"].as_str().unwrap_or_default();
                        assert!(
                            ["Secret", "ConfigMap"].contains(&kind),
                            "{name}: kind of {key}: {kind}"
                        );
                    }
                }
            }
        }
        // No secret or configmap that the fixture does not list.
        for key in by_key.keys() {
            if key.starts_with("/registry/secrets/") || key.starts_with("/registry/configmaps/") {
                assert!(
                    expected.keys.contains_key(key),
                    "{name}: unexpected key {key}"
                );
            }
        }
        for (resource, want) in &expected.summaries {
            let got = &summary["resources"][resource];
            let latest: BTreeMap<String, u64> = got["latest"]
                .as_object()
                .map(|map| {
                    map.iter()
                        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                        .collect()
                })
                .unwrap_or_default();
            assert_eq!(latest, want.latest, "{name}: {resource} latest counts");
            assert_eq!(
                got["history_plaintext"].as_u64().unwrap_or(0),
                want.history_plaintext,
                "{name}: {resource}"
            );
            assert_eq!(
                got["deleted"].as_u64().unwrap_or(0),
                want.deleted,
                "{name}: {resource}"
            );
            if let Some(events) = want.events {
                assert_eq!(
                    got["events"].as_u64(),
                    Some(events),
                    "{name}: {resource} events"
                );
            }
        }
    }
}

fn opt_str_ref(value: &Value) -> Option<String> {
    value["text"].as_str().map(str::to_string)
}

#[test]
fn default_scan_reports_plaintext_secrets_and_history() {
    for fixture in all_fixtures() {
        let name = fixture.db.display().to_string();
        let expected = expected(&fixture);
        let (code, values, summary) = scan_json(&fixture.db, &[]);
        let mut want_plaintext = Vec::new();
        let mut want_history = 0usize;
        for (key, want) in &expected.keys {
            if !key.starts_with("/registry/secrets/") {
                continue;
            }
            if want
                .latest
                .as_ref()
                .is_some_and(|v| v.provider.starts_with("identity"))
            {
                want_plaintext.push(key.clone());
            }
            want_history += want
                .history
                .iter()
                .filter(|p| p.starts_with("identity"))
                .count();
        }
        let got_plaintext: Vec<String> = values
            .iter()
            .filter(|v| v["finding"] == "plaintext")
            .map(|v| v["key"]["text"].as_str().unwrap_or_default().to_string())
            .collect();
        let got_history = values
            .iter()
            .filter(|v| v["finding"] == "plaintext-history")
            .count();
        assert_eq!(got_plaintext, want_plaintext, "{name}");
        assert_eq!(got_history, want_history, "{name}");
        assert!(
            values.iter().all(|v| v["resource"]["text"] == "secrets"),
            "{name}"
        );
        let want_code = if want_plaintext.is_empty() && want_history == 0 {
            0
        } else {
            1
        };
        assert_eq!(code, want_code, "{name}: {summary}");
        // History revisions carry their own revision numbers.
        for value in values
            .iter()
            .filter(|v| v["finding"] == "plaintext-history")
        {
            assert!(value["revision"].as_i64().unwrap_or(0) > 0);
        }
    }
}

#[test]
fn policies_set_findings_and_exit_codes() {
    let dir = fixtures::fixture_dir();
    let rotated = dir.join("kmsv2-rotated.db");
    let rotated = rotated.to_str().unwrap();
    let counts = expected(&Fixture {
        db: dir.join("kmsv2-rotated.db"),
        json: dir.join("kmsv2-rotated.json"),
    });
    let kek1 = counts.summaries["secrets"].latest["kms-v2:fixture-kek-1"];
    assert_eq!(run(&["scan", "--file", rotated]).status.code(), Some(0));
    assert_eq!(
        run(&["scan", "--file", rotated, "--require-provider", "kms-v2"])
            .status
            .code(),
        Some(0)
    );
    assert_eq!(
        run(&[
            "scan",
            "--file",
            rotated,
            "--require-provider",
            "kms-v2:kube-kms"
        ])
        .status
        .code(),
        Some(0)
    );
    assert_eq!(
        run(&[
            "scan",
            "--file",
            rotated,
            "--require-provider",
            "kms-v2:other"
        ])
        .status
        .code(),
        Some(1)
    );
    assert_eq!(
        run(&["scan", "--file", rotated, "--require-provider", "nonsense"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        run(&[
            "scan",
            "--file",
            rotated,
            "--allowed-key-ids",
            "fixture-kek-1,fixture-kek-2"
        ])
        .status
        .code(),
        Some(0)
    );
    let (code, values, _) = scan_json(
        &dir.join("kmsv2-rotated.db"),
        &["--allowed-key-ids", "fixture-kek-2"],
    );
    assert_eq!(code, 1);
    let stale = values
        .iter()
        .filter(|v| v["finding"] == "stale-key-id")
        .count() as u64;
    assert_eq!(stale, kek1);
    assert!(values
        .iter()
        .filter(|v| v["finding"] == "stale-key-id")
        .all(|v| v["key_id"]["text"] == "fixture-kek-1"));
    // Table output names the findings.
    let table = run(&[
        "scan",
        "--file",
        rotated,
        "--allowed-key-ids",
        "fixture-kek-2",
    ]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("key_id fixture-kek-1"), "{text}");
    assert!(text.contains("KEY ID"), "{text}");

    // mixed: --ignore-history leaves the latest plaintext only.
    let mixed = dir.join("mixed.db");
    let (code, values, _) = scan_json(&mixed, &["--ignore-history"]);
    assert_eq!(code, 1);
    assert!(values.iter().all(|v| v["finding"] != "plaintext-history"));
    assert!(values.iter().any(|v| v["finding"] == "plaintext"));
    let (_, values, _) = scan_json(&mixed, &["--require-provider", "kms-v2"]);
    let wrong = values
        .iter()
        .filter(|v| v["finding"] == "wrong-provider")
        .count();
    assert_eq!(
        wrong,
        3 + 3 + 3 + 2,
        "aescbc, aesgcm, secretbox and kms v1 latest values"
    );

    // A prefix or resource with no match is clean.
    let (code, values, summary) = scan_json(&mixed, &["--prefix", "/kubernetes.io"]);
    assert_eq!((code, values.len()), (0, 0), "{summary}");
    let output = run(&[
        "scan",
        "--file",
        mixed.to_str().unwrap(),
        "--resources",
        "nothing",
    ]);
    assert_eq!(output.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&output.stdout).contains("No values in scope"));
    // Other resources by group.
    let (_, values, _) = scan_json(&mixed, &["--resources", "example.com/widgets"]);
    assert_eq!(values.len(), 1);
    assert_eq!(values[0]["resource"]["text"], "widgets.example.com");
    assert_eq!(values[0]["encoding"], "json");
}

#[test]
fn values_are_never_printed() {
    let dir = fixtures::fixture_dir().join("apiserver");
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("plaintext.json")).unwrap())
            .unwrap();
    let path = dir.join("plaintext.db");
    let mut output = run(&[
        "scan",
        "--file",
        path.to_str().unwrap(),
        "--resources",
        "all",
        "--format",
        "json",
    ])
    .stdout;
    output.extend(
        run(&[
            "scan",
            "--file",
            path.to_str().unwrap(),
            "--resources",
            "all",
        ])
        .stdout,
    );
    let text = String::from_utf8_lossy(&output);
    let mut checked = 0;
    for object in json["objects"].as_array().unwrap() {
        for secret in object["data"].as_object().unwrap().values() {
            let secret = secret.as_str().unwrap();
            if secret.starts_with("holdout") {
                assert!(
                    !text.contains(secret),
                    "a stored value leaked into the output"
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 10);
}

#[test]
fn unreadable_inputs_exit_2_with_a_message() {
    let dir = tempfile::Builder::new()
        .prefix("kk")
        .tempdir_in("/tmp")
        .unwrap();
    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![0x42u8; 16384]).unwrap();
    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    for (path, needle) in [
        (garbage.clone(), "not a bbolt database"),
        (empty.clone(), "shorter than one meta page"),
        (dir.path().join("missing.db"), "cannot open"),
    ] {
        let output = run(&["scan", "--file", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(needle), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let output = run(&["scan"]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn truncated_copies_exit_2_naming_the_missing_page() {
    for fixture in all_fixtures() {
        let bytes = std::fs::read(&fixture.db).unwrap();
        for cut in [bytes.len() / 2, bytes.len() / 2 + 100, 8192 + 7] {
            let (_dir, path) = scratch_copy(&fixture, &bytes[..cut]);
            let output = run(&["scan", "--file", path.to_str().unwrap()]);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(
                output.status.code(),
                Some(2),
                "{}: cut at {cut}: {stderr}",
                fixture.db.display()
            );
            assert!(
                stderr.contains("truncated") && stderr.contains("page"),
                "{stderr}"
            );
        }
    }
}

#[test]
fn corrupted_snapshots_fail_their_checksum() {
    for fixture in all_fixtures() {
        let bytes = std::fs::read(&fixture.db).unwrap();
        if bytes.len() % 512 != 32 {
            continue;
        }
        // A bit flip inside a page (past the meta pages), then a bad trailer.
        let mut flipped = bytes.clone();
        let at = bytes.len() / 2 + 1000;
        flipped[at] ^= 0x10;
        let mut bad_trailer = bytes.clone();
        let last = bad_trailer.len() - 1;
        bad_trailer[last] ^= 0x01;
        for corrupt in [flipped, bad_trailer] {
            let (_dir, path) = scratch_copy(&fixture, &corrupt);
            let path = path.to_str().unwrap();
            // The JSON of the values is formatted while the checksum runs:
            // none of it may come out of a file that fails it.
            for args in [
                &["scan", "--file", path][..],
                &["scan", "--file", path, "--format", "json"],
                &["scan", "--file", path, "--format", "json", "--deep"],
            ] {
                let output = run(args);
                let stderr = String::from_utf8_lossy(&output.stderr);
                assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
                assert!(stderr.contains("snapshot checksum mismatch"), "{stderr}");
                assert!(
                    stderr.contains(&format!("offset {}", bytes.len() - 32)),
                    "{stderr}"
                );
                assert!(output.stdout.is_empty(), "{args:?} wrote a report");
            }
        }
        // --skip-checksum reads the (intact) keyspace of a bad-trailer copy.
        let mut bad_trailer = bytes.clone();
        bad_trailer[last_index(&bytes)] ^= 0x01;
        let (_dir, path) = scratch_copy(&fixture, &bad_trailer);
        let output = run(&["scan", "--file", path.to_str().unwrap(), "--skip-checksum"]);
        assert!(matches!(output.status.code(), Some(0 | 1)));
    }
}

fn last_index(bytes: &[u8]) -> usize {
    bytes.len() - 1
}

/// Pages reachable from the current meta page, by walking with a visitor that
/// ignores entries.
fn reachable_pages(bytes: &[u8]) -> (u64, u64, Vec<u64>) {
    struct Ignore;
    impl bbolt::Visitor for Ignore {
        fn entry(&mut self, _: &[Vec<u8>], _: &[u8], _: &[u8], _: u64) {}
        fn page_error(&mut self, error: bbolt::BboltError) {
            panic!("intact fixture has a page error: {error}");
        }
    }
    let db = Database::open(bytes).expect("fixture opens");
    let stats = db.walk(&mut Ignore).expect("fixture walks");
    let pages = (2..db.meta().high_water)
        .filter(|&p| stats.reachable.contains(p))
        .collect();
    (db.page_size(), db.meta().root, pages)
}

#[test]
fn corrupted_member_pages_exit_2_naming_the_page() {
    for fixture in all_fixtures() {
        let bytes = std::fs::read(&fixture.db).unwrap();
        if bytes.len() % 512 == 32 {
            continue;
        }
        let (page_size, root, _) = reachable_pages(&bytes);
        // Wrong flags on the root page: nothing below it can be read.
        let mut corrupt = bytes.clone();
        corrupt[(root * page_size) as usize + 8] = 0x40;
        let (_dir, path) = scratch_copy(&fixture, &corrupt);
        let output = run(&["scan", "--file", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!("page {root} (offset {})", root * page_size)),
            "{stderr}"
        );
        // A bad id in a leaf below the root: reported, the rest is scanned.
        let (_, _, pages) = reachable_pages(&bytes);
        let leaf = pages
            .iter()
            .copied()
            .find(|&p| p != root && bytes[(p * page_size) as usize + 8] == 0x02)
            .expect("a leaf below the root");
        let mut corrupt = bytes.clone();
        corrupt[(leaf * page_size) as usize] ^= 0x01;
        let (_dir, path) = scratch_copy(&fixture, &corrupt);
        let output = run(&["scan", "--file", path.to_str().unwrap(), "--format", "json"]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "read error: page {leaf} (offset {})",
                leaf * page_size
            )),
            "{stderr}"
        );
        assert!(String::from_utf8_lossy(&output.stdout).contains("\"type\":\"summary\""));
        // A corrupt meta page 0: meta 1 is used, and the problem is reported.
        let mut corrupt = bytes.clone();
        corrupt[16 + 20] ^= 0xff;
        let (_dir, path) = scratch_copy(&fixture, &corrupt);
        let (code, _, summary) = scan_json(&path, &[]);
        assert_eq!(code, 2);
        assert!(
            summary["read_errors"][0]
                .as_str()
                .unwrap_or_default()
                .contains("meta page 0"),
            "{summary}"
        );
    }
}

fn library_scan(bytes: &[u8]) -> Result<Vec<String>, FileError> {
    let mut scan = Ledger::new(LedgerOptions::default());
    bbolt::read_image(bytes, &mut scan, FileOptions::default())?;
    Ok(scan.finish().read_errors().to_vec())
}

#[test]
fn id_flip_in_any_reachable_page_is_reported() {
    for fixture in all_fixtures()
        .into_iter()
        .filter(|f| f.db.to_string_lossy().ends_with("member.db"))
    {
        let bytes = std::fs::read(&fixture.db).unwrap();
        let (page_size, _, pages) = reachable_pages(&bytes);
        assert!(!pages.is_empty());
        for page in pages {
            let offset = (page * page_size) as usize;
            let mut corrupt = bytes.clone();
            corrupt[offset] ^= 0x04;
            match library_scan(&corrupt) {
                Err(error) => assert!(error.to_string().contains("page"), "{error}"),
                Ok(errors) => {
                    let named = errors
                        .iter()
                        .any(|e| e.contains(&format!("page {page} (offset {offset})")));
                    // An overflow page has no header of its own: flipping its
                    // first byte changes a value, which only a trailer can catch.
                    assert!(
                        named || is_overflow(&bytes, page_size, page),
                        "page {page}: {errors:?}"
                    );
                }
            }
        }
    }
}

/// True if `page` is a continuation of an earlier page's overflow run.
fn is_overflow(bytes: &[u8], page_size: u64, page: u64) -> bool {
    (2..page).any(|start| {
        let at = (start * page_size) as usize;
        let id = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        let overflow = u32::from_le_bytes(bytes[at + 12..at + 16].try_into().unwrap()) as u64;
        id == start && start + overflow >= page
    })
}

#[test]
fn header_bit_flips_never_panic() {
    let fixture = &all_fixtures()[3]; // mixed.member.db
    let bytes = std::fs::read(&fixture.db).unwrap();
    let page_size = 4096usize;
    for page in 0..bytes.len() / page_size {
        for byte in 0..16 {
            for bit in [0x01u8, 0x80] {
                let mut corrupt = bytes.clone();
                corrupt[page * page_size + byte] ^= bit;
                let _ = library_scan(&corrupt);
            }
        }
    }
}

#[test]
fn every_prefix_truncation_is_an_error() {
    let dir = fixtures::fixture_dir();
    for name in ["plaintext.db", "plaintext.member.db"] {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        let image = bytes.len() - if bytes.len() % 512 == 32 { 32 } else { 0 };
        let mut cut = 0;
        while cut < image {
            assert!(
                library_scan(&bytes[..cut]).is_err(),
                "{name} cut at {cut} was accepted"
            );
            cut += 512;
        }
        // The image without its trailer is a valid database (like a member db).
        assert!(library_scan(&bytes[..image]).is_ok());
    }
}

#[test]
/// A closed pipe stops the output quietly; the exit code is still the
/// scan's (plaintext: 1), never 0 (issue 14 §4; was 0 before).
fn broken_pipe_exits_quietly_with_the_scan_code() {
    let path = fixtures::fixture_dir().join("apiserver/plaintext.db");
    let mut child = Command::new(BIN)
        .args([
            "scan",
            "--file",
            path.to_str().unwrap(),
            "--resources",
            "all",
            "--format",
            "json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
/// Schema 2 (issue 14 §4): a key that is not UTF-8 is `{"bytes": base64}`,
/// never a bare string that reads like text; a UTF-8 key is `{"text": ...}`.
fn non_utf8_keys_are_marked_bytes_in_json() {
    use kube_kms::inspect::report::Report;
    use kube_kms::inspect::source::SourceInfo;
    let mut scan = Ledger::new(LedgerOptions::default());
    scan.observe(Observed::Put {
        key: b"/registry/secrets/ns/\xff\xfe",
        revision: Revision { main: 3, sub: 0 },
        value: b"k8s\x00",
    });
    let result = scan.finish();
    let mut out = Vec::new();
    Report::new(result, SourceInfo::default())
        .write_json(&mut out)
        .unwrap();
    let first: Value =
        serde_json::from_str(String::from_utf8(out).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(
        first["data"]["key"],
        serde_json::json!({"bytes": "L3JlZ2lzdHJ5L3NlY3JldHMvbnMv//4="})
    );
    assert_eq!(
        first["data"]["resource"],
        serde_json::json!({"text": "secrets"})
    );
    assert_eq!(first["data"]["finding"], "plaintext");
}

/// `--timings` reports the wall time and each scan thread's CPU time on
/// stderr (tools/bench-inspect prints them), and changes nothing on stdout.
#[test]
fn timings_report_each_threads_cpu_time() {
    let snapshot = all_fixtures()
        .into_iter()
        .find(|fixture| std::fs::read(&fixture.db).unwrap().len() % 512 == 32)
        .expect("a snapshot fixture");
    let path = snapshot.db.to_str().unwrap();
    let plain = run(&["scan", "--file", path, "--format", "json"]);
    let timed = run(&["scan", "--file", path, "--format", "json", "--timings"]);
    assert_eq!(timed.status.code(), plain.status.code());
    let stderr = String::from_utf8_lossy(&timed.stderr);
    let line = stderr
        .lines()
        .find(|line| line.starts_with("etcd-inspect: timings: wall "))
        .unwrap_or_else(|| panic!("no timings line in {stderr}"));
    assert!(line.contains(", CPU: walk "), "{line}");
    assert!(line.contains(" ms, read-ahead "), "{line}");
    assert!(line.contains(" ms, checksum "), "{line}");
    assert!(!line.contains("checksum not run"), "{line}");
    // Same report apart from the scan's timestamp.
    let lines = |output: &Output| {
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|line| !line.contains("scanned_at"))
            .count()
    };
    assert_eq!(lines(&timed), lines(&plain));
    let skipped = run(&["scan", "--file", path, "--skip-checksum", "--timings"]);
    assert!(
        String::from_utf8_lossy(&skipped.stderr).contains("checksum not run"),
        "{}",
        String::from_utf8_lossy(&skipped.stderr)
    );
}

/// kube-apiserver stores its built-in groups' resources without the group
/// (`/registry/clusterroles/`), so a filter naming the group
/// (`clusterroles.rbac.authorization.k8s.io`, as an EncryptionConfiguration
/// does) must examine exactly what the bare name does, not nothing.
#[test]
fn built_in_group_resources_match_their_ungrouped_keys() {
    let path = fixtures::fixture_dir().join("apiserver/plaintext.db");
    let (bare_code, bare, _) = scan_json(&path, &["--resources", "clusterroles"]);
    assert_eq!(
        (bare_code, bare.len()),
        (1, 66),
        "the fixture's clusterroles"
    );
    for name in [
        "clusterroles.rbac.authorization.k8s.io",
        "rbac.authorization.k8s.io/clusterroles",
    ] {
        let (code, values, summary) = scan_json(&path, &["--resources", name]);
        assert_eq!((code, values.len()), (1, 66), "{name}: {summary}");
        assert!(values
            .iter()
            .all(|value| value["resource"]["text"] == "clusterroles"));
    }
    // Two names (no single key range): the filter itself must match.
    let (code, values, _) = scan_json(
        &path,
        &[
            "--resources",
            "clusterroles.rbac.authorization.k8s.io,flowschemas.flowcontrol.apiserver.k8s.io",
        ],
    );
    let (_, flowschemas, _) = scan_json(&path, &["--resources", "flowschemas"]);
    assert!(!flowschemas.is_empty());
    assert_eq!((code, values.len()), (1, 66 + flowschemas.len()));
    // The aggregator's own storage keeps its group.
    let (_, apiservices, _) = scan_json(
        &path,
        &["--resources", "apiservices.apiregistration.k8s.io"],
    );
    assert!(!apiservices.is_empty());
    assert!(apiservices
        .iter()
        .all(|value| value["resource"]["text"] == "apiservices.apiregistration.k8s.io"));
}
