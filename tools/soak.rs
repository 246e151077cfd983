//! Soak test of the real plugin (run by `tools/soak`): starts `kube-kms
//! serve` (the binary given) on a unix socket over a fresh keyring, warms up
//! (rounds of 100,000 calls until RSS settles), then makes N calls (Encrypt and Decrypt alternating, every Decrypt checked
//! against its seed) at concurrency C, with `kube-kms key rotate` at 40% and
//! SIGHUP at 60%. Prints the figures; exits 1 on any failed or wrong call, if
//! the rotation never shows in Encrypt's key_id, or if the server's RSS at the
//! end is more than 10% above its RSS after warm-up.
//!
//! Usage: soak KUBE_KMS_BINARY [CALLS [CONCURRENCY]]
#![forbid(unsafe_code)]
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a benchmark tool: prints its figures, and stops at the first failure"
)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use kube_kms::client::KmsClient;

/// Warm-up rounds at most, before RSS is taken as the baseline.
const MAX_WARMUP_ROUNDS: u32 = 5;
const WARMUP_CALLS: u64 = 100_000;

struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident and peak resident memory of `pid`, in KiB.
fn memory_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

#[derive(Default)]
struct Counters {
    encrypt: AtomicU64,
    decrypt: AtomicU64,
    errors: AtomicU64,
    key_ids: Mutex<BTreeSet<String>>,
    first_error: Mutex<Option<String>>,
}

impl Counters {
    fn fail(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert(what);
    }
}

/// Makes calls until `next` reaches `until`: one Encrypt of a random seed,
/// then one Decrypt of the result, checked. Each task owns a connection.
async fn worker(
    socket: PathBuf,
    next: Arc<AtomicU64>,
    until: u64,
    counters: Arc<Counters>,
) -> anyhow::Result<()> {
    let mut client = KmsClient::connect_path(&socket).await?;
    let mut seed = [0u8; 32];
    let mut last_key_id = String::new();
    while next.fetch_add(2, Ordering::Relaxed) < until {
        getrandom::getrandom(&mut seed).map_err(|e| anyhow::anyhow!("random seed: {e}"))?;
        let encrypted = match client.encrypt(&seed, "soak").await {
            Ok(encrypted) => encrypted,
            Err(error) => {
                counters.fail(format!("Encrypt: {error}"));
                continue;
            }
        };
        counters.encrypt.fetch_add(1, Ordering::Relaxed);
        if encrypted.key_id != last_key_id {
            last_key_id.clone_from(&encrypted.key_id);
            counters
                .key_ids
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(last_key_id.clone());
        }
        match client.decrypt_encrypted(&encrypted, "soak").await {
            Ok(plaintext) if plaintext.expose_secret() == seed.as_slice() => {
                counters.decrypt.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => counters.fail("Decrypt returned a different plaintext".into()),
            Err(error) => counters.fail(format!("Decrypt: {error}")),
        }
    }
    Ok(())
}

async fn run_phase(
    socket: &Path,
    calls: u64,
    concurrency: usize,
    counters: &Arc<Counters>,
    mut at_fraction: impl FnMut(f64) -> anyhow::Result<()>,
) -> anyhow::Result<Duration> {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        tasks.spawn(worker(
            socket.to_path_buf(),
            Arc::clone(&next),
            calls,
            Arc::clone(counters),
        ));
    }
    loop {
        tokio::select! {
            done = tasks.join_next() => match done {
                Some(result) => result.context("worker task")??,
                None => break,
            },
            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                let fraction = next.load(Ordering::Relaxed) as f64 / calls as f64;
                at_fraction(fraction.min(1.0))?;
            }
        }
    }
    Ok(started.elapsed())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let binary = PathBuf::from(
        args.next()
            .context("usage: soak KUBE_KMS [CALLS [CONCURRENCY]]")?,
    );
    let calls: u64 = args.next().map_or(Ok(1_000_000), |a| a.parse())?;
    let concurrency: usize = args.next().map_or(Ok(64), |a| a.parse())?;

    let dir = tempfile::Builder::new().prefix("kk").tempdir_in("/tmp")?;
    let keyring = dir.path().join("keyring.json");
    let socket = dir.path().join("kms.sock");
    let key = |command: &str| -> anyhow::Result<()> {
        let status = Command::new(&binary)
            .args(["key", command, "--keyring"])
            .arg(&keyring)
            .stdout(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("kube-kms key {command} failed");
        }
        Ok(())
    };
    key("init")?;
    let log = std::fs::File::create(dir.path().join("serve.log"))?;
    let server = Server {
        child: Command::new(&binary)
            .arg("serve")
            .arg("--keyring")
            .arg(&keyring)
            .arg("--socket")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("start kube-kms serve")?,
    };
    let pid = server.child.id();
    let ready_by = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut client) = KmsClient::connect_path(&socket).await {
            if client.status().await.is_ok() {
                break;
            }
        }
        if Instant::now() > ready_by {
            bail!("kube-kms serve not ready after 20 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Warm up until the allocator's working set has settled (RSS grows by
    // under 2% over one more round), so that growth measured afterwards is
    // growth under load, not the arenas of a fresh process filling up.
    let mut warm_time = Duration::ZERO;
    let mut warm_rounds = 0;
    let mut rss_warm = 0;
    while warm_rounds < MAX_WARMUP_ROUNDS {
        let warmup = Arc::new(Counters::default());
        warm_time += run_phase(&socket, WARMUP_CALLS, concurrency, &warmup, |_| Ok(())).await?;
        warm_rounds += 1;
        if let Some(first) = warmup
            .first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            bail!("warm-up calls failed; first: {first}");
        }
        let (rss, _) = memory_kib(pid)?;
        let settled = rss_warm > 0 && (rss as f64) < rss_warm as f64 * 1.02;
        rss_warm = rss;
        if settled {
            break;
        }
    }
    println!(
        "warm-up: {warm_rounds} x {WARMUP_CALLS} calls at concurrency {concurrency} in {warm_time:.2?}, server RSS {rss_warm} KiB"
    );

    let counters = Arc::new(Counters::default());
    let (mut rotated, mut reloaded) = (None, None);
    let hup = rustix::process::Pid::from_raw(pid as i32).context("server pid")?;
    let mut rss_samples: Vec<u64> = Vec::new();
    let elapsed = run_phase(&socket, calls, concurrency, &counters, |fraction| {
        if rotated.is_none() && fraction >= 0.4 {
            key("rotate")?;
            rotated = Some(fraction);
        }
        if reloaded.is_none() && fraction >= 0.6 {
            rustix::process::kill_process(hup, rustix::process::Signal::HUP)?;
            reloaded = Some(fraction);
        }
        rss_samples.push(memory_kib(pid)?.0);
        Ok(())
    })
    .await?;
    let (rss_end, rss_peak) = memory_kib(pid)?;
    let made = counters.encrypt.load(Ordering::Relaxed) + counters.decrypt.load(Ordering::Relaxed);
    let errors = counters.errors.load(Ordering::Relaxed);
    let key_ids = counters
        .key_ids
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let growth = (rss_end as f64 - rss_warm as f64) / rss_warm as f64 * 100.0;
    let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default();
    println!(
        "soak: {made} successful calls ({} Encrypt, {} Decrypt) of {calls} at concurrency {concurrency} in {elapsed:.2?} = {:.0} calls/s",
        counters.encrypt.load(Ordering::Relaxed),
        counters.decrypt.load(Ordering::Relaxed),
        made as f64 / elapsed.as_secs_f64()
    );
    println!(
        "errors: {errors}; rotation at {:.0}%, SIGHUP reload at {:.0}%; Encrypt key_ids seen: {}",
        rotated.unwrap_or(f64::NAN) * 100.0,
        reloaded.unwrap_or(f64::NAN) * 100.0,
        key_ids.len()
    );
    println!(
        "server RSS: after warm-up {rss_warm} KiB, at end {rss_end} KiB ({growth:+.1}%), min/max during run {}/{} KiB, peak (VmHWM) {rss_peak} KiB",
        rss_samples.iter().min().copied().unwrap_or(0),
        rss_samples.iter().max().copied().unwrap_or(0),
    );
    let step = (rss_samples.len() / 10).max(1);
    let deciles: Vec<String> = rss_samples
        .iter()
        .step_by(step)
        .map(|kib| kib.to_string())
        .collect();
    println!(
        "server RSS over the run (KiB, every 10%): {}",
        deciles.join(" ")
    );
    println!(
        "server log: {} 'keyring reloaded' lines",
        log.matches("keyring reloaded").count()
    );
    drop(server);
    if let Some(first) = counters
        .first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        bail!("{errors} calls failed; first: {first}");
    }
    if made != calls {
        bail!("{made} calls made, {calls} expected");
    }
    if key_ids.len() < 2 {
        bail!("the rotation never showed in Encrypt's key_id");
    }
    if growth > 10.0 {
        bail!("server RSS grew {growth:.1}% after warm-up (limit 10%)");
    }
    println!("soak: PASS");
    Ok(())
}
