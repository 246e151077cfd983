//! The JSON shapes of key versions that the keyring file
//! ([`super::format`], `kube-kms-keyring/v1`) and export bundles
//! ([`super::bundle`], `kube-kms-bundle/v1`) share: one document (`format`,
//! the file's `generation`, `versions`) and one version record. Each format
//! checks what it allows on top (a bundle has no `generation` nor
//! `disabled_at`, and every version has `material`).
//!
//! Key material is read as [`MaterialText`], borrowed from the caller's
//! (zeroizing) buffer and never copied, and decoded by
//! [`decode_key_material`] straight into a [`Key256`].
use std::borrow::Cow;
use std::time::SystemTime;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::de::{self, Deserialize, Deserializer, Visitor};
use zeroize::Zeroizing;

use crate::secret::Key256;

/// Longest base64 text accepted for a material field (32 bytes encode to 44).
const MAX_MATERIAL_TEXT: usize = 64;

/// A keyring file or a bundle payload, as read.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DocumentIn<'a> {
    #[serde(borrow)]
    pub(super) format: Cow<'a, str>,
    /// The keyring file's write counter (bundles have none).
    #[serde(default)]
    pub(super) generation: Option<u64>,
    #[serde(borrow)]
    pub(super) versions: Vec<VersionIn<'a>>,
}

/// One version, as read.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct VersionIn<'a> {
    pub(super) id: u32,
    #[serde(borrow)]
    pub(super) key_id: Cow<'a, str>,
    #[serde(borrow)]
    pub(super) state: Cow<'a, str>,
    #[serde(borrow)]
    pub(super) created: Cow<'a, str>,
    #[serde(default, borrow)]
    pub(super) disabled_at: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub(super) material: Option<MaterialText<'a>>,
}

/// A keyring file or a bundle payload, as written.
#[derive(serde::Serialize)]
pub(super) struct DocumentOut<'a> {
    pub(super) format: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) generation: Option<u64>,
    pub(super) versions: Vec<VersionOut<'a>>,
}

/// One version, as written.
#[derive(serde::Serialize)]
pub(super) struct VersionOut<'a> {
    pub(super) id: u32,
    pub(super) key_id: &'a str,
    pub(super) state: &'static str,
    pub(super) created: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) disabled_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) material: Option<&'a str>,
}

/// Base64 key material, borrowed from the input buffer (never copied).
pub(super) struct MaterialText<'a>(pub(super) &'a str);

impl<'de: 'a, 'a> Deserialize<'de> for MaterialText<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MaterialVisitor;
        impl<'de> Visitor<'de> for MaterialVisitor {
            type Value = MaterialText<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a base64 string")
            }
            fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(MaterialText(text))
            }
            // Reached only for strings with JSON escapes: refuse without quoting them.
            fn visit_str<E: de::Error>(self, _text: &str) -> Result<Self::Value, E> {
                Err(E::custom(
                    "material must be plain base64 (standard alphabet, padded) without JSON escapes",
                ))
            }
        }
        deserializer.deserialize_str(MaterialVisitor)
    }
}

/// An RFC 3339 time as the keyring and bundles write it.
pub(super) fn parse_time(text: &str) -> Option<SystemTime> {
    if !text.is_ascii() {
        return None;
    }
    humantime::parse_rfc3339(text).ok()
}

/// 32 bytes of key material from standard padded base64, decoded into a
/// zeroizing buffer; `None` for anything else.
pub(super) fn decode_key_material(text: &str) -> Option<Key256> {
    if text.len() > MAX_MATERIAL_TEXT {
        return None;
    }
    let mut decoded = Zeroizing::new([0u8; 48]);
    let len = BASE64
        .decode_slice(text.as_bytes(), decoded.as_mut_slice())
        .ok()?;
    decoded.get(..len).and_then(Key256::from_slice)
}
