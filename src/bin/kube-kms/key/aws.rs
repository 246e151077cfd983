//! `kube-kms key rotate|list|disable|enable|destroy --backend aws-kms`:
//! the key commands against the versions in AWS KMS. The work (and the state
//! machine's rules, shared with the keyring file) is in
//! `kube_kms::backend::aws_kms::ring`; `destroy` goes through the same
//! scan-report gate as the file keyring.
use std::io::Write;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context as _;
use kube_kms::backend::aws_kms::{self, ring, AwsVersion};

use super::{
    destroy_gate, DestroyArgs, GateTarget, GateVerdict, KeyCommand, ListArgs, ListFormat,
    VersionArgs,
};
use crate::backend_args::{BackendArgs, BackendChoice};
use crate::backend_aws::AwsKmsArgs;

/// Whether a command was for AWS KMS (and ran) or is left to the others.
pub(super) enum Dispatch {
    /// The command ran against AWS KMS; its exit code.
    Done(ExitCode),
    /// Not an AWS KMS command.
    Other(Box<KeyCommand>),
}

/// Runs `command` if its backend options select `--backend aws-kms`.
pub(super) fn dispatch(command: KeyCommand) -> anyhow::Result<Dispatch> {
    let backend: &BackendArgs = match &command {
        KeyCommand::Rotate(backend) => backend,
        KeyCommand::List(ListArgs { backend, .. }) => backend,
        KeyCommand::Disable(version) | KeyCommand::Enable(version) => &version.backend,
        KeyCommand::Destroy(destroy) => &destroy.version.backend,
        _ => return Ok(Dispatch::Other(Box::new(command))),
    };
    // Resolving also reads --backend-config; errors surface here once.
    let Ok(BackendChoice::AwsKms(aws)) = backend.resolve() else {
        return Ok(Dispatch::Other(Box::new(command)));
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime
        .block_on(run_async(command, aws))
        .map(Dispatch::Done)
}

fn describe(version: &AwsVersion) -> String {
    format!("version {} ({})", version.id, version.key_id)
}

async fn client(aws: &AwsKmsArgs) -> anyhow::Result<aws_sdk_kms::Client> {
    ring::validate_prefix(&aws.aws_alias_prefix)?;
    Ok(aws_kms::connect(&aws.config()).await?)
}

const REFRESH_HINT: &str =
    " (running plugins pick it up within --aws-refresh-interval, or at once on SIGHUP)";

async fn run_async(command: KeyCommand, aws: AwsKmsArgs) -> anyhow::Result<ExitCode> {
    let client = client(&aws).await?;
    let prefix = aws.aws_alias_prefix.as_str();
    let selector = aws.selector();
    let message = match command {
        KeyCommand::Rotate(_) => {
            let empty = ring::fetch(&client, prefix, false)
                .await?
                .versions
                .is_empty();
            // Another rotation may create version 1 first: then rotate on it.
            let created = if empty {
                match ring::init(&client, prefix).await {
                    Ok(primary) => Some(primary),
                    Err(ring::RingError::Race { .. } | ring::RingError::AlreadyExists { .. }) => {
                        None
                    }
                    Err(error) => return Err(error.into()),
                }
            } else {
                None
            };
            if let Some(primary) = created {
                format!(
                    "created version 1 under {prefix} in AWS KMS: {} is primary (KMS key {})",
                    describe(&primary),
                    primary.arn
                )
            } else {
                let rotation = ring::rotate(&client, prefix).await?;
                format!(
                    "rotated: {} is now primary; {} stays enabled for decryption{REFRESH_HINT}",
                    describe(&rotation.primary),
                    describe(&rotation.previous),
                )
            }
        }
        KeyCommand::List(ListArgs { format, .. }) => {
            let ring = ring::fetch(&client, prefix, true).await?;
            let mut out = std::io::stdout().lock();
            match format {
                ListFormat::Json => {
                    let versions: Vec<serde_json::Value> = ring
                        .versions
                        .values()
                        .map(|v| {
                            let mut value = serde_json::json!({
                                "id": v.id,
                                "key_id": v.key_id,
                                "state": v.state.as_str(),
                                "created": aws_kms::format_time(v.created),
                                "kms_key_arn": v.arn,
                                "kms_state": v.kms_state,
                            });
                            if let (Some(object), Some(_)) = (value.as_object_mut(), v.disabled_at)
                            {
                                object.insert(
                                    "disabled_at".into(),
                                    aws_kms::format_time(v.disabled_at).into(),
                                );
                            }
                            value
                        })
                        .collect();
                    super::write_versions_json(&mut out, versions)?;
                }
                ListFormat::Table => {
                    let width = ring
                        .versions
                        .values()
                        .map(|v| v.key_id.len())
                        .max()
                        .unwrap_or(0)
                        .max("KEY_ID".len());
                    writeln!(
                        out,
                        "{:<7}  {:<9}  {:<width$}  {:<20}  KMS_STATE",
                        "VERSION", "STATE", "KEY_ID", "CREATED"
                    )?;
                    for v in ring.versions.values() {
                        writeln!(
                            out,
                            "{:<7}  {:<9}  {:<width$}  {:<20}  {}",
                            v.id,
                            v.state.as_str(),
                            v.key_id,
                            aws_kms::format_time(v.created),
                            v.kms_state
                        )?;
                    }
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        KeyCommand::Disable(VersionArgs { id, .. }) => {
            let version = ring::disable(&client, prefix, id, SystemTime::now()).await?;
            format!(
                "disabled {} (DisableKey): seeds wrapped by it no longer decrypt{REFRESH_HINT}. Undo with `kube-kms key enable {id} {selector}`; erase it for good with `kube-kms key destroy {id} {selector}`",
                describe(&version),
            )
        }
        KeyCommand::Enable(VersionArgs { id, .. }) => {
            let version = ring::enable(&client, prefix, id).await?;
            format!(
                "enabled {} (EnableKey): seeds wrapped by it decrypt again{REFRESH_HINT}",
                describe(&version)
            )
        }
        KeyCommand::Destroy(DestroyArgs {
            version: VersionArgs { id, .. },
            gate,
            force,
            aws_pending_window_days,
        }) => {
            let current = ring::fetch(&client, prefix, true).await?;
            let target = current.versions.get(&id).map(|v| GateTarget {
                key_id: v.key_id.clone(),
                state: v.state,
                disabled_at: v.disabled_at,
            });
            let judged = match destroy_gate(target, &selector, id, &gate, force)? {
                GateVerdict::Refused(refusal) => {
                    eprintln!("{refusal}");
                    return Ok(ExitCode::from(1));
                }
                GateVerdict::Proceed { disabled_at } => disabled_at,
            };
            let version =
                ring::destroy(&client, prefix, id, aws_pending_window_days, judged).await?;
            format!(
                "destroyed {}: KMS deletes the key after {aws_pending_window_days} days (ScheduleKeyDeletion); until then `aws kms cancel-key-deletion --key-id {}` can undo it. The version number and key_id are never reused",
                describe(&version),
                version.arn
            )
        }
        _ => anyhow::bail!("this command does not support --backend aws-kms"),
    };
    println!("{message}");
    Ok(ExitCode::SUCCESS)
}
