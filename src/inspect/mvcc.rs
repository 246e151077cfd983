//! etcd's MVCC records: revision keys of the `key` bucket (8-byte big-endian
//! main revision, `_`, 8-byte big-endian sub revision, and a trailing `t` for a
//! tombstone) and `mvccpb.KeyValue` decoding (key = 1, create_revision = 2,
//! mod_revision = 3, version = 4, value = 5, lease = 6). Used by the bbolt
//! source ([`super::source::bbolt`]); any source holding etcd's records
//! (a WAL's entries too) can decode them here.

use super::pb::{self, PbError};
use super::Revision;

/// A revision key or `mvccpb.KeyValue` record that does not parse.
#[derive(Debug, thiserror::Error)]
pub enum MvccError {
    /// A bucket key that is not a 17- or 18-byte revision.
    #[error("bad revision key of {len} bytes (expected 17, or 18 ending in 't')")]
    BadRevisionKey {
        /// Its length.
        len: usize,
    },
    /// A value that does not decode as `mvccpb.KeyValue`.
    #[error("bad KeyValue: {0}")]
    BadKeyValue(#[from] PbError),
    /// A KeyValue without its `key` field.
    #[error("KeyValue has no key")]
    MissingKey,
}

/// A decoded revision key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevisionKey {
    /// The revision.
    pub revision: Revision,
    /// True for a deletion.
    pub tombstone: bool,
}

/// Parses a `key` bucket key: `main(8, BE) '_' sub(8, BE) ['t']`.
pub fn parse_revision_key(bytes: &[u8]) -> Result<RevisionKey, MvccError> {
    let bad = MvccError::BadRevisionKey { len: bytes.len() };
    let tombstone = match bytes.len() {
        17 => false,
        18 if bytes.get(17) == Some(&b't') => true,
        _ => return Err(bad),
    };
    let (Some(main), Some(b'_'), Some(sub)) = (bytes.get(0..8), bytes.get(8), bytes.get(9..17))
    else {
        return Err(bad);
    };
    let mut main_bytes = [0u8; 8];
    main_bytes.copy_from_slice(main);
    let mut sub_bytes = [0u8; 8];
    sub_bytes.copy_from_slice(sub);
    Ok(RevisionKey {
        revision: Revision {
            main: i64::from_be_bytes(main_bytes),
            sub: i64::from_be_bytes(sub_bytes),
        },
        tombstone,
    })
}

/// Encodes a revision key (tests and tools).
pub fn revision_key(revision: Revision, tombstone: bool) -> Vec<u8> {
    let mut key = Vec::with_capacity(18);
    key.extend_from_slice(&revision.main.to_be_bytes());
    key.push(b'_');
    key.extend_from_slice(&revision.sub.to_be_bytes());
    if tombstone {
        key.push(b't');
    }
    key
}

/// `mvccpb.KeyValue`, borrowing from the encoded bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyValue<'a> {
    /// The etcd key.
    pub key: &'a [u8],
    /// Revision of the key's creation.
    pub create_revision: i64,
    /// Revision of this change.
    pub mod_revision: i64,
    /// Number of changes since creation.
    pub version: i64,
    /// The stored value (possibly secret: never print it).
    pub value: &'a [u8],
    /// Lease id, 0 if none.
    pub lease: i64,
}

/// Decodes a `mvccpb.KeyValue`; unknown fields are skipped.
pub fn decode_key_value(bytes: &[u8]) -> Result<KeyValue<'_>, MvccError> {
    let mut kv = KeyValue::default();
    let mut has_key = false;
    for field in pb::Reader::new(bytes) {
        let field = field?;
        match field.number {
            1 => {
                kv.key = field.bytes()?;
                has_key = true;
            }
            2 => kv.create_revision = field.int64()?,
            3 => kv.mod_revision = field.int64()?,
            4 => kv.version = field.int64()?,
            5 => kv.value = field.bytes()?,
            6 => kv.lease = field.int64()?,
            _ => {}
        }
    }
    if !has_key || kv.key.is_empty() {
        return Err(MvccError::MissingKey);
    }
    Ok(kv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::pb::encode;

    #[test]
    fn revision_keys_round_trip() {
        let revision = Revision { main: 42, sub: 3 };
        let key = revision_key(revision, false);
        assert_eq!(key.len(), 17);
        assert_eq!(
            parse_revision_key(&key).unwrap(),
            RevisionKey {
                revision,
                tombstone: false
            }
        );
        let tomb = revision_key(revision, true);
        assert!(parse_revision_key(&tomb).unwrap().tombstone);
        assert!(parse_revision_key(&tomb[..16]).is_err());
        let mut bad = tomb.clone();
        bad[17] = b'x';
        assert!(parse_revision_key(&bad).is_err());
        bad = key.clone();
        bad[8] = b'-';
        assert!(parse_revision_key(&bad).is_err());
    }

    #[test]
    fn key_value_decodes_and_requires_key() {
        let mut bytes = Vec::new();
        encode::bytes_field(&mut bytes, 1, b"/registry/secrets/a/b");
        encode::varint_field(&mut bytes, 2, 5);
        encode::varint_field(&mut bytes, 3, 7);
        encode::varint_field(&mut bytes, 4, 2);
        encode::bytes_field(&mut bytes, 5, b"k8s\0");
        encode::varint_field(&mut bytes, 6, 99);
        encode::varint_field(&mut bytes, 15, 1);
        let kv = decode_key_value(&bytes).unwrap();
        assert_eq!(kv.key, b"/registry/secrets/a/b");
        assert_eq!(
            (kv.create_revision, kv.mod_revision, kv.version, kv.lease),
            (5, 7, 2, 99)
        );
        assert_eq!(kv.value, b"k8s\0");
        let mut no_key = Vec::new();
        encode::bytes_field(&mut no_key, 5, b"x");
        assert!(matches!(
            decode_key_value(&no_key),
            Err(MvccError::MissingKey)
        ));
    }
}
