//! The Debian package `tools/package` builds, installed into this machine for
//! real: `dpkg -i`, the files and their modes, `kube-kms --version` from the
//! PATH, `systemd-analyze verify` on the installed unit (not enabled), a
//! keyring created in /etc/kube-kms, then `dpkg --purge`, after which no file
//! of the package is left and the keyring is untouched.
//!
//! The package is built from the binaries cargo built for the tests (no
//! second, release build). The test runs as root (CI does) and fails when it
//! cannot. It holds a lock file so two runs (two test binaries, two
//! worktrees) never install at once, purges a package a crashed run left, and
//! removes at the end only what it created itself: a keyring that was there
//! before is used as found and left as found.
use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const KEYRING_DIR: &str = "/etc/kube-kms";
const KEYRING: &str = "/etc/kube-kms/keyring.json";
/// The sidecar lock file `kube-kms key` writes under.
const KEYRING_LOCK: &str = "/etc/kube-kms/keyring.json.lock";
const UNIT: &str = "/lib/systemd/system/kube-kms.service";
const LOCK: &str = "/tmp/kube-kms-package-test.lock";
/// Only the system's directories: the test must find the packaged binary.
const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn output(command: &mut Command) -> std::process::Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

fn run(command: &mut Command) -> String {
    let result = output(command);
    assert!(
        result.status.success(),
        "{command:?} failed ({}):\n{}\n{}",
        result.status,
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    String::from_utf8_lossy(&result.stdout).into_owned()
}

fn installed() -> bool {
    let status = output(Command::new("dpkg-query").args(["-W", "-f=${Status}", "kube-kms"]));
    String::from_utf8_lossy(&status.stdout).contains("installed")
        || String::from_utf8_lossy(&status.stdout).contains("config-files")
}

fn purge() {
    run(Command::new("dpkg").args(["--purge", "kube-kms"]));
}

/// Purges the package and removes what this test created, on success and
/// on panic alike.
struct Cleanup {
    created_keyring: bool,
    created_lock: bool,
    created_dir: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if installed() {
            let _ = Command::new("dpkg").args(["--purge", "kube-kms"]).output();
        }
        if self.created_keyring {
            let _ = std::fs::remove_file(KEYRING);
        }
        if self.created_lock {
            let _ = std::fs::remove_file(KEYRING_LOCK);
        }
        if self.created_dir {
            // Only if empty: never remove anything else someone put there.
            let _ = std::fs::remove_dir(KEYRING_DIR);
        }
    }
}

/// Files and symlinks (not directories) the package holds, from its archive.
fn package_files(deb: &Path) -> (BTreeSet<String>, BTreeSet<String>) {
    let listing = run(Command::new("dpkg-deb").arg("--contents").arg(deb));
    let mut files = BTreeSet::new();
    let mut dirs = BTreeSet::new();
    for line in listing.lines() {
        // drwxr-xr-x root/root 0 2026-01-01 00:00 ./usr/bin/
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (mode, name) = (fields[0], fields[5]);
        let path = name
            .trim_start_matches('.')
            .trim_end_matches('/')
            .to_owned();
        if path.is_empty() {
            continue;
        }
        if mode.starts_with('d') {
            dirs.insert(path);
        } else {
            files.insert(path);
        }
    }
    (files, dirs)
}

fn mode_of(path: &str) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn debian_package_installs_runs_and_purges_leaving_only_the_keyring() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the package test installs into this machine with dpkg: run the tests as root, as CI does"
    );
    // One run at a time, across processes (the lock dies with the process).
    let lock = std::fs::File::create(LOCK).expect("create the lock file");
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).expect("lock");

    // A package a crashed run left behind.
    if installed() {
        purge();
    }
    let dir = tempfile::Builder::new()
        .prefix("kk-deb")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let bin_dir = crate::image::test_bin_dir(dir.path());
    let arch = run(Command::new("dpkg").arg("--print-architecture"));
    let deb = dir
        .path()
        .join(format!("kube-kms_{VERSION}_{}.deb", arch.trim()));
    run(Command::new(repo_path("tools/package"))
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--out")
        .arg(&deb));
    let info = run(Command::new("dpkg-deb").arg("--field").arg(&deb));
    assert!(info.contains(&format!("Version: {VERSION}\n")), "{info}");
    assert!(info.contains("Depends: libc6"), "{info}");
    let (files, dirs) = package_files(&deb);
    for expected in [
        "/usr/bin/kube-kms",
        "/usr/bin/etcd-inspect",
        UNIT,
        "/usr/share/man/man1/kube-kms.1.gz",
        "/usr/share/man/man1/kube-kms-serve.1.gz",
        "/usr/share/man/man1/kube-kms-key-rotate.1.gz",
        "/usr/share/man/man1/etcd-inspect.1.gz",
        "/usr/share/man/man1/etcd-inspect-scan.1.gz",
        "/usr/share/bash-completion/completions/kube-kms",
        "/usr/share/bash-completion/completions/etcd-inspect",
        "/usr/share/zsh/vendor-completions/_kube-kms",
        "/usr/share/fish/vendor_completions.d/kube-kms.fish",
        "/usr/share/doc/kube-kms/copyright",
        "/usr/share/doc/kube-kms/README.md",
        "/usr/share/doc/kube-kms/examples/kube-kms.static-pod.yaml",
        "/usr/share/doc/kube-kms/examples/encryption-config.yaml",
        "/usr/share/doc/kube-kms/examples/kube-kms.service",
        "/usr/share/doc/kube-kms/examples/etcd-inspect-backup-check.sh",
        "/usr/share/doc/kube-kms/examples/prometheus-rules.yaml",
        "/usr/share/doc/kube-kms/examples/grafana-dashboard.json",
    ] {
        assert!(
            files.contains(expected),
            "the package lacks {expected}: {files:?}"
        );
    }
    // Every file of deploy/ is an example.
    for entry in std::fs::read_dir(repo_path("deploy")).expect("deploy/") {
        let name = entry.expect("entry").file_name();
        let path = format!(
            "/usr/share/doc/kube-kms/examples/{}",
            name.to_string_lossy()
        );
        assert!(files.contains(&path), "the package lacks {path}");
    }
    assert!(dirs.contains(KEYRING_DIR), "{dirs:?}");
    assert!(
        !files.iter().any(|f| f.starts_with("/etc/")),
        "no file in /etc: the keyring directory is empty in the package: {files:?}"
    );

    let mut cleanup = Cleanup {
        created_keyring: false,
        created_lock: !Path::new(KEYRING_LOCK).exists(),
        created_dir: !Path::new(KEYRING_DIR).exists(),
    };
    let listing = |dir: &str| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().display().to_string())
            .collect()
    };
    let before = listing(KEYRING_DIR);
    let install = output(Command::new("dpkg").arg("-i").arg(&deb));
    assert!(
        install.status.success(),
        "dpkg -i failed:\n{}\n{}",
        String::from_utf8_lossy(&install.stdout),
        String::from_utf8_lossy(&install.stderr)
    );

    // Files, owners and modes.
    for binary in ["/usr/bin/kube-kms", "/usr/bin/etcd-inspect"] {
        assert_eq!(mode_of(binary), 0o755, "{binary}");
    }
    assert_eq!(
        std::fs::read("/usr/bin/kube-kms").expect("installed binary"),
        std::fs::read(bin_dir.join("kube-kms")).expect("binary"),
    );
    assert_eq!(mode_of(UNIT), 0o644);
    let keyring_dir = std::fs::metadata(KEYRING_DIR).expect("/etc/kube-kms");
    assert!(keyring_dir.is_dir());
    assert_eq!(
        keyring_dir.permissions().mode() & 0o7777,
        0o700,
        "/etc/kube-kms mode"
    );
    assert_eq!(
        (keyring_dir.uid(), keyring_dir.gid()),
        (0, 0),
        "/etc/kube-kms owner"
    );
    for file in &files {
        let metadata = std::fs::symlink_metadata(file).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(metadata.uid(), 0, "{file} owned by root");
        assert_eq!(
            mode_of(file) & 0o022,
            0,
            "{file} writable by group or others"
        );
    }
    // The system user.
    let passwd = run(Command::new("getent").args(["passwd", "kube-kms"]));
    let fields: Vec<&str> = passwd.trim().split(':').collect();
    let uid: u32 = fields[2].parse().expect("uid");
    assert!(uid < 1000, "a system uid: {passwd}");
    assert!(fields[6].ends_with("nologin"), "no login shell: {passwd}");
    run(Command::new("getent").args(["group", "kube-kms"]));

    // From the PATH, the packaged binaries.
    let version = run(Command::new("kube-kms")
        .arg("--version")
        .env("PATH", SYSTEM_PATH));
    assert_eq!(version.trim(), format!("kube-kms {VERSION}"));
    let version = run(Command::new("etcd-inspect")
        .arg("--version")
        .env("PATH", SYSTEM_PATH));
    assert_eq!(version.trim(), format!("etcd-inspect {VERSION}"));
    // The man pages are found by man's own search.
    if Command::new("man").arg("--version").output().is_ok() {
        let page = run(Command::new("man").args(["-w", "kube-kms-serve"]));
        assert_eq!(page.trim(), "/usr/share/man/man1/kube-kms-serve.1.gz");
    }

    // The unit: valid to systemd, pointing at the packaged binary, not enabled.
    let unit = std::fs::read_to_string(UNIT).expect("unit");
    assert!(
        unit.contains("ExecStart=/usr/bin/kube-kms serve "),
        "{unit}"
    );
    assert_eq!(
        unit,
        std::fs::read_to_string(repo_path("deploy/kube-kms.service"))
            .expect("deploy unit")
            .replace("/usr/local/bin/kube-kms", "/usr/bin/kube-kms")
            .replace(
                "#   install -m 0644 deploy/kube-kms.service /etc/systemd/system/kube-kms.service\n",
                "#   (installed by the Debian package kube-kms, not enabled)\n"
            ),
        "the packaged unit is deploy/kube-kms.service with /usr/bin paths"
    );
    let verify = output(Command::new("systemd-analyze").args(["verify", "--man=no", UNIT]));
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success(), "systemd-analyze verify: {stderr}");
    assert!(
        !stderr.contains("ignoring") && !stderr.contains("Unknown"),
        "systemd ignores part of the unit: {stderr}"
    );
    for wants in std::fs::read_dir("/etc/systemd/system")
        .into_iter()
        .flatten()
        .flatten()
    {
        assert!(
            !wants.path().join("kube-kms.service").exists(),
            "the unit is enabled in {}",
            wants.path().display()
        );
    }

    // A keyring, made by the packaged binary (unless one is there already).
    if !Path::new(KEYRING).exists() {
        run(Command::new("kube-kms")
            .args(["key", "init", "--keyring", KEYRING])
            .env("PATH", SYSTEM_PATH));
        cleanup.created_keyring = true;
    }
    let keyring = std::fs::read(KEYRING).expect("keyring");

    // Purge: nothing of the package is left, the keyring is.
    purge();
    assert!(!installed(), "still known to dpkg after --purge");
    let left: Vec<&String> = files.iter().filter(|f| Path::new(f).exists()).collect();
    assert!(left.is_empty(), "left after purge: {left:?}");
    for dir in [
        "/usr/share/doc/kube-kms",
        "/usr/share/doc/kube-kms/examples",
    ] {
        assert!(!Path::new(dir).exists(), "{dir} left after purge");
    }
    assert_eq!(
        std::fs::read(KEYRING).expect("the keyring survives a purge"),
        keyring,
        "the keyring is unchanged"
    );
    // /etc/kube-kms stays (it holds the keyring) with what was there before
    // and what `kube-kms key init` made.
    let mut allowed = before.clone();
    allowed.extend([KEYRING.to_owned(), KEYRING_LOCK.to_owned()]);
    let remaining = listing(KEYRING_DIR);
    assert!(remaining.contains(KEYRING), "{remaining:?}");
    assert!(remaining.is_subset(&allowed), "{remaining:?}");
    drop(cleanup);
}
