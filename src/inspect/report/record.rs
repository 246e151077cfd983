//! The JSON Lines records of `etcd-inspect scan --format json`, as typed
//! structs: [`report`](super) writes them and the destroy gate
//! ([`crate::keyring::destroy_gate`]) reads them back with the same types, so
//! the writer and the reader cannot drift apart. The schema is documented in
//! `docs/report-schema.md`; [`SCHEMA_VERSION`] changes whenever a field that
//! the gate relies on changes meaning.
//!
//! Every string that comes from etcd (keys, provider names, key_ids, kinds)
//! is a [`Field`]: `{"text": "..."}` when it is UTF-8, `{"bytes": "<base64>"}`
//! when it is not, as ripgrep does, so base64 never passes for text.

use std::borrow::Cow;
use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Version of the record schema. 2: typed [`Field`]s, `scope`, `identity`.
pub const SCHEMA_VERSION: u32 = 2;

/// Name of the tool in the summary.
pub const TOOL: &str = "etcd-inspect";

/// One line of the report: `{"type": ..., "data": {...}}`.
// One record lives at a time, on the stack; boxing the value record would
// allocate once per value written.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum Record<'a> {
    /// One value examined.
    Value(ValueRecord<'a>),
    /// One remnant found by `--deep`.
    Residue(ResidueRecord<'a>),
    /// The last line: what was examined and what was found.
    Summary(Box<SummaryRecord>),
}

/// Bytes from etcd: text when UTF-8, else base64 marked as bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Field<'a> {
    /// The bytes are UTF-8: this is them.
    Text(Cow<'a, str>),
    /// The bytes are not UTF-8: standard base64 of them.
    Bytes(Cow<'a, str>),
}

impl<'a> Field<'a> {
    /// Marks `bytes` as text or as base64 bytes.
    pub fn from_bytes(bytes: &'a [u8]) -> Self {
        match std::str::from_utf8(bytes) {
            Ok(text) => Field::Text(Cow::Borrowed(text)),
            Err(_) => Field::Bytes(Cow::Owned(
                base64::engine::general_purpose::STANDARD.encode(bytes),
            )),
        }
    }

    /// The original bytes (`None` for bytes that are not valid base64).
    pub fn to_bytes(&self) -> Option<Vec<u8>> {
        match self {
            Field::Text(text) => Some(text.as_bytes().to_vec()),
            Field::Bytes(encoded) => base64::engine::general_purpose::STANDARD
                .decode(encoded.as_bytes())
                .ok(),
        }
    }

    /// True when this field holds exactly `bytes`.
    pub fn is(&self, bytes: &[u8]) -> bool {
        match self {
            Field::Text(text) => text.as_bytes() == bytes,
            Field::Bytes(_) => self.to_bytes().is_some_and(|own| own == bytes),
        }
    }

    /// The text, or `base64:...` for bytes (for messages; escape it before
    /// printing it on a terminal).
    pub fn lossy(&self) -> String {
        match self {
            Field::Text(text) => text.to_string(),
            Field::Bytes(encoded) => format!("base64:{encoded}"),
        }
    }
}

/// A `value` record: one revision of one key, never its value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ValueRecord<'a> {
    /// The etcd key.
    pub key: Field<'a>,
    /// The resource (`secrets`, `widgets.example.com`).
    pub resource: Field<'a>,
    /// Main revision.
    pub revision: i64,
    /// Sub revision (0 from a live range).
    pub sub_revision: i64,
    /// True for the key's current value.
    pub latest: bool,
    /// True when under an encryption provider.
    pub encrypted: bool,
    /// `identity`, `aescbc`, `aesgcm`, `secretbox`, `kms-v1`, `kms-v2`, `malformed`.
    pub provider: Cow<'a, str>,
    /// The provider's or key's name in the stored prefix.
    pub provider_name: Option<Field<'a>>,
    /// kms v2 key_id.
    pub key_id: Option<Field<'a>>,
    /// kms v2 DEK source type.
    pub dek_source_type: Option<Cow<'a, str>>,
    /// Kind of a plaintext object.
    pub kind: Option<Field<'a>>,
    /// apiVersion of a plaintext object.
    pub api_version: Option<Field<'a>>,
    /// `protobuf`, `json` or `yaml` for plaintext.
    pub encoding: Option<Cow<'a, str>>,
    /// Annotation keys of a kms v2 envelope.
    #[serde(default)]
    pub annotation_keys: Vec<Field<'a>>,
    /// What is malformed.
    pub problem: Option<Cow<'a, str>>,
    /// The finding's code, if this value is one.
    pub finding: Option<Cow<'a, str>>,
    /// Why verification failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<Cow<'a, str>>,
    /// Where the value is, when outside the keyspace scanned (a WAL entry, a
    /// leftover snap.db); absent for the keyspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<LocationRecord<'a>>,
}

/// Where a value outside the keyspace is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocationRecord<'a> {
    /// `wal` (a raft entry of a WAL segment) or `snap-db` (a revision in a
    /// leftover `member/snap/*.snap.db`).
    pub kind: Cow<'a, str>,
    /// The segment or file, as scanned.
    pub file: Field<'a>,
    /// WAL: byte offset of the entry's record in the segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// WAL: raft term of the entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,
    /// WAL: raft index of the entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
}

/// A `residue` record: a remnant found in a page the keyspace does not reach.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResidueRecord<'a> {
    /// What kind of remnant: a whole KeyValue record, or content found
    /// without one (see `RemnantForm` in `residue.rs`).
    pub form: Cow<'a, str>,
    /// Page id.
    pub page: u64,
    /// Byte offset in the file.
    pub offset: u64,
    /// The etcd key, when recovered.
    pub key: Option<Field<'a>>,
    /// The resource, when known.
    pub resource: Option<Cow<'a, str>>,
    /// What kind of remnant (or object kind).
    pub kind: Option<Cow<'a, str>>,
    /// Provider of an encrypted remnant.
    pub provider: Option<Cow<'a, str>>,
    /// True for a plaintext remnant.
    pub plaintext: bool,
    /// `residue` when it counts as a finding.
    pub finding: Option<Cow<'a, str>>,
}

/// Which resources a scan examined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ResourceScope {
    /// `--resources all`: every resource under the prefix.
    All(AllResources),
    /// Only these (`secrets`, `widgets.example.com`).
    Only(Vec<String>),
}

/// The string `"all"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllResources {
    /// Every resource.
    All,
}

/// What a scan examined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    /// `--prefix` (kube-apiserver's `--etcd-prefix`).
    pub prefix: String,
    /// `--resources`.
    pub resources: ResourceScope,
    /// False with `--ignore-history`: older revisions were not examined (live)
    /// or not judged (file).
    pub history_examined: bool,
}

/// Which etcd data the report is about.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// File: SHA-256 of the whole file, hex (`null` with `--skip-checksum`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Live: the etcd cluster id, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// Live: the member that answered first, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_id: Option<String>,
    /// Live: the endpoints given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<String>,
}

/// Counts of one resource.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceCounts {
    /// Current values by label (`identity`, `kms-v2:<key_id>`, ...).
    pub latest: BTreeMap<String, u64>,
    /// Older revisions.
    pub history: u64,
    /// Older revisions in plaintext.
    pub history_plaintext: u64,
    /// Keys whose last revision is a delete.
    pub deleted: u64,
    /// Revisions read (puts and deletes).
    pub events: u64,
}

/// Values of one (resource, provider, name, key_id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    /// The resource.
    pub resource: String,
    /// The provider.
    pub provider: String,
    /// Provider or key name.
    pub provider_name: Option<Field<'static>>,
    /// kms v2 key_id.
    pub key_id: Option<Field<'static>>,
    /// Current values.
    pub latest: u64,
    /// Older revisions.
    pub history: u64,
}

/// The `summary` record: the last line of a complete report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SummaryRecord {
    /// [`SCHEMA_VERSION`] of the writer.
    pub schema_version: u32,
    /// [`TOOL`].
    pub tool: String,
    /// The writer's version.
    pub tool_version: String,
    /// When the scan started (RFC 3339, seconds).
    pub scanned_at: Option<String>,
    /// `file` or `live`.
    pub source: String,
    /// The file path or the endpoints.
    pub location: String,
    /// Which data: file hash, or cluster id and member.
    pub identity: Identity,
    /// Highest revision in the file, or the revision a live scan was pinned to.
    pub revision: i64,
    /// Last completed compaction, if any.
    pub compact_revision: Option<i64>,
    /// What was examined.
    pub scope: Scope,
    /// Keys in scope.
    pub keys: u64,
    /// Values examined (tombstones excluded).
    pub values: u64,
    /// Revisions outside the scope.
    pub out_of_scope: u64,
    /// Counts per resource.
    pub resources: BTreeMap<String, ResourceCounts>,
    /// Counts per (resource, provider, name, key_id).
    pub groups: Vec<GroupRecord>,
    /// Findings by code.
    pub findings: BTreeMap<String, u64>,
    /// Stale kms v2 key_ids, when a current key_id was given.
    pub stale: Option<serde_json::Value>,
    /// Verification counts, when values were decrypted.
    pub verify: Option<serde_json::Value>,
    /// Non-fatal read errors (any makes the exit code 2).
    pub read_errors: Vec<String>,
    /// `--deep` counts.
    pub residue: Option<serde_json::Value>,
    /// Source facts (page size, trailer, range requests...), shown as-is.
    pub details: serde_json::Map<String, serde_json::Value>,
    /// The exit code the scan computed.
    pub exit_code: u8,
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_mark_text_and_bytes() {
        let text = serde_json::to_string(&Field::from_bytes(b"/registry/a")).unwrap();
        assert_eq!(text, r#"{"text":"/registry/a"}"#);
        let bytes = Field::from_bytes(b"/r/\xff\xfe");
        assert_eq!(
            serde_json::to_string(&bytes).unwrap(),
            r#"{"bytes":"L3Iv//4="}"#
        );
        assert!(bytes.is(b"/r/\xff\xfe"));
        let back: Field<'_> = serde_json::from_str(r#"{"bytes":"L3Iv//4="}"#).unwrap();
        assert_eq!(back.to_bytes().unwrap(), b"/r/\xff\xfe");
        // Bare strings are not fields: a reader never takes base64 for text.
        assert!(serde_json::from_str::<Field<'_>>(r#""L3Iv//4=""#).is_err());
    }

    #[test]
    fn resource_scope_is_all_or_a_list() {
        let all: ResourceScope = serde_json::from_str(r#""all""#).unwrap();
        assert_eq!(all, ResourceScope::All(AllResources::All));
        assert!(serde_json::from_str::<ResourceScope>(r#""secrets""#).is_err());
        let only: ResourceScope = serde_json::from_str(r#"["secrets"]"#).unwrap();
        assert_eq!(only, ResourceScope::Only(vec!["secrets".into()]));
    }
}
