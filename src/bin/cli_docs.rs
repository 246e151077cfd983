//! `completions` and `man`, shared by both binaries: shell completion
//! scripts (clap_complete) and roff man pages (clap_mangen) generated from
//! the binary's own clap definitions, so they never drift from the CLI.
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::CommandFactory;

/// Options of `completions`.
#[derive(clap::Args)]
pub(crate) struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

/// Options of `man`.
#[derive(clap::Args)]
pub(crate) struct ManArgs {
    /// Write NAME.1 and one NAME-SUBCOMMAND.1 per subcommand into this
    /// directory (created if missing) instead of the main page to stdout.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// Prints the completion script of the binary whose CLI is `C` to stdout.
pub(crate) fn completions<C: CommandFactory>(args: &CompletionsArgs) -> anyhow::Result<()> {
    let mut command = C::command();
    let name = command.get_name().to_owned();
    let mut stdout = std::io::stdout().lock();
    clap_complete::generate(args.shell, &mut command, name, &mut stdout);
    stdout.flush().context("cannot write the completion script")
}

/// Writes the man pages of the binary whose CLI is `C`.
pub(crate) fn man_pages<C: CommandFactory>(args: &ManArgs) -> anyhow::Result<()> {
    let command = C::command();
    match &args.dir {
        None => {
            let mut stdout = std::io::stdout().lock();
            clap_mangen::Man::new(command)
                .render(&mut stdout)
                .context("cannot write the man page")?;
            stdout.flush().context("cannot write the man page")
        }
        Some(dir) => write_pages(command, dir),
    }
}

fn write_pages(command: clap::Command, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the man page directory {}", dir.display()))?;
    clap_mangen::generate_to(command, dir)
        .with_context(|| format!("cannot write the man pages into {}", dir.display()))?;
    Ok(())
}
