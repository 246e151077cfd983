//! docs/cli.md documents every flag of every subcommand of both binaries.
//! The flags are read from the real binaries' `--help` (rendered by clap from
//! the definitions in src/bin/), walking every subcommand; each must have a
//! table row (`` | `--flag <VALUE>` | what | ``) in the section of docs/cli.md
//! headed by that command line (`` ### `kube-kms key rotate` ``). The reverse holds too: a flag a section
//! documents that the command does not accept fails (a renamed or removed
//! flag). `--help` and `--version` are clap's own and not listed.
//! `tools/cli-reference` writes docs/cli.md from the same `--help` pages.
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

const CLI_DOC: &str = "docs/cli.md";

/// One `--help` page: its subcommands and long flags.
struct Help {
    subcommands: Vec<String>,
    flags: BTreeSet<String>,
}

fn help(binary: &str, path: &[String]) -> Help {
    let output = Command::new(binary)
        .args(path)
        .arg("--help")
        .env("COLUMNS", "200")
        .output()
        .unwrap_or_else(|e| panic!("run {binary} {path:?} --help: {e}"));
    assert!(output.status.success(), "{binary} {path:?} --help failed");
    let text = String::from_utf8(output.stdout).expect("UTF-8 help");
    let mut subcommands = Vec::new();
    let mut flags = BTreeSet::new();
    let mut section = "";
    for line in text.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            section = line;
            continue;
        }
        match section {
            "Commands:" => {
                // "  name  description": two spaces, then the name.
                if let Some(name) = line
                    .strip_prefix("  ")
                    .filter(|rest| !rest.starts_with(' '))
                    .and_then(|rest| rest.split_whitespace().next())
                {
                    if name != "help" {
                        subcommands.push(name.to_owned());
                    }
                }
            }
            "" | "Arguments:" => {}
            // "Options:" and headings of flag groups ("AWS KMS backend ...:").
            _ => {
                // "  -s, --long <V>" or "      --long <V>"; description lines
                // that wrap are indented further and never count.
                let rest = line
                    .strip_prefix("  ")
                    .and_then(|rest| {
                        if rest.starts_with('-') && !rest.starts_with("--") {
                            rest.split_once(", ").map(|(_, long)| long)
                        } else {
                            rest.strip_prefix("    ")
                        }
                    })
                    .filter(|rest| rest.starts_with("--"));
                if let Some(rest) = rest {
                    let flag: String = rest
                        .chars()
                        .take_while(|c| !c.is_whitespace() && *c != '=' && *c != '<')
                        .collect();
                    if flag != "--help" && flag != "--version" {
                        flags.insert(flag);
                    }
                }
            }
        }
    }
    Help { subcommands, flags }
}

/// Every command line (`kube-kms key rotate`) of a binary with its flags.
fn commands_of(binary: &str, name: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut commands = BTreeMap::new();
    let mut todo: Vec<Vec<String>> = vec![Vec::new()];
    while let Some(path) = todo.pop() {
        let page = help(binary, &path);
        for subcommand in &page.subcommands {
            let mut next = path.clone();
            next.push(subcommand.clone());
            todo.push(next);
        }
        let line = std::iter::once(name.to_owned())
            .chain(path.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ");
        commands.insert(line, page.flags);
    }
    commands
}

fn all_commands() -> BTreeMap<String, BTreeSet<String>> {
    let mut commands = commands_of(env!("CARGO_BIN_EXE_kube-kms"), "kube-kms");
    commands.extend(commands_of(
        env!("CARGO_BIN_EXE_etcd-inspect"),
        "etcd-inspect",
    ));
    commands
}

/// The sections of docs/cli.md headed `` `COMMAND LINE` `` (any level), with
/// the flags each one documents in a table row.
fn documented() -> BTreeMap<String, BTreeSet<String>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(CLI_DOC);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {CLI_DOC}: {e}"));
    let mut sections: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line.starts_with('#') {
            let heading = line.trim_start_matches('#').trim();
            current = heading
                .strip_prefix('`')
                .and_then(|h| h.strip_suffix('`'))
                .map(str::to_owned);
            if let Some(command) = &current {
                assert!(
                    sections.insert(command.clone(), BTreeSet::new()).is_none(),
                    "{CLI_DOC}: two sections for `{command}`"
                );
            }
            continue;
        }
        let Some(command) = &current else { continue };
        // A flag is documented by a table row of its own: "| `--flag <V>` | what |".
        if let Some(row) = line.strip_prefix("| `--") {
            let flag: String = std::iter::once('-')
                .chain(std::iter::once('-'))
                .chain(
                    row.chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-'),
                )
                .collect();
            sections.get_mut(command).expect("section").insert(flag);
        }
    }
    sections
}

#[test]
fn every_flag_of_every_subcommand_is_in_the_cli_reference() {
    let commands = all_commands();
    // The walk found the commands the README names (a parser that found
    // nothing would pass everything).
    for expected in [
        "kube-kms serve",
        "kube-kms key rotate",
        "kube-kms key destroy",
        "kube-kms demo",
        "etcd-inspect scan",
    ] {
        assert!(
            commands.contains_key(expected),
            "no {expected} in {commands:?}"
        );
    }
    assert!(commands["etcd-inspect scan"].contains("--deep"));
    assert!(commands["kube-kms serve"].contains("--socket"));

    let documented = documented();
    let mut missing = Vec::new();
    for (command, flags) in &commands {
        let Some(section) = documented.get(command) else {
            missing.push(format!("no section `{command}`"));
            continue;
        };
        for flag in flags.difference(section) {
            missing.push(format!("`{command}` {flag}"));
        }
    }
    assert!(
        missing.is_empty(),
        "{CLI_DOC} lacks (run `tools/cli-reference > {CLI_DOC}` and check the diff):\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn the_cli_reference_documents_no_flag_the_commands_lack() {
    let commands = all_commands();
    let mut stale = Vec::new();
    for (command, flags) in documented() {
        let Some(real) = commands.get(&command) else {
            stale.push(format!("section `{command}`: no such command"));
            continue;
        };
        for flag in flags.difference(real) {
            if flag != "--help" && flag != "--version" {
                stale.push(format!("`{command}` {flag}"));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "{CLI_DOC} documents what the CLI does not accept (run `tools/cli-reference > {CLI_DOC}`):\n  {}",
        stale.join("\n  ")
    );
}
