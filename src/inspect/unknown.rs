//! kube-apiserver's `runtime.Unknown`, the message after the `k8s\0` magic of
//! a plaintext protobuf value: `typeMeta = 1 {apiVersion = 1, kind = 2}`,
//! `raw = 2`, `contentEncoding = 3`, `contentType = 4`.
//!
//! The one reader of that message for the auditor: the classifier (which
//! wants the kind whatever else the value holds), the decrypted-object check
//! (which wants every field to be one the schema declares) and the residue
//! scan (which finds an envelope inside free pages, where the bytes after it
//! are not its own) all read it here. Borrowed, zero-copy, never panics.

use super::pb::{self, PbError};

/// A `TypeMeta`, borrowed from the message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TypeMeta<'a> {
    /// `apiVersion` (field 1), the last one when repeated.
    pub api_version: Option<&'a [u8]>,
    /// `kind` (field 2), the last one when repeated.
    pub kind: Option<&'a [u8]>,
    /// Every field was `apiVersion` or `kind` (no unknown fields).
    pub conforms: bool,
}

/// Reads a `TypeMeta` message. An error when the protobuf does not parse or
/// `apiVersion` / `kind` is not length-delimited; unknown fields are
/// tolerated and recorded in [`TypeMeta::conforms`].
pub fn type_meta(bytes: &[u8]) -> Result<TypeMeta<'_>, PbError> {
    let mut meta = TypeMeta {
        conforms: true,
        ..TypeMeta::default()
    };
    for field in pb::Reader::new(bytes) {
        let field = field?;
        match field.number {
            1 => meta.api_version = Some(field.bytes()?),
            2 => meta.kind = Some(field.bytes()?),
            _ => meta.conforms = false,
        }
    }
    Ok(meta)
}

/// A `runtime.Unknown`, borrowed from the message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unknown<'a> {
    /// `typeMeta.apiVersion`; a repeated `typeMeta` merges, as protobuf does.
    pub api_version: Option<&'a [u8]>,
    /// `typeMeta.kind`; a repeated `typeMeta` merges, as protobuf does.
    pub kind: Option<&'a [u8]>,
    /// `raw`, the object itself, the last one when repeated.
    pub raw: Option<&'a [u8]>,
    /// Every field (here and in `typeMeta`) is one the schema declares, with
    /// the declared wire type.
    pub conforms: bool,
}

/// Reads a `runtime.Unknown` (the bytes after `k8s\0`). An error when the
/// protobuf does not parse or `typeMeta` (or its `apiVersion` / `kind`) is not
/// length-delimited; anything else off-schema is recorded in
/// [`Unknown::conforms`].
pub fn parse(unknown: &[u8]) -> Result<Unknown<'_>, PbError> {
    let mut result = Unknown {
        conforms: true,
        ..Unknown::default()
    };
    for field in pb::Reader::new(unknown) {
        let field = field?;
        match field.number {
            1 => {
                let meta = type_meta(field.bytes()?)?;
                result.api_version = meta.api_version.or(result.api_version);
                result.kind = meta.kind.or(result.kind);
                result.conforms &= meta.conforms;
            }
            2 => match field.bytes() {
                Ok(raw) => result.raw = Some(raw),
                Err(_) => result.conforms = false,
            },
            3 | 4 => result.conforms &= field.bytes().is_ok(),
            _ => result.conforms = false,
        }
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::pb::encode;

    fn type_meta_bytes(api_version: &[u8], kind: &[u8]) -> Vec<u8> {
        let mut meta = Vec::new();
        encode::bytes_field(&mut meta, 1, api_version);
        encode::bytes_field(&mut meta, 2, kind);
        meta
    }

    #[test]
    fn reads_a_well_formed_unknown() {
        let mut unknown = Vec::new();
        encode::bytes_field(&mut unknown, 1, &type_meta_bytes(b"v1", b"Secret"));
        encode::bytes_field(&mut unknown, 2, b"\x0a\x00");
        encode::bytes_field(&mut unknown, 4, b"application/vnd.kubernetes.protobuf");
        let parsed = parse(&unknown).unwrap();
        assert_eq!(parsed.api_version, Some(&b"v1"[..]));
        assert_eq!(parsed.kind, Some(&b"Secret"[..]));
        assert_eq!(parsed.raw, Some(&b"\x0a\x00"[..]));
        assert!(parsed.conforms);
    }

    #[test]
    fn repeated_type_meta_merges_and_off_schema_fields_are_recorded() {
        let mut first = Vec::new();
        encode::bytes_field(&mut first, 2, b"Secret");
        let mut second = Vec::new();
        encode::bytes_field(&mut second, 1, b"v1");
        encode::varint_field(&mut second, 3, 7);
        let mut unknown = Vec::new();
        encode::bytes_field(&mut unknown, 1, &first);
        encode::bytes_field(&mut unknown, 1, &second);
        let parsed = parse(&unknown).unwrap();
        assert_eq!(parsed.kind, Some(&b"Secret"[..]));
        assert_eq!(parsed.api_version, Some(&b"v1"[..]));
        assert!(!parsed.conforms, "typeMeta field 3 is not in the schema");

        let mut unknown = Vec::new();
        encode::bytes_field(&mut unknown, 1, &type_meta_bytes(b"v1", b"Secret"));
        encode::varint_field(&mut unknown, 2, 1);
        assert!(!parse(&unknown).unwrap().conforms, "raw must be bytes");
    }

    #[test]
    fn a_type_meta_that_is_not_bytes_is_an_error() {
        let mut unknown = Vec::new();
        encode::varint_field(&mut unknown, 1, 1);
        assert!(parse(&unknown).is_err());
        let mut meta = Vec::new();
        encode::varint_field(&mut meta, 2, 1);
        assert!(type_meta(&meta).is_err());
        assert!(parse(b"\x0a\x05ab").is_err(), "truncated");
    }
}
