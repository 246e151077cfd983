//! The connection to etcd: endpoints, TLS (CA bundle, client certificate),
//! user/password authentication, keep-alive, and the deadline of every
//! request (a dead or hung etcd fails within seconds).
use std::path::Path;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, ConnectOptions, Identity, KvClient, TlsOptions, WatchClient,
};

use super::emit::prefix_range;
use super::error::{classify, LiveError};
use super::{LiveSource, DEFAULT_PAGE_SIZE, MAX_RESPONSE_BYTES, MAX_WATCH_MESSAGE_BYTES};
use crate::secret::SecretBytes;

/// TCP connect deadline for each endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Deadline of the first request (and of authentication): a dead endpoint
/// fails within it.
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of every later request, and the longest silence tolerated on the
/// history watch while etcd still owes events.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// HTTP/2 keep-alive: a connection that stops answering pings is dropped.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// A connected client and the range being scanned.
pub(super) struct Session {
    pub(super) kv: KvClient,
    pub(super) watch: WatchClient,
    pub(super) endpoints: String,
    pub(super) start: Vec<u8>,
    pub(super) end: Vec<u8>,
    pub(super) page_limit: i64,
}

impl Session {
    pub(super) async fn connect(source: &LiveSource) -> Result<Self, LiveError> {
        let endpoints = split_endpoints(&source.endpoints)?;
        let tls = tls_options(source)?;
        let any_https = endpoints.iter().any(|url| url.starts_with("https://"));
        if any_https && tls.is_none() {
            return Err(LiveError::Config(
                "an https:// endpoint needs --cacert (the CA that signed etcd's server certificate)"
                    .to_owned(),
            ));
        }
        if tls.is_some() {
            if let Some(url) = endpoints.iter().find(|url| url.starts_with("http://")) {
                return Err(LiveError::Config(format!(
                    "{url} is plain http but TLS files (--cacert/--cert/--key) were given; use https://"
                )));
            }
        }
        let mut options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_keep_alive(KEEP_ALIVE_INTERVAL, KEEP_ALIVE_TIMEOUT)
            .with_keep_alive_while_idle(true);
        if let Some(tls) = tls {
            options = options.with_tls(tls);
        }
        match (&source.user, &source.password) {
            (Some(user), Some(password)) => {
                let password = std::str::from_utf8(password.expose_secret())
                    .map_err(|_| LiveError::Config("the etcd password is not UTF-8".to_owned()))?;
                options = options
                    .with_user(user.clone(), password.to_owned())
                    .with_auto_token_refresh(true);
            }
            (Some(_), None) => {
                return Err(LiveError::Config(
                    "--user needs --password (etcd user authentication)".to_owned(),
                ))
            }
            (None, Some(_)) => return Err(LiveError::Config("--password needs --user".to_owned())),
            (None, None) => {}
        }
        let joined = endpoints.join(",");
        // With a user, connect authenticates: it is the first request.
        let client = match tokio::time::timeout(
            FIRST_REQUEST_TIMEOUT,
            Client::connect(&endpoints, Some(options)),
        )
        .await
        {
            Ok(Ok(client)) => client,
            Ok(Err(error)) => {
                return Err(classify(
                    error,
                    &joined,
                    "authentication",
                    Phase::Connecting,
                ))
            }
            Err(_) => {
                return Err(LiveError::Unreachable {
                    endpoints: joined,
                    detail: format!(
                        "no answer to authentication within {}s",
                        FIRST_REQUEST_TIMEOUT.as_secs()
                    ),
                })
            }
        };
        let (start, end) = prefix_range(&source.prefix);
        let page_limit = if source.page_size > 0 {
            source.page_size
        } else {
            DEFAULT_PAGE_SIZE
        };
        Ok(Self {
            kv: client
                .kv_client()
                .max_decoding_message_size(MAX_RESPONSE_BYTES),
            watch: client
                .watch_client()
                .max_decoding_message_size(MAX_WATCH_MESSAGE_BYTES),
            endpoints: joined,
            start,
            end,
            page_limit,
        })
    }

    pub(super) fn missing_header(&self, what: &str) -> LiveError {
        LiveError::Request {
            endpoints: self.endpoints.clone(),
            what: what.to_owned(),
            detail: "the response has no header (no revision)".to_owned(),
        }
    }
}

/// Runs `request` under the phase's deadline.
pub(super) async fn deadline<T>(
    endpoints: &str,
    phase: Phase,
    what: &str,
    request: impl std::future::Future<Output = T>,
) -> Result<T, LiveError> {
    let limit = match phase {
        Phase::Connecting => FIRST_REQUEST_TIMEOUT,
        Phase::Scanning => REQUEST_TIMEOUT,
    };
    tokio::time::timeout(limit, request)
        .await
        .map_err(|_| match phase {
            Phase::Connecting => LiveError::Unreachable {
                endpoints: endpoints.to_owned(),
                detail: format!("no answer to {what} within {}s", limit.as_secs()),
            },
            Phase::Scanning => LiveError::Timeout {
                endpoints: endpoints.to_owned(),
                what: what.to_owned(),
                seconds: limit.as_secs(),
            },
        })
}

/// Whether the scan had read anything yet: decides between "cannot reach"
/// and "lost the connection".
#[derive(Debug, Clone, Copy)]
pub(super) enum Phase {
    Connecting,
    Scanning,
}

pub(super) fn split_endpoints(endpoints: &[String]) -> Result<Vec<String>, LiveError> {
    let split: Vec<String> = endpoints
        .iter()
        .flat_map(|element| element.split(','))
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::to_owned)
        .collect();
    if split.is_empty() {
        return Err(LiveError::Config(
            "no etcd endpoint given; pass --endpoints URL[,URL...]".to_owned(),
        ));
    }
    Ok(split)
}

pub(super) fn tls_options(source: &LiveSource) -> Result<Option<TlsOptions>, LiveError> {
    if source.cacert.is_none() && source.cert.is_none() && source.key.is_none() {
        return Ok(None);
    }
    let mut tls = TlsOptions::new();
    if let Some(path) = &source.cacert {
        tls = tls.ca_certificate(Certificate::from_pem(read_tls_file("CA file", path)?));
    }
    match (&source.cert, &source.key) {
        (Some(cert), Some(key)) => {
            let cert = read_tls_file("client certificate", cert)?;
            let key = SecretBytes::new(read_tls_file("client key", key)?);
            tls = tls.identity(Identity::from_pem(cert, key.expose_secret()));
        }
        (Some(_), None) => {
            return Err(LiveError::Config(
                "--cert needs --key (the client certificate's private key)".to_owned(),
            ))
        }
        (None, Some(_)) => {
            return Err(LiveError::Config(
                "--key needs --cert (the client certificate)".to_owned(),
            ))
        }
        (None, None) => {}
    }
    Ok(Some(tls))
}

pub(super) fn read_tls_file(what: &'static str, path: &Path) -> Result<Vec<u8>, LiveError> {
    std::fs::read(path).map_err(|source| LiveError::ReadTlsFile {
        what,
        path: path.to_owned(),
        source,
    })
}
