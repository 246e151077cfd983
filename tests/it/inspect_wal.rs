//! `etcd-inspect scan --data-dir` and `--wal` (issue 17): the write-ahead log
//! keeps every write as the apiserver sent it. A real etcd takes plaintext
//! Secrets (through Txn, as kube-apiserver writes, and plain puts), then
//! their encrypted rewrites, a compaction and a defrag: the db scan is
//! clean, the data-dir scan names every plaintext write with its WAL segment,
//! byte offset, raft term and index, and exits 1, never printing a value. A
//! segment damaged in the middle is exit 2 naming segment and offset; a torn
//! zero tail is tolerated; a running member's data dir is refused (db lock).

use std::path::{Path, PathBuf};

use crate::common::etcd::Etcd;
use crate::common::inspect::{etcd_inspect, InspectRun};
use kube_kms::inspect::classify::build;
use serde_json::Value;

const SECRETS: usize = 24;
/// Inside every plaintext Secret's data: must never be printed.
const MARKER: &str = "wal-plaintext-secret-";

fn key(index: usize) -> String {
    format!("/registry/secrets/team-{}/wal-{index}", index % 3)
}

/// A Secret's protobuf object with one data entry holding MARKER.
fn plaintext(index: usize) -> Vec<u8> {
    use kube_kms::inspect::pb::encode;
    let mut entry = Vec::new();
    encode::bytes_field(&mut entry, 1, b"password");
    let mut value = format!("{MARKER}{index}-").into_bytes();
    value.resize(1200, b'x');
    encode::bytes_field(&mut entry, 2, &value);
    let mut raw = Vec::new();
    encode::bytes_field(&mut raw, 2, &entry);
    build::plaintext_protobuf("v1", "Secret", &raw)
}

/// Writes every Secret in plaintext (even ones as kube-apiserver does: a
/// Txn comparing mod_revision, then a put; odd ones as plain puts), rewrites
/// each under kms v2 the same way, compacts, defragments.
fn write_then_encrypt(etcd: &Etcd) {
    use etcd_client::{Compare, CompareOp, Txn, TxnOp};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut client = etcd.client().await;
        let mut last = 0;
        for round in 0..2 {
            for index in 0..SECRETS {
                let value = if round == 0 {
                    plaintext(index)
                } else {
                    build::kms_v2("kube-kms", "key-1", Some(1), &[], &[0x5a; 1200])
                };
                if index % 2 == 0 {
                    let current = client.get(key(index), None).await.expect("get");
                    let revision = current.kvs().first().map_or(0, |kv| kv.mod_revision());
                    let txn = Txn::new()
                        .when([Compare::mod_revision(
                            key(index),
                            CompareOp::Equal,
                            revision,
                        )])
                        .and_then([TxnOp::put(key(index), value, None)])
                        .or_else([TxnOp::get(key(index), None)]);
                    let response = client.txn(txn).await.expect("txn");
                    assert!(response.succeeded());
                    last = response.header().expect("header").revision();
                } else {
                    let response = client.put(key(index), value, None).await.expect("put");
                    last = response.header().expect("header").revision();
                }
            }
        }
        etcd.compact(last).await;
    });
    etcd.etcdctl_ok(&["defrag"]);
}

fn scan(args: &[&str]) -> InspectRun {
    let mut all = vec!["scan", "--format", "json"];
    all.extend_from_slice(args);
    let run = etcd_inspect(&all);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    assert!(!run.stdout.contains(MARKER), "a value was printed");
    assert!(!run.stderr.contains(MARKER), "a value was printed");
    run
}

fn wal_values(run: &InspectRun) -> Vec<&Value> {
    run.values
        .iter()
        .filter(|value| value["location"]["kind"] == "wal")
        .collect()
}

fn segments(data_dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(data_dir.join("member/wal"))
        .expect("wal dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wal"))
        .collect();
    paths.sort();
    paths
}

/// The record at `offset` of `segment`: its bytes (without the length word).
fn record_at(segment: &[u8], offset: usize) -> &[u8] {
    let word = u64::from_le_bytes(segment[offset..offset + 8].try_into().unwrap());
    let length = (word & !(0xff << 56)) as usize;
    &segment[offset + 8..offset + 8 + length]
}

#[test]
fn data_dir_scan_finds_plaintext_in_the_wal_of_a_clean_db() {
    let mut etcd = Etcd::start();
    write_then_encrypt(&etcd);
    let data_dir = etcd.data_dir.clone();
    let data = data_dir.to_str().unwrap().to_string();

    // While etcd runs, its db is locked: the data dir is refused.
    let run = scan(&["--data-dir", &data]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("locked"), "{}", run.stderr);

    etcd.stop();
    let db = data_dir.join("member/snap/db");
    // The db alone is clean: latest values encrypted, history compacted, defragmented.
    let run = scan(&["--file", db.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.summary);
    assert_eq!(run.values.len(), SECRETS);

    // The data dir: the same db, plus every write in the WAL.
    let run = scan(&["--data-dir", &data]);
    assert_eq!(run.code, 1, "{}\n{}", run.summary, run.stderr);
    assert_eq!(run.summary["source"], "data-dir");
    assert_eq!(run.summary["read_errors"], serde_json::json!([]));
    assert_eq!(
        run.summary["findings"]["plaintext-wal"], SECRETS,
        "{}",
        run.summary
    );
    assert!(
        run.summary["findings"]["plaintext"].is_null(),
        "{}",
        run.summary
    );
    assert_eq!(
        run.summary["values"].as_u64(),
        Some(run.values.len() as u64)
    );
    let wal = &run.summary["details"]["wal"];
    assert!(wal["segments"].as_u64() >= Some(1), "{wal}");
    assert!(wal["entries"].as_u64() >= Some(2 * SECRETS as u64), "{wal}");
    assert_eq!(wal["torn_tails"], serde_json::json!([]));
    let db_values: Vec<&Value> = run
        .values
        .iter()
        .filter(|v| v["location"].is_null())
        .collect();
    assert_eq!(db_values.len(), SECRETS);
    assert!(db_values
        .iter()
        .all(|v| v["finding"].is_null() && v["provider"] == "kms-v2"));

    let in_wal = wal_values(&run);
    let plaintext: Vec<&&Value> = in_wal
        .iter()
        .filter(|v| v["finding"] == "plaintext-wal")
        .collect();
    let encrypted: Vec<&&Value> = in_wal
        .iter()
        .filter(|v| v["provider"] == "kms-v2")
        .collect();
    assert_eq!(plaintext.len(), SECRETS);
    assert_eq!(encrypted.len(), SECRETS);
    assert!(encrypted.iter().all(|v| v["finding"].is_null()));
    let mut named: Vec<String> = plaintext
        .iter()
        .map(|v| v["key"]["text"].as_str().unwrap().to_string())
        .collect();
    named.sort();
    let mut expected: Vec<String> = (0..SECRETS).map(key).collect();
    expected.sort();
    assert_eq!(named, expected, "every plaintext write is named");
    // Each location points at the record holding that write.
    let mut indexes = Vec::new();
    for value in &plaintext {
        let location = &value["location"];
        assert_eq!(value["kind"]["text"], "Secret", "{value}");
        let file = location["file"]["text"].as_str().unwrap();
        assert!(
            file.ends_with(".wal") && file.contains("/member/wal/"),
            "{location}"
        );
        assert!(location["term"].as_u64() >= Some(1), "{location}");
        let bytes = std::fs::read(file).unwrap();
        let record = record_at(&bytes, location["offset"].as_u64().unwrap() as usize);
        let key = value["key"]["text"].as_str().unwrap().as_bytes();
        assert!(record.windows(key.len()).any(|w| w == key), "{location}");
        indexes.push(location["index"].as_u64().unwrap());
    }
    assert!(
        indexes.windows(2).all(|w| w[0] < w[1]),
        "raft indexes increase: {indexes:?}"
    );

    // The table names the WAL location and says how long it stays.
    let table = etcd_inspect(&["scan", "--data-dir", &data]);
    assert_eq!(table.code, 1);
    assert!(
        table
            .stdout
            .contains("stays until etcd purges this segment"),
        "{}",
        table.stdout
    );
    assert!(table.stdout.contains("raft term"), "{}", table.stdout);
    assert!(!table.stdout.contains(MARKER));

    // The segments alone.
    let segments = segments(&data_dir);
    let mut args: Vec<&str> = vec!["--wal"];
    let names: Vec<String> = segments.iter().map(|p| p.display().to_string()).collect();
    args.extend(names.iter().map(String::as_str));
    let run = scan(&args);
    assert_eq!(run.code, 1, "{}", run.summary);
    assert_eq!(run.summary["source"], "wal");
    assert_eq!(run.summary["findings"]["plaintext-wal"], SECRETS);
    assert_eq!(wal_values(&run).len(), run.values.len());
    // --resources and --prefix scope the WAL as the db.
    let run = scan(&[&["--resources", "configmaps"][..], &args].concat());
    assert_eq!(run.code, 0, "{}", run.summary);
    assert!(run.values.is_empty());
    let run = scan(&[&["--prefix", "/other"][..], &args].concat());
    assert_eq!(run.code, 0, "{}", run.summary);
    // --require-provider judges current values, as for the db scan; WAL
    // entries are copies, judged alone: plaintext stays a finding, an
    // encrypted copy under another provider is not one.
    let run = scan(&[&["--require-provider", "kms-v2"][..], &args].concat());
    assert_eq!(run.code, 1, "{}", run.summary);
    assert_eq!(run.summary["findings"]["plaintext-wal"], SECRETS);
    let run = scan(&[&["--require-provider", "aescbc"][..], &args].concat());
    assert_eq!(run.code, 1, "{}", run.summary);
    assert_eq!(run.summary["findings"]["plaintext-wal"], SECRETS);
    assert!(wal_values(&run)
        .iter()
        .filter(|v| v["provider"] == "kms-v2")
        .all(|v| v["finding"].is_null()));

    damaged_and_torn_copies(&data_dir, &plaintext);
}

/// A copy of the data dir with its last segment damaged in the middle (exit
/// 2, naming segment and offset), then with a torn zero tail (tolerated).
fn damaged_and_torn_copies(data_dir: &Path, plaintext: &[&&Value]) {
    let copy = tempfile::Builder::new()
        .prefix("kkwal")
        .tempdir_in("/tmp")
        .unwrap();
    let segments = segments(data_dir);
    let last = segments.last().unwrap();
    let name = last.file_name().unwrap().to_str().unwrap();
    let original = std::fs::read(last).unwrap();
    let target = copy.path().join(name);
    let target_text = target.display().to_string();

    // A byte flipped inside a record in the middle of the segment.
    let middle = plaintext[plaintext.len() / 2]["location"]["offset"]
        .as_u64()
        .unwrap() as usize;
    let mut damaged = original.clone();
    damaged[middle + 8 + 40] ^= 0x20;
    std::fs::write(&target, &damaged).unwrap();
    let run = scan(&["--wal", &target_text]);
    assert_eq!(run.code, 2, "{}", run.summary);
    let errors = run.summary["read_errors"].to_string();
    assert!(errors.contains(name), "{errors}");
    assert!(
        errors.contains(&format!("byte offset {middle}")),
        "{errors}"
    );
    assert!(run.stderr.contains(name), "{}", run.stderr);

    // A torn write: the last put's record half on disk, zeros after it.
    let last_put = plaintext
        .iter()
        .map(|v| v["location"]["offset"].as_u64().unwrap() as usize)
        .max()
        .unwrap();
    let record = record_at(&original, last_put).len();
    let mut torn = original.clone();
    torn[last_put + 8 + record / 2..].fill(0);
    std::fs::write(&target, &torn).unwrap();
    let run = scan(&["--wal", &target_text]);
    assert_eq!(
        run.summary["read_errors"],
        serde_json::json!([]),
        "{}",
        run.summary
    );
    assert_eq!(
        run.summary["details"]["wal"]["torn_tails"][0]["offset"].as_u64(),
        Some(last_put as u64),
        "{}",
        run.summary
    );
    // Everything before the torn record is still read.
    assert_eq!(
        run.summary["findings"]["plaintext-wal"].as_u64(),
        Some(plaintext.len() as u64 - 1)
    );
    assert_eq!(run.code, 1);
}
