//! The public key_id of a KEK version: `kk-v{N}-{16 lowercase hex digits}`.
//!
//! `N` is the version number; the hex digits are a fingerprint of the KEK:
//! `HKDF-Expand(HKDF-Extract(salt = "kube-kms/v1/key-id", ikm = KEK), info = "fingerprint", L = 8)`.
//! The fingerprint is a PRF output under the key itself, so it reveals nothing
//! about the key, yet lets the loader check that a key_id belongs to its
//! material (a hand-edited or mixed-up file is caught). The version number
//! makes key_ids unique and stable: versions are never renumbered or reused,
//! and a destroyed version keeps its key_id. At most 4 + 10 + 1 + 16 = 31 bytes,
//! well under kube-apiserver's 1 KiB limit.
use hkdf::Hkdf;
use sha2::Sha256;

use crate::secret::Key256;

/// Every key_id starts with this.
pub const PREFIX: &str = "kk-v";
const FINGERPRINT_SALT: &[u8] = b"kube-kms/v1/key-id";
const FINGERPRINT_INFO: &[u8] = b"fingerprint";
/// Bytes of fingerprint in a key_id (16 hex digits).
pub const FINGERPRINT_LEN: usize = 8;

/// The fingerprint of a KEK.
pub fn fingerprint(kek: &Key256) -> [u8; FINGERPRINT_LEN] {
    let hkdf = Hkdf::<Sha256>::new(Some(FINGERPRINT_SALT), kek.expose_secret());
    let mut out = [0u8; FINGERPRINT_LEN];
    // 8 bytes is far below HKDF-SHA256's 8160-byte limit: expand cannot fail.
    if hkdf.expand(FINGERPRINT_INFO, &mut out).is_err() {
        out = [0u8; FINGERPRINT_LEN];
    }
    out
}

/// The key_id of version `id` holding `kek`.
pub fn for_version(id: u32, kek: &Key256) -> String {
    let mut key_id = format!("{PREFIX}{id}-");
    for byte in fingerprint(kek) {
        key_id.push_str(&format!("{byte:02x}"));
    }
    key_id
}

/// Splits a well-formed key_id into its version number and fingerprint hex.
/// Returns `None` unless it is exactly `kk-v{N}-{16 lowercase hex}` with `N`
/// a decimal without leading zeros in 1..=u32::MAX.
pub fn parse(key_id: &str) -> Option<(u32, &str)> {
    let rest = key_id.strip_prefix(PREFIX)?;
    let (number, hex) = rest.split_once('-')?;
    if number.is_empty() || number.starts_with('0') || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let id: u32 = number.parse().ok()?;
    if hex.len() != FINGERPRINT_LEN * 2
        || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return None;
    }
    Some((id, hex))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_and_stability() {
        let kek = Key256::from_array([0x11; 32]);
        let key_id = for_version(7, &kek);
        assert_eq!(key_id, for_version(7, &kek));
        assert_eq!(key_id.len(), "kk-v7-".len() + 16);
        let (id, hex) = parse(&key_id).unwrap();
        assert_eq!(id, 7);
        assert_eq!(hex, &key_id[6..]);
        assert!(!key_id.contains("1111"), "{key_id}");
    }

    /// Pinned (cross-checked with Python `cryptography` HKDF): the scheme is part of the file format.
    #[test]
    fn known_answer() {
        let kek = Key256::from_array([0x42; 32]);
        assert_eq!(for_version(1, &kek), "kk-v1-b8059f60457b6379");
    }

    #[test]
    fn different_keys_different_fingerprints() {
        let a = for_version(1, &Key256::from_array([1; 32]));
        let b = for_version(1, &Key256::from_array([2; 32]));
        assert_ne!(a, b);
    }

    #[test]
    fn parse_rejects_malformed() {
        for bad in [
            "",
            "kk-v",
            "kk-v1-",
            "kk-v0-0123456789abcdef",
            "kk-v01-0123456789abcdef",
            "kk-v1-0123456789ABCDEF",
            "kk-v1-0123456789abcde",
            "kk-v1-0123456789abcdef0",
            "kk-v-1-0123456789abcdef",
            "kk-v4294967296-0123456789abcdef",
            "xx-v1-0123456789abcdef",
            "kk-v1-0123456789abcdeg",
        ] {
            assert!(parse(bad).is_none(), "{bad:?} parsed");
        }
        assert_eq!(
            parse("kk-v4294967295-0123456789abcdef").map(|p| p.0),
            Some(u32::MAX)
        );
    }
}
