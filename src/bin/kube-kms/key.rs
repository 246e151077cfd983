//! `kube-kms key ...`: the key management commands and their flags.
//! `rotate`, `list`, `disable`, `enable` and `destroy` work on every root
//! (`--backend`): [`run`] hands them to `run::on_backend`, which opens the
//! chosen root's `kube_kms::backend::admin::KeyAdmin`. `init` and `add` are
//! thin calls into `kube_kms::keyring` (keyring file only); `export`,
//! `import`, `check` and `promote` keep the keyring files of several nodes in
//! step (`ha`).
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context;
use kube_kms::keyring::{self, Keyring, VersionInfo};

use crate::backend_args::BackendArgs;

mod gate;
mod ha;
mod run;

pub(crate) use gate::GateArgs;

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
    kube_kms::backend::admin::describe(version.id, &version.key_id)
}

pub(crate) fn run(command: KeyCommand) -> anyhow::Result<ExitCode> {
    let now = SystemTime::now();
    let (operation, backend) = match command {
        KeyCommand::Init(KeyringArg { keyring: path }) => {
            let ring = Keyring::initial(now)?;
            let primary = ring
                .primary()
                .map(|v| v.info())
                .context("a new keyring has a primary")?;
            keyring::create(&path, &ring)?;
            println!(
                "created keyring {}: {} is primary",
                path.display(),
                describe(&primary)
            );
            return Ok(ExitCode::SUCCESS);
        }
        KeyCommand::Add(KeyringArg { keyring: path }) => {
            let added = keyring::modify(&path, |ring| ring.add(now))?;
            println!(
                "added {} as enabled (not primary); once every plugin instance has this keyring, make it primary with `kube-kms key promote {} --keyring {}`",
                describe(&added),
                added.id,
                path.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        KeyCommand::Promote(args) => return ha::promote(args),
        KeyCommand::Export(args) => return ha::export(args),
        KeyCommand::Import(args) => return ha::import(args),
        KeyCommand::Check(args) => return ha::check(args),
        KeyCommand::Rotate(backend) => (run::Operation::Rotate, backend),
        KeyCommand::List(ListArgs { backend, format }) => (run::Operation::List(format), backend),
        KeyCommand::Disable(VersionArgs { id, backend }) => (run::Operation::Disable(id), backend),
        KeyCommand::Enable(VersionArgs { id, backend }) => (run::Operation::Enable(id), backend),
        KeyCommand::Destroy(DestroyArgs {
            version: VersionArgs { id, backend },
            gate,
            force,
            aws_pending_window_days,
        }) => (
            run::Operation::Destroy {
                id,
                gate,
                force,
                pending_window_days: aws_pending_window_days,
            },
            backend,
        ),
    };
    run::on_backend(operation, &backend, now)
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
