//! The KMS v2 gRPC messages and service stubs, generated from
//! `proto/kms_v2.proto` at build time.
//!
//! `EncryptRequest`, `DecryptResponse` (and `DecryptRequest`'s ciphertext) carry
//! seeds or their wrapped form: their `Debug` (written here, not derived)
//! prints the lengths of those bytes, never the bytes.
#![allow(missing_docs, unreachable_pub, clippy::all)]

/// `package v2`: the service kube-apiserver calls.
pub mod v2 {
    tonic::include_proto!("v2");
}

/// The lengths of the secret-bearing bytes, never the bytes: `Debug` of the
/// Encrypt and Decrypt messages is written here (build.rs skips the derived
/// one) so that `{:?}` on a request or response cannot log a seed, a
/// plaintext or a wrapped seed.
mod redacted_debug {
    use std::collections::HashMap;
    use std::fmt;

    use super::v2::{DecryptRequest, DecryptResponse, EncryptRequest, EncryptResponse};

    /// `<N bytes>`.
    struct Len(usize);

    impl fmt::Debug for Len {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "<{} bytes>", self.0)
        }
    }

    /// Annotation names with the lengths of their values, in name order.
    struct Annotations<'a>(&'a HashMap<String, Vec<u8>>);

    impl fmt::Debug for Annotations<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let mut names: Vec<_> = self.0.iter().collect();
            names.sort_by(|a, b| a.0.cmp(b.0));
            f.debug_map()
                .entries(
                    names
                        .into_iter()
                        .map(|(name, value)| (name, Len(value.len()))),
                )
                .finish()
        }
    }

    impl fmt::Debug for DecryptRequest {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("DecryptRequest")
                .field("ciphertext", &Len(self.ciphertext.len()))
                .field("uid", &self.uid)
                .field("key_id", &self.key_id)
                .field("annotations", &Annotations(&self.annotations))
                .finish()
        }
    }

    impl fmt::Debug for DecryptResponse {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("DecryptResponse")
                .field("plaintext", &Len(self.plaintext.len()))
                .finish()
        }
    }

    impl fmt::Debug for EncryptRequest {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("EncryptRequest")
                .field("plaintext", &Len(self.plaintext.len()))
                .field("uid", &self.uid)
                .finish()
        }
    }

    impl fmt::Debug for EncryptResponse {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("EncryptResponse")
                .field("ciphertext", &Len(self.ciphertext.len()))
                .field("key_id", &self.key_id)
                .field("annotations", &Annotations(&self.annotations))
                .finish()
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn debug_prints_lengths_not_bytes() {
            let secret = b"SEEDSEEDSEEDSEEDSEEDSEEDSEEDSEED".to_vec();
            let annotations: HashMap<String, Vec<u8>> =
                [("a.example.com".to_string(), secret.clone())].into();
            let printed = [
                format!(
                    "{:?}",
                    EncryptRequest {
                        plaintext: secret.clone(),
                        uid: "u1".into()
                    }
                ),
                format!(
                    "{:?}",
                    DecryptResponse {
                        plaintext: secret.clone()
                    }
                ),
                format!(
                    "{:?}",
                    DecryptRequest {
                        ciphertext: secret.clone(),
                        uid: "u2".into(),
                        key_id: "k1".into(),
                        annotations: annotations.clone(),
                    }
                ),
                format!(
                    "{:?}",
                    EncryptResponse {
                        ciphertext: secret.clone(),
                        key_id: "k2".into(),
                        annotations
                    }
                ),
            ];
            for text in &printed {
                assert!(!text.contains("SEED"), "{text}");
                assert!(!text.contains("83, 69, 69, 68"), "{text}");
                assert!(text.contains("<32 bytes>"), "{text}");
            }
            assert_eq!(
                printed[2],
                r#"DecryptRequest { ciphertext: <32 bytes>, uid: "u2", key_id: "k1", annotations: {"a.example.com": <32 bytes>} }"#
            );
        }
    }
}
