//! The rotation runbook (docs/rotation.md) end to end, with the real parts:
//! `kube-kms serve` on a real unix socket, a real etcd, the real
//! `kube-kms key` and `etcd-inspect` binaries. The test plays kube-apiserver
//! (Encrypt of a fresh DEK seed through the socket, values sealed in KMS v2
//! HKDF mode into etcd): write, rotate, write more, scan (stale count,
//! `--emit-stale` names), rewrite the stale objects, scan (zero stale),
//! disable the old version, verify every value through the plugin, and
//! destroy with scan reports: refused while a report (live or backup) still
//! shows the old key_id, accepted once none does.
//! Also the error paths of the verify options: a dead plugin socket, and
//! `--emit-stale` without a current key_id.

use crate::common;
use crate::common::plugin;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use common::apiserver::KmsV2Writer;
use common::etcd::Etcd;
use common::inspect::{etcd_inspect, InspectRun};
use kube_kms::client::KmsClient;
use kube_kms::keyring::KeyState;
use plugin::{key, temp_dir, wait_for_key_id, ServeProcess, KUBE_KMS};
use serde_json::{json, Value};

/// The provider name in the EncryptionConfiguration the test plays.
const PROVIDER: &str = "kube-kms";

/// Objects written before the rotation (all stale after it).
const BEFORE: &[(&str, &str)] = &[
    ("team-a", "db-pass"),
    ("team-a", "api-token"),
    ("team-b", "tls"),
    ("team-b", "registry"),
    ("kube-system", "bootstrap"),
];

/// Objects written after the rotation (current from the start).
const AFTER: &[(&str, &str)] = &[
    ("team-a", "new-1"),
    ("team-c", "new-2"),
    ("team-c", "new-3"),
];

/// A scan of the live etcd, secrets only, JSON; `extra` adds options.
fn scan_live(etcd: &Etcd, extra: &[&str]) -> InspectRun {
    let mut args = vec![
        "scan",
        "--endpoints",
        etcd.endpoint.as_str(),
        "--resources",
        "secrets",
        "--format",
        "json",
    ];
    args.extend_from_slice(extra);
    let run = etcd_inspect(&args);
    assert_ne!(run.code, 2, "etcd-inspect {args:?} failed: {}", run.stderr);
    run
}

/// Saves a run's JSON output as a scan report file.
fn save_report(run: &InspectRun, path: &Path) -> String {
    assert!(
        run.summary.is_object(),
        "not a complete report: {}",
        run.stderr
    );
    std::fs::write(path, &run.stdout).expect("write the scan report");
    path.display().to_string()
}

/// kube-apiserver's EncryptionConfiguration of this test: secrets under kms v2.
const ENCRYPTION_CONFIG: &str = "\
apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [secrets]
    providers:
      - kms: {apiVersion: v2, name: kube-kms, endpoint: unix:///run/kube-kms.sock}
      - identity: {}
";

/// `kube-kms key destroy VERSION --keyring K --encryption-config C
/// --scan-report REPORTS...` (the reports scan secrets only, which the
/// configuration says is all kms v2 encrypts).
fn destroy(keyring: &Path, version: u32, reports: &[&str]) -> std::process::Output {
    let config = keyring.with_file_name("encryption-config.yaml");
    std::fs::write(&config, ENCRYPTION_CONFIG).expect("write the EncryptionConfiguration");
    Command::new(KUBE_KMS)
        .args(["key", "destroy", &version.to_string(), "--keyring"])
        .arg(keyring)
        .arg("--encryption-config")
        .arg(&config)
        .arg("--scan-report")
        .args(reports)
        .output()
        .expect("run kube-kms key destroy")
}

fn state_of(keyring: &Path, version: u32) -> KeyState {
    kube_kms::keyring::load(keyring)
        .expect("load the keyring")
        .keyring
        .version(version)
        .expect("the version exists")
        .state()
}

/// Stale latest values per stale key_id in a summary.
fn stale_latest(summary: &Value) -> Value {
    let key_ids = summary["stale"]["key_ids"]
        .as_object()
        .unwrap_or_else(|| panic!("no stale report in {summary}"));
    key_ids
        .iter()
        .map(|(key_id, counts)| (key_id.clone(), counts["latest"].clone()))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Polls Decrypt of `writer`'s DEK source until the plugin refuses it (it
/// reloaded a keyring where that version is disabled).
async fn wait_until_refused(client: &mut KmsClient, writer: &KmsV2Writer, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let answer = client
            .decrypt(
                writer.encrypted_dek_source(),
                writer.key_id(),
                &writer.annotations(),
                "rotation-test-probe",
            )
            .await;
        if answer.is_err() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the plugin still decrypts under {} after {limit:?}",
            writer.key_id()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until a scan started now counts as taken after the disable: the
/// keyring records `disabled_at` cut to the second, and reports carry
/// `scanned_at` to the second, so the gate accepts only scans from the next
/// second on (a scan in the same second might have preceded the disable).
async fn wait_for_a_report_to_count(keyring: &Path, version: u32) {
    let disabled_at = kube_kms::keyring::load(keyring)
        .expect("load the keyring")
        .keyring
        .version(version)
        .and_then(|version| version.disabled_at())
        .expect("the version records when it was disabled");
    let counts_from = disabled_at + Duration::from_secs(1);
    if let Ok(remaining) = counts_from.duration_since(SystemTime::now()) {
        tokio::time::sleep(remaining).await;
    }
}

fn names(list: &[(&str, &str)]) -> BTreeSet<String> {
    list.iter()
        .map(|(namespace, name)| format!("{namespace}/{name}"))
        .collect()
}

#[tokio::test]
async fn rotate_migrate_verify_and_destroy_only_with_proof() {
    let dir = temp_dir();
    let keyring = dir.path().join("keyring.json");
    key(&keyring, &["init"]);
    let etcd = Etcd::start();
    // A short poll so the test does not wait a second per keyring change.
    let serve =
        ServeProcess::start(dir.path(), &keyring, &["--reload-poll-interval", "50ms"]).await;
    let socket = format!("unix://{}", serve.socket.display());
    let mut client = serve.client().await;
    let mut etcd_client = etcd.client().await;

    // The apiserver's first DEK seed, wrapped by the first key.
    let old = KmsV2Writer::new(&mut client, PROVIDER).await;
    let old_version = kube_kms::keyring::load(&keyring)
        .expect("load the keyring")
        .keyring
        .primary()
        .map(|version| version.id())
        .expect("a primary version");
    for (namespace, name) in BEFORE {
        let (key, value) = old.secret(namespace, name, 1);
        etcd_client.put(key, value, None).await.expect("put");
    }

    // 1. Rotate; the plugin picks the new keyring up by itself.
    key(&keyring, &["rotate"]);
    let new_key_id = kube_kms::keyring::load(&keyring)
        .expect("load the keyring")
        .keyring
        .primary()
        .map(|version| version.key_id().to_owned())
        .expect("a primary version");
    assert_ne!(new_key_id, old.key_id());
    wait_for_key_id(&mut client, &new_key_id, Duration::from_secs(20)).await;

    // 2. The apiserver sees the new key_id and makes a new seed.
    let new = KmsV2Writer::new(&mut client, PROVIDER).await;
    assert_eq!(new.key_id(), new_key_id);
    for (namespace, name) in AFTER {
        let (key, value) = new.secret(namespace, name, 1);
        etcd_client.put(key, value, None).await.expect("put");
    }

    // Scan with the plugin: its Status gives the current key_id.
    let scan = scan_live(&etcd, &["--verify-with", &socket]);
    assert_eq!(scan.code, 1, "stale values are findings: {}", scan.stderr);
    let summary = &scan.summary;
    assert_eq!(summary["stale"]["current_key_ids"], json!([new_key_id]));
    assert_eq!(summary["stale"]["latest"], BEFORE.len());
    assert_eq!(stale_latest(summary), json!({ old.key_id(): BEFORE.len() }));
    assert_eq!(summary["findings"]["stale-key-id"], BEFORE.len());
    assert_eq!(
        summary["verify"]["verified"]["kms-v2"],
        BEFORE.len() + AFTER.len()
    );
    assert_eq!(summary["verify"]["failed"], json!({}));
    // One Decrypt per distinct DEK source: the two seeds.
    assert_eq!(summary["verify"]["decrypt_calls"], 2);
    assert!(
        scan.stderr.contains(&new_key_id),
        "the plugin's Status key_id is shown: {}",
        scan.stderr
    );

    // 3. The objects to rewrite, exactly, from the plugin or from an id.
    let emit = scan_live(&etcd, &["--verify-with", &socket, "--emit-stale"]);
    let emitted: Vec<&str> = emit.stdout.lines().collect();
    assert_eq!(
        emitted
            .iter()
            .map(|line| line.to_string())
            .collect::<BTreeSet<_>>(),
        names(BEFORE),
        "{}",
        emit.stdout
    );
    assert_eq!(emitted.len(), BEFORE.len(), "each object once");
    let by_id = scan_live(&etcd, &["--current-key-id", &new_key_id, "--emit-stale"]);
    assert_eq!(by_id.stdout, emit.stdout);

    // Rewrite them as `kubectl replace` would: the apiserver seals them
    // again with its current seed.
    for line in &emitted {
        let (namespace, name) = line.split_once('/').expect("namespace/name");
        let (key, value) = new.secret(namespace, name, 2);
        etcd_client.put(key, value, None).await.expect("put");
    }

    // 4. Zero stale; the old revisions remain until compaction.
    let scan = scan_live(&etcd, &["--verify-with", &socket]);
    assert_eq!(scan.code, 0, "{}", scan.summary);
    assert_eq!(scan.summary["stale"]["latest"], 0);
    // Live scans read history by default (issue 14): the old key_id is still
    // listed, with no latest value; latest-only shows no stale key_id at all.
    assert_eq!(stale_latest(&scan.summary), json!({ old.key_id(): 0 }));
    let latest_only = scan_live(&etcd, &["--verify-with", &socket, "--ignore-history"]);
    assert_eq!(stale_latest(&latest_only.summary), json!({}));
    let history = scan_live(&etcd, &["--current-key-id", &new_key_id, "--history"]);
    assert_eq!(
        history.summary["stale"]["key_ids"][old.key_id()],
        json!({"latest": 0, "history": BEFORE.len()})
    );
    // A backup taken now still holds them.
    let old_backup = dir.path().join("before-compaction.db");
    etcd.snapshot_save(&old_backup);

    // 6. Disable the old version; wait until the plugin refuses it.
    key(&keyring, &["disable", &old_version.to_string()]);
    wait_until_refused(&mut client, &old, Duration::from_secs(20)).await;
    wait_for_a_report_to_count(&keyring, old_version).await;

    // 7. Verify every value through the plugin: the latest all verify; the
    // old revisions no longer do, their key being disabled.
    let live = scan_live(&etcd, &["--history", "--verify-with", &socket]);
    let verify = &live.summary["verify"];
    assert_eq!(verify["verified"]["kms-v2"], BEFORE.len() + AFTER.len());
    assert_eq!(verify["failed"], json!({"plugin-refused": BEFORE.len()}));
    let refused: Vec<&Value> = live
        .values
        .iter()
        .filter(|value| value["verify"].is_string())
        .collect();
    assert!(refused
        .iter()
        .all(|value| value["key_id"]["text"] == old.key_id() && value["latest"] == false));
    assert_eq!(refused.len(), BEFORE.len());
    let live_report = save_report(&live, &dir.path().join("live-1.jsonl"));
    let old_backup_scan = etcd_inspect(&[
        "scan",
        "--file",
        &old_backup.display().to_string(),
        "--resources",
        "secrets",
        "--format",
        "json",
    ]);
    let old_backup_report = save_report(&old_backup_scan, &dir.path().join("backup-1.jsonl"));

    // 8. Destroy is refused while a report shows the old key_id in use,
    // naming the report, the counts and the keys.
    for reports in [vec![live_report.as_str()], vec![old_backup_report.as_str()]] {
        let refused = destroy(&keyring, old_version, &reports);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            !refused.status.success(),
            "destroy with {reports:?}: {stderr}"
        );
        assert!(stderr.contains("refusing to destroy"), "{stderr}");
        assert!(stderr.contains(old.key_id()), "{stderr}");
        assert!(stderr.contains(reports[0]), "{stderr}");
        assert!(
            stderr.contains(&format!("0 latest, {} history", BEFORE.len())),
            "{stderr}"
        );
        assert!(stderr.contains("/registry/secrets/"), "{stderr}");
        assert_eq!(state_of(&keyring, old_version), KeyState::Disabled);
    }

    // Compact the old revisions away, take a new backup, scan both again.
    let revision = etcd.revision().await;
    etcd.compact(revision).await;
    let live = scan_live(&etcd, &["--history", "--verify-with", &socket]);
    assert_eq!(live.code, 0, "{}", live.summary);
    assert_eq!(
        live.summary["verify"]["verified"]["kms-v2"],
        BEFORE.len() + AFTER.len()
    );
    assert_eq!(live.summary["verify"]["failed"], json!({}));
    assert_eq!(live.summary["verify"]["decrypt_calls"], 1);
    assert_eq!(live.summary["stale"]["key_ids"], json!({}));
    let live_report = save_report(&live, &dir.path().join("live-2.jsonl"));
    let new_backup = dir.path().join("after-compaction.db");
    etcd.snapshot_save(&new_backup);
    let backup = etcd_inspect(&[
        "scan",
        "--file",
        &new_backup.display().to_string(),
        "--resources",
        "secrets",
        "--verify-with",
        &socket,
        "--format",
        "json",
    ]);
    assert_eq!(backup.code, 0, "{}", backup.summary);
    assert_eq!(
        backup.summary["verify"]["verified"]["kms-v2"],
        BEFORE.len() + AFTER.len()
    );
    let new_backup_report = save_report(&backup, &dir.path().join("backup-2.jsonl"));

    // Keeping the old backup still blocks the destroy.
    let refused = destroy(&keyring, old_version, &[&live_report, &old_backup_report]);
    assert!(!refused.status.success());
    assert_eq!(state_of(&keyring, old_version), KeyState::Disabled);

    // Every report clean and taken after the disable: destroyed.
    let destroyed = destroy(&keyring, old_version, &[&live_report, &new_backup_report]);
    assert!(
        destroyed.status.success(),
        "{}",
        String::from_utf8_lossy(&destroyed.stderr)
    );
    assert_eq!(state_of(&keyring, old_version), KeyState::Destroyed);

    // Nothing was lost: after the plugin reloads, every value still
    // verifies, with no finding.
    let final_scan = scan_live(&etcd, &["--history", "--verify-with", &socket]);
    assert_eq!(final_scan.code, 0, "{}", final_scan.summary);
    assert_eq!(
        final_scan.summary["verify"]["verified"]["kms-v2"],
        BEFORE.len() + AFTER.len()
    );
}

#[test]
fn verify_with_a_dead_socket_exits_2_and_says_so() {
    let dir = temp_dir();
    let socket = dir.path().join("nobody.sock");
    // A socket file nobody listens on, and a path with no file at all.
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind"));
    let etcd = Etcd::start();
    for target in [
        format!("unix://{}", socket.display()),
        format!("unix://{}", dir.path().join("missing.sock").display()),
    ] {
        let run = etcd_inspect(&[
            "scan",
            "--endpoints",
            &etcd.endpoint,
            "--verify-with",
            &target,
            "--format",
            "json",
        ]);
        assert_eq!(run.code, 2, "{target}: {}", run.stderr);
        assert!(run.stderr.contains(&target), "{}", run.stderr);
        assert!(
            run.stderr.contains("is the plugin running"),
            "{}",
            run.stderr
        );
        // No report that could pass for a clean one.
        assert!(run.summary.is_null(), "{}", run.stdout);
    }
}

#[test]
fn emit_stale_needs_a_current_key_id() {
    let etcd = Etcd::start();
    let run = etcd_inspect(&[
        "scan",
        "--endpoints",
        &etcd.endpoint,
        "--resources",
        "secrets",
        "--emit-stale",
    ]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("--emit-stale needs the current key_id"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("--current-key-id"), "{}", run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    // With one, it runs (an empty etcd: nothing to rewrite).
    let run = etcd_inspect(&[
        "scan",
        "--endpoints",
        &etcd.endpoint,
        "--resources",
        "secrets",
        "--current-key-id",
        "some-key",
        "--emit-stale",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
}
