//! The HTTP side of the Vault/OpenBao backend: one reused HTTP/1.1 client
//! (keep-alive, rustls with ring, no native-tls), the TLS set-up from
//! `--vault-cacert` / `--vault-client-cert` / `--vault-client-key`, and one
//! JSON request with a deadline: connection errors, 5xx and 429 answers are
//! retried with exponential backoff while the deadline allows; everything
//! else is returned as the [`HttpError`] it is.
//!
//! Secrets: the token travels in a header marked sensitive; request and
//! response bodies that hold a seed are kept in zeroizing buffers on our
//! side. hyper's own buffers (and the kernel's) cannot be zeroized.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use zeroize::Zeroizing;

/// Largest response body read from Vault (a key's metadata with many
/// versions is a few KiB).
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// First pause before a retry; doubles each time.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// Why a Vault request failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// 403: the token is not allowed (or is expired or revoked).
    #[error("permission denied by Vault on {path} (403): check the token's policy (docs/backends.md lists the capabilities kube-kms needs) and that the token is still valid")]
    PermissionDenied {
        /// The API path (no secret in it).
        path: String,
    },
    /// 4xx other than 403: Vault refused the request; `errors` is what it said.
    #[error("Vault refused {path} ({status}): {errors}")]
    Refused {
        /// The API path.
        path: String,
        /// The HTTP status.
        status: u16,
        /// Vault's `errors` array, joined.
        errors: String,
    },
    /// No usable answer within the deadline (connection errors, 5xx, 429,
    /// timeouts), after retries.
    #[error("Vault unavailable for {path}: {detail}")]
    Unavailable {
        /// The API path.
        path: String,
        /// The last failure.
        detail: String,
    },
    /// An answer that is not the JSON expected.
    #[error("Vault answered {path} with an unexpected body: {detail}")]
    BadAnswer {
        /// The API path.
        path: String,
        /// What was wrong (no body content).
        detail: String,
    },
}

/// Why the HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("cannot use {what} {path}: {detail}")]
    Pem {
        /// Which option.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// rustls refused the configuration.
    #[error("cannot set up TLS to Vault: {0}")]
    Config(String),
    /// One of client cert and key without the other.
    #[error("--vault-client-cert and --vault-client-key go together: give both or neither")]
    HalfClientIdentity,
    /// The address is not http(s)://host[:port].
    #[error("--vault-addr {0:?} is not an http:// or https:// URL without a path (e.g. https://vault.example:8200)")]
    Address(String),
}

/// TLS options.
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// PEM CA bundle to trust instead of the system's roots.
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate chain (TLS client auth, cert login).
    pub client_cert: Option<PathBuf>,
    /// PEM private key of the client certificate.
    pub client_key: Option<PathBuf>,
}

/// The one HTTP client of a backend (cheap to clone: shared pool).
#[derive(Clone)]
pub struct VaultHttp {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    base: Arc<str>,
    namespace: Option<HeaderValue>,
}

impl std::fmt::Debug for VaultHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultHttp")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

fn pem_error(what: &'static str, path: &Path, detail: impl ToString) -> TlsError {
    TlsError::Pem {
        what,
        path: path.to_path_buf(),
        detail: detail.to_string(),
    }
}

fn tls_config(options: &TlsOptions) -> Result<rustls::ClientConfig, TlsError> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    match &options.ca_cert {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|error| pem_error("--vault-cacert", path, error))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|error| pem_error("--vault-cacert", path, error))?;
            if certs.is_empty() {
                return Err(pem_error("--vault-cacert", path, "no CERTIFICATE in it"));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|error| pem_error("--vault-cacert", path, error))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // A system root rustls cannot parse is skipped, as curl does.
                let _ = roots.add(cert);
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsError::Config(error.to_string()))?
        .with_root_certificates(roots);
    let config = match (&options.client_cert, &options.client_key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert_path), Some(key_path)) => {
            let chain = CertificateDer::pem_file_iter(cert_path)
                .map_err(|error| pem_error("--vault-client-cert", cert_path, error))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|error| pem_error("--vault-client-cert", cert_path, error))?;
            if chain.is_empty() {
                return Err(pem_error(
                    "--vault-client-cert",
                    cert_path,
                    "no CERTIFICATE in it",
                ));
            }
            // The error of a key file never quotes its content.
            let key = PrivateKeyDer::from_pem_file(key_path).map_err(|_| {
                pem_error(
                    "--vault-client-key",
                    key_path,
                    "no readable PEM private key (PKCS#8, PKCS#1 or SEC1) in it",
                )
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|error| TlsError::Config(error.to_string()))?
        }
        _ => return Err(TlsError::HalfClientIdentity),
    };
    // hyper-rustls sets ALPN (http/1.1) itself.
    Ok(config)
}

/// Checks `addr` is `http(s)://authority` (a trailing `/` is dropped).
fn base_url(addr: &str) -> Result<String, TlsError> {
    let trimmed = addr.trim_end_matches('/');
    let uri: hyper::Uri = trimmed
        .parse()
        .map_err(|_| TlsError::Address(addr.to_owned()))?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    let path_ok = matches!(uri.path(), "" | "/") && uri.query().is_none();
    if !scheme_ok || uri.authority().is_none() || !path_ok {
        return Err(TlsError::Address(addr.to_owned()));
    }
    Ok(trimmed.to_owned())
}

impl VaultHttp {
    /// Builds the client for `addr` (`https://host:8200`).
    pub fn new(
        addr: &str,
        namespace: Option<&str>,
        tls: &TlsOptions,
        connect_timeout: Duration,
    ) -> Result<Self, TlsError> {
        let base = base_url(addr)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(30)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(tls)?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .build(connector);
        let namespace = match namespace.filter(|n| !n.is_empty()) {
            Some(name) => Some(HeaderValue::from_str(name).map_err(|_| {
                TlsError::Config(format!(
                    "--vault-namespace {name:?} is not a valid header value"
                ))
            })?),
            None => None,
        };
        Ok(Self {
            client,
            base: Arc::from(base),
            namespace,
        })
    }

    /// The address requests go to.
    pub fn address(&self) -> &str {
        &self.base
    }

    /// Sends `body` (JSON, or nothing for a GET) to `/v1/{path}` with
    /// `token`, until `deadline`, retrying what may pass. Returns the JSON
    /// answer (`{}` for 204) in a zeroizing buffer.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&HeaderValue>,
        body: Option<&[u8]>,
        deadline: Instant,
    ) -> Result<Zeroizing<Vec<u8>>, HttpError> {
        let mut backoff = FIRST_BACKOFF;
        let url = format!("{}/v1/{path}", self.base);
        loop {
            let attempt = self.attempt(&method, &url, path, token, body);
            let left = deadline.saturating_duration_since(Instant::now());
            let outcome = match tokio::time::timeout(left, attempt).await {
                Ok(outcome) => outcome,
                Err(_) => Err(Retry("no answer within the call timeout".to_owned())),
            };
            match outcome {
                Ok(answer) => return answer,
                Err(Retry(detail)) => {
                    let now = Instant::now();
                    if now + backoff >= deadline {
                        return Err(HttpError::Unavailable {
                            path: path.to_owned(),
                            detail,
                        });
                    }
                    tracing::debug!(path, %detail, "Vault request failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// One try: `Ok(answer)` is final, `Err(Retry)` may be retried.
    async fn attempt(
        &self,
        method: &Method,
        url: &str,
        path: &str,
        token: Option<&HeaderValue>,
        body: Option<&[u8]>,
    ) -> Result<Result<Zeroizing<Vec<u8>>, HttpError>, Retry> {
        let mut builder = Request::builder().method(method.clone()).uri(url);
        if let Some(token) = token {
            builder = builder.header("X-Vault-Token", token.clone());
        }
        if let Some(namespace) = &self.namespace {
            builder = builder.header("X-Vault-Namespace", namespace.clone());
        }
        // Vault treats a request carrying this header as an API call (no UI redirect).
        builder = builder.header("X-Vault-Request", "true");
        let payload = match body {
            Some(bytes) => {
                builder = builder.header(CONTENT_TYPE, "application/json");
                Bytes::copy_from_slice(bytes)
            }
            None => Bytes::new(),
        };
        let request = builder
            .body(Full::new(payload))
            .map_err(|error| Retry(format!("cannot build the request: {error}")))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|error| Retry(connection_detail(&error)))?;
        let status = response.status();
        let collected = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|error| Retry(format!("reading the answer failed: {error}")))?;
        let body = Zeroizing::new(collected.to_bytes().to_vec());
        if status.is_success() {
            if status == StatusCode::NO_CONTENT || body.is_empty() {
                return Ok(Ok(Zeroizing::new(b"{}".to_vec())));
            }
            return Ok(Ok(body));
        }
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            return Err(Retry(format!("HTTP {status}: {}", vault_errors(&body))));
        }
        if status == StatusCode::FORBIDDEN {
            return Ok(Err(HttpError::PermissionDenied {
                path: path.to_owned(),
            }));
        }
        Ok(Err(HttpError::Refused {
            path: path.to_owned(),
            status: status.as_u16(),
            errors: vault_errors(&body),
        }))
    }
}

/// A failure worth another try.
struct Retry(String);

/// The chain of causes of a client error (e.g. "connection refused").
fn connection_detail(error: &hyper_util::client::legacy::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Vault's `{"errors": [...]}`, joined and bounded; never other body content.
pub(crate) fn vault_errors(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        #[serde(default)]
        errors: Vec<String>,
    }
    match serde_json::from_slice::<Errors>(body) {
        Ok(parsed) if !parsed.errors.is_empty() => {
            let mut text = parsed.errors.join("; ");
            if text.len() > 300 {
                let mut cut = 300;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
                text.push('…');
            }
            text
        }
        _ => "no error message".to_owned(),
    }
}

#[cfg(test)]
mod tests;
