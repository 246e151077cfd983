//! HKDF-SHA256 (RFC 5869) for the wrapped-seed format and KMS v2's seed mode.
//!
//! Backed by ring, whose SHA-256 uses the CPU's vector units: on machines
//! without SHA extensions the portable `sha2` implementation made HKDF the
//! largest single cost of an Encrypt or Decrypt call. Output goes straight
//! into the caller's (zeroizing) buffer, and [`extract`]'s PRK goes straight
//! into a [`Key256`] (no stack copy of ours is left behind).
//!
//! Not wiped: ring keeps no secret beyond a call, but it does not zeroize
//! either: the HMAC tag [`extract`] reads the PRK from, and the HMAC
//! inner/outer hash states that [`expand`] and [`extract_expand`] build from a
//! PRK, stay in the dead stack frame until later calls overwrite it. Wiping
//! them would mean replacing ring's SHA-256 with a slower one (see above).
use ring::hkdf::{KeyType, Prk, Salt, HKDF_SHA256};
use zeroize::Zeroizing;

use crate::secret::Key256;

/// The length of the output keying material, as ring wants it.
struct OutputLen(usize);

impl KeyType for OutputLen {
    fn len(&self) -> usize {
        self.0
    }
}

/// Why derivation failed: the only cases are lengths out of HKDF's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KdfError {
    /// More than 255 hash lengths of output, or a pseudorandom key shorter
    /// than the hash.
    #[error("HKDF-SHA256 length out of bounds")]
    Length,
}

/// HKDF-Extract(salt, ikm): the pseudorandom key, for a caller that expands
/// it many times (RFC 5869 §2.2: HMAC-SHA256 keyed with the salt).
pub fn extract(salt: &[u8], ikm: &[u8]) -> Key256 {
    let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, salt), ikm);
    // A plain `[u8; 32]` local handed to `from_array` is copied (arrays are
    // `Copy`) and survived the call; this one is wiped when it drops, and
    // `from_array` wipes the copy it receives.
    let mut prk = Zeroizing::new([0u8; 32]);
    for (out, byte) in prk.iter_mut().zip(tag.as_ref()) {
        *out = *byte;
    }
    Key256::from_array(*prk)
}

/// HKDF-Extract(salt, ikm) then HKDF-Expand(info) into `out`.
pub fn extract_expand(
    salt: &[u8],
    ikm: &[u8],
    info: &[u8],
    out: &mut [u8],
) -> Result<(), KdfError> {
    let prk = Salt::new(HKDF_SHA256, salt).extract(ikm);
    expand_into(&prk, info, out)
}

/// HKDF-Expand(prk, info) into `out`; `prk` must be at least 32 bytes
/// (RFC 5869 §2.3).
pub fn expand(prk: &[u8], info: &[u8], out: &mut [u8]) -> Result<(), KdfError> {
    if prk.len() < HKDF_SHA256.len() {
        return Err(KdfError::Length);
    }
    expand_into(&Prk::new_less_safe(HKDF_SHA256, prk), info, out)
}

fn expand_into(prk: &Prk, info: &[u8], out: &mut [u8]) -> Result<(), KdfError> {
    let infos = [info];
    let okm = prk
        .expand(&infos, OutputLen(out.len()))
        .map_err(|_| KdfError::Length)?;
    okm.fill(out).map_err(|_| KdfError::Length)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 5869, test case 1.
    #[test]
    fn rfc5869_case_1() {
        let ikm = [0x0b; 22];
        let salt = unhex("000102030405060708090a0b0c");
        let info = unhex("f0f1f2f3f4f5f6f7f8f9");
        let mut okm = [0u8; 42];
        extract_expand(&salt, &ikm, &info, &mut okm).unwrap();
        assert_eq!(
            okm.to_vec(),
            unhex("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")
        );
        let prk = unhex("077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5");
        let mut again = [0u8; 42];
        expand(&prk, &info, &mut again).unwrap();
        assert_eq!(again, okm);
        assert_eq!(extract(&salt, &ikm).expose_secret().as_slice(), prk);
    }

    #[test]
    fn bounds_are_refused() {
        let mut out = [0u8; 32];
        assert_eq!(expand(&[0u8; 31], b"", &mut out), Err(KdfError::Length));
        let mut huge = vec![0u8; 255 * 32 + 1];
        assert_eq!(
            extract_expand(b"s", b"k", b"", &mut huge),
            Err(KdfError::Length)
        );
    }
}
