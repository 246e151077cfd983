//! What an audit judges: its scope (`--prefix`, `--resources`), the
//! policy (`--require-provider`, allowed and current key ids), and the
//! findings a value can have.
use crate::inspect::classify::{Classifier, Provider};
pub use crate::inspect::resource::{resource_of, ResourceFilter};

/// Default key prefix of kube-apiserver.
pub const DEFAULT_PREFIX: &str = "/registry";

/// A `--require-provider` policy: a provider, optionally with its name
/// (`kms-v2:kube-kms`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequiredProvider {
    /// The provider every latest value must use.
    pub provider: Provider,
    /// The key/provider name it must have, if given.
    pub name: Option<Vec<u8>>,
}

impl RequiredProvider {
    /// Parses `PROVIDER` or `PROVIDER:NAME`.
    pub fn parse(spec: &str) -> Option<Self> {
        let (label, name) = match spec.split_once(':') {
            Some((label, name)) => (label, Some(name.as_bytes().to_vec())),
            None => (spec, None),
        };
        Some(Self {
            provider: Provider::parse(label)?,
            name,
        })
    }
}

/// Scope and policy of a scan.
#[derive(Debug, Clone)]
pub struct LedgerOptions {
    /// Key prefix (`/registry`); keys outside it are ignored.
    pub prefix: Vec<u8>,
    /// Resources in scope.
    pub resources: ResourceFilter,
    /// Do not report plaintext (or malformed) history revisions.
    pub ignore_history: bool,
    /// Every latest value must use this provider.
    pub require_provider: Option<RequiredProvider>,
    /// kms v2 latest values must use one of these key_ids.
    pub allowed_key_ids: Option<Vec<Vec<u8>>>,
    /// Classifier (with configured names, if any).
    pub classifier: Classifier,
}

impl Default for LedgerOptions {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.as_bytes().to_vec(),
            resources: ResourceFilter::Only(vec!["secrets".to_string()]),
            ignore_history: false,
            require_provider: None,
            allowed_key_ids: None,
            classifier: Classifier::default(),
        }
    }
}

/// What is wrong with a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Finding {
    /// The latest revision is plaintext.
    Plaintext,
    /// An older revision is plaintext (still on disk until compaction).
    PlaintextHistory,
    /// A `k8s:enc:` value that does not parse.
    Malformed,
    /// Not the provider `--require-provider` asks for.
    WrongProvider,
    /// kms v2 under a key_id not in `--allowed-key-ids`.
    StaleKeyId,
    /// Did not decrypt to a valid object with the keys given (`--verify-with`,
    /// `--encryption-config`).
    VerifyFailed,
    /// Plaintext in a raft entry of the write-ahead log.
    PlaintextWal,
    /// Plaintext in a leftover `member/snap/*.snap.db`.
    PlaintextSnapDb,
}

impl Finding {
    /// Short code for JSON output.
    pub fn code(self) -> &'static str {
        match self {
            Finding::Plaintext => "plaintext",
            Finding::PlaintextHistory => "plaintext-history",
            Finding::Malformed => "malformed",
            Finding::WrongProvider => "wrong-provider",
            Finding::StaleKeyId => "stale-key-id",
            Finding::VerifyFailed => "verify-failed",
            Finding::PlaintextWal => "plaintext-wal",
            Finding::PlaintextSnapDb => "plaintext-snap-db",
        }
    }

    /// Sentence for the table output.
    pub fn describe(self) -> &'static str {
        match self {
            Finding::Plaintext => "stored in plaintext",
            Finding::PlaintextHistory => {
                "older revision stored in plaintext (stays until compaction + defrag; in backups forever)"
            }
            Finding::Malformed => "encrypted-looking value that does not parse",
            Finding::WrongProvider => "not under the required provider",
            Finding::StaleKeyId => "kms v2 key_id not in the allowed list (stale; rewrite it)",
            Finding::VerifyFailed => "failed verification",
            Finding::PlaintextWal => {
                "in the write-ahead log: stays until etcd purges this segment; in every copy of the data dir"
            }
            Finding::PlaintextSnapDb => {
                "in a leftover snap.db: stays until the file is removed; in every copy of the data dir"
            }
        }
    }
}
