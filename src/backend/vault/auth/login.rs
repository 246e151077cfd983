//! Getting a token: the secret files (a token file, AppRole's role and
//! secret ids) read as one-line secrets and stamped to notice changes, and
//! the login or `lookup-self` call that turns them into a [`super::Session`].
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use hyper::Method;
use zeroize::Zeroizing;

use super::super::http::{HttpError, VaultHttp};
use super::{lifetimes, AuthError, AuthMethod, Session, VaultToken, MAX_SECRET_FILE};

/// What identifies a version of a file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct FileStamp {
    pub(super) modified: Option<SystemTime>,
    pub(super) len: u64,
    pub(super) inode: u64,
}

pub(super) fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt as _;
    let metadata = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        modified: metadata.modified().ok(),
        len: metadata.len(),
        inode: metadata.ino(),
    })
}

/// Reads a one-line secret file (trailing whitespace dropped).
pub(super) fn read_secret(what: &'static str, path: &Path) -> Result<Zeroizing<String>, AuthError> {
    use std::io::Read as _;
    let error = |detail: String| AuthError::File {
        what,
        path: path.to_path_buf(),
        detail,
    };
    let file = std::fs::File::open(path).map_err(|e| error(e.to_string()))?;
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(MAX_SECRET_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| error(e.to_string()))?;
    if bytes.len() as u64 > MAX_SECRET_FILE {
        return Err(error(format!("larger than {MAX_SECRET_FILE} bytes")));
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| error("not UTF-8 text".to_owned()))?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(error("empty".to_owned()));
    }
    if trimmed.bytes().any(|b| b.is_ascii_control()) {
        return Err(error(
            "holds control characters (one line expected)".to_owned(),
        ));
    }
    Ok(Zeroizing::new(trimmed.to_owned()))
}

/// The `auth` section of a login or renewal answer.
#[derive(serde::Deserialize)]
pub(super) struct AuthAnswer {
    pub(super) auth: AuthSection,
}

#[derive(serde::Deserialize)]
pub(super) struct AuthSection {
    pub(super) client_token: Zeroizing<String>,
    #[serde(default)]
    pub(super) lease_duration: u64,
    #[serde(default)]
    pub(super) renewable: bool,
}

/// The part of `lookup-self` kube-kms reads (never `id`, the token).
#[derive(serde::Deserialize)]
pub(super) struct LookupAnswer {
    pub(super) data: LookupData,
}

#[derive(serde::Deserialize)]
pub(super) struct LookupData {
    #[serde(default)]
    pub(super) ttl: u64,
    #[serde(default)]
    pub(super) renewable: bool,
}

/// Gets a token by `method`: a login, or the token file plus a lookup.
pub(super) async fn acquire(
    method: &AuthMethod,
    http: &VaultHttp,
    call_timeout: Duration,
    generation: u64,
) -> Result<Session, AuthError> {
    let deadline = Instant::now() + call_timeout;
    let vault = |step, source| AuthError::Vault {
        method: method.kind(),
        step,
        source,
    };
    let (path, body, stamp) = match method {
        AuthMethod::TokenFile(path) => {
            let before = stamp(path);
            let token = VaultToken(read_secret("--vault-token-file", path)?);
            let header = token.header().ok_or_else(|| AuthError::File {
                what: "--vault-token-file",
                path: path.clone(),
                detail: "the token holds characters a header cannot carry".into(),
            })?;
            let body = http
                .request(
                    Method::GET,
                    "auth/token/lookup-self",
                    Some(&header),
                    None,
                    deadline,
                )
                .await
                .map_err(|source| vault("lookup-self", source))?;
            let lookup: LookupAnswer = serde_json::from_slice(&body).map_err(|_| {
                vault(
                    "lookup-self",
                    HttpError::BadAnswer {
                        path: "auth/token/lookup-self".into(),
                        detail: "no data.ttl".into(),
                    },
                )
            })?;
            let (renew_at, expires_at) = lifetimes(lookup.data.ttl, Instant::now());
            return Ok(Session {
                token,
                header: Some(header),
                generation,
                renew_at,
                expires_at,
                renewable: lookup.data.renewable,
                granted: lookup.data.ttl,
                stamp: before,
            });
        }
        AuthMethod::AppRole {
            mount,
            role_id_file,
            secret_id_file,
        } => {
            let role_id = read_secret("--vault-role-id-file", role_id_file)?;
            let secret_id = read_secret("--vault-secret-id-file", secret_id_file)?;
            let body = Zeroizing::new(
                serde_json::to_vec(&serde_json::json!({
                    "role_id": role_id.as_str(),
                    "secret_id": secret_id.as_str(),
                }))
                .unwrap_or_default(),
            );
            (format!("auth/{mount}/login"), body, None)
        }
        AuthMethod::Cert { mount, role } => {
            let body = match role {
                Some(name) => serde_json::to_vec(&serde_json::json!({ "name": name })),
                None => serde_json::to_vec(&serde_json::json!({})),
            };
            (
                format!("auth/{mount}/login"),
                Zeroizing::new(body.unwrap_or_default()),
                None,
            )
        }
    };
    let answer = http
        .request(Method::POST, &path, None, Some(&body), deadline)
        .await
        .map_err(|source| vault("login", source))?;
    let parsed: AuthAnswer = serde_json::from_slice(&answer).map_err(|_| {
        vault(
            "login",
            HttpError::BadAnswer {
                path: path.clone(),
                detail: "no auth.client_token".into(),
            },
        )
    })?;
    let token = VaultToken(parsed.auth.client_token);
    let header = token.header();
    let (renew_at, expires_at) = lifetimes(parsed.auth.lease_duration, Instant::now());
    Ok(Session {
        token,
        header,
        generation,
        renew_at,
        expires_at,
        renewable: parsed.auth.renewable,
        granted: parsed.auth.lease_duration,
        stamp,
    })
}
