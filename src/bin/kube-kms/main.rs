//! `kube-kms`: the KMS v2 plugin server (`serve`) and its keyring tool (`key`).
//! Glue only: the work is done in the `kube_kms` library.
#![forbid(unsafe_code)]
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a binary's output and its error messages are its job"
)]
use clap::{Parser, Subcommand};

mod backend_args;
mod backend_aws;
mod backend_vault;
#[path = "../cli_docs.rs"]
mod cli_docs;
mod demo;
mod key;
mod serve;

/// A KMS v2 plugin for kube-apiserver with a rotating local keyring.
#[derive(Parser)]
#[command(name = "kube-kms", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the KMS v2 gRPC API on a unix socket.
    Serve(serve::ServeArgs),
    /// Run the plugin on a temp socket with a new keyring, play kube-apiserver
    /// (encrypt, decrypt, rotate) and clean up. No cluster needed.
    Demo(demo::DemoArgs),
    /// Manage the key versions (a keyring file, or a PKCS#11 token with `--backend pkcs11`).
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Print a shell completion script (e.g. `kube-kms completions bash > /etc/bash_completion.d/kube-kms`).
    Completions(cli_docs::CompletionsArgs),
    /// Write the man pages (roff) to stdout, or one file per command to --dir.
    Man(cli_docs::ManArgs),
}

/// The error and its causes, each cause only if its text is not already in
/// the message (most errors here quote their source already, and `{:#}` would
/// print it twice).
fn describe(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Key(command) => key::run(command),
        Command::Demo(args) => demo::run(args),
        Command::Completions(args) => {
            cli_docs::completions::<Cli>(&args).map(|()| std::process::ExitCode::SUCCESS)
        }
        Command::Man(args) => {
            cli_docs::man_pages::<Cli>(&args).map(|()| std::process::ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("kube-kms: error: {}", describe(&error));
            std::process::ExitCode::from(2)
        }
    }
}
