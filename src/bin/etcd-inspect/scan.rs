//! `etcd-inspect scan`: argument parsing, choice of source, output and exit code.
use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use kube_kms::inspect::bbolt::Database;
use kube_kms::inspect::classify::Classifier;
use kube_kms::inspect::encryption_config::{EncryptionConfig, KeyedProvider};
use kube_kms::inspect::live::{self, LiveSource};
use kube_kms::inspect::mvcc::{self, FileScanOptions};
use kube_kms::inspect::progress::Progress;
use kube_kms::inspect::record::{self, Identity};
use kube_kms::inspect::report::{self, SourceInfo};
use kube_kms::inspect::residue::{self, ResidueReport, ResidueScope};
use kube_kms::inspect::scan::{RequiredProvider, ResourceFilter, Scan, ScanOptions};
use kube_kms::inspect::stale;
use kube_kms::inspect::verify::plugin::PluginUnwrapper;
use kube_kms::inspect::verify::pool::VerifyPool;
use kube_kms::inspect::verify::{DekUnwrapper, Verifier};
use kube_kms::inspect::ObservationSink;
use kube_kms::secret::SecretBytes;
use serde_json::json;

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
#[command(group(clap::ArgGroup::new("source").required(true).args(["file", "endpoints"])))]
pub(crate) struct ScanArgs {
    /// An etcd backup: `etcdctl snapshot save` output or a copy of a member's
    /// `member/snap/db` (never the live file of a running etcd).
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
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
    #[arg(long, default_value_t = kube_kms::inspect::live::DEFAULT_PAGE_SIZE)]
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
    let scanned_at = std::time::SystemTime::now();
    let require_provider = match &args.require_provider {
        Some(spec) => Some(RequiredProvider::parse(spec).with_context(|| {
            format!("--require-provider {spec}: unknown provider (use identity, aescbc, aesgcm, secretbox, kms-v1 or kms-v2, optionally :NAME)")
        })?),
        None => None,
    };
    let encryption_config = match &args.encryption_config {
        Some(path) => Some(EncryptionConfig::load(path)?),
        None => None,
    };
    let classifier = classifier(&args, encryption_config.as_ref());
    let mut plugin_key_id = None;
    let plugin: Option<Arc<dyn DekUnwrapper>> = match &args.verify_with {
        Some(address) => {
            let (plugin, status) = PluginUnwrapper::connect(address).with_context(|| {
                format!("--verify-with {address}: is the plugin running and is this its socket?")
            })?;
            if status.healthz != "ok" {
                eprintln!(
                    "etcd-inspect: warning: the KMS plugin reports healthz {:?}; verification goes on",
                    status.healthz
                );
            }
            eprintln!(
                "etcd-inspect: KMS plugin {address}: Status version {}, key_id {}",
                status.version, status.key_id
            );
            plugin_key_id = Some(status.key_id);
            Some(Arc::new(plugin))
        }
        None => None,
    };
    let mut allowed_key_ids: Option<Vec<Vec<u8>>> = args
        .allowed_key_ids
        .as_ref()
        .map(|ids| ids.iter().map(|id| id.as_bytes().to_vec()).collect());
    let current = args
        .current_key_id
        .clone()
        .or(if allowed_key_ids.is_none() {
            plugin_key_id
        } else {
            None
        });
    if let Some(current) = current {
        allowed_key_ids
            .get_or_insert_with(Vec::new)
            .push(current.into_bytes());
    }
    let resources = ResourceFilter::parse(&args.resources);
    if args.emit_stale {
        if allowed_key_ids.is_none() {
            bail!("--emit-stale needs the current key_id: give --current-key-id KEY_ID or --verify-with the plugin's socket");
        }
        if !matches!(&resources, ResourceFilter::Only(names) if names.len() == 1) {
            bail!("--emit-stale needs exactly one resource in --resources (e.g. --resources secrets), so each line names an object of that resource");
        }
    }
    let options = ScanOptions {
        prefix: args.prefix.as_bytes().to_vec(),
        resources,
        ignore_history: args.ignore_history,
        require_provider,
        allowed_key_ids,
        classifier: classifier.clone(),
    };
    let residue_scope = ResidueScope {
        prefix: options.prefix.clone(),
        resources: options.resources.clone(),
        classifier: options.classifier.clone(),
    };
    let mut scan = Scan::new(options);
    if plugin.is_some() || encryption_config.is_some() {
        let verifier = Verifier::new(plugin, encryption_config);
        scan.verify_with(VerifyPool::start(
            Arc::new(verifier),
            classifier,
            VerifyPool::default_threads(),
        ));
    }
    let mut residue = None;
    let mut source = match (&args.file, args.endpoints.is_empty()) {
        (Some(path), true) => {
            let (source, summary) = scan_file(path, &args, &mut scan)?;
            if args.deep {
                residue = Some(deep_scan(path, &summary, &residue_scope, &args)?);
            }
            source
        }
        (None, false) if args.deep => {
            bail!("--deep reads the free pages of a backup file: use it with --file")
        }
        (None, false) => scan_live(&args, &mut scan)?,
        _ => bail!("give exactly one source: --file PATH or --endpoints URLS"),
    };
    source.scanned_at = Some(scanned_at);
    let result = scan.finish();
    let residue = residue.as_ref();
    let code = report::exit_code_deep(&result, residue);
    let stdout = io::stdout();
    let is_terminal = stdout.is_terminal();
    let mut out = io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let written = if args.emit_stale {
        stale::stale_objects(&result)
            .iter()
            // Kubernetes names never hold what `escape` changes; a crafted
            // etcd key that does is shown escaped, never raw.
            .try_for_each(|name| writeln!(out, "{}", report::escape(name.as_bytes())))
    } else {
        match args.format {
            Format::Json => report::write_json_deep(&mut out, &result, &source, residue),
            Format::Table => report::write_table_deep(&mut out, &result, &source, residue),
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
        for error in result.read_errors() {
            eprintln!(
                "etcd-inspect: read error: {}",
                report::escape(error.as_bytes())
            );
        }
    }
    Ok(code)
}

/// The classifier, knowing the names given by --key-names and --encryption-config.
fn classifier(args: &ScanArgs, config: Option<&EncryptionConfig>) -> Classifier {
    let mut names = args.key_names.clone();
    if let Some(config) = config {
        for kind in [
            KeyedProvider::AesCbc,
            KeyedProvider::AesGcm,
            KeyedProvider::Secretbox,
        ] {
            names.extend(config.key_names(kind).into_iter().map(str::to_string));
        }
        names.extend(config.kms_names().iter().cloned());
    }
    Classifier::with_names(&names)
}

/// The narrowest key range holding every resource in scope: with one
/// resource, its own directory; otherwise the whole prefix.
fn live_range(prefix: &str, resources: &ResourceFilter) -> Vec<u8> {
    let prefix = prefix.trim_end_matches('/');
    let directory = match resources {
        ResourceFilter::Only(names) if names.len() == 1 => {
            let name = names.first().map(String::as_str).unwrap_or_default();
            match name {
                "services" => "services/specs".to_string(),
                "endpoints" => "services/endpoints".to_string(),
                "nodes" => "minions".to_string(),
                "replicationcontrollers" => "controllers".to_string(),
                _ => match name.split_once('.') {
                    Some((resource, group)) => format!("{group}/{resource}"),
                    None => name.to_string(),
                },
            }
        }
        _ => String::new(),
    };
    if directory.is_empty() {
        format!("{prefix}/").into_bytes()
    } else {
        format!("{prefix}/{directory}/").into_bytes()
    }
}

/// The etcd password: --password-file, else --password or ETCDCTL_PASSWORD.
fn password(args: &ScanArgs) -> anyhow::Result<Option<SecretBytes>> {
    if let Some(path) = &args.password_file {
        let mut bytes = zeroize::Zeroizing::new(
            std::fs::read(path)
                .with_context(|| format!("--password-file {}: cannot read it", path.display()))?,
        );
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
        }
        return Ok(Some(SecretBytes::copy_from(&bytes)));
    }
    Ok(args
        .password
        .as_ref()
        .map(|password| SecretBytes::copy_from(password.as_bytes())))
}

fn scan_live(args: &ScanArgs, scan: &mut Scan) -> anyhow::Result<SourceInfo> {
    let source = LiveSource {
        endpoints: args.endpoints.clone(),
        cacert: args.cacert.clone(),
        cert: args.cert.clone(),
        key: args.key.clone(),
        user: args.user.clone(),
        password: password(args)?,
        prefix: live_range(&args.prefix, &ResourceFilter::parse(&args.resources)),
        page_size: args.page_size,
        history: args.history || !args.ignore_history,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let summary = runtime
        .block_on(async {
            if io::stderr().is_terminal() {
                let mut progress = Progress::new(scan, io::stderr(), "etcd");
                live::scan(&source, &mut progress).await
            } else {
                live::scan(&source, scan as &mut dyn ObservationSink).await
            }
        })
        .with_context(|| format!("scanning etcd at {}", args.endpoints.join(",")))?;
    let mut details = serde_json::Map::new();
    details.insert("history".into(), json!(summary.history));
    details.insert("range_requests".into(), json!(summary.pages));
    details.insert("puts".into(), json!(summary.puts));
    details.insert("deletes".into(), json!(summary.deletes));
    details.insert(
        "range".into(),
        json!(String::from_utf8_lossy(&source.prefix)),
    );
    Ok(SourceInfo {
        kind: "live",
        location: args.endpoints.join(","),
        identity: Identity {
            cluster_id: Some(format!("{:016x}", summary.cluster_id)),
            member_id: Some(format!("{:016x}", summary.member_id)),
            endpoints: Some(args.endpoints.join(",")),
            ..Identity::default()
        },
        revision: summary.revision,
        compact_revision: summary.compact_revision,
        history_examined: summary.history,
        details,
        scanned_at: None,
    })
}

/// The deep scan: the pages the keyspace walk did not reach.
fn deep_scan(
    path: &std::path::Path,
    summary: &mvcc::FileSummary,
    scope: &ResidueScope,
    args: &ScanArgs,
) -> anyhow::Result<ResidueReport> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("opening {} for the deep scan", path.display()))?;
    let db = Database::open(file).with_context(|| format!("deep scan of {}", path.display()))?;
    if db.meta().txid != summary.txid {
        bail!(
            "deep scan of {}: the file changed during the scan (txid {} then {}); scan a copy or a snapshot",
            path.display(),
            summary.txid,
            db.meta().txid
        );
    }
    let mut report = residue::scan(&db, &summary.reachable, scope)
        .with_context(|| format!("deep scan of {}", path.display()))?;
    report.ignored = args.ignore_residue;
    Ok(report)
}

fn scan_file(
    path: &std::path::Path,
    args: &ScanArgs,
    scan: &mut Scan,
) -> anyhow::Result<(SourceInfo, mvcc::FileSummary)> {
    let options = FileScanOptions {
        verify_trailer: !args.skip_checksum,
    };
    let started = std::time::Instant::now();
    let scanned = if io::stderr().is_terminal() {
        let mut progress = Progress::new(scan, io::stderr(), "file");
        mvcc::scan_file(path, &mut progress, options)
    } else {
        mvcc::scan_file(path, scan as &mut dyn ObservationSink, options)
    };
    let summary = scanned.with_context(|| format!("scanning {}", path.display()))?;
    if args.timings {
        let ms = |cpu: Option<std::time::Duration>| {
            cpu.map_or("unknown".to_string(), |cpu| {
                format!("{:.1} ms", cpu.as_secs_f64() * 1e3)
            })
        };
        eprintln!(
            "etcd-inspect: timings: wall {}, CPU: walk {}, read-ahead {}, checksum {}",
            ms(Some(started.elapsed())),
            ms(summary.cpu.walk),
            ms(Some(summary.cpu.read_ahead)),
            summary
                .cpu
                .checksum
                .map_or("not run".to_string(), |cpu| ms(Some(cpu))),
        );
    }
    let mut details = serde_json::Map::new();
    details.insert("file_size".into(), json!(summary.file_size));
    details.insert("page_size".into(), json!(summary.page_size));
    details.insert("pages".into(), json!(summary.pages));
    details.insert("reachable_pages".into(), json!(summary.reachable_pages));
    details.insert("txid".into(), json!(summary.txid));
    details.insert("revisions".into(), json!(summary.revisions));
    details.insert(
        "scheduled_compact_revision".into(),
        json!(summary.scheduled_compact_revision),
    );
    details.insert("consistent_index".into(), json!(summary.consistent_index));
    if let Some(notice) = &summary.meta_fallback {
        eprintln!("etcd-inspect: notice: {notice}");
    }
    details.insert("meta_fallback".into(), json!(summary.meta_fallback));
    details.insert(
        "snapshot_checksum".into(),
        json!(match summary.trailer {
            Some(kube_kms::inspect::bbolt::TrailerStatus::Verified) => "verified",
            Some(kube_kms::inspect::bbolt::TrailerStatus::Absent) => "absent",
            None => "not checked",
        }),
    );
    let source = SourceInfo {
        kind: "file",
        location: path.display().to_string(),
        identity: Identity {
            sha256: summary.sha256.map(|digest| record::hex(&digest)),
            ..Identity::default()
        },
        revision: summary.revision,
        compact_revision: summary.compact_revision,
        // Every revision in the file is read; --ignore-history only stops
        // judging the older ones, and the scope says so.
        history_examined: true,
        details,
        scanned_at: None,
    };
    Ok((source, summary))
}
