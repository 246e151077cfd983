//! `kube-kms key rotate|list|disable|enable|destroy` on any root: opens the
//! root chosen with `--backend` as a `KeyAdmin` ([`on_backend`], the one
//! place a new root is registered for these commands), runs the operation
//! through the trait ([`run_admin`]) and prints what it says; `key list`
//! prints through one table writer and one JSON writer for every root.
use std::io::Write;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context as _;
use kube_kms::backend::admin::{DestroyOptions, KeyAdmin, Listing};
use kube_kms::backend::aws_kms::admin::AwsKmsAdmin;
use kube_kms::backend::file::FileAdmin;
use kube_kms::backend::pkcs11::admin::Pkcs11Admin;
use kube_kms::backend::vault::admin::VaultAdmin;

use super::gate::{destroy_gate, GateArgs, GateVerdict};
use super::ListFormat;
use crate::backend_args::{BackendArgs, BackendChoice};

/// A key operation every root offers.
pub(crate) enum Operation {
    Rotate,
    List(ListFormat),
    Disable(u32),
    Enable(u32),
    Destroy {
        id: u32,
        gate: GateArgs,
        force: bool,
        pending_window_days: i32,
    },
}

/// Runs `operation` on the root `backend` selects.
pub(crate) fn on_backend(
    operation: Operation,
    backend: &BackendArgs,
    now: SystemTime,
) -> anyhow::Result<ExitCode> {
    let choice = backend.resolve()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        match choice {
            BackendChoice::File(path) => {
                let selector = format!("--keyring {}", path.display());
                let admin = FileAdmin::new(path, selector.clone());
                run_admin(&admin, operation, &selector, now).await
            }
            BackendChoice::Pkcs11(settings) => {
                let config = settings.config();
                let selector = backend.pkcs11_selector();
                let admin = Pkcs11Admin::open(&config, selector.clone()).with_context(|| {
                    format!(
                        "cannot open the PKCS#11 token {:?} through {}",
                        config.token_label,
                        config.module.display()
                    )
                })?;
                run_admin(&admin, operation, &selector, now).await
            }
            BackendChoice::AwsKms(aws) => {
                let selector = aws.selector();
                let admin = AwsKmsAdmin::connect(&aws.config(), selector.clone()).await?;
                run_admin(&admin, operation, &selector, now).await
            }
            BackendChoice::Vault(vault) => {
                let selector = vault.selector();
                let config = &vault.config;
                let admin = VaultAdmin::connect(config, selector.clone())
                    .await
                    .with_context(|| {
                        format!(
                            "cannot reach the Transit key {}/{} at {}",
                            config.mount, config.key, config.address
                        )
                    })?;
                run_admin(&admin, operation, &selector, now).await
            }
        }
    })
}

/// Runs `operation` through `admin`; `selector`: the flags that name the
/// root again in suggested commands.
async fn run_admin(
    admin: &impl KeyAdmin,
    operation: Operation,
    selector: &str,
    now: SystemTime,
) -> anyhow::Result<ExitCode> {
    let result = run_operation(admin, operation, selector, now).await;
    for note in admin.take_notes() {
        eprintln!("kube-kms: {note}");
    }
    let Some(message) = result? else {
        return Ok(ExitCode::SUCCESS);
    };
    match message {
        Ok(message) => {
            println!("{message}");
            Ok(ExitCode::SUCCESS)
        }
        Err(refusal) => {
            eprintln!("{refusal}");
            Ok(ExitCode::from(1))
        }
    }
}

/// `Some(Ok(message))` for stdout, `Some(Err(refusal))` for stderr and exit
/// 1, `None` when the operation printed its own output.
async fn run_operation(
    admin: &impl KeyAdmin,
    operation: Operation,
    selector: &str,
    now: SystemTime,
) -> anyhow::Result<Option<Result<String, String>>> {
    Ok(Some(Ok(match operation {
        Operation::Rotate => admin.rotate(now).await?,
        Operation::List(format) => {
            let listing = admin.list().await?;
            let mut out = std::io::stdout().lock();
            match format {
                ListFormat::Json => write_json(&mut out, &listing)?,
                ListFormat::Table => write_table(&mut out, &listing)?,
            }
            return Ok(None);
        }
        Operation::Disable(id) => admin.disable(id, now).await?,
        Operation::Enable(id) => admin.enable(id, now).await?,
        Operation::Destroy {
            id,
            gate,
            force,
            pending_window_days,
        } => {
            let target = admin.gate_target(id).await?;
            let judged = match destroy_gate(target, selector, id, &gate, force)? {
                GateVerdict::Refused(refusal) => return Ok(Some(Err(refusal))),
                GateVerdict::Proceed { disabled_at } => disabled_at,
            };
            let options = DestroyOptions {
                pending_window_days,
            };
            admin.destroy(id, now, judged, options).await?
        }
    })))
}

/// `key list --format json`: `{"versions": [...]}` (plus `"ignored_objects"`
/// for a root that reports them) and a newline.
fn write_json(out: &mut impl Write, listing: &Listing) -> anyhow::Result<()> {
    let versions: Vec<&serde_json::Value> = listing.versions.iter().map(|v| &v.json).collect();
    let mut json = serde_json::json!({ "versions": versions });
    if let (Some(object), Some(ignored)) = (json.as_object_mut(), listing.ignored_objects) {
        object.insert("ignored_objects".into(), ignored.into());
    }
    serde_json::to_writer_pretty(&mut *out, &json)?;
    writeln!(out)?;
    Ok(())
}

/// `key list`: aligned columns, the root's own last column.
fn write_table(out: &mut impl Write, listing: &Listing) -> std::io::Result<()> {
    let key_id_width = listing
        .versions
        .iter()
        .map(|v| v.key_id.len())
        .max()
        .unwrap_or(0)
        .max("KEY_ID".len());
    let Some(last_column) = listing.last_column else {
        writeln!(
            out,
            "{:<7}  {:<9}  {:<key_id_width$}  CREATED",
            "VERSION", "STATE", "KEY_ID"
        )?;
        for version in &listing.versions {
            writeln!(
                out,
                "{:<7}  {:<9}  {:<key_id_width$}  {}",
                version.id,
                version.state.as_str(),
                version.key_id,
                version.created,
            )?;
        }
        return write_footer(out, listing);
    };
    writeln!(
        out,
        "{:<7}  {:<9}  {:<key_id_width$}  {:<20}  {last_column}",
        "VERSION", "STATE", "KEY_ID", "CREATED"
    )?;
    for version in &listing.versions {
        writeln!(
            out,
            "{:<7}  {:<9}  {:<key_id_width$}  {:<20}  {}",
            version.id,
            version.state.as_str(),
            version.key_id,
            version.created,
            version.last
        )?;
    }
    write_footer(out, listing)
}

fn write_footer(out: &mut impl Write, listing: &Listing) -> std::io::Result<()> {
    for line in &listing.footer {
        writeln!(out, "{line}")?;
    }
    Ok(())
}
