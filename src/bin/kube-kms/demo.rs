//! `kube-kms demo`: the plugin end to end on this machine, no cluster needed.
//! Creates a keyring in a temp directory, serves it on a temp socket, plays
//! kube-apiserver through the real socket (Status, Encrypt, Decrypt), rotates
//! the key, waits for the file watch to pick it up, and cleans up. Prints
//! sizes and key_ids only: never a seed or a key.
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use kube_kms::backend::file::FileBackend;
use kube_kms::client::KmsClient;
use kube_kms::keyring::{self, Keyring};
use kube_kms::secret::SecretBytes;
use kube_kms::server::{Server, ServerOptions, SocketAddress, SocketListener, DEFAULT_SOCKET_MODE};

use crate::serve::{init_logging, LogFormat};

/// Options of `kube-kms demo`.
#[derive(clap::Args)]
pub(crate) struct DemoArgs {
    /// Server log level on stderr (the demo's own output goes to stdout).
    #[arg(long, value_name = "LEVEL", default_value = "warn")]
    log_level: String,
}

/// A private temp directory, removed with its contents when dropped.
struct DemoDir(PathBuf);

impl DemoDir {
    fn create() -> anyhow::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let mut suffix = [0u8; 6];
        getrandom::getrandom(&mut suffix)
            .map_err(|error| anyhow::anyhow!("no randomness: {error}"))?;
        let name: String = suffix.iter().map(|byte| format!("{byte:02x}")).collect();
        // /tmp keeps the socket path short (unix socket paths are < 108 bytes).
        let path = Path::new("/tmp").join(format!("kube-kms-demo-{name}"));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for DemoDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn random_seed() -> anyhow::Result<SecretBytes> {
    let mut seed = SecretBytes::new(vec![0u8; 32]);
    getrandom::getrandom(seed.expose_secret_mut())
        .map_err(|error| anyhow::anyhow!("no randomness: {error}"))?;
    Ok(seed)
}

pub(crate) fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    init_logging(LogFormat::Text, &args.log_level)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let dir = DemoDir::create()?;
    let shown = dir.0.display().to_string();
    let result = runtime.block_on(demo(&dir.0));
    drop(runtime);
    drop(dir);
    match result {
        Ok(()) => {
            println!("✔ server stopped, {shown} removed");
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => Err(error.context(format!("the demo failed ({shown} removed)"))),
    }
}

async fn demo(dir: &Path) -> anyhow::Result<()> {
    let keyring_path = dir.join("keyring.json");
    let socket = dir.join("kms.sock");
    println!("kube-kms demo: the KMS v2 plugin as kube-apiserver sees it\n");

    let keyring = Keyring::initial(SystemTime::now())?;
    keyring::create(&keyring_path, &keyring)?;
    drop(keyring);
    println!(
        "1. new keyring      {} (mode 0600, one primary key)",
        keyring_path.display()
    );

    let backend = Arc::new(FileBackend::open(&keyring_path)?);
    let listener = SocketListener::bind(&SocketAddress::Path(socket.clone()), DEFAULT_SOCKET_MODE)?;
    let server = Server::new(backend, ServerOptions::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(listener, async {
        let _ = stopped.await;
    }));
    println!(
        "2. serving          unix://{} (mode 0600)",
        socket.display()
    );

    let played = play_apiserver(&keyring_path, &socket).await;
    let _ = stop.send(());
    serving.await.context("the server task failed")??;
    played
}

async fn play_apiserver(keyring_path: &Path, socket: &Path) -> anyhow::Result<()> {
    let mut client = KmsClient::connect_path(socket).await?;
    let status = client.status().await?;
    println!(
        "3. Status           version={} healthz={} key_id={}",
        status.version, status.healthz, status.key_id
    );

    let seed = random_seed()?;
    let first = client
        .encrypt(seed.expose_secret(), "demo-encrypt-1")
        .await?;
    println!(
        "4. Encrypt          a random {}-byte DEK seed -> {} bytes of ciphertext, key_id={}",
        seed.len(),
        first.ciphertext.len(),
        first.key_id
    );
    anyhow::ensure!(
        first.key_id == status.key_id,
        "Encrypt and Status disagree on the key_id"
    );
    let unwrapped = client.decrypt_encrypted(&first, "demo-decrypt-1").await?;
    anyhow::ensure!(
        unwrapped.expose_secret() == seed.expose_secret(),
        "Decrypt returned other bytes"
    );
    println!(
        "5. Decrypt          -> {} bytes, identical to the seed ✔",
        unwrapped.len()
    );

    let promotion = keyring::modify(keyring_path, |keyring| keyring.rotate(SystemTime::now()))?;
    println!(
        "6. key rotated      primary is now {}; {} stays enabled for decryption",
        promotion.primary.key_id, promotion.previous.key_id
    );
    let started = Instant::now();
    let new_key_id = loop {
        let status = client.status().await?;
        if status.key_id != first.key_id {
            break status.key_id;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(10),
            "the server did not reload the keyring"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!(
        "7. Status           key_id={} (picked up from the file in {} ms, no restart)",
        new_key_id,
        started.elapsed().as_millis()
    );

    let old = client.decrypt_encrypted(&first, "demo-decrypt-2").await?;
    anyhow::ensure!(
        old.expose_secret() == seed.expose_secret(),
        "the old ciphertext no longer decrypts"
    );
    println!("8. Decrypt (old)    ciphertext from before the rotation still decrypts ✔");
    let second_seed = random_seed()?;
    let second = client
        .encrypt(second_seed.expose_secret(), "demo-encrypt-2")
        .await?;
    anyhow::ensure!(
        second.key_id == new_key_id,
        "Encrypt did not use the new key"
    );
    println!(
        "9. Encrypt (new)    {} bytes of ciphertext, key_id={} ✔",
        second.ciphertext.len(),
        second.key_id
    );
    Ok(())
}
