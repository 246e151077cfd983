//! Unit tests of `transit`.
use super::*;

fn key(latest: u32, min_decryption: u32, min_available: u32) -> TransitKey {
    let mut keys = serde_json::Map::new();
    for id in min_decryption..=latest {
        keys.insert(
            id.to_string(),
            serde_json::json!(1_700_000_000 + u64::from(id)),
        );
    }
    TransitKey::from_data(
        "transit",
        "k",
        &KeyData {
            key_type: "aes256-gcm96".into(),
            latest_version: latest,
            min_decryption_version: min_decryption,
            min_available_version: min_available,
            min_encryption_version: 0,
            derived: false,
            convergent_encryption: false,
            keys,
        },
    )
    .unwrap()
}

#[test]
fn key_ids_round_trip_and_reject_malformed() {
    let key_id = key_id_for("transit", "kube-kms", 3);
    assert_eq!(key_id, "kk-vault-v3-transit/kube-kms");
    assert_eq!(parse_key_id(&key_id), Some((3, "transit", "kube-kms")));
    assert_eq!(
        parse_key_id("kk-vault-v12-team/transit/k.e_y"),
        Some((12, "team/transit", "k.e_y"))
    );
    for bad in [
        "",
        "kk-vault-v",
        "kk-vault-v1-",
        "kk-vault-v1-key",
        "kk-vault-v0-transit/k",
        "kk-vault-v01-transit/k",
        "kk-vault-v1-transit/",
        "kk-vault-v1-/k",
        "kk-vault-v1-transit//k",
        "kk-vault-v1-transit/k y",
        "kk-vault-v99999999999-transit/k",
        "kk-aws-v1-transit/k",
    ] {
        assert_eq!(parse_key_id(bad), None, "{bad:?}");
    }
}

#[test]
fn stored_form_binds_the_version() {
    let raw = [7u8; 44];
    let transit = format!("vault:v3:{}", B64.encode(raw));
    let stored = compact(3, &transit).unwrap();
    assert_eq!(stored[0], FORMAT_BYTE);
    assert_eq!(&stored[1..5], &[0, 0, 0, 3]);
    assert_eq!(stored.len(), 5 + raw.len());
    assert_eq!(expand(3, &stored).as_deref(), Some(transit.as_str()));
    // Another version in the key_id than in the ciphertext: refused.
    assert_eq!(expand(2, &stored), None);
    assert!(compact(2, &transit).is_err());
    let mut other_format = stored.clone();
    other_format[0] = 0xA1;
    assert_eq!(expand(3, &other_format), None);
    assert_eq!(expand(3, &stored[..20]), None);
    assert_eq!(expand(3, &[]), None);
    assert!(compact(3, "vault:v3:***").is_err());
}

#[test]
fn states_follow_the_floors() {
    let k = key(5, 3, 2);
    let states: Vec<_> = k.versions.values().map(|v| v.state).collect();
    assert_eq!(
        states,
        [
            KeyState::Destroyed,
            KeyState::Disabled,
            KeyState::Enabled,
            KeyState::Enabled,
            KeyState::Primary
        ]
    );
    assert_eq!(k.primary().unwrap().key_id, "kk-vault-v5-transit/k");
    assert_eq!(k.versions[&2].created, None);
    assert!(k.versions[&3].created.is_some());
    assert_eq!(
        k.writes_ended(),
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_003) + WRITES_SETTLE)
    );
}

#[test]
fn floors_move_only_in_order() {
    let k = key(4, 1, 0);
    assert!(plan_disable(&k, 1).is_ok());
    let error = plan_disable(&k, 2).unwrap_err().to_string();
    assert!(
        error.contains("in order") && error.contains("version 1"),
        "{error}"
    );
    assert!(plan_disable(&k, 4)
        .unwrap_err()
        .to_string()
        .contains("primary"));
    assert!(plan_disable(&k, 9)
        .unwrap_err()
        .to_string()
        .contains("no such version"));
    let k = key(4, 3, 0);
    assert!(plan_enable(&k, 2).is_ok());
    let error = plan_enable(&k, 1).unwrap_err().to_string();
    assert!(error.contains("enable version 2 first"), "{error}");
    assert!(plan_enable(&k, 3).is_err());
    assert!(plan_destroy(&k, 1).is_ok());
    let error = plan_destroy(&k, 2).unwrap_err().to_string();
    assert!(error.contains("destroy versions 1 to 1 first"), "{error}");
    assert!(plan_destroy(&k, 3)
        .unwrap_err()
        .to_string()
        .contains("disable it first"));
    let k = key(4, 3, 2);
    assert!(plan_destroy(&k, 2).is_ok());
    assert!(plan_destroy(&k, 1)
        .unwrap_err()
        .to_string()
        .contains("already destroyed"));
    assert!(plan_enable(&k, 1)
        .unwrap_err()
        .to_string()
        .contains("destroyed"));
}

#[test]
fn keys_that_cannot_bind_associated_data_are_refused() {
    let data = |key_type: &str, derived: bool| KeyData {
        key_type: key_type.into(),
        latest_version: 1,
        min_decryption_version: 1,
        min_available_version: 0,
        min_encryption_version: 0,
        derived,
        convergent_encryption: false,
        keys: serde_json::Map::new(),
    };
    for key_type in AEAD_TYPES {
        assert!(TransitKey::from_data("t", "k", &data(key_type, false)).is_ok());
    }
    for key_type in ["rsa-2048", "ed25519", "aes256-cbc", "hmac"] {
        let error = TransitKey::from_data("t", "k", &data(key_type, false))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(key_type) && error.contains("aes256-gcm96"),
            "{error}"
        );
    }
    assert!(TransitKey::from_data("t", "k", &data("aes256-gcm96", true)).is_err());
}
