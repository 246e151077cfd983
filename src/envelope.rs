//! Opens stored values the way kube-apiserver's encryption providers wrote
//! them, and seals them the same way for tests and benchmarks that play the
//! apiserver: the two KMS v2 data layouts (HKDF seed mode and the older
//! AES_GCM_KEY mode), `aesgcm`, `aescbc` and `secretbox`.
//!
//! Where the provider uses associated data it is the etcd key, so a value
//! copied under another key does not open. Every failure is one coarse error:
//! which byte was wrong is nobody's business.
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes128Gcm, Aes256Gcm, AesGcm};
use zeroize::Zeroizing;

use crate::secret::SecretBytes;

/// Length of a KMS v2 DEK seed.
const SEED_LEN: usize = 32;
/// Length of the random HKDF info that prefixes a KMS v2 value in seed mode.
const KDF_INFO_LEN: usize = 32;
/// AES-GCM nonce length used by every provider here.
const GCM_NONCE_LEN: usize = 12;
/// AES-GCM tag length.
const GCM_TAG_LEN: usize = 16;
/// secretbox (XSalsa20-Poly1305) nonce length.
const SECRETBOX_NONCE_LEN: usize = 24;
/// AES block size, also the CBC IV length.
const AES_BLOCK_LEN: usize = 16;

/// How a KMS v2 `encryptedDEKSource` is used (`EncryptedObject.encryptedDEKSourceType`).
/// The one type for it in the crate (`inspect::classify` re-exports it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DekSourceType {
    /// The plugin wrapped an AES-256 key that encrypts the data directly (value 0,
    /// also what a missing field means).
    AesGcmKey,
    /// The plugin wrapped a 32-byte seed; each write derives its own key with
    /// HKDF-SHA256 from it (value 1, the default since Kubernetes 1.29).
    HkdfSha256XnonceAesGcmSeed,
}

impl DekSourceType {
    /// The protobuf enum number, or `None` for a number Kubernetes never wrote.
    pub fn from_proto(value: u64) -> Option<Self> {
        match value {
            0 => Some(Self::AesGcmKey),
            1 => Some(Self::HkdfSha256XnonceAesGcmSeed),
            _ => None,
        }
    }

    /// The name kube-apiserver's protobuf gives the value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AesGcmKey => "AES_GCM_KEY",
            Self::HkdfSha256XnonceAesGcmSeed => "HKDF_SHA256_XNONCE_AES_GCM_SEED",
        }
    }
}

/// Why a value did not open.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum EnvelopeError {
    /// The value is shorter than its format's fixed parts.
    #[error("the encrypted value is truncated")]
    Truncated,
    /// The key has a length the provider does not accept.
    #[error("the key has a length this provider does not accept")]
    BadKeyLength,
    /// Authentication or padding failed: a tampered value, a value moved to
    /// another etcd key, or the wrong key.
    #[error("the value did not decrypt: tampered, moved to another etcd key, or the wrong key")]
    OpenFailed,
    /// The operating system's random source failed.
    #[error("the random number generator failed")]
    Random,
}

/// Opens a KMS v2 `encryptedData` with the plaintext DEK or seed the plugin
/// unwrapped, using `etcd_key` as associated data.
pub fn open_kms_v2(
    source_type: DekSourceType,
    dek_source: &[u8],
    encrypted_data: &[u8],
    etcd_key: &[u8],
) -> Result<SecretBytes, EnvelopeError> {
    match source_type {
        DekSourceType::AesGcmKey => open_aesgcm(dek_source, encrypted_data, etcd_key),
        DekSourceType::HkdfSha256XnonceAesGcmSeed => {
            if encrypted_data.len() < KDF_INFO_LEN {
                return Err(EnvelopeError::Truncated);
            }
            let (info, sealed) = encrypted_data.split_at(KDF_INFO_LEN);
            let key = derive_write_key(dek_source, info)?;
            open_write_key(&key, sealed, etcd_key)
        }
    }
}

/// Opens `nonce(12) || ciphertext || tag(16)` under a per-write key of seed
/// mode, with ring's AES-GCM (AES-NI + CLMUL assembly: about 3x the
/// `aes-gcm` crate on the machines measured, and verification decrypts
/// every value of a scan). ring does not zeroize its key schedule; that
/// schedule comes from a key that opens this one value only and lives on
/// the caller's stack, where the next value's overwrites it. Long-lived
/// keys (a DEK in AES_GCM_KEY mode, `aesgcm` provider keys) stay with
/// [`open_aesgcm`], whose schedule is zeroized.
fn open_write_key(key: &[u8; 32], data: &[u8], aad: &[u8]) -> Result<SecretBytes, EnvelopeError> {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
    if data.len() < GCM_NONCE_LEN + GCM_TAG_LEN {
        return Err(EnvelopeError::Truncated);
    }
    let (nonce, sealed) = data.split_at(GCM_NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| EnvelopeError::Truncated)?;
    let key = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, key).map_err(|_| EnvelopeError::BadKeyLength)?,
    );
    // Decrypted in place in zeroizing memory: no plaintext copy elsewhere.
    let mut buffer = SecretBytes::copy_from(sealed);
    let opened_len = key
        .open_in_place(nonce, Aad::from(aad), buffer.expose_secret_mut())
        .map_err(|_| EnvelopeError::OpenFailed)?
        .len();
    buffer.expose_secret_mut().truncate(opened_len);
    Ok(buffer)
}

/// Seals `plaintext` as kube-apiserver does in KMS v2 seed mode: fresh random
/// info and nonce, per-write key from the seed. For tests and benchmarks that
/// play the apiserver.
pub fn seal_kms_v2_seed(
    seed: &[u8],
    plaintext: &[u8],
    etcd_key: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    let mut info = [0u8; KDF_INFO_LEN];
    let mut nonce = [0u8; GCM_NONCE_LEN];
    getrandom::getrandom(&mut info).map_err(|_| EnvelopeError::Random)?;
    getrandom::getrandom(&mut nonce).map_err(|_| EnvelopeError::Random)?;
    let key = derive_write_key(seed, &info)?;
    let cipher =
        Aes256Gcm::new_from_slice(key.as_slice()).map_err(|_| EnvelopeError::BadKeyLength)?;
    let sealed = cipher
        .encrypt(
            (&nonce).into(),
            Payload {
                msg: plaintext,
                aad: etcd_key,
            },
        )
        .map_err(|_| EnvelopeError::OpenFailed)?;
    let mut out = Vec::with_capacity(KDF_INFO_LEN + GCM_NONCE_LEN + sealed.len());
    out.extend_from_slice(&info);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// The per-write key of seed mode: HKDF-Expand(SHA-256, PRK = seed, info, 32).
/// kube-apiserver accepts only 32-byte seeds; this runs once per value
/// verified ([`crate::kdf`] says why it is ring's HKDF).
fn derive_write_key(seed: &[u8], info: &[u8]) -> Result<Zeroizing<[u8; 32]>, EnvelopeError> {
    if seed.len() != SEED_LEN {
        return Err(EnvelopeError::BadKeyLength);
    }
    let mut key = Zeroizing::new([0u8; 32]);
    crate::kdf::expand(seed, info, key.as_mut_slice()).map_err(|_| EnvelopeError::BadKeyLength)?;
    Ok(key)
}

/// Opens `nonce(12) || ciphertext || tag(16)` under an AES-128/192/256 key
/// (the `aesgcm` provider and KMS v2's AES_GCM_KEY mode).
pub fn open_aesgcm(key: &[u8], data: &[u8], aad: &[u8]) -> Result<SecretBytes, EnvelopeError> {
    if data.len() < GCM_NONCE_LEN + GCM_TAG_LEN {
        return Err(EnvelopeError::Truncated);
    }
    let (nonce, sealed) = data.split_at(GCM_NONCE_LEN);
    let payload = Payload { msg: sealed, aad };
    let opened = match key.len() {
        16 => Aes128Gcm::new_from_slice(key).map(|c| c.decrypt(nonce.into(), payload)),
        24 => AesGcm::<aes::Aes192, aes_gcm::aead::consts::U12>::new_from_slice(key)
            .map(|c| c.decrypt(nonce.into(), payload)),
        32 => Aes256Gcm::new_from_slice(key).map(|c| c.decrypt(nonce.into(), payload)),
        _ => return Err(EnvelopeError::BadKeyLength),
    };
    match opened {
        Ok(Ok(plaintext)) => Ok(SecretBytes::new(plaintext)),
        Ok(Err(_)) => Err(EnvelopeError::OpenFailed),
        Err(_) => Err(EnvelopeError::BadKeyLength),
    }
}

/// Opens `IV(16) || AES-CBC ciphertext` with PKCS#7 padding (the `aescbc`
/// provider: no MAC, so a wrong key is caught only by padding or by the
/// caller's check of what comes out).
pub fn open_aescbc(key: &[u8], data: &[u8]) -> Result<SecretBytes, EnvelopeError> {
    use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, KeyIvInit};
    if data.len() < 2 * AES_BLOCK_LEN || !data.len().is_multiple_of(AES_BLOCK_LEN) {
        return Err(EnvelopeError::Truncated);
    }
    let (iv, ciphertext) = data.split_at(AES_BLOCK_LEN);
    let mut buffer = SecretBytes::copy_from(ciphertext);
    let opened_len = {
        let buf = buffer.expose_secret_mut();
        let opened = match key.len() {
            16 => cbc::Decryptor::<aes::Aes128>::new_from_slices(key, iv)
                .map(|d| d.decrypt_padded_mut::<Pkcs7>(buf).map(<[u8]>::len)),
            24 => cbc::Decryptor::<aes::Aes192>::new_from_slices(key, iv)
                .map(|d| d.decrypt_padded_mut::<Pkcs7>(buf).map(<[u8]>::len)),
            32 => cbc::Decryptor::<aes::Aes256>::new_from_slices(key, iv)
                .map(|d| d.decrypt_padded_mut::<Pkcs7>(buf).map(<[u8]>::len)),
            _ => return Err(EnvelopeError::BadKeyLength),
        };
        match opened {
            Ok(Ok(len)) => len,
            Ok(Err(_)) => return Err(EnvelopeError::OpenFailed),
            Err(_) => return Err(EnvelopeError::BadKeyLength),
        }
    };
    buffer.expose_secret_mut().truncate(opened_len);
    Ok(buffer)
}

/// Opens `nonce(24) || tag(16) || ciphertext` (NaCl secretbox, the
/// `secretbox` provider) under a 32-byte key.
pub fn open_secretbox(key: &[u8], data: &[u8]) -> Result<SecretBytes, EnvelopeError> {
    use crypto_secretbox::aead::{Aead as _, KeyInit as _};
    use crypto_secretbox::XSalsa20Poly1305;
    if data.len() < SECRETBOX_NONCE_LEN + GCM_TAG_LEN {
        return Err(EnvelopeError::Truncated);
    }
    let cipher = XSalsa20Poly1305::new_from_slice(key).map_err(|_| EnvelopeError::BadKeyLength)?;
    let (nonce, sealed) = data.split_at(SECRETBOX_NONCE_LEN);
    cipher
        .decrypt(nonce.into(), sealed)
        .map(SecretBytes::new)
        .map_err(|_| EnvelopeError::OpenFailed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("test vector is hex"))
            .collect()
    }

    // Known answers from Kubernetes' TestExtendedNonceGCMLegacyDataCompatibility
    // and TestGCMLegacyDataCompatibility (see ../shared/spec/kms-v2.md).
    const SEED: &str = "5d40323a820ff95561675e3b95e81867c5fdd561d35a88a2d08b08aa9d4fcf5c";
    const SEED_DATA: &str = "2442759e33945fbad709db577a0f037fd8a709fc76979b8942209debcecb9d57efe3d6ff6a1ef6ee9a5003b9833b3043cec1e47b35175b151107a8d2416b0e296bbf66b5d102fcefdf9a78f293d271";
    const GCM_DATA: &str = "9f27c8fcea8a58c467d8e437dbf2d85955f9b4bd912f4ef967d788a0cb07797dac0a3f0a0845605ca85ac8562b4ae1";

    #[test]
    fn seed_mode_known_answer() {
        let data = hex(SEED_DATA);
        let key = derive_write_key(&hex(SEED), &data[..32]).unwrap();
        assert_eq!(
            key.as_slice(),
            hex("6e58b7659c304b0c382f42f16bd700465def1dead80bf6f1bf1d52073bdb0c00").as_slice()
        );
        let opened = open_kms_v2(
            DekSourceType::HkdfSha256XnonceAesGcmSeed,
            &hex(SEED),
            &data,
            b"bamboo",
        )
        .unwrap();
        assert_eq!(opened.expose_secret(), b"pandas are the best");
    }

    #[test]
    fn aes_gcm_key_mode_known_answer() {
        let opened = open_kms_v2(
            DekSourceType::AesGcmKey,
            b"snorlax_awesomes",
            &hex(GCM_DATA),
            b"bamboo",
        )
        .unwrap();
        assert_eq!(opened.expose_secret(), b"pandas are the best");
    }

    #[test]
    fn every_bit_flip_truncation_and_other_aad_fails() {
        let seed = hex(SEED);
        let data = hex(SEED_DATA);
        for i in 0..data.len() * 8 {
            let mut flipped = data.clone();
            flipped[i / 8] ^= 1 << (i % 8);
            assert!(open_kms_v2(
                DekSourceType::HkdfSha256XnonceAesGcmSeed,
                &seed,
                &flipped,
                b"bamboo"
            )
            .is_err());
        }
        for len in 0..data.len() {
            assert!(open_kms_v2(
                DekSourceType::HkdfSha256XnonceAesGcmSeed,
                &seed,
                &data[..len],
                b"bamboo"
            )
            .is_err());
        }
        assert_eq!(
            open_kms_v2(
                DekSourceType::HkdfSha256XnonceAesGcmSeed,
                &seed,
                &data,
                b"bamboO"
            )
            .unwrap_err(),
            EnvelopeError::OpenFailed
        );
    }

    #[test]
    fn seal_then_open_round_trips_and_is_randomized() {
        let seed = [7u8; 32];
        let a = seal_kms_v2_seed(&seed, b"k8s\0object", b"/registry/secrets/a/b").unwrap();
        let b = seal_kms_v2_seed(&seed, b"k8s\0object", b"/registry/secrets/a/b").unwrap();
        assert_ne!(a, b);
        let opened = open_kms_v2(
            DekSourceType::HkdfSha256XnonceAesGcmSeed,
            &seed,
            &a,
            b"/registry/secrets/a/b",
        )
        .unwrap();
        assert_eq!(opened.expose_secret(), b"k8s\0object");
        assert!(open_kms_v2(
            DekSourceType::HkdfSha256XnonceAesGcmSeed,
            &seed,
            &a,
            b"/registry/secrets/a/c"
        )
        .is_err());
    }

    #[test]
    fn bad_lengths_are_errors_not_panics() {
        assert_eq!(
            open_aesgcm(&[0; 15], &[0; 40], b"").unwrap_err(),
            EnvelopeError::BadKeyLength
        );
        assert_eq!(
            open_aescbc(&[0; 32], &[0; 17]).unwrap_err(),
            EnvelopeError::Truncated
        );
        assert_eq!(
            open_secretbox(&[0; 31], &[0; 64]).unwrap_err(),
            EnvelopeError::BadKeyLength
        );
        assert_eq!(
            open_secretbox(&[0; 32], &[0; 39]).unwrap_err(),
            EnvelopeError::Truncated
        );
        assert!(open_aescbc(&[0; 32], &[0; 32]).is_err());
    }
}
