//! The audit: everything between "here are the options and a source" and
//! "here is the report".
//!
//! [`Audit::run`] loads the EncryptionConfiguration, builds the classifier
//! (knowing its key and provider names), connects to the KMS plugin for
//! verification, settles the current key ids, starts the verify pool, reads
//! the [`Source`] into the [`Ledger`] (the [`ObservationSink`] that
//! classifies each value, sorts out history and applies the policy) and
//! returns the [`Report`]. Callers (the `etcd-inspect` binary, tests) only
//! fill in [`AuditOptions`], pick a source, and print the report.

use std::path::PathBuf;
use std::sync::Arc;

use super::classify::Classifier;
use super::encryption_config::{EncryptionConfig, KeyedProvider};
use super::progress::Progress;
use super::report::Report;
use super::source::{ReadScope, Source, SourceError};
use super::verify::plugin::PluginUnwrapper;
use super::verify::pool::VerifyPool;
use super::verify::{DekUnwrapper, Verifier};
use super::ObservationSink;

mod ledger;
mod policy;
mod result;
pub use ledger::{ClassInfo, Ledger};
pub use policy::*;
pub use result::*;

/// What to audit and how to judge it (the flags of `etcd-inspect scan`
/// that are not about the source or the output).
#[derive(Debug, Clone, Default)]
pub struct AuditOptions {
    /// Key prefix of kube-apiserver (`--etcd-prefix`, `/registry`).
    pub prefix: String,
    /// Resources: a comma-separated list or `all` ([`ResourceFilter::parse`]).
    pub resources: String,
    /// Do not judge older revisions.
    pub ignore_history: bool,
    /// Current values must use this provider (`PROVIDER[:NAME]`).
    pub require_provider: Option<String>,
    /// Current kms v2 values under any other key_id are stale.
    pub allowed_key_ids: Option<Vec<String>>,
    /// The current kms v2 key_id (else the plugin's, when verifying and no
    /// allowed key ids are given).
    pub current_key_id: Option<String>,
    /// Key and provider names to match exactly (names holding ':').
    pub key_names: Vec<String>,
    /// kube-apiserver's EncryptionConfiguration: its names, and its keys to
    /// verify aescbc, aesgcm and secretbox values.
    pub encryption_config: Option<PathBuf>,
    /// A KMS v2 plugin's socket (`unix:///path`) to verify kms v2 values.
    pub verify_with: Option<String>,
    /// The caller will list the objects under stale key ids: refuse to run
    /// without a current key id and exactly one resource.
    pub list_stale: bool,
}

/// Where an audit tells its operator what is going on (not the report).
pub trait Console {
    /// A line worth reading now: the plugin's status, a warning, a notice
    /// (no prefix; the caller adds its own).
    fn notice(&mut self, line: &str);

    /// Where to draw the progress line while the source is read, if anywhere.
    fn progress(&mut self) -> Option<&mut dyn std::io::Write>;
}

/// A console that drops everything (tests, library callers).
#[derive(Debug, Default)]
pub struct Quiet;

impl Console for Quiet {
    fn notice(&mut self, _line: &str) {}

    fn progress(&mut self) -> Option<&mut dyn std::io::Write> {
        None
    }
}

/// Why an audit did not produce a report.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// `--require-provider` names no known provider.
    #[error("--require-provider {0}: unknown provider (use identity, aescbc, aesgcm, secretbox, kms-v1 or kms-v2, optionally :NAME)")]
    RequireProvider(String),
    /// The EncryptionConfiguration could not be loaded.
    #[error(transparent)]
    EncryptionConfig(#[from] super::encryption_config::EncryptionConfigError),
    /// The KMS plugin could not be reached.
    #[error("--verify-with {address}: is the plugin running and is this its socket?")]
    Plugin {
        /// The socket address given.
        address: String,
        /// Why.
        #[source]
        source: super::verify::plugin::PluginError,
    },
    /// Listing stale objects needs to know which key id is current.
    #[error("--emit-stale needs the current key_id: give --current-key-id KEY_ID or --verify-with the plugin's socket")]
    StaleWithoutCurrent,
    /// Listing stale objects needs one resource, so each line names an object of it.
    #[error("--emit-stale needs exactly one resource in --resources (e.g. --resources secrets), so each line names an object of that resource")]
    StaleResources,
    /// The source could not be read completely.
    #[error(transparent)]
    Source(#[from] SourceError),
}

/// One audit: see the module doc.
#[derive(Debug)]
pub struct Audit;

impl Audit {
    /// Audits `source` under `options`, telling `console` what happens on
    /// the way; the report says what was found (its exit code included).
    pub fn run(
        source: &mut dyn Source,
        options: AuditOptions,
        console: &mut dyn Console,
    ) -> Result<Report, AuditError> {
        Self::run_overlapping(source, options, console, |_| {})
    }

    /// [`Audit::run`], calling `meanwhile` with the judged values while a
    /// check of the source still runs (a backup file's SHA-256, on its own
    /// thread), and only then: work done there costs no time when the check
    /// is the longer of the two. It must not report anything: if the check
    /// fails, this returns the error and what `meanwhile` saw must be
    /// discarded.
    pub fn run_overlapping(
        source: &mut dyn Source,
        options: AuditOptions,
        console: &mut dyn Console,
        meanwhile: impl FnOnce(&AuditResult),
    ) -> Result<Report, AuditError> {
        let scanned_at = std::time::SystemTime::now();
        let require_provider = match &options.require_provider {
            Some(spec) => Some(
                RequiredProvider::parse(spec)
                    .ok_or_else(|| AuditError::RequireProvider(spec.clone()))?,
            ),
            None => None,
        };
        let encryption_config = match &options.encryption_config {
            Some(path) => Some(EncryptionConfig::load(path)?),
            None => None,
        };
        let classifier = classifier(&options.key_names, encryption_config.as_ref());
        let mut plugin_key_id = None;
        let plugin: Option<Arc<dyn DekUnwrapper>> = match &options.verify_with {
            Some(address) => {
                let (plugin, status) =
                    PluginUnwrapper::connect(address).map_err(|source| AuditError::Plugin {
                        address: address.clone(),
                        source,
                    })?;
                if status.healthz != "ok" {
                    console.notice(&format!(
                        "warning: the KMS plugin reports healthz {:?}; verification goes on",
                        status.healthz
                    ));
                }
                console.notice(&format!(
                    "KMS plugin {address}: Status version {}, key_id {}",
                    status.version, status.key_id
                ));
                plugin_key_id = Some(status.key_id);
                Some(Arc::new(plugin))
            }
            None => None,
        };
        let mut allowed_key_ids: Option<Vec<Vec<u8>>> = options
            .allowed_key_ids
            .as_ref()
            .map(|ids| ids.iter().map(|id| id.as_bytes().to_vec()).collect());
        let current = options
            .current_key_id
            .clone()
            .or(if allowed_key_ids.is_none() {
                plugin_key_id
            } else {
                None
            });
        if let Some(current) = current {
            allowed_key_ids
                .get_or_insert_with(Vec::new)
                .push(current.into_bytes());
        }
        let resources = ResourceFilter::parse(&options.resources);
        if options.list_stale {
            if allowed_key_ids.is_none() {
                return Err(AuditError::StaleWithoutCurrent);
            }
            if !matches!(&resources, ResourceFilter::Only(names) if names.len() == 1) {
                return Err(AuditError::StaleResources);
            }
        }
        let ledger_options = LedgerOptions {
            prefix: options.prefix.as_bytes().to_vec(),
            resources,
            ignore_history: options.ignore_history,
            require_provider,
            allowed_key_ids,
            classifier: classifier.clone(),
        };
        let mut ledger = Ledger::new(ledger_options.clone());
        if plugin.is_some() || encryption_config.is_some() {
            let verifier = Verifier::new(plugin, encryption_config);
            ledger.verify_with(VerifyPool::start(
                Arc::new(verifier),
                classifier,
                VerifyPool::default_threads(),
            ));
        }
        let scope = ReadScope::of(&ledger_options);
        let label = source.label();
        let started = match console.progress() {
            Some(out) => {
                let mut progress = Progress::new(&mut ledger, out, label);
                source.read(&scope, &mut progress)
            }
            None => source.read(&scope, &mut ledger as &mut dyn ObservationSink),
        }?;
        let result = ledger.finish();
        if started.is_checking() {
            meanwhile(&result);
        }
        let read = started.finish()?;
        for notice in &read.notices {
            console.notice(&format!("notice: {notice}"));
        }
        let mut info = read.info;
        info.scanned_at = Some(scanned_at);
        Ok(Report {
            result,
            source: info,
            remnants: read.remnants,
            timings: read.timings,
        })
    }
}

/// The classifier, knowing the names given by `key_names` and the
/// EncryptionConfiguration.
fn classifier(key_names: &[String], config: Option<&EncryptionConfig>) -> Classifier {
    let mut names = key_names.to_vec();
    if let Some(config) = config {
        for kind in [
            KeyedProvider::AesCbc,
            KeyedProvider::AesGcm,
            KeyedProvider::Secretbox,
        ] {
            names.extend(config.key_names(kind).into_iter().map(str::to_string));
        }
        names.extend(config.kms_names().iter().cloned());
    }
    Classifier::with_names(&names)
}

#[cfg(test)]
mod tests;
