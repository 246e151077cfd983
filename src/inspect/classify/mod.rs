//! Classification of one stored etcd value: plaintext (and in which
//! encoding/kind) or under which encryption provider and key.
//!
//! Owns the recognition of kube-apiserver's storage formats
//! (`../shared/spec/storage.md`, `../shared/spec/kms-v2.md`): the `k8s\0`
//! protobuf envelope (`runtime.Unknown`, for apiVersion/kind), JSON, CBOR, and
//! the `k8s:enc:<provider>:<version>:<name>:` prefixes of aescbc, aesgcm,
//! secretbox, kms v1 and kms v2 (whose `EncryptedObject` is decoded for key_id,
//! DEK source type and annotation keys). [`classify`] borrows everything from
//! the value and allocates nothing. Values are never decrypted or printed.
//!
//! Key names of aescbc/aesgcm/secretbox and kms v1 provider names may contain
//! `:`, and without the EncryptionConfiguration nothing marks where the name
//! ends. Rule used here: the name ends at the first `:` after which the rest is
//! a structurally valid payload for that provider (aescbc: IV + whole AES
//! blocks, at least 32 bytes; aesgcm: at least nonce + tag, 28 bytes;
//! secretbox: at least nonce + tag, 40 bytes; kms v1: a 2-byte DEK length that
//! fits, followed by at least 28 bytes). Names without `:` (the usual case) are
//! therefore always right; a name with `:` is right for aescbc and kms v1 unless
//! the bytes after one of its colons happen to fit that structure, and for
//! aesgcm/secretbox it is cut at its first `:`. [`Classifier::with_names`] takes
//! the configured names and matches them exactly first. kms v2 provider names
//! cannot contain `:` (kube-apiserver rejects them).

use super::pb;
use super::unknown;

/// Which provider wrote a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Provider {
    /// No encryption (the `identity` provider, or encryption never configured).
    Identity,
    /// `k8s:enc:aescbc:v1:`.
    Aescbc,
    /// `k8s:enc:aesgcm:v1:`.
    Aesgcm,
    /// `k8s:enc:secretbox:v1:`.
    Secretbox,
    /// `k8s:enc:kms:v1:`.
    KmsV1,
    /// `k8s:enc:kms:v2:`.
    KmsV2,
    /// A `k8s:enc:` value that does not parse.
    Malformed,
}

impl Provider {
    /// All providers, in report order.
    pub const ALL: [Provider; 7] = [
        Provider::Identity,
        Provider::Aescbc,
        Provider::Aesgcm,
        Provider::Secretbox,
        Provider::KmsV1,
        Provider::KmsV2,
        Provider::Malformed,
    ];

    /// The label used in reports and in `--require-provider`.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Identity => "identity",
            Provider::Aescbc => "aescbc",
            Provider::Aesgcm => "aesgcm",
            Provider::Secretbox => "secretbox",
            Provider::KmsV1 => "kms-v1",
            Provider::KmsV2 => "kms-v2",
            Provider::Malformed => "malformed",
        }
    }

    /// Parses a label as printed by [`Provider::as_str`] (also `kms` for kms-v2,
    /// `none`/`plaintext` for identity).
    pub fn parse(label: &str) -> Option<Self> {
        Some(match label {
            "identity" | "none" | "plaintext" => Provider::Identity,
            "aescbc" => Provider::Aescbc,
            "aesgcm" => Provider::Aesgcm,
            "secretbox" => Provider::Secretbox,
            "kms-v1" | "kmsv1" => Provider::KmsV1,
            "kms-v2" | "kmsv2" | "kms" => Provider::KmsV2,
            "malformed" => Provider::Malformed,
            _ => return None,
        })
    }

    /// True for the providers that encrypt.
    pub fn is_encrypted(self) -> bool {
        !matches!(self, Provider::Identity | Provider::Malformed)
    }
}

/// How a plaintext value is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Encoding {
    /// `k8s\0` + `runtime.Unknown` (built-in types).
    Protobuf,
    /// JSON text (custom resources).
    Json,
    /// CBOR with the self-describe tag `d9 d9 f7`.
    Cbor,
    /// Anything else without a `k8s:enc:` prefix (still plaintext).
    Other,
}

impl Encoding {
    /// Label for reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Protobuf => "protobuf",
            Encoding::Json => "json",
            Encoding::Cbor => "cbor",
            Encoding::Other => "other",
        }
    }
}

/// What a kms v2 `encryptedDEKSource` wraps: the one type shared with
/// [`crate::envelope`], which opens the data.
pub use crate::envelope::DekSourceType;

/// Why a `k8s:enc:` value is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Malformation {
    /// `k8s:enc:` followed by an unknown provider/version.
    UnknownPrefix,
    /// No `<name>:` followed by a plausible payload.
    NoName,
    /// The kms v2 EncryptedObject is not valid protobuf.
    KmsV2NotProtobuf,
    /// The kms v2 EncryptedObject has no (or an empty) keyID.
    KmsV2EmptyKeyId,
    /// keyID longer than 1 KiB or not UTF-8.
    KmsV2BadKeyId,
    /// No encryptedData.
    KmsV2NoData,
    /// No encryptedDEKSource, or longer than 1 KiB.
    KmsV2BadDekSource,
    /// An encryptedDEKSourceType other than 0 or 1.
    KmsV2UnknownDekSourceType,
    /// Annotations over 32 KiB, or a key that is not a DNS name.
    KmsV2BadAnnotations,
}

impl Malformation {
    /// Short description for reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Malformation::UnknownPrefix => "unknown k8s:enc: provider prefix",
            Malformation::NoName => "no key/provider name followed by a valid payload",
            Malformation::KmsV2NotProtobuf => "kms v2 EncryptedObject does not decode",
            Malformation::KmsV2EmptyKeyId => "kms v2 EncryptedObject has an empty key_id",
            Malformation::KmsV2BadKeyId => "kms v2 key_id longer than 1 KiB or not UTF-8",
            Malformation::KmsV2NoData => "kms v2 EncryptedObject has no encryptedData",
            Malformation::KmsV2BadDekSource => {
                "kms v2 encryptedDEKSource missing or longer than 1 KiB"
            }
            Malformation::KmsV2UnknownDekSourceType => "kms v2 unknown encryptedDEKSourceType",
            Malformation::KmsV2BadAnnotations => "kms v2 annotations invalid",
        }
    }
}

/// The classification of one value. Borrowed strings point into the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Classification<'a> {
    /// The provider (identity for plaintext).
    pub provider: Option<Provider>,
    /// Encoding of a plaintext value.
    pub encoding: Option<Encoding>,
    /// Key name (aescbc/aesgcm/secretbox) or provider name (kms).
    pub name: Option<&'a [u8]>,
    /// kms v2 key_id.
    pub key_id: Option<&'a [u8]>,
    /// kms v2 DEK source type.
    pub dek_source_type: Option<DekSourceType>,
    /// Plaintext protobuf: `apiVersion` of the type meta.
    pub api_version: Option<&'a [u8]>,
    /// Plaintext protobuf: `kind` of the type meta.
    pub kind: Option<&'a [u8]>,
    /// kms v2: the EncryptedObject bytes, to list annotation keys from.
    pub encrypted_object: Option<&'a [u8]>,
    /// Why the value is malformed.
    pub malformation: Option<Malformation>,
}

impl<'a> Classification<'a> {
    /// The provider (identity when unset).
    pub fn provider(&self) -> Provider {
        self.provider.unwrap_or(Provider::Identity)
    }

    /// Annotation keys of a kms v2 EncryptedObject, in stored order.
    pub fn annotation_keys(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let object = self.encrypted_object.unwrap_or(&[]);
        pb::Reader::new(object)
            .map_while(Result::ok)
            .filter(|field| field.number == 4)
            .filter_map(|field| field.bytes().ok())
            .filter_map(|entry| {
                pb::Reader::new(entry)
                    .map_while(Result::ok)
                    .filter(|field| field.number == 1)
                    .filter_map(|field| field.bytes().ok())
                    .last()
            })
    }

    fn malformed(malformation: Malformation) -> Self {
        Self {
            provider: Some(Provider::Malformed),
            malformation: Some(malformation),
            ..Self::default()
        }
    }
}

/// The magic of the protobuf envelope.
pub const PROTOBUF_MAGIC: &[u8] = b"k8s\x00";
/// Self-described CBOR.
pub const CBOR_MAGIC: &[u8] = &[0xd9, 0xd9, 0xf7];
const ENC_PREFIX: &[u8] = b"k8s:enc:";
const MAX_KEY_ID: usize = 1024;
const MAX_DEK_SOURCE: usize = 1024;
const MAX_ANNOTATIONS: usize = 32 * 1024;

/// Classifies values; optionally knows the configured key/provider names so
/// names with `:` are matched exactly (see the module doc).
#[derive(Debug, Clone, Default)]
pub struct Classifier {
    names: Vec<Vec<u8>>,
}

impl Classifier {
    /// A classifier that matches the given names exactly before applying the
    /// structural rule.
    pub fn with_names<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        let mut names: Vec<Vec<u8>> = names.into_iter().map(|s| s.as_ref().to_vec()).collect();
        // Longest first, so "a:b" wins over "a".
        names.sort_by_key(|name| std::cmp::Reverse(name.len()));
        Self { names }
    }

    /// Classifies `value` (see the module doc).
    pub fn classify<'a>(&self, value: &'a [u8]) -> Classification<'a> {
        let Some(rest) = value.strip_prefix(ENC_PREFIX) else {
            return classify_plaintext(value);
        };
        let (provider, rest) = if let Some(rest) = rest.strip_prefix(b"aescbc:v1:") {
            (Provider::Aescbc, rest)
        } else if let Some(rest) = rest.strip_prefix(b"aesgcm:v1:") {
            (Provider::Aesgcm, rest)
        } else if let Some(rest) = rest.strip_prefix(b"secretbox:v1:") {
            (Provider::Secretbox, rest)
        } else if let Some(rest) = rest.strip_prefix(b"kms:v1:") {
            (Provider::KmsV1, rest)
        } else if let Some(rest) = rest.strip_prefix(b"kms:v2:") {
            (Provider::KmsV2, rest)
        } else {
            return Classification::malformed(Malformation::UnknownPrefix);
        };
        if provider == Provider::KmsV2 {
            return classify_kms_v2(rest);
        }
        let Some((name, _payload)) = self.split_name(provider, rest) else {
            return Classification::malformed(Malformation::NoName);
        };
        Classification {
            provider: Some(provider),
            name: Some(name),
            ..Classification::default()
        }
    }

    fn split_name<'a>(&self, provider: Provider, rest: &'a [u8]) -> Option<(&'a [u8], &'a [u8])> {
        for known in &self.names {
            if let Some(payload) = rest
                .strip_prefix(known.as_slice())
                .and_then(|after| after.strip_prefix(b":"))
            {
                if payload_fits(provider, payload) {
                    return Some((rest.get(..known.len())?, payload));
                }
            }
        }
        let mut start = 0;
        while let Some(colon) = rest.get(start..)?.iter().position(|&b| b == b':') {
            let at = start + colon;
            if at > 0 {
                let payload = rest.get(at + 1..)?;
                if payload_fits(provider, payload) {
                    return Some((rest.get(..at)?, payload));
                }
            }
            start = at + 1;
        }
        None
    }
}

/// Classifies `value` with no configured names.
pub fn classify(value: &[u8]) -> Classification<'_> {
    Classifier::default().classify(value)
}

/// Whether `payload` (after `<name>:`) has the provider's minimal structure.
fn payload_fits(provider: Provider, payload: &[u8]) -> bool {
    let len = payload.len();
    match provider {
        Provider::Aescbc => len >= 32 && len.is_multiple_of(16),
        Provider::Aesgcm => len >= 12 + 16,
        Provider::Secretbox => len >= 24 + 16,
        Provider::KmsV1 => match payload.get(..2) {
            Some(&[high, low]) => {
                let dek_len = usize::from(u16::from_be_bytes([high, low]));
                dek_len > 0 && len >= 2 + dek_len + 28
            }
            _ => false,
        },
        _ => false,
    }
}

fn classify_plaintext(value: &[u8]) -> Classification<'_> {
    let mut classification = Classification {
        provider: Some(Provider::Identity),
        ..Classification::default()
    };
    if let Some(unknown) = value.strip_prefix(PROTOBUF_MAGIC) {
        classification.encoding = Some(Encoding::Protobuf);
        if let Ok(unknown) = unknown::parse(unknown) {
            classification.api_version = unknown.api_version;
            classification.kind = unknown.kind;
        }
    } else if value.starts_with(CBOR_MAGIC) {
        classification.encoding = Some(Encoding::Cbor);
    } else if value
        .iter()
        .find(|byte| !byte.is_ascii_whitespace())
        .is_some_and(|&byte| byte == b'{')
    {
        classification.encoding = Some(Encoding::Json);
    } else {
        classification.encoding = Some(Encoding::Other);
    }
    classification
}

fn classify_kms_v2(rest: &[u8]) -> Classification<'_> {
    let Some(colon) = rest.iter().position(|&b| b == b':') else {
        return Classification::malformed(Malformation::NoName);
    };
    let (Some(name), Some(object)) = (rest.get(..colon), rest.get(colon + 1..)) else {
        return Classification::malformed(Malformation::NoName);
    };
    if name.is_empty() {
        return Classification::malformed(Malformation::NoName);
    }
    let mut result = match decode_encrypted_object(object) {
        Ok(decoded) => Classification {
            provider: Some(Provider::KmsV2),
            key_id: Some(decoded.key_id),
            dek_source_type: Some(decoded.dek_source_type),
            encrypted_object: Some(object),
            ..Classification::default()
        },
        Err(malformation) => Classification::malformed(malformation),
    };
    result.name = Some(name);
    result
}

/// The fields of a kms v2 `EncryptedObject`, borrowed from the stored value.
#[derive(Debug, Clone, Copy)]
pub struct EncryptedObject<'a> {
    /// `encryptedData`: the object sealed with the DEK (or a key derived from the seed).
    pub data: &'a [u8],
    /// `keyID`: the key_id the plugin returned (UTF-8, at most 1 KiB).
    pub key_id: &'a [u8],
    /// `encryptedDEKSource`: the plugin's ciphertext of the seed or DEK.
    pub dek_source: &'a [u8],
    /// The whole message, to iterate annotations with [`EncryptedObject::annotations`].
    pub object: &'a [u8],
    /// `encryptedDEKSourceType` (absent: AES_GCM_KEY).
    pub dek_source_type: DekSourceType,
}

impl<'a> EncryptedObject<'a> {
    /// The annotations `(key, value)` in stored order (the last entry wins for
    /// a repeated key, as in Go's map decoding; callers that need a map dedupe).
    pub fn annotations(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        pb::Reader::new(self.object)
            .map_while(Result::ok)
            .filter(|field| field.number == 4)
            .filter_map(|field| field.bytes().ok())
            .map(|entry| {
                let (mut key, mut value): (&[u8], &[u8]) = (&[], &[]);
                for inner in pb::Reader::new(entry).map_while(Result::ok) {
                    match (inner.number, inner.bytes()) {
                        (1, Ok(bytes)) => key = bytes,
                        (2, Ok(bytes)) => value = bytes,
                        _ => {}
                    }
                }
                (key, value)
            })
    }
}

/// Decodes and checks a kms v2 `EncryptedObject` (the bytes after
/// `k8s:enc:kms:v2:<name>:`) as kube-apiserver validates it.
pub fn decode_encrypted_object(object: &[u8]) -> Result<EncryptedObject<'_>, Malformation> {
    let mut data: &[u8] = &[];
    let mut key_id: &[u8] = &[];
    let mut dek_source: &[u8] = &[];
    let mut dek_type = 0u64;
    let mut annotations_size = 0usize;
    let not_protobuf = |_| Malformation::KmsV2NotProtobuf;
    for field in pb::Reader::new(object) {
        let field = field.map_err(not_protobuf)?;
        match field.number {
            1 => data = field.bytes().map_err(not_protobuf)?,
            2 => key_id = field.bytes().map_err(not_protobuf)?,
            3 => dek_source = field.bytes().map_err(not_protobuf)?,
            4 => {
                let entry = field.bytes().map_err(not_protobuf)?;
                let (mut key, mut value): (&[u8], &[u8]) = (&[], &[]);
                for inner in pb::Reader::new(entry) {
                    let inner = inner.map_err(not_protobuf)?;
                    match inner.number {
                        1 => key = inner.bytes().map_err(not_protobuf)?,
                        2 => value = inner.bytes().map_err(not_protobuf)?,
                        _ => {}
                    }
                }
                if !is_dns_subdomain(key) {
                    return Err(Malformation::KmsV2BadAnnotations);
                }
                annotations_size = annotations_size.saturating_add(key.len() + value.len());
            }
            5 => dek_type = field.varint().map_err(not_protobuf)?,
            _ => {}
        }
    }
    if key_id.is_empty() {
        return Err(Malformation::KmsV2EmptyKeyId);
    }
    if key_id.len() > MAX_KEY_ID || std::str::from_utf8(key_id).is_err() {
        return Err(Malformation::KmsV2BadKeyId);
    }
    if data.is_empty() {
        return Err(Malformation::KmsV2NoData);
    }
    if dek_source.is_empty() || dek_source.len() > MAX_DEK_SOURCE {
        return Err(Malformation::KmsV2BadDekSource);
    }
    if annotations_size >= MAX_ANNOTATIONS {
        return Err(Malformation::KmsV2BadAnnotations);
    }
    let dek_source_type = match dek_type {
        0 => DekSourceType::AesGcmKey,
        1 => DekSourceType::HkdfSha256XnonceAesGcmSeed,
        _ => return Err(Malformation::KmsV2UnknownDekSourceType),
    };
    Ok(EncryptedObject {
        data,
        key_id,
        dek_source,
        object,
        dek_source_type,
    })
}

/// RFC 1123 DNS subdomain: lowercase alphanumerics, `-` and `.`, labels of
/// 1..=63 starting and ending alphanumeric, at most 253 bytes.
fn is_dns_subdomain(name: &[u8]) -> bool {
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    name.split(|&b| b == b'.').all(|label| {
        let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        !label.is_empty()
            && label.len() <= 63
            && label.first().is_some_and(alnum)
            && label.last().is_some_and(alnum)
            && label.iter().all(|b| alnum(b) || *b == b'-')
    })
}

pub mod build;

#[cfg(test)]
mod tests {
    use super::build;
    use super::*;

    #[test]
    fn plaintext_protobuf_gives_kind() {
        let value = build::plaintext_protobuf("v1", "Secret", b"\x0a\x03abc");
        let c = classify(&value);
        assert_eq!(c.provider(), Provider::Identity);
        assert_eq!(c.encoding, Some(Encoding::Protobuf));
        assert_eq!(c.kind, Some(&b"Secret"[..]));
        assert_eq!(c.api_version, Some(&b"v1"[..]));
    }

    #[test]
    fn json_cbor_and_other_are_plaintext() {
        assert_eq!(classify(b" {\"a\":1}").encoding, Some(Encoding::Json));
        assert_eq!(
            classify(&[0xd9, 0xd9, 0xf7, 1]).encoding,
            Some(Encoding::Cbor)
        );
        assert_eq!(classify(b"hello").encoding, Some(Encoding::Other));
        assert_eq!(classify(b"").provider(), Provider::Identity);
    }

    #[test]
    fn kms_v2_fields_and_annotations_any_order() {
        let value = build::kms_v2(
            "kube-kms",
            "key-A",
            Some(1),
            &[("version.kms.example.io", b"1"), ("b.example.io", b"2")],
            &[1; 60],
        );
        let c = classify(&value);
        assert_eq!(c.provider(), Provider::KmsV2);
        assert_eq!(c.name, Some(&b"kube-kms"[..]));
        assert_eq!(c.key_id, Some(&b"key-A"[..]));
        assert_eq!(
            c.dek_source_type,
            Some(DekSourceType::HkdfSha256XnonceAesGcmSeed)
        );
        let keys: Vec<_> = c.annotation_keys().collect();
        assert_eq!(
            keys,
            vec![&b"version.kms.example.io"[..], &b"b.example.io"[..]]
        );
        // Missing field 5 means AES_GCM_KEY.
        let legacy = build::kms_v2("kube-kms", "key-A", None, &[], &[1; 60]);
        assert_eq!(
            classify(&legacy).dek_source_type,
            Some(DekSourceType::AesGcmKey)
        );
    }

    #[test]
    fn kms_v2_malformed_cases() {
        let empty_key_id = build::kms_v2("p", "", Some(1), &[], &[1; 40]);
        assert_eq!(
            classify(&empty_key_id).malformation,
            Some(Malformation::KmsV2EmptyKeyId)
        );
        let mut truncated = build::kms_v2("p", "k", Some(1), &[], &[1; 40]);
        truncated.truncate(truncated.len() - 70);
        assert_eq!(
            classify(&truncated).malformation,
            Some(Malformation::KmsV2NotProtobuf)
        );
        assert_eq!(
            classify(b"k8s:enc:kms:v2:p").malformation,
            Some(Malformation::NoName)
        );
        let bad_type = build::kms_v2("p", "k", Some(7), &[], &[1; 40]);
        assert_eq!(
            classify(&bad_type).malformation,
            Some(Malformation::KmsV2UnknownDekSourceType)
        );
        let bad_annotation = build::kms_v2("p", "k", Some(1), &[("Not_DNS", b"x")], &[1; 40]);
        assert_eq!(
            classify(&bad_annotation).malformation,
            Some(Malformation::KmsV2BadAnnotations)
        );
        assert_eq!(
            classify(b"k8s:enc:rot13:v1:x:abc").malformation,
            Some(Malformation::UnknownPrefix)
        );
        assert_eq!(
            classify(b"k8s:enc:kms:v2:p:").provider(),
            Provider::Malformed
        );
    }

    #[test]
    fn symmetric_names_including_colons() {
        let value = build::symmetric("aescbc", "key1", 48);
        let c = classify(&value);
        assert_eq!(
            (c.provider(), c.name),
            (Provider::Aescbc, Some(&b"key1"[..]))
        );
        // A colon inside an aescbc name: block alignment picks the right colon.
        let value = build::symmetric("aescbc", "team:key1", 64);
        assert_eq!(classify(&value).name, Some(&b"team:key1"[..]));
        // aesgcm cannot tell without the configuration...
        let value = build::symmetric("aesgcm", "team:key1", 40);
        assert_eq!(classify(&value).name, Some(&b"team"[..]));
        // ...and matches configured names exactly.
        let classifier = Classifier::with_names(["team:key1"]);
        assert_eq!(classifier.classify(&value).name, Some(&b"team:key1"[..]));
        let value = build::symmetric("secretbox", "k", 10);
        assert_eq!(classify(&value).malformation, Some(Malformation::NoName));
        let value = build::kms_v1("legacy:kms", 32, 48);
        let c = classify(&value);
        assert_eq!(
            (c.provider(), c.name),
            (Provider::KmsV1, Some(&b"legacy:kms"[..]))
        );
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let c = classify(&bytes);
            let _ = c.annotation_keys().count();
            let mut prefixed = b"k8s:enc:kms:v2:p:".to_vec();
            prefixed.extend_from_slice(&bytes);
            let _ = classify(&prefixed).annotation_keys().count();
            let mut prefixed = b"k8s\x00".to_vec();
            prefixed.extend_from_slice(&bytes);
            let _ = classify(&prefixed);
        }

        #[test]
        fn kms_v2_survives_reencoding(
            provider in "[a-z][a-z0-9-]{0,20}",
            key_id in "[A-Za-z0-9._-]{1,40}",
            dek in proptest::option::of(0u64..2),
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..100),
            annotation in proptest::option::of("[a-z]{1,10}\\.[a-z]{1,10}"),
        ) {
            let annotations: Vec<(&str, &[u8])> = annotation.iter().map(|key| (key.as_str(), &b"v"[..])).collect();
            let value = build::kms_v2(&provider, &key_id, dek, &annotations, &data);
            let c = classify(&value);
            proptest::prop_assert_eq!(c.provider(), Provider::KmsV2);
            proptest::prop_assert_eq!(c.name, Some(provider.as_bytes()));
            proptest::prop_assert_eq!(c.key_id, Some(key_id.as_bytes()));
            // Re-encode the same fields in reverse order: same classification.
            let object = c.encrypted_object.unwrap_or(&[]);
            let mut fields: Vec<_> = pb::Reader::new(object).map_while(Result::ok).collect();
            fields.reverse();
            let mut reordered = format!("k8s:enc:kms:v2:{provider}:").into_bytes();
            for field in fields {
                match field.value {
                    pb::FieldValue::Len(bytes) => pb::encode::bytes_field(&mut reordered, field.number, bytes),
                    pb::FieldValue::Varint(v) => pb::encode::varint_field(&mut reordered, field.number, v),
                    _ => {}
                }
            }
            let again = classify(&reordered);
            proptest::prop_assert_eq!(again.key_id, c.key_id);
            proptest::prop_assert_eq!(again.dek_source_type, c.dek_source_type);
            proptest::prop_assert_eq!(again.annotation_keys().count(), c.annotation_keys().count());
        }

        #[test]
        fn plaintext_kind_survives_reencoding(kind in "[A-Z][A-Za-z]{0,20}", raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..100)) {
            let value = build::plaintext_protobuf("v1", &kind, &raw);
            let c = classify(&value);
            proptest::prop_assert_eq!(c.kind, Some(kind.as_bytes()));
            // Raw first, type meta second: same kind.
            let mut type_meta = Vec::new();
            pb::encode::bytes_field(&mut type_meta, 2, kind.as_bytes());
            let mut swapped = b"k8s\x00".to_vec();
            pb::encode::bytes_field(&mut swapped, 2, &raw);
            pb::encode::bytes_field(&mut swapped, 1, &type_meta);
            proptest::prop_assert_eq!(classify(&swapped).kind, Some(kind.as_bytes()));
        }
    }
}
