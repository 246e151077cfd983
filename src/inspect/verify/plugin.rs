//! The KMS v2 plugin as a [`DekUnwrapper`]: Decrypt through
//! [`crate::client::KmsClient`] on a unix socket.
//!
//! The gRPC client is async; the scan engine and its workers are not, and the
//! live source already runs inside a tokio runtime (where `block_on` would
//! panic). So the client lives on a dedicated thread with its own
//! current-thread runtime; callers send requests over a channel and wait for
//! the answer on a per-request channel. Decrypt calls are few (one per
//! distinct DEK source), so one connection and one thread suffice.

use std::collections::HashMap;
use std::sync::mpsc::{channel, sync_channel, Sender, SyncSender};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Duration;

use super::{DekUnwrapper, UnwrapError, UnwrapRequest};
use crate::client::KmsClient;
use crate::secret::SecretBytes;

/// How long one Decrypt (or the first Status) may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the plugin could not be used at all.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The helper thread or its runtime could not start.
    #[error("cannot start the KMS client thread: {0}")]
    Start(String),
    /// Connecting or the first Status call failed.
    #[error("KMS plugin at {address}: {detail}")]
    Status {
        /// The address given.
        address: String,
        /// What went wrong.
        detail: String,
    },
}

/// What the plugin's Status said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginStatus {
    /// `v2` (or `v2beta1`).
    pub version: String,
    /// `ok`, or why not.
    pub healthz: String,
    /// The current write key_id.
    pub key_id: String,
}

struct Call {
    key_id: String,
    ciphertext: Vec<u8>,
    annotations: HashMap<String, Vec<u8>>,
    reply: SyncSender<Result<SecretBytes, UnwrapError>>,
}

/// A connection to the plugin, on its own thread (see the module doc).
pub struct PluginUnwrapper {
    address: String,
    calls: Mutex<Option<Sender<Call>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for PluginUnwrapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginUnwrapper")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl PluginUnwrapper {
    /// Connects to the plugin at `address` (`unix:///path`, a path, or
    /// `@name`) and asks its Status.
    pub fn connect(address: &str) -> Result<(Self, PluginStatus), PluginError> {
        let (calls, receiver) = channel::<Call>();
        let (status_sender, status_receiver) = sync_channel(1);
        let target = address.to_owned();
        let thread = std::thread::Builder::new()
            .name("kms-verify".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = status_sender.send(Err(format!("cannot start a runtime: {error}")));
                        return;
                    }
                };
                let connected = runtime.block_on(async {
                    let mut client =
                        tokio::time::timeout(CALL_TIMEOUT, KmsClient::connect(&target))
                            .await
                            .map_err(|_| "timed out connecting".to_string())?
                            .map_err(|error| error.to_string())?;
                    let status = tokio::time::timeout(CALL_TIMEOUT, client.status())
                        .await
                        .map_err(|_| "Status timed out".to_string())?
                        .map_err(|error| error.to_string())?;
                    Ok::<_, String>((client, status))
                });
                let mut client = match connected {
                    Ok((client, status)) => {
                        let _ = status_sender.send(Ok(PluginStatus {
                            version: status.version,
                            healthz: status.healthz,
                            key_id: status.key_id,
                        }));
                        client
                    }
                    Err(error) => {
                        let _ = status_sender.send(Err(error));
                        return;
                    }
                };
                while let Ok(call) = receiver.recv() {
                    let uid = request_uid();
                    let answer = runtime.block_on(async {
                        match tokio::time::timeout(
                            CALL_TIMEOUT,
                            client.decrypt(&call.ciphertext, &call.key_id, &call.annotations, &uid),
                        )
                        .await
                        {
                            Err(_) => Err(UnwrapError::Unreachable(format!(
                                "Decrypt timed out after {CALL_TIMEOUT:?}"
                            ))),
                            Ok(Ok(plaintext)) => Ok(plaintext),
                            Ok(Err(error)) => Err(classify_error(&error)),
                        }
                    });
                    let _ = call.reply.send(answer);
                }
            })
            .map_err(|error| PluginError::Start(error.to_string()))?;
        let status = status_receiver
            .recv()
            .map_err(|_| PluginError::Start("the client thread stopped".into()))
            .and_then(|status| {
                status.map_err(|detail| PluginError::Status {
                    address: address.to_owned(),
                    detail,
                })
            });
        let unwrapper = Self {
            address: address.to_owned(),
            calls: Mutex::new(Some(calls)),
            thread: Mutex::new(Some(thread)),
        };
        match status {
            Ok(status) => Ok((unwrapper, status)),
            Err(error) => Err(error),
        }
    }
}

/// A transport failure or an unavailable plugin is "unreachable"; any other
/// answer is the plugin refusing.
fn classify_error(error: &crate::client::ClientError) -> UnwrapError {
    match error.status() {
        Some(status)
            if !matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
            ) =>
        {
            UnwrapError::Refused(format!("{:?}: {}", status.code(), status.message()))
        }
        _ => UnwrapError::Unreachable(error.to_string()),
    }
}

/// A fresh random UUID (v4) per call, as kube-apiserver sends.
fn request_uid() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::getrandom(&mut bytes).is_err() {
        return "etcd-inspect-verify".into();
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

impl DekUnwrapper for PluginUnwrapper {
    fn unwrap_dek(&self, request: &UnwrapRequest<'_>) -> Result<SecretBytes, UnwrapError> {
        let (reply, answer) = sync_channel(1);
        let call = Call {
            key_id: request.key_id.to_owned(),
            ciphertext: request.encrypted_dek_source.to_vec(),
            annotations: request
                .annotations
                .iter()
                .map(|(key, value)| ((*key).to_owned(), value.to_vec()))
                .collect(),
            reply,
        };
        let sent = self
            .calls
            .lock()
            .ok()
            .and_then(|calls| calls.as_ref().map(|calls| calls.send(call).is_ok()));
        if sent != Some(true) {
            return Err(UnwrapError::Unreachable(
                "the KMS client thread stopped".into(),
            ));
        }
        answer.recv().unwrap_or_else(|_| {
            Err(UnwrapError::Unreachable(
                "the KMS client thread stopped".into(),
            ))
        })
    }

    fn describe(&self) -> String {
        self.address.clone()
    }
}

impl Drop for PluginUnwrapper {
    fn drop(&mut self) {
        if let Ok(mut calls) = self.calls.lock() {
            calls.take();
        }
        if let Ok(mut thread) = self.thread.lock() {
            if let Some(thread) = thread.take() {
                let _ = thread.join();
            }
        }
    }
}
