//! The real `kube-kms serve` binary as a child process: signals (SIGHUP
//! reload, SIGTERM/SIGINT graceful shutdown), flags, and secret hygiene of
//! its logs at trace level. Also `kube-kms demo` end to end.
use crate::common::plugin;

use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use plugin::{init_keyring, key, seed, temp_dir, wait_for_key_id, ServeProcess, KUBE_KMS};
use rustix::process::Signal;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_keyring() {
    let dir = temp_dir();
    let keyring = init_keyring(dir.path());
    // File polling off: only SIGHUP can bring in the rotation.
    let serve = ServeProcess::start(dir.path(), &keyring, &["--reload-poll-interval", "0s"]).await;
    let mut client = serve.client().await;
    let old_key_id = client.status().await.unwrap().key_id;
    plugin::rotate(&keyring);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        client.status().await.unwrap().key_id,
        old_key_id,
        "reloaded without SIGHUP"
    );

    serve.signal(Signal::HUP);
    let started = std::time::Instant::now();
    loop {
        let key_id = client.status().await.unwrap().key_id;
        if key_id != old_key_id {
            assert_eq!(
                client.encrypt(&seed(), "after").await.unwrap().key_id,
                key_id
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "SIGHUP did not reload"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        serve.stderr().contains("keyring reloaded"),
        "{}",
        serve.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_calls_removes_the_socket_and_exits_zero() {
    for signal in [Signal::TERM, Signal::INT] {
        let dir = temp_dir();
        let keyring = init_keyring(dir.path());
        let mut serve = ServeProcess::start(dir.path(), &keyring, &[]).await;
        let socket = serve.socket.clone();
        // Calls racing the signal either complete or are refused; none hang.
        let mut calls = Vec::new();
        for index in 0..32 {
            let socket = socket.clone();
            calls.push(tokio::spawn(async move {
                let mut client = kube_kms::client::KmsClient::connect_path(&socket)
                    .await
                    .ok()?;
                let seed = seed();
                let encrypted = client.encrypt(&seed, &format!("t{index}")).await.ok()?;
                Some(encrypted.key_id)
            }));
        }
        serve.signal(signal);
        let status = serve.wait_exit(Duration::from_secs(10)).await;
        assert_eq!(status.code(), Some(0), "{}", serve.stderr());
        assert!(!socket.exists(), "socket left behind");
        for call in calls {
            tokio::time::timeout(Duration::from_secs(5), call)
                .await
                .expect("a call hung after shutdown")
                .unwrap();
        }
        assert!(serve.stderr().contains("stopped"), "{}", serve.stderr());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_readable_keyring_is_refused_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir();
    let keyring = init_keyring(dir.path());
    std::fs::set_permissions(&keyring, std::fs::Permissions::from_mode(0o640)).unwrap();
    let output = Command::new(KUBE_KMS)
        .args(["serve", "--keyring"])
        .arg(&keyring)
        .arg("--socket")
        .arg(dir.path().join("kms.sock"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("0600") || stderr.contains("chmod"),
        "{stderr}"
    );
    assert!(!dir.path().join("kms.sock").exists());
}

#[test]
fn a_metrics_address_in_use_fails_clearly_and_leaves_no_socket() {
    let dir = temp_dir();
    let keyring = init_keyring(dir.path());
    let socket = dir.path().join("kms.sock");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let output = Command::new(KUBE_KMS)
        .args(["serve", "--metrics-addr", &address, "--keyring"])
        .arg(&keyring)
        .arg("--socket")
        .arg(&socket)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on --metrics-addr {address}")),
        "{stderr}"
    );
    assert!(!socket.exists(), "a failed start must not leave its socket");
}

/// Every spelling of `secret` a log line could carry.
fn encodings(secret: &[u8]) -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let hex: String = secret.iter().map(|byte| format!("{byte:02x}")).collect();
    let mut spellings = vec![hex.to_uppercase(), hex];
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        spellings.push(engine.encode(secret));
    }
    // Rust's `{:?}` of a byte slice: "[1, 2, 3"
    let debug = format!("{secret:?}");
    spellings.push(debug.trim_end_matches(']').to_owned());
    spellings
}

fn assert_absent(log: &str, secret: &[u8], what: &str) {
    assert!(
        !log.as_bytes()
            .windows(secret.len())
            .any(|window| window == secret),
        "{what} appears raw in the log"
    );
    for spelling in encodings(secret) {
        assert!(
            !log.contains(&spelling),
            "{what} appears in the log as {spelling}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_material_or_plaintext_in_trace_logs() {
    let dir = temp_dir();
    let keyring = init_keyring(dir.path());
    let mut seeds = Vec::new();
    let mut serve = ServeProcess::start(
        dir.path(),
        &keyring,
        &["--log-level", "trace", "--self-test-interval", "200ms"],
    )
    .await;
    let mut client = serve.client().await;
    let first_key_id = client.status().await.unwrap().key_id;
    let mut wrapped = Vec::new();
    for index in 0..8 {
        let seed = seed();
        let encrypted = client
            .encrypt(&seed, &format!("before-{index}"))
            .await
            .unwrap();
        let plaintext = client.decrypt_encrypted(&encrypted, "d").await.unwrap();
        assert_eq!(plaintext.expose_secret(), &seed[..]);
        seeds.push(seed);
        wrapped.push(encrypted);
    }
    // Failures log their detail: make some.
    let mut tampered = wrapped[0].clone();
    tampered.ciphertext[5] ^= 0x40;
    assert!(client
        .decrypt_encrypted(&tampered, "tampered")
        .await
        .is_err());

    key(&keyring, &["rotate"]);
    let second_key_id = loop {
        let key_id = client.status().await.unwrap().key_id;
        if key_id != first_key_id {
            break key_id;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    key(&keyring, &["rotate"]);
    serve.signal(Signal::HUP);
    let third = loop {
        let key_id = client.status().await.unwrap().key_id;
        if key_id != second_key_id {
            break key_id;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    wait_for_key_id(&mut client, &third, Duration::from_secs(5)).await;
    for (index, encrypted) in wrapped.iter().enumerate() {
        let plaintext = client.decrypt_encrypted(encrypted, "after").await.unwrap();
        assert_eq!(plaintext.expose_secret(), &seeds[index][..]);
        let seed = seed();
        let fresh = client
            .encrypt(&seed, &format!("after-{index}"))
            .await
            .unwrap();
        assert_eq!(fresh.key_id, third);
        client.decrypt_encrypted(&fresh, "after").await.unwrap();
        seeds.push(seed);
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // a few self-tests
    serve.signal(Signal::TERM);
    assert_eq!(
        serve.wait_exit(Duration::from_secs(10)).await.code(),
        Some(0)
    );

    let log = serve.stderr();
    // The session really logged at trace: per-call lines, reloads, self-tests.
    assert!(log.contains("Decrypt") && log.contains("Encrypt"), "{log}");
    assert!(log.contains("keyring reloaded"), "{log}");
    assert!(log.contains("call failed"), "{log}");

    let loaded = kube_kms::keyring::load(&keyring).expect("load the keyring");
    let mut keys = 0;
    for version in loaded.keyring.versions() {
        if let Some(material) = version.material() {
            assert_absent(&log, material.expose_secret(), "key material");
            keys += 1;
        }
    }
    assert_eq!(keys, 3);
    for seed in &seeds {
        assert_absent(&log, seed, "a seed");
    }
}

#[test]
fn the_demo_runs_end_to_end() {
    let output = Command::new(KUBE_KMS).arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("key_id"), "{stdout}");
    assert!(stdout.contains("rotated"), "{stdout}");
    assert!(stdout.contains("removed"), "{stdout}");
}

/// Threads named `kube-kms` in the process (the runtime's workers).
fn worker_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("list the plugin's threads")
        .filter_map(|task| {
            let comm = std::fs::read_to_string(task.ok()?.path().join("comm")).ok()?;
            (comm.trim() == "kube-kms").then_some(())
        })
        .count()
}

/// The default runtime (one thread per CPU), `--threads 3` and the single
/// thread of `--threads 1` all serve 64 concurrent clients correctly;
/// `--threads 3` really runs 3 workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_runtime_flavour_serves_concurrent_clients() {
    for threads in [None, Some("3"), Some("1")] {
        let dir = temp_dir();
        let keyring = init_keyring(dir.path());
        let extra: Vec<&str> = threads.map(|n| vec!["--threads", n]).unwrap_or_default();
        let mut serve = ServeProcess::start(dir.path(), &keyring, &extra).await;
        if threads == Some("3") {
            // The main thread keeps the binary's name too: workers are the rest.
            assert!(
                worker_threads(serve.pid()) >= 4,
                "--threads 3 did not start 3 workers"
            );
        }
        let mut calls = Vec::new();
        for index in 0..64 {
            let socket = serve.socket.clone();
            calls.push(tokio::spawn(async move {
                let mut client = kube_kms::client::KmsClient::connect_path(&socket)
                    .await
                    .expect("connect");
                let seed: Vec<u8> = (0..32).map(|byte| byte ^ index as u8).collect();
                for _ in 0..10 {
                    let wrapped = client.encrypt(&seed, "c").await.expect("encrypt");
                    let opened = client
                        .decrypt_encrypted(&wrapped, "c")
                        .await
                        .expect("decrypt");
                    assert_eq!(opened.expose_secret(), &seed[..]);
                }
            }));
        }
        for call in calls {
            call.await.expect("client task");
        }
        serve.signal(Signal::TERM);
        let status = serve.wait_exit(Duration::from_secs(10)).await;
        assert_eq!(status.code(), Some(0), "{threads:?}: {}", serve.stderr());
    }
}
