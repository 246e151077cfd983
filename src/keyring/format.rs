//! The keyring file format, `kube-kms-keyring/v1`: human-readable JSON.
//!
//! ```json
//! {
//!   "format": "kube-kms-keyring/v1",
//!   "generation": 7,
//!   "versions": [
//!     {
//!       "id": 1,
//!       "key_id": "kk-v1-3f9c0e5a1b2d4c6e",
//!       "state": "enabled",
//!       "created": "2026-11-27T12:00:00Z",
//!       "material": "<base64 of 32 bytes>"
//!     }
//!   ]
//! }
//! ```
//!
//! `generation` counts the writes (absent in files written before it existed,
//! read as 0); see [`super::Keyring::generation`].
//!
//! The JSON shapes (shared with export bundles) are in `keyring/wire.rs`.
//! Parsing never copies key material out of the caller's (zeroizing) buffer
//! except into [`Key256`]: `material` is deserialized as a string borrowed from
//! the input (base64 has no JSON escapes, so an escaped one is refused) and
//! decoded into a zeroizing buffer. Error messages never quote string values
//! from the file, so a misplaced key cannot end up in a log.
use std::path::PathBuf;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use zeroize::Zeroizing;

use super::wire::{
    decode_key_material, parse_time, DocumentIn, DocumentOut, VersionIn, VersionOut,
};
use super::{key_id, KeyState, KeyVersion, Keyring, KeyringError};
use crate::secret::Key256;

/// The value of the `format` field this version reads and writes.
pub const FORMAT: &str = "kube-kms-keyring/v1";

fn invalid(problem: impl Into<String>) -> KeyringError {
    KeyringError::Invalid {
        path: PathBuf::from("<memory>"),
        problem: problem.into(),
    }
}

/// Parses and validates a keyring from the file's bytes. Errors carry the path
/// `<memory>`; [`super::store`] attaches the real one.
pub fn parse(bytes: &[u8]) -> Result<Keyring, KeyringError> {
    let file: DocumentIn<'_> = serde_json::from_slice(bytes).map_err(|error| {
        invalid(format!(
            "{} (the file must be JSON in the kube-kms-keyring/v1 format; see docs/keyring.md, or restore it from a backup)",
            redact_quoted(&error.to_string())
        ))
    })?;
    if file.format != FORMAT {
        return Err(invalid(format!(
            "the \"format\" field must be \"{FORMAT}\"; this file has another or no known format"
        )));
    }
    let mut versions = Vec::with_capacity(file.versions.len());
    for version in file.versions {
        versions.push(parse_version(version)?);
    }
    versions.sort_by_key(|v| v.id);
    let keyring = Keyring {
        versions,
        // Absent in files written before it existed.
        generation: file.generation.unwrap_or(0),
    };
    keyring.validate()?;
    Ok(keyring)
}

fn parse_version(version: VersionIn<'_>) -> Result<KeyVersion, KeyringError> {
    let id = version.id;
    let state = KeyState::from_word(&version.state).ok_or_else(|| {
        invalid(format!(
            "version {id}: state must be one of primary, enabled, disabled, destroyed"
        ))
    })?;
    let created = parse_time(&version.created).ok_or_else(|| {
        invalid(format!(
            "version {id}: created must be an RFC 3339 UTC time such as 2026-01-31T12:00:00Z"
        ))
    })?;
    let disabled_at = match &version.disabled_at {
        None => None,
        Some(text) => Some(parse_time(text).ok_or_else(|| {
            invalid(format!(
                "version {id}: disabled_at must be an RFC 3339 UTC time such as 2026-01-31T12:00:00Z"
            ))
        })?),
    };
    let material = match version.material {
        None => None,
        Some(text) => Some(decode_material(id, text.0)?),
    };
    Ok(KeyVersion {
        id,
        key_id: version.key_id.into_owned(),
        state,
        created,
        disabled_at,
        material,
    })
}

fn decode_material(id: u32, text: &str) -> Result<Key256, KeyringError> {
    decode_key_material(text).ok_or_else(|| {
        invalid(format!(
            "version {id}: material must be 32 bytes in standard padded base64 (44 characters); the key is damaged: restore the file from a backup"
        ))
    })
}

/// Writes a keyring as pretty JSON into a zeroizing buffer, after validating it.
pub fn serialize(keyring: &Keyring) -> Result<Zeroizing<Vec<u8>>, KeyringError> {
    serialize_as(keyring, keyring.generation)
}

/// [`serialize`] with `generation` written instead of the keyring's own.
pub(crate) fn serialize_as(
    keyring: &Keyring,
    generation: u64,
) -> Result<Zeroizing<Vec<u8>>, KeyringError> {
    keyring.validate()?;
    let encoded: Vec<Option<Zeroizing<String>>> = keyring
        .versions
        .iter()
        .map(|version| {
            version.material.as_ref().map(|key| {
                let mut text = Zeroizing::new(String::with_capacity(48));
                BASE64.encode_string(key.expose_secret(), &mut text);
                text
            })
        })
        .collect();
    let out = DocumentOut {
        format: FORMAT,
        generation: Some(generation),
        versions: keyring
            .versions
            .iter()
            .zip(&encoded)
            .map(|(version, material)| VersionOut {
                id: version.id,
                key_id: &version.key_id,
                state: version.state.as_str(),
                created: humantime::format_rfc3339(version.created).to_string(),
                disabled_at: version
                    .disabled_at
                    .map(|time| humantime::format_rfc3339(time).to_string()),
                material: material.as_ref().map(|text| text.as_str()),
            })
            .collect(),
    };
    // Sized up front so the buffer never reallocates (a reallocation would
    // leave an un-zeroized copy of the key text behind).
    let mut buffer = Zeroizing::new(Vec::with_capacity(256 + 512 * keyring.versions.len()));
    serde_json::to_writer_pretty(&mut *buffer, &out)
        .map_err(|error| invalid(format!("cannot serialize: {error}")))?;
    buffer.push(b'\n');
    Ok(buffer)
}

/// Replaces every double-quoted span in a serde error message (serde quotes
/// offending string values) so no value from the file is echoed.
fn redact_quoted(message: &str) -> String {
    match (message.find('"'), message.rfind('"')) {
        (Some(first), Some(last)) if first < last => {
            format!("{}\"…\"{}", &message[..first], &message[last + 1..])
        }
        _ => message.to_string(),
    }
}

/// Checks the relational invariants; used by [`parse`], [`serialize`] and [`super::ops`].
pub(crate) fn check_invariants(keyring: &Keyring) -> Result<(), KeyringError> {
    if keyring.versions.is_empty() {
        return Err(invalid(
            "it holds no versions; a keyring needs exactly one primary version (create one with `kube-kms key init`)",
        ));
    }
    let mut primaries = keyring
        .versions
        .iter()
        .filter(|v| v.state == KeyState::Primary)
        .map(|v| v.id);
    match (primaries.next(), primaries.next()) {
        (Some(_), None) => {}
        (None, _) => {
            return Err(invalid(
                "no version is primary; exactly one must be: set the state of the newest enabled version to \"primary\"",
            ))
        }
        (Some(a), Some(b)) => {
            return Err(invalid(format!(
                "versions {a} and {b} are both primary; exactly one must be: set the other to \"enabled\""
            )))
        }
    }
    for (index, version) in keyring.versions.iter().enumerate() {
        let id = version.id;
        if id == 0 {
            return Err(invalid("version ids start at 1; found version 0"));
        }
        for earlier in keyring.versions.iter().take(index) {
            if earlier.id == id {
                return Err(invalid(format!(
                    "version {id} appears twice; ids must be unique"
                )));
            }
            if earlier.key_id == version.key_id {
                return Err(invalid(format!(
                    "versions {} and {id} have the same key_id; key_ids must be unique",
                    earlier.id
                )));
            }
        }
        let Some((key_id_version, fingerprint_hex)) = key_id::parse(&version.key_id) else {
            return Err(invalid(format!(
                "version {id}: key_id must look like kk-v{id}-<16 hex digits>; it was edited: restore the file from a backup"
            )));
        };
        if key_id_version != id {
            return Err(invalid(format!(
                "version {id}: its key_id names version {key_id_version}; key_ids must not be edited: restore the file from a backup"
            )));
        }
        match (&version.material, version.state) {
            (Some(_), KeyState::Destroyed) => {
                return Err(invalid(format!(
                    "version {id} is destroyed but still has material: remove its \"material\" field, or set its state to \"disabled\" if it must stay usable"
                )))
            }
            (None, KeyState::Destroyed) => {}
            (None, state) => {
                return Err(invalid(format!(
                    "version {id} is {state} but has no material; only destroyed versions lack it: restore the file from a backup, or mark it \"destroyed\" if the key is gone"
                )))
            }
            (Some(kek), _) => {
                let fingerprint = key_id::fingerprint(kek);
                let expected: String = fingerprint.iter().map(|b| format!("{b:02x}")).collect();
                if !bool::from(subtle::ConstantTimeEq::ct_eq(
                    expected.as_bytes(),
                    fingerprint_hex.as_bytes(),
                )) {
                    return Err(invalid(format!(
                        "version {id}: key_id {} does not match its material; the key or the key_id was changed: restore the file from a backup",
                        version.key_id
                    )));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let kek = Key256::from_array([0x21; 32]);
        let key_id = key_id::for_version(1, &kek);
        let material = BASE64.encode(kek.expose_secret());
        format!(
            r#"{{"format":"kube-kms-keyring/v1","versions":[{{"id":1,"key_id":"{key_id}","state":"primary","created":"2026-01-02T03:04:05Z","material":"{material}"}}]}}"#
        )
        .into_bytes()
    }

    fn problem(bytes: &[u8]) -> String {
        match parse(bytes) {
            Err(KeyringError::Invalid { problem, .. }) => problem,
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn parses_and_round_trips() {
        let keyring = parse(&sample()).unwrap();
        assert_eq!(keyring.versions().len(), 1);
        let info = &keyring.metadata()[0];
        assert_eq!(info.state, KeyState::Primary);
        assert_eq!(info.created, "2026-01-02T03:04:05Z");
        let written = serialize(&keyring).unwrap();
        let again = parse(&written).unwrap();
        assert_eq!(again.metadata(), keyring.metadata());
        assert_eq!(
            again.versions()[0].material().unwrap().expose_secret(),
            &[0x21; 32]
        );
    }

    #[test]
    fn escaped_material_is_refused_without_echo() {
        let text = String::from_utf8(sample()).unwrap();
        let material = BASE64.encode([0x21u8; 32]);
        let escaped = text.replace(&material, &format!("\\u0049{}", &material[1..]));
        let problem = problem(escaped.as_bytes());
        assert!(problem.contains("without JSON escapes"), "{problem}");
        assert!(!problem.contains(&material[1..]), "{problem}");
    }

    #[test]
    fn misplaced_material_is_not_echoed() {
        let material = BASE64.encode([0x21u8; 32]);
        let text = String::from_utf8(sample())
            .unwrap()
            .replace("\"id\":1", &format!("\"id\":\"{material}\""));
        let problem = problem(text.as_bytes());
        assert!(!problem.contains(&material[..20]), "{problem}");
        assert!(problem.contains("line 1"), "{problem}");
    }

    #[test]
    fn wrong_material_length_and_fingerprint() {
        let text = String::from_utf8(sample()).unwrap();
        let material = BASE64.encode([0x21u8; 32]);
        let short = text.replace(&material, &BASE64.encode([0x21u8; 31]));
        assert!(problem(short.as_bytes()).contains("must be 32 bytes"));
        let other = text.replace(&material, &BASE64.encode([0x22u8; 32]));
        assert!(problem(other.as_bytes()).contains("does not match its material"));
    }

    #[test]
    fn structural_errors_name_the_problem() {
        let text = String::from_utf8(sample()).unwrap();
        assert!(problem(text.replace("primary", "enabled").as_bytes())
            .contains("no version is primary"));
        assert!(
            problem(text.replace("primary", "bogus").as_bytes()).contains("state must be one of")
        );
        assert!(problem(text.replace("keyring/v1", "keyring/v9").as_bytes())
            .contains("\"format\" field"));
        assert!(
            problem(text.replace("2026-01-02T03:04:05Z", "yesterday").as_bytes())
                .contains("RFC 3339")
        );
        assert!(
            problem(text.replace("\"id\":1", "\"id\":2").as_bytes()).contains("names version 1")
        );
        assert!(
            problem(b"{\"format\":\"kube-kms-keyring/v1\",\"versions\":[]}")
                .contains("no versions")
        );
        assert!(problem(b"not json").contains("JSON"));
        assert!(problem(
            text.replace("\"state\"", "\"extra\":1,\"state\"")
                .as_bytes()
        )
        .contains("unknown field"));
        let second = Key256::from_array([0x31; 32]);
        let second_entry = format!(
            r#"{{"id":2,"key_id":"{}","state":"destroyed","created":"2026-01-02T03:04:05Z","material":"{}"}}"#,
            key_id::for_version(2, &second),
            BASE64.encode(second.expose_secret())
        );
        let two = text.replace("}]}", &format!("}},{second_entry}]}}"));
        assert!(problem(two.as_bytes()).contains("version 2 is destroyed but still has material"));
        let primaries = two.replace("destroyed", "primary");
        assert!(problem(primaries.as_bytes()).contains("versions 1 and 2 are both primary"));
        let duplicate = two.replace("\"id\":2", "\"id\":1");
        assert!(problem(duplicate.as_bytes()).contains("version 1 appears twice"));
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact_quoted("invalid type: string \"secret\", expected u32 at line 1"),
            "invalid type: string \"…\", expected u32 at line 1"
        );
        assert_eq!(redact_quoted("EOF at line 1"), "EOF at line 1");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = parse(&bytes);
        }
    }
}
