//! `kube-kms key export|import|check` and `key promote --peer`: keeping the
//! keyrings of several plugin instances (one per control-plane node) in step.
//! The work is in `kube_kms::keyring::{bundle, peer_check}`.
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use kube_kms::keyring::bundle::{self, Protection, Unlock};
use kube_kms::keyring::peer_check::{self, Holding, Verdict};
use kube_kms::keyring::{self, KeyState, VersionInfo};

use super::{describe, reload_hint, KeyringArg};

/// Options of `key export`.
#[derive(clap::Args)]
pub(crate) struct ExportArgs {
    /// The versions to export, as `key list` shows them.
    #[arg(value_name = "VERSION", required = true)]
    ids: Vec<u32>,
    #[command(flatten)]
    keyring: KeyringArg,
    /// The bundle file to create (mode 0600; never overwritten).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Encrypt to this age X25519 recipient (`age1...`, from `age-keygen`); repeatable.
    #[arg(
        long,
        value_name = "AGE_RECIPIENT",
        conflicts_with = "passphrase_file",
        required_unless_present = "passphrase_file"
    )]
    recipient: Vec<String>,
    /// Encrypt to the passphrase on the first line of this file (age scrypt; at least 12 characters).
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
}

/// Options of `key import`.
#[derive(clap::Args)]
pub(crate) struct ImportArgs {
    /// The bundle made by `kube-kms key export`.
    #[arg(value_name = "FILE")]
    bundle: PathBuf,
    #[command(flatten)]
    keyring: KeyringArg,
    /// An age identity file (`AGE-SECRET-KEY-1...` lines) whose recipient the bundle was exported to.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "passphrase_file",
        required_unless_present = "passphrase_file"
    )]
    identity: Option<PathBuf>,
    /// A file whose first line is the passphrase the bundle was exported with.
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
    /// The fingerprint `key export` printed on the exporting node (carry it
    /// over a channel nobody else can write to). A bundle that does not match
    /// is refused: anyone who knows this node's age recipient can make one
    /// that opens.
    #[arg(long, value_name = "FINGERPRINT", required = true)]
    expect_fingerprint: String,
    /// Make this version primary after the import (required when the import
    /// creates the keyring). Without it the primary never changes.
    #[arg(long, value_name = "VERSION")]
    set_primary: Option<u32>,
}

/// Options of `key check`.
#[derive(clap::Args)]
pub(crate) struct CheckArgs {
    #[command(flatten)]
    keyring: KeyringArg,
    /// A running kube-kms to check (`unix:///path`, a path, or `@name`); repeatable.
    #[arg(long = "peer", value_name = "ADDRESS", required = true)]
    peers: Vec<String>,
    /// Time limit for connecting and for each call.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,
}

/// Options of `key promote`.
#[derive(clap::Args)]
pub(crate) struct PromoteArgs {
    /// The version number, as `key list` shows it.
    #[arg(value_name = "VERSION")]
    id: u32,
    #[command(flatten)]
    keyring: KeyringArg,
    /// A running kube-kms that must hold the version first (`unix:///path`); repeatable.
    /// Without `--require-peers` a peer lacking it is only warned about.
    #[arg(long = "peer", value_name = "ADDRESS")]
    peers: Vec<String>,
    /// Refuse to promote unless every `--peer` decrypts under the version.
    #[arg(long, requires = "peers")]
    require_peers: bool,
    /// Time limit for connecting and for each call to a peer.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn list_versions(versions: &[VersionInfo]) -> String {
    versions.iter().map(describe).collect::<Vec<_>>().join(", ")
}

pub(crate) fn export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let protection = match &args.passphrase_file {
        Some(path) => Protection::passphrase_file(path)?,
        None => Protection::recipients(&args.recipient)?,
    };
    let loaded = super::load_keyring(&args.keyring.keyring)?;
    let exported = bundle::export(&loaded.keyring, &args.ids, &protection)?;
    bundle::write_new(&args.out, &exported.bundle)?;
    let primary = exported
        .versions
        .iter()
        .find(|v| v.state == KeyState::Primary)
        .map(|v| format!(" [--set-primary {}]", v.id))
        .unwrap_or_default();
    println!(
        "exported {} to {} (encrypted with age)\nfingerprint: {}\nimport it on each node with `kube-kms key import {} --keyring PATH --expect-fingerprint {}{primary}` (the fingerprint proves the bundle is this one: carry it to the other node yourself, not with the bundle), then delete the bundle",
        list_versions(&exported.versions),
        args.out.display(),
        exported.fingerprint,
        args.out.display(),
        exported.fingerprint,
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn import(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let unlock = match (&args.identity, &args.passphrase_file) {
        (_, Some(path)) => Unlock::passphrase_file(path)?,
        (Some(path), None) => Unlock::identity_file(path)?,
        (None, None) => anyhow::bail!("give --identity FILE or --passphrase-file FILE"),
    };
    let path = &args.keyring.keyring;
    super::remove_stale_temps(path);
    let opened = bundle::open_file(&args.bundle, &unlock)?;
    bundle::check_fingerprint(&opened, &args.expect_fingerprint)?;
    let outcome = bundle::import(path, &opened, args.set_primary)?;
    let mut out = std::io::stdout().lock();
    for version in &outcome.added {
        writeln!(out, "imported {} as {}", describe(version), version.state)?;
    }
    for version in &outcome.present {
        writeln!(
            out,
            "already present: {} ({}, unchanged)",
            describe(version),
            version.state
        )?;
    }
    for version in &outcome.destroyed_locally {
        writeln!(
            out,
            "not imported: {} is destroyed in this keyring and stays destroyed",
            describe(version)
        )?;
    }
    if outcome.created_keyring {
        writeln!(
            out,
            "created keyring {} from the bundle; version {} is primary (--set-primary)",
            path.display(),
            outcome.promoted.unwrap_or_default()
        )?;
    } else if let Some(id) = outcome.promoted {
        writeln!(
            out,
            "keyring {} updated; version {id} is now primary (--set-primary){}",
            path.display(),
            reload_hint()
        )?;
    } else if outcome.is_noop() {
        writeln!(out, "keyring {} unchanged", path.display())?;
    } else {
        writeln!(
            out,
            "keyring {} updated{}; imported versions are not primary: promote with `kube-kms key promote VERSION` on every node once `kube-kms key check` passes",
            path.display(),
            reload_hint()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let loaded = super::load_keyring(&args.keyring.keyring)?;
    let report = runtime()?.block_on(peer_check::check(
        &loaded.keyring,
        &args.peers,
        args.timeout,
    ));
    let mut out = std::io::stdout().lock();
    writeln!(out, "peers:")?;
    for (index, peer) in report.peers.iter().enumerate() {
        match &peer.primary {
            Ok(key_id) => writeln!(
                out,
                "  [{}] {}  primary {}  healthz {}",
                index + 1,
                peer.address,
                key_id,
                peer.healthz
            )?,
            Err(reason) => writeln!(
                out,
                "  [{}] {}  UNREACHABLE: {}",
                index + 1,
                peer.address,
                reason
            )?,
        }
    }
    writeln!(
        out,
        "versions (local state; each peer [n] ok/missing/error):"
    )?;
    for version in &report.versions {
        let local = version
            .local_state
            .map(KeyState::as_str)
            .unwrap_or("MISSING LOCALLY");
        let cells: Vec<String> = version
            .peers
            .iter()
            .enumerate()
            .map(|(index, holding)| format!("[{}] {}", index + 1, holding.word()))
            .collect();
        writeln!(
            out,
            "  {}  {}{}  {}",
            version.key_id,
            local,
            if version.primary_somewhere {
                " (primary somewhere)"
            } else {
                ""
            },
            cells.join("  ")
        )?;
        for (index, holding) in version.peers.iter().enumerate() {
            if let Holding::Missing(reason) | Holding::Error(reason) = holding {
                let address = report
                    .peers
                    .get(index)
                    .map(|p| p.address.as_str())
                    .unwrap_or("?");
                writeln!(out, "      [{}] {}: {}", index + 1, address, reason)?;
            }
        }
    }
    let (message, code) = match report.verdict() {
        Verdict::Agree => (
            "OK: every peer holds every version the local keyring can use and every primary in use; promoting any of them is safe",
            0,
        ),
        Verdict::Disagree => (
            "NOT IN STEP: some node lacks a version (see above). Import the missing versions (`kube-kms key export` / `import`) before promoting; if one is already primary somewhere, Secrets it wrote are unreadable through the nodes that lack it",
            1,
        ),
        Verdict::Error => (
            "UNKNOWN: some peer could not be asked (see above); fix or name the right socket and run the check again",
            2,
        ),
    };
    writeln!(out, "{message}")?;
    Ok(ExitCode::from(code))
}

pub(crate) fn promote(args: PromoteArgs) -> anyhow::Result<ExitCode> {
    let path = &args.keyring.keyring;
    if !args.peers.is_empty() {
        let loaded = super::load_keyring(path)?;
        let version = loaded.keyring.version(args.id).with_context(|| {
            format!(
                "there is no version {} in keyring {}",
                args.id,
                path.display()
            )
        })?;
        let kek = version
            .material()
            .with_context(|| format!("cannot promote version {}: it is destroyed", args.id))?;
        let results = runtime()?.block_on(peer_check::check_version(
            kek,
            version.key_id(),
            &args.peers,
            args.timeout,
        ));
        let mut lacking = Vec::new();
        for (address, holding) in &results {
            match holding {
                Holding::Ok => {}
                Holding::Missing(reason) | Holding::Error(reason) => {
                    eprintln!(
                        "kube-kms: warning: peer {address} cannot decrypt under {} ({}: {reason})",
                        version.key_id(),
                        holding.word()
                    );
                    lacking.push(address.as_str());
                }
            }
        }
        if !lacking.is_empty() {
            if args.require_peers {
                eprintln!(
                    "kube-kms: refusing to promote version {} (--require-peers): import it on {} first, then run `kube-kms key check`",
                    args.id,
                    lacking.join(", ")
                );
                return Ok(ExitCode::from(1));
            }
            eprintln!(
                "kube-kms: warning: promoting anyway; Secrets written through this node will be unreadable through {} until they hold version {}",
                lacking.join(", "),
                args.id
            );
        }
    }
    let change = keyring::modify(path, |ring| ring.promote(args.id))?;
    println!(
        "promoted: {} is now primary; {} stays enabled for decryption{}",
        describe(&change.primary),
        describe(&change.previous),
        reload_hint()
    );
    Ok(ExitCode::SUCCESS)
}
