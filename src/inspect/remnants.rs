//! Remnants of Kubernetes values in bytes no tree reaches: the content
//! search of the deep scan (`--deep`), and the report it makes.
//!
//! Owns recognising, in any byte range a source hands over (for a bbolt
//! file, [`crate::inspect::source::bbolt::deep`] hands the pages the current
//! meta page does not reach and the slack past the high-water mark), the
//! remnants of stored values:
//! - etcd `mvccpb.KeyValue` records whose key is under the scanned prefix and
//!   resource scope (raw search for `0a <len> <prefix>/...`, which also finds
//!   the elements of old leaf pages), classified like the keyspace's values;
//! - kube-apiserver's plaintext protobuf envelope (`k8s\0` + a decodable
//!   `runtime.Unknown` type meta) whose kind is in scope, where no KeyValue
//!   around it was recognised;
//! - plaintext found by content alone, where no KeyValue claims it: the
//!   overflow tail of a large value whose first page was reused has no
//!   header left, but a JSON object (`"kind":"Secret"`) or a PEM private key
//!   (`PRIVATE KEY-----`, of a TLS Secret) still reads as what it is.
//!
//! Each remnant says what it is ([`RemnantForm`]), never its bytes. The
//! search uses `memchr::memmem`; a caller reading a long range in windows
//! that overlap by [`OVERLAP`] bytes finds a remnant across a window
//! boundary once ([`RemnantSearch::search_window`]).

use memchr::memmem::{Finder, FinderRev};

use super::classify::{Classifier, Provider, PROTOBUF_MAGIC};
use super::resource::{resource_of, ResourceFilter};
use super::{pb, unknown};

/// Bytes two consecutive windows of one byte range share: a remnant that
/// starts before a window's end but needs more bytes to be recognised is
/// found in the next window (each start is reported by one window only).
pub const OVERLAP: u64 = 64 << 10;
/// Both lines of a PEM private key block end so (`-----BEGIN RSA PRIVATE
/// KEY-----`, `-----END PRIVATE KEY-----`, ...).
const PEM_PRIVATE_KEY: &[u8] = b"PRIVATE KEY-----";
/// A JSON object's kind, as kube-apiserver writes it (compact JSON).
const JSON_KIND: &[u8] = b"\"kind\":\"";
/// Longest PEM BEGIN/END line looked for (`-----BEGIN ENCRYPTED PRIVATE
/// KEY-----` is 37 bytes).
const PEM_LINE_MAX: usize = 64;
/// Bytes searched before a PEM END line for its BEGIN line (one remnant per
/// block); private keys are a few KiB.
const PEM_BLOCK_MAX: usize = 16 << 10;
/// Longest etcd key looked for (etcd's default limit is 1.5 MiB for requests,
/// but Kubernetes keys are short; a two-byte varint length covers 16 KiB).
const MAX_KEY_LEN: usize = 16 * 1024;

/// What is in scope for the deep scan (same as the keyspace scan).
#[derive(Debug, Clone)]
pub struct RemnantScope {
    /// Key prefix (`/registry`).
    pub prefix: Vec<u8>,
    /// Resources in scope.
    pub resources: ResourceFilter,
    /// Classifier for the values of recovered KeyValue records.
    pub classifier: Classifier,
}

/// What a remnant is (how it was recognised).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RemnantForm {
    /// An etcd `mvccpb.KeyValue` record (key recovered, value classified).
    KeyValue,
    /// A plaintext protobuf envelope (`k8s\0` + type meta) on its own.
    Protobuf,
    /// A JSON object with `"kind":"..."` of a kind in scope.
    Json,
    /// A PEM private key block (a BEGIN or END line of one).
    PemPrivateKey,
}

impl RemnantForm {
    /// Name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            RemnantForm::KeyValue => "etcd-record",
            RemnantForm::Protobuf => "protobuf-object",
            RemnantForm::Json => "json-object",
            RemnantForm::PemPrivateKey => "pem-private-key",
        }
    }
}

/// One remnant of a value found outside the reachable tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remnant {
    /// What it is.
    pub form: RemnantForm,
    /// Page the remnant starts in.
    pub page: u64,
    /// Byte offset in the file.
    pub offset: u64,
    /// The etcd key, when a KeyValue record was recovered.
    pub key: Option<Vec<u8>>,
    /// The resource of the key, when recovered.
    pub resource: Option<String>,
    /// The object kind, when the value is a plaintext protobuf envelope.
    pub kind: Option<String>,
    /// Provider of the value (`identity` for plaintext), when the value was
    /// recovered whole.
    pub provider: Option<Provider>,
    /// True when the remnant holds plaintext.
    pub plaintext: bool,
}

/// What the deep scan found.
#[derive(Debug, Clone, Default)]
pub struct RemnantReport {
    /// Every remnant, by offset.
    pub remnants: Vec<Remnant>,
    /// Unreachable pages below the high-water mark examined.
    pub pages_examined: u64,
    /// Bytes past the high-water mark examined (member db slack).
    pub slack_bytes: u64,
    /// Bytes read by the deep scan.
    pub bytes_read: u64,
    /// `--ignore-residue`: report, but not as findings.
    pub ignored: bool,
}

impl RemnantReport {
    /// Remnants holding plaintext.
    pub fn plaintext_count(&self) -> usize {
        self.remnants.iter().filter(|r| r.plaintext).count()
    }

    /// True when plaintext remnants count as findings (exit 1).
    pub fn has_findings(&self) -> bool {
        !self.ignored && self.plaintext_count() > 0
    }
}

/// Searches bytes for remnants.
#[derive(Debug)]
pub struct RemnantSearch<'s> {
    scope: &'s RemnantScope,
    prefix: Vec<u8>,
    prefix_finder: Finder<'static>,
    magic: Finder<'static>,
    json_kind: Finder<'static>,
    pem: Finder<'static>,
    pem_begin: FinderRev<'static>,
    pem_end: FinderRev<'static>,
    /// Whether PEM private keys are in scope (they belong to Secrets).
    pem_in_scope: bool,
    page_size: u64,
}

impl<'s> RemnantSearch<'s> {
    /// A scanner for `scope` in a file of `page_size` pages.
    pub fn new(scope: &'s RemnantScope, page_size: u64) -> Self {
        let mut prefix = scope.prefix.clone();
        while prefix.last() == Some(&b'/') {
            prefix.pop();
        }
        prefix.push(b'/');
        let pem_in_scope = match &scope.resources {
            ResourceFilter::All => true,
            resources => resources.includes("secrets"),
        };
        Self {
            scope,
            prefix_finder: Finder::new(&prefix).into_owned(),
            prefix,
            magic: Finder::new(PROTOBUF_MAGIC).into_owned(),
            json_kind: Finder::new(JSON_KIND).into_owned(),
            pem: Finder::new(PEM_PRIVATE_KEY).into_owned(),
            pem_begin: FinderRev::new(b"-----BEGIN ").into_owned(),
            pem_end: FinderRev::new(b"-----END ").into_owned(),
            pem_in_scope,
            page_size: page_size.max(1),
        }
    }

    /// Appends the remnants found in `region`, which starts at file offset
    /// `base`, to `out`. Never panics, whatever the bytes.
    pub fn search_region(&self, region: &[u8], base: u64, out: &mut Vec<Remnant>) {
        self.search_window(region, base, 0..region.len(), out);
    }

    /// [`RemnantSearch::search_region`], reporting only remnants that start in
    /// `report` (the rest of `region` is context for them).
    pub fn search_window(
        &self,
        region: &[u8],
        base: u64,
        report: std::ops::Range<usize>,
        out: &mut Vec<Remnant>,
    ) {
        let report_until = report.end;
        // Byte ranges of values already accounted for by a KeyValue record:
        // what is inside one is not reported again by content.
        let mut claimed: Vec<(usize, usize)> = Vec::new();
        for at in self.prefix_finder.find_iter(region) {
            // The record starts up to three bytes before its key.
            if at > report_until.saturating_add(3) {
                break;
            }
            if let Some((remnant, value)) = self.key_value_at(region, at, base) {
                claimed.extend(value);
                if report.contains(&((remnant.offset - base) as usize)) {
                    out.push(remnant);
                }
            }
        }
        claimed.sort_unstable();
        let is_claimed = |at: usize| {
            let index = claimed.partition_point(|&(start, _)| start <= at);
            claimed
                .get(..index)
                .is_some_and(|before| before.iter().rev().take(4).any(|&(_, end)| at < end))
        };
        let mut push = |at: usize, form: RemnantForm, kind: Option<String>| {
            let offset = base + at as u64;
            out.push(Remnant {
                form,
                page: offset / self.page_size,
                offset,
                key: None,
                resource: None,
                kind,
                provider: Some(Provider::Identity),
                plaintext: true,
            });
        };
        let reportable = |at: usize| report.contains(&at) && !is_claimed(at);
        for at in self.magic.find_iter(region) {
            if !reportable(at) {
                continue;
            }
            let Some(kind) = envelope_kind(region.get(at..).unwrap_or(&[])) else {
                continue;
            };
            if self.kind_in_scope(kind) {
                push(
                    at,
                    RemnantForm::Protobuf,
                    Some(String::from_utf8_lossy(kind).into_owned()),
                );
            }
        }
        for at in self.json_kind.find_iter(region) {
            if !reportable(at) {
                continue;
            }
            let Some(kind) = json_kind(region.get(at + JSON_KIND.len()..).unwrap_or(&[])) else {
                continue;
            };
            if self.kind_in_scope(kind) {
                push(
                    at,
                    RemnantForm::Json,
                    Some(String::from_utf8_lossy(kind).into_owned()),
                );
            }
        }
        if self.pem_in_scope {
            // One remnant per block: its BEGIN line, or the END line of a
            // block whose BEGIN line is gone (reused page, window start).
            let mut last_begin_end = None;
            for at in self.pem.find_iter(region) {
                // The line holding the match: the nearer of a BEGIN and an
                // END line start in the 64 bytes before it.
                let from = at.saturating_sub(PEM_LINE_MAX);
                let before = region.get(from..at).unwrap_or(&[]);
                let begin_at = self.pem_begin.rfind(before);
                let end_at = self.pem_end.rfind(before);
                let (line_start, begin) = match (begin_at, end_at) {
                    (Some(b), Some(e)) if b > e => (from + b, true),
                    (_, Some(e)) => (from + e, false),
                    (Some(b), None) => (from + b, true),
                    (None, None) => continue,
                };
                if begin {
                    last_begin_end = Some(at);
                } else if last_begin_end.is_some_and(|begin_at| at - begin_at <= PEM_BLOCK_MAX) {
                    last_begin_end = None;
                    continue;
                }
                if reportable(line_start) {
                    push(line_start, RemnantForm::PemPrivateKey, None);
                }
            }
        }
    }

    /// A KeyValue record whose key starts at `key_at`: the remnant, and where its value starts (if it is a recognised envelope).
    fn key_value_at(
        &self,
        region: &[u8],
        key_at: usize,
        base: u64,
    ) -> Option<(Remnant, Option<(usize, usize)>)> {
        // `0a <varint len>` right before the key: one or two length bytes.
        let one = region.get(key_at.checked_sub(2)?..key_at)?;
        let (start, key_len) = match one {
            [0x0a, len] if *len < 0x80 => (key_at - 2, usize::from(*len)),
            [high, low] if *high >= 0x80 && *low < 0x80 && *low > 0 => {
                let tag_at = key_at.checked_sub(3)?;
                if region.get(tag_at) != Some(&0x0a) {
                    return None;
                }
                (tag_at, usize::from(high & 0x7f) | (usize::from(*low) << 7))
            }
            _ => return None,
        };
        if key_len > MAX_KEY_LEN || key_len <= self.prefix.len() {
            return None;
        }
        let key = region.get(key_at..key_at + key_len)?;
        let resource = resource_of(key, self.prefix.get(..self.prefix.len() - 1)?)?;
        if !self.scope.resources.includes(&resource) {
            return None;
        }
        // The fields after the key, until one that is not a KeyValue field.
        let mut value: Option<&[u8]> = None;
        let mut value_at = None;
        let record = region.get(start..)?;
        for field in pb::Reader::new(record).skip(1) {
            let Ok(field) = field else { break };
            match field.number {
                2..=4 | 6 => {
                    if field.varint().is_err() {
                        break;
                    }
                }
                5 => {
                    let Ok(bytes) = field.bytes() else { break };
                    value = Some(bytes);
                    // The value's bytes end the field: its start is
                    // field end - length.
                    value_at = Some(start + field.offset + field_header_len(record, field.offset)?);
                }
                _ => break,
            }
            if field.number == 6 {
                break;
            }
        }
        let value = value?;
        if value.is_empty() {
            return None;
        }
        let class = self.scope.classifier.classify(value);
        let provider = class.provider();
        let plaintext = provider == Provider::Identity;
        let kind = class
            .kind
            .map(|kind| String::from_utf8_lossy(kind).into_owned());
        let offset = base + start as u64;
        let claimed = value_at.map(|at| (at, at + value.len()));
        Some((
            Remnant {
                form: RemnantForm::KeyValue,
                page: offset / self.page_size,
                offset,
                key: Some(key.to_vec()),
                resource: Some(resource),
                kind,
                provider: Some(provider),
                plaintext,
            },
            claimed,
        ))
    }

    /// Whether a plaintext object of `kind` belongs to a resource in scope
    /// (kind `Secret` is resource `secrets`, `Deployment` is
    /// `deployments.apps`).
    fn kind_in_scope(&self, kind: &[u8]) -> bool {
        self.scope.resources.includes_kind(kind)
    }
}

/// Length of the tag and length varint of the field whose tag is at `offset`.
fn field_header_len(record: &[u8], offset: usize) -> Option<usize> {
    let bytes = record.get(offset..)?;
    let tag_len = bytes.iter().position(|&b| b < 0x80)? + 1;
    let len_len = bytes.get(tag_len..)?.iter().position(|&b| b < 0x80)? + 1;
    Some(tag_len + len_len)
}

/// The kind of a plaintext protobuf envelope starting at `bytes[0]`
/// (`k8s\0` + runtime.Unknown whose first field is a decodable type meta with
/// a kind, followed by `raw` when the bytes go on).
pub fn envelope_kind(bytes: &[u8]) -> Option<&[u8]> {
    let unknown = bytes.strip_prefix(PROTOBUF_MAGIC)?;
    let mut fields = pb::Reader::new(unknown);
    let type_meta = fields.next()?.ok()?;
    if type_meta.number != 1 {
        return None;
    }
    let type_meta = type_meta.bytes().ok()?;
    let meta = unknown::type_meta(type_meta)
        .ok()
        .filter(|meta| meta.conforms)?;
    let kind = meta.kind.filter(|kind| {
        !kind.is_empty()
            && kind.len() <= 253
            && kind.first().is_some_and(u8::is_ascii_uppercase)
            && kind.iter().all(u8::is_ascii_alphanumeric)
    })?;
    // The tag of `raw` (field 2, length-delimited) follows the type meta.
    let after = field_header_len(unknown, 0)? + type_meta.len();
    match unknown.get(after) {
        Some(0x12) | None => Some(kind),
        _ => None,
    }
}

/// The kind of a JSON object at `bytes` (just after `"kind":"`): an
/// identifier starting with an uppercase letter, then the closing quote.
fn json_kind(bytes: &[u8]) -> Option<&[u8]> {
    let len = bytes.iter().take(254).position(|&b| b == b'"')?;
    let kind = bytes.get(..len)?;
    (!kind.is_empty()
        && kind.first().is_some_and(u8::is_ascii_uppercase)
        && kind.iter().all(u8::is_ascii_alphanumeric))
    .then_some(kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::classify::build;
    use crate::inspect::pb::encode;
    use proptest::prelude::*;

    fn scope(resources: ResourceFilter) -> RemnantScope {
        RemnantScope {
            prefix: b"/registry".to_vec(),
            resources,
            classifier: Classifier::default(),
        }
    }

    fn key_value(key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut kv = Vec::new();
        encode::bytes_field(&mut kv, 1, key);
        encode::varint_field(&mut kv, 2, 5);
        encode::varint_field(&mut kv, 3, 9);
        encode::varint_field(&mut kv, 4, 2);
        encode::bytes_field(&mut kv, 5, value);
        kv
    }

    #[test]
    fn finds_key_values_and_bare_envelopes() {
        let secret = build::plaintext_protobuf("v1", "Secret", b"\x0a\x03abc");
        let sealed = build::kms_v2("kube-kms", "k1", Some(1), &[], &[9u8; 40]);
        let config = build::plaintext_protobuf("v1", "ConfigMap", b"\x0a\x01x");
        let mut page = vec![0u8; 100];
        page.extend(key_value(b"/registry/secrets/ns/a", &secret));
        page.extend([0u8; 7]);
        page.extend(key_value(b"/registry/secrets/ns/b", &sealed));
        page.extend(key_value(b"/registry/configmaps/ns/c", &config));
        page.extend(&secret[..20]);
        let bare_at = page.len() - 20;
        page.extend(&config);
        page.resize(8192, 0);
        let scope = scope(ResourceFilter::Only(vec!["secrets".into()]));
        let mut out = Vec::new();
        RemnantSearch::new(&scope, 4096).search_region(&page, 4096 * 7, &mut out);
        out.sort_by_key(|r| r.offset);
        assert_eq!(out.len(), 3, "{out:?}");
        assert_eq!(out[0].key.as_deref(), Some(&b"/registry/secrets/ns/a"[..]));
        assert!(out[0].plaintext);
        assert_eq!(out[0].kind.as_deref(), Some("Secret"));
        assert_eq!(out[0].offset, 4096 * 7 + 100);
        assert_eq!(out[0].page, 7);
        assert_eq!(out[1].key.as_deref(), Some(&b"/registry/secrets/ns/b"[..]));
        assert!(!out[1].plaintext);
        assert_eq!(out[1].provider, Some(Provider::KmsV2));
        assert_eq!(out[2].key, None);
        assert_eq!(out[2].offset, 4096 * 7 + bare_at as u64);
        assert!(out[2].plaintext);
        let all = scope_all();
        let mut out = Vec::new();
        RemnantSearch::new(&all, 4096).search_region(&page, 0, &mut out);
        assert_eq!(out.len(), 5, "{out:?}");
    }

    fn scope_all() -> RemnantScope {
        scope(ResourceFilter::All)
    }

    #[test]
    fn content_remnants_say_what_they_are() {
        let mut page = vec![0u8; 300];
        page.extend_from_slice(
            b"-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----\n",
        );
        page.extend_from_slice(b"xx\n-----END PRIVATE KEY-----\n");
        let json_at = page.len();
        page.extend_from_slice(br#"{"kind":"Secret","apiVersion":"v1"}"#);
        page.extend_from_slice(br#"{"kind":"ConfigMap"} {"kind":"lower"}"#);
        let scope = scope(ResourceFilter::Only(vec!["secrets".into()]));
        let mut out = Vec::new();
        RemnantSearch::new(&scope, 4096).search_region(&page, 0, &mut out);
        let found: Vec<(RemnantForm, u64, Option<&str>)> = out
            .iter()
            .map(|r| (r.form, r.offset, r.kind.as_deref()))
            .collect();
        let end_line = 300 + 67 + 3;
        assert_eq!(
            found,
            [
                (RemnantForm::Json, json_at as u64 + 1, Some("Secret")),
                (RemnantForm::PemPrivateKey, 300, None),
                (RemnantForm::PemPrivateKey, end_line, None),
            ]
        );
        assert!(out.iter().all(|r| r.plaintext && r.key.is_none()));
        // Nothing of a kind out of scope; PEM keys only with secrets in scope.
        let configmaps = scope_only("configmaps");
        let mut out = Vec::new();
        RemnantSearch::new(&configmaps, 4096).search_region(&page, 0, &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].kind.as_deref(), Some("ConfigMap"));
    }

    #[test]
    fn content_inside_a_recovered_record_is_not_reported_twice() {
        let value = b"-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n";
        let mut page = vec![0u8; 64];
        page.extend(key_value(b"/registry/secrets/ns/tls", value));
        let scope = scope_all();
        let mut out = Vec::new();
        RemnantSearch::new(&scope, 4096).search_region(&page, 0, &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].form, RemnantForm::KeyValue);
    }

    fn scope_only(resource: &str) -> RemnantScope {
        scope(ResourceFilter::Only(vec![resource.into()]))
    }

    #[test]
    fn kinds_map_to_the_resources_of_the_keyspace() {
        // Issue 16: `Endpoints` is resource `endpoints`, as its keys say.
        assert_eq!(
            resource_of(b"/registry/services/endpoints/ns/a", b"/registry").as_deref(),
            Some("endpoints")
        );
        let scope = scope_only("endpoints");
        assert!(RemnantSearch::new(&scope, 4096).kind_in_scope(b"Endpoints"));
        let scope = scope_only("deployments.apps");
        assert!(RemnantSearch::new(&scope, 4096).kind_in_scope(b"Deployment"));
        assert!(!RemnantSearch::new(&scope, 4096).kind_in_scope(b"Secret"));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048),
                                       seed in proptest::collection::vec(0usize..2048, 0..8)) {
            let mut bytes = bytes;
            // Plant magic and key prefixes at random places.
            for (index, at) in seed.into_iter().enumerate() {
                let plant: &[u8] = if index % 2 == 0 { b"k8s\x00\x0a" } else { b"\x0a\x20/registry/secrets/" };
                if at + plant.len() <= bytes.len() {
                    bytes[at..at + plant.len()].copy_from_slice(plant);
                }
            }
            let all = scope_all();
            let mut out = Vec::new();
            RemnantSearch::new(&all, 512).search_region(&bytes, 1024, &mut out);
            for remnant in out {
                prop_assert!(remnant.offset >= 1024);
            }
        }
    }
}
