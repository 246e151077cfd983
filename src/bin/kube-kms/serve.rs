//! `kube-kms serve`: opens the backend chosen with `--backend` (see
//! `backend_args`), binds the socket, installs the signal
//! handlers (SIGTERM/SIGINT: graceful shutdown; SIGHUP: reload) and runs
//! [`kube_kms::server::Server`], with the metrics/health HTTP listener when
//! `--metrics-addr` is given. Also owns log setup for the binary.
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use kube_kms::backend::file::FileBackend;
use kube_kms::backend::pkcs11::Pkcs11Backend;
use kube_kms::backend::KeyBackend;
use kube_kms::server::{CallerPolicy, Server, ServerOptions, SocketAddress, SocketListener};
use tokio::signal::unix::{signal, SignalKind};

use crate::backend_args::{BackendArgs, BackendChoice};

/// Where kube-apiserver's EncryptionConfiguration points by convention.
pub(crate) const DEFAULT_SOCKET: &str = "/var/run/kube-kms/kms.sock";

/// Options of `kube-kms serve`.
#[derive(clap::Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    backend: BackendArgs,
    /// The unix socket to serve on (`unix:///path`, a path, or `@name` for an
    /// abstract socket, which needs --allow-abstract-socket).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    socket: String,
    /// Permission bits of the socket file, in octal.
    #[arg(long, value_name = "MODE", default_value = "0600", value_parser = parse_mode)]
    socket_mode: u32,
    /// Accept an abstract socket name (`@name`). An abstract socket has no
    /// file permissions: any process in the network namespace can connect
    /// (the static pod runs on the host network), and only the caller check
    /// (--allow-uid/--allow-gid) stands in the way.
    #[arg(long)]
    allow_abstract_socket: bool,
    /// Also admit callers with this uid (repeatable). By default only root and
    /// the socket file's owner (the uid serve runs as) may call; others get
    /// PERMISSION_DENIED and are counted in kube_kms_callers_refused_total.
    #[arg(long = "allow-uid", value_name = "UID")]
    allow_uids: Vec<u32>,
    /// Also admit callers whose primary gid (as SO_PEERCRED reports it) is
    /// this gid (repeatable).
    #[arg(long = "allow-gid", value_name = "GID")]
    allow_gids: Vec<u32>,
    /// Concurrent calls (HTTP/2 streams) one client connection may carry.
    #[arg(long, value_name = "N", default_value_t = kube_kms::server::DEFAULT_MAX_STREAMS_PER_CONNECTION, value_parser = clap::value_parser!(u32).range(1..))]
    max_streams_per_connection: u32,
    /// KMS calls handled at once over all connections; more wait for a slot
    /// (within --call-timeout).
    #[arg(long, value_name = "N", default_value_t = kube_kms::server::DEFAULT_MAX_CONCURRENT_CALLS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    max_concurrent_calls: usize,
    /// How long one call may take, waiting for a slot included, before it
    /// is ended (CANCELLED, "Timeout expired"). Keep it above the `timeout` of the
    /// EncryptionConfiguration's kms provider (kube-apiserver's default: 3s).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    call_timeout: Duration,
    /// How long in-flight calls may finish after SIGTERM/SIGINT.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
    /// How often the wrap/unwrap self-test behind Status' healthz runs.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    self_test_interval: Duration,
    /// How often the keyring file is checked for changes (`0s`: never; reload on SIGHUP only).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    reload_poll_interval: Duration,
    /// Threads serving calls. 0 (the default): one per CPU. 1: a single
    /// thread for everything, the least CPU per call on an idle machine, but
    /// it gets a smaller share of a busy one. The pkcs11 backend's token calls
    /// run on separate blocking threads either way.
    #[arg(long, value_name = "N", default_value_t = 0)]
    threads: usize,
    /// Lock all of the process' memory (mlockall: current and future pages)
    /// so keys are never written to swap. Needs CAP_IPC_LOCK or a large enough
    /// RLIMIT_MEMLOCK; `serve` refuses to start when the lock fails.
    #[arg(long)]
    mlock: bool,
    /// Accept a changed keyring file that lacks a version being served, or
    /// whose generation is lower than the serving one's (a backup restored over
    /// the live file). Without it such a reload is refused: the previous
    /// keyring keeps serving and /readyz turns red. `--backend file` only.
    #[arg(long)]
    allow_keyring_rollback: bool,
    #[command(flatten)]
    log: LogArgs,
    /// Serve /metrics (Prometheus), /livez and /readyz over HTTP on this
    /// address, e.g. 127.0.0.1:9464. Off when not given.
    #[arg(long, value_name = "HOST:PORT")]
    metrics_addr: Option<std::net::SocketAddr>,
}

/// Log options shared by the serving commands.
#[derive(clap::Args)]
pub(crate) struct LogArgs {
    /// Log line format on stderr.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// A level (error, warn, info, debug, trace) for kube-kms' own logs, or
    /// tracing filter directives (e.g. `info,h2=debug`). Libraries log at warn
    /// unless named in directives.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    log_level: String,
}

/// How log lines are written.
#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o777 => Ok(mode),
        _ => Err(format!(
            "{text:?} is not an octal permission mode such as 0600 or 0660"
        )),
    }
}

/// The tracing filter for `--log-level`. A bare level applies to this crate
/// only: the HTTP/2 stack logs frame-level detail at debug/trace, which helps
/// nobody operating the plugin and must not be enabled by accident.
fn log_filter(level: &str) -> anyhow::Result<tracing_subscriber::EnvFilter> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let lower = level.trim().to_ascii_lowercase();
    let directives = match LEVELS.iter().position(|known| *known == lower) {
        Some(rank) => {
            let libraries = if rank <= 2 { lower.as_str() } else { "warn" };
            format!("{libraries},kube_kms={lower}")
        }
        None => level.to_owned(),
    };
    tracing_subscriber::EnvFilter::try_new(&directives)
        .with_context(|| format!("--log-level {level:?} is neither a level nor filter directives"))
}

impl LogArgs {
    /// Installs the global subscriber writing to stderr.
    pub(crate) fn init(&self) -> anyhow::Result<()> {
        init_logging(self.log_format, &self.log_level)
    }
}

/// Installs the global subscriber writing `format` lines to stderr.
pub(crate) fn init_logging(format: LogFormat, level: &str) -> anyhow::Result<()> {
    let filter = log_filter(level)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    installed.map_err(|error| anyhow::anyhow!("cannot install the logger: {error}"))
}

/// Before any key is loaded: no core dumps (RLIMIT_CORE 0, hard limit too, so
/// nothing in the process can raise it again), not dumpable (no core dump even
/// if the limit were raised, and no ptrace or /proc/PID/mem access by other
/// processes of the same uid without CAP_SYS_PTRACE), and with `--mlock`, no
/// page ever swapped out.
fn harden_process(mlock: bool) -> anyhow::Result<()> {
    use rustix::process::{set_dumpable_behavior, setrlimit, DumpableBehavior, Resource, Rlimit};
    setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )
    .context("cannot set RLIMIT_CORE to 0 (no core dumps)")?;
    set_dumpable_behavior(DumpableBehavior::NotDumpable)
        .context("cannot make the process non-dumpable (prctl PR_SET_DUMPABLE 0)")?;
    if mlock {
        use rustix::mm::{mlockall, MlockAllFlags};
        mlockall(MlockAllFlags::CURRENT | MlockAllFlags::FUTURE).context(
            "--mlock: cannot lock the process' memory (mlockall); grant CAP_IPC_LOCK or raise RLIMIT_MEMLOCK (e.g. LimitMEMLOCK=infinity in systemd), or drop --mlock",
        )?;
    }
    Ok(())
}

pub(crate) fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    args.log.init()?;
    harden_process(args.mlock)?;
    let mut builder = match args.threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        threads => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(threads);
            builder
        }
    };
    let runtime = builder
        .enable_all()
        .thread_name("kube-kms")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(args))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    match args.backend.resolve()? {
        BackendChoice::File(path) => {
            // Non-fatal: the keyring's directory may be read-only here.
            match kube_kms::keyring::store::remove_stale_temps(&path) {
                Ok(0) => {}
                Ok(removed) => {
                    tracing::warn!(removed, keyring = %path.display(), "removed temporary keyring files left by an interrupted write (each held every key)")
                }
                Err(error) => {
                    tracing::warn!(%error, "could not check for temporary keyring files left by an interrupted write")
                }
            }
            let backend = FileBackend::open(&path)
                .with_context(|| format!("cannot open the keyring {}", path.display()))?
                .allow_rollback(args.allow_keyring_rollback);
            serve_with(backend, &args).await
        }
        BackendChoice::Pkcs11(settings) => {
            let config = settings.config();
            let backend = Pkcs11Backend::open(&config).with_context(|| {
                format!(
                    "cannot open the PKCS#11 token {:?} through {}",
                    config.token_label,
                    config.module.display()
                )
            })?;
            serve_with(backend, &args).await
        }
        BackendChoice::AwsKms(aws) => serve_with(aws.open().await?, &args).await,
        BackendChoice::Vault(vault) => serve_with(vault.open().await?, &args).await,
    }
}

/// Serves `backend` until SIGTERM/SIGINT. Generic rather than `dyn`: the
/// [`KeyBackend`] trait returns `impl Future`, and each backend gets its own
/// monomorphized server.
async fn serve_with<B: KeyBackend>(backend: B, args: &ServeArgs) -> anyhow::Result<()> {
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut hangup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;

    let address = SocketAddress::parse(&args.socket);
    let listener = if args.allow_abstract_socket {
        SocketListener::bind_allowing_abstract(&address, args.socket_mode)?
    } else {
        SocketListener::bind(&address, args.socket_mode)?
    };
    let options = ServerOptions {
        shutdown_grace: args.shutdown_grace,
        self_test_interval: args.self_test_interval,
        reload_poll_interval: Some(args.reload_poll_interval).filter(|period| !period.is_zero()),
        callers: CallerPolicy {
            uids: args.allow_uids.clone(),
            gids: args.allow_gids.clone(),
        },
        max_streams_per_connection: args.max_streams_per_connection,
        max_concurrent_calls: args.max_concurrent_calls,
        call_timeout: args.call_timeout,
    };
    let mut server = Server::new(Arc::new(backend), options);
    if let Some(address) = args.metrics_addr {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on --metrics-addr {address}"))?;
        server = server.with_http(listener);
    }
    let reload = server.reload_handle();
    let hangups = tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the keys");
            reload.request();
        }
    });
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
        }
    };
    let result = server.run(listener, shutdown).await;
    hangups.abort();
    result.context("the server failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_as_octal() {
        assert_eq!(parse_mode("0600"), Ok(0o600));
        assert_eq!(parse_mode("660"), Ok(0o660));
        assert_eq!(parse_mode("0o640"), Ok(0o640));
        assert!(parse_mode("0800").is_err());
        assert!(parse_mode("01777").is_err());
        assert!(parse_mode("rw").is_err());
    }

    #[test]
    fn bare_levels_keep_libraries_quiet() {
        let shown = |level: &str| {
            let mut directives: Vec<String> = log_filter(level)
                .unwrap()
                .to_string()
                .split(',')
                .map(str::to_owned)
                .collect();
            directives.sort();
            directives
        };
        assert_eq!(shown("trace"), ["kube_kms=trace", "warn"]);
        assert_eq!(shown("error"), ["error", "kube_kms=error"]);
        assert!(log_filter("info,h2=debug").is_ok());
    }
}
