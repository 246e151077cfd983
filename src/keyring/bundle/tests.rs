//! Unit tests of `bundle`.
use super::open::parse;
use super::*;
use crate::keyring::KeyState;
use std::time::SystemTime;

/// The shapes are shared with the keyring file (`wire`), the rules are
/// not: a payload with a file's `generation`, a `disabled_at`, or a
/// version without material is refused.
#[test]
fn payloads_keep_to_the_bundle_fields() {
    let ring = Keyring::initial(SystemTime::now()).unwrap();
    let version = ring.primary().unwrap();
    let material = BASE64.encode(version.material().unwrap().expose_secret());
    let payload = |extra_doc: &str, extra_version: &str, material: &str| {
        format!(
            r#"{{"format":"{FORMAT}"{extra_doc},"versions":[{{"id":1,"key_id":"{}","state":"primary","created":"2026-01-01T00:00:00Z"{extra_version}{material}}}]}}"#,
            version.key_id()
        )
    };
    let with_material = format!(r#","material":"{material}""#);
    parse(payload("", "", &with_material).as_bytes()).unwrap();
    for refused in [
        payload(r#","generation":3"#, "", &with_material),
        payload(
            "",
            r#","disabled_at":"2026-01-02T00:00:00Z""#,
            &with_material,
        ),
        payload("", "", ""),
    ] {
        assert!(parse(refused.as_bytes()).is_err(), "{refused}");
    }
}

fn ring_with(n: usize) -> Keyring {
    let now = SystemTime::now();
    let mut ring = Keyring::initial(now).unwrap();
    for _ in 1..n {
        ring.add(now).unwrap();
    }
    ring
}

fn x25519_pair() -> (Protection, Unlock) {
    let identity = age::x25519::Identity::generate();
    (
        Protection::Recipients(vec![identity.to_public()]),
        Unlock::Identities(vec![identity]),
    )
}

#[test]
fn export_open_merge_round_trip() {
    let source = ring_with(2);
    let (protection, unlock) = x25519_pair();
    let exported = export(&source, &[1, 2], &protection).unwrap();
    let bundle = open(&exported.bundle, &unlock).unwrap();
    let states: Vec<_> = bundle.metadata().iter().map(|v| (v.id, v.state)).collect();
    assert_eq!(states, [(1, KeyState::Enabled), (2, KeyState::Enabled)]);

    // A node that holds version 1 only (as if it had received it earlier).
    let only_v1 = open(&export(&source, &[1], &protection).unwrap().bundle, &unlock).unwrap();
    assert_eq!(only_v1.primary_at_export, Some(1));
    let mut target = Keyring {
        generation: 0,
        versions: only_v1.versions,
    };
    target.versions[0].state = KeyState::Primary;
    let outcome = merge(&mut target, &bundle).unwrap();
    assert_eq!(outcome.added.len(), 1);
    assert_eq!(outcome.present.len(), 1);
    assert_eq!(target.version(1).unwrap().state(), KeyState::Primary);
    assert_eq!(target.version(2).unwrap().state(), KeyState::Enabled);
    assert!(merge(&mut target, &bundle).unwrap().is_noop());
}

#[test]
fn conflicting_version_changes_nothing() {
    let source = ring_with(2);
    let mut other = ring_with(1);
    let (protection, unlock) = x25519_pair();
    let bundle = open(
        &export(&source, &[1, 2], &protection).unwrap().bundle,
        &unlock,
    )
    .unwrap();
    let before = crate::keyring::format::serialize(&other).unwrap();
    let error = merge(&mut other, &bundle).unwrap_err();
    assert!(error.to_string().contains("other material"), "{error}");
    assert_eq!(crate::keyring::format::serialize(&other).unwrap(), before);
}

#[test]
fn wrong_identity_and_tampering_are_refused() {
    let source = ring_with(1);
    let (protection, _) = x25519_pair();
    let (_, stranger) = x25519_pair();
    let exported = export(&source, &[1], &protection).unwrap();
    let error = open(&exported.bundle, &stranger).unwrap_err();
    assert!(
        error.to_string().contains("none of the given identities"),
        "{error}"
    );
    let (protection, unlock) = x25519_pair();
    let exported = export(&source, &[1], &protection).unwrap();
    for index in [exported.bundle.len() - 1, exported.bundle.len() - 40, 60] {
        let mut tampered = exported.bundle.clone();
        tampered[index] ^= 0x01;
        assert!(
            open(&tampered, &unlock).is_err(),
            "flip at {index} accepted"
        );
    }
    let truncated = &exported.bundle[..exported.bundle.len() - 1];
    assert!(open(truncated, &unlock).is_err());
}

#[test]
fn destroyed_versions_are_not_exported_nor_resurrected() {
    let now = SystemTime::now();
    let mut ring = Keyring::initial(now).unwrap();
    ring.rotate(now).unwrap();
    let (protection, unlock) = x25519_pair();
    let bundle = open(
        &export(&ring, &[1, 2], &protection).unwrap().bundle,
        &unlock,
    )
    .unwrap();
    ring.disable(1).unwrap();
    ring.destroy(1).unwrap();
    assert!(matches!(
        export(&ring, &[1], &protection),
        Err(BundleError::NotExportable { id: 1, .. })
    ));
    let outcome = merge(&mut ring, &bundle).unwrap();
    assert_eq!(outcome.destroyed_locally.len(), 1);
    assert!(ring.version(1).unwrap().material().is_none());
}
