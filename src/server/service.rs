//! The `v2.KeyManagementService` implementation over any [`KeyBackend`]:
//! request bounds, the single mapping from failures to gRPC statuses, the
//! per-call log line and the failure counters.
//!
//! Secrets: the Encrypt plaintext is zeroized as soon as it is wrapped; the
//! Decrypt plaintext leaves the zeroizing [`crate::secret::SecretBytes`] only
//! to be encoded into the response (prost messages own plain `Vec<u8>`). No
//! request or response message is ever formatted; logs carry method, uid,
//! key_id, result and `duration_us` (client-supplied uid/key_id escaped and
//! cut to 128 characters). Successes log at debug, failures at warn.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{Semaphore, SemaphorePermit};
use tonic::{Request, Response, Status};
use zeroize::Zeroize;

use crate::backend::{BackendError, KeyBackend};
use crate::proto::v2::key_management_service_server::KeyManagementService;
use crate::proto::v2::{
    DecryptRequest, DecryptResponse, EncryptRequest, EncryptResponse, StatusRequest, StatusResponse,
};
use crate::server::stats::{Method, ServerStats};

/// The version string Status reports (kube-apiserver accepts `v2` and `v2beta1`).
pub const STATUS_VERSION: &str = "v2";

/// Largest plaintext Encrypt accepts: the largest whose wrapped form stays
/// within kube-apiserver's 1 KiB ciphertext limit ([`crate::wrap`]'s bound).
/// kube-apiserver sends 32-byte seeds. Backends check their own bound too.
pub const MAX_ENCRYPT_PLAINTEXT: usize = crate::wrap::MAX_PLAINTEXT_LEN;

/// Largest ciphertext Decrypt accepts: kube-apiserver refuses anything larger
/// from Encrypt, so nothing larger can be legitimate.
pub const MAX_DECRYPT_CIPHERTEXT: usize = 1024;

/// Largest key_id kube-apiserver accepts from a plugin.
pub const MAX_KEY_ID: usize = 1024;

/// Longest uid/key_id prefix written to a log line (they come from the client).
const MAX_LOGGED_FIELD: usize = 128;

/// Why a call failed. Mapped to a gRPC status in exactly one place,
/// [`CallError::to_status`].
#[derive(Debug)]
enum CallError {
    /// The backend refused or failed.
    Backend(BackendError),
    /// A request field exceeds what kube-apiserver could legitimately send.
    TooLarge {
        /// Which field.
        field: &'static str,
        /// Its size in bytes.
        len: usize,
        /// The bound.
        max: usize,
    },
}

impl CallError {
    /// The counter/log label.
    fn reason(&self) -> &'static str {
        match self {
            CallError::Backend(error) => error.reason(),
            CallError::TooLarge { .. } => "request_too_large",
        }
    }

    /// The one mapping from failures to what the client sees. Messages are
    /// generic: the detail goes to the log only.
    fn to_status(&self, method: Method) -> Status {
        match self {
            CallError::TooLarge { field, max, .. } => {
                Status::invalid_argument(format!("{field} exceeds {max} bytes"))
            }
            CallError::Backend(error) => match (method, error) {
                (_, BackendError::Unavailable(_)) => Status::unavailable("key backend unavailable"),
                (Method::Decrypt, BackendError::UnknownKeyId) => {
                    Status::not_found("decryption failed: unknown key_id")
                }
                (Method::Decrypt, BackendError::KeyDisabled) => {
                    Status::failed_precondition("decryption failed: key_id is disabled")
                }
                (Method::Decrypt, _) => Status::invalid_argument("decryption failed"),
                (_, BackendError::InvalidInput(_)) => Status::invalid_argument("invalid request"),
                (_, _) => Status::internal("encryption failed"),
            },
        }
    }

    /// The detail for the log: the backend's error text carries no secrets.
    fn detail(&self) -> String {
        match self {
            CallError::Backend(error) => error.to_string(),
            CallError::TooLarge { field, len, max } => format!("{field} is {len} bytes, max {max}"),
        }
    }
}

/// A prefix of a client-supplied string short enough for a log line.
fn loggable(field: &str) -> &str {
    match field.char_indices().nth(MAX_LOGGED_FIELD) {
        Some((cut, _)) => field.get(..cut).unwrap_or(field),
        None => field,
    }
}

/// The gRPC service: cheap to clone (three `Arc`s).
pub(crate) struct KmsService<B> {
    backend: Arc<B>,
    stats: Arc<ServerStats>,
    /// The global bound on calls handled at once ([`crate::server::ServerOptions::max_concurrent_calls`]).
    slots: Arc<Semaphore>,
}

impl<B> KmsService<B> {
    pub(crate) fn new(
        backend: Arc<B>,
        stats: Arc<ServerStats>,
        max_concurrent_calls: usize,
    ) -> Self {
        let slots = max_concurrent_calls.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            backend,
            stats,
            slots: Arc::new(Semaphore::new(slots)),
        }
    }

    /// Waits for one of the global call slots; the transport's per-call
    /// timeout bounds the wait. The semaphore is never closed.
    async fn slot(&self) -> Result<SemaphorePermit<'_>, Status> {
        self.slots
            .acquire()
            .await
            .map_err(|_| Status::unavailable("the server is shutting down"))
    }

    /// Counts and logs a failed call, and returns what the client sees.
    fn fail(
        &self,
        method: Method,
        uid: &str,
        key_id: &str,
        error: CallError,
        started: Instant,
    ) -> Status {
        let status = error.to_status(method);
        let elapsed = started.elapsed();
        self.stats.record_call(method, status.code(), elapsed);
        self.stats.record_failure(method, error.reason());
        tracing::warn!(
            method = method.name(),
            uid = %loggable(uid).escape_debug(),
            key_id = %loggable(key_id).escape_debug(),
            result = "error",
            reason = error.reason(),
            detail = %error.detail(),
            code = crate::server::stats::code_label(status.code()),
            duration_us = elapsed.as_micros() as u64,
            "call failed"
        );
        status
    }

    fn succeed(&self, method: Method, uid: &str, key_id: &str, started: Instant) {
        let elapsed = started.elapsed();
        self.stats.record_call(method, tonic::Code::Ok, elapsed);
        tracing::debug!(
            method = method.name(),
            uid = %loggable(uid).escape_debug(),
            key_id = %loggable(key_id).escape_debug(),
            result = "ok",
            duration_us = elapsed.as_micros() as u64,
            "call"
        );
    }
}

#[tonic::async_trait]
impl<B: KeyBackend> KeyManagementService for KmsService<B> {
    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let _slot = self.slot().await?;
        let started = Instant::now();
        let status = self.backend.status();
        self.succeed(Method::Status, "", &status.key_id, started);
        Ok(Response::new(StatusResponse {
            version: STATUS_VERSION.to_owned(),
            healthz: status.healthz.to_string(),
            key_id: status.key_id.to_string(),
        }))
    }

    async fn decrypt(
        &self,
        request: Request<DecryptRequest>,
    ) -> Result<Response<DecryptResponse>, Status> {
        let _slot = self.slot().await?;
        let started = Instant::now();
        let DecryptRequest {
            ciphertext,
            uid,
            key_id,
            annotations,
        } = request.into_inner();
        let too_large = if ciphertext.len() > MAX_DECRYPT_CIPHERTEXT {
            Some(("ciphertext", ciphertext.len(), MAX_DECRYPT_CIPHERTEXT))
        } else if key_id.len() > MAX_KEY_ID {
            Some(("key_id", key_id.len(), MAX_KEY_ID))
        } else {
            None
        };
        if let Some((field, len, max)) = too_large {
            let error = CallError::TooLarge { field, len, max };
            return Err(self.fail(Method::Decrypt, &uid, &key_id, error, started));
        }
        let annotations: BTreeMap<String, Vec<u8>> = annotations.into_iter().collect();
        match self
            .backend
            .unwrap(&key_id, &ciphertext, &annotations)
            .await
        {
            Ok(plaintext) => {
                self.succeed(Method::Decrypt, &uid, &key_id, started);
                Ok(Response::new(DecryptResponse {
                    plaintext: plaintext.expose_secret().to_vec(),
                }))
            }
            Err(error) => {
                let error = CallError::Backend(error);
                Err(self.fail(Method::Decrypt, &uid, &key_id, error, started))
            }
        }
    }

    async fn encrypt(
        &self,
        request: Request<EncryptRequest>,
    ) -> Result<Response<EncryptResponse>, Status> {
        let _slot = self.slot().await?;
        let started = Instant::now();
        let EncryptRequest { mut plaintext, uid } = request.into_inner();
        let result = if plaintext.len() > MAX_ENCRYPT_PLAINTEXT {
            Err(CallError::TooLarge {
                field: "plaintext",
                len: plaintext.len(),
                max: MAX_ENCRYPT_PLAINTEXT,
            })
        } else {
            self.backend
                .wrap(&plaintext)
                .await
                .map_err(CallError::Backend)
        };
        plaintext.zeroize();
        match result {
            Ok(wrapped) => {
                self.succeed(Method::Encrypt, &uid, &wrapped.key_id, started);
                Ok(Response::new(EncryptResponse {
                    ciphertext: wrapped.ciphertext,
                    key_id: wrapped.key_id.to_string(),
                    annotations: wrapped.annotations.into_iter().collect(),
                }))
            }
            Err(error) => Err(self.fail(Method::Encrypt, &uid, "", error, started)),
        }
    }
}
