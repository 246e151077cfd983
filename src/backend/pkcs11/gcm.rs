//! The wrapped-seed format of the PKCS#11 backend and the token calls that
//! make and open it: CKM_AES_GCM in the token, with a fresh IV from the OS
//! and the key_id bound as AAD (see the format in [`super`]).
use cryptoki::error::{Error as CryptokiError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::session::Session;

use super::token::{self, Token};
use super::{AAD_PREFIX, CIPHERTEXT_FORMAT, CIPHERTEXT_TAG, GCM_TAG_LEN, HEADER_LEN, IV_LEN};
use crate::secret::SecretBytes;

pub(super) fn aad(key_id: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_PREFIX.len() + key_id.len());
    aad.extend_from_slice(AAD_PREFIX);
    aad.extend_from_slice(key_id.as_bytes());
    aad
}

/// Why a token call for a request failed.
pub(super) enum CallFailure {
    /// The request's own fault (GCM tag mismatch, bad length).
    Rejected,
    /// The key object is missing from the token.
    KeyMissing,
    /// The token (or the session, or the login) failed: the plugin is unhealthy.
    Token(String),
}

pub(super) fn classify(token: &Token, error: token::CallError, decrypting: bool) -> CallFailure {
    match error {
        token::CallError::Session(error) => CallFailure::Token(error.to_string()),
        token::CallError::Operation(CryptokiError::Pkcs11(
            RvError::EncryptedDataInvalid
            | RvError::EncryptedDataLenRange
            | RvError::GeneralError
            | RvError::FunctionFailed
            | RvError::DataInvalid
            | RvError::DataLenRange,
            _,
        )) if decrypting => CallFailure::Rejected,
        token::CallError::Operation(error) => {
            CallFailure::Token(token.failure("the GCM operation", error).to_string())
        }
    }
}

/// Encrypts `plaintext` under `key_id` in the token: `tag | format | IV | ct | tag`.
pub(super) fn seal(
    token: &Token,
    session: &Session,
    key_id: &str,
    plaintext: &[u8],
) -> Result<Option<Vec<u8>>, CryptokiError> {
    let Some(key) = token.key_handle(session, key_id)? else {
        return Ok(None);
    };
    let mut iv = [0u8; IV_LEN];
    getrandom::getrandom(&mut iv).map_err(|_| CryptokiError::InvalidValue)?;
    let aad = aad(key_id);
    let mut params_iv = iv;
    let params = GcmParams::new(&mut params_iv, &aad, ((GCM_TAG_LEN * 8) as u64).into())?;
    let sealed = session.encrypt(&Mechanism::AesGcm(params), key, plaintext)?;
    let mut out = Vec::with_capacity(HEADER_LEN + sealed.len());
    out.push(CIPHERTEXT_TAG);
    out.push(CIPHERTEXT_FORMAT);
    out.extend_from_slice(&iv);
    out.extend_from_slice(&sealed);
    Ok(Some(out))
}

/// Decrypts a checked ciphertext under `key_id` in the token.
pub(super) fn open(
    token: &Token,
    session: &Session,
    key_id: &str,
    ciphertext: &[u8],
) -> Result<Option<SecretBytes>, CryptokiError> {
    let Some(key) = token.key_handle(session, key_id)? else {
        return Ok(None);
    };
    let (header, sealed) = ciphertext
        .split_at_checked(HEADER_LEN)
        .ok_or(CryptokiError::Pkcs11(
            RvError::EncryptedDataLenRange,
            cryptoki::context::Function::Decrypt,
        ))?;
    let mut iv: [u8; IV_LEN] = header
        .get(2..HEADER_LEN)
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or(CryptokiError::Pkcs11(
            RvError::EncryptedDataLenRange,
            cryptoki::context::Function::Decrypt,
        ))?;
    let aad = aad(key_id);
    let params = GcmParams::new(&mut iv, &aad, ((GCM_TAG_LEN * 8) as u64).into())?;
    let plaintext = session.decrypt(&Mechanism::AesGcm(params), key, sealed)?;
    Ok(Some(SecretBytes::new(plaintext)))
}
