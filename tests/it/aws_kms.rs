//! The AWS KMS backend end to end: a real `moto` server (PyPI `moto[server]`,
//! installed by tools/install-deps) on 127.0.0.1, started and stopped by PID
//! here; the real `kube-kms key ... --backend aws-kms` commands and the real
//! `kube-kms serve --backend aws-kms` on a real unix socket, driven by the
//! crate's gRPC client; `etcd-inspect scan --verify-with` against it.
use crate::common;
use crate::common::plugin;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::etcd;
use common::inspect::{secret_object, summary_of, ETCD_INSPECT};
use plugin::{
    code_of, http_get, no_annotations, seed, temp_dir, wait_status, ServeProcess, KUBE_KMS,
};
use rustix::process::Signal;

const REGION: &str = "us-east-1";

/// Where tools/install-deps puts moto's server (override: KUBE_KMS_MOTO_SERVER).
fn moto_server_path() -> PathBuf {
    if let Some(path) = std::env::var_os("KUBE_KMS_MOTO_SERVER") {
        return PathBuf::from(path);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .expect("HOME or XDG_CACHE_HOME");
    cache.join("kube-kms/moto-venv/bin/moto_server")
}

/// A moto server process on a free loopback port.
struct Moto {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Moto {
    fn start(dir: &Path) -> Moto {
        let server = moto_server_path();
        assert!(
            server.exists(),
            "{} is missing: run tools/install-deps (it installs moto[server] from PyPI)",
            server.display()
        );
        let port = etcd::free_port();
        let log = dir.join("moto.log");
        let child = Command::new(&server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("moto log"))
            .stderr(std::fs::File::create(dir.join("moto.err")).expect("moto log"))
            .spawn()
            .expect("start moto_server");
        let mut moto = Moto { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !moto.answers() {
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!(
                    "moto_server exited ({status}): {}",
                    std::fs::read_to_string(dir.join("moto.err")).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Whether moto answers an HTTP request within a second.
    fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let request = "GET /moto-api/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1")
    }

    fn signal(&self, signal: Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).expect("moto pid");
        rustix::process::kill_process(pid, signal).expect("signal moto");
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        // A stopped process must be continued to die from SIGKILL promptly.
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(self.child.id() as i32).expect("moto pid"),
            Signal::CONT,
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = &self.log;
    }
}

/// Fake credentials for moto, and nothing from the developer's own AWS set-up.
fn aws_env(command: &mut Command, dir: &Path) {
    command
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_SESSION_TOKEN", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", dir.join("no-aws-config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            dir.join("no-aws-credentials"),
        )
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_ENDPOINT_URL_KMS")
        .env_remove("KUBE_KMS_AWS_ALIAS_PREFIX")
        .env_remove("KUBE_KMS_KEYRING")
        .env_remove("KUBE_KMS_BACKEND");
}

/// The flags naming the ring `prefix` on `moto`.
fn aws_flags(moto: &Moto, prefix: &str) -> Vec<String> {
    vec![
        "--backend".into(),
        "aws-kms".into(),
        "--aws-endpoint-url".into(),
        moto.url(),
        "--aws-region".into(),
        REGION.into(),
        "--aws-alias-prefix".into(),
        prefix.into(),
    ]
}

/// `kube-kms key ARGS` against the ring.
fn key_command(dir: &Path, moto: &Moto, prefix: &str, args: &[&str]) -> Output {
    let mut command = Command::new(KUBE_KMS);
    command.arg("key").args(args).args(aws_flags(moto, prefix));
    aws_env(&mut command, dir);
    command.output().expect("run kube-kms key")
}

/// `kube-kms key ARGS`, which must succeed; returns stdout.
fn key_ok(dir: &Path, moto: &Moto, prefix: &str, args: &[&str]) -> String {
    let output = key_command(dir, moto, prefix, args);
    plugin::key_stdout(output, args)
}

/// `key list --format json` as (id, state, key_id).
fn list(dir: &Path, moto: &Moto, prefix: &str) -> Vec<(u64, String, String)> {
    let text = key_ok(dir, moto, prefix, &["list", "--format", "json"]);
    plugin::key_list_rows(&text)
}

/// `kube-kms serve --backend aws-kms` as a child process.
struct AwsServe;

impl AwsServe {
    async fn start(dir: &Path, moto: &Moto, prefix: &str, extra: &[&str]) -> ServeProcess {
        let socket = dir.join("kms.sock");
        let log = dir.join("serve.log");
        let mut command = Command::new(KUBE_KMS);
        command
            .arg("serve")
            .args(aws_flags(moto, prefix))
            .arg("--socket")
            .arg(&socket)
            .args(extra);
        aws_env(&mut command, dir);
        ServeProcess::spawn(command, socket, log).await
    }
}

/// A row of `key list`.
fn row(id: u64, state: &str, key_id: &str) -> (u64, String, String) {
    (id, state.to_owned(), key_id.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_rotation_disable_and_destroy() {
    let dir = temp_dir();
    let moto = Moto::start(dir.path());
    let prefix = "alias/kube-kms/lifecycle";
    // On an empty ring, rotate creates version 1 (as on an empty PKCS#11 token).
    let created = key_ok(dir.path(), &moto, prefix, &["rotate"]);
    assert!(created.contains("created version 1"), "{created}");

    let serve = AwsServe::start(
        dir.path(),
        &moto,
        prefix,
        &[
            "--aws-refresh-interval",
            "300ms",
            "--self-test-interval",
            "500ms",
        ],
    )
    .await;
    let mut client = serve.client().await;
    let status = client.status().await.unwrap();
    assert_eq!(status.version, "v2");
    assert_eq!(status.healthz, "ok");
    let first_key_id = status.key_id.clone();
    assert!(first_key_id.starts_with("kk-aws-v1-"), "{first_key_id}");
    assert_eq!(
        list(dir.path(), &moto, prefix),
        [row(1, "primary", &first_key_id)]
    );

    let first_seed = seed();
    let first = client.encrypt(&first_seed, "e1").await.unwrap();
    assert_eq!(first.key_id, first_key_id);
    assert!(first.ciphertext.len() <= 1024, "{}", first.ciphertext.len());
    assert_eq!(first.ciphertext.first(), Some(&0xA1));
    assert!(!first.ciphertext.windows(32).any(|w| w == &first_seed[..]));
    let opened = client.decrypt_encrypted(&first, "d1").await.unwrap();
    assert_eq!(opened.expose_secret(), &first_seed[..]);
    // Randomized: the same seed never gives the same ciphertext.
    let twice = client.encrypt(&first_seed, "e1b").await.unwrap();
    assert_ne!(twice.ciphertext, first.ciphertext);

    // Rotation: Status moves to version 2, Encrypt follows, old ciphertexts still open.
    let rotated = key_ok(dir.path(), &moto, prefix, &["rotate"]);
    assert!(rotated.contains("version 2"), "{rotated}");
    let status = wait_status(&mut client, Duration::from_secs(10), "rotation", |s| {
        s.key_id != first_key_id
    })
    .await;
    let second_key_id = status.key_id;
    assert!(second_key_id.starts_with("kk-aws-v2-"), "{second_key_id}");
    let second_seed = seed();
    let second = client.encrypt(&second_seed, "e2").await.unwrap();
    assert_eq!(second.key_id, second_key_id);
    let old = client.decrypt_encrypted(&first, "d-old").await.unwrap();
    assert_eq!(old.expose_secret(), &first_seed[..]);
    let new = client.decrypt_encrypted(&second, "d-new").await.unwrap();
    assert_eq!(new.expose_secret(), &second_seed[..]);
    assert_eq!(
        list(dir.path(), &moto, prefix),
        [
            row(1, "enabled", &first_key_id),
            row(2, "primary", &second_key_id)
        ]
    );

    // The state machine's rules: the primary cannot be disabled.
    let refused = key_command(dir.path(), &moto, prefix, &["disable", "2"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("primary"));

    // Disable v1 (DisableKey): its seeds stop opening once the plugin refreshes; enable: back.
    key_ok(dir.path(), &moto, prefix, &["disable", "1"]);
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
    key_ok(dir.path(), &moto, prefix, &["enable", "1"]);
    let started = Instant::now();
    while client.decrypt_encrypted(&first, "d-enabled").await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "an enabled version does not decrypt"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Destroy: refused while enabled, refused without scan reports, then forced.
    let refused = key_command(dir.path(), &moto, prefix, &["destroy", "1"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("disable it first"));
    key_ok(dir.path(), &moto, prefix, &["disable", "1"]);
    let refused = key_command(dir.path(), &moto, prefix, &["destroy", "1"]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("without proof"), "{stderr}");
    assert!(stderr.contains("--backend aws-kms"), "{stderr}");
    let destroyed = key_ok(
        dir.path(),
        &moto,
        prefix,
        &["destroy", "1", "--force", "--aws-pending-window-days", "7"],
    );
    assert!(destroyed.contains("cancel-key-deletion"), "{destroyed}");
    assert_eq!(
        list(dir.path(), &moto, prefix),
        [
            row(1, "destroyed", &first_key_id),
            row(2, "primary", &second_key_id)
        ]
    );
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
    // A third rotation never reuses a number.
    key_ok(dir.path(), &moto, prefix, &["rotate"]);
    let versions = list(dir.path(), &moto, prefix);
    assert_eq!(versions.len(), 3);
    assert!(versions[2].2.starts_with("kk-aws-v3-"));
    assert_eq!(versions[2].1, "primary");
    assert!(serve.stderr().contains("serving KMS v2"));
}

/// A KMS client of the test's own, to forge ciphertexts as someone with
/// `kms:Encrypt` on the same key would.
fn sdk_client(moto: &Moto) -> aws_sdk_kms::Client {
    use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region};
    let config = aws_sdk_kms::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(moto.url())
        .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
        .http_client(
            aws_smithy_http_client::Builder::new()
                .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                    aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                ))
                .build_https(),
        )
        .build();
    aws_sdk_kms::Client::from_conf(config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_encryption_context_tampering_and_unknown_key_ids_are_rejected() {
    let dir = temp_dir();
    let moto = Moto::start(dir.path());
    let prefix = "alias/kube-kms/context";
    key_ok(dir.path(), &moto, prefix, &["rotate"]);
    key_ok(dir.path(), &moto, prefix, &["rotate"]);
    let versions = list(dir.path(), &moto, prefix);
    let (v1, v2) = (versions[0].2.clone(), versions[1].2.clone());
    let serve = AwsServe::start(dir.path(), &moto, prefix, &[]).await;
    let mut client = serve.client().await;
    assert_eq!(client.status().await.unwrap().key_id, v2);
    let seed = seed();
    let wrapped = client.encrypt(&seed, "e").await.unwrap();
    let none = no_annotations();

    // Under another key_id of the same ring: another KMS key and context.
    let error = client
        .decrypt(&wrapped.ciphertext, &v1, &none, "swap")
        .await
        .unwrap_err();
    assert_eq!(code_of(error), tonic::Code::InvalidArgument);

    // The right KMS key, but encrypted without kube-kms' context (or with
    // another key_id in it): someone with kms:Encrypt cannot forge a seed.
    let kms = sdk_client(&moto);
    let v2_kms_key = v2.strip_prefix("kk-aws-v2-").unwrap();
    for context in [None, Some(v1.as_str()), Some("kk-aws-v2-other")] {
        let mut request = kms
            .encrypt()
            .key_id(v2_kms_key)
            .plaintext(aws_sdk_kms::primitives::Blob::new(seed.clone()));
        if let Some(key_id) = context {
            request = request
                .encryption_context("kube-kms:key-id", key_id)
                .encryption_context("kube-kms:format", "dek-seed/v1");
        }
        let blob = request.send().await.unwrap();
        let mut forged = vec![0xA1];
        forged.extend_from_slice(blob.ciphertext_blob().unwrap().as_ref());
        let error = client
            .decrypt(&forged, &v2, &none, "forged")
            .await
            .unwrap_err();
        assert_eq!(
            code_of(error),
            tonic::Code::InvalidArgument,
            "context {context:?}"
        );
    }
    // The same forgery with the exact context opens: the check above is the context's doing.
    let exact = kms
        .encrypt()
        .key_id(v2_kms_key)
        .plaintext(aws_sdk_kms::primitives::Blob::new(seed.clone()))
        .encryption_context("kube-kms:key-id", v2.as_str())
        .encryption_context("kube-kms:format", "dek-seed/v1")
        .send()
        .await
        .unwrap();
    let mut framed = vec![0xA1];
    framed.extend_from_slice(exact.ciphertext_blob().unwrap().as_ref());
    let opened = client.decrypt(&framed, &v2, &none, "exact").await.unwrap();
    assert_eq!(opened.expose_secret(), &seed[..]);

    // Tampering: the tag, the format byte, truncation, garbage.
    let mut tampered = wrapped.ciphertext.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let error = client
        .decrypt(&tampered, &v2, &none, "tag")
        .await
        .unwrap_err();
    assert_eq!(code_of(error), tonic::Code::InvalidArgument);
    for index in [1, tampered.len() / 2] {
        let mut tampered = wrapped.ciphertext.clone();
        tampered[index] ^= 0x20;
        assert!(
            client.decrypt(&tampered, &v2, &none, "mid").await.is_err(),
            "byte {index}"
        );
    }
    let mut format = wrapped.ciphertext.clone();
    format[0] = 0x01;
    let error = client
        .decrypt(&format, &v2, &none, "format")
        .await
        .unwrap_err();
    assert_eq!(code_of(error), tonic::Code::InvalidArgument);
    for short in [&[][..], &[0xA1][..], &wrapped.ciphertext[..10]] {
        let error = client
            .decrypt(short, &v2, &none, "short")
            .await
            .unwrap_err();
        assert_eq!(code_of(error), tonic::Code::InvalidArgument);
    }
    // Unknown key_ids: not ours, or well-formed but no such version.
    for key_id in [
        "kk-v1-0123456789abcdef",
        "kk-aws-v9-00000000-0000-0000-0000-000000000000",
    ] {
        let error = client
            .decrypt(&wrapped.ciphertext, key_id, &none, "unknown")
            .await
            .unwrap_err();
        assert_eq!(code_of(error), tonic::Code::NotFound, "{key_id}");
    }
    // Still the genuine one opens, and the log holds no seed.
    let opened = client.decrypt_encrypted(&wrapped, "ok").await.unwrap();
    assert_eq!(opened.expose_secret(), &seed[..]);
    let hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
    assert!(!serve.stderr().contains(&hex));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_unreachable_turns_healthz_and_readyz_then_recovers() {
    let dir = temp_dir();
    let moto = Moto::start(dir.path());
    let prefix = "alias/kube-kms/outage";
    key_ok(dir.path(), &moto, prefix, &["rotate"]);
    let metrics_port = etcd::free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let serve = AwsServe::start(
        dir.path(),
        &moto,
        prefix,
        &[
            "--self-test-interval",
            "300ms",
            "--aws-call-timeout",
            "1s",
            "--aws-refresh-interval",
            "1s",
            "--metrics-addr",
            &metrics,
        ],
    )
    .await;
    let mut client = serve.client().await;
    let healthy = client.status().await.unwrap();
    assert_eq!(healthy.healthz, "ok");
    let seed = seed();
    let wrapped = client.encrypt(&seed, "before").await.unwrap();
    assert_eq!(http_get(metrics_port, "/readyz").0, 200);

    // KMS stops answering (the process is frozen: connections hang, as on a partition).
    moto.signal(Signal::STOP);
    let down = wait_status(&mut client, Duration::from_secs(20), "outage", |s| {
        s.healthz != "ok"
    })
    .await;
    assert!(
        down.healthz.contains("AWS KMS") || down.healthz.contains("self-test"),
        "{}",
        down.healthz
    );
    // Status stays cheap: it answers at once while KMS hangs, with the same key_id.
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
    let (code, body) = http_get(metrics_port, "/readyz");
    assert_eq!(code, 503, "{body}");

    // Back: healthz and readyz recover without a restart; old ciphertexts open.
    moto.signal(Signal::CONT);
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
    let log = serve.stderr();
    assert!(log.contains("self-test failed"), "{log}");
    assert!(log.contains("self-test passed"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_inspect_verifies_values_through_the_aws_plugin() {
    let dir = temp_dir();
    let moto = Moto::start(dir.path());
    let prefix = "alias/kube-kms/inspect";
    key_ok(dir.path(), &moto, prefix, &["rotate"]);
    let serve = AwsServe::start(dir.path(), &moto, prefix, &[]).await;
    let mut client = serve.client().await;
    let etcd = etcd::Etcd::start();

    // Play kube-apiserver: one seed per key_id, wrapped by the plugin; values sealed with it.
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
    key_ok(dir.path(), &moto, prefix, &["rotate"]);
    serve.signal(Signal::HUP);
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
        let mut command = Command::new(ETCD_INSPECT);
        command
            .args([
                "scan",
                "--endpoints",
                &etcd.endpoint,
                "--verify-with",
                &socket,
                "--format",
                "json",
            ])
            .args(extra);
        command.output().expect("run etcd-inspect")
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
    // Two distinct seeds: two Decrypt calls, whatever the number of values.
    assert_eq!(summary["verify"]["decrypt_calls"], 2, "{summary}");
    // The plugin's Status names v2 as current: the two values under v1 are
    // stale, the only findings (hence exit 1).
    assert_eq!(
        summary["findings"],
        serde_json::json!({"stale-key-id": 2}),
        "{summary}"
    );
    assert_eq!(
        summary["stale"]["current_key_ids"][0],
        second.key_id.as_str()
    );
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    // With v1 allowed too, the scan is clean.
    let both = format!("{},{}", first.key_id, second.key_id);
    let output = scan(&["--allowed-key-ids", &both]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    // A value whose wrapped seed was tampered with fails verification.
    let mut broken = first.clone();
    let last = broken.ciphertext.len() - 1;
    broken.ciphertext[last] ^= 1;
    let (key, value) = put("d", &first_seed, &broken);
    etcd.put(key.as_bytes(), value).await;
    let output = scan(&["--allowed-key-ids", &both]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    let summary = summary_of(&stdout);
    assert_eq!(summary["verify"]["verified"]["kms-v2"], 3, "{summary}");
    assert_ne!(
        summary["verify"]["failed"],
        serde_json::json!({}),
        "{summary}"
    );
    assert!(
        !summary["verify"]["decrypt_failures"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{summary}"
    );
}

#[test]
fn credentials_are_never_flags() {
    let output = Command::new(KUBE_KMS)
        .args(["serve", "--help"])
        .output()
        .expect("kube-kms serve --help");
    let help = String::from_utf8_lossy(&output.stdout).to_lowercase();
    assert!(help.contains("--aws-endpoint-url"), "{help}");
    for forbidden in ["--aws-access-key", "--aws-secret", "--aws-session-token"] {
        assert!(!help.contains(forbidden), "{forbidden} in serve --help");
    }
}

/// Issue 15 §3: two `kube-kms key rotate --backend aws-kms` at once, twenty
/// times. The alias `P/vN` is the compare-and-swap: the loser of a version
/// number tries the next one, so both succeed, and every version each one
/// reported survives with a distinct key_id.
#[test]
fn concurrent_rotations_in_aws_kms_lose_no_key() {
    let dir = temp_dir();
    let moto = Moto::start(dir.path());
    let prefix = "alias/kube-kms/race";
    key_ok(dir.path(), &moto, prefix, &["rotate"]);
    let mut made = Vec::new();
    for _round in 0..20 {
        let rotations: Vec<Child> = (0..2)
            .map(|_| {
                let mut command = Command::new(KUBE_KMS);
                command
                    .args(["key", "rotate"])
                    .args(aws_flags(&moto, prefix))
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                aws_env(&mut command, dir.path());
                command.spawn().expect("start kube-kms key rotate")
            })
            .collect();
        for rotation in rotations {
            let output = rotation.wait_with_output().expect("kube-kms key rotate");
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(
                output.status.success(),
                "{stdout}{}",
                String::from_utf8_lossy(&output.stderr)
            );
            // "rotated: version N (KEY_ID) is now primary; ..."
            let key_id = stdout
                .split_once('(')
                .and_then(|(_, rest)| rest.split_once(')'))
                .map(|(key_id, _)| key_id.to_owned())
                .unwrap_or_else(|| panic!("no key_id in {stdout}"));
            made.push(key_id);
        }
    }
    let listed = list(dir.path(), &moto, prefix);
    assert_eq!(listed.len(), 41, "{listed:?}");
    let key_ids: std::collections::BTreeSet<&str> = listed
        .iter()
        .map(|(_, _, key_id)| key_id.as_str())
        .collect();
    assert_eq!(key_ids.len(), 41, "{listed:?}");
    for key_id in &made {
        assert!(
            key_ids.contains(key_id.as_str()),
            "{key_id} vanished: {listed:?}"
        );
    }
    assert_eq!(
        listed
            .iter()
            .filter(|(_, state, _)| state == "primary")
            .count(),
        1,
        "{listed:?}"
    );
    // The race was run: some rotations lost a version number (their unused
    // key is scheduled for deletion) and went on to the next one.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let keys = runtime.block_on(async {
        let client = sdk_client(&moto);
        let mut keys = 0;
        let mut marker = None;
        loop {
            let page = client
                .list_keys()
                .set_marker(marker.take())
                .send()
                .await
                .expect("ListKeys");
            keys += page.keys().len();
            match page.next_marker() {
                Some(next) if page.truncated() => marker = Some(next.to_owned()),
                _ => break keys,
            }
        }
    });
    assert!(
        keys > 41,
        "{keys} keys: no rotation ever collided, the test did not exercise the race"
    );
}
