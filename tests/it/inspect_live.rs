//! The live source (`kube_kms::inspect::source::live`) against a real etcd started by
//! the harness in `tests/it/common/etcd.rs`: fixtures restored with `etcdctl
//! snapshot restore` must read as their `.json` says; paging, the pinned
//! revision, compaction, history, TLS, user auth and failures are checked on
//! etcds written by the tests.

use crate::common;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::etcd::{fixture, kill_pid, Etcd};
use kube_kms::inspect::source::live::{read, LiveError, LiveSource, LiveSummary};
use kube_kms::inspect::{ObservationSink, Observed, Revision};
use kube_kms::secret::SecretBytes;

/// One observation as the sink received it (`value: None` = delete).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    key: Vec<u8>,
    revision: Revision,
    value: Option<Vec<u8>>,
}

/// Records what the live source emits; can act after the n-th observation.
#[derive(Default)]
struct Recorder {
    seen: Vec<Seen>,
    read_errors: Vec<String>,
    after: Option<(usize, Box<dyn FnMut() + Send>)>,
}

impl ObservationSink for Recorder {
    fn observe(&mut self, observed: Observed<'_>) {
        self.seen.push(match observed {
            Observed::Put {
                key,
                revision,
                value,
            } => Seen {
                key: key.to_vec(),
                revision,
                value: Some(value.to_vec()),
            },
            Observed::Delete { key, revision } => Seen {
                key: key.to_vec(),
                revision,
                value: None,
            },
        });
        if let Some((count, action)) = self.after.as_mut() {
            if self.seen.len() == *count {
                action();
            }
        }
    }

    fn read_error(&mut self, message: String) {
        self.read_errors.push(message);
    }
}

impl Recorder {
    /// Latest observation per key (highest revision).
    fn latest(&self) -> BTreeMap<Vec<u8>, Seen> {
        let mut latest: BTreeMap<Vec<u8>, Seen> = BTreeMap::new();
        for seen in &self.seen {
            match latest.get(&seen.key) {
                Some(old) if old.revision >= seen.revision => {}
                _ => {
                    latest.insert(seen.key.clone(), seen.clone());
                }
            }
        }
        latest
    }

    fn assert_unique(&self) {
        let mut pairs = HashSet::new();
        for seen in &self.seen {
            assert!(
                pairs.insert((seen.key.clone(), seen.revision)),
                "{:?} at {:?} emitted twice",
                String::from_utf8_lossy(&seen.key),
                seen.revision
            );
        }
    }
}

fn source(etcd: &Etcd, prefix: &str) -> LiveSource {
    let mut source = LiveSource {
        endpoints: vec![etcd.endpoint.clone()],
        prefix: prefix.as_bytes().to_vec(),
        ..LiveSource::default()
    };
    if let Some(tls) = &etcd.tls {
        source.cacert = Some(tls.ca.clone());
        source.cert = Some(tls.client_cert.clone());
        source.key = Some(tls.client_key.clone());
    }
    source
}

async fn scan_ok(source: &LiveSource) -> (Recorder, LiveSummary) {
    let mut recorder = Recorder::default();
    let summary = read(source, &mut recorder)
        .await
        .unwrap_or_else(|e| panic!("live scan failed: {e}"));
    assert!(
        recorder.read_errors.is_empty(),
        "{:?}",
        recorder.read_errors
    );
    (recorder, summary)
}

/// A varint at `*at` (test data from the fixtures: fails the test on garbage).
fn varint(bytes: &[u8], at: &mut usize) -> u64 {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = bytes[*at];
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return value;
        }
    }
    panic!("varint too long");
}

/// Field 2 (keyID) of a KMS v2 EncryptedObject.
fn kms_v2_key_id(message: &[u8]) -> String {
    let mut at = 0;
    while at < message.len() {
        let tag = varint(message, &mut at);
        match tag & 7 {
            0 => {
                varint(message, &mut at);
            }
            2 => {
                let len = usize::try_from(varint(message, &mut at)).expect("length");
                if tag >> 3 == 2 {
                    return String::from_utf8(message[at..at + len].to_vec()).expect("key id");
                }
                at += len;
            }
            other => panic!("unexpected wire type {other}"),
        }
    }
    panic!("EncryptedObject without keyID")
}

/// The fixtures' provider label of a stored value (see INDEX.md).
fn label(value: &[u8]) -> String {
    let Some(rest) = value.strip_prefix(b"k8s:enc:") else {
        return "identity".to_owned();
    };
    for provider in ["aescbc", "aesgcm", "secretbox"] {
        if rest.starts_with(format!("{provider}:v1:").as_bytes()) {
            return provider.to_owned();
        }
    }
    if rest.starts_with(b"kms:v1:") {
        return "kms-v1".to_owned();
    }
    let kms_v2 = rest.strip_prefix(b"kms:v2:").expect("known provider");
    let colon = kms_v2.iter().position(|&b| b == b':').expect("kms v2 name");
    format!("kms-v2:{}", kms_v2_key_id(&kms_v2[colon + 1..]))
}

/// Counts the fixture `.json` lists per resource: latest by label, deleted
/// keys, plaintext history revisions.
#[derive(Debug, Default, PartialEq, Eq)]
struct Counts {
    latest: BTreeMap<String, u64>,
    deleted: u64,
    history_plaintext: u64,
}

fn counts(recorder: &Recorder, resource: &str) -> Counts {
    let prefix = format!("/registry/{resource}/");
    let latest = recorder.latest();
    let mut counts = Counts::default();
    for (key, seen) in &latest {
        if !key.starts_with(prefix.as_bytes()) {
            continue;
        }
        match &seen.value {
            Some(value) => *counts.latest.entry(label(value)).or_default() += 1,
            None => counts.deleted += 1,
        }
    }
    for seen in &recorder.seen {
        let is_latest = latest.get(&seen.key).map(|l| l.revision) == Some(seen.revision);
        if seen.key.starts_with(prefix.as_bytes()) && !is_latest {
            if let Some(value) = &seen.value {
                if label(value) == "identity" {
                    counts.history_plaintext += 1;
                }
            }
        }
    }
    counts
}

fn expected(json: &serde_json::Value, resource: &str) -> Counts {
    let summary = &json[resource];
    let latest = summary["latest"]
        .as_object()
        .expect("latest counts")
        .iter()
        .map(|(label, count)| (label.clone(), count.as_u64().expect("count")))
        .collect();
    Counts {
        latest,
        deleted: summary["deleted"].as_u64().expect("deleted"),
        history_plaintext: summary["history_plaintext"].as_u64().expect("history"),
    }
}

/// Restores `backup`, scans it live (latest, then history) and compares with
/// the counts of `json`.
async fn check_fixture(backup: &str, json: &str) {
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture(json)).expect("fixture json"))
            .expect("fixture json parses");
    let etcd = Etcd::restore(&fixture(backup));
    // Small pages: the fixtures span several.
    let source = LiveSource {
        page_size: 7,
        ..source(&etcd, "/registry/")
    };
    let (latest, summary) = scan_ok(&source).await;
    assert!(summary.pages > 1, "{backup}: {summary:?}");
    latest.assert_unique();
    assert!(latest.seen.iter().all(|s| s.value.is_some()));
    assert!(latest
        .seen
        .iter()
        .all(|s| s.revision.main <= summary.revision));
    for resource in ["secrets", "configmaps"] {
        let got = counts(&latest, resource);
        let want = expected(&json, resource);
        assert_eq!(got.latest, want.latest, "{backup}: latest {resource}");
    }

    let (history, history_summary) = scan_ok(&LiveSource {
        history: true,
        ..source.clone()
    })
    .await;
    history.assert_unique();
    assert_eq!(history_summary.revision, summary.revision);
    assert_eq!(history_summary.compact_revision, summary.compact_revision);
    for resource in ["secrets", "configmaps"] {
        let got = counts(&history, resource);
        let want = expected(&json, resource);
        // Without compaction etcd serves every revision: all history shows.
        if summary.compact_revision.is_none() {
            assert_eq!(got, want, "{backup}: history {resource}");
        } else {
            assert_eq!(got.latest, want.latest, "{backup}: latest {resource}");
        }
    }
    // The latest of every live key is the same in both scans.
    let live_keys: BTreeMap<_, _> = history
        .latest()
        .into_iter()
        .filter(|(_, seen)| seen.value.is_some())
        .map(|(key, seen)| (key, (seen.revision.main, seen.value)))
        .collect();
    let range_keys: BTreeMap<_, _> = latest
        .latest()
        .into_iter()
        .map(|(key, seen)| (key, (seen.revision.main, seen.value)))
        .collect();
    assert_eq!(live_keys, range_keys, "{backup}: latest values differ");
}

macro_rules! fixture_tests {
    ($($name:ident: $backup:expr, $json:expr;)*) => {$(
        #[tokio::test]
        async fn $name() {
            check_fixture($backup, $json).await;
        }
    )*};
}

fixture_tests! {
    fixture_plaintext_snapshot_matches_json: "plaintext.db", "plaintext.json";
    fixture_plaintext_member_db_matches_json: "plaintext.member.db", "plaintext.json";
    fixture_mixed_snapshot_matches_json: "mixed.db", "mixed.json";
    fixture_mixed_member_db_matches_json: "mixed.member.db", "mixed.json";
    fixture_kmsv2_rotated_snapshot_matches_json: "kmsv2-rotated.db", "kmsv2-rotated.json";
    fixture_kmsv2_rotated_member_db_matches_json: "kmsv2-rotated.member.db", "kmsv2-rotated.json";
    fixture_apiserver_plaintext_matches_json: "apiserver/plaintext.db", "apiserver/plaintext.json";
    fixture_apiserver_kmsv2_rotated_matches_json: "apiserver/kmsv2-rotated.db", "apiserver/kmsv2-rotated.json";
    fixture_apiserver_kmsv2_member_db_matches_json: "apiserver/kmsv2-member.db", "apiserver/kmsv2-rotated.json";
}

fn key(i: usize) -> String {
    format!("/registry/secrets/default/s-{i:04}")
}

#[tokio::test]
async fn pages_are_pinned_to_the_first_revision() {
    let etcd = Etcd::start();
    let mut client = etcd.client().await;
    for i in 0..50 {
        common::etcd::put_with(&mut client, key(i), format!("v{i}")).await;
    }
    let before = etcd.revision().await;
    let endpoint = etcd.endpoint.clone();
    // After the first page: overwrite a later key, add one in the middle
    // and one at the end, delete another. None of it may show.
    let write_during_scan = move || {
        let run = |args: &[&str]| {
            let status = std::process::Command::new(common::etcd::ETCDCTL)
                .env("ETCDCTL_API", "3")
                .arg(format!("--endpoints={endpoint}"))
                .args(args)
                .stdout(std::process::Stdio::null())
                .status()
                .expect("etcdctl");
            assert!(status.success());
        };
        run(&["put", &key(40), "changed"]);
        run(&["put", "/registry/secrets/default/s-0030a", "new"]);
        run(&["put", &key(99), "new"]);
        run(&["del", &key(45)]);
    };
    let mut recorder = Recorder {
        after: Some((1, Box::new(write_during_scan))),
        ..Recorder::default()
    };
    let summary = read(
        &LiveSource {
            page_size: 7,
            ..source(&etcd, "/registry/secrets/")
        },
        &mut recorder,
    )
    .await
    .expect("scan");
    assert_eq!(summary.revision, before);
    assert!(etcd.revision().await > before, "the writes happened");
    assert_eq!(summary.pages, 8, "50 keys in pages of 7");
    assert_eq!(summary.puts, 50);
    let keys: Vec<String> = recorder
        .seen
        .iter()
        .map(|s| String::from_utf8(s.key.clone()).expect("utf8"))
        .collect();
    let want: Vec<String> = (0..50).map(key).collect();
    assert_eq!(keys, want, "every key once, in order, none added");
    for (i, seen) in recorder.seen.iter().enumerate() {
        assert_eq!(seen.value.as_deref(), Some(format!("v{i}").as_bytes()));
        assert!(seen.revision.main <= before);
    }
}

#[tokio::test]
async fn empty_etcd_reads_nothing_without_error() {
    let etcd = Etcd::start();
    let (recorder, summary) = scan_ok(&source(&etcd, "/registry/")).await;
    assert!(recorder.seen.is_empty());
    assert_eq!(summary.revision, 1);
    assert_eq!(summary.compact_revision, None);
    let (recorder, _) = scan_ok(&LiveSource {
        history: true,
        ..source(&etcd, "/registry/")
    })
    .await;
    assert!(recorder.seen.is_empty());
}

#[tokio::test]
async fn prefix_without_match_reads_nothing() {
    let etcd = Etcd::start();
    etcd.put("/registry/secrets/a/b", "x").await;
    etcd.put("/registry/configmaps/a/b", "x").await;
    etcd.put("/kubernetes.io/secrets/a/b", "x").await;
    let (recorder, summary) = scan_ok(&source(&etcd, "/registry/nothing/")).await;
    assert!(recorder.seen.is_empty());
    assert_eq!(summary.revision, 4);
    let (recorder, _) = scan_ok(&source(&etcd, "/kubernetes.io/")).await;
    assert_eq!(recorder.seen.len(), 1);
    let (recorder, _) = scan_ok(&LiveSource {
        history: true,
        ..source(&etcd, "/registry/nothing/")
    })
    .await;
    assert!(recorder.seen.is_empty());
    // Empty prefix: the whole key space.
    let (recorder, _) = scan_ok(&source(&etcd, "")).await;
    assert_eq!(recorder.seen.len(), 3);
}

#[tokio::test]
async fn binary_keys_and_values_round_trip() {
    let etcd = Etcd::start();
    let key = b"/registry/secrets/ns/\xff\x00name".to_vec();
    let value = b"k8s\x00\x0a\x0b\xff\x00".to_vec();
    let revision = etcd.put(key.clone(), value.clone()).await;
    let (recorder, _) = scan_ok(&source(&etcd, "/registry/secrets/")).await;
    assert_eq!(
        recorder.seen,
        vec![Seen {
            key,
            revision: Revision {
                main: revision,
                sub: 0
            },
            value: Some(value)
        }]
    );
}

#[tokio::test]
async fn compaction_revision_and_served_history() {
    let etcd = Etcd::start();
    let a = key(1);
    let b = key(2);
    let c = key(3);
    let a1 = etcd.put(a.clone(), "a1").await; // compacted away
    let a2 = etcd.put(a.clone(), "a2").await; // state at compaction
    let b1 = etcd.put(b.clone(), "b1").await; // state at compaction
    let _gone = etcd.put(c.clone(), "c1").await;
    let c_deleted = etcd.delete(c.clone()).await; // tombstone compacted away
    let other = etcd.put("/other/key", "o").await;
    let (_, summary) = scan_ok(&source(&etcd, "/registry/")).await;
    assert_eq!(summary.compact_revision, None);

    etcd.compact(other).await;
    let a3 = etcd.put(a.clone(), "a3").await;
    let b_deleted = etcd.delete(b.clone()).await;
    let c2 = etcd.put(c.clone(), "c2").await;
    let now = etcd.revision().await;
    assert!(a1 < a2 && c_deleted < other);

    let (latest, summary) = scan_ok(&source(&etcd, "/registry/")).await;
    assert_eq!(summary.compact_revision, Some(other));
    assert_eq!(summary.revision, now);
    let latest_pairs: Vec<_> = latest
        .seen
        .iter()
        .map(|s| {
            (
                String::from_utf8_lossy(&s.key).into_owned(),
                s.revision.main,
            )
        })
        .collect();
    assert_eq!(latest_pairs, vec![(a.clone(), a3), (c.clone(), c2)]);

    let (history, summary) = scan_ok(&LiveSource {
        history: true,
        ..source(&etcd, "/registry/")
    })
    .await;
    history.assert_unique();
    assert_eq!(summary.compact_revision, Some(other));
    let mut pairs: Vec<_> = history
        .seen
        .iter()
        .map(|s| {
            (
                String::from_utf8_lossy(&s.key).into_owned(),
                s.revision.main,
                s.value
                    .as_ref()
                    .map(|v| String::from_utf8_lossy(v).into_owned()),
            )
        })
        .collect();
    pairs.sort();
    let some = |v: &str| Some(v.to_owned());
    assert_eq!(
        pairs,
        vec![
            (a.clone(), a2, some("a2")),
            (a.clone(), a3, some("a3")),
            (b.clone(), b1, some("b1")),
            (b.clone(), b_deleted, None),
            (c.clone(), c2, some("c2")),
        ]
    );
}

#[tokio::test]
async fn history_without_compaction_replays_every_revision_once() {
    let etcd = Etcd::start();
    let mut client = etcd.client().await;
    let mut want = Vec::new();
    for round in 0..3 {
        for i in 0..40 {
            let value = format!("r{round}-{i}");
            let revision = common::etcd::put_with(&mut client, key(i), value.clone()).await;
            want.push((key(i), revision, Some(value)));
        }
    }
    let deleted = etcd.delete(key(7)).await;
    want.push((key(7), deleted, None));
    // Writes outside the prefix are not emitted (but still end the replay).
    etcd.put("/zzz/after", "x").await;
    let (history, summary) = scan_ok(&LiveSource {
        history: true,
        page_size: 3,
        ..source(&etcd, "/registry/secrets/")
    })
    .await;
    history.assert_unique();
    assert_eq!(summary.compact_revision, None);
    assert_eq!(summary.deletes, 1);
    let mut got: Vec<_> = history
        .seen
        .iter()
        .map(|s| {
            (
                String::from_utf8_lossy(&s.key).into_owned(),
                s.revision.main,
                s.value
                    .as_ref()
                    .map(|v| String::from_utf8_lossy(v).into_owned()),
            )
        })
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
}

#[tokio::test]
async fn tls_with_client_certificate_reads() {
    let etcd = Etcd::start_tls();
    etcd.put("/registry/secrets/tls/one", "v").await;
    let (recorder, _) = scan_ok(&source(&etcd, "/registry/")).await;
    assert_eq!(recorder.seen.len(), 1);
    // host:port without a scheme means https when TLS files are given.
    let bare = LiveSource {
        endpoints: vec![etcd.endpoint.trim_start_matches("https://").to_owned()],
        ..source(&etcd, "/registry/")
    };
    let (recorder, _) = scan_ok(&bare).await;
    assert_eq!(recorder.seen.len(), 1);
}

async fn scan_err(source: &LiveSource) -> LiveError {
    let mut recorder = Recorder::default();
    match read(source, &mut recorder).await {
        Ok(summary) => panic!("scan succeeded: {summary:?}"),
        Err(error) => error,
    }
}

#[tokio::test]
async fn tls_without_or_with_a_foreign_client_certificate_fails_clearly() {
    let etcd = Etcd::start_tls();
    let tls = etcd.tls.clone().expect("tls");
    etcd.put("/registry/secrets/tls/one", "v").await;

    let without_cert = LiveSource {
        cert: None,
        key: None,
        ..source(&etcd, "/registry/")
    };
    let error = scan_err(&without_cert).await;
    assert!(matches!(error, LiveError::Unreachable { .. }), "{error}");
    assert!(error.to_string().contains("--cert/--key"), "{error}");

    let foreign = LiveSource {
        cert: Some(tls.rogue_cert.clone()),
        key: Some(tls.rogue_key.clone()),
        ..source(&etcd, "/registry/")
    };
    let error = scan_err(&foreign).await;
    assert!(matches!(error, LiveError::Unreachable { .. }), "{error}");

    let no_ca = LiveSource {
        cacert: None,
        ..source(&etcd, "/registry/")
    };
    let error = scan_err(&no_ca).await;
    assert!(error.to_string().contains("--cacert"), "{error}");

    let plain_http = LiveSource {
        endpoints: vec![etcd.endpoint.replace("https://", "http://")],
        ..source(&etcd, "/registry/")
    };
    let error = scan_err(&plain_http).await;
    assert!(matches!(error, LiveError::Config(_)), "{error}");

    let missing = LiveSource {
        cacert: Some(etcd.dir().join("missing.crt")),
        ..source(&etcd, "/registry/")
    };
    let error = scan_err(&missing).await;
    assert!(matches!(error, LiveError::ReadTlsFile { .. }), "{error}");
}

#[tokio::test]
async fn user_and_password_authentication() {
    let etcd = Etcd::start();
    etcd.put("/registry/secrets/auth/one", "v").await;
    etcd.etcdctl_ok(&["user", "add", "root:root-pw"]);
    etcd.etcdctl_ok(&["auth", "enable"]);
    let with_user = |password: &str| LiveSource {
        user: Some("root".to_owned()),
        password: Some(SecretBytes::copy_from(password.as_bytes())),
        ..source(&etcd, "/registry/")
    };
    let (recorder, _) = scan_ok(&with_user("root-pw")).await;
    assert_eq!(recorder.seen.len(), 1);
    let (recorder, _) = scan_ok(&LiveSource {
        history: true,
        ..with_user("root-pw")
    })
    .await;
    assert_eq!(recorder.seen.len(), 1);

    let error = scan_err(&with_user("wrong")).await;
    assert!(matches!(error, LiveError::Auth { .. }), "{error}");
    assert!(error.to_string().contains("--user/--password"), "{error}");
    let error = scan_err(&source(&etcd, "/registry/")).await;
    assert!(matches!(error, LiveError::Auth { .. }), "{error}");
}

#[tokio::test]
async fn dead_endpoint_fails_within_seconds() {
    let port = common::etcd::free_port();
    let started = Instant::now();
    let error = scan_err(&LiveSource {
        endpoints: vec![format!("http://127.0.0.1:{port}")],
        prefix: b"/registry/".to_vec(),
        ..LiveSource::default()
    })
    .await;
    assert!(matches!(error, LiveError::Unreachable { .. }), "{error}");
    assert!(error.to_string().contains("check --endpoints"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(8));
}

#[tokio::test]
async fn endpoint_that_never_answers_fails_within_seconds() {
    // Accepts TCP connections and never speaks: a hung etcd.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let started = Instant::now();
    let error = scan_err(&LiveSource {
        endpoints: vec![format!("http://127.0.0.1:{port}")],
        prefix: b"/registry/".to_vec(),
        ..LiveSource::default()
    })
    .await;
    drop(listener);
    assert!(matches!(error, LiveError::Unreachable { .. }), "{error}");
    assert!(started.elapsed() < Duration::from_secs(8));
}

#[tokio::test]
async fn etcd_killed_mid_scan_is_an_error() {
    let mut etcd = Etcd::start();
    let mut client = etcd.client().await;
    for i in 0..100 {
        common::etcd::put_with(&mut client, key(i), "v").await;
    }
    let pid = etcd.pid().expect("running");
    let mut recorder = Recorder {
        after: Some((5, Box::new(move || kill_pid(pid)))),
        ..Recorder::default()
    };
    let started = Instant::now();
    let result = read(
        &LiveSource {
            page_size: 10,
            ..source(&etcd, "/registry/")
        },
        &mut recorder,
    )
    .await;
    let error = result.expect_err("a scan whose etcd died must fail");
    assert!(
        matches!(
            error,
            LiveError::ConnectionLost { .. } | LiveError::Timeout { .. }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("incomplete"), "{error}");
    assert!(recorder.seen.len() < 100);
    assert!(started.elapsed() < Duration::from_secs(25));
    etcd.kill();
}

#[tokio::test]
async fn compaction_past_the_pinned_revision_mid_scan_is_an_error() {
    let etcd = Etcd::start();
    let mut client = etcd.client().await;
    for i in 0..30 {
        common::etcd::put_with(&mut client, key(i), "v").await;
    }
    let endpoint = etcd.endpoint.clone();
    let compact_ahead = move || {
        let run = |args: &[&str]| {
            let output = std::process::Command::new(common::etcd::ETCDCTL)
                .env("ETCDCTL_API", "3")
                .arg(format!("--endpoints={endpoint}"))
                .args(args)
                .output()
                .expect("etcdctl");
            assert!(output.status.success(), "{output:?}");
            String::from_utf8(output.stdout).expect("utf8")
        };
        run(&["put", "/other", "x"]);
        let status = run(&["endpoint", "status", "-w", "json"]);
        let json: serde_json::Value = serde_json::from_str(&status).expect("json");
        let revision = json[0]["Status"]["header"]["revision"]
            .as_i64()
            .expect("revision");
        run(&["compact", &revision.to_string(), "--physical"]);
    };
    let mut recorder = Recorder {
        after: Some((1, Box::new(compact_ahead))),
        ..Recorder::default()
    };
    let error = read(
        &LiveSource {
            page_size: 5,
            ..source(&etcd, "/registry/")
        },
        &mut recorder,
    )
    .await
    .expect_err("pages past a compaction cannot be read");
    assert!(matches!(error, LiveError::Compacted { .. }), "{error}");
}

#[tokio::test]
async fn config_errors_say_what_to_fix() {
    let error = scan_err(&LiveSource::default()).await;
    assert!(error.to_string().contains("--endpoints"), "{error}");
    let error = scan_err(&LiveSource {
        endpoints: vec!["http://127.0.0.1:1".to_owned()],
        cert: Some(Path::new("/nonexistent").to_owned()),
        ..LiveSource::default()
    })
    .await;
    assert!(error.to_string().contains("--cert needs --key"), "{error}");
    let error = scan_err(&LiveSource {
        endpoints: vec!["http://127.0.0.1:1".to_owned()],
        user: Some("root".to_owned()),
        ..LiveSource::default()
    })
    .await;
    assert!(error.to_string().contains("--password"), "{error}");
}

#[tokio::test]
async fn pages_too_large_for_one_response_are_split() {
    let etcd = Etcd::start();
    let mut client = etcd.client().await;
    // 12 values of 1 MB: more than one response may carry (8 MiB).
    for i in 0..12u8 {
        let value = vec![i; 1 << 20];
        common::etcd::put_with(&mut client, key(usize::from(i)), value).await;
    }
    let (recorder, summary) = scan_ok(&source(&etcd, "/registry/secrets/")).await;
    assert_eq!(recorder.seen.len(), 12);
    for (i, seen) in recorder.seen.iter().enumerate() {
        assert_eq!(seen.key, key(i).into_bytes());
        let value = seen.value.as_deref().expect("put");
        assert_eq!(value.len(), 1 << 20);
        assert!(value.iter().all(|&b| usize::from(b) == i));
    }
    assert!(summary.pages >= 2, "{summary:?}");
}
