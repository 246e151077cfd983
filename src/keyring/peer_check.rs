//! Agreement between plugin instances: does every running kube-kms (one per
//! control-plane node) hold every key version that matters?
//!
//! Only the standard KMS v2 API is used, so any peer that kube-apiserver can
//! talk to can be checked, and nothing but public key_ids crosses the socket:
//!
//! - for each version the local keyring holds as primary or enabled, a random
//!   32-byte canary is wrapped locally ([`crate::wrap`]) and every peer is asked
//!   to Decrypt it. Success (with the same canary back) proves the peer holds
//!   the same material under that key_id (the key_id is bound into the wrapped
//!   seed);
//! - each peer's Status gives its primary key_id. A peer primary the local
//!   keyring cannot use is checked by asking that peer to Encrypt a canary and
//!   every peer to Decrypt it, and is reported as missing locally.
//!
//! The check agrees when every checked version decrypts at every peer and every
//! peer's primary is usable locally: then any of them may be (or stay) primary
//! anywhere without making data unreadable through another node.
use std::time::Duration;

use crate::client::{ClientError, KmsClient};
use crate::keyring::{KeyState, Keyring};
use crate::secret::{Key256, SecretBytes};

/// The per-call (and per-connect) time limit used by the CLI.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether one peer holds one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holding {
    /// The peer decrypted the canary.
    Ok,
    /// The peer answered, and cannot decrypt under this key_id (why).
    Missing(String),
    /// The peer could not be asked (unreachable, timed out, internal error).
    Error(String),
}

impl Holding {
    /// `ok`, `missing` or `error`.
    pub fn word(&self) -> &'static str {
        match self {
            Holding::Ok => "ok",
            Holding::Missing(_) => "missing",
            Holding::Error(_) => "error",
        }
    }
}

/// What a peer's Status said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// The address as given (`unix:///...`).
    pub address: String,
    /// Its primary key_id, or why Status failed.
    pub primary: Result<String, String>,
    /// Its healthz string (`ok` when healthy).
    pub healthz: String,
}

/// One version and whether each peer holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionCheck {
    /// The key_id checked.
    pub key_id: String,
    /// Its state in the local keyring (`None`: the local keyring lacks it or
    /// cannot use it).
    pub local_state: Option<KeyState>,
    /// True when some peer or the local keyring uses it as primary.
    pub primary_somewhere: bool,
    /// One entry per peer, in the order given.
    pub peers: Vec<Holding>,
}

/// The outcome of [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// Each peer's Status, in the order given.
    pub peers: Vec<PeerStatus>,
    /// The versions checked, ordered by key_id.
    pub versions: Vec<VersionCheck>,
}

/// The overall answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every peer holds every checked version, and every primary is held locally.
    Agree,
    /// Some peer (or the local keyring) lacks a version.
    Disagree,
    /// Some peer could not be asked: the answer is unknown.
    Error,
}

impl CheckReport {
    /// The overall answer: [`Verdict::Error`] if any peer could not be asked,
    /// else [`Verdict::Disagree`] if anything is missing anywhere.
    pub fn verdict(&self) -> Verdict {
        let errors = self.peers.iter().any(|p| p.primary.is_err())
            || self
                .versions
                .iter()
                .flat_map(|v| &v.peers)
                .any(|h| matches!(h, Holding::Error(_)));
        if errors {
            return Verdict::Error;
        }
        let missing = self.versions.iter().any(|v| {
            v.local_state.is_none() || v.peers.iter().any(|h| matches!(h, Holding::Missing(_)))
        });
        if missing {
            Verdict::Disagree
        } else {
            Verdict::Agree
        }
    }
}

fn canary() -> Result<SecretBytes, String> {
    let mut bytes = vec![0u8; 32];
    getrandom::getrandom(&mut bytes)
        .map_err(|error| format!("the random number generator failed: {error}"))?;
    Ok(SecretBytes::new(bytes))
}

async fn connect(address: &str, timeout: Duration) -> Result<KmsClient, String> {
    match tokio::time::timeout(timeout, KmsClient::connect(address)).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(error)) => Err(describe_client_error(&error)),
        Err(_) => Err(format!("no connection within {timeout:?}")),
    }
}

fn describe_client_error(error: &ClientError) -> String {
    match error {
        ClientError::Connect { address, source } => {
            let mut text = format!("cannot connect to {address}: {source}");
            let mut cause = std::error::Error::source(source);
            while let Some(inner) = cause {
                text.push_str(&format!(": {inner}"));
                cause = inner.source();
            }
            text
        }
        ClientError::Rpc(status) => format!("{:?}: {}", status.code(), status.message()),
    }
}

/// Asks one peer to Decrypt `wrapped` under `key_id` and compares the result with `expected`.
async fn ask_decrypt(
    client: &mut KmsClient,
    wrapped: &[u8],
    key_id: &str,
    expected: &SecretBytes,
    timeout: Duration,
) -> Holding {
    let annotations = Default::default();
    let call = client.decrypt(wrapped, key_id, &annotations, "kube-kms-key-check");
    match tokio::time::timeout(timeout, call).await {
        Err(_) => Holding::Error(format!("Decrypt did not answer within {timeout:?}")),
        Ok(Ok(plaintext)) => {
            if bool::from(subtle::ConstantTimeEq::ct_eq(
                plaintext.expose_secret(),
                expected.expose_secret(),
            )) {
                Holding::Ok
            } else {
                Holding::Missing("Decrypt returned other bytes than the canary".into())
            }
        }
        Ok(Err(ClientError::Rpc(status))) => match status.code() {
            tonic::Code::NotFound => Holding::Missing("unknown key_id".into()),
            tonic::Code::FailedPrecondition => Holding::Missing("key_id is disabled".into()),
            tonic::Code::InvalidArgument => Holding::Missing(
                "decryption failed (it holds other material under this key_id?)".into(),
            ),
            code => Holding::Error(format!("Decrypt failed: {code:?}: {}", status.message())),
        },
        Ok(Err(other)) => Holding::Error(describe_client_error(&other)),
    }
}

/// One connection per peer (or why there is none).
struct Peer {
    address: String,
    client: Result<KmsClient, String>,
}

async fn connect_all(addresses: &[String], timeout: Duration) -> Vec<Peer> {
    let mut peers = Vec::with_capacity(addresses.len());
    for address in addresses {
        peers.push(Peer {
            address: address.clone(),
            client: connect(address, timeout).await,
        });
    }
    peers
}

async fn decrypt_everywhere(
    peers: &mut [Peer],
    wrapped: &[u8],
    key_id: &str,
    expected: &SecretBytes,
    timeout: Duration,
) -> Vec<Holding> {
    let mut holdings = Vec::with_capacity(peers.len());
    for peer in peers.iter_mut() {
        holdings.push(match &mut peer.client {
            Ok(client) => ask_decrypt(client, wrapped, key_id, expected, timeout).await,
            Err(reason) => Holding::Error(reason.clone()),
        });
    }
    holdings
}

/// Asks every peer whether it can decrypt under `kek`/`key_id` (used by
/// `key promote --peer`). One entry per address, in order.
pub async fn check_version(
    kek: &Key256,
    key_id: &str,
    addresses: &[String],
    timeout: Duration,
) -> Vec<(String, Holding)> {
    let mut peers = connect_all(addresses, timeout).await;
    let holdings = match local_canary(kek, key_id) {
        Ok((expected, wrapped)) => {
            decrypt_everywhere(&mut peers, &wrapped, key_id, &expected, timeout).await
        }
        Err(reason) => peers
            .iter()
            .map(|_| Holding::Error(reason.clone()))
            .collect(),
    };
    addresses.iter().cloned().zip(holdings).collect()
}

fn local_canary(kek: &Key256, key_id: &str) -> Result<(SecretBytes, Vec<u8>), String> {
    let expected = canary()?;
    let wrapped = crate::wrap::wrap(kek, key_id, expected.expose_secret())
        .map_err(|error| format!("cannot wrap a canary: {error}"))?;
    Ok((expected, wrapped))
}

/// Checks every local primary/enabled version and every peer's primary at every peer.
pub async fn check(keyring: &Keyring, addresses: &[String], timeout: Duration) -> CheckReport {
    let mut peers = connect_all(addresses, timeout).await;
    let mut statuses = Vec::with_capacity(peers.len());
    for peer in peers.iter_mut() {
        let (primary, healthz) = match &mut peer.client {
            Err(reason) => (Err(reason.clone()), String::new()),
            Ok(client) => match tokio::time::timeout(timeout, client.status()).await {
                Ok(Ok(status)) if !status.key_id.is_empty() => (Ok(status.key_id), status.healthz),
                Ok(Ok(status)) => (Err("Status reported no key_id".into()), status.healthz),
                Ok(Err(error)) => (Err(describe_client_error(&error)), String::new()),
                Err(_) => (
                    Err(format!("Status did not answer within {timeout:?}")),
                    String::new(),
                ),
            },
        };
        statuses.push(PeerStatus {
            address: peer.address.clone(),
            primary,
            healthz,
        });
    }
    let peer_primaries: Vec<String> = statuses
        .iter()
        .filter_map(|s| s.primary.as_ref().ok().cloned())
        .collect();

    let mut versions = Vec::new();
    for version in keyring.versions() {
        let (Some(kek), true) = (version.material(), version.state().can_unwrap()) else {
            continue;
        };
        let holdings = match local_canary(kek, version.key_id()) {
            Ok((expected, wrapped)) => {
                decrypt_everywhere(&mut peers, &wrapped, version.key_id(), &expected, timeout).await
            }
            Err(reason) => peers
                .iter()
                .map(|_| Holding::Error(reason.clone()))
                .collect(),
        };
        versions.push(VersionCheck {
            key_id: version.key_id().to_owned(),
            local_state: Some(version.state()),
            primary_somewhere: version.state() == KeyState::Primary
                || peer_primaries.iter().any(|p| p == version.key_id()),
            peers: holdings,
        });
    }

    // Peer primaries the local keyring cannot use: have their owner encrypt a canary.
    for (index, status) in statuses.iter().enumerate() {
        let Ok(primary) = &status.primary else {
            continue;
        };
        if versions.iter().any(|v| &v.key_id == primary) {
            continue;
        }
        let encrypted = match (canary(), peers.get_mut(index).map(|p| &mut p.client)) {
            (Ok(expected), Some(Ok(client))) => {
                match tokio::time::timeout(
                    timeout,
                    client.encrypt(expected.expose_secret(), "kube-kms-key-check"),
                )
                .await
                {
                    Ok(Ok(response)) => Ok((expected, response)),
                    Ok(Err(error)) => Err(describe_client_error(&error)),
                    Err(_) => Err(format!("Encrypt did not answer within {timeout:?}")),
                }
            }
            (Err(reason), _) => Err(reason),
            (_, _) => Err("not connected".into()),
        };
        let (key_id, holdings) = match encrypted {
            Ok((expected, response)) => {
                let holdings = decrypt_everywhere(
                    &mut peers,
                    &response.ciphertext,
                    &response.key_id,
                    &expected,
                    timeout,
                )
                .await;
                (response.key_id, holdings)
            }
            Err(reason) => (
                primary.clone(),
                peers
                    .iter()
                    .map(|_| Holding::Error(format!("{}: {reason}", status.address)))
                    .collect(),
            ),
        };
        if versions.iter().any(|v| v.key_id == key_id) {
            continue;
        }
        versions.push(VersionCheck {
            key_id,
            local_state: None,
            primary_somewhere: true,
            peers: holdings,
        });
    }
    versions.sort_by_key(|v| version_order(&v.key_id));
    CheckReport {
        peers: statuses,
        versions,
    }
}

fn version_order(key_id: &str) -> (u32, String) {
    (
        crate::keyring::key_id::parse(key_id)
            .map(|(id, _)| id)
            .unwrap_or(u32::MAX),
        key_id.to_owned(),
    )
}
