//! The wrapped-seed format: what `Encrypt` returns and `Decrypt` accepts.
//!
//! This module owns the bytes kube-apiserver stores in etcd as
//! `encryptedDEKSource`. Layout:
//!
//! ```text
//! format version (1 byte) || salt (32 random bytes) || AES-256-GCM ciphertext || tag (16 bytes)
//! ```
//!
//! Every wrap draws a fresh random salt and encrypts under its own AES key,
//! derived with HKDF-SHA256 from the KEK and that salt, so no per-KEK message
//! limit applies. The associated data is `domain || 0x00 || key_id`, where the
//! domain names the format version: a wrapped seed presented under another
//! key_id or version byte does not open.
//!
//! - Format 2 (written): once per KEK, `PRK = HKDF-Extract(salt = "kube-kms/v2/wrap",
//!   IKM = KEK)` ([`WrapKey::new`]); per call, `key = HKDF-Expand(PRK, info =
//!   "kube-kms/v2/wrap" || 0x00 || salt, 32)` and a zero nonce. The key serves
//!   exactly one message and repeats only if a 256-bit salt does, so the fixed
//!   nonce never repeats under a key. Why not format 1: its per-call
//!   extract-and-expand costs 10 SHA-256 blocks, this costs 4, and SHA-256 was
//!   the largest single cost of a Decrypt on CPUs without SHA extensions.
//! - Format 1 (still opened, never written): per call `HKDF-SHA256(IKM = KEK,
//!   salt = salt, info = "kube-kms/v1/wrap", L = 44)`, the first 32 bytes the
//!   AES key, the last 12 the nonce.
//!
//! The output is at most [`MAX_WRAPPED_LEN`] (1 KiB, kube-apiserver's limit);
//! larger plaintexts are refused before any work. Unwrapping checks bounds
//! before touching the bytes and answers every failure (short, long, unknown
//! version, tampered, wrong key or key_id) with the same coarse
//! [`WrapError::Unwrap`], so the error says nothing about which byte was wrong.
//!
//! What is wiped, and what is not: derived key bytes live only in zeroizing
//! buffers; the per-call AES-256 round keys are zeroized when the cipher drops
//! (the `aes` crate's `zeroize` feature, asserted by a test below), and so is
//! the GHASH key `H` that aes-gcm computes in `new` (its own `zeroize`
//! feature). Not wiped: the copy of `H` inside GHASH's state on x86-64, where
//! polyval 0.6 picks its backend at run time and keeps the state in a
//! `ManuallyDrop` that never drops (the `zeroize` features of ghash and polyval
//! are on, so the state is wiped wherever it is dropped); and the HMAC states
//! ring builds from the PRK (see [`crate::kdf`]). Both belong to one call's
//! stack frame and are overwritten by later calls; `H` only authenticates
//! messages under that call's one-message key.
use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use zeroize::{Zeroize, Zeroizing};

use crate::secret::{Key256, SecretBytes};

/// The format version every new wrapped seed carries.
pub const FORMAT_VERSION: u8 = 0x02;
/// The first format: still opened, never written.
pub const LEGACY_FORMAT_VERSION: u8 = 0x01;
/// Bytes of random salt per wrapped seed.
pub const SALT_LEN: usize = 32;
/// Bytes of the AES-GCM authentication tag.
pub const TAG_LEN: usize = 16;
/// Bytes a wrapped seed adds to its plaintext (version + salt + tag).
pub const OVERHEAD: usize = 1 + SALT_LEN + TAG_LEN;
/// The largest wrapped seed kube-apiserver accepts (and the largest this module makes or opens).
pub const MAX_WRAPPED_LEN: usize = 1024;
/// The largest plaintext that still wraps into [`MAX_WRAPPED_LEN`] bytes.
pub const MAX_PLAINTEXT_LEN: usize = MAX_WRAPPED_LEN - OVERHEAD;

/// Format 1's HKDF info and associated-data prefix.
const DOMAIN_V1: &[u8] = b"kube-kms/v1/wrap";
/// Format 2's HKDF salt and info prefix, and associated-data prefix.
const DOMAIN_V2: &[u8] = b"kube-kms/v2/wrap";
const AES_KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const HEADER_LEN: usize = 1 + SALT_LEN;

/// Why wrapping or unwrapping failed.
#[derive(Debug, thiserror::Error)]
pub enum WrapError {
    /// The plaintext does not fit the 1 KiB wrapped-seed limit.
    #[error(
        "plaintext is {len} bytes; at most {MAX_PLAINTEXT_LEN} bytes fit in a wrapped seed of at most {MAX_WRAPPED_LEN} bytes (kube-apiserver sends 32-byte seeds)"
    )]
    PlaintextTooLarge {
        /// Length of the refused plaintext.
        len: usize,
    },
    /// The operating system's random generator failed (no salt, no wrap).
    #[error("the operating system's random number generator failed: {0}")]
    Random(getrandom::Error),
    /// The input is not a wrapped seed made by this KEK for this key_id:
    /// malformed, truncated, tampered, of an unknown format version, or bound
    /// to another key_id. Deliberately says no more.
    #[error("wrapped seed failed authentication")]
    Unwrap,
}

/// A KEK prepared for many calls: the KEK itself (format 1 derives from it
/// per call) and format 2's pseudorandom key, extracted once. Both zeroize on
/// drop; `Debug` shows nothing.
pub struct WrapKey {
    kek: Key256,
    prk_v2: Key256,
}

impl std::fmt::Debug for WrapKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WrapKey(<redacted>)")
    }
}

impl WrapKey {
    /// Prepares `kek` (one HKDF-Extract).
    pub fn new(kek: &Key256) -> Self {
        Self {
            kek: kek.clone(),
            prk_v2: crate::kdf::extract(DOMAIN_V2, kek.expose_secret()),
        }
    }

    /// Wraps `plaintext` for `key_id` in the current format, with a fresh random salt.
    pub fn wrap(&self, key_id: &str, plaintext: &[u8]) -> Result<Vec<u8>, WrapError> {
        check_plaintext_len(plaintext)?;
        let salt = fresh_salt()?;
        self.seal(key_id, plaintext, &salt)
    }

    /// [`WrapKey::wrap`] with a caller-chosen salt: for known-answer tests and
    /// fuzzing only. Reusing a salt with the same KEK reuses the key and nonce:
    /// never do it in production.
    #[doc(hidden)]
    pub fn wrap_with_salt(
        &self,
        key_id: &str,
        plaintext: &[u8],
        salt: &[u8; SALT_LEN],
    ) -> Result<Vec<u8>, WrapError> {
        check_plaintext_len(plaintext)?;
        self.seal(key_id, plaintext, salt)
    }

    /// Seals in the current format; the caller checked the plaintext's length.
    fn seal(
        &self,
        key_id: &str,
        plaintext: &[u8],
        salt: &[u8; SALT_LEN],
    ) -> Result<Vec<u8>, WrapError> {
        WrapCipher::derive_v2(&self.prk_v2, salt)?.seal(FORMAT_VERSION, salt, key_id, plaintext)
    }

    /// Opens a wrapped seed of either format made with this KEK for `key_id`.
    pub fn unwrap(&self, key_id: &str, wrapped: &[u8]) -> Result<SecretBytes, WrapError> {
        if wrapped.len() < OVERHEAD || wrapped.len() > MAX_WRAPPED_LEN {
            return Err(WrapError::Unwrap);
        }
        let (header, body) = wrapped.split_at(HEADER_LEN);
        let (version, salt) = header.split_at(1);
        let cipher = match version {
            [FORMAT_VERSION] => WrapCipher::derive_v2(&self.prk_v2, salt)?,
            [LEGACY_FORMAT_VERSION] => WrapCipher::derive_v1(&self.kek, salt)?,
            _ => return Err(WrapError::Unwrap),
        };
        let (ciphertext, tag) = body.split_at(body.len() - TAG_LEN);
        let mut plaintext = SecretBytes::copy_from(ciphertext);
        with_associated_data(cipher.domain, key_id, |aad| {
            cipher.aead.decrypt_in_place_detached(
                &cipher.nonce,
                aad,
                plaintext.expose_secret_mut(),
                Tag::from_slice(tag),
            )
        })
        .map_err(|_| WrapError::Unwrap)?;
        Ok(plaintext)
    }
}

/// Wraps `plaintext` under `kek` for `key_id`, with a fresh random salt.
/// For one-off calls; a server keeps a [`WrapKey`] per KEK instead.
pub fn wrap(kek: &Key256, key_id: &str, plaintext: &[u8]) -> Result<Vec<u8>, WrapError> {
    WrapKey::new(kek).wrap(key_id, plaintext)
}

/// Opens a wrapped seed made by [`wrap`] (either format) with the same `kek` and `key_id`.
pub fn unwrap(kek: &Key256, key_id: &str, wrapped: &[u8]) -> Result<SecretBytes, WrapError> {
    WrapKey::new(kek).unwrap(key_id, wrapped)
}

/// [`wrap`] with a caller-chosen salt: for known-answer tests and fuzzing only.
/// Reusing a salt with the same KEK reuses the key and nonce: never do it in production.
#[doc(hidden)]
pub fn wrap_with_salt(
    kek: &Key256,
    key_id: &str,
    plaintext: &[u8],
    salt: &[u8; SALT_LEN],
) -> Result<Vec<u8>, WrapError> {
    WrapKey::new(kek).wrap_with_salt(key_id, plaintext, salt)
}

/// Format 1 with a caller-chosen salt, as earlier versions wrote it: for
/// tests and fuzzing that prove such seeds still open.
#[doc(hidden)]
pub fn wrap_legacy_with_salt(
    kek: &Key256,
    key_id: &str,
    plaintext: &[u8],
    salt: &[u8; SALT_LEN],
) -> Result<Vec<u8>, WrapError> {
    check_plaintext_len(plaintext)?;
    let cipher = WrapCipher::derive_v1(kek, salt)?;
    cipher.seal(LEGACY_FORMAT_VERSION, salt, key_id, plaintext)
}

fn check_plaintext_len(plaintext: &[u8]) -> Result<(), WrapError> {
    if plaintext.len() > MAX_PLAINTEXT_LEN {
        return Err(WrapError::PlaintextTooLarge {
            len: plaintext.len(),
        });
    }
    Ok(())
}

/// The per-call AES-GCM instance and nonce derived from (KEK, salt), and the
/// domain its format binds into the associated data.
struct WrapCipher {
    /// Drops with its AES round keys zeroized (the `aes` crate's `zeroize`
    /// feature); GHASH's copy of `H` is not wiped on x86-64 (module docs).
    aead: Aes256Gcm,
    nonce: Nonce<aes_gcm::aes::cipher::consts::U12>,
    domain: &'static [u8],
}

impl WrapCipher {
    fn derive_v1(kek: &Key256, salt: &[u8]) -> Result<Self, WrapError> {
        let mut okm = Zeroizing::new([0u8; AES_KEY_LEN + NONCE_LEN]);
        crate::kdf::extract_expand(salt, kek.expose_secret(), DOMAIN_V1, okm.as_mut_slice())
            .map_err(|_| WrapError::Unwrap)?;
        let (key, nonce) = okm.split_at(AES_KEY_LEN);
        let aead = Aes256Gcm::new_from_slice(key).map_err(|_| WrapError::Unwrap)?;
        Ok(Self {
            aead,
            nonce: *Nonce::from_slice(nonce),
            domain: DOMAIN_V1,
        })
    }

    fn derive_v2(prk: &Key256, salt: &[u8]) -> Result<Self, WrapError> {
        let salt: &[u8; SALT_LEN] = salt.try_into().map_err(|_| WrapError::Unwrap)?;
        // The salt is public: the info can sit on the stack unzeroized.
        // DOMAIN_V2, a zero byte, the salt.
        let mut info = [0u8; DOMAIN_V2.len() + 1 + SALT_LEN];
        let (domain, rest) = info.split_at_mut(DOMAIN_V2.len());
        domain.copy_from_slice(DOMAIN_V2);
        if let Some((_, salt_part)) = rest.split_first_mut() {
            salt_part.copy_from_slice(salt);
        }
        let mut key = Zeroizing::new([0u8; AES_KEY_LEN]);
        crate::kdf::expand(prk.expose_secret(), &info, key.as_mut_slice())
            .map_err(|_| WrapError::Unwrap)?;
        let aead = Aes256Gcm::new_from_slice(key.as_slice()).map_err(|_| WrapError::Unwrap)?;
        Ok(Self {
            aead,
            nonce: Nonce::default(),
            domain: DOMAIN_V2,
        })
    }

    /// `version || salt || AES-GCM(plaintext) || tag`.
    fn seal(
        &self,
        version: u8,
        salt: &[u8; SALT_LEN],
        key_id: &str,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, WrapError> {
        let mut out = Vec::with_capacity(OVERHEAD + plaintext.len());
        out.push(version);
        out.extend_from_slice(salt);
        out.extend_from_slice(plaintext);
        let body = out.get_mut(HEADER_LEN..).ok_or(WrapError::Unwrap)?;
        let sealed = with_associated_data(self.domain, key_id, |aad| {
            self.aead.encrypt_in_place_detached(&self.nonce, aad, body)
        });
        match sealed {
            Ok(tag) => {
                out.extend_from_slice(&tag);
                Ok(out)
            }
            Err(_) => {
                // Unreachable for lengths under 1 KiB; never hand back the plaintext.
                out.zeroize();
                Err(WrapError::Unwrap)
            }
        }
    }
}

/// Associated data up to this long is built on the stack (kube-kms' own
/// key_ids make 39 bytes; AWS KMS and PKCS#11 ones stay under it too).
const STACK_AAD_LEN: usize = 128;

/// Calls `f` with the associated data `domain || 0x00 || key_id`: on the
/// stack when it fits in [`STACK_AAD_LEN`] bytes (one allocation less per
/// call), else in a `Vec`. Both hold the same bytes.
fn with_associated_data<R>(domain: &[u8], key_id: &str, f: impl FnOnce(&[u8]) -> R) -> R {
    let len = domain.len() + 1 + key_id.len();
    let mut stack = [0u8; STACK_AAD_LEN];
    match stack.get_mut(..len) {
        Some(aad) => {
            let (prefix, rest) = aad.split_at_mut(domain.len());
            prefix.copy_from_slice(domain);
            if let Some((separator, id)) = rest.split_first_mut() {
                *separator = 0;
                id.copy_from_slice(key_id.as_bytes());
            }
            f(aad)
        }
        None => f(&associated_data(domain, key_id)),
    }
}

fn associated_data(domain: &[u8], key_id: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(domain.len() + 1 + key_id.len());
    aad.extend_from_slice(domain);
    aad.push(0);
    aad.extend_from_slice(key_id.as_bytes());
    aad
}

/// Salts one refill of a thread's pool holds.
const SALTS_PER_REFILL: usize = 32;

/// A thread's unused OS randomness, handed out one salt at a time.
struct SaltPool {
    salts: [[u8; SALT_LEN]; SALTS_PER_REFILL],
    /// Index of the first salt not yet handed out.
    next: usize,
}

std::thread_local! {
    static SALTS: std::cell::RefCell<SaltPool> = const {
        std::cell::RefCell::new(SaltPool {
            salts: [[0; SALT_LEN]; SALTS_PER_REFILL],
            next: SALTS_PER_REFILL,
        })
    };
}

/// A fresh random salt from the operating system's generator, drawn
/// [`SALTS_PER_REFILL`] salts at a time: one `getrandom` system call per 32
/// wraps instead of one per wrap (the system call cost more than the rest
/// of the wrap's cryptography together). Each salt is handed out once and
/// wiped as it is taken, so none can come out twice; a salt is public (it
/// is written into the wrapped seed) but must never repeat under a KEK,
/// since it selects the one-message key. A failed refill hands out nothing.
/// A forked child would inherit the pool: kube-kms only forks to exec
/// (`std::process::Command`), and a child never wraps.
fn fresh_salt() -> Result<[u8; SALT_LEN], WrapError> {
    SALTS.with(|pool| {
        let mut pool = pool.borrow_mut();
        let pool = &mut *pool;
        loop {
            if let Some(taken) = pool.salts.get_mut(pool.next) {
                let salt = *taken;
                taken.zeroize();
                pool.next += 1;
                return Ok(salt);
            }
            getrandom::getrandom(pool.salts.as_flattened_mut()).map_err(WrapError::Random)?;
            pool.next = 0;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY_ID: &str = "kk-v1-0123456789abcdef";

    fn kek(byte: u8) -> Key256 {
        Key256::from_array([byte; 32])
    }

    /// Compiles only if the AES-256 inside `Aes256Gcm` wipes its round keys on
    /// drop: without the `aes` crate's `zeroize` feature (aes-gcm's own feature
    /// does not turn it on) it does not implement `ZeroizeOnDrop`.
    #[test]
    fn aes_round_keys_are_wiped_on_drop() {
        fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>() {}
        wiped_on_drop::<aes_gcm::aes::Aes256>();
        let _: &dyn Fn() -> Aes256Gcm = &|| Aes256Gcm::new(&[7u8; 32].into());
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn round_trip_of_a_seed() {
        let seed = [7u8; 32];
        let wrapped = wrap(&kek(1), KEY_ID, &seed).unwrap();
        assert_eq!(wrapped.len(), OVERHEAD + 32);
        assert_eq!(wrapped[0], FORMAT_VERSION);
        let opened = unwrap(&kek(1), KEY_ID, &wrapped).unwrap();
        assert_eq!(opened.expose_secret(), &seed);
        let key = WrapKey::new(&kek(1));
        assert_eq!(key.unwrap(KEY_ID, &wrapped).unwrap().expose_secret(), &seed);
        let again = key.wrap(KEY_ID, &seed).unwrap();
        assert_eq!(
            unwrap(&kek(1), KEY_ID, &again).unwrap().expose_secret(),
            &seed
        );
    }

    #[test]
    fn salts_never_repeat_across_refills_and_threads() {
        let draw = || {
            (0..SALTS_PER_REFILL * 5 + 3)
                .map(|_| fresh_salt().unwrap())
                .collect::<Vec<_>>()
        };
        let threads: Vec<_> = (0..4).map(|_| std::thread::spawn(draw)).collect();
        let mut seen = std::collections::HashSet::new();
        for salt in draw()
            .into_iter()
            .chain(threads.into_iter().flat_map(|t| t.join().unwrap()))
        {
            assert_ne!(salt, [0u8; SALT_LEN], "a wiped pool byte handed out");
            assert!(seen.insert(salt), "a salt came out twice");
        }
        assert_eq!(seen.len(), 5 * (SALTS_PER_REFILL * 5 + 3));
        // And each wrap carries its own salt.
        let key = WrapKey::new(&kek(1));
        let salts: std::collections::HashSet<Vec<u8>> = (0..100)
            .map(|_| key.wrap(KEY_ID, &[0u8; 32]).unwrap()[1..HEADER_LEN].to_vec())
            .collect();
        assert_eq!(salts.len(), 100);
    }

    #[test]
    fn associated_data_is_the_same_on_the_stack_and_the_heap() {
        for len in [
            0,
            1,
            22,
            STACK_AAD_LEN - DOMAIN_V2.len() - 1,
            STACK_AAD_LEN,
            1024,
        ] {
            let key_id = "k".repeat(len);
            let built = with_associated_data(DOMAIN_V2, &key_id, <[u8]>::to_vec);
            assert_eq!(
                built,
                associated_data(DOMAIN_V2, &key_id),
                "key_id of {len} bytes"
            );
            // Bound to the key_id either way: a one-byte change does not open.
            let key = WrapKey::new(&kek(3));
            let wrapped = key.wrap(&key_id, &[7u8; 32]).unwrap();
            assert_eq!(
                key.unwrap(&key_id, &wrapped).unwrap().expose_secret(),
                &[7u8; 32]
            );
            let other = format!("{key_id}x");
            assert!(
                key.unwrap(&other, &wrapped).is_err(),
                "key_id of {len} bytes"
            );
        }
    }

    #[test]
    fn wrapping_is_randomized() {
        let a = wrap(&kek(1), KEY_ID, &[0u8; 32]).unwrap();
        let b = wrap(&kek(1), KEY_ID, &[0u8; 32]).unwrap();
        assert_ne!(
            a, b,
            "two wraps of one seed must differ (apiserver caches by ciphertext)"
        );
    }

    /// Pinned, and cross-checked once with an independent implementation (Python `cryptography` 48:
    /// PRK = HMAC-SHA256("kube-kms/v2/wrap", KEK), HKDFExpand(SHA256, 32, info) then AESGCM with a zero nonce);
    /// guards the format against silent change.
    /// Inputs: KEK = 32 x 0x42, salt = 0x00..0x1f, key_id = KEY_ID, plaintext = "kube-kms known answer 0123456789".
    #[test]
    fn known_answer() {
        let salt: [u8; 32] = std::array::from_fn(|i| i as u8);
        let wrapped = wrap_with_salt(
            &kek(0x42),
            KEY_ID,
            b"kube-kms known answer 0123456789",
            &salt,
        )
        .unwrap();
        assert_eq!(
            hex(&wrapped),
            concat!(
                "02000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
                "5a062a474dccabfaa7acdc000698d22c81c2d14cc8e6836a6abec4e6c3a56b8af61a9ebb61f0e27eea82bafdf1c97d32"
            )
        );
        let opened = unwrap(&kek(0x42), KEY_ID, &wrapped).unwrap();
        assert_eq!(opened.expose_secret(), b"kube-kms known answer 0123456789");
    }

    /// Format 1, as the first releases wrote it, still opens. Cross-checked with Python
    /// `cryptography` 48: HKDF(SHA256, salt, info="kube-kms/v1/wrap", L=44) then AESGCM.
    #[test]
    fn legacy_known_answer_still_opens() {
        let salt: [u8; 32] = std::array::from_fn(|i| i as u8);
        let wrapped = wrap_legacy_with_salt(
            &kek(0x42),
            KEY_ID,
            b"kube-kms known answer 0123456789",
            &salt,
        )
        .unwrap();
        assert_eq!(
            hex(&wrapped),
            concat!(
                "01000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
                "ceaf4c1460b2f780893cd51090c9b62f104c65fb1b4221b4e4c1aa0f371199ce8852746af2a6cb42d5501403a2e6147c"
            )
        );
        let key = WrapKey::new(&kek(0x42));
        let opened = key.unwrap(KEY_ID, &wrapped).unwrap();
        assert_eq!(opened.expose_secret(), b"kube-kms known answer 0123456789");
        assert!(key.unwrap("kk-v2-0123456789abcdef", &wrapped).is_err());
        assert!(WrapKey::new(&kek(0x43)).unwrap(KEY_ID, &wrapped).is_err());
    }

    #[test]
    fn a_version_byte_swap_does_not_open() {
        let key = WrapKey::new(&kek(0x42));
        let salt = [9u8; 32];
        let mut current = key.wrap_with_salt(KEY_ID, &[1u8; 32], &salt).unwrap();
        current[0] = LEGACY_FORMAT_VERSION;
        assert!(key.unwrap(KEY_ID, &current).is_err());
        let mut legacy = wrap_legacy_with_salt(&kek(0x42), KEY_ID, &[1u8; 32], &salt).unwrap();
        legacy[0] = FORMAT_VERSION;
        assert!(key.unwrap(KEY_ID, &legacy).is_err());
        for version in [0u8, 3, 0xff] {
            let mut other = key.wrap(KEY_ID, &[1u8; 32]).unwrap();
            other[0] = version;
            assert!(key.unwrap(KEY_ID, &other).is_err());
        }
    }

    #[test]
    fn wrap_key_debug_shows_nothing() {
        let shown = format!("{:?}", WrapKey::new(&kek(0xab)));
        assert_eq!(shown, "WrapKey(<redacted>)");
    }

    #[test]
    fn every_bit_flip_truncation_and_foreign_key_id_fails() {
        let current = wrap(&kek(9), KEY_ID, &[0x5a; 32]).unwrap();
        let legacy = wrap_legacy_with_salt(&kek(9), KEY_ID, &[0x5a; 32], &[3u8; 32]).unwrap();
        for wrapped in [current, legacy] {
            for index in 0..wrapped.len() {
                for bit in 0..8 {
                    let mut tampered = wrapped.clone();
                    tampered[index] ^= 1 << bit;
                    assert!(
                        matches!(unwrap(&kek(9), KEY_ID, &tampered), Err(WrapError::Unwrap)),
                        "flip of bit {bit} in byte {index} was accepted"
                    );
                }
            }
            for len in 0..wrapped.len() {
                assert!(
                    matches!(
                        unwrap(&kek(9), KEY_ID, &wrapped[..len]),
                        Err(WrapError::Unwrap)
                    ),
                    "truncation to {len} bytes was accepted"
                );
            }
            let mut extended = wrapped.clone();
            extended.push(0);
            assert!(unwrap(&kek(9), KEY_ID, &extended).is_err());
            assert!(unwrap(&kek(9), "kk-v2-0123456789abcdef", &wrapped).is_err());
            assert!(unwrap(&kek(9), "", &wrapped).is_err());
            assert!(unwrap(&kek(10), KEY_ID, &wrapped).is_err());
            assert!(unwrap(&kek(9), KEY_ID, &wrapped).is_ok());
        }
    }

    #[test]
    fn size_limit_is_exact() {
        let largest = vec![1u8; MAX_PLAINTEXT_LEN];
        let wrapped = wrap(&kek(3), KEY_ID, &largest).unwrap();
        assert_eq!(wrapped.len(), MAX_WRAPPED_LEN);
        assert_eq!(
            unwrap(&kek(3), KEY_ID, &wrapped).unwrap().expose_secret(),
            &largest[..]
        );
        let too_large = vec![1u8; MAX_PLAINTEXT_LEN + 1];
        let error = wrap(&kek(3), KEY_ID, &too_large).unwrap_err();
        assert!(
            matches!(error, WrapError::PlaintextTooLarge { len } if len == MAX_PLAINTEXT_LEN + 1)
        );
        assert!(error.to_string().contains("at most 975 bytes"), "{error}");
    }

    #[test]
    fn empty_plaintext_round_trips() {
        let wrapped = wrap(&kek(4), KEY_ID, b"").unwrap();
        assert_eq!(wrapped.len(), OVERHEAD);
        assert!(unwrap(&kek(4), KEY_ID, &wrapped).unwrap().is_empty());
    }

    proptest! {
        #[test]
        fn round_trip_of_any_plaintext(
            plaintext in proptest::collection::vec(any::<u8>(), 0..=MAX_PLAINTEXT_LEN),
            key_byte in any::<u8>(),
            salt in any::<[u8; SALT_LEN]>(),
        ) {
            let wrapped = wrap(&kek(key_byte), KEY_ID, &plaintext).unwrap();
            prop_assert!(wrapped.len() <= MAX_WRAPPED_LEN);
            let opened = unwrap(&kek(key_byte), KEY_ID, &wrapped).unwrap();
            prop_assert_eq!(opened.expose_secret(), &plaintext[..]);
            let legacy = wrap_legacy_with_salt(&kek(key_byte), KEY_ID, &plaintext, &salt).unwrap();
            prop_assert_eq!(legacy.len(), wrapped.len());
            let opened = WrapKey::new(&kek(key_byte)).unwrap(KEY_ID, &legacy).unwrap();
            prop_assert_eq!(opened.expose_secret(), &plaintext[..]);
        }

        #[test]
        fn arbitrary_input_never_panics_and_never_opens(input in proptest::collection::vec(any::<u8>(), 0..1100)) {
            prop_assert!(unwrap(&kek(5), KEY_ID, &input).is_err());
        }
    }
}
