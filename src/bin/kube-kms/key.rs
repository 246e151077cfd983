//! `kube-kms key ...`: keyring management commands. (Being written.)
use std::process::ExitCode;

/// Keyring commands.
#[derive(clap::Subcommand)]
pub(crate) enum KeyCommand {
    /// Create a new keyring with one primary key.
    Init,
}

pub(crate) fn run(_command: KeyCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}
