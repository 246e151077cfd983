//! Issue 14 §3 and §4: reports state their scope and the destroy gate checks
//! it; exit codes and output that cannot mislead. Real `etcd-inspect` and
//! `kube-kms` binaries, real etcd, real files.
use crate::common;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::etcd::{fixture, put_with, Etcd};
use common::inspect::{etcd_inspect, InspectRun, ETCD_INSPECT};
use kube_kms::keyring::KeyState;

const KUBE_KMS: &str = env!("CARGO_BIN_EXE_kube-kms");

fn sha256_hex(path: &Path) -> String {
    let bytes = std::fs::read(path).expect("read the file");
    ring::digest::digest(&ring::digest::SHA256, &bytes)
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[test]
fn file_report_states_its_scope_and_identity() {
    let file = fixture("mixed.db");
    let path = file.display().to_string();
    let run = etcd_inspect(&["scan", "--file", &path, "--format", "json"]);
    assert!(run.code == 0 || run.code == 1, "{}", run.stderr);
    let summary = &run.summary;
    assert_eq!(summary["schema_version"], 2, "{summary}");
    assert_eq!(summary["tool"], "etcd-inspect");
    assert_eq!(summary["tool_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        summary["identity"]["sha256"],
        sha256_hex(&file),
        "{summary}"
    );
    assert_eq!(
        summary["scope"],
        serde_json::json!({"prefix": "/registry", "resources": ["secrets"], "history_examined": true})
    );
    assert!(summary["keys"].as_u64().unwrap_or(0) > 0, "{summary}");
    assert_eq!(
        summary["values"].as_u64(),
        Some(run.values.len() as u64),
        "{summary}"
    );

    let all = etcd_inspect(&[
        "scan",
        "--file",
        &path,
        "--format",
        "json",
        "--resources",
        "all",
        "--ignore-history",
    ]);
    assert_eq!(all.summary["scope"]["resources"], "all");
    assert_eq!(all.summary["scope"]["history_examined"], false);

    let table = etcd_inspect(&["scan", "--file", &path, "--ignore-history"]);
    let header: String = table.stdout.lines().take(3).collect::<Vec<_>>().join("\n");
    assert!(
        header.contains(&format!("sha256 {}", sha256_hex(&file))),
        "{header}"
    );
    assert!(header.contains("prefix /registry"), "{header}");
    assert!(header.contains("resources secrets"), "{header}");
    assert!(header.contains("history not examined"), "{header}");
    assert!(header.contains(env!("CARGO_PKG_VERSION")), "{header}");
}

#[tokio::test]
async fn live_scan_examines_history_by_default() {
    let etcd = Etcd::start();
    let mut client = etcd.client().await;
    let key = "/registry/secrets/ns/was-plain";
    put_with(&mut client, key, "k8s\0plaintext").await;
    put_with(
        &mut client,
        key,
        "k8s:enc:aescbc:v1:key1:0123456789abcdef0123456789abcdef",
    )
    .await;

    let run = etcd_inspect(&["scan", "--endpoints", &etcd.endpoint, "--format", "json"]);
    assert_eq!(
        run.code, 1,
        "the plaintext revision is a finding: {}",
        run.stdout
    );
    assert_eq!(run.summary["findings"]["plaintext-history"], 1);
    assert_eq!(run.summary["scope"]["history_examined"], true);
    let identity = &run.summary["identity"];
    let cluster = identity["cluster_id"].as_str().unwrap_or_default();
    assert!(
        cluster.len() == 16 && cluster != "0000000000000000",
        "{identity}"
    );
    assert!(identity["member_id"].is_string(), "{identity}");
    assert_eq!(identity["endpoints"], etcd.endpoint.as_str());

    let latest_only = etcd_inspect(&[
        "scan",
        "--endpoints",
        &etcd.endpoint,
        "--format",
        "json",
        "--ignore-history",
    ]);
    assert_eq!(latest_only.code, 0, "{}", latest_only.stdout);
    assert_eq!(latest_only.values.len(), 1);
    assert_eq!(latest_only.summary["scope"]["history_examined"], false);
    let table = etcd_inspect(&["scan", "--endpoints", &etcd.endpoint, "--ignore-history"]);
    assert!(
        table.stdout.contains("history not examined"),
        "{}",
        table.stdout
    );
    assert!(table.stdout.contains("cluster "), "{}", table.stdout);
}

#[tokio::test]
async fn broken_pipe_exits_with_the_scan_code() {
    let etcd = Etcd::start();
    let client = etcd.client().await;
    // Far more JSON than a pipe buffers (64 KiB), so the writer meets the
    // closed pipe.
    let mut writers = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let mut client = client.clone();
        writers.spawn(async move {
            for i in (worker..1500).step_by(8) {
                put_with(
                    &mut client,
                    format!("/registry/secrets/ns/s-{i:05}"),
                    "k8s\0plain",
                )
                .await;
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done.expect("writer");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let snapshot = dir.path().join("plain.db");
    etcd.snapshot_save(&snapshot);
    for format in ["json", "table"] {
        // `etcd-inspect ... | head -c 1`
        let mut child = Command::new(ETCD_INSPECT)
            .args(["scan", "--format", format, "--file"])
            .arg(&snapshot)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd-inspect starts");
        let mut stdout = child.stdout.take().expect("stdout");
        let mut first = [0u8; 1];
        stdout.read_exact(&mut first).expect("one byte");
        drop(stdout);
        let status = child.wait().expect("etcd-inspect ends");
        assert_eq!(status.code(), Some(1), "{format}: plaintext is a finding");
    }
}

#[tokio::test]
async fn table_escapes_every_string_from_etcd() {
    let etcd = Etcd::start();
    let mut client = etcd.client().await;
    // A key that clears the screen and forges a line of its own, and a key
    // name in the stored prefix that sets the terminal title.
    let key = "/registry/secrets/ns/evil\x1b[2J\nFAKE  revision 1  clean\r";
    let mut value = b"k8s:enc:aescbc:v1:k\x1b]0;owned\x07\xc2\x9b:".to_vec();
    value.extend_from_slice(&[7u8; 48]);
    put_with(&mut client, key, value).await;
    put_with(
        &mut client,
        "/registry/secrets/ns/\u{202e}txt.exe",
        "k8s\0plain",
    )
    .await;
    let table = etcd_inspect(&[
        "scan",
        "--endpoints",
        &etcd.endpoint,
        "--require-provider",
        "kms-v2",
    ]);
    assert_eq!(table.code, 1, "{}", table.stderr);
    let out = table.stdout.as_bytes();
    for control in [0x1bu8, 0x07, b'\r'] {
        assert!(
            !out.contains(&control),
            "raw {control:#x} in:\n{}",
            table.stdout
        );
    }
    assert!(!table.stdout.contains('\u{9b}'), "raw C1 CSI");
    assert!(!table.stdout.contains('\u{202e}'), "raw bidi override");
    assert!(
        !table.stdout.lines().any(|line| line.starts_with("FAKE")),
        "a key forged a line:\n{}",
        table.stdout
    );
    assert!(
        table.stdout.contains("evil\\e[2J\\nFAKE"),
        "{}",
        table.stdout
    );
    assert!(
        table.stdout.contains("k\\e]0;owned\\u{7}\\u{9b}"),
        "{}",
        table.stdout
    );
    assert!(
        table.stdout.contains("\\u{202e}txt.exe"),
        "{}",
        table.stdout
    );

    // JSON: the same strings as marked text, escaped by JSON.
    let json = etcd_inspect(&["scan", "--endpoints", &etcd.endpoint, "--format", "json"]);
    assert!(json.values.iter().any(|v| v["key"]["text"] == key));
}

#[tokio::test]
async fn password_from_a_file_or_the_environment() {
    let etcd = Etcd::start();
    etcd.put("/registry/secrets/ns/plain", "k8s\0plaintext")
        .await;
    etcd.etcdctl_ok(&["user", "add", "root:root-pw"]);
    etcd.etcdctl_ok(&["auth", "enable"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("password");
    std::fs::write(&good, "root-pw\n").expect("write");
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "nope\n").expect("write");
    let base = [
        "scan",
        "--format",
        "json",
        "--endpoints",
        &etcd.endpoint,
        "--user",
        "root",
    ];
    let from_file = |file: &Path| -> InspectRun {
        let file = file.display().to_string();
        etcd_inspect(&[&base[..], &["--password-file", &file]].concat())
    };
    let run = from_file(&good);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(run.values.len(), 1);
    let run = from_file(&wrong);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("--user/--password"), "{}", run.stderr);
    let missing = from_file(&dir.path().join("absent"));
    assert_eq!(missing.code, 2);
    assert!(
        missing.stderr.contains("--password-file"),
        "{}",
        missing.stderr
    );
    // The environment, as etcdctl reads it.
    let with_env = Command::new(ETCD_INSPECT)
        .args(base)
        .env("ETCDCTL_PASSWORD", "root-pw")
        .output()
        .expect("runs");
    assert_eq!(with_env.status.code(), Some(1));
}

/// A keyring whose version 1 is disabled (version 2 primary), and its key_id.
fn disabled_keyring(dir: &Path) -> (PathBuf, String) {
    let keyring = dir.join("keyring.json");
    for args in [&["init"][..], &["rotate"], &["disable", "1"]] {
        let output = Command::new(KUBE_KMS)
            .arg("key")
            .args(args)
            .arg("--keyring")
            .arg(&keyring)
            .env_remove("KUBE_KMS_KEYRING")
            .output()
            .expect("kube-kms runs");
        assert!(output.status.success(), "{args:?}: {output:?}");
    }
    let key_id = kube_kms::keyring::load(&keyring)
        .expect("load")
        .keyring
        .version(1)
        .expect("version 1")
        .key_id()
        .to_owned();
    // scanned_at has second resolution and must be later than disabled_at.
    std::thread::sleep(Duration::from_millis(1100));
    (keyring, key_id)
}

fn report(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let file = fixture("mixed.db").display().to_string();
    let run = etcd_inspect(&[&["scan", "--format", "json", "--file", &file][..], args].concat());
    assert!(run.summary.is_object(), "{name}: {}", run.stderr);
    let path = dir.join(name);
    std::fs::write(&path, &run.stdout).expect("write the report");
    path
}

fn destroy(keyring: &Path, extra: &[&str], reports: &[&Path]) -> (i32, String) {
    let output = Command::new(KUBE_KMS)
        .args(["key", "destroy", "1", "--keyring"])
        .arg(keyring)
        .args(extra)
        .arg("--scan-report")
        .args(reports)
        .env_remove("KUBE_KMS_KEYRING")
        .output()
        .expect("kube-kms runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn destroy_gate_refuses_reports_that_do_not_cover_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (keyring, _key_id) = disabled_keyring(dir.path());
    let d = dir.path();
    let complete = report(d, "complete.jsonl", &["--resources", "all"]);
    let cases: Vec<(PathBuf, &[&str], &str)> = vec![
        (
            report(d, "secrets.jsonl", &[]),
            &[],
            "the scan must use --resources all",
        ),
        (
            report(
                d,
                "prefix.jsonl",
                &["--resources", "all", "--prefix", "/registry/secrets"],
            ),
            &[],
            "--prefix is \"/registry/secrets\"",
        ),
        (
            report(
                d,
                "no-history.jsonl",
                &["--resources", "all", "--ignore-history"],
            ),
            &[],
            "history not examined",
        ),
        (
            report(
                d,
                "nothing.jsonl",
                &["--resources", "all", "--prefix", "/kubernetes.io"],
            ),
            &["--etcd-prefix", "/kubernetes.io"],
            "saw no key at all",
        ),
    ];
    for (path, extra, reason) in &cases {
        let (code, stderr) = destroy(&keyring, extra, &[path]);
        assert_eq!(code, 1, "{}: {stderr}", path.display());
        assert!(stderr.contains(reason), "{}: {stderr}", path.display());
        assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    }

    // A report cut before its summary.
    let text = std::fs::read_to_string(&complete).expect("read");
    let cut = d.join("cut.jsonl");
    let without_summary: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("\"summary\""))
        .collect();
    std::fs::write(&cut, without_summary.join("\n") + "\n").expect("write");
    let (code, stderr) = destroy(&keyring, &[], &[&cut]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("does not end with a summary record"),
        "{stderr}"
    );
    // Another schema version.
    let other = d.join("v1.jsonl");
    std::fs::write(
        &other,
        text.replace("\"schema_version\":2", "\"schema_version\":1"),
    )
    .expect("write");
    let (code, stderr) = destroy(&keyring, &[], &[&other]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("schema version 1"), "{stderr}");

    // With the EncryptionConfiguration, a secrets-only report covers what
    // it encrypts with kms v2 only when that is secrets alone.
    let config = d.join("encryption-config.yaml");
    std::fs::write(
        &config,
        "kind: EncryptionConfiguration\nresources:\n  - resources: [secrets, configmaps]\n    providers:\n      - kms: {apiVersion: v2, name: kube-kms, endpoint: unix:///k.sock}\n      - identity: {}\n",
    )
    .expect("write");
    let secrets = &cases[0].0;
    let config_arg = config.display().to_string();
    let (code, stderr) = destroy(&keyring, &["--encryption-config", &config_arg], &[secrets]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("resources not covered: configmaps"),
        "{stderr}"
    );
    assert_eq!(state(&keyring), KeyState::Disabled);

    // A complete report of everything, with history: destroyed.
    let (code, stderr) = destroy(
        &keyring,
        &["--encryption-config", &config_arg],
        &[&complete],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(state(&keyring), KeyState::Destroyed);
}

fn state(keyring: &Path) -> KeyState {
    kube_kms::keyring::load(keyring)
        .expect("load")
        .keyring
        .version(1)
        .expect("version 1")
        .state()
}
