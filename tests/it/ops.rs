//! Operating the plugin (issue 5): the Prometheus endpoint after real traffic
//! through the real socket, readiness and the gRPC health service flipping
//! when the keyring file becomes unusable and back, JSON logs, the deploy
//! manifests' exact `serve` arguments, `--version`, completions and man pages.
use crate::common::plugin;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use kube_kms::backend::file::FileBackend;
use kube_kms::client::KmsClient;
use kube_kms::proto::v2::DecryptRequest;
use kube_kms::server::{
    ReloadHandle, Server, ServerError, ServerOptions, SocketAddress, SocketListener,
    DEFAULT_SOCKET_MODE,
};
use tonic::transport::{Channel, Endpoint, Uri};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use plugin::{init_keyring, rotate, seed, temp_dir, KUBE_KMS};

const ETCD_INSPECT: &str = env!("CARGO_BIN_EXE_etcd-inspect");
const KMS_SERVICE: &str = "v2.KeyManagementService";

// ---------------------------------------------------------------------------
// Helpers: an in-process server with the HTTP listener, HTTP GET, the
// Prometheus text format, the gRPC health client
// ---------------------------------------------------------------------------

struct Running {
    socket: PathBuf,
    http: std::net::SocketAddr,
    reload: ReloadHandle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), ServerError>>,
}

impl Running {
    async fn start(dir: &Path, keyring: &Path, options: ServerOptions) -> Self {
        let socket = dir.join("kms.sock");
        let backend = Arc::new(FileBackend::open(keyring).expect("open the keyring"));
        let listener =
            SocketListener::bind(&SocketAddress::Path(socket.clone()), DEFAULT_SOCKET_MODE)
                .expect("bind the socket");
        let http = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the metrics listener");
        let http_address = http.local_addr().expect("metrics address");
        let server = Server::new(backend, options).with_http(http);
        let reload = server.reload_handle();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(listener, async {
            let _ = stopped.await;
        }));
        Self {
            socket,
            http: http_address,
            reload,
            stop: Some(stop),
            task,
        }
    }

    async fn client(&self) -> KmsClient {
        KmsClient::connect_path(&self.socket)
            .await
            .expect("connect")
    }

    async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.http, path).await
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task)
            .await
            .expect("server task")
            .expect("server result");
    }
}

/// One HTTP/1.1 GET over a real TCP connection: status code and body.
async fn http_get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .unwrap_or_else(|error| panic!("connect to {address}: {error}"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("response within 10 s")
        .expect("read the response");
    let response = String::from_utf8(response).expect("UTF-8 response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {response:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, body.to_owned())
}

/// Metric samples: (name, sorted labels) → value. Panics on a line that is
/// not valid exposition.
fn parse_samples(text: &str) -> BTreeMap<(String, Vec<(String, String)>), f64> {
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            other => other
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), Vec::new()),
            Some((name, rest)) => {
                let rest = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("bad labels in {line:?}"));
                let mut labels: Vec<(String, String)> = rest
                    .split(',')
                    .map(|pair| {
                        let (key, value) = pair
                            .split_once('=')
                            .unwrap_or_else(|| panic!("bad label in {line:?}"));
                        let value = value
                            .strip_prefix('"')
                            .and_then(|v| v.strip_suffix('"'))
                            .unwrap_or_else(|| panic!("unquoted label in {line:?}"));
                        (key.to_owned(), value.to_owned())
                    })
                    .collect();
                labels.sort();
                (name.to_owned(), labels)
            }
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        samples.insert((name, labels), value);
    }
    samples
}

struct Scrape {
    text: String,
    samples: BTreeMap<(String, Vec<(String, String)>), f64>,
}

impl Scrape {
    async fn of(running: &Running) -> Self {
        let (status, text) = running.get("/metrics").await;
        assert_eq!(status, 200, "{text}");
        let samples = parse_samples(&text);
        Self { text, samples }
    }

    /// The value of `name{labels}`; 0 when the series is absent (as Prometheus treats it).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        labels.sort();
        self.samples
            .get(&(name.to_owned(), labels))
            .copied()
            .unwrap_or(0.0)
    }

    fn requests(&self, method: &str, code: &str) -> f64 {
        self.value(
            "kube_kms_requests_total",
            &[("method", method), ("code", code)],
        )
    }

    /// The key_ids of every `kube_kms_key_info` series.
    fn key_infos(&self) -> Vec<String> {
        self.samples
            .iter()
            .filter(|((name, _), _)| name == "kube_kms_key_info")
            .map(|((_, labels), value)| {
                assert_eq!(*value, 1.0);
                assert_eq!(labels.len(), 1, "{labels:?}");
                labels[0].1.clone()
            })
            .collect()
    }
}

async fn health_client(socket: &Path) -> HealthClient<Channel> {
    let socket = socket.to_path_buf();
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                tokio::net::UnixStream::connect(socket)
                    .await
                    .map(TokioIo::new)
            }
        }))
        .await
        .expect("connect the health client");
    HealthClient::new(channel)
}

async fn grpc_health(client: &mut HealthClient<Channel>, service: &str) -> ServingStatus {
    let response = client
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .unwrap_or_else(|status| panic!("grpc.health.v1.Health/Check({service:?}): {status}"));
    ServingStatus::try_from(response.into_inner().status).expect("a known serving status")
}

/// Polls `probe` until it returns `Some` (panics after `limit` with `what`).
async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn fast_options() -> ServerOptions {
    ServerOptions {
        shutdown_grace: Duration::from_secs(2),
        self_test_interval: Duration::from_millis(200),
        reload_poll_interval: Some(Duration::from_millis(50)),
        ..ServerOptions::default()
    }
}

// ---------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_calls_made_per_method_code_and_failure_reason() {
    let dir = temp_dir();
    let keyring = init_keyring(dir.path());
    let options = ServerOptions {
        reload_poll_interval: None,
        ..fast_options()
    };
    let running = Running::start(dir.path(), &keyring, options).await;
    let before = Scrape::of(&running).await;
    assert_eq!(before.requests("Encrypt", "OK"), 0.0);
    let first_key = before.key_infos();
    assert_eq!(first_key.len(), 1, "{}", before.text);

    let mut client = running.client().await;
    let mut wrapped = Vec::new();
    for index in 0..7 {
        let encrypted = client
            .encrypt(&seed(), &format!("uid-{index}"))
            .await
            .expect("Encrypt");
        wrapped.push(encrypted);
    }
    for encrypted in wrapped.iter().take(5) {
        client
            .decrypt_encrypted(encrypted, "uid-d")
            .await
            .expect("Decrypt");
    }
    for _ in 0..3 {
        client.status().await.expect("Status");
    }
    let raw_decrypt = |ciphertext: Vec<u8>, key_id: String| DecryptRequest {
        ciphertext,
        uid: "uid-bad".to_owned(),
        key_id,
        annotations: Default::default(),
    };
    // 2 × unknown key_id → NotFound; 3 × tampered → InvalidArgument
    // (authentication_failed); 1 × oversized ciphertext → InvalidArgument
    // (request_too_large).
    let good = &wrapped[0];
    for _ in 0..2 {
        let status = client
            .raw()
            .decrypt(raw_decrypt(
                good.ciphertext.clone(),
                "kk-v9-0000000000000000".to_owned(),
            ))
            .await
            .expect_err("unknown key_id");
        assert_eq!(status.code(), tonic::Code::NotFound);
    }
    for flip in 0..3 {
        let mut tampered = good.ciphertext.clone();
        let last = tampered.len() - 1 - flip;
        tampered[last] ^= 0x55;
        let status = client
            .raw()
            .decrypt(raw_decrypt(tampered, good.key_id.clone()))
            .await
            .expect_err("tampered");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }
    let status = client
        .raw()
        .decrypt(raw_decrypt(vec![0u8; 2048], good.key_id.clone()))
        .await
        .expect_err("oversized");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    let after = Scrape::of(&running).await;
    assert_eq!(after.requests("Encrypt", "OK"), 7.0, "{}", after.text);
    assert_eq!(after.requests("Decrypt", "OK"), 5.0, "{}", after.text);
    assert_eq!(after.requests("Status", "OK"), 3.0, "{}", after.text);
    assert_eq!(after.requests("Decrypt", "NotFound"), 2.0, "{}", after.text);
    assert_eq!(
        after.requests("Decrypt", "InvalidArgument"),
        4.0,
        "{}",
        after.text
    );
    assert_eq!(after.requests("Encrypt", "InvalidArgument"), 0.0);
    let histogram_count = |method: &str, code: &str| {
        after.value(
            "kube_kms_request_duration_seconds_count",
            &[("method", method), ("code", code)],
        )
    };
    assert_eq!(histogram_count("Encrypt", "OK"), 7.0);
    assert_eq!(histogram_count("Decrypt", "InvalidArgument"), 4.0);
    let inf_bucket = after.value(
        "kube_kms_request_duration_seconds_bucket",
        &[("method", "Encrypt"), ("code", "OK"), ("le", "+Inf")],
    );
    assert_eq!(inf_bucket, 7.0, "{}", after.text);
    let millisecond_bucket = after.value(
        "kube_kms_request_duration_seconds_bucket",
        &[("method", "Encrypt"), ("code", "OK"), ("le", "0.001")],
    );
    assert!(
        (1.0..=7.0).contains(&millisecond_bucket),
        "sub-millisecond buckets hold the wraps: {}",
        after.text
    );
    assert!(
        after.text.contains("le=\"5e-05\""),
        "sub-millisecond buckets exist: {}",
        after.text
    );
    let failures =
        |reason: &str| after.value("kube_kms_decrypt_failures_total", &[("reason", reason)]);
    assert_eq!(failures("unknown_key_id"), 2.0);
    assert_eq!(failures("authentication_failed"), 3.0);
    assert_eq!(failures("request_too_large"), 1.0);
    assert_eq!(failures("key_disabled"), 0.0);
    assert_eq!(after.key_infos(), first_key);
    assert_eq!(
        after.value("kube_kms_keyring_versions", &[("state", "primary")]),
        1.0
    );
    assert_eq!(
        after.value("kube_kms_keyring_versions", &[("state", "enabled")]),
        0.0
    );
    assert_eq!(after.value("kube_kms_self_test_ok", &[]), 1.0);
    assert_eq!(after.value("kube_kms_ready", &[]), 1.0);
    assert_eq!(
        after.value("kube_kms_keyring_reloads_total", &[("result", "success")]),
        0.0
    );
    let started_at = after.value(
        "kube_kms_keyring_last_reload_success_timestamp_seconds",
        &[],
    );
    assert!(started_at > 1.6e9, "{}", after.text);

    // Rotate, reload: key_info names the new primary only; the old version is
    // counted as enabled; then disable it and watch Decrypt fail as key_disabled.
    let new_key = rotate(&keyring);
    running.reload.request();
    let rotated = eventually(
        "key_info after the rotation",
        Duration::from_secs(10),
        || async {
            let scrape = Scrape::of(&running).await;
            // The reload task counts a reload just after it swaps the keyring
            // in: wait for both, or a scrape in between sees the new key_info
            // with the old count.
            let counted =
                scrape.value("kube_kms_keyring_reloads_total", &[("result", "success")]) > 0.0;
            (scrape.key_infos() == [new_key.clone()] && counted).then_some(scrape)
        },
    )
    .await;
    assert_ne!(first_key, std::slice::from_ref(&new_key));
    assert_eq!(
        rotated.value("kube_kms_keyring_versions", &[("state", "primary")]),
        1.0
    );
    assert_eq!(
        rotated.value("kube_kms_keyring_versions", &[("state", "enabled")]),
        1.0
    );
    assert_eq!(
        rotated.value("kube_kms_keyring_reloads_total", &[("result", "success")]),
        1.0
    );
    assert!(
        rotated.value(
            "kube_kms_keyring_last_reload_success_timestamp_seconds",
            &[]
        ) >= started_at
    );
    kube_kms::keyring::modify(&keyring, |ring| ring.disable(1)).expect("disable v1");
    running.reload.request();
    eventually("v1 disabled", Duration::from_secs(10), || async {
        let scrape = Scrape::of(&running).await;
        (scrape.value("kube_kms_keyring_versions", &[("state", "disabled")]) == 1.0).then_some(())
    })
    .await;
    let status = client
        .decrypt_encrypted(good, "uid-disabled")
        .await
        .expect_err("v1 is disabled");
    assert_eq!(
        status.status().map(tonic::Status::code),
        Some(tonic::Code::FailedPrecondition)
    );
    let last = Scrape::of(&running).await;
    assert_eq!(
        last.value(
            "kube_kms_decrypt_failures_total",
            &[("reason", "key_disabled")]
        ),
        1.0
    );
    assert_eq!(last.requests("Decrypt", "FailedPrecondition"), 1.0);
    assert_eq!(last.requests("Encrypt", "OK"), 7.0);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_listener_answers_only_its_endpoints() {
    let dir = temp_dir();
    let keyring = init_keyring(dir.path());
    let running = Running::start(dir.path(), &keyring, fast_options()).await;
    assert_eq!(running.get("/livez").await, (200, "ok\n".to_owned()));
    assert_eq!(running.get("/readyz").await, (200, "ok\n".to_owned()));
    let (status, body) = running.get("/nope").await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = running.get("/metrics?x=1").await;
    assert_eq!(status, 200);
    running.stop().await;
}

// ---------------------------------------------------------------------------
// Health: /readyz and grpc.health.v1 follow the keyring file
// ---------------------------------------------------------------------------

/// Every base64 "material" value of a keyring file (to check they never leak).
fn materials(keyring: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(keyring).expect("read the keyring");
    let value: serde_json::Value = serde_json::from_str(&text).expect("keyring JSON");
    let mut found = Vec::new();
    fn walk(value: &serde_json::Value, found: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, inner) in map {
                    match (key.as_str(), inner) {
                        ("material", serde_json::Value::String(text)) => found.push(text.clone()),
                        _ => walk(inner, found),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|item| walk(item, found)),
            _ => {}
        }
    }
    walk(&value, &mut found);
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_and_grpc_health_flip_when_the_keyring_file_is_unusable_and_back() {
    let dir = temp_dir();
    let keyring = init_keyring(dir.path());
    let secrets = materials(&keyring);
    assert!(!secrets.is_empty(), "the keyring has material to guard");
    let running = Running::start(dir.path(), &keyring, fast_options()).await;
    let mut health = health_client(&running.socket).await;
    assert_eq!(running.get("/readyz").await.0, 200);
    assert_eq!(
        grpc_health(&mut health, KMS_SERVICE).await,
        ServingStatus::Serving
    );
    assert_eq!(grpc_health(&mut health, "").await, ServingStatus::Serving);
    let mut kms = running.client().await;
    let serving_key = kms.status().await.expect("Status").key_id;

    // 1. The keyring file disappears (e.g. a botched distribution to the node).
    let saved = dir.path().join("saved.json");
    std::fs::rename(&keyring, &saved).expect("move the keyring away");
    let body = eventually(
        "/readyz 503 without the keyring",
        Duration::from_secs(10),
        || async {
            let (status, body) = running.get("/readyz").await;
            (status == 503).then_some(body)
        },
    )
    .await;
    assert!(
        body.starts_with("not ready: keyring reload failing"),
        "{body}"
    );
    assert!(
        body.contains("keyring.json"),
        "the reason names the file: {body}"
    );
    for secret in &secrets {
        assert!(
            !body.contains(secret.as_str()),
            "key material in /readyz: {body}"
        );
    }
    assert_eq!(
        running.get("/livez").await,
        (200, "ok\n".to_owned()),
        "still alive"
    );
    assert_eq!(
        grpc_health(&mut health, KMS_SERVICE).await,
        ServingStatus::NotServing
    );
    assert_eq!(
        grpc_health(&mut health, "").await,
        ServingStatus::NotServing
    );
    // The loaded keyring keeps serving: Status stays ok, Encrypt works.
    let status = kms.status().await.expect("Status");
    assert_eq!(status.healthz, "ok");
    assert_eq!(status.key_id, serving_key);
    kms.encrypt(&seed(), "uid-degraded")
        .await
        .expect("Encrypt still works");
    let scrape = Scrape::of(&running).await;
    assert_eq!(scrape.value("kube_kms_ready", &[]), 0.0);
    assert_eq!(scrape.value("kube_kms_self_test_ok", &[]), 1.0);
    assert!(scrape.value("kube_kms_keyring_reloads_total", &[("result", "failure")]) >= 1.0);
    for secret in &secrets {
        assert!(!scrape.text.contains(secret.as_str()));
    }

    // 2. Put back: ready again, SERVING again.
    std::fs::rename(&saved, &keyring).expect("restore the keyring");
    eventually(
        "/readyz 200 after the fix",
        Duration::from_secs(10),
        || async { (running.get("/readyz").await.0 == 200).then_some(()) },
    )
    .await;
    assert_eq!(
        grpc_health(&mut health, KMS_SERVICE).await,
        ServingStatus::Serving
    );
    assert_eq!(grpc_health(&mut health, "").await, ServingStatus::Serving);

    // 3. A corrupt file (truncated write) flips it the same way; a valid
    //    rotated keyring written over it recovers.
    let good = std::fs::read(&keyring).expect("read the keyring");
    std::fs::copy(&keyring, &saved).expect("keep a copy");
    std::fs::write(&keyring, &good[..good.len() / 2]).expect("truncate the keyring");
    let body = eventually(
        "/readyz 503 with a corrupt keyring",
        Duration::from_secs(10),
        || async {
            let (status, body) = running.get("/readyz").await;
            (status == 503).then_some(body)
        },
    )
    .await;
    assert!(body.contains("keyring reload failing"), "{body}");
    for secret in &secrets {
        assert!(
            !body.contains(secret.as_str()),
            "key material in /readyz: {body}"
        );
    }
    assert_eq!(
        grpc_health(&mut health, KMS_SERVICE).await,
        ServingStatus::NotServing
    );
    std::fs::rename(&saved, &keyring).expect("restore the keyring");
    let new_key = rotate(&keyring);
    // A reload poll can land between the restore and the rotation and turn
    // /readyz green with the old primary: wait for the rotated one instead.
    eventually(
        "the rotated primary is served",
        Duration::from_secs(10),
        || async {
            let status = kms.clone().status().await.ok()?;
            (status.key_id == new_key).then_some(())
        },
    )
    .await;
    assert_eq!(
        running.get("/readyz").await.0,
        200,
        "ready after the rotation"
    );
    assert_eq!(
        grpc_health(&mut health, KMS_SERVICE).await,
        ServingStatus::Serving
    );
    running.stop().await;
}

// ---------------------------------------------------------------------------
// The real binary: JSON logs, the deploy manifests' arguments
// ---------------------------------------------------------------------------

/// A free TCP port on 127.0.0.1 (bound then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_parse_and_carry_the_call_fields_at_debug() {
    let dir = temp_dir();
    let keyring = init_keyring(dir.path());
    let port = free_port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let mut serve = plugin::ServeProcess::start(
        dir.path(),
        &keyring,
        &[
            "--log-format",
            "json",
            "--log-level",
            "debug",
            "--reload-poll-interval",
            "50ms",
            "--metrics-addr",
            &metrics_addr,
        ],
    )
    .await;
    let mut client = serve.client().await;
    let plaintext = seed();
    let encrypted = client
        .encrypt(&plaintext, "uid-json-1")
        .await
        .expect("Encrypt");
    let opened = client
        .decrypt_encrypted(&encrypted, "uid-json-2")
        .await
        .expect("Decrypt");
    assert_eq!(opened.expose_secret(), plaintext.as_slice());
    let status = client
        .raw()
        .decrypt(DecryptRequest {
            ciphertext: encrypted.ciphertext.clone(),
            uid: "uid-json-3\"\n".to_owned(),
            key_id: "kk-v9-0000000000000000".to_owned(),
            annotations: Default::default(),
        })
        .await
        .expect_err("unknown key_id");
    assert_eq!(status.code(), tonic::Code::NotFound);
    let new_key = rotate(&keyring);
    plugin::wait_for_key_id(&mut client, &new_key, Duration::from_secs(10)).await;
    let address: std::net::SocketAddr = metrics_addr.parse().expect("address");
    assert_eq!(http_get(address, "/readyz").await.0, 200);
    serve.signal(rustix::process::Signal::TERM);
    assert!(serve.wait_exit(Duration::from_secs(10)).await.success());

    let log = serve.stderr();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|error| panic!("not JSON ({error}): {line}"))
        })
        .collect();
    assert!(lines.len() >= 5, "{log}");
    for line in &lines {
        for field in ["timestamp", "level", "message"] {
            assert!(line.get(field).is_some(), "no {field} in {line}");
        }
    }
    let call = |method: &str, uid: &str| {
        lines
            .iter()
            .find(|line| line["method"] == method && line["uid"] == uid)
            .unwrap_or_else(|| panic!("no {method} line for {uid}:\n{log}"))
            .clone()
    };
    let encrypt = call("Encrypt", "uid-json-1");
    assert_eq!(encrypt["level"], "DEBUG");
    assert_eq!(encrypt["result"], "ok");
    assert_eq!(encrypt["key_id"], encrypted.key_id.as_str());
    assert!(encrypt["duration_us"].is_u64(), "{encrypt}");
    let decrypt = call("Decrypt", "uid-json-2");
    assert_eq!(decrypt["result"], "ok");
    assert_eq!(decrypt["key_id"], encrypted.key_id.as_str());
    assert!(decrypt["duration_us"].is_u64(), "{decrypt}");
    // The client-supplied uid is escaped: one line, no raw newline or quote.
    let failed = call("Decrypt", "uid-json-3\\\"\\n");
    assert_eq!(failed["level"], "WARN");
    assert_eq!(failed["result"], "error");
    assert_eq!(failed["reason"], "unknown_key_id");
    assert_eq!(failed["code"], "NotFound");
    assert_eq!(failed["key_id"], "kk-v9-0000000000000000");
    assert!(failed["duration_us"].is_u64(), "{failed}");
    let rotation = lines
        .iter()
        .find(|line| {
            line["level"] == "INFO"
                && line["new_key_id"] == new_key.as_str()
                && line["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("key rotation"))
        })
        .unwrap_or_else(|| panic!("no rotation line at info:\n{log}"));
    assert_eq!(rotation["old_key_id"], encrypted.key_id.as_str());
    assert!(
        lines
            .iter()
            .any(|line| line["level"] == "INFO" && line["message"] == "keyring reloaded"),
        "{log}"
    );
    // Never key material or plaintext: neither the keyring's material nor the
    // seed (in any usual encoding) appears.
    let hex: String = plaintext.iter().map(|b| format!("{b:02x}")).collect();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&plaintext);
    assert!(
        !log.contains(&hex) && !log.contains(&b64),
        "plaintext in the log"
    );
    for secret in materials(&keyring) {
        assert!(!log.contains(&secret), "key material in the log");
    }
}

/// The `serve` arguments of the static pod and the systemd unit, as written.
fn deploy_serve_args() -> Vec<(&'static str, Vec<String>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let pod_text =
        std::fs::read_to_string(root.join("kube-kms.static-pod.yaml")).expect("static pod");
    let pod: serde_yaml_ng::Value = serde_yaml_ng::from_str(&pod_text).expect("static pod YAML");
    let container = &pod["spec"]["containers"][0];
    let mut pod_args: Vec<String> = ["command", "args"]
        .iter()
        .filter_map(|key| container[*key].as_sequence())
        .flatten()
        .map(|value| value.as_str().expect("string argument").to_owned())
        .collect();
    let unit = std::fs::read_to_string(root.join("kube-kms.service")).expect("systemd unit");
    let exec_start = unit
        .lines()
        .find_map(|line| line.strip_prefix("ExecStart="))
        .expect("ExecStart=");
    let mut unit_args: Vec<String> = exec_start.split_whitespace().map(str::to_owned).collect();
    let mut result = Vec::new();
    for (file, args) in [
        ("kube-kms.static-pod.yaml", &mut pod_args),
        ("kube-kms.service", &mut unit_args),
    ] {
        let serve_at = args
            .iter()
            .position(|arg| arg == "serve")
            .unwrap_or_else(|| panic!("{file}: no serve"));
        result.push((file, args[serve_at + 1..].to_vec()));
    }
    result
}

/// `args` with the deployment's paths and port replaced by test ones.
fn with_test_paths(args: &[String], keyring: &Path, socket: &Path, port: u16) -> Vec<String> {
    let mut out = Vec::new();
    let mut replace_next: Option<String> = None;
    for arg in args {
        if let Some(flag) = replace_next.take() {
            out.push(test_value(&flag, arg, keyring, socket, port));
            continue;
        }
        match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                out.push(format!(
                    "{flag}={}",
                    test_value(flag, value, keyring, socket, port)
                ));
            }
            _ => {
                if matches!(arg.as_str(), "--keyring" | "--socket" | "--metrics-addr") {
                    replace_next = Some(arg.clone());
                }
                out.push(arg.clone());
            }
        }
    }
    out
}

fn test_value(flag: &str, value: &str, keyring: &Path, socket: &Path, port: u16) -> String {
    match flag {
        "--keyring" => keyring.display().to_string(),
        "--socket" => socket.display().to_string(),
        "--metrics-addr" => {
            let (host, _) = value.rsplit_once(':').expect("HOST:PORT");
            format!("{host}:{port}")
        }
        _ => value.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_manifests_serve_arguments_start_the_server_and_probes_answer() {
    let manifests = deploy_serve_args();
    assert_eq!(manifests.len(), 2);
    for (file, args) in manifests {
        assert!(
            args.iter().any(|arg| arg.starts_with("--metrics-addr")),
            "{file}: {args:?}"
        );
        let dir = temp_dir();
        let keyring = init_keyring(dir.path());
        let socket = dir.path().join("kms.sock");
        let port = free_port();
        let args = with_test_paths(&args, &keyring, &socket, port);
        assert!(
            !args.iter().any(|arg| arg.contains("/etc/kube-kms")),
            "{args:?}"
        );
        let log_path = dir.path().join("serve.log");
        let mut child = Command::new(KUBE_KMS)
            .arg("serve")
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log_path).expect("log file"))
            .spawn()
            .expect("start kube-kms serve");
        let address: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
        let started = Instant::now();
        let ready = loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "{file}: kube-kms serve {args:?} exited ({status}): {}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            if tokio::net::TcpStream::connect(address).await.is_ok() {
                break http_get(address, "/readyz").await;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{file}: the metrics listener never came up"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(ready, (200, "ok\n".to_owned()), "{file}");
        assert_eq!(
            http_get(address, "/livez").await,
            (200, "ok\n".to_owned()),
            "{file}"
        );
        let (status, metrics) = http_get(address, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            metrics.contains("kube_kms_key_info{key_id=\"kk-v1-"),
            "{metrics}"
        );
        let mut client = KmsClient::connect_path(&socket).await.expect("connect");
        assert_eq!(client.status().await.expect("Status").healthz, "ok");
        // The manifests ask for JSON logs.
        let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
        let status = child.wait().expect("wait");
        assert!(status.success(), "{file}: exit {status}");
        let log = std::fs::read_to_string(&log_path).expect("log");
        for line in log.lines() {
            serde_json::from_str::<serde_json::Value>(line)
                .unwrap_or_else(|error| panic!("{file}: not JSON ({error}): {line}"));
        }
        assert!(log.contains("serving /metrics"), "{log}");
    }
}

#[test]
fn metrics_addr_that_cannot_be_bound_is_refused_at_start() {
    let dir = temp_dir();
    let keyring = init_keyring(dir.path());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("address").to_string();
    let output = Command::new(KUBE_KMS)
        .args(["serve", "--keyring"])
        .arg(&keyring)
        .arg("--socket")
        .arg(dir.path().join("kms.sock"))
        .args(["--metrics-addr", &address])
        .output()
        .expect("run kube-kms serve");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("--metrics-addr {address}")),
        "{stderr}"
    );
    let output = Command::new(KUBE_KMS)
        .args(["serve", "--keyring"])
        .arg(&keyring)
        .args(["--metrics-addr", "localhost"])
        .output()
        .expect("run kube-kms serve");
    assert_eq!(
        output.status.code(),
        Some(2),
        "not HOST:PORT is a usage error"
    );
}

// ---------------------------------------------------------------------------
// --version, completions, man pages
// ---------------------------------------------------------------------------

fn run_ok(binary: &str, args: &[&str]) -> String {
    let output = Command::new(binary).args(args).output().expect("run");
    assert!(
        output.status.success(),
        "{binary} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

#[test]
fn both_binaries_report_their_version() {
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        run_ok(KUBE_KMS, &["--version"]),
        format!("kube-kms {version}\n")
    );
    assert_eq!(
        run_ok(ETCD_INSPECT, &["--version"]),
        format!("etcd-inspect {version}\n")
    );
}

#[test]
fn completions_generate_for_both_binaries_and_every_shell() {
    for (binary, name, subcommand) in [
        (KUBE_KMS, "kube-kms", "serve"),
        (ETCD_INSPECT, "etcd-inspect", "scan"),
    ] {
        for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
            let script = run_ok(binary, &["completions", shell]);
            assert!(script.contains(name), "{name} {shell}: {script}");
            assert!(
                script.contains(subcommand),
                "{name} {shell} lacks {subcommand}"
            );
        }
    }
    let bash = run_ok(KUBE_KMS, &["completions", "bash"]);
    assert!(bash.contains("--metrics-addr"), "serve's flags complete");
    let output = Command::new(KUBE_KMS)
        .args(["completions", "tcsh"])
        .output()
        .expect("run");
    assert_eq!(
        output.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
    // bash accepts the script.
    let checked = Command::new("bash")
        .args(["-n", "-c", &bash])
        .output()
        .expect("run bash -n");
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
}

#[test]
fn man_pages_generate_for_both_binaries() {
    for (binary, name, subcommands) in [
        (
            KUBE_KMS,
            "kube-kms",
            &["serve", "key", "demo", "completions", "man"][..],
        ),
        (
            ETCD_INSPECT,
            "etcd-inspect",
            &["scan", "completions", "man"][..],
        ),
    ] {
        let page = run_ok(binary, &["man"]);
        assert!(page.starts_with(".ie") || page.contains(".TH"), "{page}");
        assert!(page.contains(&format!(".TH {name} 1")), "{page}");
        for subcommand in subcommands {
            assert!(page.contains(subcommand), "{name}(1) lists {subcommand}");
        }
        let dir = temp_dir();
        let out = dir.path().join("man1");
        run_ok(binary, &["man", "--dir", out.to_str().expect("UTF-8 path")]);
        let main = std::fs::read_to_string(out.join(format!("{name}.1"))).expect("main page");
        assert!(main.contains(&format!(".TH {name} 1")), "{main}");
        for subcommand in subcommands {
            let path = out.join(format!("{name}-{subcommand}.1"));
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
            assert!(text.contains(".TH"), "{}", path.display());
        }
    }
    let dir = temp_dir();
    let out = dir.path().join("pages");
    run_ok(
        KUBE_KMS,
        &["man", "--dir", out.to_str().expect("UTF-8 path")],
    );
    let serve = std::fs::read_to_string(out.join("kube-kms-serve.1")).expect("serve page");
    assert!(serve.contains("metrics\\-addr"), "{serve}");
    assert!(
        out.join("kube-kms-key-rotate.1").exists(),
        "nested subcommands get pages"
    );
}
