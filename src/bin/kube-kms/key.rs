//! `kube-kms key ...`: key management commands. Each one is a thin call
//! into `kube_kms::keyring` (which keeps the invariants and writes atomically
//! under a lock) plus a message saying what changed and what follows.
//! `rotate`, `list`, `disable`, `enable` and `destroy` also work on a PKCS#11
//! token (`--backend pkcs11`, through `kube_kms::backend::pkcs11::store`),
//! in AWS KMS (`key/aws.rs`) and on a Vault Transit key (`key/vault.rs`),
//! under the same state-machine rules and the same destroy gate.
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context;
use kube_kms::backend::pkcs11::{self, store, Token};
use kube_kms::keyring::ops::Transition;
use kube_kms::keyring::{self, KeyState, Keyring, VersionInfo};

use crate::backend_args::{BackendArgs, BackendChoice};

mod aws;
mod ha;
mod vault;

/// Keyring commands.
#[derive(clap::Subcommand)]
pub(crate) enum KeyCommand {
    /// Create a new keyring with one primary key (version 1). Never overwrites.
    Init(KeyringArg),
    /// Add a new version and make it primary; the old primary stays enabled for
    /// decryption. On an empty PKCS#11 token, creates version 1.
    Rotate(BackendArgs),
    /// Add a new enabled (not primary) version, to distribute before promoting it.
    Add(KeyringArg),
    /// Make an enabled version primary; the old primary stays enabled. With
    /// `--peer`, first checks that those running plugins hold the version.
    Promote(ha::PromoteArgs),
    /// Show the versions (metadata only: id, key_id, state, creation time, and the
    /// fingerprint, which is the key_id's last part: a non-secret HKDF of the key,
    /// equal on every node that holds the same key).
    List(ListArgs),
    /// Stop a version from decrypting (not the primary).
    Disable(VersionArgs),
    /// Let a disabled version decrypt again.
    Enable(VersionArgs),
    /// Erase a disabled version's material for good (its id and key_id stay
    /// reserved). Refuses unless scan reports prove its key_id unused.
    Destroy(DestroyArgs),
    /// Write versions to an encrypted bundle (age: X25519 recipients or a passphrase) for other nodes.
    Export(ha::ExportArgs),
    /// Add the versions of a bundle this keyring lacks (as enabled, never primary); changes nothing else.
    Import(ha::ImportArgs),
    /// Ask running plugins (`--peer`) whether they hold every version in use; exit 0 yes, 1 no, 2 unknown.
    Check(ha::CheckArgs),
}

/// The keyring file option shared by every command.
#[derive(clap::Args)]
pub(crate) struct KeyringArg {
    /// The keyring file (JSON, mode 0600, owned by you).
    #[arg(long, value_name = "PATH", env = "KUBE_KMS_KEYRING")]
    keyring: PathBuf,
}

/// A command acting on one version.
#[derive(clap::Args)]
pub(crate) struct VersionArgs {
    /// The version number, as `key list` shows it.
    #[arg(value_name = "VERSION")]
    id: u32,
    #[command(flatten)]
    backend: BackendArgs,
}

/// Options of `key destroy`.
#[derive(clap::Args)]
pub(crate) struct DestroyArgs {
    #[command(flatten)]
    version: VersionArgs,
    #[command(flatten)]
    gate: GateArgs,
    /// Destroy without proof that the key_id is unused (data under it is lost).
    #[arg(long)]
    force: bool,
    /// --backend aws-kms: days KMS waits before deleting the key (7 to 30);
    /// until then `aws kms cancel-key-deletion` can still undo the destroy.
    #[arg(long, value_name = "DAYS", default_value_t = 30, value_parser = clap::value_parser!(i32).range(7..=30))]
    aws_pending_window_days: i32,
}

/// The proof `key destroy` asks for.
#[derive(clap::Args)]
pub(crate) struct GateArgs {
    /// JSON Lines reports of `etcd-inspect scan --format json` (the live etcd
    /// and every backup you keep), each taken after the version was disabled.
    /// The destroy goes ahead only if every one is complete, examined history,
    /// at least one key, --etcd-prefix and the resources encrypted with kms v2
    /// (see --encryption-config), and shows zero values (latest or history)
    /// under the version's key_id.
    #[arg(long, value_name = "FILE", num_args = 1..)]
    scan_report: Vec<PathBuf>,
    /// kube-apiserver's EncryptionConfiguration: reports must cover every
    /// resource it encrypts with a kms v2 provider. Without it, reports must
    /// be `--resources all` scans.
    #[arg(long, value_name = "PATH")]
    encryption_config: Option<PathBuf>,
    /// kube-apiserver's --etcd-prefix: reports must have scanned exactly it.
    #[arg(long, value_name = "PREFIX", default_value = "/registry")]
    etcd_prefix: String,
}

/// Options of `key list`.
#[derive(clap::Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    backend: BackendArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ListFormat::Table)]
    format: ListFormat,
}

#[derive(clap::ValueEnum, Clone, Copy)]
pub(crate) enum ListFormat {
    /// Aligned columns for people.
    Table,
    /// `{"versions":[{"id":..,"key_id":..,"state":..,"created":..,"fingerprint":..}]}` for scripts.
    Json,
}

fn describe(version: &VersionInfo) -> String {
    format!("version {} ({})", version.id, version.key_id)
}

pub(crate) fn run(command: KeyCommand) -> anyhow::Result<ExitCode> {
    let command = match aws::dispatch(command)? {
        aws::Dispatch::Done(code) => return Ok(code),
        aws::Dispatch::Other(command) => *command,
    };
    let command = match vault::dispatch(command)? {
        vault::Dispatch::Done(code) => return Ok(code),
        vault::Dispatch::Other(command) => *command,
    };
    let now = SystemTime::now();
    let message = match command {
        KeyCommand::Init(KeyringArg { keyring: path }) => {
            let ring = Keyring::initial(now)?;
            let primary = ring
                .primary()
                .map(|v| v.info())
                .context("a new keyring has a primary")?;
            keyring::create(&path, &ring)?;
            format!(
                "created keyring {}: {} is primary",
                path.display(),
                describe(&primary)
            )
        }
        KeyCommand::Rotate(backend) => match KeyStore::open(&backend)? {
            KeyStore::File(path) => {
                let change = keyring::modify(&path, |ring| ring.rotate(now))?;
                format!(
                    "rotated: {} is now primary; {} stays enabled for decryption{}",
                    describe(&change.primary),
                    describe(&change.previous),
                    reload_hint()
                )
            }
            KeyStore::Token(token) => {
                let change = store::rotate(&token, now)?;
                match change.previous {
                    Some(previous) => format!(
                        "rotated: {} (generated in token {:?}) is now primary; {} stays enabled for decryption{}",
                        describe(&change.primary),
                        token.label(),
                        describe(&previous),
                        token_hint()
                    ),
                    None => format!(
                        "created {} in token {:?}: it is primary{}",
                        describe(&change.primary),
                        token.label(),
                        token_hint()
                    ),
                }
            }
        },
        KeyCommand::Add(KeyringArg { keyring: path }) => {
            let added = keyring::modify(&path, |ring| ring.add(now))?;
            format!(
                "added {} as enabled (not primary); once every plugin instance has this keyring, make it primary with `kube-kms key promote {} --keyring {}`",
                describe(&added),
                added.id,
                path.display()
            )
        }
        KeyCommand::Promote(args) => return ha::promote(args),
        KeyCommand::Export(args) => return ha::export(args),
        KeyCommand::Import(args) => return ha::import(args),
        KeyCommand::Check(args) => return ha::check(args),
        KeyCommand::List(ListArgs { backend, format }) => {
            let mut ignored = None;
            let versions = match KeyStore::open(&backend)? {
                KeyStore::File(path) => load_keyring(&path)?.keyring.metadata(),
                KeyStore::Token(token) => {
                    let keys = store::read(&token)?;
                    for object in &keys.ignored {
                        eprintln!(
                            "kube-kms: warning: token {:?}: ignoring {object} (not listed, never used)",
                            token.label()
                        );
                    }
                    ignored = Some(keys.ignored.len());
                    keys.versions
                        .iter()
                        .map(store::TokenVersion::info)
                        .collect()
                }
            };
            let mut out = std::io::stdout().lock();
            match format {
                ListFormat::Json => {
                    let versions: Vec<serde_json::Value> = versions
                        .iter()
                        .map(|v| {
                            let mut value = serde_json::json!(v);
                            if let Some(object) = value.as_object_mut() {
                                object.insert("fingerprint".into(), fingerprint(&v.key_id).into());
                            }
                            value
                        })
                        .collect();
                    write_listing_json(&mut out, versions, ignored)?;
                }
                ListFormat::Table => write_table(&mut out, &versions)?,
            }
            return Ok(ExitCode::SUCCESS);
        }
        KeyCommand::Disable(VersionArgs {
            id: version,
            backend,
        }) => {
            let store = KeyStore::open(&backend)?;
            let (info, hint) = match &store {
                KeyStore::File(path) => (
                    keyring::modify(path, |ring| ring.disable(version))?,
                    reload_hint(),
                ),
                KeyStore::Token(token) => (
                    store::transition(token, version, Transition::Disable, now, None)?,
                    token_hint(),
                ),
            };
            let selector = store.selector(&backend);
            format!(
                "disabled {}: seeds wrapped by it no longer decrypt{hint}. Undo with `kube-kms key enable {version} {selector}`; erase it for good with `kube-kms key destroy {version} {selector}`",
                describe(&info),
            )
        }
        KeyCommand::Enable(VersionArgs {
            id: version,
            backend,
        }) => {
            let (info, hint) = match KeyStore::open(&backend)? {
                KeyStore::File(path) => (
                    keyring::modify(&path, |ring| ring.enable(version))?,
                    reload_hint(),
                ),
                KeyStore::Token(token) => (
                    store::transition(&token, version, Transition::Enable, now, None)?,
                    token_hint(),
                ),
            };
            format!(
                "enabled {}: seeds wrapped by it decrypt again{hint}",
                describe(&info),
            )
        }
        KeyCommand::Destroy(DestroyArgs {
            version:
                VersionArgs {
                    id: version,
                    backend,
                },
            gate,
            force,
            ..
        }) => {
            let store = KeyStore::open(&backend)?;
            let target = store.gate_target(version)?;
            let selector = store.selector(&backend);
            let judged = match destroy_gate(target, &selector, version, &gate, force)? {
                GateVerdict::Refused(refusal) => {
                    eprintln!("{refusal}");
                    return Ok(ExitCode::from(1));
                }
                GateVerdict::Proceed { disabled_at } => disabled_at,
            };
            let path = match store {
                KeyStore::File(path) => path,
                KeyStore::Token(token) => {
                    let info =
                        store::transition(&token, version, Transition::Destroy, now, judged)?;
                    println!(
                        "destroyed {}: its key object is deleted from token {:?}; the version number and key_id stay reserved and are never reused",
                        describe(&info),
                        token.label()
                    );
                    return Ok(ExitCode::SUCCESS);
                }
            };
            let info = keyring::modify(&path, |ring| {
                // The reports were judged against one disable time; a version
                // re-enabled and disabled again since then needs new scans.
                if let Some(judged) = judged {
                    if ring.version(version).and_then(|v| v.disabled_at()) != Some(judged) {
                        return Err(keyring::KeyringError::Refused {
                            action: "destroy",
                            id: version,
                            reason: "the keyring changed while the scan reports were checked; run the command again".to_string(),
                        });
                    }
                }
                ring.destroy(version)
            })?;
            format!(
                "destroyed {}: its key material is erased for good; the id and key_id stay reserved and are never reused",
                describe(&info)
            )
        }
    };
    println!("{message}");
    Ok(ExitCode::SUCCESS)
}

/// What the destroy gate decided.
enum GateVerdict {
    /// Refuse, with the message to print.
    Refused(String),
    /// Go on; `disabled_at` is the disable time the reports were judged
    /// against (`None` when the state check is left to `destroy` itself).
    Proceed {
        disabled_at: Option<std::time::SystemTime>,
    },
}

/// Where `kube-kms key` finds the versions.
enum KeyStore {
    /// A keyring file.
    File(PathBuf),
    /// A PKCS#11 token, logged in.
    Token(Box<Token>),
}

impl KeyStore {
    fn open(backend: &BackendArgs) -> anyhow::Result<Self> {
        match backend.resolve()? {
            BackendChoice::File(path) => Ok(KeyStore::File(path)),
            BackendChoice::Pkcs11(settings) => {
                let config = settings.config();
                let token = pkcs11::open_token(&config).with_context(|| {
                    format!(
                        "cannot open the PKCS#11 token {:?} through {}",
                        config.token_label,
                        config.module.display()
                    )
                })?;
                Ok(KeyStore::Token(Box::new(token)))
            }
            BackendChoice::AwsKms(_) => {
                anyhow::bail!("this command does not support --backend aws-kms")
            }
            BackendChoice::Vault(_) => {
                anyhow::bail!("this command does not support --backend vault")
            }
        }
    }

    /// The options that name this store again in a suggested command.
    fn selector(&self, backend: &BackendArgs) -> String {
        match self {
            KeyStore::File(path) => format!("--keyring {}", path.display()),
            KeyStore::Token(_) => backend.pkcs11_selector(),
        }
    }

    /// What the destroy gate judges: version `id`, if it exists.
    fn gate_target(&self, id: u32) -> anyhow::Result<Option<GateTarget>> {
        Ok(match self {
            KeyStore::File(path) => {
                let loaded = load_keyring(path)?;
                loaded.keyring.version(id).map(|v| GateTarget {
                    key_id: v.key_id().to_owned(),
                    state: v.state(),
                    disabled_at: v.disabled_at(),
                })
            }
            KeyStore::Token(token) => store::read(token)?.version(id).map(|v| GateTarget {
                key_id: v.key_id.clone(),
                state: v.state,
                disabled_at: v.disabled_at,
            }),
        })
    }
}

/// The version the destroy gate judges.
struct GateTarget {
    key_id: String,
    state: KeyState,
    disabled_at: Option<std::time::SystemTime>,
}

/// Checks the scan reports of a disabled version. `--force` turns a
/// refusal into a loud warning. `selector` names the keyring or token in the
/// commands the refusal suggests.
fn destroy_gate(
    target: Option<GateTarget>,
    selector: &str,
    version: u32,
    gate: &GateArgs,
    force: bool,
) -> anyhow::Result<GateVerdict> {
    let reports = &gate.scan_report;
    let Some(target) = target else {
        // The destroy itself reports the unknown version.
        return Ok(GateVerdict::Proceed { disabled_at: None });
    };
    if target.state != KeyState::Disabled {
        // A primary or enabled version cannot be destroyed whatever the
        // reports say; `destroy` names the step that is missing.
        return Ok(GateVerdict::Proceed { disabled_at: None });
    }
    let key_id = target.key_id.clone();
    let refusal = if reports.is_empty() {
        Some(format!(
            "refusing to destroy version {version} ({key_id}) without proof that nothing uses it.\n\
             Disable it, then scan the live etcd and every backup you keep, and pass the reports:\n  \
             etcd-inspect scan --endpoints URL --resources all --format json > live.jsonl\n  \
             etcd-inspect scan --file BACKUP.db --resources all --format json > backup.jsonl\n  \
             kube-kms key destroy {version} {selector} --scan-report live.jsonl backup.jsonl\n\
             (--force destroys without proof; data under {key_id} is then lost for good)",
        ))
    } else {
        let mut usages = Vec::new();
        for report in reports {
            usages.push(keyring::destroy_gate::read_report(report, &key_id)?);
        }
        let coverage = keyring::destroy_gate::Coverage {
            etcd_prefix: gate.etcd_prefix.clone(),
            resources: match &gate.encryption_config {
                Some(path) => {
                    let config =
                        kube_kms::inspect::encryption_config::EncryptionConfig::load(path)?;
                    keyring::destroy_gate::RequiredResources::from_config(config.kms_v2_resources())
                }
                None => keyring::destroy_gate::RequiredResources::All,
            },
        };
        match target.disabled_at {
            None => Some(format!(
                "refusing to destroy version {version} ({key_id}): the keyring does not record when it was disabled (it was disabled by an older kube-kms, or is not disabled). Run `kube-kms key enable {version}` and `kube-kms key disable {version}`, scan again, and pass the new reports",
            )),
            Some(disabled_at) => {
                let verdict = keyring::destroy_gate::evaluate(usages, disabled_at, &coverage);
                if verdict.allows() {
                    None
                } else {
                    let mut text = format!(
                        "refusing to destroy version {version} ({key_id}), disabled at {}:",
                        humantime::format_rfc3339(disabled_at)
                    );
                    for (usage, blockers) in &verdict.reports {
                        if blockers.is_empty() {
                            continue;
                        }
                        text.push_str(&format!(
                            "\n  {} ({}, scanned at {}): {} latest, {} history values under {key_id}",
                            usage.path.display(),
                            kube_kms::inspect::report::escape(usage.source.as_bytes()),
                            usage.scanned_at.map_or_else(
                                || "unknown".to_string(),
                                |at| humantime::format_rfc3339(at).to_string()
                            ),
                            usage.latest,
                            usage.history,
                        ));
                        for blocker in blockers {
                            text.push_str(&format!("\n    - {}", blocker.describe()));
                        }
                        for key in &usage.keys_listed {
                            text.push_str(&format!(
                                "\n    {}",
                                kube_kms::inspect::report::escape(key.as_bytes())
                            ));
                        }
                    }
                    text.push_str("\nRewrite the objects still under it (docs/rotation.md), scan again, and pass the new reports.");
                    Some(text)
                }
            }
        }
    };
    let disabled_at = target.disabled_at;
    match refusal {
        Some(text) if force => {
            eprintln!("kube-kms: WARNING: --force: destroying version {version} ({key_id}) anyway. {text}");
            Ok(GateVerdict::Proceed { disabled_at })
        }
        Some(text) => Ok(GateVerdict::Refused(text)),
        None => Ok(GateVerdict::Proceed { disabled_at }),
    }
}

fn token_hint() -> &'static str {
    " (running plugins on this token pick up the change within their reload poll interval)"
}

/// Loads the keyring at `path` for a command that does not write it, after
/// removing the temp files a crashed writer left next to it (each holds every
/// key). Writing commands get the same cleanup inside `keyring::modify`/`create`.
pub(crate) fn load_keyring(path: &std::path::Path) -> anyhow::Result<keyring::LoadedKeyring> {
    remove_stale_temps(path);
    Ok(keyring::load(path)?)
}

/// Removes stale `.NAME.tmp-*` files next to the keyring; a failure (e.g. a
/// read-only directory) is reported and does not stop the command.
pub(crate) fn remove_stale_temps(path: &std::path::Path) {
    match keyring::store::remove_stale_temps(path) {
        Ok(0) => {}
        Ok(removed) => eprintln!(
            "kube-kms: removed {removed} temporary keyring file(s) left next to {} by an interrupted write (each held every key)",
            path.display()
        ),
        Err(error) => eprintln!(
            "kube-kms: warning: could not check for temporary keyring files left by an interrupted write: {error}"
        ),
    }
}

fn reload_hint() -> &'static str {
    " (running plugins pick up the change when they reload the file)"
}

/// `key list --format json` of every backend: `{"versions": [...]}` and a newline.
pub(crate) fn write_versions_json(
    out: &mut impl Write,
    versions: Vec<serde_json::Value>,
) -> anyhow::Result<()> {
    write_listing_json(out, versions, None)
}

/// As [`write_versions_json`], plus `"ignored_objects": N` for a backend
/// that ignores untrusted lookalike objects (PKCS#11).
fn write_listing_json(
    out: &mut impl Write,
    versions: Vec<serde_json::Value>,
    ignored: Option<usize>,
) -> anyhow::Result<()> {
    let mut listing = serde_json::json!({ "versions": versions });
    if let (Some(object), Some(ignored)) = (listing.as_object_mut(), ignored) {
        object.insert("ignored_objects".into(), ignored.into());
    }
    serde_json::to_writer_pretty(&mut *out, &listing)?;
    writeln!(out)?;
    Ok(())
}

fn write_table(out: &mut impl Write, versions: &[VersionInfo]) -> std::io::Result<()> {
    let key_id_width = versions
        .iter()
        .map(|v| v.key_id.len())
        .max()
        .unwrap_or(0)
        .max("KEY_ID".len());
    writeln!(
        out,
        "{:<7}  {:<9}  {:<key_id_width$}  {:<20}  FINGERPRINT",
        "VERSION", "STATE", "KEY_ID", "CREATED"
    )?;
    for version in versions {
        writeln!(
            out,
            "{:<7}  {:<9}  {:<key_id_width$}  {:<20}  {}",
            version.id,
            version.state.as_str(),
            version.key_id,
            version.created,
            fingerprint(&version.key_id)
        )?;
    }
    Ok(())
}

/// The non-secret fingerprint of a version: the hex part of its key_id (for
/// a PKCS#11 version, the random tag drawn when its key was generated).
fn fingerprint(key_id: &str) -> &str {
    if let Some((_, hex)) = keyring::key_id::parse(key_id) {
        return hex;
    }
    key_id
        .strip_prefix(store::KEY_ID_PREFIX)
        .and_then(|rest| rest.split_once('-'))
        .map_or("-", |(_, hex)| hex)
}
