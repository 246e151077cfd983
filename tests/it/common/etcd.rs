//! A real etcd (`/usr/bin/etcd`, Debian's etcd-server 3.4) for tests: started
//! on 127.0.0.1 with free ports and a temporary data directory, optionally with
//! TLS and client-certificate authentication (certificates made with the
//! `openssl` CLI), or from a restored backup; stopped by PID on drop (SIGTERM,
//! then SIGKILL). Helpers write through `etcd-client` and run `etcdctl`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

/// The etcd binary under test.
pub const ETCD: &str = "/usr/bin/etcd";
/// The matching etcdctl.
pub const ETCDCTL: &str = "/usr/bin/etcdctl";

/// A fixture file under `../shared/fixtures/`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures")).join(name)
}

/// Certificates for a TLS etcd: a CA, etcd's server certificate for
/// 127.0.0.1, a client certificate signed by the CA, and one signed by an
/// unrelated CA (which etcd must refuse).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// CA certificate (PEM).
    pub ca: PathBuf,
    /// Server certificate and key.
    pub server_cert: PathBuf,
    /// Server key.
    pub server_key: PathBuf,
    /// Client certificate signed by `ca` (CN=root).
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
    /// A client certificate signed by another CA.
    pub rogue_cert: PathBuf,
    /// Its key.
    pub rogue_key: PathBuf,
}

/// How to start etcd.
#[derive(Debug, Default, Clone)]
pub struct EtcdOptions {
    /// Serve clients over TLS and require client certificates.
    pub tls: bool,
    /// Restore this backup (`etcdctl snapshot save` file or member db) first.
    pub restore: Option<PathBuf>,
}

/// A running etcd owned by a test.
pub struct Etcd {
    child: Option<Child>,
    /// Client URL (`http://127.0.0.1:PORT` or `https://...`).
    pub endpoint: String,
    /// TLS material when started with TLS.
    pub tls: Option<TlsFiles>,
    /// etcd's data directory.
    pub data_dir: PathBuf,
    log: PathBuf,
    // Last: removed after the process is gone.
    dir: tempfile::TempDir,
}

impl Etcd {
    /// A new empty etcd over plain http.
    pub fn start() -> Etcd {
        Self::start_with(EtcdOptions::default())
    }

    /// A new empty etcd over TLS with client-certificate auth.
    pub fn start_tls() -> Etcd {
        Self::start_with(EtcdOptions {
            tls: true,
            ..EtcdOptions::default()
        })
    }

    /// An etcd serving the contents of a backup file.
    pub fn restore(backup: &Path) -> Etcd {
        Self::start_with(EtcdOptions {
            restore: Some(backup.to_owned()),
            ..EtcdOptions::default()
        })
    }

    /// Starts etcd as asked and waits until it answers. Retries with new
    /// ports if another process took them in between.
    pub fn start_with(options: EtcdOptions) -> Etcd {
        let mut last_error = String::new();
        for _ in 0..3 {
            match Self::try_start(&options) {
                Ok(etcd) => return etcd,
                Err(error) => last_error = error,
            }
        }
        panic!("etcd did not start: {last_error}");
    }

    fn try_start(options: &EtcdOptions) -> Result<Etcd, String> {
        let dir = tempfile::Builder::new()
            .prefix("etcd-test")
            .tempdir_in("/tmp")
            .map_err(|e| e.to_string())?;
        let (client_port, peer_port) = (free_port(), free_port());
        let tls = if options.tls {
            Some(make_certificates(dir.path())?)
        } else {
            None
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let endpoint = format!("{scheme}://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let data_dir = dir.path().join("data");
        if let Some(backup) = &options.restore {
            restore_backup(backup, &data_dir, &peer)?;
        }
        let log = dir.path().join("etcd.log");
        let log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let log_err = log_file.try_clone().map_err(|e| e.to_string())?;
        let mut command = Command::new(ETCD);
        command
            .arg("--name=default")
            .arg(format!("--data-dir={}", data_dir.display()))
            .arg(format!("--listen-client-urls={endpoint}"))
            .arg(format!("--advertise-client-urls={endpoint}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=default={peer}"))
            .arg("--logger=zap")
            .arg("--log-outputs=stderr")
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err);
        if let Some(tls) = &tls {
            command
                .arg(format!("--cert-file={}", tls.server_cert.display()))
                .arg(format!("--key-file={}", tls.server_key.display()))
                .arg(format!("--trusted-ca-file={}", tls.ca.display()))
                .arg("--client-cert-auth");
        }
        let child = command
            .spawn()
            .map_err(|e| format!("cannot run {ETCD}: {e}"))?;
        let mut etcd = Etcd {
            child: Some(child),
            endpoint,
            tls,
            data_dir,
            log,
            dir,
        };
        etcd.wait_healthy()?;
        Ok(etcd)
    }

    fn wait_healthy(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!("etcd exited with {status}: {}", self.log_text()));
                }
            }
            let output = self.etcdctl(&["endpoint", "health", "--command-timeout=1s"]);
            if output.status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("etcd not healthy after 20s: {}", self.log_text()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// etcd's log so far (for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The temporary directory holding data, certificates and the log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// etcd's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `etcdctl` flags reaching this etcd (endpoint and client certificate).
    pub fn etcdctl_flags(&self) -> Vec<String> {
        let mut flags = vec![format!("--endpoints={}", self.endpoint)];
        if let Some(tls) = &self.tls {
            flags.push(format!("--cacert={}", tls.ca.display()));
            flags.push(format!("--cert={}", tls.client_cert.display()));
            flags.push(format!("--key={}", tls.client_key.display()));
        }
        flags
    }

    /// Runs `etcdctl` (API v3) against this etcd.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        Command::new(ETCDCTL)
            .env("ETCDCTL_API", "3")
            .args(self.etcdctl_flags())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {ETCDCTL}: {e}"))
    }

    /// Runs `etcdctl` and panics with its stderr when it fails.
    pub fn etcdctl_ok(&self, args: &[&str]) -> String {
        let output = self.etcdctl(args);
        assert!(
            output.status.success(),
            "etcdctl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Connection options for `etcd-client` (client certificate when TLS).
    pub fn connect_options(&self) -> etcd_client::ConnectOptions {
        let mut options =
            etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_secs(3));
        if let Some(tls) = &self.tls {
            let read = |path: &Path| std::fs::read(path).expect("read test certificate");
            options = options.with_tls(
                etcd_client::TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(read(&tls.ca)))
                    .identity(etcd_client::Identity::from_pem(
                        read(&tls.client_cert),
                        read(&tls.client_key),
                    )),
            );
        }
        options
    }

    /// An `etcd-client` connected to this etcd.
    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.endpoint.as_str()], Some(self.connect_options()))
            .await
            .expect("connect to test etcd")
    }

    /// Writes raw bytes; returns the revision of the write.
    pub async fn put(&self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> i64 {
        let mut client = self.client().await;
        put_with(&mut client, key, value).await
    }

    /// Deletes one key; returns the revision of the delete.
    pub async fn delete(&self, key: impl Into<Vec<u8>>) -> i64 {
        let mut client = self.client().await;
        let response = client.delete(key, None).await.expect("delete");
        response.header().expect("header").revision()
    }

    /// The current revision.
    pub async fn revision(&self) -> i64 {
        let mut client = self.client().await;
        let response = client
            .get(
                vec![0],
                Some(
                    etcd_client::GetOptions::new()
                        .with_all_keys()
                        .with_count_only(),
                ),
            )
            .await
            .expect("get");
        response.header().expect("header").revision()
    }

    /// Compacts to `revision` and waits until compaction is applied.
    pub async fn compact(&self, revision: i64) {
        let mut client = self.client().await;
        client
            .compact(
                revision,
                Some(etcd_client::CompactionOptions::new().with_physical()),
            )
            .await
            .expect("compact");
    }

    /// `etcdctl snapshot save FILE`.
    pub fn snapshot_save(&self, file: &Path) {
        self.etcdctl_ok(&["snapshot", "save", &file.display().to_string()]);
    }

    /// Kills etcd at once (SIGKILL) and reaps it: a crash, for tests of a
    /// connection lost mid-scan. Safe to call from another thread via
    /// [`kill_pid`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill_process(Pid::from_child(&child), Signal::KILL);
            let _ = child.wait();
        }
    }

    /// Stops etcd: SIGTERM, then SIGKILL after 5 s; waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill_process(Pid::from_child(&child), Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => return,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = kill_process(Pid::from_child(&child), Signal::KILL);
                        let _ = child.wait();
                        return;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends SIGKILL to `pid` (an etcd this test started; the owning [`Etcd`]
/// reaps it on drop).
pub fn kill_pid(pid: u32) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = kill_process(pid, Signal::KILL);
    }
}

/// Writes with an existing client; returns the revision of the write.
pub async fn put_with(
    client: &mut etcd_client::Client,
    key: impl Into<Vec<u8>>,
    value: impl Into<Vec<u8>>,
) -> i64 {
    let response = client.put(key, value, None).await.expect("put");
    response.header().expect("header").revision()
}

/// A TCP port free right now on 127.0.0.1.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// Whether a backup file ends with the 32-byte SHA-256 of `etcdctl snapshot
/// save` (etcdctl's own test: size % 512 == 32).
pub fn has_snapshot_hash(backup: &Path) -> bool {
    std::fs::metadata(backup)
        .map(|m| m.len() % 512 == 32)
        .unwrap_or(false)
}

/// `etcdctl snapshot restore` into `data_dir` for a single member named
/// `default` at `peer`; member dbs (no hash) need `--skip-hash-check`.
fn restore_backup(backup: &Path, data_dir: &Path, peer: &str) -> Result<(), String> {
    let mut command = Command::new(ETCDCTL);
    command
        .env("ETCDCTL_API", "3")
        .arg("snapshot")
        .arg("restore")
        .arg(backup)
        .arg(format!("--data-dir={}", data_dir.display()))
        .arg("--name=default")
        .arg(format!("--initial-cluster=default={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"));
    if !has_snapshot_hash(backup) {
        command.arg("--skip-hash-check");
    }
    let output = command.output().map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(format!(
            "etcdctl snapshot restore {} failed: {}",
            backup.display(),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(())
}

/// Runs openssl; `Err` with its stderr on failure.
fn openssl(dir: &Path, args: &[&str]) -> Result<(), String> {
    let output = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run openssl: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// A CA, a server certificate for 127.0.0.1, a client certificate, and a
/// client certificate from another CA; P-256 keys, valid one day.
pub fn make_certificates(dir: &Path) -> Result<TlsFiles, String> {
    let dir = dir.join("pki");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let new_ca = |name: &str| -> Result<(), String> {
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "1",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.crt"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        )
    };
    let issue = |name: &str, ca: &str, cn: &str, extensions: &str| -> Result<(), String> {
        openssl(
            &dir,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                &format!("/CN={cn}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        )?;
        std::fs::write(dir.join(format!("{name}.ext")), extensions).map_err(|e| e.to_string())?;
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{ca}.crt"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-days",
                "1",
                "-out",
                &format!("{name}.crt"),
                "-extfile",
                &format!("{name}.ext"),
            ],
        )
    };
    new_ca("ca")?;
    new_ca("rogue-ca")?;
    issue(
        "server",
        "ca",
        "etcd",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n",
    )?;
    let client_ext =
        "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n";
    issue("client", "ca", "root", client_ext)?;
    issue("rogue", "rogue-ca", "root", client_ext)?;
    Ok(TlsFiles {
        ca: dir.join("ca.crt"),
        server_cert: dir.join("server.crt"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.crt"),
        client_key: dir.join("client.key"),
        rogue_cert: dir.join("rogue.crt"),
        rogue_key: dir.join("rogue.key"),
    })
}
