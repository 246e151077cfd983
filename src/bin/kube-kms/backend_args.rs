//! The backend selector shared by `kube-kms serve` and the `kube-kms key`
//! commands that work on every backend: `--backend file|pkcs11|aws-kms|vault`, each
//! backend's options as flags, and an optional `--backend-config FILE` (YAML)
//! holding the same options. A flag given on the command line wins over the
//! file; the file wins over the defaults.
//!
//! The file, every field optional:
//! ```yaml
//! backend: pkcs11            # file (default), pkcs11, aws-kms, vault
//! keyring: /etc/kube-kms/keyring.json
//! pkcs11:
//!   module: /usr/lib/softhsm/libsofthsm2.so
//!   token_label: kube-kms
//!   pin_file: /etc/kube-kms/token.pin
//!   call_timeout: 2s
//! aws_kms:                   # no credentials here: the AWS SDK's chain
//!   alias_prefix: alias/kube-kms
//!   region: eu-west-1
//!   endpoint_url: https://kms.eu-west-1.amazonaws.com
//!   call_timeout: 2s
//!   refresh_interval: 30s
//! vault:                     # no secrets here: files that hold them
//!   address: https://vault.example:8200
//!   namespace: team-a
//!   mount: transit
//!   key: kube-kms
//!   cacert: /etc/kube-kms/vault-ca.pem
//!   client_cert: /etc/kube-kms/vault-client.pem
//!   client_key: /etc/kube-kms/vault-client.key
//!   token_file: /run/kube-kms/vault-token      # or role_id_file + secret_id_file, or cert_auth: true
//!   auth_mount: approle
//!   cert_role: kube-kms
//!   call_timeout: 2s
//!   refresh_interval: 30s
//! ```
use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// Which root of trust holds the KEKs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum BackendKind {
    /// A versioned keyring file (`kube-kms key init`).
    File,
    /// AES-256 keys generated inside a PKCS#11 token (an HSM, or SoftHSM2 for a trial).
    Pkcs11,
    /// Customer master keys in AWS KMS (or a KMS-compatible endpoint).
    AwsKms,
    /// The versions of a Vault or OpenBao Transit key.
    Vault,
}

/// Backend options, as flags (`#[command(flatten)]` them into a command).
#[derive(clap::Args, Debug, Default)]
pub(crate) struct BackendArgs {
    /// Where the KEKs live [default: file].
    #[arg(long, value_enum, env = "KUBE_KMS_BACKEND")]
    backend: Option<BackendKind>,
    /// A YAML file with the backend options (see docs/backends.md); flags override it.
    #[arg(long, value_name = "FILE")]
    backend_config: Option<PathBuf>,
    /// The keyring file (`--backend file`; create one with `kube-kms key init`).
    #[arg(long, value_name = "PATH", env = "KUBE_KMS_KEYRING")]
    keyring: Option<PathBuf>,
    #[command(flatten)]
    pkcs11: Pkcs11Flags,
    #[command(flatten)]
    aws: crate::backend_aws::AwsKmsFlags,
    #[command(flatten)]
    vault: crate::backend_vault::VaultFlags,
}

/// Options of `--backend pkcs11`.
#[derive(clap::Args, Debug, Default)]
pub(crate) struct Pkcs11Flags {
    /// The token's PKCS#11 module (e.g. /usr/lib/softhsm/libsofthsm2.so).
    #[arg(long, value_name = "PATH")]
    pkcs11_module: Option<PathBuf>,
    /// The label of the token holding the keys.
    #[arg(long, value_name = "LABEL")]
    token_label: Option<String>,
    /// A file holding the token's user PIN (mode 0600, owned by this user or
    /// root; trailing newline ignored). Re-read when it changes; a PIN the
    /// token refused is not tried again until it does.
    #[arg(long, value_name = "FILE")]
    pin_file: Option<PathBuf>,
    /// Upper bound of one token call, waiting for a free session included
    /// (keep it under the EncryptionConfiguration's timeout) [default: 2s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pkcs11_call_timeout: Option<std::time::Duration>,
}

/// The `--backend-config` file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendConfigFile {
    backend: Option<BackendKind>,
    keyring: Option<PathBuf>,
    pkcs11: Option<Pkcs11Section>,
    aws_kms: Option<crate::backend_aws::AwsKmsSection>,
    vault: Option<crate::backend_vault::VaultSection>,
}

/// The `pkcs11:` section of the config file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Pkcs11Section {
    module: Option<PathBuf>,
    token_label: Option<String>,
    pin_file: Option<PathBuf>,
    #[serde(default, with = "crate::backend_aws::humantime_serde_opt")]
    call_timeout: Option<std::time::Duration>,
}

/// Where the PKCS#11 keys are and how to log in.
#[derive(Debug, Clone)]
pub(crate) struct Pkcs11Settings {
    pub(crate) module: PathBuf,
    pub(crate) token_label: String,
    pub(crate) pin_file: PathBuf,
    pub(crate) call_timeout: std::time::Duration,
}

impl Pkcs11Settings {
    /// The library's configuration.
    pub(crate) fn config(&self) -> kube_kms::backend::pkcs11::Pkcs11Config {
        kube_kms::backend::pkcs11::Pkcs11Config {
            module: self.module.clone(),
            token_label: self.token_label.clone(),
            pin_file: self.pin_file.clone(),
            call_timeout: self.call_timeout,
        }
    }
}

/// A fully resolved backend choice.
#[derive(Debug)]
pub(crate) enum BackendChoice {
    /// The keyring file at this path.
    File(PathBuf),
    /// A PKCS#11 token.
    Pkcs11(Pkcs11Settings),
    /// AWS KMS, with its options.
    AwsKms(crate::backend_aws::AwsKmsArgs),
    /// A Vault/OpenBao Transit key, with its options.
    Vault(Box<crate::backend_vault::VaultArgs>),
}

/// Largest `--backend-config` file read.
const MAX_CONFIG_BYTES: u64 = 64 * 1024;

fn read_config(path: &Path) -> anyhow::Result<BackendConfigFile> {
    let metadata = std::fs::metadata(path)
        .with_context(|| format!("cannot read --backend-config {}", path.display()))?;
    anyhow::ensure!(
        metadata.len() <= MAX_CONFIG_BYTES,
        "--backend-config {} is {} bytes, more than the {MAX_CONFIG_BYTES} a backend config may have",
        path.display(),
        metadata.len()
    );
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --backend-config {}", path.display()))?;
    if text.trim().is_empty() {
        return Ok(BackendConfigFile::default());
    }
    serde_yaml_ng::from_str(&text).with_context(|| {
        format!(
            "--backend-config {} is not a valid backend config",
            path.display()
        )
    })
}

impl BackendArgs {
    /// The pkcs11 options as given, to repeat them in a suggested command.
    pub(crate) fn pkcs11_selector(&self) -> String {
        let mut words = vec!["--backend pkcs11".to_owned()];
        if let Some(path) = &self.backend_config {
            words.push(format!("--backend-config {}", path.display()));
        }
        if let Some(module) = &self.pkcs11.pkcs11_module {
            words.push(format!("--pkcs11-module {}", module.display()));
        }
        if let Some(label) = &self.pkcs11.token_label {
            words.push(format!("--token-label {label}"));
        }
        if let Some(pin_file) = &self.pkcs11.pin_file {
            words.push(format!("--pin-file {}", pin_file.display()));
        }
        words.join(" ")
    }

    /// The backend kind asked for, flags first, then the config file, else `file`.
    pub(crate) fn resolve(&self) -> anyhow::Result<BackendChoice> {
        let file = match &self.backend_config {
            Some(path) => read_config(path)?,
            None => BackendConfigFile::default(),
        };
        let kind = self.backend.or(file.backend).unwrap_or(BackendKind::File);
        match kind {
            BackendKind::File => {
                let keyring = self.keyring.clone().or(file.keyring).context(
                    "--backend file needs --keyring PATH (or `keyring:` in --backend-config)",
                )?;
                Ok(BackendChoice::File(keyring))
            }
            BackendKind::Pkcs11 => {
                let section = file.pkcs11.unwrap_or_default();
                let flags = &self.pkcs11;
                let module = flags.pkcs11_module.clone().or(section.module).context(
                    "--backend pkcs11 needs --pkcs11-module PATH (or `pkcs11: {module: ...}` in --backend-config)",
                )?;
                let token_label = flags.token_label.clone().or(section.token_label).context(
                    "--backend pkcs11 needs --token-label LABEL (or `pkcs11: {token_label: ...}` in --backend-config)",
                )?;
                let pin_file = flags.pin_file.clone().or(section.pin_file).context(
                    "--backend pkcs11 needs --pin-file FILE (or `pkcs11: {pin_file: ...}` in --backend-config)",
                )?;
                Ok(BackendChoice::Pkcs11(Pkcs11Settings {
                    module,
                    token_label,
                    pin_file,
                    call_timeout: flags
                        .pkcs11_call_timeout
                        .or(section.call_timeout)
                        .unwrap_or(kube_kms::backend::pkcs11::DEFAULT_CALL_TIMEOUT),
                }))
            }
            BackendKind::AwsKms => Ok(BackendChoice::AwsKms(
                self.aws.resolve(file.aws_kms.unwrap_or_default()),
            )),
            BackendKind::Vault => Ok(BackendChoice::Vault(Box::new(
                self.vault.resolve(file.vault.unwrap_or_default())?,
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(backend: Option<BackendKind>, config: Option<&Path>) -> BackendArgs {
        BackendArgs {
            backend,
            backend_config: config.map(Path::to_path_buf),
            ..BackendArgs::default()
        }
    }

    #[test]
    fn file_is_the_default_and_needs_a_keyring() {
        let error = args(None, None).resolve().unwrap_err();
        assert!(error.to_string().contains("--keyring"), "{error}");
        let mut with_keyring = args(None, None);
        with_keyring.keyring = Some(PathBuf::from("/k.json"));
        assert!(matches!(
            with_keyring.resolve().unwrap(),
            BackendChoice::File(path) if path == Path::new("/k.json")
        ));
    }

    #[test]
    fn config_file_fills_what_flags_leave_out() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("backend.yaml");
        std::fs::write(
            &config,
            "backend: pkcs11\npkcs11:\n  module: /m.so\n  token_label: from-file\n  pin_file: /pin\n",
        )
        .unwrap();
        let mut flags = args(None, Some(&config));
        flags.pkcs11.token_label = Some("from-flag".into());
        let BackendChoice::Pkcs11(settings) = flags.resolve().unwrap() else {
            panic!("pkcs11 expected");
        };
        assert_eq!(settings.module, Path::new("/m.so"));
        assert_eq!(settings.token_label, "from-flag");
        assert_eq!(settings.pin_file, Path::new("/pin"));
        // The flag wins over the file's backend, and file needs its keyring.
        let error = args(Some(BackendKind::File), Some(&config))
            .resolve()
            .unwrap_err();
        assert!(error.to_string().contains("--keyring"), "{error}");
    }

    #[test]
    fn config_file_typos_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("backend.yaml");
        std::fs::write(&config, "backend: pkcs11\npkcs11:\n  modul: /m.so\n").unwrap();
        let error = args(None, Some(&config)).resolve().unwrap_err();
        assert!(format!("{error:#}").contains("modul"), "{error:#}");
        let missing = args(Some(BackendKind::Pkcs11), None).resolve().unwrap_err();
        assert!(missing.to_string().contains("--pkcs11-module"), "{missing}");
    }

    #[test]
    fn aws_kms_options_come_from_flags_then_the_file_then_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("backend.yaml");
        std::fs::write(
            &config,
            "backend: aws-kms\naws_kms:\n  alias_prefix: alias/from-file\n  region: eu-west-1\n  call_timeout: 5s\n",
        )
        .unwrap();
        let BackendChoice::AwsKms(aws) = args(None, Some(&config)).resolve().unwrap() else {
            panic!("aws-kms expected");
        };
        assert_eq!(aws.aws_alias_prefix, "alias/from-file");
        assert_eq!(aws.aws_region.as_deref(), Some("eu-west-1"));
        assert_eq!(aws.aws_endpoint_url, None);
        assert_eq!(aws.aws_call_timeout, std::time::Duration::from_secs(5));
        assert_eq!(aws.aws_refresh_interval, std::time::Duration::from_secs(30));
        let defaults = args(Some(BackendKind::AwsKms), None).resolve().unwrap();
        let BackendChoice::AwsKms(defaults) = defaults else {
            panic!("aws-kms expected");
        };
        assert_eq!(defaults.aws_alias_prefix, "alias/kube-kms");
        std::fs::write(&config, "aws_kms:\n  call_timeout: soon\n").unwrap();
        let error = args(Some(BackendKind::AwsKms), Some(&config))
            .resolve()
            .unwrap_err();
        assert!(format!("{error:#}").contains("soon"), "{error:#}");
    }

    #[test]
    fn vault_options_come_from_flags_then_the_file_then_defaults() {
        use kube_kms::backend::vault::AuthMethod;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("backend.yaml");
        std::fs::write(
            &config,
            "backend: vault\nvault:\n  address: https://vault:8200\n  key: k8s\n  role_id_file: /r\n  secret_id_file: /s\n  call_timeout: 5s\n",
        )
        .unwrap();
        let BackendChoice::Vault(vault) = args(None, Some(&config)).resolve().unwrap() else {
            panic!("vault expected");
        };
        let config_seen = &vault.config;
        assert_eq!(config_seen.address, "https://vault:8200");
        assert_eq!(config_seen.mount, "transit");
        assert_eq!(config_seen.key, "k8s");
        assert_eq!(config_seen.call_timeout, std::time::Duration::from_secs(5));
        assert_eq!(
            config_seen.auth,
            AuthMethod::AppRole {
                mount: "approle".into(),
                role_id_file: PathBuf::from("/r"),
                secret_id_file: PathBuf::from("/s"),
            }
        );
        // Two ways to log in, or none: refused.
        let mut both = args(None, Some(&config));
        both.vault =
            crate::backend_vault::VaultFlags::parse_for_test(&["--vault-token-file", "/t"]);
        let error = both.resolve().unwrap_err();
        assert!(
            error.to_string().contains("exactly one way to log in"),
            "{error}"
        );
        std::fs::write(
            &config,
            "backend: vault\nvault:\n  address: https://vault:8200\n  key: k\n",
        )
        .unwrap();
        let error = args(None, Some(&config)).resolve().unwrap_err();
        assert!(
            error.to_string().contains("exactly one way to log in"),
            "{error}"
        );
        std::fs::write(&config, "backend: vault\nvault:\n  adress: x\n").unwrap();
        let error = args(None, Some(&config)).resolve().unwrap_err();
        assert!(format!("{error:#}").contains("adress"), "{error:#}");
        let error = args(Some(BackendKind::Vault), None).resolve().unwrap_err();
        assert!(error.to_string().contains("--vault-addr"), "{error}");
    }
}
