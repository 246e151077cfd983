//! The Python grpcio client of the plugin (tests/python/kms_v2_call.py) and
//! the interpreter of the venv tools/install-deps makes for it.
use std::path::PathBuf;

/// The client script: calls Status, Encrypt, Decrypt and health on a socket.
pub const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/kms_v2_call.py");

/// The grpcio venv's python (`KUBE_KMS_GRPCIO_PYTHON` overrides it).
pub fn grpcio_python() -> PathBuf {
    if let Some(python) = std::env::var_os("KUBE_KMS_GRPCIO_PYTHON") {
        return PathBuf::from(python);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .expect("HOME or XDG_CACHE_HOME");
    let python = cache.join("kube-kms/grpcio-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run tools/install-deps (it installs grpcio from PyPI)",
        python.display()
    );
    python
}
