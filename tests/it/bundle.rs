//! `kube-kms key export|import|check|list` through the real binary: bundles
//! hold no key bytes in clear, conflicting or tampered bundles change nothing,
//! import is idempotent, and `key check` exits 2 naming an unreachable peer.
use crate::common::plugin;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use age::secrecy::ExposeSecret as _;
use base64::Engine as _;
use plugin::{temp_dir, KUBE_KMS};

/// See tests/it/ha.rs: `KUBE_KMS_TEST_BIN` may name the build to test.
fn binary() -> String {
    std::env::var("KUBE_KMS_TEST_BIN").unwrap_or_else(|_| KUBE_KMS.to_owned())
}

fn key(keyring: &Path, args: &[&str]) -> Output {
    let mut args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    if args.first().map(String::as_str) == Some("import") {
        operator_checks(keyring, &mut args);
    }
    Command::new(binary())
        .arg("key")
        .args(&args)
        .arg("--keyring")
        .arg(keyring)
        .output()
        .expect("run kube-kms")
}

/// What a careful operator adds to `key import` (these tests are about other
/// things; tests/it/trust.rs tests the fingerprint itself): the fingerprint
/// the export printed (read here by opening the bundle with the legitimate
/// key; a bundle that does not open gets a fingerprint that matches nothing),
/// and `--set-primary` with the exporter's primary when the import creates
/// the keyring.
fn operator_checks(keyring: &Path, args: &mut Vec<String>) {
    use kube_kms::keyring::bundle::{self, Unlock};
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map(PathBuf::from)
    };
    let unlock = match (value("--identity"), value("--passphrase-file")) {
        (_, Some(file)) => Unlock::passphrase_file(&file).ok(),
        (Some(file), None) => Unlock::identity_file(&file).ok(),
        _ => None,
    };
    let opened = unlock.and_then(|unlock| bundle::open_file(Path::new(&args[1]), &unlock).ok());
    let fingerprint = opened
        .as_ref()
        .map(|b| b.fingerprint().to_owned())
        .unwrap_or_else(|| "0000".repeat(8));
    if !args.iter().any(|a| a == "--expect-fingerprint") {
        args.extend(["--expect-fingerprint".to_owned(), fingerprint]);
    }
    let primary = opened.as_ref().and_then(|b| b.primary_at_export());
    if let (false, Some(primary)) = (keyring.exists(), primary) {
        if !args.iter().any(|a| a == "--set-primary") {
            args.extend(["--set-primary".to_owned(), primary.to_string()]);
        }
    }
}

fn ok(keyring: &Path, args: &[&str]) -> String {
    let output = key(keyring, args);
    assert!(
        output.status.success(),
        "key {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    stdout + &String::from_utf8_lossy(&output.stderr)
}

fn fails(keyring: &Path, args: &[&str]) -> (i32, String) {
    let output = key(keyring, args);
    assert!(!output.status.success(), "key {args:?} succeeded");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

fn s(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

struct Identity {
    file: PathBuf,
    recipient: String,
}

fn identity(dir: &Path, name: &str) -> Identity {
    let identity = age::x25519::Identity::generate();
    let file = dir.join(name);
    std::fs::write(&file, format!("{}\n", identity.to_string().expose_secret())).unwrap();
    Identity {
        file,
        recipient: identity.to_public().to_string(),
    }
}

/// The materials of every version, as raw bytes.
fn materials(keyring: &Path) -> Vec<Vec<u8>> {
    let loaded = kube_kms::keyring::load(keyring).unwrap();
    loaded
        .keyring
        .versions()
        .iter()
        .filter_map(|v| v.material().map(|k| k.expose_secret().to_vec()))
        .collect()
}

fn assert_no_material(haystack: &[u8], materials: &[Vec<u8>], what: &str) {
    let text = String::from_utf8_lossy(haystack).to_lowercase();
    for material in materials {
        let hex: String = material.iter().map(|b| format!("{b:02x}")).collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(material);
        let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(material);
        assert!(
            !haystack
                .windows(16)
                .any(|w| material.windows(16).any(|m| m == w)),
            "{what} holds raw key bytes"
        );
        assert!(!text.contains(&hex[..32]), "{what} holds the key in hex");
        assert!(
            !String::from_utf8_lossy(haystack).contains(&b64[..24])
                && !String::from_utf8_lossy(haystack).contains(&b64url[..24]),
            "{what} holds the key in base64"
        );
    }
}

#[test]
fn export_import_round_trip_is_protected_and_idempotent() {
    let dir = temp_dir();
    let source = dir.path().join("source.json");
    let target = dir.path().join("target.json");
    let id = identity(dir.path(), "target.agekey");
    ok(&source, &["init"]);
    ok(&source, &["add"]);
    let bundle = dir.path().join("v1v2.age");
    let export_out = ok(
        &source,
        &[
            "export",
            "1",
            "2",
            "--out",
            s(&bundle),
            "--recipient",
            &id.recipient,
        ],
    );
    let keys = materials(&source);
    assert_eq!(keys.len(), 2);
    let bundle_bytes = std::fs::read(&bundle).unwrap();
    assert!(bundle_bytes.starts_with(b"age-encryption.org/v1\n"));
    assert_no_material(&bundle_bytes, &keys, "the bundle");
    assert_no_material(export_out.as_bytes(), &keys, "export's output");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&bundle).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Export never overwrites.
    let (_, error) = fails(
        &source,
        &[
            "export",
            "1",
            "--out",
            s(&bundle),
            "--recipient",
            &id.recipient,
        ],
    );
    assert!(error.contains("must not exist"), "{error}");

    // A new node: import creates the keyring; v1 (primary at export) is primary.
    let first = ok(&target, &["import", s(&bundle), "--identity", s(&id.file)]);
    assert!(first.contains("created keyring"), "{first}");
    assert_no_material(first.as_bytes(), &keys, "import's output");
    let listed = ok(&target, &["list", "--format", "json"]);
    let source_list = ok(&source, &["list", "--format", "json"]);
    assert_eq!(
        listed, source_list,
        "same ids, key_ids, states, fingerprints"
    );
    assert!(listed.contains("\"fingerprint\""), "{listed}");
    let table = ok(&target, &["list"]);
    assert!(
        table.lines().next().unwrap().contains("FINGERPRINT"),
        "{table}"
    );
    assert_eq!(materials(&target), keys);

    // Importing again changes nothing, not even the file's inode or mtime.
    let before = std::fs::read(&target).unwrap();
    let meta = std::fs::metadata(&target).unwrap();
    let again = ok(&target, &["import", s(&bundle), "--identity", s(&id.file)]);
    assert!(
        again.contains("already present") && again.contains("unchanged"),
        "{again}"
    );
    assert_eq!(std::fs::read(&target).unwrap(), before);
    let after = std::fs::metadata(&target).unwrap();
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!(
        (meta.ino(), meta.mtime_nsec()),
        (after.ino(), after.mtime_nsec())
    );

    // Into an existing keyring: a new version is added as enabled, and a
    // locally promoted version is not demoted.
    ok(&source, &["add"]);
    ok(&target, &["promote", "2"]);
    let v3 = dir.path().join("v2v3.age");
    ok(
        &source,
        &[
            "export",
            "2",
            "3",
            "--out",
            s(&v3),
            "--recipient",
            &id.recipient,
        ],
    );
    let merged = ok(&target, &["import", s(&v3), "--identity", s(&id.file)]);
    assert!(
        merged.contains("imported version 3") && merged.contains("as enabled"),
        "{merged}"
    );
    let states: serde_json::Value =
        serde_json::from_str(&ok(&target, &["list", "--format", "json"])).unwrap();
    let states: Vec<(u64, String)> = states["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["id"].as_u64().unwrap(),
                v["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            (1, "enabled".to_owned()),
            (2, "primary".to_owned()),
            (3, "enabled".to_owned())
        ]
    );
}

#[test]
fn conflicting_wrong_and_tampered_bundles_change_nothing() {
    let dir = temp_dir();
    let cluster_a = dir.path().join("a.json");
    let cluster_b = dir.path().join("b.json");
    let id = identity(dir.path(), "b.agekey");
    let stranger = identity(dir.path(), "stranger.agekey");
    ok(&cluster_a, &["init"]);
    ok(&cluster_a, &["add"]);
    ok(&cluster_b, &["init"]);
    let bundle = dir.path().join("a.age");
    ok(
        &cluster_a,
        &[
            "export",
            "1",
            "2",
            "--out",
            s(&bundle),
            "--recipient",
            &id.recipient,
        ],
    );
    let before = std::fs::read(&cluster_b).unwrap();

    // Version 1 exists in b with other material: refused, nothing imported (not even v2).
    let (code, error) = fails(
        &cluster_b,
        &["import", s(&bundle), "--identity", s(&id.file)],
    );
    assert_eq!(code, 2);
    assert!(
        error.contains("cannot import version 1") && error.contains("other material"),
        "{error}"
    );
    assert_no_material(error.as_bytes(), &materials(&cluster_a), "the error");
    assert_eq!(std::fs::read(&cluster_b).unwrap(), before);

    // Not encrypted to this identity.
    let (_, error) = fails(
        &cluster_b,
        &["import", s(&bundle), "--identity", s(&stranger.file)],
    );
    assert!(error.contains("none of the given identities"), "{error}");
    assert_eq!(std::fs::read(&cluster_b).unwrap(), before);

    // Tampered anywhere (header, body, last byte) or truncated: refused; a new
    // keyring is not created either.
    let fresh = dir.path().join("fresh.json");
    let bytes = std::fs::read(&bundle).unwrap();
    let tampered = dir.path().join("tampered.age");
    for index in [30, bytes.len() / 2, bytes.len() - 1] {
        let mut changed = bytes.clone();
        changed[index] ^= 0x04;
        std::fs::write(&tampered, &changed).unwrap();
        let (code, error) = fails(&fresh, &["import", s(&tampered), "--identity", s(&id.file)]);
        assert_eq!(code, 2, "{error}");
        assert!(
            error.contains("cannot open bundle"),
            "flip at {index}: {error}"
        );
        assert!(!fresh.exists());
    }
    std::fs::write(&tampered, &bytes[..bytes.len() - 10]).unwrap();
    let (_, error) = fails(&fresh, &["import", s(&tampered), "--identity", s(&id.file)]);
    assert!(error.contains("cannot open bundle"), "{error}");
    assert!(!fresh.exists());
    ok(&fresh, &["import", s(&bundle), "--identity", s(&id.file)]);
}

#[test]
fn passphrase_bundles() {
    let dir = temp_dir();
    let source = dir.path().join("source.json");
    let target = dir.path().join("target.json");
    ok(&source, &["init"]);
    let passphrase = dir.path().join("pass");
    std::fs::write(&passphrase, "correct horse battery staple\n").unwrap();
    let short = dir.path().join("short");
    std::fs::write(&short, "hunter2\n").unwrap();
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "incorrect horse battery staple\n").unwrap();
    let bundle = dir.path().join("p.age");
    let (_, error) = fails(
        &source,
        &[
            "export",
            "1",
            "--out",
            s(&bundle),
            "--passphrase-file",
            s(&short),
        ],
    );
    assert!(error.contains("shorter than 12"), "{error}");
    assert!(!error.contains("hunter2"));
    ok(
        &source,
        &[
            "export",
            "1",
            "--out",
            s(&bundle),
            "--passphrase-file",
            s(&passphrase),
        ],
    );
    assert_no_material(
        &std::fs::read(&bundle).unwrap(),
        &materials(&source),
        "the bundle",
    );
    let (_, error) = fails(
        &target,
        &["import", s(&bundle), "--passphrase-file", s(&wrong)],
    );
    assert!(error.contains("wrong passphrase"), "{error}");
    assert!(!error.contains("horse"), "{error}");
    let id = identity(dir.path(), "id.agekey");
    let (_, error) = fails(&target, &["import", s(&bundle), "--identity", s(&id.file)]);
    assert!(error.contains("--passphrase-file"), "{error}");
    ok(
        &target,
        &["import", s(&bundle), "--passphrase-file", s(&passphrase)],
    );
    assert_eq!(materials(&target), materials(&source));
}

#[test]
fn check_and_promote_name_an_unreachable_peer() {
    let dir = temp_dir();
    let keyring = dir.path().join("k.json");
    ok(&keyring, &["init"]);
    ok(&keyring, &["add"]);
    let dead = format!("unix://{}", dir.path().join("nobody.sock").display());
    let (code, report) = fails(&keyring, &["check", "--peer", &dead]);
    assert_eq!(code, 2, "{report}");
    assert!(
        report.contains(&dead) && report.contains("UNREACHABLE"),
        "{report}"
    );
    let before = std::fs::read(&keyring).unwrap();
    let (code, error) = fails(
        &keyring,
        &["promote", "2", "--peer", &dead, "--require-peers"],
    );
    assert_eq!(code, 1, "{error}");
    assert!(
        error.contains(&dead) && error.contains("refusing"),
        "{error}"
    );
    assert_eq!(std::fs::read(&keyring).unwrap(), before);
    let warned = ok(&keyring, &["promote", "2", "--peer", &dead]);
    assert!(
        warned.contains("warning") && warned.contains("promoted"),
        "{warned}"
    );
}
