//! `kube-kms key rotate|list|disable|enable|destroy --backend vault`: the
//! key commands against the versions of a Vault/OpenBao Transit key. The
//! work and the ordering rules of Transit's floors are in
//! `kube_kms::backend::vault::transit`; `destroy` goes through the same
//! scan-report gate as the file keyring.
use std::io::Write;
use std::process::ExitCode;

use anyhow::Context as _;
use kube_kms::backend::vault::{self, transit, VaultVersion};

use super::{
    destroy_gate, DestroyArgs, GateTarget, GateVerdict, KeyCommand, ListArgs, ListFormat,
    VersionArgs,
};
use crate::backend_args::{BackendArgs, BackendChoice};
use crate::backend_vault::VaultArgs;

/// Whether a command was for Vault (and ran) or is left to the others.
pub(super) enum Dispatch {
    /// The command ran against Vault; its exit code.
    Done(ExitCode),
    /// Not a Vault command.
    Other(Box<KeyCommand>),
}

/// Runs `command` if its backend options select `--backend vault`.
pub(super) fn dispatch(command: KeyCommand) -> anyhow::Result<Dispatch> {
    let backend: &BackendArgs = match &command {
        KeyCommand::Rotate(backend) => backend,
        KeyCommand::List(ListArgs { backend, .. }) => backend,
        KeyCommand::Disable(version) | KeyCommand::Enable(version) => &version.backend,
        KeyCommand::Destroy(destroy) => &destroy.version.backend,
        _ => return Ok(Dispatch::Other(Box::new(command))),
    };
    // Resolving also reads --backend-config; errors surface later, once.
    let Ok(BackendChoice::Vault(args)) = backend.resolve() else {
        return Ok(Dispatch::Other(Box::new(command)));
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime
        .block_on(run_async(command, *args))
        .map(Dispatch::Done)
}

fn describe(version: &VaultVersion) -> String {
    format!("version {} ({})", version.id, version.key_id)
}

/// Version `id` of `key` for a message (its key_id when known).
fn describe_id(key: &kube_kms::backend::vault::TransitKey, id: u32) -> String {
    key.versions
        .get(&id)
        .map_or_else(|| format!("version {id}"), describe)
}

const REFRESH_HINT: &str =
    " (running plugins pick it up within --vault-refresh-interval, or at once on SIGHUP)";

async fn run_async(command: KeyCommand, args: VaultArgs) -> anyhow::Result<ExitCode> {
    let transit = vault::connect(&args.config).await.with_context(|| {
        format!(
            "cannot reach the Transit key {}/{} at {}",
            args.config.mount, args.config.key, args.config.address
        )
    })?;
    let selector = args.selector();
    let message = match command {
        KeyCommand::Rotate(_) => {
            let (key, created) = transit.rotate_or_create().await?;
            let primary = key.primary().context("a rotated key has a primary")?;
            if created {
                format!(
                    "created the Transit key {} (type {}): {} is primary",
                    key.path(),
                    key.key_type,
                    describe(primary)
                )
            } else {
                let previous = key
                    .versions
                    .get(&(primary.id - 1))
                    .map_or_else(|| "the previous version".to_owned(), describe);
                format!(
                    "rotated (Transit rotate): {} is now primary; {previous} stays enabled for decryption{REFRESH_HINT}",
                    describe(primary),
                )
            }
        }
        KeyCommand::List(ListArgs { format, .. }) => {
            let key = transit.read_key().await?;
            let mut out = std::io::stdout().lock();
            match format {
                ListFormat::Json => {
                    let versions: Vec<serde_json::Value> = key
                        .versions
                        .values()
                        .map(|v| {
                            serde_json::json!({
                                "id": v.id,
                                "key_id": v.key_id,
                                "state": v.state.as_str(),
                                "created": kube_kms::backend::aws_kms::format_time(v.created),
                            })
                        })
                        .collect();
                    super::write_versions_json(&mut out, versions)?;
                }
                ListFormat::Table => {
                    let width = key
                        .versions
                        .values()
                        .map(|v| v.key_id.len())
                        .max()
                        .unwrap_or(0)
                        .max("KEY_ID".len());
                    writeln!(
                        out,
                        "{:<7}  {:<9}  {:<width$}  CREATED",
                        "VERSION", "STATE", "KEY_ID"
                    )?;
                    for v in key.versions.values() {
                        writeln!(
                            out,
                            "{:<7}  {:<9}  {:<width$}  {}",
                            v.id,
                            v.state.as_str(),
                            v.key_id,
                            kube_kms::backend::aws_kms::format_time(v.created)
                        )?;
                    }
                    writeln!(
                        out,
                        "# Transit key {} ({}): min_decryption_version {}, min_available_version {}",
                        key.path(),
                        key.key_type,
                        key.min_decryption,
                        key.min_available
                    )?;
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        KeyCommand::Disable(VersionArgs { id, .. }) => {
            let key = transit.disable(id).await?;
            format!(
                "disabled {} (min_decryption_version {}): seeds wrapped by it no longer decrypt{REFRESH_HINT}. Undo with `kube-kms key enable {id} {selector}`; erase it for good with `kube-kms key destroy {id} {selector}`",
                describe_id(&key, id),
                key.min_decryption
            )
        }
        KeyCommand::Enable(VersionArgs { id, .. }) => {
            let key = transit.enable(id).await?;
            format!(
                "enabled {} (min_decryption_version {}): seeds wrapped by it decrypt again{REFRESH_HINT}",
                describe_id(&key, id),
                key.min_decryption
            )
        }
        KeyCommand::Destroy(DestroyArgs {
            version: VersionArgs { id, .. },
            gate,
            force,
            ..
        }) => {
            let current = transit.read_key().await?;
            // The floors decide first: an out-of-order destroy is refused
            // with its reason before any report is read.
            transit::plan_destroy(&current, id)?;
            let writes_ended = current.writes_ended();
            if let Some(at) = writes_ended {
                eprintln!(
                    "kube-kms: Transit keeps no disable time: scan reports must be taken after {} (the creation of version {}, the oldest enabled one, plus {}s for plugins and kube-apiserver to stop writing under older versions)",
                    humantime::format_rfc3339_seconds(at),
                    current.min_decryption,
                    transit::WRITES_SETTLE.as_secs()
                );
            }
            let target = current.versions.get(&id).map(|v| GateTarget {
                key_id: v.key_id.clone(),
                state: v.state,
                disabled_at: writes_ended,
            });
            match destroy_gate(target, &selector, id, &gate, force)? {
                GateVerdict::Refused(refusal) => {
                    eprintln!("{refusal}");
                    return Ok(ExitCode::from(1));
                }
                GateVerdict::Proceed { .. } => {}
            }
            let key = transit.destroy(id, &current).await?;
            format!(
                "destroyed {} (Transit trim, min_available_version {}): its key material is gone from Vault for good; the version number and key_id are never reused",
                describe_id(&key, id),
                key.min_available
            )
        }
        _ => anyhow::bail!("this command does not support --backend vault"),
    };
    println!("{message}");
    Ok(ExitCode::SUCCESS)
}
