//! `FileBackend` on real keyring files changed by the real `kube-kms key` binary.
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use kube_kms::backend::file::{FileBackend, HEALTHY};
use kube_kms::backend::{BackendError, KeyBackend, ReloadOutcome};

fn key(args: &[&str], keyring: &Path) {
    let output = Command::new(env!("CARGO_BIN_EXE_kube-kms"))
        .arg("key")
        .args(args)
        .arg("--keyring")
        .arg(keyring)
        .output()
        .expect("run kube-kms");
    assert!(
        output.status.success(),
        "key {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn fresh() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("keyring.json");
    key(&["init"], &path);
    (dir, path)
}

fn no_annotations() -> BTreeMap<String, Vec<u8>> {
    BTreeMap::new()
}

#[tokio::test]
async fn ciphertext_survives_rotation_fails_when_disabled_works_when_enabled() {
    let (_dir, path) = fresh();
    let backend = FileBackend::open(&path).expect("open");
    let seed = [0x5eu8; 32];
    let before = backend.wrap(&seed).await.expect("wrap");
    assert_eq!(before.key_id, backend.status().key_id);
    assert!(before.key_id.starts_with("kk-v1-"));

    key(&["rotate"], &path);
    let ReloadOutcome::Reloaded { primary_key_id } = backend.reload(false).expect("reload") else {
        panic!("rotation not seen");
    };
    assert!(primary_key_id.starts_with("kk-v2-"));
    assert_eq!(backend.status().key_id, primary_key_id);
    let after = backend.wrap(&seed).await.expect("wrap");
    assert_eq!(after.key_id, primary_key_id);
    let opened = backend
        .unwrap(&before.key_id, &before.ciphertext, &no_annotations())
        .await
        .expect("a seed wrapped before rotate decrypts after it");
    assert_eq!(opened.expose_secret(), &seed);

    key(&["disable", "1"], &path);
    backend.reload(false).expect("reload");
    assert_eq!(
        backend
            .unwrap(&before.key_id, &before.ciphertext, &no_annotations())
            .await
            .expect_err("disabled key must not decrypt"),
        BackendError::KeyDisabled
    );
    // The new primary is unaffected.
    backend
        .unwrap(&after.key_id, &after.ciphertext, &no_annotations())
        .await
        .expect("v2 still decrypts");

    key(&["enable", "1"], &path);
    backend.reload(false).expect("reload");
    let opened = backend
        .unwrap(&before.key_id, &before.ciphertext, &no_annotations())
        .await
        .expect("enabled again");
    assert_eq!(opened.expose_secret(), &seed);

    key(&["disable", "1"], &path);
    key(&["destroy", "1", "--force"], &path);
    backend.reload(false).expect("reload");
    assert_eq!(
        backend
            .unwrap(&before.key_id, &before.ciphertext, &no_annotations())
            .await
            .expect_err("destroyed"),
        BackendError::KeyDisabled
    );
    assert_eq!(&*backend.status().healthz, HEALTHY);
}

#[tokio::test]
async fn unwrap_rejects_foreign_key_ids_and_tampering() {
    let (_dir, path) = fresh();
    key(&["rotate"], &path);
    let backend = FileBackend::open(&path).expect("open");
    let wrapped = backend.wrap(&[1u8; 32]).await.expect("wrap");
    let other_key_id = kube_kms::keyring::load(&path)
        .expect("load")
        .keyring
        .versions()
        .iter()
        .map(|v| v.key_id().to_string())
        .find(|k| **k != *wrapped.key_id)
        .expect("v1");
    assert_eq!(
        backend
            .unwrap(&other_key_id, &wrapped.ciphertext, &no_annotations())
            .await
            .expect_err("wrong key_id"),
        BackendError::DecryptFailed
    );
    assert_eq!(
        backend
            .unwrap(
                "kk-v3-0000000000000000",
                &wrapped.ciphertext,
                &no_annotations()
            )
            .await
            .expect_err("unknown"),
        BackendError::UnknownKeyId
    );
    assert_eq!(
        backend
            .unwrap("", &wrapped.ciphertext, &no_annotations())
            .await
            .expect_err("empty"),
        BackendError::UnknownKeyId
    );
    for index in 0..wrapped.ciphertext.len() {
        for bit in 0..8 {
            let mut tampered = wrapped.ciphertext.clone();
            tampered[index] ^= 1 << bit;
            assert_eq!(
                backend
                    .unwrap(&wrapped.key_id, &tampered, &no_annotations())
                    .await
                    .expect_err("tampered"),
                BackendError::DecryptFailed,
                "byte {index} bit {bit}"
            );
        }
    }
    for len in 0..wrapped.ciphertext.len() {
        assert_eq!(
            backend
                .unwrap(
                    &wrapped.key_id,
                    &wrapped.ciphertext[..len],
                    &no_annotations()
                )
                .await
                .expect_err("truncated"),
            BackendError::DecryptFailed
        );
    }
    let too_large = vec![0u8; kube_kms::wrap::MAX_PLAINTEXT_LEN + 1];
    assert!(matches!(
        backend.wrap(&too_large).await,
        Err(BackendError::InvalidInput(_))
    ));
}

#[test]
fn open_refuses_a_group_readable_keyring() {
    let (_dir, path) = fresh();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let error = FileBackend::open(&path).expect_err("0640 must be refused");
    assert!(
        error
            .to_string()
            .contains(&format!("chmod 600 {}", path.display())),
        "{error}"
    );
}

#[tokio::test]
async fn reload_only_when_changed_and_a_broken_file_keeps_the_old_keys_serving() {
    let (dir, path) = fresh();
    let backend = FileBackend::open(&path).expect("open");
    assert_eq!(
        backend.reload(false).expect("reload"),
        ReloadOutcome::Unchanged
    );
    assert!(matches!(
        backend.reload(true).expect("forced"),
        ReloadOutcome::Reloaded { .. }
    ));
    let serving = backend.status().key_id;
    let wrapped = backend.wrap(&[9u8; 32]).await.expect("wrap");

    // A broken file dropped in place by rename (as an editor or config tool would).
    let broken = dir.path().join("broken");
    std::fs::write(
        &broken,
        b"{\"format\":\"kube-kms-keyring/v1\",\"versions\":[",
    )
    .expect("write");
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::fs::rename(&broken, &path).expect("rename");
    let error = backend
        .reload(false)
        .expect_err("broken file must be refused");
    assert!(error.to_string().contains("is invalid"), "{error}");
    assert_eq!(backend.status().key_id, serving);
    assert_eq!(&*backend.status().healthz, HEALTHY);
    backend.self_test().await;
    assert_eq!(&*backend.status().healthz, HEALTHY);
    backend
        .unwrap(&wrapped.key_id, &wrapped.ciphertext, &no_annotations())
        .await
        .expect("old keys keep serving");
    assert_eq!(
        backend.wrap(&[9u8; 32]).await.expect("wrap").key_id,
        serving
    );

    // Gone entirely: still serving.
    std::fs::remove_file(&path).expect("rm");
    assert!(backend.reload(false).is_err());
    assert_eq!(backend.status().key_id, serving);
}

/// While rotations and reloads run, every wrap returns a key_id that unwraps it:
/// the key_id and the key always come from one snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrap_key_id_and_key_agree_during_rotations() {
    let (_dir, path) = fresh();
    let backend = Arc::new(FileBackend::open(&path).expect("open"));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..3 {
        let backend = Arc::clone(&backend);
        let stop = Arc::clone(&stop);
        workers.push(tokio::spawn(async move {
            let mut seen = std::collections::BTreeSet::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let wrapped = backend.wrap(&[7u8; 32]).await.expect("wrap");
                let opened = backend
                    .unwrap(&wrapped.key_id, &wrapped.ciphertext, &BTreeMap::new())
                    .await
                    .expect("key_id names the wrapping key");
                assert_eq!(opened.expose_secret(), &[7u8; 32]);
                seen.insert(wrapped.key_id.to_string());
                tokio::task::yield_now().await;
            }
            seen
        }));
    }
    for _ in 0..5 {
        let path = path.clone();
        tokio::task::spawn_blocking(move || key(&["rotate"], &path))
            .await
            .expect("rotate");
        backend.reload(false).expect("reload");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut seen = std::collections::BTreeSet::new();
    for worker in workers {
        seen.extend(worker.await.expect("worker"));
    }
    assert!(seen.len() >= 2, "wraps saw only {seen:?}");
    assert!(backend.status().key_id.starts_with("kk-v6-"));
}
