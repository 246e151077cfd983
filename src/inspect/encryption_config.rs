//! Reads a kube-apiserver `EncryptionConfiguration` file: the provider names
//! (so stored prefixes whose names contain `:` split exactly) and the keys of
//! the `aescbc`, `aesgcm` and `secretbox` providers (so their values can be
//! verified by decrypting them).
//!
//! Key bytes go straight from the YAML string into [`SecretBytes`]; the
//! strings that carried them are zeroized.
use std::collections::HashMap;
use std::path::Path;

use base64::Engine as _;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::secret::SecretBytes;

/// Why an EncryptionConfiguration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum EncryptionConfigError {
    /// The file could not be read.
    #[error("cannot read the EncryptionConfiguration {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The YAML does not have the EncryptionConfiguration shape.
    #[error("{path} is not a valid EncryptionConfiguration: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong (never includes key material).
        reason: String,
    },
}

/// A local-key provider kind whose keys the file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyedProvider {
    /// `aescbc`.
    AesCbc,
    /// `aesgcm`.
    AesGcm,
    /// `secretbox`.
    Secretbox,
}

impl KeyedProvider {
    /// The provider's name in the configuration and in stored prefixes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AesCbc => "aescbc",
            Self::AesGcm => "aesgcm",
            Self::Secretbox => "secretbox",
        }
    }
}

/// What an EncryptionConfiguration says, reduced to what the auditor needs.
#[derive(Default)]
pub struct EncryptionConfig {
    keys: HashMap<(KeyedProvider, String), SecretBytes>,
    kms_names: Vec<String>,
    kms_v2_resources: Vec<String>,
}

impl std::fmt::Debug for EncryptionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<String> = self
            .keys
            .keys()
            .map(|(p, n)| format!("{}/{}", p.as_str(), n))
            .collect();
        names.sort();
        f.debug_struct("EncryptionConfig")
            .field("keys", &names)
            .field("kms_names", &self.kms_names)
            .field("kms_v2_resources", &self.kms_v2_resources)
            .finish()
    }
}

#[derive(Deserialize)]
struct RawConfig {
    kind: Option<String>,
    #[serde(default)]
    resources: Vec<RawResource>,
}

#[derive(Deserialize)]
struct RawResource {
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    providers: Vec<RawProvider>,
}

#[derive(Deserialize)]
struct RawProvider {
    aescbc: Option<RawKeys>,
    aesgcm: Option<RawKeys>,
    secretbox: Option<RawKeys>,
    kms: Option<RawKms>,
}

#[derive(Deserialize)]
struct RawKeys {
    #[serde(default)]
    keys: Vec<RawKey>,
}

#[derive(Deserialize)]
struct RawKey {
    name: String,
    secret: Zeroizing<String>,
}

#[derive(Deserialize)]
struct RawKms {
    name: String,
    #[serde(rename = "apiVersion")]
    api_version: Option<String>,
}

impl EncryptionConfig {
    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<Self, EncryptionConfigError> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
            EncryptionConfigError::Read {
                path: path.display().to_string(),
                source,
            }
        })?);
        Self::parse(&text).map_err(|reason| EncryptionConfigError::Invalid {
            path: path.display().to_string(),
            reason,
        })
    }

    /// Parses the YAML text of an EncryptionConfiguration.
    pub fn parse(text: &str) -> Result<Self, String> {
        // serde_yaml_ng's messages quote no scalar values, so no key material
        // can reach the error.
        let raw: RawConfig = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        if let Some(kind) = &raw.kind {
            if kind != "EncryptionConfiguration" {
                return Err(format!(
                    "kind is {kind:?}, expected \"EncryptionConfiguration\""
                ));
            }
        }
        let mut config = EncryptionConfig::default();
        for entry in &raw.resources {
            // Any kms v2 provider of the entry, write or read-only: values
            // under its key_ids may be stored for every resource listed.
            let kms_v2 = entry.providers.iter().any(|provider| {
                provider
                    .kms
                    .as_ref()
                    .is_some_and(|kms| kms.api_version.as_deref() == Some("v2"))
            });
            if kms_v2 {
                for resource in &entry.resources {
                    if !config.kms_v2_resources.contains(resource) {
                        config.kms_v2_resources.push(resource.clone());
                    }
                }
            }
        }
        for provider in raw.resources.iter().flat_map(|r| &r.providers) {
            for (kind, keys) in [
                (KeyedProvider::AesCbc, &provider.aescbc),
                (KeyedProvider::AesGcm, &provider.aesgcm),
                (KeyedProvider::Secretbox, &provider.secretbox),
            ] {
                for key in keys.iter().flat_map(|k| &k.keys) {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(key.secret.trim())
                        .map_err(|_| {
                            format!(
                                "the secret of {} key {:?} is not base64",
                                kind.as_str(),
                                key.name
                            )
                        })?;
                    config
                        .keys
                        .insert((kind, key.name.clone()), SecretBytes::new(bytes));
                }
            }
            if let Some(kms) = &provider.kms {
                if !config.kms_names.contains(&kms.name) {
                    config.kms_names.push(kms.name.clone());
                }
            }
        }
        Ok(config)
    }

    /// The key named `name` of provider `kind`, if the file has it.
    pub fn key(&self, kind: KeyedProvider, name: &str) -> Option<&SecretBytes> {
        self.keys.get(&(kind, name.to_owned()))
    }

    /// The key names the file gives for `kind`, longest first (so a prefix
    /// match picks the most specific name when names contain `:`).
    pub fn key_names(&self, kind: KeyedProvider) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .keys
            .keys()
            .filter(|(k, _)| *k == kind)
            .map(|(_, n)| n.as_str())
            .collect();
        names.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        names
    }

    /// The names of the KMS providers (v1 and v2) in the file.
    pub fn kms_names(&self) -> &[String] {
        &self.kms_names
    }

    /// The resources (as written: `secrets`, `*.*`, `widgets.example.com`)
    /// of every entry that has a kms v2 provider.
    pub fn kms_v2_resources(&self) -> &[String] {
        &self.kms_v2_resources
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [secrets, configmaps]
    providers:
      - kms:
          apiVersion: v2
          name: kube-kms
          endpoint: unix:///var/run/kube-kms/kms.sock
      - aescbc:
          keys:
            - name: key1
              secret: c2VjcmV0IGlzIHNlY3VyZSwgb3IgaXMgaXQ/Pz8/Pz8=
            - name: "key:with:colons"
              secret: AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=
      - secretbox:
          keys:
            - name: sb
              secret: glz/g6yPLv7kcstqvIbo6MNdypdaXPvb9nIp9MFmt70=
      - identity: {}
"#;

    #[test]
    fn parses_keys_and_kms_names() {
        let config = EncryptionConfig::parse(CONFIG).unwrap();
        assert_eq!(config.kms_names(), ["kube-kms"]);
        assert_eq!(config.kms_v2_resources(), ["secrets", "configmaps"]);
        assert_eq!(config.key(KeyedProvider::AesCbc, "key1").unwrap().len(), 32);
        assert_eq!(
            config.key(KeyedProvider::Secretbox, "sb").unwrap().len(),
            32
        );
        assert!(config.key(KeyedProvider::AesGcm, "key1").is_none());
        assert_eq!(
            config.key_names(KeyedProvider::AesCbc),
            ["key:with:colons", "key1"]
        );
    }

    #[test]
    fn debug_and_errors_show_no_key_material() {
        let config = EncryptionConfig::parse(CONFIG).unwrap();
        let shown = format!("{config:?}");
        assert!(!shown.contains("c2VjcmV0"), "{shown}");
        let broken = CONFIG.replace(
            "c2VjcmV0IGlzIHNlY3VyZSwgb3IgaXMgaXQ/Pz8/Pz8=",
            "not*base64*c2VjcmV0",
        );
        let error = EncryptionConfig::parse(&broken).unwrap_err();
        assert!(
            error.contains("key1") && !error.contains("c2VjcmV0"),
            "{error}"
        );
    }

    #[test]
    fn wrong_kind_is_refused() {
        let error = EncryptionConfig::parse("kind: Pod\n").unwrap_err();
        assert!(error.contains("EncryptionConfiguration"), "{error}");
    }
}
