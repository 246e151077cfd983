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

// ---------------------------------------------------------------------------
// 6. Rollback of the keyring
// ---------------------------------------------------------------------------

/// One HTTP/1.1 GET: status code and body.
async fn http_get(port: u16, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the metrics listener");
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("a response within 10 s")
        .unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").expect("a header end");
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap();
    (code, body.to_owned())
}

fn primary_key_id(keyring: &Path) -> String {
    kube_kms::keyring::load(keyring)
        .unwrap()
        .keyring
        .primary()
        .unwrap()
        .key_id()
        .to_owned()
}

/// Restores `backup` over the live keyring the way an operator's `cp` does.
fn restore(backup: &Path, keyring: &Path) {
    std::fs::write(keyring, std::fs::read(backup).unwrap()).unwrap();
}

/// A keyring backup restored over the live file (lower generation), and a
/// hand edit that drops a served version, are refused: the newer ring keeps
/// serving, /readyz is red, the reason is logged and counted. With
/// `--allow-keyring-rollback` the same restore is taken.
#[tokio::test]
async fn restoring_an_old_keyring_is_refused_and_the_newer_one_keeps_serving() {
    let dir = temp_dir();
    let keyring = dir.path().join("keyring.json");
    stdout_ok(&run(&["key", "init", "--keyring", s(&keyring)]), "key init");
    let backup = dir.path().join("backup.json");
    std::fs::copy(&keyring, &backup).unwrap();
    let old_primary = primary_key_id(&keyring);
    stdout_ok(
        &run(&["key", "rotate", "--keyring", s(&keyring)]),
        "key rotate",
    );
    let new_primary = primary_key_id(&keyring);
    let rotated = std::fs::read(&keyring).unwrap();

    let port = crate::common::etcd::free_port();
    let port_arg = format!("127.0.0.1:{port}");
    let args = [
        "--keyring",
        s(&keyring),
        "--reload-poll-interval",
        "50ms",
        "--metrics-addr",
        &port_arg,
    ];
    let mut serve = Serve::spawn(dir.path(), &args, None);
    serve.wait_ready().await;
    let mut client = KmsClient::connect_path(&serve.socket).await.unwrap();
    assert_eq!(client.status().await.unwrap().key_id, new_primary);
    assert_eq!(http_get(port, "/readyz").await.0, 200);

    restore(&backup, &keyring);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = http_get(port, "/readyz").await;
        if code != 200 {
            assert!(body.contains("rollback"), "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz stayed green after the restore"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(client.status().await.unwrap().key_id, new_primary);
    let wrapped = client.encrypt(&plugin::seed(), "trust").await.unwrap();
    assert_eq!(
        wrapped.key_id, new_primary,
        "Encrypt wrapped under the restored ring"
    );
    let (_, metrics) = http_get(port, "/metrics").await;
    assert!(
        metrics.contains("kube_kms_keyring_rollbacks_refused_total 1"),
        "{metrics}"
    );
    assert!(
        serve.log().contains("refused as a rollback"),
        "{}",
        serve.log()
    );

    // The newer file back: accepted again, /readyz green.
    std::fs::write(&keyring, &rotated).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_get(port, "/readyz").await.0 != 200 {
        assert!(
            Instant::now() < deadline,
            "/readyz stayed red with the newer file back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(serve);

    // The intended case: the operator says so.
    let mut serve = Serve::spawn(
        dir.path(),
        &[
            "--keyring",
            s(&keyring),
            "--reload-poll-interval",
            "50ms",
            "--allow-keyring-rollback",
        ],
        None,
    );
    serve.wait_ready().await;
    let mut client = KmsClient::connect_path(&serve.socket).await.unwrap();
    restore(&backup, &keyring);
    plugin::wait_for_key_id(&mut client, &old_primary, Duration::from_secs(10)).await;
    assert!(
        serve.log().contains("accepting a keyring rollback"),
        "{}",
        serve.log()
    );
}

/// The generation counter: every write bumps it; files without it read as 0.
#[test]
fn every_write_bumps_the_generation() {
    let dir = temp_dir();
    let keyring = dir.path().join("keyring.json");
    stdout_ok(&run(&["key", "init", "--keyring", s(&keyring)]), "key init");
    let generation = |path: &Path| kube_kms::keyring::load(path).unwrap().keyring.generation();
    assert_eq!(generation(&keyring), 1);
    stdout_ok(&run(&["key", "add", "--keyring", s(&keyring)]), "key add");
    stdout_ok(
        &run(&["key", "promote", "2", "--keyring", s(&keyring)]),
        "key promote",
    );
    assert_eq!(generation(&keyring), 3);
    let text = std::fs::read_to_string(&keyring).unwrap();
    let legacy: String = text
        .lines()
        .filter(|line| !line.trim_start().starts_with("\"generation\""))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&keyring, legacy).unwrap();
    assert_eq!(generation(&keyring), 0);
}

// ---------------------------------------------------------------------------
// 4. HA bundles must be authentic
// ---------------------------------------------------------------------------

/// The fingerprint line of `key export`'s output.
fn printed_fingerprint(export_output: &str) -> String {
    export_output
        .lines()
        .find_map(|line| line.strip_prefix("fingerprint: "))
        .unwrap_or_else(|| panic!("no fingerprint in {export_output:?}"))
        .trim()
        .to_owned()
}

fn age_identity(dir: &Path) -> (PathBuf, String) {
    use age::secrecy::ExposeSecret as _;
    let identity = age::x25519::Identity::generate();
    let file = dir.join("node.agekey");
    std::fs::write(&file, format!("{}\n", identity.to_string().expose_secret())).unwrap();
    (file, identity.to_public().to_string())
}

/// Someone who knows only a node's public age recipient makes a bundle that
/// opens there: it is refused unless it matches the fingerprint the real
/// export printed, so it can neither start the node's keyring nor add a key;
/// and an import never changes the primary unless `--set-primary` says so.
#[test]
fn a_forged_bundle_made_with_the_public_recipient_is_refused() {
    use kube_kms::keyring::bundle::{self, Protection};
    let dir = temp_dir();
    let (identity, recipient) = age_identity(dir.path());
    let source = dir.path().join("source.json");
    stdout_ok(&run(&["key", "init", "--keyring", s(&source)]), "key init");
    let genuine = dir.path().join("genuine.age");
    let exported = stdout_ok(
        &run(&[
            "key",
            "export",
            "1",
            "--keyring",
            s(&source),
            "--out",
            s(&genuine),
            "--recipient",
            &recipient,
        ]),
        "key export",
    );
    let fingerprint = printed_fingerprint(&exported);
    assert!(exported.contains("--expect-fingerprint"), "{exported}");

    // The forgery: the attacker's own key, "primary", to the public recipient.
    let theirs = kube_kms::keyring::Keyring::initial(std::time::SystemTime::now()).unwrap();
    let forged_bytes = bundle::export(
        &theirs,
        &[1],
        &Protection::recipients(std::slice::from_ref(&recipient)).unwrap(),
    )
    .unwrap()
    .bundle;
    let forged = dir.path().join("forged.age");
    bundle::write_new(&forged, &forged_bytes).unwrap();

    let node = dir.path().join("node.json");
    let import = |bundle: &Path, extra: &[&str]| {
        let mut args = vec![
            "key",
            "import",
            s(bundle),
            "--keyring",
            s(&node),
            "--identity",
            s(&identity),
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    // Without the fingerprint nothing is imported at all.
    let refused = import(&forged, &["--set-primary", "1"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--expect-fingerprint"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    // With the genuine export's fingerprint, the forgery does not match.
    let refused = import(
        &forged,
        &["--expect-fingerprint", &fingerprint, "--set-primary", "1"],
    );
    assert_eq!(refused.status.code(), Some(2));
    let error = String::from_utf8_lossy(&refused.stderr);
    assert!(
        error.contains("not the bundle that was exported"),
        "{error}"
    );
    assert!(!node.exists(), "a forged bundle created the keyring");
    // A new keyring needs --set-primary: the bundle's hint is not enough.
    let refused = import(&genuine, &["--expect-fingerprint", &fingerprint]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--set-primary"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(!node.exists());
    // The genuine bundle, fingerprint typed in upper case: accepted.
    stdout_ok(
        &import(
            &genuine,
            &[
                "--expect-fingerprint",
                &fingerprint.to_uppercase(),
                "--set-primary",
                "1",
            ],
        ),
        "import of the genuine bundle",
    );
    assert_eq!(primary_key_id(&node), primary_key_id(&source));

    // Into an existing keyring: the exporter's primary does not become ours
    // unless asked.
    stdout_ok(
        &run(&["key", "rotate", "--keyring", s(&source)]),
        "key rotate",
    );
    let v2 = dir.path().join("v2.age");
    let exported = stdout_ok(
        &run(&[
            "key",
            "export",
            "2",
            "--keyring",
            s(&source),
            "--out",
            s(&v2),
            "--recipient",
            &recipient,
        ]),
        "key export 2",
    );
    let fingerprint = printed_fingerprint(&exported);
    let before = primary_key_id(&node);
    stdout_ok(
        &import(&v2, &["--expect-fingerprint", &fingerprint]),
        "import v2",
    );
    assert_eq!(
        primary_key_id(&node),
        before,
        "an import changed the primary"
    );
    let promoted = stdout_ok(
        &import(
            &v2,
            &["--expect-fingerprint", &fingerprint, "--set-primary", "2"],
        ),
        "import v2 --set-primary 2",
    );
    assert!(promoted.contains("version 2 is now primary"), "{promoted}");
    assert_eq!(primary_key_id(&node), primary_key_id(&source));
}
