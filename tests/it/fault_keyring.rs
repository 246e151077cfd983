//! Fault injection on `kube-kms key` (the real binary, real files): SIGKILL at
//! random moments of `rotate`, writes that fail (file size limit, read-only
//! directory), and different key commands racing on one keyring. After every
//! fault the keyring must load and every ciphertext made before must still
//! decrypt; a failed command must say why and leave the file byte-identical.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use kube_kms::keyring::{self, Keyring};
use kube_kms::wrap;

const KUBE_KMS: &str = env!("CARGO_BIN_EXE_kube-kms");

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes).expect("random bytes");
    u64::from_le_bytes(bytes)
}

fn key_command(path: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(KUBE_KMS);
    command
        .arg("key")
        .args(args)
        .arg("--keyring")
        .arg(path)
        .env_remove("KUBE_KMS_KEYRING")
        .stdin(Stdio::null());
    command
}

fn run_key(path: &Path, args: &[&str]) -> Output {
    key_command(path, args).output().expect("run kube-kms key")
}

fn ok(path: &Path, args: &[&str]) {
    let output = run_key(path, args);
    assert!(
        output.status.success(),
        "kube-kms key {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn fresh(dir: &Path) -> PathBuf {
    let path = dir.join("keyring.json");
    ok(&path, &["init"]);
    path
}

fn load(path: &Path) -> Keyring {
    match keyring::load(path) {
        Ok(loaded) => loaded.keyring,
        Err(error) => panic!("the keyring no longer loads: {error}"),
    }
}

/// A seed wrapped under the primary version, as the plugin's Encrypt does.
struct Ciphertext {
    key_id: String,
    seed: [u8; 32],
    wrapped: Vec<u8>,
}

fn encrypt_under_primary(keyring: &Keyring) -> Ciphertext {
    let primary = keyring.primary().expect("a primary version");
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).expect("random seed");
    let kek = primary.material().expect("primary material");
    let wrapped = wrap::wrap(kek, primary.key_id(), &seed).expect("wrap");
    Ciphertext {
        key_id: primary.key_id().to_owned(),
        seed,
        wrapped,
    }
}

/// Every ciphertext decrypts with the version its key_id names.
fn assert_all_decrypt(keyring: &Keyring, made: &[Ciphertext], context: &str) {
    for (n, ciphertext) in made.iter().enumerate() {
        let version = keyring
            .versions()
            .iter()
            .find(|v| v.key_id() == ciphertext.key_id)
            .unwrap_or_else(|| panic!("{context}: key_id of ciphertext {n} is gone"));
        assert!(
            version.state().can_unwrap(),
            "{context}: version of ciphertext {n} can no longer unwrap"
        );
        let kek = version
            .material()
            .unwrap_or_else(|| panic!("{context}: material of ciphertext {n} is gone"));
        let plaintext = wrap::unwrap(kek, &ciphertext.key_id, &ciphertext.wrapped)
            .unwrap_or_else(|e| panic!("{context}: ciphertext {n} no longer decrypts: {e}"));
        assert_eq!(plaintext.expose_secret(), ciphertext.seed, "{context}");
    }
}

/// 200 SIGKILLs of `kube-kms key rotate`, each after a random delay between 0
/// and a window that adapts to how long a rotate takes on this machine now
/// (process start, lock, read, write, rename, directory sync): it shrinks when
/// a kill comes after the rotate finished and grows when it hits a running one,
/// so about two thirds of the kills land mid-run, at every stage. After each: the keyring loads, holds the versions
/// it had (or one more), and every ciphertext made so far decrypts.
#[test]
fn two_hundred_random_kills_of_rotate_lose_no_key() {
    let dir = tempfile::Builder::new()
        .prefix("kk")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let path = fresh(dir.path());
    let mut window: u64 = 5_000;
    let mut made = vec![encrypt_under_primary(&load(&path))];
    let mut versions = load(&path).versions().len();
    let (mut killed_mid_run, mut finished_first) = (0u32, 0u32);
    let started = Instant::now();
    for round in 0..200 {
        let mut child = key_command(&path, &["rotate"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn kube-kms key rotate");
        std::thread::sleep(Duration::from_micros(random_u64() % window.max(1)));
        let running = matches!(child.try_wait(), Ok(None));
        child.kill().expect("SIGKILL the rotate");
        let status = child.wait().expect("reap the rotate");
        if running && !status.success() {
            killed_mid_run += 1;
            window += window / 20;
        } else {
            finished_first += 1;
            window -= window / 10;
        }
        let keyring = load(&path);
        let now = keyring.versions().len();
        assert!(
            now == versions || now == versions + 1,
            "round {round}: {versions} versions became {now}"
        );
        versions = now;
        assert_eq!(
            keyring
                .metadata()
                .iter()
                .filter(|v| v.state.as_str() == "primary")
                .count(),
            1,
            "round {round}: not exactly one primary"
        );
        assert_all_decrypt(&keyring, &made, &format!("round {round}"));
        made.push(encrypt_under_primary(&keyring));
    }
    // Leftovers of killed writers are temp files only, never a second keyring.
    for entry in std::fs::read_dir(dir.path()).expect("readdir") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        assert!(
            name == "keyring.json"
                || name == "keyring.json.lock"
                || name.starts_with(".keyring.json.tmp-"),
            "unexpected file {name}"
        );
    }
    ok(&path, &["rotate"]);
    assert_all_decrypt(&load(&path), &made, "after a final rotate");
    eprintln!(
        "200 kills: {killed_mid_run} mid-run, {finished_first} after finishing; \
         {versions} versions; final window {window} µs; {:?}",
        started.elapsed()
    );
    assert!(
        killed_mid_run >= 60,
        "only {killed_mid_run} of 200 kills hit a running rotate"
    );
}

fn assert_failed_clearly(output: &Output, expected: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.starts_with("kube-kms: error: "), "{stderr}");
    let found: Vec<&&str> = expected
        .iter()
        .filter(|text| stderr.contains(**text))
        .collect();
    assert!(!found.is_empty(), "none of {expected:?} in: {stderr}");
    for text in found {
        assert_eq!(stderr.matches(*text).count(), 1, "said twice: {stderr}");
    }
    stderr
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// `ulimit -f 1` (1 KiB) and a keyring larger than that: every writing
/// command fails with EFBIG (SIGXFSZ ignored, as a shell with `trap '' XFSZ`
/// or a service manager may leave it), names the temp file and the reason,
/// exits 2, and leaves the keyring byte-identical with no temp file. With
/// SIGXFSZ at its default the process is killed instead, and the keyring is
/// still intact.
#[test]
fn a_write_past_the_file_size_limit_fails_and_keeps_the_keyring() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = fresh(dir.path());
    for _ in 0..16 {
        ok(&path, &["rotate"]);
    }
    let before = std::fs::read(&path).expect("read");
    assert!(before.len() > 2048, "keyring too small for the limit");
    let made = encrypt_under_primary(&load(&path));
    for args in [&["rotate"][..], &["add"], &["disable", "1"]] {
        let mut line = format!(
            "trap '' XFSZ; ulimit -f 1; exec \"$0\" key {}",
            args.join(" ")
        );
        line.push_str(" --keyring \"$1\"");
        let output = Command::new("bash")
            .arg("-c")
            .arg(&line)
            .arg(KUBE_KMS)
            .arg(&path)
            .env_remove("KUBE_KMS_KEYRING")
            .output()
            .expect("run bash");
        let stderr = assert_failed_clearly(&output, &["File too large"]);
        assert!(stderr.contains("cannot write temporary file"), "{stderr}");
        assert_eq!(std::fs::read(&path).expect("read"), before, "{args:?}");
        assert_eq!(names_in(dir.path()), ["keyring.json", "keyring.json.lock"]);
    }
    let output = Command::new("bash")
        .arg("-c")
        .arg("ulimit -f 1; exec \"$0\" key rotate --keyring \"$1\"")
        .arg(KUBE_KMS)
        .arg(&path)
        .output()
        .expect("run bash");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&output.status),
        Some(25),
        "SIGXFSZ at its default should kill the writer"
    );
    assert_eq!(std::fs::read(&path).expect("read"), before);
    assert_all_decrypt(&load(&path), &[made], "after the size limit");
}

/// A keyring in a directory the command cannot write to (as root, the command
/// runs as nobody through `setpriv`, since root ignores directory modes):
/// writing commands fail naming the temp file and "Permission denied", exit
/// 2, and the keyring stays byte-identical; `list` still works.
#[test]
fn a_read_only_directory_fails_the_write_and_keeps_the_keyring() {
    let outer = tempfile::tempdir().expect("tempdir");
    let dir = outer.path().join("ro");
    std::fs::create_dir(&dir).expect("mkdir");
    let path = fresh(&dir);
    ok(&path, &["rotate"]);
    let as_root = rustix::process::geteuid().is_root();
    let wrapper: Vec<String> = if as_root {
        const NOBODY: u32 = 65534;
        std::fs::set_permissions(outer.path(), std::fs::Permissions::from_mode(0o711))
            .expect("chmod outer");
        for file in [dir.clone(), path.clone(), dir.join("keyring.json.lock")] {
            std::os::unix::fs::chown(&file, Some(NOBODY), Some(NOBODY)).expect("chown to nobody");
        }
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
        ]
        .map(String::from)
        .to_vec()
    } else {
        Vec::new()
    };
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).expect("chmod 555");
    let before = std::fs::read(&path).expect("read");
    let run = |args: &[&str]| -> Output {
        let mut argv = wrapper.clone();
        argv.push(KUBE_KMS.to_string());
        argv.push("key".into());
        argv.extend(args.iter().map(|a| a.to_string()));
        argv.push("--keyring".into());
        argv.push(path.display().to_string());
        Command::new(&argv[0])
            .args(&argv[1..])
            .env_remove("KUBE_KMS_KEYRING")
            .output()
            .expect("run kube-kms")
    };
    for args in [&["rotate"][..], &["add"], &["disable", "1"]] {
        let output = run(args);
        let stderr = assert_failed_clearly(&output, &["Permission denied", "Read-only"]);
        assert!(stderr.contains("cannot write temporary file"), "{stderr}");
        assert_eq!(std::fs::read(&path).expect("read"), before, "{args:?}");
    }
    let listed = run(&["list"]);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert_eq!(names_in(&dir), ["keyring.json", "keyring.json.lock"]);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod back");
}

/// Rotations, additions and disables of different versions started all at
/// once, five rounds: the lock serializes them, so every command succeeds and
/// every effect is in the final keyring (no lost update), with one primary.
#[test]
fn mixed_key_commands_at_once_keep_every_effect() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = fresh(dir.path());
    let mut made = vec![encrypt_under_primary(&load(&path))];
    let mut expected_versions = 1usize;
    let mut disabled: Vec<u32> = Vec::new();
    for round in 0..5u32 {
        // Three versions that stay out of the race's primaries, to disable.
        for _ in 0..3 {
            ok(&path, &["rotate"]);
        }
        expected_versions += 3;
        let keyring = load(&path);
        let targets: Vec<u32> = keyring
            .versions()
            .iter()
            .filter(|v| v.state().as_str() == "enabled")
            .map(|v| v.id())
            .filter(|id| !disabled.contains(id))
            .take(3)
            .collect();
        assert_eq!(targets.len(), 3, "round {round}");
        let mut commands: Vec<Vec<String>> = Vec::new();
        for _ in 0..3 {
            commands.push(vec!["rotate".into()]);
            commands.push(vec!["add".into()]);
        }
        for id in &targets {
            commands.push(vec!["disable".into(), id.to_string()]);
        }
        let children: Vec<_> = commands
            .iter()
            .map(|args| {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                key_command(&path, &args)
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawn")
            })
            .collect();
        for (child, args) in children.into_iter().zip(&commands) {
            let output = child.wait_with_output().expect("wait");
            assert!(
                output.status.success(),
                "round {round}: {args:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        expected_versions += 6;
        disabled.extend(&targets);
        let keyring = load(&path);
        assert_eq!(keyring.versions().len(), expected_versions, "round {round}");
        let ids: Vec<u32> = keyring.versions().iter().map(|v| v.id()).collect();
        assert_eq!(
            ids,
            (1..=expected_versions as u32).collect::<Vec<_>>(),
            "round {round}: ids not dense and unique"
        );
        for version in keyring.versions() {
            let state = version.state().as_str();
            if disabled.contains(&version.id()) {
                assert_eq!(state, "disabled", "round {round}: v{}", version.id());
            } else {
                assert!(
                    state == "enabled" || state == "primary",
                    "v{}",
                    version.id()
                );
            }
        }
        assert_eq!(
            keyring
                .versions()
                .iter()
                .filter(|v| v.state().as_str() == "primary")
                .count(),
            1
        );
        // Ciphertexts made under versions not disabled still decrypt.
        made.retain(|c| {
            !disabled
                .iter()
                .any(|id| c.key_id.starts_with(&format!("kk-v{id}-")))
        });
        assert_all_decrypt(&keyring, &made, &format!("round {round}"));
        made.push(encrypt_under_primary(&keyring));
    }
}
