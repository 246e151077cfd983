//! `kube-kms key ...` run as the real binary on real files in temp directories.
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn kube_kms(args: &[&str], keyring: &Path) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_kube-kms"))
        .arg("key")
        .args(args)
        .arg("--keyring")
        .arg(keyring)
        .env_remove("KUBE_KMS_KEYRING")
        .output()
        .expect("run kube-kms");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn ok(args: &[&str], keyring: &Path) -> String {
    let run = kube_kms(args, keyring);
    assert_eq!(run.code, 0, "{args:?} failed: {}", run.stderr);
    run.stdout
}

fn fails(args: &[&str], keyring: &Path) -> String {
    let run = kube_kms(args, keyring);
    assert_eq!(
        run.code, 2,
        "{args:?} should fail with 2; stdout {}",
        run.stdout
    );
    assert!(
        run.stderr.starts_with("kube-kms: error: "),
        "{}",
        run.stderr
    );
    run.stderr
}

fn fresh() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("keyring.json");
    ok(&["init"], &path);
    (dir, path)
}

/// `list --format json` as (id, state, key_id) triples.
fn listed(path: &Path) -> Vec<(u64, String, String)> {
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["list", "--format", "json"], path)).expect("list json");
    json["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| {
            assert!(v.get("material").is_none(), "list shows material: {v}");
            (
                v["id"].as_u64().expect("id"),
                v["state"].as_str().expect("state").to_string(),
                v["key_id"].as_str().expect("key_id").to_string(),
            )
        })
        .collect()
}

fn states(path: &Path) -> Vec<(u64, String)> {
    listed(path)
        .into_iter()
        .map(|(id, state, _)| (id, state))
        .collect()
}

/// The base64 material strings in the file, by version id.
fn materials(path: &Path) -> Vec<(u64, Option<String>)> {
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).expect("read")).expect("keyring json");
    json["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| {
            (
                v["id"].as_u64().expect("id"),
                v["material"].as_str().map(str::to_string),
            )
        })
        .collect()
}

fn s(id: u64, state: &str) -> (u64, String) {
    (id, state.to_string())
}

#[test]
fn init_creates_a_private_keyring_with_one_primary_and_never_overwrites() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("keyring.json");
    let out = ok(&["init"], &path);
    assert!(
        out.contains("version 1 (kk-v1-") && out.contains("is primary"),
        "{out}"
    );
    let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(states(&path), [s(1, "primary")]);
    let before = std::fs::read(&path).expect("read");
    let error = fails(&["init"], &path);
    assert!(
        error.contains("already exists; refusing to overwrite"),
        "{error}"
    );
    assert_eq!(
        std::fs::read(&path).expect("read"),
        before,
        "init overwrote a keyring"
    );
}

#[test]
fn rotate_keeps_the_old_primary_enabled() {
    let (_dir, path) = fresh();
    let first = listed(&path)[0].2.clone();
    let out = ok(&["rotate"], &path);
    assert!(out.starts_with("rotated: version 2 (kk-v2-"), "{out}");
    assert!(
        out.contains(&format!("version 1 ({first}) stays enabled for decryption")),
        "{out}"
    );
    ok(&["rotate"], &path);
    assert_eq!(
        states(&path),
        [s(1, "enabled"), s(2, "enabled"), s(3, "primary")]
    );
    let key_ids: std::collections::BTreeSet<String> = listed(&path)
        .into_iter()
        .map(|(_, _, key_id)| key_id)
        .collect();
    assert_eq!(key_ids.len(), 3, "key_ids must be unique");
    assert_eq!(listed(&path)[0].2, first, "a key_id must not change");
}

#[test]
fn state_machine_invariants_and_error_texts() {
    let (_dir, path) = fresh();
    ok(&["rotate"], &path);
    let error = fails(&["disable", "2"], &path);
    assert!(
        error.contains("cannot disable version 2: it is the primary"),
        "{error}"
    );
    let error = fails(&["destroy", "2", "--force"], &path);
    assert!(
        error.contains("cannot destroy version 2: it is the primary"),
        "{error}"
    );
    let error = fails(&["destroy", "1", "--force"], &path);
    assert!(error.contains("disable it first"), "{error}");
    let error = fails(&["enable", "1"], &path);
    assert!(error.contains("already enabled"), "{error}");
    let error = fails(&["disable", "7"], &path);
    assert!(error.contains("there is no version 7"), "{error}");

    let out = ok(&["disable", "1"], &path);
    assert!(out.starts_with("disabled version 1 (kk-v1-"), "{out}");
    assert_eq!(states(&path), [s(1, "disabled"), s(2, "primary")]);
    let error = fails(&["promote", "1"], &path);
    assert!(error.contains("enable it first"), "{error}");
    ok(&["enable", "1"], &path);
    assert_eq!(states(&path), [s(1, "enabled"), s(2, "primary")]);
    ok(&["disable", "1"], &path);
    let out = ok(&["destroy", "1", "--force"], &path);
    assert!(out.contains("erased for good"), "{out}");
    assert_eq!(states(&path), [s(1, "destroyed"), s(2, "primary")]);
    let error = fails(&["enable", "1"], &path);
    assert!(error.contains("destroyed"), "{error}");
    // Ids of destroyed versions are never reused.
    ok(&["rotate"], &path);
    assert_eq!(
        states(&path),
        [s(1, "destroyed"), s(2, "enabled"), s(3, "primary")]
    );
}

#[test]
fn add_then_promote() {
    let (_dir, path) = fresh();
    let out = ok(&["add"], &path);
    assert!(
        out.contains("added version 2") && out.contains("key promote 2"),
        "{out}"
    );
    assert_eq!(states(&path), [s(1, "primary"), s(2, "enabled")]);
    let out = ok(&["promote", "2"], &path);
    assert!(out.starts_with("promoted: version 2"), "{out}");
    assert_eq!(states(&path), [s(1, "enabled"), s(2, "primary")]);
    let error = fails(&["promote", "2"], &path);
    assert!(error.contains("already the primary"), "{error}");
}

#[test]
fn list_shows_metadata_only() {
    let (_dir, path) = fresh();
    ok(&["rotate"], &path);
    let table = ok(&["list"], &path);
    let json = ok(&["list", "--format", "json"], &path);
    let mut lines = table.lines();
    let header = lines.next().expect("header");
    assert!(
        header.starts_with("VERSION")
            && header.contains("STATE")
            && header.contains("KEY_ID")
            && header.contains("CREATED"),
        "{table}"
    );
    assert_eq!(lines.count(), 2, "{table}");
    for (_, material) in materials(&path) {
        let material = material.expect("material");
        assert!(!table.contains(&material) && !json.contains(&material));
        assert!(!table.contains(&material[..12]) && !json.contains(&material[..12]));
    }
    for (id, state, key_id) in listed(&path) {
        assert!(
            table.contains(&key_id) && table.contains(&state),
            "{id}: {table}"
        );
    }
}

#[test]
fn group_or_world_accessible_keyring_is_refused_with_the_fix() {
    let (_dir, path) = fresh();
    for mode in [0o644, 0o640, 0o604, 0o620, 0o602, 0o660] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        for command in [&["list"][..], &["rotate"][..]] {
            let error = fails(command, &path);
            assert!(
                error.contains(&format!("chmod 600 {}", path.display())),
                "mode {mode:o}: {error}"
            );
            assert!(error.contains(&format!("{mode:04o}")), "{error}");
        }
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    ok(&["list"], &path);
}

#[test]
fn keyring_owned_by_someone_else_is_refused_with_the_fix() {
    let (_dir, path) = fresh();
    let euid = rustix::process::geteuid().as_raw();
    let other = if euid == 0 { 65534 } else { 0 };
    if std::os::unix::fs::chown(&path, Some(other), None).is_err() {
        // Only root can give a file away; as another user the check is unit-tested.
        assert_ne!(euid, 0, "root must be able to chown");
        return;
    }
    let error = fails(&["list"], &path);
    assert!(
        error.contains(&format!("owned by uid {other}"))
            && error.contains(&format!("chown {euid} {}", path.display())),
        "{error}"
    );
}

#[test]
fn corrupted_keyring_gives_a_clear_error() {
    let (_dir, path) = fresh();
    let good = std::fs::read(&path).expect("read");
    std::fs::write(&path, &good[..good.len() / 2]).expect("truncate");
    let error = fails(&["list"], &path);
    assert!(
        error.contains(&format!("keyring {} is invalid", path.display())),
        "{error}"
    );
    assert!(
        error.contains("line") && error.contains("restore it from a backup"),
        "{error}"
    );

    // One changed character of the key material: the fingerprint catches it.
    let text = String::from_utf8(good.clone()).expect("utf8");
    let (_, material) = materials_of(&text);
    let mut damaged = material.clone().into_bytes();
    damaged[5] = if damaged[5] == b'A' { b'B' } else { b'A' };
    let damaged = String::from_utf8(damaged).expect("ascii");
    std::fs::write(&path, text.replace(&material, &damaged)).expect("write");
    let error = fails(&["list"], &path);
    assert!(error.contains("does not match its material"), "{error}");
    assert!(
        !error.contains(&damaged[..10]),
        "error echoes key material: {error}"
    );

    std::fs::write(&path, text.replace("\"primary\"", "\"enabled\"")).expect("write");
    let error = fails(&["rotate"], &path);
    assert!(error.contains("no version is primary"), "{error}");
    std::fs::write(&path, b"").expect("write");
    assert!(fails(&["list"], &path).contains("is invalid"));
    let error = fails(&["list"], &path.with_file_name("missing.json"));
    assert!(
        error.contains("does not exist") && error.contains("key init"),
        "{error}"
    );
}

fn materials_of(text: &str) -> (u64, String) {
    let json: serde_json::Value = serde_json::from_str(text).expect("json");
    let first = &json["versions"][0];
    (
        first["id"].as_u64().expect("id"),
        first["material"].as_str().expect("material").to_string(),
    )
}

#[test]
fn destroy_erases_the_material_from_the_file() {
    let (_dir, path) = fresh();
    ok(&["rotate"], &path);
    let before = materials(&path);
    let old = before[0].1.clone().expect("v1 material");
    let key_id = listed(&path)[0].2.clone();
    ok(&["disable", "1"], &path);
    assert!(
        std::fs::read_to_string(&path).expect("read").contains(&old),
        "disable must keep the material"
    );
    ok(&["destroy", "1", "--force"], &path);
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(!text.contains(&old), "destroyed material still in the file");
    assert!(text.contains(&key_id), "destroy must keep the key_id");
    assert_eq!(materials(&path)[0], (1, None));
    assert!(materials(&path)[1].1.is_some());
}

#[test]
fn writes_are_atomic_and_leave_no_temp_files() {
    let (dir, path) = fresh();
    for command in [
        &["rotate"][..],
        &["add"],
        &["promote", "3"],
        &["disable", "1"],
        &["enable", "1"],
        &["disable", "2"],
        &["destroy", "2", "--force"],
    ] {
        let before = std::fs::metadata(&path).expect("stat");
        ok(command, &path);
        let after = std::fs::metadata(&path).expect("stat");
        assert_ne!(
            std::os::unix::fs::MetadataExt::ino(&before),
            std::os::unix::fs::MetadataExt::ino(&after),
            "{command:?} must replace the file by rename"
        );
        assert_eq!(after.permissions().mode() & 0o777, 0o600);
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("readdir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["keyring.json", "keyring.json.lock"],
            "after {command:?}"
        );
    }
    // A refused operation leaves the file untouched.
    let before = std::fs::read(&path).expect("read");
    fails(&["disable", "3"], &path);
    assert_eq!(std::fs::read(&path).expect("read"), before);
}

#[test]
fn concurrent_rotations_lose_no_version() {
    let (_dir, path) = fresh();
    let workers: Vec<_> = (0..6)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || kube_kms(&["rotate"], &path).code)
        })
        .collect();
    for worker in workers {
        assert_eq!(worker.join().expect("join"), 0);
    }
    let listed = states(&path);
    assert_eq!(listed.len(), 7, "{listed:?}");
    assert_eq!(
        listed
            .iter()
            .filter(|(_, state)| state == "primary")
            .count(),
        1
    );
    assert_eq!(listed.last(), Some(&s(7, "primary")));
}

#[test]
fn keyring_path_from_the_environment() {
    let (_dir, path) = fresh();
    let output = Command::new(env!("CARGO_BIN_EXE_kube-kms"))
        .args(["key", "list"])
        .env("KUBE_KMS_KEYRING", &path)
        .output()
        .expect("run");
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("kk-v1-"));
}

/// SIGKILL at spread-out moments of `rotate` (before, during and after the
/// write): the keyring always loads, and holds either the old or the new
/// versions, never fewer. A killed writer may leave a temp file, nothing else.
#[test]
fn killed_writers_never_leave_a_torn_or_shorter_keyring() {
    let (dir, path) = fresh();
    let mut versions = 1;
    let mut completed_or_killed = [0u32; 2];
    for round in 0..60u64 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kube-kms"))
            .args(["key", "rotate", "--keyring"])
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(std::time::Duration::from_micros(round * 100));
        let killed = matches!(child.try_wait(), Ok(None));
        let _ = child.kill();
        let status = child.wait().expect("wait");
        completed_or_killed[usize::from(killed && !status.success())] += 1;
        let now = states(&path).len();
        assert!(
            now == versions || now == versions + 1,
            "round {round}: {versions} versions became {now}"
        );
        versions = now;
    }
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
    ok(&["rotate"], &path);
    assert!(
        completed_or_killed[1] > 0,
        "no writer was killed: {completed_or_killed:?}"
    );
}
