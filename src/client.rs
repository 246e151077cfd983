//! A KMS v2 gRPC client over a unix socket, as kube-apiserver dials it
//! (plaintext HTTP/2, `:authority` `localhost`). Used by the tests, the
//! benchmark, `kube-kms demo` and `etcd-inspect`'s verification.
//!
//! Addresses: `unix:///path`, a plain path, or `@name` / `unix:///@name` for a
//! Linux abstract socket. Plaintexts returned by [`KmsClient::decrypt`] are
//! [`SecretBytes`].
//!
//! Every call is bounded by [`CALL_TIMEOUT`], kube-apiserver's default KMS
//! timeout: a plugin that stops answering (killed mid-call, socket gone while
//! the channel reconnects) gives an error instead of a call that never ends.
use std::collections::HashMap;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::proto::v2::key_management_service_client::KeyManagementServiceClient;
use crate::proto::v2::{
    DecryptRequest, EncryptRequest, EncryptResponse, StatusRequest, StatusResponse,
};
use crate::secret::SecretBytes;
use crate::server::SocketAddress;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot connect to the KMS plugin at {address}: {source}")]
    Connect {
        /// The address dialled.
        address: String,
        /// The transport error.
        source: tonic::transport::Error,
    },
    /// The plugin answered with an error status.
    #[error("KMS plugin returned {:?}: {}", .0.code(), .0.message())]
    Rpc(#[from] tonic::Status),
}

impl ClientError {
    /// The gRPC status when the plugin answered with one.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            ClientError::Rpc(status) => Some(status),
            ClientError::Connect { .. } => None,
        }
    }
}

/// A connection to a KMS v2 plugin. Cheap to clone; clones share one HTTP/2
/// connection (open several clients for several connections).
#[derive(Clone, Debug)]
pub struct KmsClient {
    inner: KeyManagementServiceClient<Channel>,
}

/// Upper bound of one call, connection included (kube-apiserver's default
/// `timeout` of a KMS provider).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// What Encrypt returned.
pub type Encrypted = EncryptResponse;

async fn dial(address: SocketAddress) -> io::Result<TokioIo<tokio::net::UnixStream>> {
    let stream = match address {
        SocketAddress::Path(path) => tokio::net::UnixStream::connect(path).await?,
        SocketAddress::Abstract(name) => {
            let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            let stream = std::os::unix::net::UnixStream::connect_addr(&address)?;
            stream.set_nonblocking(true)?;
            tokio::net::UnixStream::from_std(stream)?
        }
    };
    Ok(TokioIo::new(stream))
}

impl KmsClient {
    /// Connects to the plugin at `address` (see the module docs for the forms).
    pub async fn connect(address: impl AsRef<str>) -> Result<Self, ClientError> {
        let shown = address.as_ref().to_owned();
        let socket = SocketAddress::parse(&shown);
        // The URI only sets `:authority`; the connector ignores it.
        let endpoint = Endpoint::from_static("http://localhost")
            .connect_timeout(CALL_TIMEOUT)
            .timeout(CALL_TIMEOUT);
        let channel = endpoint
            .connect_with_connector(tower::service_fn(move |_: Uri| dial(socket.clone())))
            .await
            .map_err(|source| ClientError::Connect {
                address: shown,
                source,
            })?;
        Ok(Self {
            inner: KeyManagementServiceClient::new(channel),
        })
    }

    /// Connects to a socket file.
    pub async fn connect_path(path: impl Into<PathBuf>) -> Result<Self, ClientError> {
        let path: PathBuf = path.into();
        Self::connect(path.to_string_lossy()).await
    }

    /// The generated client, for calls this wrapper does not cover.
    pub fn raw(&mut self) -> &mut KeyManagementServiceClient<Channel> {
        &mut self.inner
    }

    /// Status: version, healthz, key_id.
    pub async fn status(&mut self) -> Result<StatusResponse, ClientError> {
        Ok(self.inner.status(StatusRequest {}).await?.into_inner())
    }

    /// Encrypt `plaintext` (e.g. a 32-byte seed); `uid` correlates logs.
    pub async fn encrypt(&mut self, plaintext: &[u8], uid: &str) -> Result<Encrypted, ClientError> {
        let request = EncryptRequest {
            plaintext: plaintext.to_vec(),
            uid: uid.to_owned(),
        };
        Ok(self.inner.encrypt(request).await?.into_inner())
    }

    /// Decrypt `ciphertext` made under `key_id` with its `annotations`.
    pub async fn decrypt(
        &mut self,
        ciphertext: &[u8],
        key_id: &str,
        annotations: &HashMap<String, Vec<u8>>,
        uid: &str,
    ) -> Result<SecretBytes, ClientError> {
        let request = DecryptRequest {
            ciphertext: ciphertext.to_vec(),
            uid: uid.to_owned(),
            key_id: key_id.to_owned(),
            annotations: annotations.clone(),
        };
        let response = self.inner.decrypt(request).await?.into_inner();
        Ok(SecretBytes::new(response.plaintext))
    }

    /// Decrypt what [`KmsClient::encrypt`] returned.
    pub async fn decrypt_encrypted(
        &mut self,
        encrypted: &Encrypted,
        uid: &str,
    ) -> Result<SecretBytes, ClientError> {
        self.decrypt(
            &encrypted.ciphertext,
            &encrypted.key_id,
            &encrypted.annotations,
            uid,
        )
        .await
    }
}
