//! `etcd-inspect`: audits etcd and etcd backups for plaintext Secrets.
//! Glue only: the work is done in `kube_kms::inspect`.
#![forbid(unsafe_code)]
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a binary's output and its error messages are its job"
)]
use clap::{Parser, Subcommand};

#[path = "../cli_docs.rs"]
mod cli_docs;
mod scan_command;

/// Reports, for every stored Secret (or other resource), whether etcd holds it
/// in plaintext or under which encryption provider and key.
/// Exit codes: 0 clean, 1 findings, 2 error.
#[derive(Parser)]
#[command(name = "etcd-inspect", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Scan a live etcd (--endpoints) or a backup file (--file).
    Scan(Box<scan_command::ScanArgs>),
    /// Print a shell completion script (e.g. `etcd-inspect completions bash > /etc/bash_completion.d/etcd-inspect`).
    Completions(cli_docs::CompletionsArgs),
    /// Write the man pages (roff) to stdout, or one file per command to --dir.
    Man(cli_docs::ManArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Scan(args) => scan_command::run(*args),
        Command::Completions(args) => cli_docs::completions::<Cli>(&args).map(|()| 0),
        Command::Man(args) => cli_docs::man_pages::<Cli>(&args).map(|()| 0),
    };
    match result {
        Ok(code) => std::process::ExitCode::from(code),
        Err(error) => {
            eprintln!("etcd-inspect: error: {error:#}");
            std::process::ExitCode::from(kube_kms::inspect::report::EXIT_ERROR)
        }
    }
}
