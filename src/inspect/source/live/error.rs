//! Why a live read failed, and the mapping of etcd client errors to it:
//! each message names the endpoint, what the scan was doing, and what to do.
use std::path::PathBuf;

use super::session::Phase;

/// Why a live scan failed. Messages name the endpoint and what to do.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// The options do not make a usable connection.
    #[error("invalid etcd connection options: {0}")]
    Config(String),
    /// A TLS file could not be read.
    #[error("cannot read {what} {path}: {source}; check --cacert/--cert/--key")]
    ReadTlsFile {
        /// Which file (CA, client certificate, client key).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The password file could not be read.
    #[error("--password-file {}: cannot read it", path.display())]
    ReadPasswordFile {
        /// Its path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The first contact with etcd failed.
    #[error(
        "cannot reach etcd at {endpoints}: {detail}; check --endpoints and that etcd is running \
         (for TLS: https:// endpoints with --cacert, and --cert/--key if etcd requires client certificates)"
    )]
    Unreachable {
        /// The endpoints tried.
        endpoints: String,
        /// What the transport said.
        detail: String,
    },
    /// etcd did not answer in time.
    #[error(
        "etcd at {endpoints} did not answer {what} within {seconds}s; the scan is incomplete: \
         check --endpoints, the network and etcd's health, then rerun"
    )]
    Timeout {
        /// The endpoints tried.
        endpoints: String,
        /// The request that timed out.
        what: String,
        /// The deadline.
        seconds: u64,
    },
    /// etcd refused the credentials or the permission.
    #[error(
        "etcd at {endpoints} refused {what}: {detail}; check --user/--password or the client \
         certificate (--cert/--key) and that it may read the scanned keys"
    )]
    Auth {
        /// The endpoints tried.
        endpoints: String,
        /// The refused request.
        what: String,
        /// etcd's answer.
        detail: String,
    },
    /// The connection broke after the scan started.
    #[error(
        "lost the connection to etcd at {endpoints} while {what}: {detail}; the scan is \
         incomplete: rerun it once etcd is reachable"
    )]
    ConnectionLost {
        /// The endpoints tried.
        endpoints: String,
        /// What the scan was doing.
        what: String,
        /// What the transport said.
        detail: String,
    },
    /// etcd compacted past a revision the scan needs.
    #[error(
        "etcd compacted revision {revision} away while {what}; the scan is incomplete: rerun it \
         (compaction, e.g. kube-apiserver's every 5 minutes, moved past the scan's revision)"
    )]
    Compacted {
        /// The revision the scan needed.
        revision: i64,
        /// What the scan was doing.
        what: String,
    },
    /// One value is too large to fetch within [`MAX_RESPONSE_BYTES`].
    #[error(
        "the value of the key after {after} is larger than {limit} bytes, the most a page may \
         hold; the scan is incomplete"
    )]
    ValueTooLarge {
        /// The key the failing page started after (base64 if not UTF-8).
        after: String,
        /// The limit.
        limit: usize,
    },
    /// The history watch ended without replaying up to the pinned revision.
    #[error(
        "etcd cancelled the history watch ({reason}) before revision {revision}; the history \
         scan is incomplete: rerun, or scan without --history"
    )]
    WatchCancelled {
        /// etcd's reason, if any.
        reason: String,
        /// The pinned revision the replay had to reach.
        revision: i64,
    },
    /// The scan's own machinery failed (thread or runtime could not start).
    #[error("etcd-inspect failed internally: {0}; the scan is incomplete")]
    Internal(String),
    /// etcd rejected a request for another reason.
    #[error("etcd at {endpoints} rejected {what}: {detail}")]
    Request {
        /// The endpoints tried.
        endpoints: String,
        /// The rejected request.
        what: String,
        /// etcd's answer.
        detail: String,
    },
}

pub(super) fn grpc_status(error: &etcd_client::Error) -> Option<&tonic::Status> {
    match error {
        etcd_client::Error::GRpcStatus(status) => Some(status),
        _ => None,
    }
}

pub(super) fn is_compacted(error: &etcd_client::Error) -> bool {
    grpc_status(error).is_some_and(|status| status.message().contains("has been compacted"))
}

pub(super) fn is_future_revision(error: &etcd_client::Error) -> bool {
    grpc_status(error).is_some_and(|status| status.message().contains("future revision"))
}

pub(super) fn is_too_large(error: &etcd_client::Error) -> bool {
    grpc_status(error).is_some_and(|status| status.message().contains("message length too large"))
}

pub(super) fn is_auth_message(message: &str) -> bool {
    [
        "authentication failed",
        "user name is empty",
        "invalid auth token",
        "permission denied",
        "user name not found",
    ]
    .iter()
    .any(|needle| message.contains(needle))
}

/// Turns a client error into the error the user can act on.
pub(super) fn classify(
    error: etcd_client::Error,
    endpoints: &str,
    what: &str,
    phase: Phase,
) -> LiveError {
    let detail = error_chain(&error);
    let endpoints = endpoints.to_owned();
    let what = what.to_owned();
    let transport_failure = match &error {
        // etcd answers bad credentials and missing tokens with
        // InvalidArgument; its messages are stable across 3.x.
        etcd_client::Error::GRpcStatus(status) if is_auth_message(status.message()) => {
            return LiveError::Auth {
                endpoints,
                what,
                detail,
            }
        }
        etcd_client::Error::GRpcStatus(status) => match status.code() {
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
                return LiveError::Auth {
                    endpoints,
                    what,
                    detail,
                }
            }
            tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::Internal
            | tonic::Code::DeadlineExceeded => true,
            _ => false,
        },
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::InvalidArgs(_)
        | etcd_client::Error::InvalidUri(_)
        | etcd_client::Error::EndpointError(_) => {
            return LiveError::Config(format!(
                "{detail}; check --endpoints (URL[,URL...], e.g. https://10.0.0.1:2379)"
            ))
        }
        _ => false,
    };
    match (transport_failure, phase) {
        (true, Phase::Connecting) => LiveError::Unreachable { endpoints, detail },
        (true, Phase::Scanning) => LiveError::ConnectionLost {
            endpoints,
            what,
            detail,
        },
        (false, _) => LiveError::Request {
            endpoints,
            what,
            detail,
        },
    }
}

/// The error and its sources, joined: tonic's top-level messages alone
/// ("transport error") do not say what failed.
pub(super) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A key for messages: as text when it is UTF-8, else base64.
pub(super) fn printable_key(key: &[u8]) -> String {
    let trimmed = key.strip_suffix(&[0]).unwrap_or(key);
    match std::str::from_utf8(trimmed) {
        Ok(text) => format!("{text:?}"),
        Err(_) => {
            use base64::Engine as _;
            format!(
                "base64:{}",
                base64::engine::general_purpose::STANDARD.encode(trimmed)
            )
        }
    }
}
