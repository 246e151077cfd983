//! The deep scan of a backup file: remnants of Kubernetes values in pages the
//! current meta page does not reach.
//!
//! Owns: finding, in every page of a bbolt file that the walk of the current
//! meta page did not reach (free pages, pages only the older meta reaches, any
//! page below the high-water mark outside the tree) and in the slack past the
//! high-water mark (pre-grown member dbs), the remnants of stored values:
//! - etcd `mvccpb.KeyValue` records whose key is under the scanned prefix and
//!   resource scope (raw search for `0a <len> <prefix>/...`, which also finds
//!   the elements of old leaf pages), classified like the keyspace's values;
//! - kube-apiserver's plaintext protobuf envelope (`k8s\0` + a decodable
//!   `runtime.Unknown` type meta) whose kind is in scope, where no KeyValue
//!   around it was recognised.
//!
//! Why: bbolt copies pages on write and leaves the old ones as they were until
//! reused; compaction frees old revisions but only `etcdctl defrag` rewrites the
//! file without them, and a snapshot copies free pages verbatim. Pages are read
//! with [`Database::read_pages`] in coalesced chunks (the reachable set comes
//! from [`Database::walk`]); values are never retained or printed, only where
//! they are and what they are.

use super::bbolt::{BboltError, Database, PageSet, ReadAt};
use super::classify::{Classifier, Provider, PROTOBUF_MAGIC};
use super::pb;
use super::scan::{resource_of, ResourceFilter};

/// Bytes read at once (several unreachable pages close together).
const CHUNK_SIZE: u64 = 4 << 20;
/// Longest etcd key looked for (etcd's default limit is 1.5 MiB for requests,
/// but Kubernetes keys are short; a two-byte varint length covers 16 KiB).
const MAX_KEY_LEN: usize = 16 * 1024;

/// What is in scope for the deep scan (same as the keyspace scan).
#[derive(Debug, Clone)]
pub struct ResidueScope {
    /// Key prefix (`/registry`).
    pub prefix: Vec<u8>,
    /// Resources in scope.
    pub resources: ResourceFilter,
    /// Classifier for the values of recovered KeyValue records.
    pub classifier: Classifier,
}

/// One remnant of a value found outside the reachable tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remnant {
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
pub struct ResidueReport {
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

impl ResidueReport {
    /// Remnants holding plaintext.
    pub fn plaintext_count(&self) -> usize {
        self.remnants.iter().filter(|r| r.plaintext).count()
    }

    /// True when plaintext remnants count as findings (exit 1).
    pub fn has_findings(&self) -> bool {
        !self.ignored && self.plaintext_count() > 0
    }
}

/// Examines every page of `db` not in `reachable` (from [`Database::walk`])
/// and the slack past the high-water mark. `Err` only for I/O problems.
pub fn scan<R: ReadAt>(
    db: &Database<R>,
    reachable: &PageSet,
    scope: &ResidueScope,
) -> Result<ResidueReport, BboltError> {
    let page_size = db.page_size();
    let high_water = db.meta().high_water;
    let mut report = ResidueReport::default();
    let scanner = Scanner::new(scope, page_size);
    let unreachable: Vec<u64> = (2..high_water)
        .filter(|&pgid| !reachable.contains(pgid))
        .collect();
    report.pages_examined = unreachable.len() as u64;
    let mut buf = Vec::new();
    let mut index = 0;
    while let Some(&start) = unreachable.get(index) {
        let mut last = index + 1;
        let mut end = start + 1;
        while let Some(&pgid) = unreachable.get(last) {
            if (pgid + 1 - start) * page_size > CHUNK_SIZE {
                break;
            }
            end = pgid + 1;
            last += 1;
        }
        db.read_pages(start, end - start, &mut buf)?;
        report.bytes_read += buf.len() as u64;
        // Scan each run of consecutive unreachable pages as one region, so
        // records spanning pages are found.
        let pages = unreachable.get(index..last).unwrap_or(&[]);
        let mut run_start = 0;
        while let Some(&first) = pages.get(run_start) {
            let mut run_end = run_start + 1;
            while pages.get(run_end) == Some(&(first + (run_end - run_start) as u64)) {
                run_end += 1;
            }
            let from = ((first - start) * page_size) as usize;
            let to = from + (run_end - run_start) * page_size as usize;
            if let Some(region) = buf.get(from..to) {
                scanner.scan_region(region, first * page_size, &mut report.remnants);
            }
            run_start = run_end;
        }
        index = last;
    }
    // Slack past the high-water mark (member dbs are pre-grown).
    let mut offset = high_water.saturating_mul(page_size);
    let image_end = db.image_size();
    while offset < image_end {
        let len = (image_end - offset).min(CHUNK_SIZE) as usize;
        buf.resize(len, 0);
        db.read_image(offset, &mut buf)?;
        report.bytes_read += len as u64;
        report.slack_bytes += len as u64;
        scanner.scan_region(&buf, offset, &mut report.remnants);
        offset += len as u64;
    }
    report.remnants.sort_by_key(|remnant| remnant.offset);
    Ok(report)
}

/// Searches bytes for remnants.
#[derive(Debug)]
pub struct Scanner<'s> {
    scope: &'s ResidueScope,
    prefix: Vec<u8>,
    page_size: u64,
}

impl<'s> Scanner<'s> {
    /// A scanner for `scope` in a file of `page_size` pages.
    pub fn new(scope: &'s ResidueScope, page_size: u64) -> Self {
        let mut prefix = scope.prefix.clone();
        while prefix.last() == Some(&b'/') {
            prefix.pop();
        }
        prefix.push(b'/');
        Self {
            scope,
            prefix,
            page_size: page_size.max(1),
        }
    }

    /// Appends the remnants found in `region`, which starts at file offset
    /// `base`, to `out`. Never panics, whatever the bytes.
    pub fn scan_region(&self, region: &[u8], base: u64, out: &mut Vec<Remnant>) {
        // Envelopes already accounted for by a KeyValue record (value offsets).
        let mut claimed: Vec<usize> = Vec::new();
        for at in find_all(region, &self.prefix) {
            if let Some((remnant, value_at)) = self.key_value_at(region, at, base) {
                claimed.extend(value_at);
                out.push(remnant);
            }
        }
        claimed.sort_unstable();
        for at in find_all(region, PROTOBUF_MAGIC) {
            if claimed.binary_search(&at).is_ok() {
                continue;
            }
            let Some(kind) = envelope_kind(region.get(at..).unwrap_or(&[])) else {
                continue;
            };
            if !self.kind_in_scope(kind) {
                continue;
            }
            let offset = base + at as u64;
            out.push(Remnant {
                page: offset / self.page_size,
                offset,
                key: None,
                resource: None,
                kind: Some(String::from_utf8_lossy(kind).into_owned()),
                provider: Some(Provider::Identity),
                plaintext: true,
            });
        }
    }

    /// A KeyValue record whose key starts at `key_at`: the remnant, and where its value starts (if it is a recognised envelope).
    fn key_value_at(
        &self,
        region: &[u8],
        key_at: usize,
        base: u64,
    ) -> Option<(Remnant, Option<usize>)> {
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
        let mut value = None;
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
        let envelope_at = value_at.filter(|_| value.starts_with(PROTOBUF_MAGIC));
        Some((
            Remnant {
                page: offset / self.page_size,
                offset,
                key: Some(key.to_vec()),
                resource: Some(resource),
                kind,
                provider: Some(provider),
                plaintext,
            },
            envelope_at,
        ))
    }

    /// Whether a plaintext object of `kind` belongs to a resource in scope
    /// (kind `Secret` is resource `secrets`).
    fn kind_in_scope(&self, kind: &[u8]) -> bool {
        match &self.scope.resources {
            ResourceFilter::All => true,
            ResourceFilter::Only(_) => {
                let plural = plural_of(kind);
                let resources = &self.scope.resources;
                resources.includes(&plural)
                    || matches!(resources, ResourceFilter::Only(names) if names
                        .iter()
                        .any(|name| name.split('.').next() == Some(plural.as_str())))
            }
        }
    }
}

/// Length of the tag and length varint of the field whose tag is at `offset`.
fn field_header_len(record: &[u8], offset: usize) -> Option<usize> {
    let bytes = record.get(offset..)?;
    let tag_len = bytes.iter().position(|&b| b < 0x80)? + 1;
    let len_len = bytes.get(tag_len..)?.iter().position(|&b| b < 0x80)? + 1;
    Some(tag_len + len_len)
}

/// The lowercase plural of a kind, as kube-apiserver names resources
/// (`Secret` -> `secrets`, `NetworkPolicy` -> `networkpolicies`).
fn plural_of(kind: &[u8]) -> String {
    let lower = String::from_utf8_lossy(kind).to_ascii_lowercase();
    if let Some(stem) = lower.strip_suffix('y') {
        if !stem.ends_with(['a', 'e', 'i', 'o', 'u']) {
            return format!("{stem}ies");
        }
    }
    if lower.ends_with('s') || lower.ends_with("ch") || lower.ends_with('x') {
        return format!("{lower}es");
    }
    format!("{lower}s")
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
    let mut kind = None;
    for field in pb::Reader::new(type_meta) {
        let field = field.ok()?;
        match field.number {
            1 => {
                field.bytes().ok()?;
            }
            2 => kind = Some(field.bytes().ok()?),
            _ => return None,
        }
    }
    let kind = kind.filter(|kind| {
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

/// Start offsets of every occurrence of `needle` in `haystack`.
fn find_all<'h>(haystack: &'h [u8], needle: &'h [u8]) -> impl Iterator<Item = usize> + 'h {
    let mut from = 0usize;
    std::iter::from_fn(move || {
        let (&first, rest) = needle.split_first()?;
        loop {
            let tail = haystack.get(from..)?;
            let at = from + tail.iter().position(|&b| b == first)?;
            from = at + 1;
            if haystack.get(at + 1..at + 1 + rest.len()) == Some(rest) {
                return Some(at);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::classify::build;
    use crate::inspect::pb::encode;
    use proptest::prelude::*;

    fn scope(resources: ResourceFilter) -> ResidueScope {
        ResidueScope {
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
        Scanner::new(&scope, 4096).scan_region(&page, 4096 * 7, &mut out);
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
        Scanner::new(&all, 4096).scan_region(&page, 0, &mut out);
        assert_eq!(out.len(), 5, "{out:?}");
    }

    fn scope_all() -> ResidueScope {
        scope(ResourceFilter::All)
    }

    #[test]
    fn plurals_follow_kube_naming() {
        assert_eq!(plural_of(b"Secret"), "secrets");
        assert_eq!(plural_of(b"NetworkPolicy"), "networkpolicies");
        assert_eq!(plural_of(b"Ingress"), "ingresses");
        assert_eq!(plural_of(b"Gateway"), "gateways");
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
            Scanner::new(&all, 512).scan_region(&bytes, 1024, &mut out);
            for remnant in out {
                prop_assert!(remnant.offset >= 1024);
            }
        }
    }
}
