//! `kube-kms serve`: runs the plugin. (Being written.)
use std::process::ExitCode;

/// Options of `kube-kms serve`.
#[derive(clap::Args)]
pub(crate) struct ServeArgs {}

pub(crate) fn run(_args: ServeArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}
