//! The bytes kube-kms stores for a seed wrapped by AWS KMS, and the
//! encryption context that binds them to a key_id.
//!
//! Format v1: `0xA1 || CiphertextBlob` where `CiphertextBlob` is what KMS
//! Encrypt returned (opaque; it names the KMS key internally). The leading
//! byte tells this format apart from the file keyring's (`0x01`) and leaves
//! room for a v2. The whole value is at most [`MAX_WRAPPED_LEN`] bytes, the
//! limit kube-apiserver puts on an Encrypt response's ciphertext.
//!
//! The encryption context (KMS's associated data, logged in CloudTrail, not
//! secret) is `{"kube-kms:key-id": KEY_ID, "kube-kms:format": "dek-seed/v1"}`:
//! a blob presented under any other key_id, or produced by anyone calling
//! `kms:Encrypt` on the same KMS key without this context, fails to decrypt.

/// First byte of a v1 wrapped seed.
pub const FORMAT_V1: u8 = 0xA1;
/// Largest wrapped seed kube-apiserver accepts.
pub const MAX_WRAPPED_LEN: usize = 1024;
/// Largest plaintext wrapped. kube-apiserver sends 32-byte seeds; KMS itself
/// takes up to 4 KiB, but its ciphertext must still fit in [`MAX_WRAPPED_LEN`].
pub const MAX_PLAINTEXT_LEN: usize = 512;
/// Encryption context key naming the kube-kms key_id.
pub const CONTEXT_KEY_ID: &str = "kube-kms:key-id";
/// Encryption context key naming what is wrapped and how it is framed.
pub const CONTEXT_FORMAT: &str = "kube-kms:format";
/// The value of [`CONTEXT_FORMAT`] for format v1.
pub const CONTEXT_FORMAT_V1: &str = "dek-seed/v1";

/// Why bytes are not a wrapped seed of this format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    /// Too short to hold the format byte and a blob.
    #[error("wrapped seed is {len} bytes: too short")]
    TooShort {
        /// Bytes received.
        len: usize,
    },
    /// Longer than kube-apiserver ever stores.
    #[error("wrapped seed is {len} bytes, more than {MAX_WRAPPED_LEN}")]
    TooLong {
        /// Bytes received.
        len: usize,
    },
    /// The first byte names no format this version knows.
    #[error(
        "wrapped seed starts with 0x{found:02x}, not the AWS KMS format byte 0x{FORMAT_V1:02x}"
    )]
    UnknownFormat {
        /// The byte found.
        found: u8,
    },
}

/// Frames a KMS CiphertextBlob; fails if the result would not fit.
pub fn frame(ciphertext_blob: &[u8]) -> Result<Vec<u8>, BlobError> {
    let len = ciphertext_blob.len() + 1;
    if ciphertext_blob.is_empty() {
        return Err(BlobError::TooShort { len });
    }
    if len > MAX_WRAPPED_LEN {
        return Err(BlobError::TooLong { len });
    }
    let mut out = Vec::with_capacity(len);
    out.push(FORMAT_V1);
    out.extend_from_slice(ciphertext_blob);
    Ok(out)
}

/// The KMS CiphertextBlob inside a framed wrapped seed.
pub fn unframe(wrapped: &[u8]) -> Result<&[u8], BlobError> {
    if wrapped.len() > MAX_WRAPPED_LEN {
        return Err(BlobError::TooLong { len: wrapped.len() });
    }
    match wrapped.split_first() {
        Some((&FORMAT_V1, blob)) if !blob.is_empty() => Ok(blob),
        Some((&FORMAT_V1, _)) | None => Err(BlobError::TooShort { len: wrapped.len() }),
        Some((&found, _)) => Err(BlobError::UnknownFormat { found }),
    }
}

/// The encryption context for a seed under `key_id`, as (key, value) pairs.
pub fn encryption_context(key_id: &str) -> [(&'static str, String); 2] {
    [
        (CONTEXT_KEY_ID, key_id.to_owned()),
        (CONTEXT_FORMAT, CONTEXT_FORMAT_V1.to_owned()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trip_and_bounds() {
        let framed = frame(b"blob").unwrap();
        assert_eq!(framed, b"\xa1blob");
        assert_eq!(unframe(&framed).unwrap(), b"blob");
        assert_eq!(frame(b""), Err(BlobError::TooShort { len: 1 }));
        assert!(frame(&[7u8; MAX_WRAPPED_LEN - 1]).is_ok());
        assert_eq!(
            frame(&[7u8; MAX_WRAPPED_LEN]),
            Err(BlobError::TooLong {
                len: MAX_WRAPPED_LEN + 1
            })
        );
        assert_eq!(unframe(b""), Err(BlobError::TooShort { len: 0 }));
        assert_eq!(unframe(b"\xa1"), Err(BlobError::TooShort { len: 1 }));
        assert_eq!(
            unframe(b"\x01abc"),
            Err(BlobError::UnknownFormat { found: 1 })
        );
        assert!(matches!(
            unframe(&[FORMAT_V1; MAX_WRAPPED_LEN + 1]),
            Err(BlobError::TooLong { .. })
        ));
    }

    #[test]
    fn context_binds_the_key_id_and_format() {
        let context = encryption_context("kk-aws-v1-abc");
        assert_eq!(context[0], (CONTEXT_KEY_ID, "kk-aws-v1-abc".to_owned()));
        assert_eq!(context[1], (CONTEXT_FORMAT, "dek-seed/v1".to_owned()));
    }

    proptest::proptest! {
        /// Any bytes either unframe to a suffix of themselves or are refused; never a panic.
        #[test]
        fn unframe_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1100)) {
            if let Ok(blob) = unframe(&bytes) {
                proptest::prop_assert_eq!(blob, &bytes[1..]);
            }
        }
    }
}
