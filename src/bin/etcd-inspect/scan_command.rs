//! `etcd-inspect scan`: its flags, turned into [`AuditOptions`] and a
//! [`Source`]; then the report printed and the exit code returned. The work
//! is [`Audit::run`]'s.
use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{bail, Context};
use kube_kms::inspect::audit::{Audit, AuditOptions, Console};
use kube_kms::inspect::report::{escape, JsonAhead};
use kube_kms::inspect::source::bbolt::FileSource;
use kube_kms::inspect::source::data_dir::DataDirSource;
use kube_kms::inspect::source::live::{read_password_file, ClusterSource, LiveSource};
use kube_kms::inspect::source::wal::WalSource;
use kube_kms::inspect::source::{Source, Timings};

/// Most JSON formatted ahead while a checksum runs (about 40,000 values):
/// memory traded for time, bounded whatever the file holds.
const JSON_AHEAD_BUDGET: usize = 16 << 20;

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// Summary table and findings, for people.
    Table,
    /// JSON Lines: one record per value, then a summary record.
    Json,
}

/// Arguments of `etcd-inspect scan`.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["file", "endpoints", "data_dir", "wal"])))]
pub(crate) struct ScanArgs {
    /// An etcd backup: `etcdctl snapshot save` output or a copy of a member's
    /// `member/snap/db` (never the live file of a running etcd).
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// A member's data dir (etcd's --data-dir), or a copy of one, as one
    /// report: `member/snap/db` (refused while etcd holds its lock), every
    /// write-ahead log segment `member/wal/*.wal`, and leftover
    /// `member/snap/*.snap.db` files. Plaintext in the WAL or a snap.db is a
    /// finding however clean the db is.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Write-ahead log segments (`member/wal/*.wal`) read alone, in the order
    /// of their names. Such a report says nothing of the db.
    #[arg(long, value_name = "FILE", num_args = 1..)]
    wal: Vec<PathBuf>,
    /// Live etcd endpoints, comma-separated (https://host:2379,...).
    #[arg(long, value_name = "URLS", value_delimiter = ',')]
    endpoints: Vec<String>,
    /// Key prefix of kube-apiserver (--etcd-prefix).
    #[arg(long, default_value = "/registry")]
    prefix: String,
    /// Resources to examine: a comma-separated list (secrets,configmaps,
    /// widgets.example.com) or `all`.
    #[arg(long, default_value = "secrets")]
    resources: String,
    /// Output format (default: table).
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Do not examine older revisions: a live scan reads the latest values
    /// only; a file scan does not report plaintext in older revisions. The
    /// report then says "history not examined" (and the destroy gate refuses it).
    #[arg(long)]
    ignore_history: bool,
    /// Report current values not under this provider (identity, aescbc, aesgcm,
    /// secretbox, kms-v1, kms-v2), optionally with its name (kms-v2:kube-kms).
    #[arg(long, value_name = "PROVIDER[:NAME]")]
    require_provider: Option<String>,
    /// Report current kms v2 values under any other key_id (stale), comma-separated.
    #[arg(long, value_name = "KEY_ID,...", value_delimiter = ',')]
    allowed_key_ids: Option<Vec<String>>,
    /// Key and provider names from the EncryptionConfiguration, comma-separated;
    /// needed only when a name contains ':' (matched exactly).
    #[arg(long, value_name = "NAME,...", value_delimiter = ',')]
    key_names: Vec<String>,
    /// kube-apiserver's EncryptionConfiguration: its key and provider names
    /// are matched exactly, and aescbc, aesgcm and secretbox values are
    /// verified by decrypting them with its keys (a value that does not
    /// decrypt to a valid object is a `verify-failed` finding).
    #[arg(long, value_name = "PATH")]
    encryption_config: Option<PathBuf>,
    /// Verify every kms v2 value by decrypting it: its DEK through this KMS v2
    /// plugin's Decrypt (unix:///path/kms.sock; once per distinct DEK), then
    /// its data, which must be a valid object of its kind. The plugin's Status
    /// key_id is the current key_id unless --current-key-id is given.
    #[arg(long, value_name = "unix:///PATH")]
    verify_with: Option<String>,
    /// The current kms v2 key_id: values under any other key_id are stale
    /// (reported grouped by key_id; current stale values are findings).
    #[arg(long, value_name = "KEY_ID")]
    current_key_id: Option<String>,
    /// Print only `namespace/name` (or `name`) of each current object under a
    /// stale key_id, one per line, for `xargs kubectl ...`. Needs a current
    /// key_id (--current-key-id or --verify-with) and exactly one resource.
    #[arg(long)]
    emit_stale: bool,
    /// Do not hash the file: no check of a snapshot's SHA-256 trailer and no
    /// file SHA-256 in the report's identity (saves one pass over the file,
    /// on a second thread; on CPUs without SHA extensions the hash is most
    /// of a file scan's time).
    #[arg(long)]
    skip_checksum: bool,
    /// File: print the scan's wall time and each of its threads' CPU time
    /// (walk, read-ahead, checksum) on stderr when it is done.
    #[arg(long)]
    timings: bool,
    /// File: also examine every page the current meta page does not reach
    /// (free pages, slack) for remnants of values in scope.
    #[arg(long)]
    deep: bool,
    /// With --deep: list remnants, but do not count them as findings.
    #[arg(long, requires = "deep")]
    ignore_residue: bool,
    /// Live: keys per range request.
    #[arg(long, default_value_t = kube_kms::inspect::source::live::DEFAULT_PAGE_SIZE)]
    page_size: i64,
    /// Live: read older revisions etcd still serves (until compaction). The
    /// default; with --ignore-history, read them but do not judge them.
    #[arg(long, hide = true)]
    history: bool,
    /// Live: CA bundle to verify etcd's server certificate.
    #[arg(long, value_name = "PATH")]
    cacert: Option<PathBuf>,
    /// Live: client certificate (e.g. apiserver-etcd-client.crt).
    #[arg(long, value_name = "PATH")]
    cert: Option<PathBuf>,
    /// Live: client key.
    #[arg(long, value_name = "PATH")]
    key: Option<PathBuf>,
    /// Live: etcd user (with --password).
    #[arg(long)]
    user: Option<String>,
    /// Live: etcd password. Visible in the process list: prefer
    /// --password-file or the ETCDCTL_PASSWORD environment variable.
    #[arg(long, env = "ETCDCTL_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Live: file holding the etcd password (one trailing newline is
    /// ignored); takes precedence over --password and ETCDCTL_PASSWORD.
    #[arg(long, value_name = "PATH")]
    password_file: Option<PathBuf>,
}

pub(crate) fn run(args: ScanArgs) -> anyhow::Result<u8> {
    let mut source: Box<dyn Source> = match (&args.file, args.endpoints.is_empty()) {
        (None, true) if args.data_dir.is_some() => Box::new(DataDirSource {
            dir: args.data_dir.clone().unwrap_or_default(),
            verify_trailer: !args.skip_checksum,
            deep: args.deep,
            ignore_residue: args.ignore_residue,
        }),
        (None, true) if !args.wal.is_empty() => {
            if args.deep {
                bail!("--deep reads the free pages of a database file: use it with --file or --data-dir");
            }
            Box::new(WalSource {
                paths: args.wal.clone(),
            })
        }
        (Some(path), true) => Box::new(FileSource {
            path: path.clone(),
            verify_trailer: !args.skip_checksum,
            deep: args.deep,
            ignore_residue: args.ignore_residue,
        }),
        (None, false) if args.deep => {
            bail!("--deep reads the free pages of a backup file: use it with --file or --data-dir")
        }
        (None, false) => Box::new(ClusterSource {
            connection: LiveSource {
                endpoints: args.endpoints.clone(),
                cacert: args.cacert.clone(),
                cert: args.cert.clone(),
                key: args.key.clone(),
                user: args.user.clone(),
                password: match &args.password_file {
                    Some(path) => Some(read_password_file(path)?),
                    None => args.password.as_ref().map(|password| {
                        kube_kms::secret::SecretBytes::copy_from(password.as_bytes())
                    }),
                },
                page_size: args.page_size,
                ..LiveSource::default()
            },
            history_anyway: args.history,
        }),
        _ => bail!("give exactly one source: --file PATH, --data-dir DIR, --wal FILE... or --endpoints URLS"),
    };
    let options = AuditOptions {
        prefix: args.prefix.clone(),
        resources: args.resources.clone(),
        ignore_history: args.ignore_history,
        require_provider: args.require_provider.clone(),
        allowed_key_ids: args.allowed_key_ids.clone(),
        current_key_id: args.current_key_id.clone(),
        key_names: args.key_names.clone(),
        encryption_config: args.encryption_config.clone(),
        verify_with: args.verify_with.clone(),
        list_stale: args.emit_stale,
    };
    let mut console = Stderr::new();
    // The JSON of the first values is formatted while the file's checksum
    // still runs on the other core, and written once it passed.
    let mut ahead = JsonAhead::default();
    let format_ahead = args.format == Format::Json && !args.emit_stale;
    let report = Audit::run_overlapping(source.as_mut(), options, &mut console, |result| {
        if format_ahead {
            ahead = JsonAhead::format(result, JSON_AHEAD_BUDGET);
        }
    })?;
    if args.timings {
        if let Some(timings) = &report.timings {
            eprintln!("etcd-inspect: timings: {}", describe_timings(timings));
        }
    }
    let code = report.exit_code();
    let stdout = io::stdout();
    let is_terminal = stdout.is_terminal();
    let mut out = io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let written = if args.emit_stale {
        report
            .stale_objects()
            .iter()
            .try_for_each(|name| writeln!(out, "{name}"))
    } else {
        match args.format {
            Format::Json => report.write_json_ahead(&mut out, ahead),
            Format::Table => report.write_table(&mut out),
        }
    }
    .and_then(|()| out.flush());
    match written {
        Ok(()) => {}
        // The reader went away (`| head`): stop writing, but the exit code
        // still says what the scan found.
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => return Ok(code),
        Err(error) => return Err(error).context("writing the report"),
    }
    if args.emit_stale || !(is_terminal && args.format == Format::Table) {
        // The table on a terminal already lists them; otherwise tell stderr,
        // where a pipeline's user looks for errors.
        for error in report.result.read_errors() {
            eprintln!("etcd-inspect: read error: {}", escape(error.as_bytes()));
        }
    }
    Ok(code)
}

/// `wall 12.3 ms, CPU: walk 10.1 ms, read-ahead 0.0 ms, checksum not run`.
fn describe_timings(timings: &Timings) -> String {
    let ms = |cpu: Option<std::time::Duration>| {
        cpu.map_or("unknown".to_string(), |cpu| {
            format!("{:.1} ms", cpu.as_secs_f64() * 1e3)
        })
    };
    format!(
        "wall {}, CPU: walk {}, read-ahead {}, checksum {}",
        ms(Some(timings.wall)),
        ms(timings.walk),
        ms(timings.read_ahead),
        timings
            .checksum
            .map_or("not run".to_string(), |cpu| ms(Some(cpu))),
    )
}

/// The audit's console: notices on stderr, and the progress line when
/// stderr is a terminal.
struct Stderr {
    progress: Option<io::Stderr>,
}

impl Stderr {
    fn new() -> Self {
        let stderr = io::stderr();
        Self {
            progress: stderr.is_terminal().then_some(stderr),
        }
    }
}

impl Console for Stderr {
    fn notice(&mut self, line: &str) {
        eprintln!("etcd-inspect: {line}");
    }

    fn progress(&mut self) -> Option<&mut dyn Write> {
        self.progress
            .as_mut()
            .map(|stderr| stderr as &mut dyn Write)
    }
}
