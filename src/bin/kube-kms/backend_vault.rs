//! The options of `--backend vault` (Vault or OpenBao Transit), shared by
//! `kube-kms serve` and the `kube-kms key` commands, and opening the backend
//! from them. No secret is an option: the token, the AppRole role id and
//! secret id are read from files, the TLS client key from a PEM file.
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use kube_kms::backend::vault::{self, AuthMethod, TlsOptions, VaultBackend, VaultConfig};

/// The `--vault-*` flags as given: every one optional, so that a flag can
/// win over the `vault:` section of `--backend-config`, which wins over the
/// defaults ([`VaultFlags::resolve`]).
#[derive(clap::Args, Clone, Debug, Default)]
#[command(next_help_heading = "Vault / OpenBao Transit backend (--backend vault)")]
pub(crate) struct VaultFlags {
    /// Vault's address, e.g. https://vault.example:8200.
    #[arg(long, value_name = "URL")]
    vault_addr: Option<String>,
    /// The Vault Enterprise / OpenBao namespace of the Transit mount.
    #[arg(long, value_name = "NAMESPACE")]
    vault_namespace: Option<String>,
    /// The Transit engine's mount path [default: transit].
    #[arg(long, value_name = "PATH")]
    vault_mount: Option<String>,
    /// The Transit key holding the KEK versions (type aes256-gcm96,
    /// aes128-gcm96 or chacha20-poly1305). key_id of version N:
    /// kk-vault-vN-MOUNT/KEY.
    #[arg(long, value_name = "NAME")]
    vault_key: Option<String>,
    /// PEM CA bundle to verify Vault's certificate with (default: the system's roots).
    #[arg(long, value_name = "FILE")]
    vault_cacert: Option<PathBuf>,
    /// PEM client certificate for TLS (and for --vault-cert-auth).
    #[arg(long, value_name = "FILE")]
    vault_client_cert: Option<PathBuf>,
    /// PEM private key of --vault-client-cert.
    #[arg(long, value_name = "FILE")]
    vault_client_key: Option<PathBuf>,
    /// Auth: a file holding a Vault token (e.g. written by Vault Agent);
    /// re-read when it changes. Renewed while renewable.
    #[arg(long, value_name = "FILE")]
    vault_token_file: Option<PathBuf>,
    /// Auth: AppRole login with the role id in this file (and --vault-secret-id-file).
    #[arg(long, value_name = "FILE")]
    vault_role_id_file: Option<PathBuf>,
    /// Auth: the AppRole secret id's file (read at each login).
    #[arg(long, value_name = "FILE")]
    vault_secret_id_file: Option<PathBuf>,
    /// Auth: TLS certificate login with --vault-client-cert.
    #[arg(long)]
    vault_cert_auth: bool,
    /// The cert auth role to log in as (default: any role the certificate matches).
    #[arg(long, value_name = "NAME")]
    vault_cert_role: Option<String>,
    /// The mount of the AppRole or cert auth method (default: `approle` for
    /// AppRole, `cert` for certificate login).
    #[arg(long, value_name = "PATH")]
    vault_auth_mount: Option<String>,
    /// Upper bound of one Vault call, retries included (keep it under the
    /// EncryptionConfiguration's timeout) [default: 2s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    vault_call_timeout: Option<Duration>,
    /// serve: how often the key's versions are re-read from Vault (SIGHUP
    /// re-reads at once) [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    vault_refresh_interval: Option<Duration>,
}

/// The `vault:` section of `--backend-config` (same options, no secrets).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VaultSection {
    address: Option<String>,
    namespace: Option<String>,
    mount: Option<String>,
    key: Option<String>,
    cacert: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    token_file: Option<PathBuf>,
    role_id_file: Option<PathBuf>,
    secret_id_file: Option<PathBuf>,
    #[serde(default)]
    cert_auth: bool,
    cert_role: Option<String>,
    auth_mount: Option<String>,
    #[serde(default, with = "crate::backend_aws::humantime_serde_opt")]
    call_timeout: Option<Duration>,
    #[serde(default, with = "crate::backend_aws::humantime_serde_opt")]
    refresh_interval: Option<Duration>,
}

/// The Vault backend's options, resolved.
#[derive(Clone, Debug)]
pub(crate) struct VaultArgs {
    pub(crate) config: VaultConfig,
}

impl VaultFlags {
    /// The flags of `words` alone (for tests).
    #[cfg(test)]
    pub(crate) fn parse_for_test(words: &[&str]) -> Self {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            flags: VaultFlags,
        }
        let mut argv = vec!["test"];
        argv.extend_from_slice(words);
        <Wrapper as clap::Parser>::parse_from(argv).flags
    }

    /// Flags first, then the config file's section, then the defaults.
    pub(crate) fn resolve(&self, section: VaultSection) -> anyhow::Result<VaultArgs> {
        let address = self.vault_addr.clone().or(section.address).context(
            "--backend vault needs --vault-addr URL (or `vault: {address: ...}` in --backend-config)",
        )?;
        let key = self.vault_key.clone().or(section.key).context(
            "--backend vault needs --vault-key NAME, the Transit key (or `vault: {key: ...}` in --backend-config)",
        )?;
        let token_file = self.vault_token_file.clone().or(section.token_file);
        let role_id_file = self.vault_role_id_file.clone().or(section.role_id_file);
        let secret_id_file = self.vault_secret_id_file.clone().or(section.secret_id_file);
        let cert_auth = self.vault_cert_auth || section.cert_auth;
        let auth_mount = self.vault_auth_mount.clone().or(section.auth_mount);
        let approle = role_id_file.is_some() || secret_id_file.is_some();
        let chosen =
            usize::from(token_file.is_some()) + usize::from(approle) + usize::from(cert_auth);
        anyhow::ensure!(
            chosen == 1,
            "--backend vault needs exactly one way to log in: --vault-token-file FILE, --vault-role-id-file with --vault-secret-id-file (AppRole), or --vault-cert-auth (TLS certificate); {} given",
            chosen
        );
        let auth = if let Some(path) = token_file {
            AuthMethod::TokenFile(path)
        } else if approle {
            AuthMethod::AppRole {
                mount: auth_mount.unwrap_or_else(|| "approle".to_owned()),
                role_id_file: role_id_file.context(
                    "AppRole needs --vault-role-id-file as well as --vault-secret-id-file",
                )?,
                secret_id_file: secret_id_file.context(
                    "AppRole needs --vault-secret-id-file as well as --vault-role-id-file",
                )?,
            }
        } else {
            AuthMethod::Cert {
                mount: auth_mount.unwrap_or_else(|| "cert".to_owned()),
                role: self.vault_cert_role.clone().or(section.cert_role),
            }
        };
        let tls = TlsOptions {
            ca_cert: self.vault_cacert.clone().or(section.cacert),
            client_cert: self.vault_client_cert.clone().or(section.client_cert),
            client_key: self.vault_client_key.clone().or(section.client_key),
        };
        anyhow::ensure!(
            !matches!(auth, AuthMethod::Cert { .. }) || tls.client_cert.is_some(),
            "--vault-cert-auth logs in with the TLS client certificate: give --vault-client-cert and --vault-client-key"
        );
        Ok(VaultArgs {
            config: VaultConfig {
                address,
                namespace: self.vault_namespace.clone().or(section.namespace),
                mount: self
                    .vault_mount
                    .clone()
                    .or(section.mount)
                    .unwrap_or_else(|| vault::DEFAULT_MOUNT.to_owned()),
                key,
                tls,
                auth,
                call_timeout: self
                    .vault_call_timeout
                    .or(section.call_timeout)
                    .unwrap_or(vault::DEFAULT_CALL_TIMEOUT),
                refresh_interval: self
                    .vault_refresh_interval
                    .or(section.refresh_interval)
                    .unwrap_or(vault::DEFAULT_REFRESH_INTERVAL),
            },
        })
    }
}

impl VaultArgs {
    /// The flags that name this key, for the commands messages suggest.
    pub(crate) fn selector(&self) -> String {
        let config = &self.config;
        let mut flags = format!(
            "--backend vault --vault-addr {} --vault-mount {} --vault-key {}",
            config.address, config.mount, config.key
        );
        if let Some(namespace) = &config.namespace {
            flags.push_str(&format!(" --vault-namespace {namespace}"));
        }
        flags
    }

    /// Logs in and opens the backend for `serve`.
    pub(crate) async fn open(&self) -> anyhow::Result<VaultBackend> {
        VaultBackend::connect(self.config.clone())
            .await
            .with_context(|| {
                format!(
                    "cannot serve the Transit key {}/{} at {}",
                    self.config.mount, self.config.key, self.config.address
                )
            })
    }
}
