//! The options of `--backend aws-kms`, shared by `kube-kms serve` and the
//! `kube-kms key` commands, and opening the backend from them. Credentials
//! are deliberately not options: they come from the AWS SDK's default chain.
use std::time::Duration;

use anyhow::Context as _;
use kube_kms::backend::aws_kms::{AwsKmsBackend, AwsKmsConfig};

/// The `--aws-*` flags as given: every one optional, so that a flag can win
/// over the `aws_kms:` section of `--backend-config`, which wins over the
/// defaults ([`AwsKmsFlags::resolve`]).
#[derive(clap::Args, Clone, Debug, Default)]
#[command(next_help_heading = "AWS KMS backend (--backend aws-kms)")]
pub(crate) struct AwsKmsFlags {
    /// Alias prefix of the key versions: version N is the KMS key behind
    /// PREFIX/vN, the primary is PREFIX/primary. One prefix per cluster
    /// [default: alias/kube-kms].
    #[arg(long, value_name = "ALIAS", env = "KUBE_KMS_AWS_ALIAS_PREFIX")]
    aws_alias_prefix: Option<String>,
    /// AWS region of the keys (default: the SDK's chain: AWS_REGION,
    /// AWS_DEFAULT_REGION, the profile, instance metadata). Credentials always
    /// come from the SDK's chain (environment, profile, web identity,
    /// container or instance credentials), never from a flag.
    #[arg(long, value_name = "REGION")]
    aws_region: Option<String>,
    /// KMS endpoint instead of the region's public one (a VPC endpoint, or a
    /// KMS-compatible test server such as moto).
    #[arg(long, value_name = "URL")]
    aws_endpoint_url: Option<String>,
    /// Upper bound of one KMS call, retries included (keep it under the
    /// EncryptionConfiguration's timeout) [default: 2s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    aws_call_timeout: Option<Duration>,
    /// serve: how often the versions and their states are re-read from KMS
    /// (SIGHUP re-reads at once) [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    aws_refresh_interval: Option<Duration>,
}

/// The `aws_kms:` section of `--backend-config` (same options, no credentials).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AwsKmsSection {
    alias_prefix: Option<String>,
    region: Option<String>,
    endpoint_url: Option<String>,
    #[serde(default, with = "humantime_serde_opt")]
    call_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    refresh_interval: Option<Duration>,
}

/// Durations in the config file are written as the flags take them ("2s").
pub(crate) mod humantime_serde_opt {
    use std::time::Duration;

    use serde::Deserialize as _;

    pub(crate) fn deserialize<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        let text = Option::<String>::deserialize(deserializer)?;
        text.map(|text| {
            humantime::parse_duration(&text).map_err(|error| {
                serde::de::Error::custom(format!("{text:?} is not a duration such as 2s: {error}"))
            })
        })
        .transpose()
    }
}

impl AwsKmsFlags {
    /// Flags first, then the config file's section, then the defaults.
    pub(crate) fn resolve(&self, section: AwsKmsSection) -> AwsKmsArgs {
        let defaults = AwsKmsConfig::default();
        AwsKmsArgs {
            aws_alias_prefix: self
                .aws_alias_prefix
                .clone()
                .or(section.alias_prefix)
                .unwrap_or(defaults.alias_prefix),
            aws_region: self.aws_region.clone().or(section.region),
            aws_endpoint_url: self.aws_endpoint_url.clone().or(section.endpoint_url),
            aws_call_timeout: self
                .aws_call_timeout
                .or(section.call_timeout)
                .unwrap_or(defaults.call_timeout),
            aws_refresh_interval: self
                .aws_refresh_interval
                .or(section.refresh_interval)
                .unwrap_or(defaults.refresh_interval),
        }
    }
}

/// Where the AWS KMS keys are and how to reach KMS, resolved.
#[derive(Clone, Debug)]
pub(crate) struct AwsKmsArgs {
    pub(crate) aws_alias_prefix: String,
    pub(crate) aws_region: Option<String>,
    pub(crate) aws_endpoint_url: Option<String>,
    pub(crate) aws_call_timeout: Duration,
    pub(crate) aws_refresh_interval: Duration,
}

impl AwsKmsArgs {
    /// The library's configuration.
    pub(crate) fn config(&self) -> AwsKmsConfig {
        AwsKmsConfig {
            alias_prefix: self.aws_alias_prefix.clone(),
            region: self.aws_region.clone(),
            endpoint_url: self.aws_endpoint_url.clone(),
            call_timeout: self.aws_call_timeout,
            refresh_interval: self.aws_refresh_interval,
        }
    }

    /// The flags that name these keys, for the commands messages suggest.
    pub(crate) fn selector(&self) -> String {
        let mut flags = format!(
            "--backend aws-kms --aws-alias-prefix {}",
            self.aws_alias_prefix
        );
        if let Some(region) = &self.aws_region {
            flags.push_str(&format!(" --aws-region {region}"));
        }
        if let Some(url) = &self.aws_endpoint_url {
            flags.push_str(&format!(" --aws-endpoint-url {url}"));
        }
        flags
    }

    /// Connects and opens the backend for `serve`.
    pub(crate) async fn open(&self) -> anyhow::Result<AwsKmsBackend> {
        AwsKmsBackend::connect(self.config())
            .await
            .with_context(|| {
                format!(
                    "cannot serve the AWS KMS keys under {}",
                    self.aws_alias_prefix
                )
            })
    }
}
