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
