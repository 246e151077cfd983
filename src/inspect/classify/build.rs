//! Builders of stored values in kube-apiserver's formats, with random-looking
//! payloads (no real encryption): for tests, fuzz seeds and benchmarks.
use super::pb::encode;

/// `k8s\0` + runtime.Unknown with the given type meta and raw bytes.
pub fn plaintext_protobuf(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
    let mut type_meta = Vec::new();
    encode::bytes_field(&mut type_meta, 1, api_version.as_bytes());
    encode::bytes_field(&mut type_meta, 2, kind.as_bytes());
    let mut out = b"k8s\x00".to_vec();
    encode::bytes_field(&mut out, 1, &type_meta);
    encode::bytes_field(&mut out, 2, raw);
    out
}

/// A v1 Secret as kube-apiserver's identity provider stores it: `k8s\0` +
/// runtime.Unknown{typeMeta {v1, Secret}, raw = the Secret message of
/// k8s.io/api/core/v1 `generated.proto` with this metadata and `data`,
/// type Opaque}. What [`crate::envelope::seal_kms_v2_seed`] seals when
/// playing the apiserver.
pub fn secret(
    namespace: &str,
    name: &str,
    uid: &str,
    created_unix_seconds: u64,
    data: &[(&str, &[u8])],
) -> Vec<u8> {
    let mut meta = Vec::new();
    encode::bytes_field(&mut meta, 1, name.as_bytes());
    encode::bytes_field(&mut meta, 2, b""); // generateName
    encode::bytes_field(&mut meta, 3, namespace.as_bytes());
    encode::bytes_field(&mut meta, 5, uid.as_bytes());
    encode::bytes_field(&mut meta, 6, b""); // resourceVersion (never stored)
    encode::varint_field(&mut meta, 7, 0); // generation
    let mut timestamp = Vec::new();
    encode::varint_field(&mut timestamp, 1, created_unix_seconds);
    encode::varint_field(&mut timestamp, 2, 0);
    encode::bytes_field(&mut meta, 8, &timestamp); // creationTimestamp
    let mut secret = Vec::new();
    encode::bytes_field(&mut secret, 1, &meta);
    for (key, value) in data {
        let mut entry = Vec::new();
        encode::bytes_field(&mut entry, 1, key.as_bytes());
        encode::bytes_field(&mut entry, 2, value);
        encode::bytes_field(&mut secret, 2, &entry);
    }
    encode::bytes_field(&mut secret, 3, b"Opaque"); // type
    let mut unknown = plaintext_protobuf("v1", "Secret", &secret);
    encode::bytes_field(&mut unknown, 3, b""); // contentEncoding
    encode::bytes_field(&mut unknown, 4, b""); // contentType
    unknown
}

/// A kms v2 value. `dek_source_type` `None` omits field 5.
pub fn kms_v2(
    provider: &str,
    key_id: &str,
    dek_source_type: Option<u64>,
    annotations: &[(&str, &[u8])],
    data: &[u8],
) -> Vec<u8> {
    kms_v2_with_dek_source(
        provider,
        key_id,
        &[7u8; 60],
        dek_source_type,
        annotations,
        data,
    )
}

/// A kms v2 value with a given `encryptedDEKSource` (what the plugin's
/// Encrypt returned), as kube-apiserver writes it: with
/// [`crate::envelope::seal_kms_v2_seed`]'s output as `data`, a value the
/// plugin can decrypt.
pub fn kms_v2_with_dek_source(
    provider: &str,
    key_id: &str,
    dek_source: &[u8],
    dek_source_type: Option<u64>,
    annotations: &[(&str, &[u8])],
    data: &[u8],
) -> Vec<u8> {
    let mut object = Vec::new();
    encode::bytes_field(&mut object, 1, data);
    encode::bytes_field(&mut object, 2, key_id.as_bytes());
    encode::bytes_field(&mut object, 3, dek_source);
    for (key, value) in annotations {
        let mut entry = Vec::new();
        encode::bytes_field(&mut entry, 1, key.as_bytes());
        encode::bytes_field(&mut entry, 2, value);
        encode::bytes_field(&mut object, 4, &entry);
    }
    if let Some(kind) = dek_source_type {
        encode::varint_field(&mut object, 5, kind);
    }
    let mut out = format!("k8s:enc:kms:v2:{provider}:").into_bytes();
    out.extend_from_slice(&object);
    out
}

/// An aescbc/aesgcm/secretbox value (`provider` is the prefix word) with
/// `payload_len` payload bytes.
pub fn symmetric(provider: &str, name: &str, payload_len: usize) -> Vec<u8> {
    let mut out = format!("k8s:enc:{provider}:v1:{name}:").into_bytes();
    out.extend((0..payload_len).map(|i| (i * 31 + 7) as u8));
    out
}

/// A kms v1 value with a DEK of `dek_len` bytes and `data_len` data bytes.
pub fn kms_v1(provider: &str, dek_len: u16, data_len: usize) -> Vec<u8> {
    let mut out = format!("k8s:enc:kms:v1:{provider}:").into_bytes();
    out.extend_from_slice(&dek_len.to_be_bytes());
    out.extend((0..usize::from(dek_len) + data_len).map(|i| (i * 13 + 5) as u8));
    out
}
