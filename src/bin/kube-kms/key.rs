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
    /// Erase a disabled version's material for good (its id and key_id stay reserved).
    Destroy(VersionArgs),
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
        KeyCommand::Destroy(VersionArgs {
            id: version,
            keyring,
        }) => {
            let info = keyring::modify(&keyring.keyring, |ring| ring.destroy(version))?;
            format!(
                "destroyed {}: its key material is erased for good; the id and key_id stay reserved and are never reused",
                describe(&info)
            )
        }
    };
    println!("{message}");
    Ok(ExitCode::SUCCESS)
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
