//! Who may call the socket (issue 15 §5): callers are admitted by their
//! SO_PEERCRED credentials (the socket file's owner and root by default,
//! `--allow-uid`/`--allow-gid` to widen), refused callers get
//! PERMISSION_DENIED and are counted, and abstract socket names are refused
//! without `--allow-abstract-socket`.
//!
//! The foreign caller is the Python grpcio client (tests/python/kms_v2_call.py)
//! run as uid/gid 65534 (nobody). The grpcio venv lives under root's home,
//! which nobody cannot traverse, so the `grpc` package and the script are
//! copied into the test's temp dir and run with the venv's base interpreter.
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::grpcio::{grpcio_python, CLIENT};
use crate::common::plugin::{http_get, init_keyring, temp_dir, ServeProcess, KUBE_KMS};

const NOBODY: u32 = 65534;

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A copy of grpcio and the client script that uid 65534 can read, in `dir`.
struct ForeignClient {
    python: PathBuf,
    pythonpath: PathBuf,
    script: PathBuf,
}

impl ForeignClient {
    fn prepare(dir: &Path) -> Self {
        // The socket's directory must be traversable by the client; the
        // keyring beside it keeps its own 0600 mode.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir = &dir.join("client");
        let python = grpcio_python();
        let output = Command::new(&python)
            .args([
                "-c",
                "import grpc, os, sys, typing_extensions as t; print(os.path.dirname(grpc.__file__)); print(t.__file__); print(sys._base_executable)",
            ])
            .output()
            .expect("run the grpcio python");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8(output.stdout).unwrap();
        let mut lines = stdout.lines();
        let grpc = PathBuf::from(lines.next().unwrap());
        let typing = PathBuf::from(lines.next().unwrap());
        let base = PathBuf::from(lines.next().unwrap());
        let pythonpath = dir.join("py");
        copy_tree(&grpc, &pythonpath.join("grpc"));
        std::fs::copy(&typing, pythonpath.join("typing_extensions.py")).unwrap();
        let script = dir.join("kms_v2_call.py");
        std::fs::copy(CLIENT, &script).unwrap();
        chmod_tree(dir);
        Self {
            python: base,
            pythonpath,
            script,
        }
    }

    /// Runs the client as uid/gid `NOBODY` against `socket`; its JSON verdict.
    fn call(&self, socket: &Path) -> serde_json::Value {
        let output = Command::new(&self.python)
            .arg(&self.script)
            .arg(socket)
            .arg("localhost")
            .env_clear()
            .env("PYTHONPATH", &self.pythonpath)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("HOME", "/")
            .uid(NOBODY)
            .gid(NOBODY)
            .output()
            .expect("run the Python gRPC client as nobody");
        let stdout = String::from_utf8_lossy(&output.stdout);
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "the Python client printed no verdict ({e}; exit {}):\n{stdout}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )
        })
    }
}

/// Everything in `dir` readable (and directories traversable) by others.
fn chmod_tree(dir: &Path) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            chmod_tree(&entry.path());
        } else if kind.is_file() {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
}

/// `text` without terminal colour sequences (`ESC [ ... m`).
fn strip_ansi(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The value of an unlabelled sample `name` in a Prometheus text scrape.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// `kube-kms serve` with a socket anyone may connect to (mode 0666), so only
/// the credential check stands between uid 65534 and the plugin.
async fn serve_open_socket(dir: &Path, keyring: &Path, extra: &[&str]) -> (ServeProcess, u16) {
    let port = free_port();
    let metrics = format!("127.0.0.1:{port}");
    let mut args = vec!["--socket-mode", "0666", "--metrics-addr", &metrics];
    args.extend_from_slice(extra);
    let serve = ServeProcess::start(dir, keyring, &args).await;
    (serve, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_with_another_uid_is_refused_with_permission_denied_and_counted() {
    let dir = temp_dir();
    let keyring = init_keyring(dir.path());
    let client = ForeignClient::prepare(dir.path());
    let (serve, port) = serve_open_socket(dir.path(), &keyring, &[]).await;
    // The owner (root here) is admitted.
    serve
        .client()
        .await
        .status()
        .await
        .expect("the owner is admitted");

    let verdict = client.call(&serve.socket);
    assert_eq!(verdict["ok"], false, "{verdict}");
    assert_eq!(verdict["code"], "PERMISSION_DENIED", "{verdict}");

    let (code, metrics) = http_get(port, "/metrics");
    assert_eq!(code, 200);
    let refused = sample(&metrics, "kube_kms_callers_refused_total");
    assert!(
        refused.is_some_and(|count| count >= 1.0),
        "kube_kms_callers_refused_total: {refused:?}\n{metrics}"
    );
    let log = strip_ansi(&serve.stderr());
    let line = log
        .lines()
        .find(|line| line.contains("refused a caller"))
        .unwrap_or_else(|| panic!("no log line for the refused caller:\n{log}"));
    assert!(
        line.contains("uid=65534") && line.contains("gid=65534") && line.contains("pid="),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_uid_admits_a_caller_with_that_uid() {
    let dir = temp_dir();
    let keyring = init_keyring(dir.path());
    let client = ForeignClient::prepare(dir.path());
    let (serve, port) = serve_open_socket(dir.path(), &keyring, &["--allow-uid", "65534"]).await;
    let verdict = client.call(&serve.socket);
    assert_eq!(verdict["ok"], true, "{verdict}");
    assert_eq!(verdict["roundtrip"], true, "{verdict}");
    let (_, metrics) = http_get(port, "/metrics");
    assert_eq!(
        sample(&metrics, "kube_kms_callers_refused_total"),
        Some(0.0),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_gid_admits_a_caller_in_that_group() {
    let dir = temp_dir();
    let keyring = init_keyring(dir.path());
    let client = ForeignClient::prepare(dir.path());
    let (serve, _port) = serve_open_socket(dir.path(), &keyring, &["--allow-gid", "65534"]).await;
    let verdict = client.call(&serve.socket);
    assert_eq!(verdict["ok"], true, "{verdict}");
}

#[test]
fn an_abstract_socket_name_is_refused_without_the_opt_in() {
    let dir = temp_dir();
    let keyring = init_keyring(dir.path());
    let name = format!("@kube-kms-refused-{}", std::process::id());
    let mut child = Command::new(KUBE_KMS)
        .args(["serve", "--socket", &name, "--keyring"])
        .arg(&keyring)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start kube-kms serve");
    // Before the fix it serves: give it time to exit on its own, then stop it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    let status =
        status.unwrap_or_else(|| panic!("serve accepted abstract socket {name}:\n{stderr}"));
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("abstract")
            && stderr.contains("--allow-abstract-socket")
            && stderr.contains("network namespace"),
        "{stderr}"
    );
}

/// The file backend, except that Encrypt never returns: a client call that
/// pins the plugin. `released` turns true when the server drops the call.
struct HangingEncrypt(
    kube_kms::backend::file::FileBackend,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
);

/// Sets its flag when dropped.
struct SetOnDrop(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl kube_kms::backend::KeyBackend for HangingEncrypt {
    fn status(&self) -> kube_kms::backend::KeyStatus {
        self.0.status()
    }

    async fn wrap(
        &self,
        _plaintext: &[u8],
    ) -> Result<kube_kms::backend::Wrapped, kube_kms::backend::BackendError> {
        let _released = SetOnDrop(std::sync::Arc::clone(&self.1));
        std::future::pending().await
    }

    fn unwrap(
        &self,
        key_id: &str,
        ciphertext: &[u8],
        annotations: &std::collections::BTreeMap<String, Vec<u8>>,
    ) -> impl std::future::Future<
        Output = Result<kube_kms::secret::SecretBytes, kube_kms::backend::BackendError>,
    > + Send {
        self.0.unwrap(key_id, ciphertext, annotations)
    }

    async fn self_test(&self) {
        self.0.self_test().await
    }

    fn reload(
        &self,
        force: bool,
    ) -> Result<kube_kms::backend::ReloadOutcome, kube_kms::backend::BackendError> {
        self.0.reload(force)
    }
}

/// An in-process server whose backend's Encrypt hangs, with a one-second
/// call timeout and the bounds of `options`.
struct HangingServer {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    /// Set once a hanging Encrypt has been dropped (cancelled).
    released: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<(), kube_kms::server::ServerError>>,
}

impl HangingServer {
    fn start(options: kube_kms::server::ServerOptions) -> Self {
        use kube_kms::server::{Server, ServerOptions, SocketAddress, SocketListener};

        let dir = temp_dir();
        let keyring = init_keyring(dir.path());
        let released = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let backend = HangingEncrypt(
            kube_kms::backend::file::FileBackend::open(&keyring).unwrap(),
            std::sync::Arc::clone(&released),
        );
        let socket = dir.path().join("kms.sock");
        let listener = SocketListener::bind(&SocketAddress::Path(socket.clone()), 0o600).unwrap();
        let options = ServerOptions {
            call_timeout: Duration::from_secs(1),
            ..options
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(Server::new(std::sync::Arc::new(backend), options).run(
            listener,
            async {
                let _ = stopped.await;
            },
        ));
        Self {
            _dir: dir,
            socket,
            released,
            stop,
            server,
        }
    }

    async fn stop(self) {
        self.stop.send(()).unwrap();
        self.server.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_call_ends_at_the_call_timeout_and_the_global_limit_holds_others_back() {
    use std::sync::atomic::Ordering;

    let hanging = HangingServer::start(kube_kms::server::ServerOptions {
        max_concurrent_calls: 1,
        ..Default::default()
    });
    let (socket, released) = (&hanging.socket, &hanging.released);
    let mut pinning = kube_kms::client::KmsClient::connect_path(socket)
        .await
        .unwrap();
    let mut other = kube_kms::client::KmsClient::connect_path(socket)
        .await
        .unwrap();
    assert_eq!(other.status().await.unwrap().healthz, "ok");

    // The hanging Encrypt takes the only call slot: a Status on another
    // connection is served only once the Encrypt has been ended by the call
    // timeout (before the bounds, the Status was served at once and the
    // Encrypt hung forever).
    let encrypt = tokio::spawn(async move { pinning.encrypt(b"seed", "").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let waited = tokio::time::timeout(Duration::from_secs(10), other.status())
        .await
        .expect("a Status behind a pinned slot must be served once the slot is free");
    assert_eq!(waited.unwrap().healthz, "ok");
    assert!(
        released.load(Ordering::SeqCst),
        "the Status was served while the hanging Encrypt still held the only slot"
    );
    let pinned = tokio::time::timeout(Duration::from_secs(10), encrypt)
        .await
        .expect("the hanging Encrypt must end at the call timeout")
        .unwrap();
    let error = pinned.expect_err("the backend never answers");
    assert_eq!(
        error.status().map(tonic::Status::code),
        Some(tonic::Code::Cancelled),
        "{error}"
    );
    hanging.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_carries_at_most_max_streams_per_connection_calls_at_once() {
    use std::sync::atomic::Ordering;

    let hanging = HangingServer::start(kube_kms::server::ServerOptions {
        max_streams_per_connection: 1,
        ..Default::default()
    });
    let (socket, released) = (&hanging.socket, &hanging.released);
    let mut client = kube_kms::client::KmsClient::connect_path(socket)
        .await
        .unwrap();
    assert_eq!(client.status().await.unwrap().healthz, "ok");
    // A clone shares the one HTTP/2 connection: while the hanging Encrypt
    // holds its only stream, the Status waits for it to end.
    let mut pinning = client.clone();
    let encrypt = tokio::spawn(async move { pinning.encrypt(b"seed", "").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let waited = tokio::time::timeout(Duration::from_secs(10), client.status())
        .await
        .expect("a Status behind the connection's only stream must be served once it is free");
    assert_eq!(waited.unwrap().healthz, "ok");
    assert!(
        released.load(Ordering::SeqCst),
        "a second call ran on the connection while the hanging Encrypt held its only stream"
    );
    let pinned = tokio::time::timeout(Duration::from_secs(10), encrypt)
        .await
        .expect("the hanging Encrypt must end at the call timeout")
        .unwrap();
    assert!(pinned.is_err(), "the backend never answers");
    hanging.stop().await;
}
