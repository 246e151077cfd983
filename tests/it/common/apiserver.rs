//! Plays kube-apiserver's KMS v2 provider against a real plugin: one Encrypt
//! of a fresh 32-byte DEK seed over the plugin's socket (the apiserver reuses
//! a seed until the plugin's Status key_id changes), then every write sealed
//! in HKDF mode with that seed and the etcd key as associated data, in the
//! apiserver's storage format (`k8s:enc:kms:v2:<provider>:` + EncryptedObject).
//! Built on the library's own sealing ([`kube_kms::envelope`]) and value
//! builders ([`kube_kms::inspect::classify::build`]), as `tools/bench_load.rs`.

use kube_kms::client::KmsClient;
use kube_kms::envelope;
use kube_kms::inspect::classify::build;
use kube_kms::secret::SecretBytes;

/// `encryptedDEKSourceType` of HKDF mode (`HKDF_SHA256_XNONCE_AES_GCM_SEED`).
const HKDF_SEED_MODE: u64 = 1;

/// One DEK seed, wrapped by the plugin, and what the apiserver stores with it.
pub struct KmsV2Writer {
    provider: String,
    seed: SecretBytes,
    key_id: String,
    encrypted_dek_source: Vec<u8>,
    /// Sorted by key, as the apiserver's protobuf map encoding does not
    /// promise an order (any order decodes to the same map).
    annotations: Vec<(String, Vec<u8>)>,
}

impl KmsV2Writer {
    /// Generates a seed and has the plugin Encrypt it (a real call on the
    /// socket); values are stored under provider name `provider`.
    pub async fn new(client: &mut KmsClient, provider: &str) -> Self {
        let mut seed = SecretBytes::new(vec![0u8; 32]);
        getrandom::getrandom(seed.expose_secret_mut()).expect("random seed");
        let response = client
            .encrypt(seed.expose_secret(), "rotation-test-dek")
            .await
            .expect("the plugin encrypts a DEK seed");
        let mut annotations: Vec<(String, Vec<u8>)> = response.annotations.into_iter().collect();
        annotations.sort();
        Self {
            provider: provider.to_owned(),
            seed,
            key_id: response.key_id,
            encrypted_dek_source: response.ciphertext,
            annotations,
        }
    }

    /// The key_id the plugin returned for this seed.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The plugin's ciphertext of the seed (`encryptedDEKSource`).
    pub fn encrypted_dek_source(&self) -> &[u8] {
        &self.encrypted_dek_source
    }

    /// The annotations the plugin returned with it.
    pub fn annotations(&self) -> std::collections::HashMap<String, Vec<u8>> {
        self.annotations.iter().cloned().collect()
    }

    /// `object` sealed for `etcd_key` as the apiserver stores it.
    pub fn seal(&self, etcd_key: &[u8], object: &[u8]) -> Vec<u8> {
        let data = envelope::seal_kms_v2_seed(self.seed.expose_secret(), object, etcd_key)
            .expect("seal with the DEK seed");
        let annotations: Vec<(&str, &[u8])> = self
            .annotations
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_slice()))
            .collect();
        build::kms_v2_with_dek_source(
            &self.provider,
            &self.key_id,
            &self.encrypted_dek_source,
            Some(HKDF_SEED_MODE),
            &annotations,
            &data,
        )
    }

    /// A Secret `namespace/name` with one data entry, sealed for its etcd
    /// key `/registry/secrets/NAMESPACE/NAME`; returns (key, value).
    pub fn secret(&self, namespace: &str, name: &str, generation: u64) -> (String, Vec<u8>) {
        let key = format!("/registry/secrets/{namespace}/{name}");
        let object = build::secret(
            namespace,
            name,
            &format!("uid-{namespace}-{name}"),
            1_700_000_000 + generation,
            &[("token", format!("value-{generation}").as_bytes())],
        );
        let value = self.seal(key.as_bytes(), &object);
        (key, value)
    }
}
