//! The container image `tools/image` builds, without a container runtime:
//! the test builds it from the binaries cargo built for the tests (no second,
//! release build), unpacks the OCI archive's layers into a root filesystem
//! and runs the binaries in it with `chroot`: `--version` of both and a full
//! `kube-kms demo` as the image's user. It checks the image config (entrypoint,
//! user, version tag and label) and that the image holds nothing but the two
//! binaries, the shared libraries they link on this host (ldd), the CA
//! bundle and an empty /tmp. deploy/Containerfile (for users who build in a
//! Rust image) and the manifests in deploy/ are checked against it.
//!
//! Needs root (chroot, and podman's storage) and podman (tools/install-deps):
//! without them the test fails and says so, never skips.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const IMAGE_USER: &str = "65532:65532";
const ENTRYPOINT: &str = "/usr/local/bin/kube-kms";
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn image_tag() -> String {
    format!("localhost/kube-kms:{VERSION}")
}

fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn require_root(what: &str) {
    assert!(
        rustix::process::geteuid().is_root(),
        "{what} needs root (chroot, podman storage, dpkg): run the tests as root, as CI does"
    );
}

/// A directory holding copies of the two binaries cargo built for this test
/// run, so a parallel build cannot change them under the image build.
pub fn test_bin_dir(dir: &Path) -> PathBuf {
    let bin_dir = dir.join("bin");
    std::fs::create_dir_all(&bin_dir).expect("bin dir");
    for (name, path) in [
        ("kube-kms", env!("CARGO_BIN_EXE_kube-kms")),
        ("etcd-inspect", env!("CARGO_BIN_EXE_etcd-inspect")),
    ] {
        std::fs::copy(path, bin_dir.join(name)).expect("copy a binary");
    }
    bin_dir
}

/// The files the loader needs for `binary`, as ldd on this host resolves them.
fn linked_libraries(binary: &Path) -> BTreeSet<String> {
    let ldd = run(Command::new("ldd").arg(binary));
    let mut libraries = BTreeSet::new();
    for line in ldd.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [_, "=>", path, ..] if path.starts_with('/') => libraries.insert(path.to_string()),
            [path, ..] if path.starts_with('/') => libraries.insert(path.to_string()),
            _ => false,
        };
    }
    assert!(
        libraries.iter().any(|l| l.contains("libc.so")),
        "ldd found no libc in: {ldd}"
    );
    libraries
}

fn json_file(path: &Path) -> serde_json::Value {
    let text = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()))
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    let hex = digest
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("not a sha256 digest: {digest}"));
    layout.join("blobs/sha256").join(hex)
}

/// Every path under `root` (relative, with a leading `/`) that is not a directory.
fn files_under(root: &Path) -> BTreeSet<String> {
    let mut files = BTreeSet::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let entry = entry.expect("dir entry");
            let kind = entry.file_type().expect("file type");
            if kind.is_dir() {
                todo.push(entry.path());
            } else {
                let relative = entry
                    .path()
                    .strip_prefix(root)
                    .expect("under root")
                    .to_owned();
                files.insert(format!("/{}", relative.display()));
            }
        }
    }
    files
}

#[test]
fn image_holds_only_the_binaries_their_libraries_and_ca_certs_and_runs_in_a_chroot() {
    require_root("the image test");
    let dir = tempfile::Builder::new()
        .prefix("kk-image")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let bin_dir = test_bin_dir(dir.path());
    let archive = dir.path().join(format!("kube-kms-{VERSION}.oci.tar"));
    run(Command::new(repo_path("tools/image"))
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--out")
        .arg(&archive));

    // The OCI archive: index -> manifest -> config and layers.
    let layout = dir.path().join("layout");
    std::fs::create_dir(&layout).expect("layout dir");
    run(Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&layout));
    let index = json_file(&layout.join("index.json"));
    let manifests = index["manifests"].as_array().expect("manifests");
    assert_eq!(manifests.len(), 1, "{index}");
    assert_eq!(
        manifests[0]["annotations"]["org.opencontainers.image.ref.name"],
        image_tag().as_str(),
        "the archive names the image localhost/kube-kms:VERSION"
    );
    let manifest = json_file(&blob(
        &layout,
        manifests[0]["digest"].as_str().expect("digest"),
    ));
    let config = json_file(&blob(
        &layout,
        manifest["config"]["digest"]
            .as_str()
            .expect("config digest"),
    ));
    let image_config = &config["config"];
    assert_eq!(image_config["Entrypoint"], serde_json::json!([ENTRYPOINT]));
    assert_eq!(image_config["Cmd"], serde_json::json!(["serve"]));
    assert_eq!(
        image_config["User"], IMAGE_USER,
        "the image runs as non-root"
    );
    assert_eq!(
        image_config["Labels"]["org.opencontainers.image.version"],
        VERSION
    );
    assert!(
        image_config["Env"].as_array().is_none_or(|env| env
            .iter()
            .all(|e| e.as_str().is_some_and(|e| e.starts_with("PATH=")))),
        "no environment beyond PATH: {image_config}"
    );

    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir(&rootfs).expect("rootfs dir");
    for layer in manifest["layers"].as_array().expect("layers") {
        let path = blob(&layout, layer["digest"].as_str().expect("layer digest"));
        let listing = run(Command::new("tar").arg("-tzf").arg(&path));
        assert!(
            !listing.lines().any(|name| name.contains(".wh.")),
            "a whiteout in a FROM scratch image: {listing}"
        );
        run(Command::new("tar")
            .args(["-xzf"])
            .arg(&path)
            .arg("--same-owner")
            .arg("--same-permissions")
            .arg("-C")
            .arg(&rootfs));
    }

    // Exactly the binaries, their libraries and the CA bundle.
    let mut expected: BTreeSet<String> = [
        "/usr/local/bin/kube-kms".to_owned(),
        "/usr/local/bin/etcd-inspect".to_owned(),
        CA_BUNDLE.to_owned(),
    ]
    .into();
    for binary in ["kube-kms", "etcd-inspect"] {
        expected.extend(linked_libraries(&bin_dir.join(binary)));
    }
    assert_eq!(files_under(&rootfs), expected, "files in the image");
    for binary in ["kube-kms", "etcd-inspect"] {
        assert_eq!(
            std::fs::read(rootfs.join("usr/local/bin").join(binary)).expect("binary in image"),
            std::fs::read(bin_dir.join(binary)).expect("binary"),
            "{binary} in the image is the one given"
        );
    }
    assert!(!rootfs.join("bin/sh").exists(), "no shell");
    let tmp = std::fs::metadata(rootfs.join("tmp")).expect("/tmp in the image");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(tmp.permissions().mode() & 0o7777, 0o1777, "/tmp is 1777");

    // The binaries run in it: --version, and the demo as the image's user.
    let chroot = |user: &str, args: &[&str]| {
        run(Command::new("/usr/sbin/chroot")
            .arg(format!("--userspec={user}"))
            .arg(&rootfs)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/local/bin"))
    };
    assert_eq!(
        chroot(IMAGE_USER, &[ENTRYPOINT, "--version"]).trim(),
        format!("kube-kms {VERSION}")
    );
    assert_eq!(
        chroot(IMAGE_USER, &["/usr/local/bin/etcd-inspect", "--version"]).trim(),
        format!("etcd-inspect {VERSION}")
    );
    let demo = chroot(IMAGE_USER, &[ENTRYPOINT, "demo"]);
    assert!(
        demo.contains("key rotated") && demo.contains("server stopped"),
        "demo output:\n{demo}"
    );
    assert!(
        files_under(&rootfs.join("tmp")).is_empty(),
        "the demo cleaned up"
    );
}

/// deploy/Containerfile (users build it with network access, in a Rust
/// image) describes the same image: same entrypoint, command, user, paths,
/// and a base without a shell.
#[test]
fn containerfile_for_users_matches_the_image_tools_image_builds() {
    let text = std::fs::read_to_string(repo_path("deploy/Containerfile")).expect("Containerfile");
    let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "multi-stage: build, then run: {froms:?}");
    assert!(
        froms[0].contains("rust:") && froms[0].contains(" AS build"),
        "{froms:?}"
    );
    assert!(
        froms[1].contains("gcr.io/distroless/cc-debian12:nonroot"),
        "runs on distroless cc (no shell): {froms:?}"
    );
    for line in [
        "USER 65532:65532",
        "ENTRYPOINT [\"/usr/local/bin/kube-kms\"]",
        "CMD [\"serve\"]",
        "RUN cargo build --release --locked --bin kube-kms --bin etcd-inspect",
        "COPY --from=build /src/target/release/kube-kms /src/target/release/etcd-inspect /usr/local/bin/",
    ] {
        assert!(text.lines().any(|l| l == line), "deploy/Containerfile lacks `{line}`");
    }
    let image = std::fs::read_to_string(repo_path("tools/image")).expect("tools/image");
    for line in [
        "USER 65532:65532",
        "ENTRYPOINT [\"/usr/local/bin/kube-kms\"]",
        "CMD [\"serve\"]",
    ] {
        assert!(
            image.lines().any(|l| l == line),
            "tools/image lacks `{line}`"
        );
    }
}

/// The static pod and the CronJob name the image tools/image makes, and say
/// how to load it on a node.
#[test]
fn manifests_name_the_image_tools_image_makes_and_how_to_load_it() {
    for file in [
        "deploy/kube-kms.static-pod.yaml",
        "deploy/etcd-inspect-cronjob.yaml",
    ] {
        let text = std::fs::read_to_string(repo_path(file)).expect("manifest");
        let images: Vec<&str> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("image: "))
            .collect();
        // The CronJob's init container picks the backup with busybox's sh.
        assert!(images.contains(&image_tag().as_str()), "{file}: {images:?}");
        assert!(
            images
                .iter()
                .all(|i| *i == image_tag() || i.starts_with("docker.io/library/busybox:")),
            "{file}: {images:?}"
        );
        for needle in ["tools/image", "ctr -n k8s.io images import", "podman load"] {
            assert!(text.contains(needle), "{file} does not say `{needle}`");
        }
        assert!(
            !text.contains("PLACEHOLDER") && !text.contains("ghcr.io/example"),
            "{file}: still a placeholder image"
        );
    }
}
