//! `etcd-inspect scan --endpoints` failure paths and live-only options, with
//! the real binary against a real etcd: a dead, hung or killed etcd ends
//! with exit 2 and a message saying what to do (never a clean result), a
//! missing client certificate too; user/password auth, small pages and
//! compaction show in the report.

use crate::common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::etcd::{fixture, free_port, put_with, Etcd};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_etcd-inspect");

fn inspect(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("ETCDCTL_PASSWORD")
        .stdin(Stdio::null())
        .output()
        .expect("etcd-inspect runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Value records and the summary of a `--format json` run.
fn records(output: &Output) -> (Vec<Value>, Value) {
    let mut values = Vec::new();
    let mut summary = Value::Null;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let record: Value = serde_json::from_str(line).expect("JSON line");
        if record["type"] == "summary" {
            summary = record["data"].clone();
        } else if record["type"] == "value" {
            values.push(record["data"].clone());
        }
    }
    (values, summary)
}

#[test]
fn dead_endpoint_exits_2_within_seconds() {
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let started = Instant::now();
    for format in ["table", "json"] {
        let output = inspect(&["scan", "--endpoints", &endpoint, "--format", format]);
        assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
        let message = stderr(&output);
        assert!(message.contains("cannot reach etcd"), "{message}");
        assert!(message.contains("check --endpoints"), "{message}");
        assert!(
            !String::from_utf8_lossy(&output.stdout).contains("\"type\":\"summary\""),
            "no clean report for a dead etcd"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(16));
}

#[test]
fn hung_endpoint_exits_2_within_seconds() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let started = Instant::now();
    let output = inspect(&["scan", "--endpoints", &endpoint]);
    drop(listener);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("cannot reach etcd"),
        "{}",
        stderr(&output)
    );
    assert!(started.elapsed() < Duration::from_secs(8));
}

#[tokio::test]
async fn etcd_killed_mid_scan_exits_2_never_clean() {
    let mut etcd = Etcd::start();
    let mut client = etcd.client().await;
    // Enough single-key pages that the scan takes seconds.
    let mut writers = tokio::task::JoinSet::new();
    for worker in 0..16 {
        let mut client = client.clone();
        writers.spawn(async move {
            for i in (worker..4000).step_by(16) {
                put_with(&mut client, format!("/registry/secrets/ns/s-{i:05}"), "v").await;
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done.expect("writer");
    }
    put_with(&mut client, "/registry/secrets/ns/last", "v").await;
    let mut child = Command::new(BIN)
        .args([
            "scan",
            "--format",
            "json",
            "--page-size",
            "1",
            // Latest values only: paged ranges, the slow path killed here
            // (the history replay reads 1000 revisions per message).
            "--ignore-history",
            "--endpoints",
        ])
        .arg(&etcd.endpoint)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("etcd-inspect starts");
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "the scan ended before etcd was killed: make it longer"
    );
    etcd.kill();
    let output = child.wait_with_output().expect("etcd-inspect ends");
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(message.contains("incomplete"), "{message}");
    let (_, summary) = records(&output);
    assert_eq!(summary, Value::Null, "no report of a partial scan");
}

#[test]
fn tls_without_client_certificate_exits_2() {
    let etcd = Etcd::start_tls();
    let tls = etcd.tls.clone().expect("tls");
    let ca = tls.ca.display().to_string();
    let output = inspect(&["scan", "--endpoints", &etcd.endpoint, "--cacert", &ca]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("--cert/--key"),
        "{}",
        stderr(&output)
    );
    let output = inspect(&[
        "scan",
        "--endpoints",
        &etcd.endpoint,
        "--cacert",
        &ca,
        "--cert",
        &tls.client_cert.display().to_string(),
        "--key",
        &tls.client_key.display().to_string(),
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
}

#[tokio::test]
async fn user_and_password_from_flag_or_environment() {
    let etcd = Etcd::start();
    etcd.put("/registry/secrets/ns/plain", "k8s\0plaintext")
        .await;
    etcd.etcdctl_ok(&["user", "add", "root:root-pw"]);
    etcd.etcdctl_ok(&["auth", "enable"]);
    let base = ["scan", "--format", "json", "--endpoints", &etcd.endpoint];
    let with_flag = inspect(&[&base[..], &["--user", "root", "--password", "root-pw"]].concat());
    assert_eq!(with_flag.status.code(), Some(1), "{}", stderr(&with_flag));
    assert_eq!(records(&with_flag).0.len(), 1);
    let with_env = Command::new(BIN)
        .args(base)
        .args(["--user", "root"])
        .env("ETCDCTL_PASSWORD", "root-pw")
        .output()
        .expect("runs");
    assert_eq!(with_env.status.code(), Some(1), "{}", stderr(&with_env));
    let wrong = inspect(&[&base[..], &["--user", "root", "--password", "nope"]].concat());
    assert_eq!(wrong.status.code(), Some(2));
    assert!(
        stderr(&wrong).contains("--user/--password"),
        "{}",
        stderr(&wrong)
    );
    let anonymous = inspect(&base);
    assert_eq!(anonymous.status.code(), Some(2));
}

#[tokio::test]
async fn small_pages_compaction_and_history_in_the_report() {
    let etcd = Etcd::restore(&fixture("mixed.db"));
    let endpoint = etcd.endpoint.clone();
    let full = inspect(&[
        "scan",
        "--format",
        "json",
        "--resources",
        "all",
        "--ignore-history",
        "--endpoints",
        &endpoint,
    ]);
    // Paged ranges are the latest-values path: --ignore-history.
    let paged = inspect(&[
        "scan",
        "--format",
        "json",
        "--resources",
        "all",
        "--ignore-history",
        "--page-size",
        "2",
        "--endpoints",
        &endpoint,
    ]);
    let (full_values, full_summary) = records(&full);
    let (paged_values, paged_summary) = records(&paged);
    assert!(full_values.len() > 10);
    assert_eq!(full_values, paged_values);
    assert_eq!(full.status.code(), paged.status.code());
    assert_eq!(full_summary["compact_revision"], Value::Null);
    assert_eq!(full_summary["revision"], paged_summary["revision"]);

    // Rewrite a plaintext secret under "encryption", then compact: its old
    // plaintext revision is no longer served, so --history no longer finds it.
    let mut client = etcd.client().await;
    let key = "/registry/secrets/default/s-00-identity";
    let before = inspect(&[
        "scan",
        "--format",
        "json",
        "--history",
        "--endpoints",
        &endpoint,
    ]);
    let (before_values, _) = records(&before);
    let revision = put_with(&mut client, key, "k8s:enc:aescbc:v1:key1:opaque").await;
    let history_of_key = |values: &[Value]| {
        values
            .iter()
            .filter(|v| v["key"]["text"] == key && v["latest"] == false)
            .count()
    };
    let after = inspect(&[
        "scan",
        "--format",
        "json",
        "--history",
        "--endpoints",
        &endpoint,
    ]);
    let (after_values, _) = records(&after);
    assert_eq!(
        history_of_key(&after_values),
        history_of_key(&before_values) + 1
    );
    etcd.compact(revision).await;
    let compacted = inspect(&[
        "scan",
        "--format",
        "json",
        "--history",
        "--endpoints",
        &endpoint,
    ]);
    let (compacted_values, summary) = records(&compacted);
    assert_eq!(summary["compact_revision"], revision, "{summary}");
    assert_eq!(history_of_key(&compacted_values), 0);
}
