//! The scan-report gate of `kube-kms key destroy` (every root): a disabled
//! version is destroyed only when `etcd-inspect scan` reports, taken after it
//! was disabled, prove its key_id unused (`kube_kms::keyring::destroy_gate`
//! judges them; this module turns the verdict into the operator's message).
use std::path::PathBuf;

use kube_kms::backend::admin::GateTarget;
use kube_kms::keyring::{self, KeyState};

/// The proof `key destroy` asks for.
#[derive(clap::Args)]
pub(crate) struct GateArgs {
    /// JSON Lines reports of `etcd-inspect scan --format json` (the live etcd
    /// and every backup you keep), each taken after the version was disabled.
    /// The destroy goes ahead only if every one is complete, examined history,
    /// at least one key, --etcd-prefix and the resources encrypted with kms v2
    /// (see --encryption-config), and shows zero values (latest or history)
    /// under the version's key_id.
    #[arg(long, value_name = "FILE", num_args = 1..)]
    scan_report: Vec<PathBuf>,
    /// kube-apiserver's EncryptionConfiguration: reports must cover every
    /// resource it encrypts with a kms v2 provider. Without it, reports must
    /// be `--resources all` scans.
    #[arg(long, value_name = "PATH")]
    encryption_config: Option<PathBuf>,
    /// kube-apiserver's --etcd-prefix: reports must have scanned exactly it.
    #[arg(long, value_name = "PREFIX", default_value = "/registry")]
    etcd_prefix: String,
}

/// What the destroy gate decided.
pub(crate) enum GateVerdict {
    /// Refuse, with the message to print.
    Refused(String),
    /// Go on; `disabled_at` is the disable time the reports were judged
    /// against (`None` when the state check is left to `destroy` itself).
    Proceed {
        disabled_at: Option<std::time::SystemTime>,
    },
}

/// Checks the scan reports of a disabled version. `--force` turns a
/// refusal into a loud warning. `selector` names the keyring or token in the
/// commands the refusal suggests.
pub(crate) fn destroy_gate(
    target: Option<GateTarget>,
    selector: &str,
    version: u32,
    gate: &GateArgs,
    force: bool,
) -> anyhow::Result<GateVerdict> {
    let reports = &gate.scan_report;
    let Some(target) = target else {
        // The destroy itself reports the unknown version.
        return Ok(GateVerdict::Proceed { disabled_at: None });
    };
    if target.state != KeyState::Disabled {
        // A primary or enabled version cannot be destroyed whatever the
        // reports say; `destroy` names the step that is missing.
        return Ok(GateVerdict::Proceed { disabled_at: None });
    }
    let key_id = target.key_id.clone();
    let refusal = if reports.is_empty() {
        Some(format!(
            "refusing to destroy version {version} ({key_id}) without proof that nothing uses it.\n\
             Disable it, then scan the live etcd and every backup you keep, and pass the reports:\n  \
             etcd-inspect scan --endpoints URL --resources all --format json > live.jsonl\n  \
             etcd-inspect scan --file BACKUP.db --resources all --format json > backup.jsonl\n  \
             kube-kms key destroy {version} {selector} --scan-report live.jsonl backup.jsonl\n\
             (--force destroys without proof; data under {key_id} is then lost for good)",
        ))
    } else {
        let mut usages = Vec::new();
        for report in reports {
            usages.push(keyring::destroy_gate::read_report(report, &key_id)?);
        }
        let coverage = keyring::destroy_gate::Coverage {
            etcd_prefix: gate.etcd_prefix.clone(),
            resources: match &gate.encryption_config {
                Some(path) => {
                    let config =
                        kube_kms::inspect::encryption_config::EncryptionConfig::load(path)?;
                    keyring::destroy_gate::RequiredResources::from_config(config.kms_v2_resources())
                }
                None => keyring::destroy_gate::RequiredResources::All,
            },
        };
        match target.disabled_at {
            None => Some(format!(
                "refusing to destroy version {version} ({key_id}): the keyring does not record when it was disabled (it was disabled by an older kube-kms, or is not disabled). Run `kube-kms key enable {version}` and `kube-kms key disable {version}`, scan again, and pass the new reports",
            )),
            Some(disabled_at) => {
                let verdict = keyring::destroy_gate::evaluate(usages, disabled_at, &coverage);
                if verdict.allows() {
                    None
                } else {
                    let mut text = format!(
                        "refusing to destroy version {version} ({key_id}), disabled at {}:",
                        humantime::format_rfc3339(disabled_at)
                    );
                    for (usage, blockers) in &verdict.reports {
                        if blockers.is_empty() {
                            continue;
                        }
                        text.push_str(&format!(
                            "\n  {} ({}, scanned at {}): {} latest, {} history values under {key_id}",
                            usage.path.display(),
                            kube_kms::inspect::report::escape(usage.source.as_bytes()),
                            usage.scanned_at.map_or_else(
                                || "unknown".to_string(),
                                |at| humantime::format_rfc3339(at).to_string()
                            ),
                            usage.latest,
                            usage.history,
                        ));
                        for blocker in blockers {
                            text.push_str(&format!("\n    - {}", blocker.describe()));
                        }
                        for key in &usage.keys_listed {
                            text.push_str(&format!(
                                "\n    {}",
                                kube_kms::inspect::report::escape(key.as_bytes())
                            ));
                        }
                    }
                    text.push_str("\nRewrite the objects still under it (docs/rotation.md), scan again, and pass the new reports.");
                    Some(text)
                }
            }
        }
    };
    let disabled_at = target.disabled_at;
    match refusal {
        Some(text) if force => {
            eprintln!("kube-kms: WARNING: --force: destroying version {version} ({key_id}) anyway. {text}");
            Ok(GateVerdict::Proceed { disabled_at })
        }
        Some(text) => Ok(GateVerdict::Refused(text)),
        None => Ok(GateVerdict::Proceed { disabled_at }),
    }
}
