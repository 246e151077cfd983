//! Trust boundaries of the plugin (issue 15, points 4-7), through the real
//! binary: authentic HA bundles, who may call the socket, keyring rollback,
//! and key material in memory and on disk. docs/threat-model.md says what
//! each boundary protects, against whom.
use crate::common::plugin;

use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kube_kms::client::KmsClient;

use plugin::{init_keyring, temp_dir, KUBE_KMS};

/// An unprivileged uid/gid for processes that must not be root (nobody).
const NOBODY: u32 = 65534;

fn s(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

fn run(args: &[&str]) -> Output {
    Command::new(KUBE_KMS)
        .args(args)
        .output()
        .expect("run kube-kms")
}

fn stdout_ok(output: &Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A temp file as a writer killed between writing and renaming leaves it.
fn leave_stale_temp(keyring: &Path) -> PathBuf {
    let name = keyring.file_name().unwrap().to_string_lossy().into_owned();
    let stale = keyring.with_file_name(format!(".{name}.tmp-4242-0123456789ab"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&stale)
        .unwrap();
    std::io::Write::write_all(&mut file, &std::fs::read(keyring).unwrap()).unwrap();
    stale
}

/// `kube-kms serve` started as a child; killed (by PID) on drop.
struct Serve {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Serve {
    fn spawn(dir: &Path, args: &[&str], uid: Option<u32>) -> Self {
        let socket = dir.join("kms.sock");
        let log = dir.join("serve.log");
        let mut command = Command::new(KUBE_KMS);
        command
            .arg("serve")
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(uid) = uid {
            command.uid(uid).gid(uid);
        }
        let child = command.spawn().expect("start kube-kms serve");
        Self { child, socket, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("kube-kms serve exited early ({status}): {}", self.log());
            }
            if let Ok(mut client) = KmsClient::connect_path(&self.socket).await {
                if client.status().await.is_ok() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "serve not ready: {}", self.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// 7. Key material in memory and on disk
// ---------------------------------------------------------------------------

/// `serve` makes itself non-dumpable and sets RLIMIT_CORE to 0. Run as an
/// unprivileged uid, a non-dumpable process' /proc/PID files belong to root
/// instead of to that uid (proc(5), PR_SET_DUMPABLE).
#[tokio::test]
async fn serve_is_not_dumpable_and_never_writes_a_core() {
    let dir = temp_dir();
    std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    let keyring = dir.path().join("keyring.json");
    let init = Command::new(KUBE_KMS)
        .args(["key", "init", "--keyring", s(&keyring)])
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    stdout_ok(&init, "key init as nobody");
    let mut serve = Serve::spawn(dir.path(), &["--keyring", s(&keyring)], Some(NOBODY));
    serve.wait_ready().await;
    let status = std::fs::metadata(format!("/proc/{}/status", serve.pid())).unwrap();
    assert_eq!(
        status.uid(),
        0,
        "/proc/PID/status of a serve running as uid {NOBODY} is owned by uid {}: the process is dumpable",
        status.uid()
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", serve.pid())).unwrap();
    let core = limits
        .lines()
        .find(|line| line.starts_with("Max core file size"))
        .expect("a core limit line");
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(&fields[4..6], ["0", "0"], "{core}");
}

/// A stale `.keyring.json.tmp-*` file (a crashed writer's, holding every key)
/// is removed by the next `key` command, read-only ones included, and by
/// `serve`; another keyring's temp file is left alone.
#[tokio::test]
async fn stale_temp_files_are_removed_by_the_next_command() {
    let dir = temp_dir();
    let keyring = init_keyring(dir.path());
    let other = dir.path().join(".other.json.tmp-1-0123456789ab");
    std::fs::write(&other, b"not this keyring's").unwrap();

    let stale = leave_stale_temp(&keyring);
    let list = run(&["key", "list", "--keyring", s(&keyring)]);
    stdout_ok(&list, "key list");
    assert!(!stale.exists(), "key list left {}", stale.display());
    assert!(
        String::from_utf8_lossy(&list.stderr).contains("removed 1 temporary keyring file"),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );

    let stale = leave_stale_temp(&keyring);
    stdout_ok(
        &run(&["key", "rotate", "--keyring", s(&keyring)]),
        "key rotate",
    );
    assert!(!stale.exists(), "key rotate left {}", stale.display());

    let stale = leave_stale_temp(&keyring);
    let mut serve = Serve::spawn(dir.path(), &["--keyring", s(&keyring)], None);
    serve.wait_ready().await;
    assert!(!stale.exists(), "serve left {}", stale.display());
    assert!(other.exists(), "another keyring's temp file was removed");
    assert_eq!(
        std::fs::metadata(&keyring).unwrap().permissions().mode() & 0o777,
        0o600
    );
}
