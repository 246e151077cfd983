//! Runs the real `etcd-inspect` binary and splits its `--format json`
//! output (JSON Lines: value records, then one summary record).

use std::process::{Command, Stdio};

use serde_json::Value;

/// The binary cargo built for the tests.
pub const ETCD_INSPECT: &str = env!("CARGO_BIN_EXE_etcd-inspect");

/// What one run printed.
#[derive(Debug)]
pub struct InspectRun {
    /// The exit code (-1 when killed by a signal).
    pub code: i32,
    /// Everything on stdout.
    pub stdout: String,
    /// Everything on stderr.
    pub stderr: String,
    /// `data` of each `value` record (JSON output only).
    pub values: Vec<Value>,
    /// `data` of the `summary` record, `Null` when there is none.
    pub summary: Value,
}

/// Runs `etcd-inspect ARGS` (no stdin, no inherited etcd password).
pub fn etcd_inspect(args: &[&str]) -> InspectRun {
    let output = Command::new(ETCD_INSPECT)
        .args(args)
        .env_remove("ETCDCTL_PASSWORD")
        .stdin(Stdio::null())
        .output()
        .expect("etcd-inspect runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut values = Vec::new();
    let mut summary = Value::Null;
    for line in stdout.lines() {
        let Ok(record) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        match record["type"].as_str() {
            Some("value") => values.push(record["data"].clone()),
            Some("summary") => summary = record["data"].clone(),
            _ => {}
        }
    }
    InspectRun {
        code: output.status.code().unwrap_or(-1),
        stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        values,
        summary,
    }
}

/// The `data` of the summary record in `--format json` output.
pub fn summary_of(json_lines: &str) -> Value {
    json_lines
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|record| record["type"] == "summary")
        .map(|record| record["data"].clone())
        .expect("a summary record")
}

/// A Secret `default/NAME` as kube-apiserver stores it without encryption.
pub fn secret_object(name: &str) -> Vec<u8> {
    // ObjectMeta { name = 1, namespace = 3 }, Secret { metadata = 1, data = 2 }.
    fn field(out: &mut Vec<u8>, number: u8, bytes: &[u8]) {
        out.push(number << 3 | 2);
        let mut len = bytes.len();
        while len >= 0x80 {
            out.push((len as u8) | 0x80);
            len >>= 7;
        }
        out.push(len as u8);
        out.extend_from_slice(bytes);
    }
    let mut meta = Vec::new();
    field(&mut meta, 1, name.as_bytes());
    field(&mut meta, 3, b"default");
    let mut entry = Vec::new();
    field(&mut entry, 1, b"password");
    field(&mut entry, 2, b"hunter2");
    let mut secret = Vec::new();
    field(&mut secret, 1, &meta);
    field(&mut secret, 2, &entry);
    kube_kms::inspect::classify::build::plaintext_protobuf("v1", "Secret", &secret)
}
