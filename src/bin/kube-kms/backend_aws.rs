//! The options of `--backend aws-kms`, shared by `kube-kms serve` and the
//! `kube-kms key` commands, and opening the backend from them. Credentials
//! are deliberately not options: they come from the AWS SDK's default chain.
use std::time::Duration;

use anyhow::Context as _;
use kube_kms::backend::aws_kms::{AwsKmsBackend, AwsKmsConfig, DEFAULT_ALIAS_PREFIX};

/// Where the AWS KMS keys are and how to reach KMS.
#[derive(clap::Args, Clone, Debug)]
#[command(next_help_heading = "AWS KMS backend (--backend aws-kms)")]
pub(crate) struct AwsKmsArgs {
    /// Alias prefix of the key versions: version N is the KMS key behind
    /// PREFIX/vN, the primary is PREFIX/primary. One prefix per cluster.
    #[arg(
        long,
        value_name = "ALIAS",
        default_value = DEFAULT_ALIAS_PREFIX,
        env = "KUBE_KMS_AWS_ALIAS_PREFIX"
    )]
    pub(crate) aws_alias_prefix: String,
    /// AWS region of the keys (default: the SDK's chain: AWS_REGION,
    /// AWS_DEFAULT_REGION, the profile, instance metadata). Credentials always
    /// come from the SDK's chain (environment, profile, web identity,
    /// container or instance credentials), never from a flag.
    #[arg(long, value_name = "REGION")]
    pub(crate) aws_region: Option<String>,
    /// KMS endpoint instead of the region's public one (a VPC endpoint, or a
    /// KMS-compatible test server such as moto).
    #[arg(long, value_name = "URL")]
    pub(crate) aws_endpoint_url: Option<String>,
    /// Upper bound of one KMS call, retries included (keep it under the
    /// EncryptionConfiguration's timeout).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    pub(crate) aws_call_timeout: Duration,
    /// serve: how often the versions and their states are re-read from KMS
    /// (SIGHUP re-reads at once).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub(crate) aws_refresh_interval: Duration,
}

impl Default for AwsKmsArgs {
    fn default() -> Self {
        let config = AwsKmsConfig::default();
        Self {
            aws_alias_prefix: config.alias_prefix,
            aws_region: None,
            aws_endpoint_url: None,
            aws_call_timeout: config.call_timeout,
            aws_refresh_interval: config.refresh_interval,
        }
    }
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
