//! `kube-kms key ...`: keyring management commands. Each one is a thin call
//! into `kube_kms::keyring` (which keeps the invariants and writes atomically
//! under a lock) plus a message saying what changed and what follows.
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context;
use kube_kms::keyring::{self, Keyring, VersionInfo};

mod ha;

/// Keyring commands.
#[derive(clap::Subcommand)]
pub(crate) enum KeyCommand {
    /// Create a new keyring with one primary key (version 1). Never overwrites.
    Init(KeyringArg),
    /// Add a new version and make it primary; the old primary stays enabled for decryption.
    Rotate(KeyringArg),
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
    keyring: KeyringArg,
}

/// Options of `key destroy`.
#[derive(clap::Args)]
pub(crate) struct DestroyArgs {
    #[command(flatten)]
    version: VersionArgs,
    /// JSON Lines reports of `etcd-inspect scan --format json` (the live etcd
    /// and every backup you keep), each taken after the version was disabled.
    /// The destroy goes ahead only if every one shows zero values (latest or
    /// history) under the version's key_id.
    #[arg(long, value_name = "FILE", num_args = 1..)]
    scan_report: Vec<PathBuf>,
    /// Destroy without proof that the key_id is unused (data under it is lost).
    #[arg(long)]
    force: bool,
}

/// Options of `key list`.
#[derive(clap::Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    keyring: KeyringArg,
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
        KeyCommand::Rotate(KeyringArg { keyring: path }) => {
            let change = keyring::modify(&path, |ring| ring.rotate(now))?;
            format!(
                "rotated: {} is now primary; {} stays enabled for decryption{}",
                describe(&change.primary),
                describe(&change.previous),
                reload_hint()
            )
        }
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
        KeyCommand::List(ListArgs { keyring, format }) => {
            let loaded = keyring::load(&keyring.keyring)?;
            let versions = loaded.keyring.metadata();
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
                    serde_json::to_writer_pretty(
                        &mut out,
                        &serde_json::json!({ "versions": versions }),
                    )?;
                    writeln!(out)?;
                }
                ListFormat::Table => write_table(&mut out, &versions)?,
            }
            return Ok(ExitCode::SUCCESS);
        }
        KeyCommand::Disable(VersionArgs {
            id: version,
            keyring,
        }) => {
            let path = &keyring.keyring;
            let info = keyring::modify(path, |ring| ring.disable(version))?;
            format!(
                "disabled {}: seeds wrapped by it no longer decrypt{}. Undo with `kube-kms key enable {version} --keyring {}`; erase it for good with `kube-kms key destroy {version} --keyring {}`",
                describe(&info),
                reload_hint(),
                path.display(),
                path.display()
            )
        }
        KeyCommand::Enable(VersionArgs {
            id: version,
            keyring,
        }) => {
            let info = keyring::modify(&keyring.keyring, |ring| ring.enable(version))?;
            format!(
                "enabled {}: seeds wrapped by it decrypt again{}",
                describe(&info),
                reload_hint()
            )
        }
        KeyCommand::Destroy(DestroyArgs {
            version:
                VersionArgs {
                    id: version,
                    keyring,
                },
            scan_report,
            force,
        }) => {
            let judged = match destroy_gate(&keyring.keyring, version, &scan_report, force)? {
                GateVerdict::Refused(refusal) => {
                    eprintln!("{refusal}");
                    return Ok(ExitCode::from(1));
                }
                GateVerdict::Proceed { disabled_at } => disabled_at,
            };
            let info = keyring::modify(&keyring.keyring, |ring| {
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

/// Checks the scan reports of a disabled version. `--force` turns a
/// refusal into a loud warning.
fn destroy_gate(
    path: &std::path::Path,
    version: u32,
    reports: &[PathBuf],
    force: bool,
) -> anyhow::Result<GateVerdict> {
    let loaded = keyring::load(path)?;
    let Some(target) = loaded.keyring.version(version) else {
        // The destroy itself reports the unknown version.
        return Ok(GateVerdict::Proceed { disabled_at: None });
    };
    if target.state() != keyring::KeyState::Disabled {
        // A primary or enabled version cannot be destroyed whatever the
        // reports say; `destroy` names the step that is missing.
        return Ok(GateVerdict::Proceed { disabled_at: None });
    }
    let key_id = target.key_id().to_owned();
    let refusal = if reports.is_empty() {
        Some(format!(
            "refusing to destroy version {version} ({key_id}) without proof that nothing uses it.\n\
             Disable it, then scan the live etcd and every backup you keep, and pass the reports:\n  \
             etcd-inspect scan --endpoints URL --history --resources all --format json > live.jsonl\n  \
             etcd-inspect scan --file BACKUP.db --resources all --format json > backup.jsonl\n  \
             kube-kms key destroy {version} --keyring {} --scan-report live.jsonl backup.jsonl\n\
             (--force destroys without proof; data under {key_id} is then lost for good)",
            path.display()
        ))
    } else {
        let mut usages = Vec::new();
        for report in reports {
            let usage = keyring::destroy_gate::read_report(report, &key_id)?;
            if usage.live_without_history {
                eprintln!(
                    "kube-kms: note: {}: a live scan without --history: older revisions were not examined",
                    report.display()
                );
            }
            usages.push(usage);
        }
        match target.disabled_at() {
            None => Some(format!(
                "refusing to destroy version {version} ({key_id}): the keyring does not record when it was disabled (it was disabled by an older kube-kms, or is not disabled). Run `kube-kms key enable {version}` and `kube-kms key disable {version}`, scan again, and pass the new reports",
            )),
            Some(disabled_at) => {
                let verdict = keyring::destroy_gate::evaluate(usages, disabled_at);
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
                            usage.source,
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
                        for key in &usage.keys {
                            text.push_str(&format!("\n    {key}"));
                        }
                    }
                    text.push_str("\nRewrite the objects still under it (docs/rotation.md), scan again, and pass the new reports.");
                    Some(text)
                }
            }
        }
    };
    let disabled_at = target.disabled_at();
    match refusal {
        Some(text) if force => {
            eprintln!("kube-kms: WARNING: --force: destroying version {version} ({key_id}) anyway. {text}");
            Ok(GateVerdict::Proceed { disabled_at })
        }
        Some(text) => Ok(GateVerdict::Refused(text)),
        None => Ok(GateVerdict::Proceed { disabled_at }),
    }
}

fn reload_hint() -> &'static str {
    " (running plugins pick up the change when they reload the file)"
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

/// The non-secret fingerprint of a version: the hex part of its key_id.
fn fingerprint(key_id: &str) -> &str {
    keyring::key_id::parse(key_id)
        .map(|(_, hex)| hex)
        .unwrap_or("-")
}
