//! gRPC clients other than grpc-go on the plugin's unix socket: Python's
//! `grpcio` (grpc C-core, the stack of Python, C++ and Ruby clients) against
//! the real `kube-kms serve`. C-core sends the %-encoded socket path as
//! `:authority`, which the HTTP/2 layer (h2, under tonic) refuses before the
//! call reaches the service; `grpc.default_authority=localhost` is the
//! setting docs/troubleshooting.md tells such clients to use. Both halves are
//! tested: the refusal (so the docs are rewritten when h2 accepts it) and the
//! working calls with the setting.
//!
//! grpcio comes from the venv tools/install-deps makes
//! (`${XDG_CACHE_HOME:-~/.cache}/kube-kms/grpcio-venv`, or KUBE_KMS_GRPCIO_PYTHON
//! naming a Python that can `import grpc`).
use crate::common::grpcio::{grpcio_python, CLIENT};
use crate::common::plugin::{init_keyring, temp_dir, ServeProcess};

use std::path::Path;
use std::process::Command;

/// Runs the Python client against `socket` (with `grpc.default_authority` set
/// to `authority` if given) and returns its JSON verdict.
fn python_call(socket: &Path, authority: Option<&str>) -> serde_json::Value {
    let mut command = Command::new(grpcio_python());
    command.arg(CLIENT).arg(socket);
    if let Some(authority) = authority {
        command.arg(authority);
    }
    // No proxy from the environment may take the unix socket's place.
    command.env_remove("http_proxy").env_remove("https_proxy");
    command.env_remove("grpc_proxy");
    let output = command.output().expect("run the Python gRPC client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "the Python client printed no verdict ({e}; exit {}):\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_calls_status_encrypt_decrypt_and_health_with_authority_localhost() {
    let dir = temp_dir();
    let keyring = init_keyring(dir.path());
    let serve = ServeProcess::start(dir.path(), &keyring, &[]).await;
    let key_id = serve.client().await.status().await.expect("Status").key_id;

    let verdict = python_call(&serve.socket, Some("localhost"));
    assert_eq!(verdict["ok"], true, "{verdict}");
    assert_eq!(verdict["status"]["healthz"], "ok", "{verdict}");
    assert_eq!(verdict["status"]["version"], "v2", "{verdict}");
    assert_eq!(verdict["status"]["key_id"], key_id.as_str(), "{verdict}");
    assert_eq!(verdict["encrypt_key_id"], key_id.as_str(), "{verdict}");
    assert_eq!(verdict["roundtrip"], true, "{verdict}");
    assert_eq!(verdict["health"], "SERVING", "{verdict}");
}

/// What docs/troubleshooting.md describes: without the setting, C-core's
/// default `:authority` is refused by the HTTP/2 layer (a stream reset with
/// PROTOCOL_ERROR, which grpcio reports as INTERNAL, "Received RST_STREAM with
/// error code 1"). If this starts to pass,
/// h2 accepts such authorities: drop the limitation from the docs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_default_authority_on_a_unix_socket_is_refused_by_http2() {
    let dir = temp_dir();
    let keyring = init_keyring(dir.path());
    let serve = ServeProcess::start(dir.path(), &keyring, &[]).await;

    let verdict = python_call(&serve.socket, None);
    assert_eq!(verdict["ok"], false, "{verdict}");
    assert_eq!(verdict["code"], "INTERNAL", "{verdict}");
    let details = verdict["details"].as_str().unwrap_or_default();
    // HTTP/2 error code 1 is PROTOCOL_ERROR (RFC 9113, section 7).
    assert!(
        details.contains("RST_STREAM with error code 1"),
        "{verdict}"
    );
    // The plugin itself is unharmed and still serves grpc-go style clients.
    assert_eq!(
        serve.client().await.status().await.expect("Status").healthz,
        "ok"
    );
}
