//! `bench-load`: writes N Secrets of about `--value-size` bytes into an etcd,
//! in kube-apiserver's storage format, for `tools/bench-inspect`.
//!
//! `--variant plaintext` (default) stores `k8s\0` + runtime.Unknown{typeMeta
//! {v1, Secret}, raw = Secret protobuf}, as the identity provider does.
//! `--variant kmsv2 --keyring FILE` stores `k8s:enc:kms:v2:kube-kms:` + an
//! EncryptedObject sealed as kube-apiserver's KMS v2 provider does
//! (HKDF_SHA256_XNONCE_AES_GCM_SEED, one DEK seed for all writes, AAD = etcd
//! key), with the seed wrapped by the keyring's primary KEK: a kube-kms plugin
//! serving that keyring can decrypt every value (for verify benchmarks).
//!
//! Usage: `bench-load --endpoint URL --count N [--value-size BYTES]
//! [--namespaces K] [--variant plaintext|kmsv2] [--keyring FILE]
//! [--concurrency C]`.
#![forbid(unsafe_code)]
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a benchmark tool: prints its figures, and stops at the first failure"
)]

use std::error::Error;
use std::path::PathBuf;

use kube_kms::inspect::classify::build;
use kube_kms::secret::SecretBytes;

type BoxError = Box<dyn Error + Send + Sync>;

struct Args {
    endpoint: String,
    count: usize,
    value_size: usize,
    namespaces: usize,
    kms_v2_keyring: Option<PathBuf>,
    concurrency: usize,
}

fn parse_args() -> Result<Args, BoxError> {
    let mut args = Args {
        endpoint: String::new(),
        count: 20_000,
        value_size: 3000,
        namespaces: 20,
        kms_v2_keyring: None,
        concurrency: 32,
    };
    let mut variant = "plaintext".to_owned();
    let mut keyring = None;
    let mut words = std::env::args().skip(1);
    while let Some(flag) = words.next() {
        let value = words
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--endpoint" => args.endpoint = value,
            "--count" => args.count = value.parse()?,
            "--value-size" => args.value_size = value.parse()?,
            "--namespaces" => args.namespaces = value.parse::<usize>()?.max(1),
            "--variant" => variant = value,
            "--keyring" => keyring = Some(PathBuf::from(value)),
            "--concurrency" => args.concurrency = value.parse::<usize>()?.max(1),
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    if args.endpoint.is_empty() {
        return Err("--endpoint URL is required".into());
    }
    match variant.as_str() {
        "plaintext" => {}
        "kmsv2" => {
            args.kms_v2_keyring =
                Some(keyring.ok_or("--variant kmsv2 needs --keyring FILE (kube-kms key init)")?);
        }
        other => return Err(format!("unknown variant {other} (plaintext or kmsv2)").into()),
    }
    Ok(args)
}

/// Filler bytes that do not compress (xorshift).
fn filler(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// A v1 Secret as kube-apiserver stores it without encryption.
fn plaintext_secret(index: usize, namespace: &str, name: &str, value_size: usize) -> Vec<u8> {
    build::secret(
        namespace,
        name,
        &format!("00000000-0000-4000-8000-{index:012}"),
        1_700_000_000 + index as u64,
        &[
            ("password", &filler(index as u64, value_size)),
            ("username", format!("user-{index}").as_bytes()),
        ],
    )
}

/// What a KMS v2 value needs besides the plaintext.
struct KmsV2 {
    seed: SecretBytes,
    key_id: String,
    wrapped_seed: Vec<u8>,
}

impl KmsV2 {
    fn from_keyring(path: &std::path::Path) -> Result<Self, BoxError> {
        let loaded = kube_kms::keyring::load(path)?;
        let primary = loaded
            .keyring
            .primary()
            .ok_or("the keyring has no primary key")?;
        let kek = primary
            .material()
            .ok_or("the primary key has no material")?;
        let mut seed = SecretBytes::new(vec![0u8; 32]);
        getrandom::getrandom(seed.expose_secret_mut()).map_err(|e| format!("random seed: {e}"))?;
        let wrapped_seed = kube_kms::wrap::wrap(kek, primary.key_id(), seed.expose_secret())?;
        Ok(Self {
            seed,
            key_id: primary.key_id().to_owned(),
            wrapped_seed,
        })
    }

    /// `k8s:enc:kms:v2:kube-kms:` + EncryptedObject.
    fn seal(&self, etcd_key: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, BoxError> {
        let encrypted =
            kube_kms::envelope::seal_kms_v2_seed(self.seed.expose_secret(), plaintext, etcd_key)?;
        Ok(build::kms_v2_with_dek_source(
            "kube-kms",
            &self.key_id,
            &self.wrapped_seed,
            Some(1), // HKDF_SHA256_XNONCE_AES_GCM_SEED
            &[],
            &encrypted,
        ))
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = parse_args()?;
    let kms = match &args.kms_v2_keyring {
        Some(path) => Some(std::sync::Arc::new(KmsV2::from_keyring(path)?)),
        None => None,
    };
    let client = etcd_client::Client::connect([args.endpoint.as_str()], None).await?;
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..args.concurrency {
        let mut client = client.clone();
        let kms = kms.clone();
        let (count, stride, namespaces, value_size) = (
            args.count,
            args.concurrency,
            args.namespaces,
            args.value_size,
        );
        workers.spawn(async move {
            let mut bytes = 0usize;
            for index in (worker..count).step_by(stride) {
                let namespace = format!("bench-{:02}", index % namespaces);
                let name = format!("secret-{index:06}");
                let key = format!("/registry/secrets/{namespace}/{name}");
                let plaintext = plaintext_secret(index, &namespace, &name, value_size);
                let value = match &kms {
                    Some(kms) => kms.seal(key.as_bytes(), &plaintext)?,
                    None => plaintext,
                };
                bytes += value.len();
                client.put(key, value, None).await?;
            }
            Ok::<usize, BoxError>(bytes)
        });
    }
    let mut total = 0;
    while let Some(result) = workers.join_next().await {
        total += result??;
    }
    eprintln!(
        "bench-load: wrote {} secrets, {} value bytes ({} per value)",
        args.count,
        total,
        total / args.count.max(1)
    );
    Ok(())
}
