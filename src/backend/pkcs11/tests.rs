//! Unit tests of `pkcs11`.
use super::gcm::aad;
use super::*;

#[test]
fn aad_binds_the_key_id() {
    assert_ne!(aad("kk-p11-v1-00"), aad("kk-p11-v2-00"));
    assert!(aad("kk-p11-v1-00").starts_with(AAD_PREFIX));
    assert_eq!(HEADER_LEN + 32 + GCM_TAG_LEN, 62);
    assert_eq!(MAX_PLAINTEXT_LEN + HEADER_LEN + GCM_TAG_LEN, 1024);
}
