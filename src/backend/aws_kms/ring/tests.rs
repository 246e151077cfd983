//! Unit tests of `ring`.
use super::*;

#[test]
fn key_ids_round_trip_and_reject_malformed() {
    let uuid = "1234abcd-12ab-34cd-56ef-1234567890ab";
    let key_id = key_id_for(7, uuid);
    assert_eq!(key_id, "kk-aws-v7-1234abcd-12ab-34cd-56ef-1234567890ab");
    assert_eq!(parse_key_id(&key_id), Some((7, uuid)));
    assert_eq!(
        parse_key_id("kk-aws-v1-mrk-1234abcd12ab34cd56ef1234567890ab"),
        Some((1, "mrk-1234abcd12ab34cd56ef1234567890ab"))
    );
    for bad in [
        "",
        "kk-aws-v",
        "kk-aws-v1-",
        "kk-aws-v0-abc",
        "kk-aws-v01-abc",
        "kk-aws-v1-ab/c",
        "kk-aws-v1-ab c",
        "kk-v1-0123456789abcdef",
        "kk-aws-v4294967296-abc",
    ] {
        assert_eq!(parse_key_id(bad), None, "{bad:?}");
    }
    let long = format!("kk-aws-v1-{}", "a".repeat(129));
    assert_eq!(parse_key_id(&long), None);
}

#[test]
fn aliases_name_versions_and_the_primary() {
    let prefix = "alias/kube-kms/prod";
    assert_eq!(
        alias_role(prefix, "alias/kube-kms/prod/v12"),
        Some(AliasRole::Version(12))
    );
    assert_eq!(
        alias_role(prefix, "alias/kube-kms/prod/primary"),
        Some(AliasRole::Primary)
    );
    for other in [
        "alias/kube-kms/prod",
        "alias/kube-kms/prod/v0",
        "alias/kube-kms/prod/v01",
        "alias/kube-kms/prod/vx",
        "alias/kube-kms/prod/v1/x",
        "alias/kube-kms/prodx/v1",
        "alias/kube-kms/production/v1",
        "alias/other/v1",
    ] {
        assert_eq!(alias_role(prefix, other), None, "{other}");
    }
    assert_eq!(version_alias(prefix, 3), "alias/kube-kms/prod/v3");
    assert_eq!(primary_alias(prefix), "alias/kube-kms/prod/primary");
}

#[test]
fn prefixes_are_checked() {
    validate_prefix(DEFAULT_ALIAS_PREFIX).unwrap();
    validate_prefix("alias/kube-kms/cluster_1").unwrap();
    for bad in [
        "kube-kms",
        "alias/",
        "alias/kube-kms/",
        "alias/a//b",
        "alias/aws/kube-kms",
        "alias/kube kms",
        "alias/kübe",
    ] {
        assert!(validate_prefix(bad).is_err(), "{bad:?}");
    }
    assert!(validate_prefix(&format!("alias/{}", "a".repeat(240))).is_err());
}

#[test]
fn kms_states_map_to_kube_kms_states() {
    assert_eq!(state_from_kms("Enabled"), KeyState::Enabled);
    assert_eq!(state_from_kms("Disabled"), KeyState::Disabled);
    assert_eq!(state_from_kms("PendingDeletion"), KeyState::Destroyed);
    assert_eq!(state_from_kms("Unavailable"), KeyState::Disabled);
    assert_eq!(state_from_kms("Creating"), KeyState::Disabled);
}
