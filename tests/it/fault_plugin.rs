//! Fault injection on `kube-kms serve` (the real binary, a real gRPC client on
//! its unix socket): the plugin is SIGKILLed and restarted while a client
//! keeps calling. The kill leaves the socket file behind; the restart must
//! replace that stale socket, the same client (one tonic channel, as
//! kube-apiserver keeps) must recover once the socket is back, and no call may
//! ever get a wrong answer: every successful Decrypt equals its seed, and the
//! only failures are "cannot reach the plugin" while it is down.
//!
//! (etcd killed during a live scan is covered by
//! `tests/it/inspect_live_cli.rs::etcd_killed_mid_scan_exits_2_never_clean`.)

use crate::common::plugin;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plugin::{init_keyring, seed, temp_dir, ServeProcess};
use rustix::process::Signal;
use tonic::Code;

#[derive(Default)]
struct Tally {
    decrypt_ok: AtomicU64,
    encrypt_ok: AtomicU64,
    unavailable: AtomicU64,
    /// When the last successful call finished.
    last_ok: Mutex<Option<Instant>>,
}

fn transport_failure(error: &kube_kms::client::ClientError) -> bool {
    match error.status() {
        // tonic reports a dead connection as Unavailable, as Unknown when the
        // stream breaks mid-call, and as Cancelled ("operation was canceled",
        // hyper's request canceled) when the connection closes with the
        // request in flight; the plugin itself never answers those to a
        // well-formed request in time.
        Some(status) => matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled
        ),
        None => true,
    }
}

/// Calls Encrypt then Decrypt in a loop on one client until `stop`; returns a
/// description of the first wrong answer, if any.
async fn keep_calling(
    mut client: kube_kms::client::KmsClient,
    known: Arc<Vec<(Vec<u8>, kube_kms::client::Encrypted)>>,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    worker: usize,
) -> Result<(), String> {
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        // Ciphertexts made before any kill, and fresh ones.
        let (plaintext, encrypted) = if n.is_multiple_of(2) {
            let (seed, encrypted) = &known[(n / 2 + worker) % known.len()];
            (seed.clone(), encrypted.clone())
        } else {
            let seed = seed();
            match client.encrypt(&seed, "fault").await {
                Ok(encrypted) => {
                    tally.encrypt_ok.fetch_add(1, Ordering::Relaxed);
                    (seed, encrypted)
                }
                Err(error) if transport_failure(&error) => {
                    tally.unavailable.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                Err(error) => return Err(format!("Encrypt failed: {error}")),
            }
        };
        match client.decrypt_encrypted(&encrypted, "fault").await {
            Ok(opened) => {
                if opened.expose_secret() != plaintext.as_slice() {
                    return Err("Decrypt returned a different plaintext".into());
                }
                tally.decrypt_ok.fetch_add(1, Ordering::Relaxed);
                *tally.last_ok.lock().expect("tally lock") = Some(Instant::now());
            }
            Err(error) if transport_failure(&error) => {
                tally.unavailable.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(error) => return Err(format!("Decrypt failed: {error}")),
        }
    }
    Ok(())
}

/// Five SIGKILL + restart cycles under 4 calling clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_and_restarted_plugin_clients_recover_and_never_get_a_wrong_answer() {
    const CYCLES: usize = 5;
    let dir = temp_dir();
    let keyring = init_keyring(dir.path());
    let mut serve = ServeProcess::start(dir.path(), &keyring, &[]).await;
    let socket = serve.socket.clone();
    let mut setup = serve.client().await;
    let mut known = Vec::new();
    for _ in 0..16 {
        let seed = seed();
        let encrypted = setup.encrypt(&seed, "setup").await.expect("Encrypt");
        known.push((seed, encrypted));
    }
    let known = Arc::new(known);
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..4 {
        workers.spawn(keep_calling(
            serve.client().await,
            Arc::clone(&known),
            Arc::clone(&tally),
            Arc::clone(&stop),
            worker,
        ));
    }
    let mut outages = Vec::new();
    for cycle in 0..CYCLES {
        // Let calls flow, then kill in the middle of them.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = tally.decrypt_ok.load(Ordering::Relaxed);
        assert!(
            before > 0,
            "cycle {cycle}: no call succeeded before the kill"
        );
        serve.signal(Signal::KILL);
        let status = serve.wait_exit(Duration::from_secs(5)).await;
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "cycle {cycle}"
        );
        let killed_at = Instant::now();
        let meta = std::fs::symlink_metadata(&socket).expect("the killed plugin's socket is left");
        assert!(
            std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()),
            "cycle {cycle}: the stale socket should still be there"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let failures_before = tally.unavailable.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            tally.unavailable.load(Ordering::Relaxed) > failures_before,
            "cycle {cycle}: calls do not fail while the plugin is down"
        );
        drop(serve);
        serve = ServeProcess::start(dir.path(), &keyring, &[]).await;
        assert!(
            serve.stderr().contains("stale socket"),
            "cycle {cycle}: the restart did not report replacing the stale socket: {}",
            serve.stderr()
        );
        let back_at = Instant::now();
        let ok_before = tally.decrypt_ok.load(Ordering::Relaxed);
        loop {
            if tally.decrypt_ok.load(Ordering::Relaxed) >= ok_before + 40 {
                break;
            }
            assert!(
                back_at.elapsed() < Duration::from_secs(10),
                "cycle {cycle}: the clients did not recover within 10 s of the restart"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        outages.push((killed_at.elapsed(), back_at.elapsed()));
    }
    stop.store(true, Ordering::Relaxed);
    while let Some(done) = workers.join_next().await {
        done.expect("worker task")
            .unwrap_or_else(|wrong| panic!("a call got a wrong answer: {wrong}"));
    }
    eprintln!(
        "{CYCLES} kill/restart cycles: {} Decrypt ok, {} Encrypt ok, {} calls failed while down; \
         (outage, recovery after restart): {outages:?}",
        tally.decrypt_ok.load(Ordering::Relaxed),
        tally.encrypt_ok.load(Ordering::Relaxed),
        tally.unavailable.load(Ordering::Relaxed),
    );
}
