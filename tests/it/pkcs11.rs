//! The PKCS#11 backend against a real SoftHSM2 token (Debian `softhsm2`,
//! installed by tools/install-deps): each test creates its own token in a
//! temp directory (SOFTHSM2_CONF, `softhsm2-util --init-token`), manages keys
//! with the real `kube-kms key ... --backend pkcs11`, runs the real
//! `kube-kms serve --backend pkcs11` on a unix socket and talks gRPC to it;
//! and shows through PKCS#11 itself that the keys cannot leave the token.
#[allow(dead_code)]
use crate::common::etcd;
use crate::common::plugin;

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CryptokiError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use kube_kms::client::KmsClient;
use plugin::{http_get, seed, temp_dir, wait_for_key_id, ServeProcess, KUBE_KMS};
use rustix::process::Signal;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const PIN: &str = "4711-kube-kms";
const SO_PIN: &str = "so-0815";

/// A SoftHSM2 token of its own, in a temp directory.
struct SoftHsm {
    dir: tempfile::TempDir,
    conf: PathBuf,
    pin_file: PathBuf,
    label: String,
}

impl SoftHsm {
    fn new(label: &str) -> Self {
        let dir = temp_dir();
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).unwrap();
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        let output = Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", label])
            .args(["--pin", PIN, "--so-pin", SO_PIN])
            .env("SOFTHSM2_CONF", &conf)
            .output()
            .expect("softhsm2-util is missing: run tools/install-deps (Debian package softhsm2)");
        assert!(
            output.status.success(),
            "softhsm2-util --init-token failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let pin_file = dir.path().join("pin");
        std::fs::write(&pin_file, format!("{PIN}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        Self {
            dir,
            conf,
            pin_file,
            label: label.to_owned(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `--backend pkcs11 --pkcs11-module ... --token-label ... --pin-file ...`
    fn flags(&self) -> Vec<OsString> {
        vec![
            "--backend".into(),
            "pkcs11".into(),
            "--pkcs11-module".into(),
            MODULE.into(),
            "--token-label".into(),
            self.label.clone().into(),
            "--pin-file".into(),
            self.pin_file.clone().into(),
        ]
    }

    /// `kube-kms key ARGS --backend pkcs11 ...` (not checked).
    fn key_output(&self, args: &[&str]) -> Output {
        Command::new(KUBE_KMS)
            .arg("key")
            .args(args)
            .args(self.flags())
            .env("SOFTHSM2_CONF", &self.conf)
            .output()
            .expect("run kube-kms key")
    }

    /// `kube-kms key ARGS --backend pkcs11 ...`; stdout; panics when it fails.
    fn key(&self, args: &[&str]) -> String {
        let output = self.key_output(args);
        assert!(
            output.status.success(),
            "kube-kms key {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Rotates in the token; returns the new primary key_id.
    fn rotate(&self) -> String {
        self.key(&["rotate"]);
        self.key_ids()
            .into_iter()
            .find(|(_, state)| state == "primary")
            .map(|(key_id, _)| key_id)
            .expect("a primary after rotate")
    }

    /// (key_id, state) of every version, from `key list --format json`.
    fn key_ids(&self) -> Vec<(String, String)> {
        let listed: serde_json::Value =
            serde_json::from_str(&self.key(&["list", "--format", "json"])).unwrap();
        listed["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["key_id"].as_str().unwrap().to_owned(),
                    v["state"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    /// `kube-kms serve --backend pkcs11` on `dir/kms.sock`, fast polls.
    async fn serve(&self) -> ServeProcess {
        self.serve_with(&[]).await
    }

    /// As [`SoftHsm::serve`], with more flags.
    async fn serve_with(&self, extra: &[&str]) -> ServeProcess {
        let mut args = self.flags();
        args.extend(extra.iter().map(OsString::from));
        for arg in [
            "--reload-poll-interval",
            "100ms",
            "--self-test-interval",
            "300ms",
            "--log-level",
            "debug",
        ] {
            args.push(arg.into());
        }
        ServeProcess::start_with(self.path(), &args, &[("SOFTHSM2_CONF", &self.conf)]).await
    }
}

/// Calls `decrypt` until it succeeds/fails as `want_ok` says, for up to 5 s.
async fn wait_decrypt(
    client: &mut KmsClient,
    encrypted: &kube_kms::proto::v2::EncryptResponse,
    want_ok: bool,
) {
    let started = Instant::now();
    loop {
        let result = client.decrypt_encrypted(encrypted, "wait").await;
        if result.is_ok() == want_ok {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "decrypt still {} after 5 s",
            if want_ok { "fails" } else { "succeeds" }
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn code(error: &kube_kms::client::ClientError) -> tonic::Code {
    error.status().map_or(tonic::Code::Unknown, |s| s.code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_rotation_disable_tamper_and_restart() {
    let hsm = SoftHsm::new("kk-round-trip");
    // No key yet: the plugin refuses to start and says what to do.
    let refused = Command::new(KUBE_KMS)
        .arg("serve")
        .args(hsm.flags())
        .args(["--socket".as_ref(), hsm.path().join("kms.sock").as_os_str()])
        .env("SOFTHSM2_CONF", &hsm.conf)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("key rotate --backend pkcs11"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let first = hsm.rotate();
    assert!(first.starts_with("kk-p11-v1-"), "{first}");
    let mut serve = hsm.serve().await;
    let mut client = serve.client().await;
    let status = client.status().await.unwrap();
    assert_eq!(status.healthz, "ok");
    assert_eq!(status.version, "v2");
    assert_eq!(status.key_id, first);

    // Round trip; randomized; within kube-apiserver's 1 KiB.
    let seed_one = seed();
    let one = client.encrypt(&seed_one, "one").await.unwrap();
    assert_eq!(one.key_id, first);
    assert!(one.ciphertext.len() <= 1024 && one.ciphertext.len() == 62);
    assert_eq!(
        client
            .decrypt_encrypted(&one, "one")
            .await
            .unwrap()
            .expose_secret(),
        seed_one.as_slice()
    );
    let again = client.encrypt(&seed_one, "again").await.unwrap();
    assert_ne!(
        again.ciphertext, one.ciphertext,
        "encryption is not randomized"
    );

    // Tamper: every byte flipped is refused; so is another key_id.
    for index in 0..one.ciphertext.len() {
        let mut tampered = one.ciphertext.clone();
        tampered[index] ^= 0x01;
        let error = client
            .decrypt(&tampered, &one.key_id, &HashMap::new(), "tamper")
            .await
            .unwrap_err();
        assert_eq!(
            code(&error),
            tonic::Code::InvalidArgument,
            "byte {index}: {error}"
        );
    }
    let truncated = client
        .decrypt(&one.ciphertext[..40], &one.key_id, &HashMap::new(), "short")
        .await
        .unwrap_err();
    assert_eq!(code(&truncated), tonic::Code::InvalidArgument);
    let unknown = client
        .decrypt(
            &one.ciphertext,
            "kk-p11-v9-0000000000000000",
            &HashMap::new(),
            "unknown",
        )
        .await
        .unwrap_err();
    assert_eq!(code(&unknown), tonic::Code::NotFound);

    // Rotation: Status follows, the old ciphertext still decrypts, and a
    // ciphertext presented under the other key_id does not.
    let second = hsm.rotate();
    assert!(second.starts_with("kk-p11-v2-"), "{second}");
    wait_for_key_id(&mut client, &second, Duration::from_secs(5)).await;
    let seed_two = seed();
    let two = client.encrypt(&seed_two, "two").await.unwrap();
    assert_eq!(two.key_id, second);
    assert_eq!(
        client
            .decrypt_encrypted(&one, "old")
            .await
            .unwrap()
            .expose_secret(),
        seed_one.as_slice()
    );
    let swapped = client
        .decrypt(&one.ciphertext, &second, &HashMap::new(), "swapped")
        .await
        .unwrap_err();
    assert_eq!(code(&swapped), tonic::Code::InvalidArgument);

    // Disable version 1: refused; enable: decrypts again.
    hsm.key(&["disable", "1"]);
    wait_decrypt(&mut client, &one, false).await;
    let error = client
        .decrypt_encrypted(&one, "disabled")
        .await
        .unwrap_err();
    assert_eq!(code(&error), tonic::Code::FailedPrecondition);
    assert_eq!(client.status().await.unwrap().healthz, "ok");
    hsm.key(&["enable", "1"]);
    wait_decrypt(&mut client, &one, true).await;

    // Restart: a new process decrypts what the old one wrapped.
    serve.signal(Signal::TERM);
    assert_eq!(
        serve.wait_exit(Duration::from_secs(10)).await.code(),
        Some(0)
    );
    let log = serve.stderr();
    assert!(!log.contains(PIN), "the PIN leaked into the log");
    drop(serve);
    let serve = hsm.serve().await;
    let mut client = serve.client().await;
    assert_eq!(client.status().await.unwrap().key_id, second);
    for (encrypted, expected) in [(&one, &seed_one), (&two, &seed_two)] {
        assert_eq!(
            client
                .decrypt_encrypted(encrypted, "restart")
                .await
                .unwrap()
                .expose_secret(),
            expected.as_slice()
        );
    }
}

#[test]
fn key_commands_keep_the_state_machine_rules() {
    let hsm = SoftHsm::new("kk-states");
    hsm.rotate();
    hsm.rotate();
    let refused = |args: &[&str], says: &str| {
        let output = hsm.key_output(args);
        assert!(!output.status.success(), "{args:?} was allowed");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    };
    refused(&["disable", "2"], "it is the primary");
    refused(&["destroy", "1"], "disable it first");
    refused(&["destroy", "2", "--force"], "it is the primary");
    refused(&["enable", "1"], "already enabled");
    refused(&["disable", "7"], "has no version 7");
    hsm.key(&["disable", "1"]);
    // The destroy gate: no proof, no destroy (exit 1, nothing changed).
    let gated = hsm.key_output(&["destroy", "1"]);
    assert_eq!(gated.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&gated.stderr).contains("--scan-report"));
    assert_eq!(hsm.key_ids()[0].1, "disabled");
    hsm.key(&["destroy", "1", "--force"]);
    let versions = hsm.key_ids();
    assert_eq!(versions[0].1, "destroyed");
    assert_eq!(versions[1].1, "primary");
    refused(&["enable", "1"], "gone for good");
    refused(&["destroy", "1", "--force"], "already destroyed");
    // A destroyed number is never reused.
    assert!(hsm.rotate().starts_with("kk-p11-v3-"));
    // The key object of version 1 is gone from the token.
    let token = open_in_process(&hsm);
    let session = token.session();
    let found = session
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Id(versions[0].0.as_bytes().to_vec()),
        ])
        .unwrap();
    assert!(found.is_empty(), "the destroyed key is still in the token");
    drop(session);
    drop(token);

    // The same settings from --backend-config instead of flags.
    let config = hsm.path().join("backend.yaml");
    std::fs::write(
        &config,
        format!(
            "backend: pkcs11\npkcs11:\n  module: {MODULE}\n  token_label: {}\n  pin_file: {}\n",
            hsm.label,
            hsm.pin_file.display()
        ),
    )
    .unwrap();
    let listed = Command::new(KUBE_KMS)
        .args(["key", "list", "--backend-config"])
        .arg(&config)
        .env("SOFTHSM2_CONF", &hsm.conf)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(
        table.contains(&versions[1].0) && table.contains("destroyed"),
        "{table}"
    );
}

/// The token opened in this process through cryptoki. SoftHSM2 reads
/// SOFTHSM2_CONF once, at C_Initialize: one configuration per process at a
/// time, so this holds a process-wide lock until dropped (after the context).
struct InProcessToken {
    context: Pkcs11,
    slot: cryptoki::slot::Slot,
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

impl InProcessToken {
    fn session(&self) -> Session {
        let session = self.context.open_rw_session(self.slot).unwrap();
        match session.login(UserType::User, Some(&AuthPin::from(PIN.to_owned()))) {
            Ok(()) | Err(CryptokiError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(error) => panic!("login: {error}"),
        }
        session
    }
}

static IN_PROCESS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn open_in_process(hsm: &SoftHsm) -> InProcessToken {
    let one_at_a_time = IN_PROCESS.lock().unwrap_or_else(|p| p.into_inner());
    std::env::set_var("SOFTHSM2_CONF", &hsm.conf);
    let context = Pkcs11::new(MODULE).unwrap();
    context
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = context
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|slot| context.get_token_info(*slot).unwrap().label().trim_end() == hsm.label)
        .expect("the token");
    InProcessToken {
        context,
        slot,
        _one_at_a_time: one_at_a_time,
    }
}

#[test]
fn keys_cannot_be_extracted_from_the_token() {
    let hsm = SoftHsm::new("kk-extract");
    let key_id = hsm.rotate();
    let token = open_in_process(&hsm);
    let session = token.session();
    let found = session
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(b"kube-kms-kek-v1".to_vec()),
        ])
        .unwrap();
    assert_eq!(found.len(), 1);
    let kek = found[0];
    let attributes = session
        .get_attributes(
            kek,
            &[
                AttributeType::Id,
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::NeverExtractable,
                AttributeType::AlwaysSensitive,
                AttributeType::Token,
                AttributeType::Wrap,
                AttributeType::Value,
            ],
        )
        .unwrap();
    let mut seen = Vec::new();
    for attribute in &attributes {
        match attribute {
            Attribute::Id(id) => assert_eq!(id, key_id.as_bytes()),
            Attribute::Sensitive(value) => assert!(*value, "CKA_SENSITIVE false"),
            Attribute::Extractable(value) => assert!(!*value, "CKA_EXTRACTABLE true"),
            Attribute::NeverExtractable(value) => assert!(*value, "CKA_NEVER_EXTRACTABLE false"),
            Attribute::AlwaysSensitive(value) => assert!(*value, "CKA_ALWAYS_SENSITIVE false"),
            Attribute::Token(value) => assert!(*value, "not a token object"),
            Attribute::Wrap(value) => assert!(!*value, "the KEK may wrap other keys"),
            Attribute::Value(_) => panic!("C_GetAttributeValue returned the key's CKA_VALUE"),
            _ => {}
        }
        seen.push(attribute.attribute_type());
    }
    assert!(!seen.contains(&AttributeType::Value));
    assert_eq!(seen.len(), 7, "{seen:?}");
    let value_info = session
        .get_attribute_info(kek, &[AttributeType::Value])
        .unwrap();
    assert!(
        matches!(value_info[0], cryptoki::object::AttributeInfo::Sensitive),
        "CKA_VALUE is not reported sensitive: {value_info:?}"
    );

    // C_WrapKey under a wrapping key of our own: refused.
    let wrapping = session
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(32.into()),
                Attribute::Token(false),
                Attribute::Wrap(true),
                Attribute::Encrypt(true),
            ],
        )
        .unwrap();
    for mechanism in [Mechanism::AesKeyWrap, Mechanism::AesKeyWrapPad] {
        let error = session.wrap_key(&mechanism, wrapping, kek).unwrap_err();
        assert!(
            matches!(
                error,
                CryptokiError::Pkcs11(RvError::KeyUnextractable | RvError::KeyNotWrappable, _)
            ),
            "C_WrapKey: {error}"
        );
    }
    // Nor can the key be made extractable or non-sensitive afterwards.
    assert!(session
        .update_attributes(kek, &[Attribute::Extractable(true)])
        .is_err());
    assert!(session
        .update_attributes(kek, &[Attribute::Sensitive(false)])
        .is_err());
    // The state records carry no key material: only the public key_id.
    let records = session
        .find_objects(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Application(b"kube-kms".to_vec()),
        ])
        .unwrap();
    assert_eq!(records.len(), 1);
}

/// A protobuf length-delimited field.
fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_varint(out, (field << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A minimal v1 Secret as kube-apiserver stores it (`k8s\0` + Unknown).
fn secret_object(namespace: &str, name: &str) -> Vec<u8> {
    let mut meta = Vec::new();
    put_bytes(&mut meta, 1, name.as_bytes());
    put_bytes(&mut meta, 3, namespace.as_bytes());
    put_bytes(&mut meta, 5, b"00000000-0000-4000-8000-000000000001");
    let mut entry = Vec::new();
    put_bytes(&mut entry, 1, b"password");
    put_bytes(&mut entry, 2, b"hunter2-pkcs11");
    let mut secret = Vec::new();
    put_bytes(&mut secret, 1, &meta);
    put_bytes(&mut secret, 2, &entry);
    put_bytes(&mut secret, 3, b"Opaque");
    let mut type_meta = Vec::new();
    put_bytes(&mut type_meta, 1, b"v1");
    put_bytes(&mut type_meta, 2, b"Secret");
    let mut object = b"k8s\x00".to_vec();
    put_bytes(&mut object, 1, &type_meta);
    put_bytes(&mut object, 2, &secret);
    object
}

/// `k8s:enc:kms:v2:kube-kms:` + EncryptedObject, the DEK seed wrapped by the plugin.
fn kms_v2_value(
    encrypted: &kube_kms::proto::v2::EncryptResponse,
    seed: &[u8],
    etcd_key: &str,
    plaintext: &[u8],
) -> Vec<u8> {
    let data = kube_kms::envelope::seal_kms_v2_seed(seed, plaintext, etcd_key.as_bytes()).unwrap();
    let mut object = Vec::new();
    put_bytes(&mut object, 1, &data);
    put_bytes(&mut object, 2, encrypted.key_id.as_bytes());
    put_bytes(&mut object, 3, &encrypted.ciphertext);
    put_varint(&mut object, 5 << 3);
    put_varint(&mut object, 1);
    let mut value = b"k8s:enc:kms:v2:kube-kms:".to_vec();
    value.extend_from_slice(&object);
    value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_inspect_verifies_values_through_the_pkcs11_plugin() {
    let hsm = SoftHsm::new("kk-verify");
    hsm.rotate();
    let serve = hsm.serve().await;
    let mut client = serve.client().await;
    let seed_bytes = seed();
    let encrypted = client.encrypt(&seed_bytes, "verify").await.unwrap();
    let etcd = etcd::Etcd::start();
    let good_key = "/registry/secrets/default/db-pass";
    etcd.put(
        good_key,
        kms_v2_value(
            &encrypted,
            &seed_bytes,
            good_key,
            &secret_object("default", "db-pass"),
        ),
    )
    .await;
    let socket = format!("unix://{}", serve.socket.display());
    let scan = |extra: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_etcd-inspect"));
        command
            .args(["scan", "--endpoints"])
            .arg(&etcd.endpoint)
            .args(["--require-provider", "kms-v2:kube-kms", "--verify-with"])
            .arg(&socket)
            .args(["--format", "json"])
            .args(extra);
        command.output().unwrap()
    };
    let clean = scan(&[]);
    let stdout = String::from_utf8_lossy(&clean.stdout);
    assert_eq!(
        clean.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&clean.stderr)
    );
    assert!(stdout.contains(&encrypted.key_id), "{stdout}");

    // A value whose data was sealed under another seed fails verification.
    let bad_key = "/registry/secrets/default/forged";
    etcd.put(
        bad_key,
        kms_v2_value(
            &encrypted,
            &seed(),
            bad_key,
            &secret_object("default", "forged"),
        ),
    )
    .await;
    let forged = scan(&[]);
    let stdout = String::from_utf8_lossy(&forged.stdout);
    assert_eq!(forged.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("forged"), "{stdout}");
}

/// Waits up to 10 s for Status' healthz to satisfy `want`; returns it.
async fn wait_healthz(client: &mut KmsClient, want: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    loop {
        let healthz = client.status().await.unwrap().healthz;
        if want(&healthz) {
            return healthz;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "healthz still {healthz:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_outage_marks_unhealthy_then_recovers() {
    let hsm = SoftHsm::new("kk-outage");
    let key_id = hsm.rotate();
    let serve = hsm.serve().await;
    let mut client = serve.client().await;
    let seed_one = seed();
    let one = client.encrypt(&seed_one, "before").await.unwrap();

    // The token's storage disappears (as a token pulled out, or an HSM gone).
    let tokens = hsm.path().join("tokens");
    let away = hsm.path().join("away");
    std::fs::rename(&tokens, &away).unwrap();
    std::fs::create_dir(&tokens).unwrap();
    let healthz = wait_healthz(&mut client, |h| h != "ok").await;
    assert!(
        healthz.contains("kk-outage"),
        "the reason names the token: {healthz}"
    );
    assert!(!healthz.contains(PIN));
    let error = client.encrypt(&seed(), "during").await.unwrap_err();
    assert_eq!(code(&error), tonic::Code::Unavailable);
    // Status still names the key (kube-apiserver keeps reading with cached seeds).
    assert_eq!(client.status().await.unwrap().key_id, key_id);

    // Back: new sessions, a new login, healthy again; old ciphertexts decrypt.
    std::fs::remove_dir(&tokens).unwrap();
    std::fs::rename(&away, &tokens).unwrap();
    wait_healthz(&mut client, |h| h == "ok").await;
    assert_eq!(
        client
            .decrypt_encrypted(&one, "after")
            .await
            .unwrap()
            .expose_secret(),
        seed_one.as_slice()
    );
    let log = serve.stderr();
    assert!(log.contains("self-test failed"), "{log}");
    assert!(!log.contains(PIN), "the PIN leaked into the log");
}

/// The value of an unlabelled metric in a Prometheus text scrape.
fn metric(scrape: &str, name: &str) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == name).then(|| value.trim().parse().ok())?
    })
}

/// A state record's JSON, as kube-kms writes it.
fn record_json(version: u32, key_id: &str, state: &str, generation: u64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "format": "kube-kms-pkcs11-version/v1",
        "version": version,
        "key_id": key_id,
        "state": state,
        "created": 1_800_000_000u64,
        "generation": generation,
    }))
    .unwrap()
}

/// Issue 15 §1: anyone who can load the module may create *public* token
/// objects in a logged-out read-write session (SoftHSM2 allows it). A
/// "newer" state record naming a key they know, and a known key carrying the
/// real key_id, must change nothing: same key_id, seeds still wrapped under
/// the token's own KEK (they do not open under the known key), and the
/// lookalikes are counted in /metrics and `key list`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookalike_public_objects_made_without_the_pin_are_ignored() {
    use aes_gcm::aead::{Aead as _, KeyInit as _, Payload};
    let hsm = SoftHsm::new("kk-lookalike");
    let real = hsm.rotate();
    let metrics_port = etcd::free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let serve = hsm.serve_with(&["--metrics-addr", &metrics_addr]).await;
    let mut client = serve.client().await;
    let seed_before = seed();
    let before = client.encrypt(&seed_before, "before").await.unwrap();
    assert_eq!(before.key_id, real);

    // The attacker's objects, made without logging in.
    const KNOWN: [u8; 32] = [0x42; 32];
    let fake = "kk-p11-v2-00000000000000aa";
    {
        let token = open_in_process(&hsm);
        let session = token.context.open_rw_session(token.slot).unwrap();
        let data = |label: &str, value: Vec<u8>| {
            vec![
                Attribute::Class(ObjectClass::DATA),
                Attribute::Token(true),
                Attribute::Private(false),
                Attribute::Application(b"kube-kms".to_vec()),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Value(value),
            ]
        };
        let known_key = |id: &str, label: &str| {
            vec![
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Token(true),
                Attribute::Private(false),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::Value(KNOWN.to_vec()),
                Attribute::Id(id.as_bytes().to_vec()),
                Attribute::Label(label.as_bytes().to_vec()),
            ]
        };
        // A newer primary version 2 under a known key...
        session
            .create_object(&data(
                "kube-kms-state-v2",
                record_json(2, fake, "primary", 99),
            ))
            .expect("SoftHSM2 lets a logged-out session create public token objects");
        session
            .create_object(&known_key(fake, "kube-kms-kek-v2"))
            .unwrap();
        // ...a newer record demoting the real version 1...
        session
            .create_object(&data(
                "kube-kms-state-v1",
                record_json(1, &real, "enabled", 98),
            ))
            .unwrap();
        // ...and a known key carrying the real (public) key_id.
        session
            .create_object(&known_key(&real, "kube-kms-kek-v1"))
            .unwrap();
    }

    // A forced reload, then polls until the plugin has seen the lookalike
    // record (it logs it): nothing changes.
    serve.signal(rustix::process::Signal::HUP);
    let started = Instant::now();
    while !serve.stderr().contains("kube-kms-state-v2") {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the plugin never saw the lookalike record: {}",
            serve.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = client.status().await.unwrap();
    assert_eq!(
        status.key_id, real,
        "a lookalike record changed the primary"
    );
    assert_eq!(status.healthz, "ok");
    let seed_after = seed();
    let after = client.encrypt(&seed_after, "after").await.unwrap();
    assert_eq!(after.key_id, real);
    for (wrapped, expected) in [(&before, &seed_before), (&after, &seed_after)] {
        assert_eq!(
            client
                .decrypt_encrypted(wrapped, "open")
                .await
                .unwrap()
                .expose_secret(),
            expected.as_slice()
        );
        // Not wrapped under the known key: the attacker cannot open it.
        let cipher = aes_gcm::Aes256Gcm::new_from_slice(&KNOWN).unwrap();
        let mut aad = b"kube-kms/pkcs11/v1\0".to_vec();
        aad.extend_from_slice(wrapped.key_id.as_bytes());
        let opened = cipher.decrypt(
            aes_gcm::Nonce::from_slice(&wrapped.ciphertext[2..14]),
            Payload {
                msg: &wrapped.ciphertext[14..],
                aad: &aad,
            },
        );
        assert!(opened.is_err(), "the seed was wrapped under the known key");
    }
    // A ciphertext made with the known key under the real key_id is refused.
    let cipher = aes_gcm::Aes256Gcm::new_from_slice(&KNOWN).unwrap();
    let mut aad = b"kube-kms/pkcs11/v1\0".to_vec();
    aad.extend_from_slice(real.as_bytes());
    let mut forged = vec![b'p', 1];
    forged.extend_from_slice(&[7u8; 12]);
    forged.extend(
        cipher
            .encrypt(
                aes_gcm::Nonce::from_slice(&[7u8; 12]),
                Payload {
                    msg: &[1u8; 32],
                    aad: &aad,
                },
            )
            .unwrap(),
    );
    let refused = client
        .decrypt(&forged, &real, &HashMap::new(), "forged")
        .await
        .unwrap_err();
    assert_eq!(code(&refused), tonic::Code::InvalidArgument);

    // Logged (labels only), and shown by `key list`.
    let log = serve.stderr();
    assert!(
        log.contains("kube-kms-state-v2") && log.contains("CKA_PRIVATE"),
        "{log}"
    );
    let listed = hsm.key_output(&["list", "--format", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(json["ignored_objects"], 4, "{json}");
    assert_eq!(json["versions"].as_array().unwrap().len(), 1, "{json}");
    assert_eq!(json["versions"][0]["key_id"], real.as_str());
    assert!(String::from_utf8_lossy(&listed.stderr).contains("ignoring"));

    // A restart reads the same; a real rotation makes the real version 2.
    drop(client);
    drop(serve);
    let serve = hsm.serve_with(&["--metrics-addr", &metrics_addr]).await;
    let mut client = serve.client().await;
    assert_eq!(client.status().await.unwrap().key_id, real);
    // Counted (a fresh process reads every object at once).
    // (SoftHSM2 may show another process's new objects a poll or two late.)
    let started = Instant::now();
    loop {
        let (_, scrape) = http_get(metrics_port, "/metrics");
        let ignored = metric(&scrape, "kube_kms_backend_ignored_objects");
        if ignored == Some(4.0) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "ignored objects: {ignored:?}: {scrape}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let second = hsm.rotate();
    assert!(
        second.starts_with("kk-p11-v2-") && second != fake,
        "{second}"
    );
    wait_for_key_id(&mut client, &second, Duration::from_secs(5)).await;
    assert_eq!(
        client
            .decrypt_encrypted(&before, "old")
            .await
            .unwrap()
            .expose_secret(),
        seed_before.as_slice()
    );
}

/// Holds POSIX write locks on every file of a SoftHSM2 token (as another
/// process in the middle of a long write would): SoftHSM2 locks these files
/// around its reads, so every call that touches the token store hangs until
/// the locks go, the way a network HSM that stops answering hangs a call.
struct TokenFreeze {
    /// Open with the locks held; closing them releases the locks.
    _locked: Vec<std::fs::File>,
}

impl TokenFreeze {
    fn new(hsm: &SoftHsm) -> Self {
        let mut files = Vec::new();
        for slot in std::fs::read_dir(hsm.path().join("tokens")).unwrap() {
            for entry in std::fs::read_dir(slot.unwrap().path()).unwrap() {
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(entry.unwrap().path())
                    .unwrap();
                rustix::fs::fcntl_lock(&file, rustix::fs::FlockOperation::LockExclusive).unwrap();
                files.push(file);
            }
        }
        assert!(!files.is_empty());
        Self { _locked: files }
    }
}

/// Threads of process `pid` now.
fn threads_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

/// Waits up to `limit` for `/readyz` to answer `code`; returns the body.
async fn wait_readyz(port: u16, code: u16, limit: Duration) -> String {
    let started = Instant::now();
    loop {
        let (got, body) = http_get(port, "/readyz");
        if got == code {
            return body;
        }
        assert!(
            started.elapsed() < limit,
            "/readyz still {got} after {limit:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Issue 15 §2: a token that stops answering (its store locked by
/// [`TokenFreeze`]) turns healthz and /readyz red within the
/// documented bound (self-test interval + self-test timeout, 3 x call
/// timeout); calls that kube-apiserver abandons (its deadline) keep their
/// turn while their thread still blocks, so the threads stuck in the token
/// stay under the in-flight limit; all recovers when the token answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_token_is_seen_within_the_bound_and_ties_up_bounded_threads() {
    let hsm = SoftHsm::new("kk-hang");
    let key_id = hsm.rotate();
    let metrics_port = etcd::free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let serve = hsm
        .serve_with(&[
            "--pkcs11-call-timeout",
            "500ms",
            "--metrics-addr",
            &metrics_addr,
        ])
        .await;
    let mut client = serve.client().await;
    assert_eq!(client.status().await.unwrap().healthz, "ok");
    let seed_one = seed();
    let one = client.encrypt(&seed_one, "before").await.unwrap();
    assert_eq!(one.key_id, key_id);
    wait_readyz(metrics_port, 200, Duration::from_secs(5)).await;
    let threads_before = threads_of(serve.pid());

    let freeze = TokenFreeze::new(&hsm);
    let stopped = Instant::now();
    // kube-apiserver gives up on each call (here after 100 ms) and asks again.
    for round in 0..40 {
        let _ = tokio::time::timeout(
            Duration::from_millis(100),
            client.encrypt(&seed(), &format!("abandoned-{round}")),
        )
        .await;
    }
    // Documented bound: --self-test-interval + 3 x --pkcs11-call-timeout
    // (0.3 s + 1.5 s here); measured from the stop, with slack for a busy
    // machine.
    let healthz = wait_healthz(&mut client, |h| h != "ok").await;
    assert!(
        stopped.elapsed() < Duration::from_secs(8),
        "healthz turned after {:?}",
        stopped.elapsed()
    );
    assert!(
        healthz.contains("kk-hang") || healthz.contains("self-test"),
        "{healthz}"
    );
    let body = wait_readyz(metrics_port, 503, Duration::from_secs(3)).await;
    assert!(body.contains("self-test"), "{body}");
    // Status answers from memory at once, and names the same key.
    let asked = Instant::now();
    assert_eq!(client.status().await.unwrap().key_id, key_id);
    assert!(asked.elapsed() < Duration::from_secs(1));
    // Encrypt answers Unavailable within the call timeout, not never.
    let asked = Instant::now();
    let error = client.encrypt(&seed(), "during").await.unwrap_err();
    assert_eq!(code(&error), tonic::Code::Unavailable);
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );
    // The abandoned calls did not each leave a thread blocked in the token.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let threads = threads_of(serve.pid());
    assert!(
        threads <= threads_before + kube_kms::backend::pkcs11::MAX_IN_FLIGHT + 4,
        "{threads} threads now, {threads_before} before the token hung: abandoned calls freed their turn while still blocked"
    );

    drop(freeze);
    wait_healthz(&mut client, |h| h == "ok").await;
    wait_readyz(metrics_port, 200, Duration::from_secs(10)).await;
    assert_eq!(
        client
            .decrypt_encrypted(&one, "after")
            .await
            .unwrap()
            .expose_secret(),
        seed_one.as_slice()
    );
}

/// Whether the token's CKF_USER_PIN_COUNT_LOW flag is set (SoftHSM2 sets it
/// on a failed C_Login and clears it on a successful one).
fn pin_count_low(hsm: &SoftHsm) -> bool {
    let token = open_in_process(hsm);
    token
        .context
        .get_token_info(token.slot)
        .unwrap()
        .user_pin_count_low()
}

/// Issue 15 §2: after the token refuses the PIN, the plugin does not log in
/// with it again (each try would burn one of the token's retries) until the
/// PIN file changes; the file is re-read, and the right PIN recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_pin_is_not_retried_until_the_pin_file_changes() {
    let hsm = SoftHsm::new("kk-pin");
    hsm.rotate();
    let serve = hsm.serve().await;
    let mut client = serve.client().await;
    assert_eq!(client.status().await.unwrap().healthz, "ok");

    // The token goes away (the plugin drops its sessions and its login) and
    // comes back while the PIN file holds a wrong PIN.
    let tokens = hsm.path().join("tokens");
    let away = hsm.path().join("away");
    std::fs::rename(&tokens, &away).unwrap();
    std::fs::create_dir(&tokens).unwrap();
    wait_healthz(&mut client, |h| h != "ok").await;
    std::fs::write(&hsm.pin_file, "0000-wrong\n").unwrap();
    std::fs::remove_dir(&tokens).unwrap();
    std::fs::rename(&away, &tokens).unwrap();
    let refused = wait_healthz(&mut client, |h| h.contains("refused")).await;
    assert!(refused.contains("PinIncorrect"), "{refused}");
    assert!(!refused.contains("0000-wrong") && !refused.contains(PIN));
    assert!(
        pin_count_low(&hsm),
        "SoftHSM2 did not flag the failed login"
    );

    // A successful login of our own clears the flag; many self-tests later
    // it is still clear: the plugin did not try the wrong PIN again.
    {
        let token = open_in_process(&hsm);
        drop(token.session());
    }
    assert!(!pin_count_low(&hsm));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !pin_count_low(&hsm),
        "the plugin logged in again with the PIN the token refused"
    );
    assert!(client.status().await.unwrap().healthz.contains("refused"));
    let log = serve.stderr();
    assert_eq!(log.matches("the token refused the PIN").count(), 1, "{log}");

    // The right PIN in the file: re-read, logged in, healthy.
    std::fs::write(&hsm.pin_file, format!("{PIN}\n")).unwrap();
    wait_healthz(&mut client, |h| h == "ok").await;
    assert!(!serve.stderr().contains(PIN), "the PIN leaked into the log");
}

#[test]
fn pin_file_owned_by_another_user_is_refused_with_the_fix() {
    let hsm = SoftHsm::new("kk-pin-owner");
    // Tests run as root here; as anyone else, chown needs root: skip then.
    if rustix::process::geteuid().as_raw() != 0 {
        return;
    }
    std::os::unix::fs::chown(&hsm.pin_file, Some(4242), None).unwrap();
    let output = hsm.key_output(&["list"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("owned by uid 4242") && stderr.contains("chown"),
        "{stderr}"
    );
    std::os::unix::fs::chown(&hsm.pin_file, Some(0), None).unwrap();
    hsm.key(&["list"]);
}

/// Issue 15 §3: two `kube-kms key rotate --backend pkcs11` at once, twenty
/// times: every version each of them reported survives, with distinct
/// numbers and key_ids, and exactly one primary (the commands serialize on a
/// lock object in the token).
#[test]
fn concurrent_rotations_on_a_token_lose_no_key() {
    let hsm = SoftHsm::new("kk-race");
    let first = hsm.rotate();
    let mut made = vec![first];
    for _round in 0..20 {
        let rotations: Vec<_> = (0..2)
            .map(|_| {
                Command::new(KUBE_KMS)
                    .args(["key", "rotate"])
                    .args(hsm.flags())
                    .env("SOFTHSM2_CONF", &hsm.conf)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for rotation in rotations {
            let output = rotation.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(
                output.status.success(),
                "{stdout}{}",
                String::from_utf8_lossy(&output.stderr)
            );
            // "rotated: version N (KEY_ID) ... is now primary; ..."
            let key_id = stdout
                .split_once('(')
                .and_then(|(_, rest)| rest.split_once(')'))
                .map(|(key_id, _)| key_id.to_owned())
                .unwrap_or_else(|| panic!("no key_id in {stdout}"));
            made.push(key_id);
        }
    }
    let listed = hsm.key_ids();
    assert_eq!(listed.len(), 41, "{listed:?}");
    let listed_ids: std::collections::BTreeSet<&str> =
        listed.iter().map(|(key_id, _)| key_id.as_str()).collect();
    assert_eq!(listed_ids.len(), 41, "key_ids are not distinct: {listed:?}");
    for key_id in &made {
        assert!(
            listed_ids.contains(key_id.as_str()),
            "{key_id} vanished: {listed:?}"
        );
    }
    assert_eq!(
        listed
            .iter()
            .filter(|(_, state)| state == "primary")
            .count(),
        1,
        "{listed:?}"
    );
    // No lock object is left behind.
    let token = open_in_process(&hsm);
    let session = token.session();
    let locks = session
        .find_objects(&[Attribute::Application(b"kube-kms-lock".to_vec())])
        .unwrap();
    assert!(locks.is_empty(), "{} lock objects left", locks.len());
}
