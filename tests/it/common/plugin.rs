//! Helpers for plugin tests: temp dirs with short paths, the real `kube-kms`
//! binary (keyring commands and `serve` as a child process), an in-process
//! server on a real socket, and waiting for a key_id to show in Status.
#![allow(dead_code)]

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube_kms::backend::file::FileBackend;
use kube_kms::client::KmsClient;
use kube_kms::server::{
    ReloadHandle, Server, ServerError, ServerOptions, ServerStats, SocketAddress, SocketListener,
    DEFAULT_SOCKET_MODE,
};

/// The `kube-kms` binary cargo built for these tests.
pub const KUBE_KMS: &str = env!("CARGO_BIN_EXE_kube-kms");

/// A fresh directory under /tmp with a short name (socket paths stay < 108 bytes).
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("kk")
        .tempdir_in("/tmp")
        .expect("create a temp dir in /tmp")
}

/// Runs `kube-kms key ARGS --keyring KEYRING` and returns stdout; panics with
/// stderr when it fails.
pub fn key(keyring: &Path, args: &[&str]) -> String {
    let output = Command::new(KUBE_KMS)
        .arg("key")
        .args(args)
        .arg("--keyring")
        .arg(keyring)
        .output()
        .expect("run kube-kms key");
    assert!(
        output.status.success(),
        "kube-kms key {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A new keyring file `keyring.json` in `dir` (made with the keyring library).
pub fn init_keyring(dir: &Path) -> PathBuf {
    let path = dir.join("keyring.json");
    let keyring =
        kube_kms::keyring::Keyring::initial(std::time::SystemTime::now()).expect("a new keyring");
    kube_kms::keyring::create(&path, &keyring).expect("write the keyring");
    path
}

/// Rotates the keyring at `path` with the keyring library (an atomic file
/// replace, as `kube-kms key rotate` does); returns the new primary key_id.
pub fn rotate(path: &Path) -> String {
    kube_kms::keyring::modify(path, |keyring| keyring.rotate(std::time::SystemTime::now()))
        .expect("rotate the keyring")
        .primary
        .key_id
}

/// A server running in this process on a real socket in `dir`.
pub struct InProcess {
    pub socket: PathBuf,
    pub stats: Arc<ServerStats>,
    pub reload: ReloadHandle,
    pub backend: Arc<FileBackend>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), ServerError>>>,
}

impl InProcess {
    /// Opens `keyring` and serves it on `dir/kms.sock` with default options.
    pub async fn start(dir: &Path, keyring: &Path) -> Self {
        Self::start_with(dir, keyring, ServerOptions::default()).await
    }

    pub async fn start_with(dir: &Path, keyring: &Path, options: ServerOptions) -> Self {
        let socket = dir.join("kms.sock");
        let backend = Arc::new(FileBackend::open(keyring).expect("open the keyring"));
        let listener =
            SocketListener::bind(&SocketAddress::Path(socket.clone()), DEFAULT_SOCKET_MODE)
                .expect("bind the socket");
        let server = Server::new(Arc::clone(&backend), options);
        let stats = server.stats();
        let reload = server.reload_handle();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(listener, async {
            let _ = stopped.await;
        }));
        Self {
            socket,
            stats,
            reload,
            backend,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn client(&self) -> KmsClient {
        KmsClient::connect_path(&self.socket)
            .await
            .expect("connect")
    }

    /// Graceful shutdown; returns the server's result.
    pub async fn stop(mut self) -> Result<(), ServerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.expect("server task"),
            None => Ok(()),
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// `kube-kms serve` as a child process, stderr captured to a file.
pub struct ServeProcess {
    child: Child,
    pub socket: PathBuf,
    pub stderr_path: PathBuf,
}

impl ServeProcess {
    /// Starts `kube-kms serve --keyring KEYRING --socket dir/kms.sock EXTRA`
    /// and waits until it answers Status.
    pub async fn start(dir: &Path, keyring: &Path, extra: &[&str]) -> Self {
        let mut args = vec![std::ffi::OsString::from("--keyring"), keyring.into()];
        args.extend(extra.iter().map(std::ffi::OsString::from));
        Self::start_with(dir, &args, &[]).await
    }

    /// Starts `kube-kms serve --socket dir/kms.sock ARGS` with `envs` added
    /// to its environment, and waits until it answers Status.
    pub async fn start_with(
        dir: &Path,
        args: &[std::ffi::OsString],
        envs: &[(&str, &Path)],
    ) -> Self {
        let socket = dir.join("kms.sock");
        let stderr_path = dir.join("serve.log");
        let mut command = Command::new(KUBE_KMS);
        command
            .arg("serve")
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .envs(envs.iter().copied());
        Self::spawn(command, socket, stderr_path).await
    }

    /// Runs `command` (a `kube-kms serve` serving on `socket`, built by the
    /// caller with its backend's flags and environment) with its stderr in
    /// `stderr_path`, and waits until it answers Status.
    pub async fn spawn(mut command: Command, socket: PathBuf, stderr_path: PathBuf) -> Self {
        let stderr = std::fs::File::create(&stderr_path).expect("create the log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start kube-kms serve");
        let mut process = Self {
            child,
            socket,
            stderr_path,
        };
        process.wait_ready(Duration::from_secs(30)).await;
        process
    }

    async fn wait_ready(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("kube-kms serve exited early ({status}): {}", self.stderr());
            }
            if let Ok(mut client) = KmsClient::connect_path(&self.socket).await {
                if client.status().await.is_ok() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "kube-kms serve not ready: {}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to the child (by PID).
    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).expect("child pid");
        rustix::process::kill_process(pid, signal).expect("send a signal to kube-kms serve");
    }

    /// Waits up to `limit` for the child to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for kube-kms serve") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "kube-kms serve did not exit: {}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Everything the child wrote to stderr so far.
    pub fn stderr(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(&self.stderr_path) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    pub async fn client(&self) -> KmsClient {
        KmsClient::connect_path(&self.socket)
            .await
            .expect("connect")
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls Status until its key_id is `expected` (panics after `limit`);
/// returns how long it took.
pub async fn wait_for_key_id(client: &mut KmsClient, expected: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let status = client.status().await.expect("Status");
        if status.key_id == expected {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "Status still reports {} instead of {expected} after {limit:?}",
            status.key_id
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A random 32-byte seed, as kube-apiserver sends.
pub fn seed() -> Vec<u8> {
    let mut seed = vec![0u8; 32];
    getrandom::getrandom(&mut seed).expect("random seed");
    seed
}

/// A plain HTTP/1.1 GET on 127.0.0.1:`port`; (status, body).
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to metrics");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (code, body)
}

/// Polls Status until `done(status)` holds; panics after `limit`.
pub async fn wait_status(
    client: &mut KmsClient,
    limit: Duration,
    what: &str,
    done: impl Fn(&kube_kms::proto::v2::StatusResponse) -> bool,
) -> kube_kms::proto::v2::StatusResponse {
    let started = Instant::now();
    loop {
        let status = client.status().await.expect("Status");
        if done(&status) {
            return status;
        }
        assert!(
            started.elapsed() < limit,
            "{what}: Status still says key_id {} healthz {:?} after {limit:?}",
            status.key_id,
            status.healthz
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The gRPC code of a failed call.
pub fn code_of(error: kube_kms::client::ClientError) -> tonic::Code {
    error
        .status()
        .map(|status| status.code())
        .expect("an RPC status")
}

/// No annotations on a call.
pub fn no_annotations() -> std::collections::HashMap<String, Vec<u8>> {
    std::collections::HashMap::new()
}

/// The stdout of a `kube-kms key` run that must have succeeded.
pub fn key_stdout(output: std::process::Output, args: &[&str]) -> String {
    assert!(
        output.status.success(),
        "kube-kms key {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The rows of `key list --format json` as (id, state, key_id).
pub fn key_list_rows(json: &str) -> Vec<(u64, String, String)> {
    let value: serde_json::Value = serde_json::from_str(json).expect("key list JSON");
    value["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| {
            (
                v["id"].as_u64().expect("id"),
                v["state"].as_str().expect("state").to_owned(),
                v["key_id"].as_str().expect("key_id").to_owned(),
            )
        })
        .collect()
}
