//! The plugin server through its real unix socket with the real client and
//! the real file keyring (managed with the real `kube-kms key` binary); the
//! server runs in the test process so its counters can be checked.
use crate::common::plugin;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use kube_kms::client::KmsClient;
use kube_kms::server::service::{MAX_DECRYPT_CIPHERTEXT, MAX_ENCRYPT_PLAINTEXT};
use kube_kms::server::{SocketAddress, SocketError, SocketListener, DEFAULT_SOCKET_MODE};
use plugin::{init_keyring, key, rotate, seed, temp_dir, wait_for_key_id, InProcess};
use tonic::Code;

const RELOAD_LIMIT: Duration = Duration::from_secs(5);

fn code(error: &kube_kms::client::ClientError) -> Code {
    error
        .status()
        .map(|status| status.code())
        .unwrap_or(Code::Unknown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_v2_ok_and_the_primary_key_id() {
    let dir = temp_dir();
    let keyring = init_keyring(dir.path());
    let server = InProcess::start(dir.path(), &keyring).await;
    let mut client = server.client().await;

    let status = client.status().await.unwrap();
    assert_eq!(status.version, "v2");
    assert_eq!(status.healthz, "ok");
    assert!(!status.key_id.is_empty() && status.key_id.len() <= 1024);
    let listed = key(&keyring, &["list", "--format", "json"]);
    assert!(
        listed.contains(&status.key_id),
        "{} not in {listed}",
        status.key_id
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypt_then_decrypt_returns_the_seed() {
    let dir = temp_dir();
    let keyring = init_keyring(dir.path());
    let server = InProcess::start(dir.path(), &keyring).await;
    let mut client = server.client().await;
    let status = client.status().await.unwrap();

    let seed = seed();
    let first = client.encrypt(&seed, "uid-1").await.unwrap();
    let second = client.encrypt(&seed, "uid-2").await.unwrap();
    assert_eq!(first.key_id, status.key_id);
    assert!(!first.ciphertext.is_empty() && first.ciphertext.len() <= 1024);
    assert_ne!(
        first.ciphertext, second.ciphertext,
        "encryption must be randomized"
    );
    for annotation in first.annotations.keys() {
        assert!(
            annotation.contains('.'),
            "annotation key {annotation} is not an FQDN"
        );
    }
    for encrypted in [&first, &second] {
        let plaintext = client.decrypt_encrypted(encrypted, "uid-3").await.unwrap();
        assert_eq!(plaintext.expose_secret(), &seed[..]);
    }
    let stats = server.stats.snapshot();
    assert_eq!(stats.ok(kube_kms::server::Method::Encrypt), 2);
    assert_eq!(stats.ok(kube_kms::server::Method::Decrypt), 2);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_old_ciphertexts_and_disable_enable_gate_them() {
    let dir = temp_dir();
    let keyring = init_keyring(dir.path());
    let server = InProcess::start(dir.path(), &keyring).await;
    let mut client = server.client().await;
    let old_key_id = client.status().await.unwrap().key_id;
    let seed = seed();
    let before = client.encrypt(&seed, "before").await.unwrap();
    assert!(
        old_key_id.starts_with("kk-v1-"),
        "{old_key_id}: version 1 expected"
    );

    key(&keyring, &["rotate"]);
    let new_key_id = wait_for_new_key_id(&mut client, &old_key_id).await;
    let after = client.encrypt(&seed, "after").await.unwrap();
    assert_eq!(after.key_id, new_key_id);
    for encrypted in [&before, &after] {
        let plaintext = client.decrypt_encrypted(encrypted, "rt").await.unwrap();
        assert_eq!(plaintext.expose_secret(), &seed[..]);
    }

    // Disable the old version: its ciphertexts stop decrypting once reloaded.
    key(&keyring, &["disable", "1"]);
    let refused = wait_until(|| {
        let mut client = client.clone();
        let before = &before;
        async move { client.decrypt_encrypted(before, "d").await.err() }
    })
    .await;
    assert_eq!(code(&refused), Code::FailedPrecondition, "{refused}");
    assert_eq!(
        client
            .decrypt_encrypted(&after, "d")
            .await
            .unwrap()
            .expose_secret(),
        &seed[..]
    );
    assert!(server.stats.snapshot().decrypt_failures_for("key_disabled") >= 1);

    key(&keyring, &["enable", "1"]);
    let plaintext = wait_until(|| {
        let mut client = client.clone();
        let before = &before;
        async move { client.decrypt_encrypted(before, "e").await.ok() }
    })
    .await;
    assert_eq!(plaintext.expose_secret(), &seed[..]);
    server.stop().await.unwrap();
}

/// Polls Status until its key_id differs from `old`.
async fn wait_for_new_key_id(client: &mut KmsClient, old: &str) -> String {
    let started = std::time::Instant::now();
    loop {
        let key_id = client.status().await.unwrap().key_id;
        if key_id != old {
            return key_id;
        }
        assert!(started.elapsed() < RELOAD_LIMIT, "key_id still {old}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Retries `attempt` until it yields a value (panics after RELOAD_LIMIT).
async fn wait_until<T, F, Fut>(mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = std::time::Instant::now();
    loop {
        if let Some(value) = attempt().await {
            return value;
        }
        assert!(
            started.elapsed() < RELOAD_LIMIT,
            "condition not reached in time"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_keyring_file_shows_its_key_id_within_two_seconds() {
    let dir = temp_dir();
    let keyring = init_keyring(dir.path());
    let server = InProcess::start(dir.path(), &keyring).await;
    let mut client = server.client().await;
    let old_key_id = client.status().await.unwrap().key_id;
    let seed = seed();
    let before = client.encrypt(&seed, "before").await.unwrap();

    // An operator's replace: rotate a copy, then rename it over the original.
    let staged = dir.path().join("staged.json");
    std::fs::copy(&keyring, &staged).unwrap();
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600)).unwrap();
    rotate(&staged);
    std::fs::rename(&staged, &keyring).unwrap();

    let new_key_id = wait_for_new_key_id(&mut client, &old_key_id).await;
    assert!(server.stats.snapshot().reloads_ok >= 1);
    let waited = wait_for_key_id(&mut client, &new_key_id, RELOAD_LIMIT).await;
    assert!(waited < Duration::from_secs(2));
    assert_eq!(
        client.encrypt(&seed, "after").await.unwrap().key_id,
        new_key_id
    );
    let plaintext = client.decrypt_encrypted(&before, "old").await.unwrap();
    assert_eq!(plaintext.expose_secret(), &seed[..]);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_keyring_file_is_rejected_and_the_old_keys_keep_serving() {
    let dir = temp_dir();
    let keyring = init_keyring(dir.path());
    let good = std::fs::read(&keyring).unwrap();
    let server = InProcess::start(dir.path(), &keyring).await;
    let mut client = server.client().await;
    let key_id = client.status().await.unwrap().key_id;
    let seed = seed();
    let before = client.encrypt(&seed, "before").await.unwrap();

    for broken in [&b"{ not json"[..], &good[..good.len() / 2], b""] {
        let staged = dir.path().join("broken.json");
        std::fs::write(&staged, broken).unwrap();
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::rename(&staged, &keyring).unwrap();
        let failures = server.stats.snapshot().reloads_failed;
        wait_until(|| {
            let stats = server.stats.snapshot();
            async move { (stats.reloads_failed > failures).then_some(()) }
        })
        .await;
        let status = client.status().await.unwrap();
        assert_eq!(
            (status.key_id.as_str(), status.healthz.as_str()),
            (&*key_id, "ok")
        );
        let encrypted = client.encrypt(&seed, "during").await.unwrap();
        assert_eq!(encrypted.key_id, key_id);
        let plaintext = client.decrypt_encrypted(&before, "during").await.unwrap();
        assert_eq!(plaintext.expose_secret(), &seed[..]);
    }

    // A fixed file is picked up again.
    let staged = dir.path().join("fixed.json");
    std::fs::write(&staged, &good).unwrap();
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600)).unwrap();
    rotate(&staged);
    std::fs::rename(&staged, &keyring).unwrap();
    wait_for_new_key_id(&mut client, &key_id).await;
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_or_truncated_ciphertexts_are_rejected_and_the_server_stays_healthy() {
    let dir = temp_dir();
    let keyring = init_keyring(dir.path());
    let server = InProcess::start(dir.path(), &keyring).await;
    let mut client = server.client().await;
    let seed = seed();
    let good = client.encrypt(&seed, "good").await.unwrap();
    let none = HashMap::new();

    let mut rejected = 0u64;
    for bit in 0..good.ciphertext.len() * 8 {
        let mut flipped = good.ciphertext.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        let error = client
            .decrypt(&flipped, &good.key_id, &good.annotations, "flip")
            .await
            .expect_err("a flipped bit must be rejected");
        assert_eq!(code(&error), Code::InvalidArgument, "bit {bit}: {error}");
        assert_eq!(error.status().unwrap().message(), "decryption failed");
        rejected += 1;
    }
    for length in 0..good.ciphertext.len() {
        let error = client
            .decrypt(&good.ciphertext[..length], &good.key_id, &none, "cut")
            .await
            .expect_err("a truncation must be rejected");
        assert_eq!(
            code(&error),
            Code::InvalidArgument,
            "length {length}: {error}"
        );
        rejected += 1;
    }
    // Extended, and bound to another key_id.
    let mut extended = good.ciphertext.clone();
    extended.push(0);
    assert!(client
        .decrypt(&extended, &good.key_id, &none, "x")
        .await
        .is_err());
    rejected += 1;

    assert_eq!(
        server
            .stats
            .snapshot()
            .decrypt_failures_for("authentication_failed"),
        rejected
    );
    let status = client.status().await.unwrap();
    assert_eq!(status.healthz, "ok");
    let plaintext = client.decrypt_encrypted(&good, "good").await.unwrap();
    assert_eq!(plaintext.expose_secret(), &seed[..]);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ciphertext_presented_under_another_key_id_is_rejected() {
    let dir = temp_dir();
    let keyring = init_keyring(dir.path());
    let server = InProcess::start(dir.path(), &keyring).await;
    let mut client = server.client().await;
    let old = client.encrypt(&seed(), "old").await.unwrap();
    rotate(&keyring);
    let new_key_id = wait_for_new_key_id(&mut client, &old.key_id).await;
    let error = client
        .decrypt(&old.ciphertext, &new_key_id, &old.annotations, "swap")
        .await
        .unwrap_err();
    assert_eq!(code(&error), Code::InvalidArgument, "{error}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_key_id_is_rejected_and_counted() {
    let dir = temp_dir();
    let keyring = init_keyring(dir.path());
    let server = InProcess::start(dir.path(), &keyring).await;
    let mut client = server.client().await;
    let good = client.encrypt(&seed(), "good").await.unwrap();
    for unknown in [
        "kk-v99-0000000000000000",
        "",
        "not a key id",
        &"x".repeat(1024),
    ] {
        let error = client
            .decrypt(&good.ciphertext, unknown, &good.annotations, "unknown")
            .await
            .unwrap_err();
        assert_eq!(code(&error), Code::NotFound, "{unknown:?}: {error}");
        assert!(!error.to_string().contains(&hex(&good.ciphertext)));
    }
    assert_eq!(
        server
            .stats
            .snapshot()
            .decrypt_failures_for("unknown_key_id"),
        4
    );
    assert_eq!(client.status().await.unwrap().healthz, "ok");
    server.stop().await.unwrap();
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_are_rejected_without_harm() {
    let dir = temp_dir();
    let keyring = init_keyring(dir.path());
    let server = InProcess::start(dir.path(), &keyring).await;
    let mut client = server.client().await;
    let none = HashMap::new();

    let largest = vec![7u8; MAX_ENCRYPT_PLAINTEXT];
    let encrypted = client.encrypt(&largest, "largest").await.unwrap();
    assert!(
        encrypted.ciphertext.len() <= 1024,
        "{}",
        encrypted.ciphertext.len()
    );

    let error = client
        .encrypt(&vec![7u8; MAX_ENCRYPT_PLAINTEXT + 1], "big")
        .await
        .unwrap_err();
    assert_eq!(code(&error), Code::InvalidArgument, "{error}");
    let error = client
        .encrypt(&vec![7u8; 1 << 20], "huge")
        .await
        .unwrap_err();
    assert!(
        matches!(
            code(&error),
            Code::ResourceExhausted | Code::OutOfRange | Code::InvalidArgument
        ),
        "{error}"
    );
    let error = client
        .decrypt(
            &vec![1u8; MAX_DECRYPT_CIPHERTEXT + 1],
            &encrypted.key_id,
            &none,
            "big",
        )
        .await
        .unwrap_err();
    assert_eq!(code(&error), Code::InvalidArgument, "{error}");
    let error = client
        .decrypt(
            &encrypted.ciphertext,
            &"k".repeat(1025),
            &none,
            "long key id",
        )
        .await
        .unwrap_err();
    assert_eq!(code(&error), Code::InvalidArgument, "{error}");
    assert_eq!(
        server
            .stats
            .snapshot()
            .decrypt_failures_for("request_too_large"),
        2
    );

    let plaintext = client.decrypt_encrypted(&encrypted, "ok").await.unwrap();
    assert_eq!(plaintext.expose_secret(), &largest[..]);
    assert_eq!(client.status().await.unwrap().healthz, "ok");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_clients_round_trip() {
    let dir = temp_dir();
    let keyring = init_keyring(dir.path());
    let server = InProcess::start(dir.path(), &keyring).await;
    let mut tasks = Vec::new();
    for client_index in 0..64 {
        let socket = server.socket.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = KmsClient::connect_path(&socket).await.unwrap();
            for call in 0..25 {
                let seed = seed();
                let uid = format!("c{client_index}-{call}");
                let encrypted = client.encrypt(&seed, &uid).await.unwrap();
                let plaintext = client.decrypt_encrypted(&encrypted, &uid).await.unwrap();
                assert_eq!(plaintext.expose_secret(), &seed[..]);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let stats = server.stats.snapshot();
    assert_eq!(stats.ok(kube_kms::server::Method::Encrypt), 64 * 25);
    assert_eq!(stats.ok(kube_kms::server::Method::Decrypt), 64 * 25);
    assert_eq!(stats.failed(kube_kms::server::Method::Decrypt), 0);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_encrypt_agree_on_the_key_id_across_rotations_under_load() {
    let dir = temp_dir();
    let keyring = init_keyring(dir.path());
    let server = InProcess::start(dir.path(), &keyring).await;
    let mut watcher = server.client().await;
    let first = watcher.status().await.unwrap().key_id;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let mut workers = Vec::new();
    for worker in 0..16 {
        let socket = server.socket.clone();
        let done = Arc::clone(&done);
        workers.push(tokio::spawn(async move {
            let mut client = KmsClient::connect_path(&socket).await.unwrap();
            // key_ids in the order this worker saw them; must never go back.
            let mut seen: Vec<String> = Vec::new();
            let mut agreed_after_settling = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let status = client.status().await.unwrap();
                let seed = seed();
                let encrypted = client.encrypt(&seed, &format!("w{worker}")).await.unwrap();
                for key_id in [&status.key_id, &encrypted.key_id] {
                    if seen.last() != Some(key_id) {
                        assert!(
                            !seen.contains(key_id),
                            "worker {worker}: key_id went back to {key_id}"
                        );
                        seen.push(key_id.clone());
                    }
                }
                if status.key_id == encrypted.key_id {
                    agreed_after_settling += 1;
                }
                // The key_id Encrypt reports is the key that wrapped.
                let plaintext = client.decrypt_encrypted(&encrypted, "check").await.unwrap();
                assert_eq!(plaintext.expose_secret(), &seed[..]);
            }
            (seen, agreed_after_settling)
        }));
    }

    let mut current = first;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        rotate(&keyring);
        current = wait_for_new_key_id(&mut watcher, &current).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    for worker in workers {
        let (seen, agreed) = worker.await.unwrap();
        assert_eq!(seen.last(), Some(&current));
        assert!(agreed > 0);
    }
    // Settled: every Status/Encrypt pair agrees.
    let mut client = server.client().await;
    for _ in 0..50 {
        let status = client.status().await.unwrap();
        let encrypted = client.encrypt(&seed(), "settled").await.unwrap();
        assert_eq!(status.key_id, encrypted.key_id);
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_is_created_with_mode_0600_and_removed_on_stop() {
    let dir = temp_dir();
    let keyring = init_keyring(dir.path());
    let server = InProcess::start(dir.path(), &keyring).await;
    let socket = server.socket.clone();
    let mode = std::fs::symlink_metadata(&socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    // No staging directory is left beside it.
    let entries: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        entries.iter().all(|name| !name.starts_with(".kube-kms")),
        "{entries:?}"
    );
    server.stop().await.unwrap();
    assert!(!socket.exists(), "the socket must be removed on shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requested_socket_mode_is_applied() {
    let dir = temp_dir();
    let socket = dir.path().join("g.sock");
    let listener = SocketListener::bind(&SocketAddress::Path(socket.clone()), 0o660).unwrap();
    let mode = std::fs::symlink_metadata(&socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660);
    drop(listener);
    assert!(matches!(
        SocketListener::bind(&SocketAddress::Path(socket), 0o1777),
        Err(SocketError::BadMode(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_is_replaced() {
    let dir = temp_dir();
    let keyring = init_keyring(dir.path());
    let socket = dir.path().join("kms.sock");
    // What a crash leaves: the socket file with nobody listening.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let server = InProcess::start(dir.path(), &keyring).await;
    let mut client = server.client().await;
    assert_eq!(client.status().await.unwrap().healthz, "ok");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_socket_is_refused() {
    let dir = temp_dir();
    let keyring = init_keyring(dir.path());
    let server = InProcess::start(dir.path(), &keyring).await;
    let error = SocketListener::bind(
        &SocketAddress::Path(server.socket.clone()),
        DEFAULT_SOCKET_MODE,
    )
    .unwrap_err();
    assert!(matches!(error, SocketError::InUse(_)));
    assert_eq!(
        error.to_string(),
        format!(
            "another kube-kms is serving on {}: stop it first or choose another --socket",
            server.socket.display()
        )
    );
    // The first server is untouched.
    let mut client = server.client().await;
    assert_eq!(client.status().await.unwrap().version, "v2");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_files_at_the_socket_path_are_refused_and_kept() {
    let dir = temp_dir();
    let regular = dir.path().join("file.sock");
    std::fs::write(&regular, b"precious").unwrap();
    let error = SocketListener::bind(&SocketAddress::Path(regular.clone()), DEFAULT_SOCKET_MODE)
        .unwrap_err();
    assert!(
        matches!(
            error,
            SocketError::NotASocket {
                kind: "regular file",
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(std::fs::read(&regular).unwrap(), b"precious");

    let directory = dir.path().join("dir.sock");
    std::fs::create_dir(&directory).unwrap();
    let error = SocketListener::bind(&SocketAddress::Path(directory.clone()), DEFAULT_SOCKET_MODE)
        .unwrap_err();
    assert!(
        matches!(
            error,
            SocketError::NotASocket {
                kind: "directory",
                ..
            }
        ),
        "{error}"
    );
    assert!(directory.is_dir());

    let missing = dir.path().join("missing/kms.sock");
    let error =
        SocketListener::bind(&SocketAddress::Path(missing), DEFAULT_SOCKET_MODE).unwrap_err();
    assert!(matches!(error, SocketError::NoDirectory(_)), "{error}");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(
        leftovers.len(),
        2,
        "staging directories must not be left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abstract_socket_serves_too() {
    let dir = temp_dir();
    let keyring = init_keyring(dir.path());
    let name = format!("kube-kms-test-{}", std::process::id());
    let backend = Arc::new(kube_kms::backend::file::FileBackend::open(&keyring).unwrap());
    let listener =
        SocketListener::bind_allowing_abstract(&SocketAddress::parse(&format!("@{name}")), 0o600)
            .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(kube_kms::server::run(
        listener,
        backend,
        Default::default(),
        async {
            let _ = stopped.await;
        },
    ));
    let mut client = KmsClient::connect(format!("unix:///@{name}"))
        .await
        .unwrap();
    assert_eq!(client.status().await.unwrap().healthz, "ok");
    let error =
        SocketListener::bind_allowing_abstract(&SocketAddress::parse(&format!("@{name}")), 0o600)
            .unwrap_err();
    assert!(matches!(error, SocketError::InUse(_)), "{error}");
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_path_too_long_for_a_unix_address_is_refused_clearly() {
    let dir = temp_dir();
    let deep = dir.path().join("d".repeat(100));
    std::fs::create_dir(&deep).unwrap();
    let error = SocketListener::bind(
        &SocketAddress::Path(deep.join("kms.sock")),
        DEFAULT_SOCKET_MODE,
    )
    .unwrap_err();
    assert!(matches!(error, SocketError::TooLong(_)), "{error}");
    assert!(error.to_string().contains("too long"), "{error}");
    assert_eq!(std::fs::read_dir(&deep).unwrap().count(), 0);
}
