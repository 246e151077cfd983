//! How the Vault backend gets and keeps a token, with no help from
//! kube-apiserver (the plugin starts before it): a token file written by an
//! agent or an operator (`--vault-token-file`, re-read when it changes),
//! AppRole (`--vault-role-id-file` + `--vault-secret-id-file`) or TLS
//! certificate login (the client certificate of `--vault-client-cert`).
//!
//! A token with a TTL is renewed (`auth/token/renew-self`) when two thirds of
//! it have passed; when renewal fails, comes back shorter than granted (the
//! max TTL is near) or the token is not renewable, AppRole and cert log in
//! again before it expires. A token file that changed to a token Vault
//! refuses is reported once and not tried again until it changes. A call that Vault answers with 403 asks
//! [`Auth::recover`] once: AppRole and cert log in again, a token file is
//! re-read (and the call retried only if the file changed).
//!
//! Secrets: the token, the role id and the secret id live only in
//! [`Zeroizing`] strings whose `Debug` prints nothing; no error and no log
//! line carries them (Vault's error text is passed on, never a body).
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hyper::header::HeaderValue;
use hyper::Method;
use zeroize::Zeroizing;

use super::http::{HttpError, VaultHttp};

mod login;

use login::{acquire, stamp, AuthAnswer, FileStamp};

/// Largest token, role id or secret id file read.
const MAX_SECRET_FILE: u64 = 16 * 1024;

/// How the backend authenticates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    /// A file holding a token (e.g. written by Vault Agent).
    TokenFile(PathBuf),
    /// AppRole login at `auth/{mount}/login`.
    AppRole {
        /// The auth mount (default `approle`).
        mount: String,
        /// File holding the role id.
        role_id_file: PathBuf,
        /// File holding the secret id.
        secret_id_file: PathBuf,
    },
    /// TLS certificate login at `auth/{mount}/login` with the client
    /// certificate of the HTTP client.
    Cert {
        /// The auth mount (default `cert`).
        mount: String,
        /// The cert role to log in as (`name`); `None`: any matching role.
        role: Option<String>,
    },
}

impl AuthMethod {
    /// A short name for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            AuthMethod::TokenFile(_) => "token file",
            AuthMethod::AppRole { .. } => "AppRole",
            AuthMethod::Cert { .. } => "TLS certificate",
        }
    }
}

/// Why authentication failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// A credential file could not be used.
    #[error("cannot use {what} {path}: {detail}")]
    File {
        /// Which option.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What was wrong (never the content).
        detail: String,
    },
    /// Vault refused or failed the login, renewal or lookup.
    #[error("Vault {method} {step} failed: {source}")]
    Vault {
        /// The auth method.
        method: &'static str,
        /// login, renew-self or lookup-self.
        step: &'static str,
        /// What went wrong.
        source: HttpError,
    },
}

/// A Vault token. `Debug` prints nothing of it.
#[derive(Clone)]
pub struct VaultToken(Zeroizing<String>);

impl std::fmt::Debug for VaultToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VaultToken(..)")
    }
}

impl VaultToken {
    /// The header carrying it (marked sensitive: hyper keeps it out of its
    /// debug output and HPACK tables).
    fn header(&self) -> Option<HeaderValue> {
        let mut value = HeaderValue::from_str(&self.0).ok()?;
        value.set_sensitive(true);
        Some(value)
    }
}

/// The token in use and what is known of its lifetime.
pub struct Session {
    token: VaultToken,
    header: Option<HeaderValue>,
    /// Incremented on every new token: a caller that saw a 403 with
    /// generation N only re-logs in if the session is still N.
    pub generation: u64,
    /// When to renew (or log in again); `None`: the token does not expire.
    renew_at: Option<Instant>,
    /// When the token expires; `None`: never.
    expires_at: Option<Instant>,
    renewable: bool,
    /// The TTL (seconds) the token was granted: a renewal that returns
    /// less has met the token's max TTL.
    granted: u64,
    /// The token file's identity when read.
    stamp: Option<FileStamp>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("token", &self.token)
            .field("generation", &self.generation)
            .field("renewable", &self.renewable)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// The `X-Vault-Token` header, if the token is a valid header value.
    pub fn header(&self) -> Option<&HeaderValue> {
        self.header.as_ref()
    }
}

/// Pause after an upkeep round that could not renew nor log in (Vault
/// away): bounds the retries and their log lines.
const FAILED_UPKEEP_PAUSE: Duration = Duration::from_secs(5);

/// The token holder of one backend.
pub struct Auth {
    method: AuthMethod,
    http: VaultHttp,
    session: ArcSwap<Session>,
    /// Serializes logins and renewals.
    changing: tokio::sync::Mutex<()>,
    call_timeout: Duration,
    /// The token file's identity when its token was last refused: not
    /// tried (nor reported) again until the file changes once more.
    refused_file: std::sync::Mutex<Option<Option<FileStamp>>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("method", &self.method.kind())
            .field("generation", &self.session.load().generation)
            .finish_non_exhaustive()
    }
}

/// When to renew a token of `ttl`: after two thirds of it.
fn lifetimes(ttl: u64, now: Instant) -> (Option<Instant>, Option<Instant>) {
    if ttl == 0 {
        return (None, None);
    }
    let ttl = Duration::from_secs(ttl);
    (Some(now + ttl.mul_f64(2.0 / 3.0)), Some(now + ttl))
}

impl Auth {
    /// Gets a first token (logs in, or reads the token file and looks it up).
    pub async fn start(
        method: AuthMethod,
        http: VaultHttp,
        call_timeout: Duration,
    ) -> Result<Self, AuthError> {
        let session = acquire(&method, &http, call_timeout, 1).await?;
        Ok(Self {
            method,
            http,
            session: ArcSwap::from_pointee(session),
            changing: tokio::sync::Mutex::new(()),
            call_timeout,
            refused_file: std::sync::Mutex::new(None),
        })
    }

    /// The method in use.
    pub fn method(&self) -> &AuthMethod {
        &self.method
    }

    /// The current session (token and generation).
    pub fn session(&self) -> Arc<Session> {
        self.session.load_full()
    }

    /// After a 403 with the token of `generation`: gets another token if
    /// that can help. True if the call is worth repeating.
    pub async fn recover(&self, generation: u64) -> bool {
        let _guard = self.changing.lock().await;
        let current = self.session.load_full();
        if current.generation != generation {
            return true;
        }
        let mut file_stamp = None;
        if let AuthMethod::TokenFile(path) = &self.method {
            let now = stamp(path);
            if now == current.stamp || self.already_refused(now) {
                return false;
            }
            file_stamp = Some(now);
        }
        match acquire(&self.method, &self.http, self.call_timeout, generation + 1).await {
            Ok(session) => {
                tracing::info!(
                    method = self.method.kind(),
                    "Vault denied the token; got a new one"
                );
                self.session.store(Arc::new(session));
                true
            }
            Err(error) => {
                tracing::warn!(%error, "Vault denied the token and getting a new one failed");
                if file_stamp.is_some() {
                    self.set_refused(file_stamp);
                }
                false
            }
        }
    }

    /// One round of upkeep: re-reads a changed token file, renews a token
    /// past two thirds of its TTL, logs in again when renewal is not
    /// possible. Returns how long to wait before the next round.
    pub async fn maintain(&self) -> Duration {
        let _guard = self.changing.lock().await;
        let current = self.session.load_full();
        let now = Instant::now();
        let next_generation = current.generation + 1;
        if let AuthMethod::TokenFile(path) = &self.method {
            let now_stamp = stamp(path);
            // A file whose token was refused is not tried again until it
            // changes; meanwhile the current token is still renewed below.
            if now_stamp != current.stamp && !self.already_refused(now_stamp) {
                match acquire(&self.method, &self.http, self.call_timeout, next_generation).await {
                    Ok(session) => {
                        tracing::info!(file = %path.display(), "the Vault token file changed; using the new token");
                        self.session.store(Arc::new(session));
                        self.set_refused(None);
                        return Duration::from_secs(1);
                    }
                    Err(error) => {
                        tracing::warn!(%error, "the Vault token file changed but its token cannot be used; keeping the previous one");
                        self.set_refused(Some(now_stamp));
                    }
                }
            }
        }
        let Some(renew_at) = current.renew_at else {
            return Duration::from_secs(1);
        };
        if now < renew_at {
            return (renew_at - now).min(Duration::from_secs(1));
        }
        if current.renewable {
            match self.renew(&current).await {
                Ok(session) => {
                    tracing::debug!("renewed the Vault token");
                    self.session.store(Arc::new(session));
                    return Duration::from_secs(1);
                }
                Err(error) => tracing::warn!(%error, "renewing the Vault token failed"),
            }
        }
        if matches!(self.method, AuthMethod::TokenFile(_)) {
            if current
                .expires_at
                .is_some_and(|at| at <= now + Duration::from_secs(60))
            {
                tracing::warn!("the Vault token from the token file expires within a minute and cannot be renewed: write a new token into the file");
            }
            // Past the renewal point with nothing renewed: ask again (and
            // warn) every few seconds, not every second; a changed file
            // or a 403 is still acted on at once through `recover`.
            return FAILED_UPKEEP_PAUSE;
        }
        match acquire(&self.method, &self.http, self.call_timeout, next_generation).await {
            Ok(session) => {
                tracing::info!(
                    method = self.method.kind(),
                    "logged in to Vault again before the token expires"
                );
                self.session.store(Arc::new(session));
            }
            Err(error) => {
                tracing::warn!(%error, "logging in to Vault again failed; will retry");
                return FAILED_UPKEEP_PAUSE;
            }
        }
        Duration::from_secs(1)
    }

    fn already_refused(&self, now: Option<FileStamp>) -> bool {
        *self
            .refused_file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            == Some(now)
    }

    fn set_refused(&self, refused: Option<Option<FileStamp>>) {
        *self
            .refused_file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = refused;
    }

    async fn renew(&self, current: &Session) -> Result<Session, AuthError> {
        let vault = |source| AuthError::Vault {
            method: self.method.kind(),
            step: "renew-self",
            source,
        };
        let body = self
            .http
            .request(
                Method::POST,
                "auth/token/renew-self",
                current.header(),
                Some(b"{}"),
                Instant::now() + self.call_timeout,
            )
            .await
            .map_err(vault)?;
        let answer: AuthAnswer = serde_json::from_slice(&body).map_err(|_| {
            vault(HttpError::BadAnswer {
                path: "auth/token/renew-self".into(),
                detail: "no auth section".into(),
            })
        })?;
        let lease = answer.auth.lease_duration;
        let (renew_at, expires_at) = lifetimes(lease, Instant::now());
        // Shorter than granted: the max TTL is near and renewing again
        // cannot help; the next round logs in again (AppRole, cert) at 2/3
        // of what is left, before the token expires.
        let capped = lease < current.granted;
        if capped {
            tracing::info!(
                method = self.method.kind(),
                seconds_left = lease,
                "the Vault token reaches its max TTL; a new one comes before it expires"
            );
        }
        Ok(Session {
            token: current.token.clone(),
            header: current.header.clone(),
            generation: current.generation,
            renew_at,
            expires_at,
            renewable: answer.auth.renewable && !capped,
            granted: current.granted,
            stamp: current.stamp,
        })
    }
}

#[cfg(test)]
mod tests;
