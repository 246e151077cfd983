//! Verification by decryption against the shared fixtures (`../shared/fixtures`
//! and its `apiserver/` files, written by a real kube-apiserver): with the
//! seeds each fixture's `.json` lists standing in for its KMS plugin (a
//! [`SeedTable`]), every kms v2 value must verify, through the verifier and
//! through the scan engine; one flipped bit (in the encrypted data, the
//! `encryptedDEKSource`, an annotation) or a value moved to another etcd key
//! must fail with the matching [`VerifyFailure`]. aescbc, aesgcm and
//! secretbox values verify with an EncryptionConfiguration built from the
//! fixture's keys, and fail with a wrong or missing key, in the library and
//! through the `etcd-inspect` binary.

use crate::common;
use crate::common::fixtures;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use common::inspect::etcd_inspect;
use fixtures::{
    all_fixtures, encryption_config_yaml, expected, seed_table, stored_values, Fixture, StoredValue,
};
use kube_kms::inspect::audit::{resource_of, Finding, Ledger, LedgerOptions, ResourceFilter};
use kube_kms::inspect::classify::{decode_encrypted_object, Classifier, Provider};
use kube_kms::inspect::encryption_config::EncryptionConfig;
use kube_kms::inspect::source::bbolt::{self, FileOptions};
use kube_kms::inspect::verify::object::expected_for_resource;
use kube_kms::inspect::verify::pool::VerifyPool;
use kube_kms::inspect::verify::{ExpectedObject, Verdict, Verifier, VerifyFailure};
use serde_json::Value;

const PREFIX: &[u8] = b"/registry";

/// What the value under `key` must decrypt to.
fn expected_object(key: &[u8]) -> ExpectedObject {
    let resource = resource_of(key, PREFIX).expect("a key under /registry");
    expected_for_resource(resource.as_bytes())
}

/// The fixture's values under `/registry` (the apiserver wrote a few keys of
/// its own elsewhere).
fn registry_values(fixture: &Fixture) -> Vec<StoredValue> {
    stored_values(fixture)
        .into_iter()
        .filter(|value| resource_of(&value.key, PREFIX).is_some())
        .collect()
}

/// Whether the fixture's plugin binds annotations to its ciphertext (the
/// apiserver fixtures' seeds file lists them; see `fixtures::seed_table`).
fn binds_annotations(fixture: &Fixture) -> bool {
    fixture
        .db
        .parent()
        .is_some_and(|dir| dir.ends_with("apiserver"))
}

fn name(fixture: &Fixture) -> String {
    fixture.db.display().to_string()
}

fn kms_verifier(fixture: &Fixture) -> Verifier {
    Verifier::new(Some(Arc::new(seed_table(fixture))), None)
}

fn config_verifier(yaml: &str) -> Verifier {
    let config = EncryptionConfig::parse(yaml).expect("the built EncryptionConfiguration parses");
    Verifier::new(None, Some(config))
}

fn provider_of(value: &StoredValue) -> Provider {
    Classifier::default().classify(&value.value).provider()
}

/// Latest kms v2 values the fixture's summaries promise (a floor for the
/// count verified, so no test passes on an empty file).
fn promised_kms_v2(fixture: &Fixture) -> u64 {
    expected(fixture)
        .summaries
        .values()
        .flat_map(|summary| &summary.latest)
        .filter(|(label, _)| label.starts_with("kms-v2"))
        .map(|(_, count)| count)
        .sum()
}

/// A copy of `value` with bit `bit` of byte `index` of `part` flipped;
/// `part` must be a subslice of `value`.
fn flip_in(value: &[u8], part: &[u8], index: usize, bit: u8) -> Vec<u8> {
    let offset = part.as_ptr() as usize - value.as_ptr() as usize;
    assert!(offset + part.len() <= value.len(), "part is inside value");
    assert!(index < part.len());
    let mut copy = value.to_vec();
    copy[offset + index] ^= 1 << bit;
    copy
}

/// The parts of a kms v2 value, as offsets-bearing subslices.
struct KmsParts<'a> {
    data: &'a [u8],
    dek_source: &'a [u8],
    annotation_values: Vec<&'a [u8]>,
}

fn kms_parts(value: &[u8]) -> KmsParts<'_> {
    let object = Classifier::default()
        .classify(value)
        .encrypted_object
        .expect("a kms v2 value has an EncryptedObject");
    let decoded = decode_encrypted_object(object).expect("the EncryptedObject decodes");
    KmsParts {
        data: decoded.data,
        dek_source: decoded.dek_source,
        annotation_values: decoded
            .annotations()
            .map(|(_, value)| value)
            .filter(|value| !value.is_empty())
            .collect(),
    }
}

#[test]
fn every_kms_v2_value_verifies_with_the_fixture_seeds() {
    let mut fixtures_with_kms = 0;
    for fixture in all_fixtures() {
        let name = name(&fixture);
        let values = registry_values(&fixture);
        let table_len = seed_table(&fixture).len();
        let verifier = kms_verifier(&fixture);
        let classifier = Classifier::default();
        let mut verified = 0u64;
        let mut dek_sources = HashSet::new();
        for value in &values {
            let verdict = verifier.verify(
                &classifier,
                &value.key,
                expected_object(&value.key),
                &value.value,
            );
            let key = String::from_utf8_lossy(&value.key);
            if provider_of(value) == Provider::KmsV2 {
                assert_eq!(
                    verdict,
                    Verdict::Verified,
                    "{name}: {key} rev {:?}",
                    value.revision
                );
                verified += 1;
                dek_sources.insert(kms_parts(&value.value).dek_source.to_vec());
            } else {
                // Without keys for them, other providers are not verified.
                assert_eq!(verdict, Verdict::NotVerified, "{name}: {key}");
            }
        }
        let promised = promised_kms_v2(&fixture);
        assert!(
            verified >= promised,
            "{name}: verified {verified} kms v2 values, the fixture promises {promised} latest"
        );
        // One Decrypt per distinct DEK source, as kube-apiserver caches.
        assert_eq!(verifier.decrypt_calls(), dek_sources.len() as u64, "{name}");
        assert!(verifier.unwrap_failures().is_empty(), "{name}");
        if promised > 0 {
            fixtures_with_kms += 1;
            assert!(
                dek_sources.len() <= table_len,
                "{name}: more DEK sources than seeds"
            );
        }
    }
    // mixed and kmsv2-rotated (snapshot and member db) and both apiserver files.
    assert_eq!(fixtures_with_kms, 6);
}

/// A scan of `fixture` verifying with `verifier`, as `etcd-inspect scan
/// --resources all` runs it.
fn verified_scan(fixture: &Fixture, verifier: Verifier) -> kube_kms::inspect::audit::AuditResult {
    let classifier = Classifier::default();
    let mut scan = Ledger::new(LedgerOptions {
        prefix: PREFIX.to_vec(),
        resources: ResourceFilter::parse("all"),
        ignore_history: false,
        require_provider: None,
        allowed_key_ids: None,
        classifier: classifier.clone(),
    });
    scan.verify_with(VerifyPool::start(Arc::new(verifier), classifier, 2));
    bbolt::read_file(&fixture.db, &mut scan, FileOptions::default())
        .unwrap_or_else(|error| panic!("{}: {error}", name(fixture)));
    scan.finish()
}

#[test]
fn the_scan_engine_verifies_every_fixture_value_it_has_keys_for() {
    for fixture in all_fixtures() {
        let name = name(&fixture);
        let values = registry_values(&fixture);
        let mut by_provider: BTreeMap<Provider, u64> = BTreeMap::new();
        for value in &values {
            *by_provider.entry(provider_of(value)).or_default() += 1;
        }
        let config = encryption_config_yaml(&fixture, |_| {})
            .map(|yaml| EncryptionConfig::parse(&yaml).expect("config parses"));
        let has_config = config.is_some();
        let verifier = Verifier::new(Some(Arc::new(seed_table(&fixture))), config);
        let result = verified_scan(&fixture, verifier);
        assert!(result.read_errors().is_empty(), "{name}");
        let summary = result.verification().expect("a verifying scan reports");
        assert!(summary.failed.is_empty(), "{name}: {:?}", summary.failed);
        assert!(summary.unwrap_failures.is_empty(), "{name}");
        let mut expect_verified = BTreeMap::new();
        let mut expect_not_verified = BTreeMap::new();
        for (&provider, &count) in &by_provider {
            match provider {
                Provider::KmsV2 => {
                    expect_verified.insert(provider, count);
                }
                Provider::Aescbc | Provider::Aesgcm | Provider::Secretbox if has_config => {
                    expect_verified.insert(provider, count);
                }
                provider if provider.is_encrypted() => {
                    expect_not_verified.insert(provider, count);
                }
                _ => {}
            }
        }
        assert_eq!(summary.verified, expect_verified, "{name}");
        assert_eq!(summary.not_verified, expect_not_verified, "{name}");
        assert!(
            result.values().all(|value| value.verify_failure.is_none()
                && value.finding != Some(Finding::VerifyFailed)),
            "{name}"
        );
    }
}

#[test]
fn a_flipped_bit_in_the_data_or_the_dek_source_fails() {
    let mut checked = 0;
    for fixture in all_fixtures() {
        let name = name(&fixture);
        let verifier = kms_verifier(&fixture);
        let classifier = Classifier::default();
        for value in registry_values(&fixture) {
            if provider_of(&value) != Provider::KmsV2 {
                continue;
            }
            let key = String::from_utf8_lossy(&value.key).into_owned();
            let expected = expected_object(&value.key);
            let parts = kms_parts(&value.value);
            let last = parts.data.len() - 1;
            // The first byte (HKDF info or nonce), one in the ciphertext, the
            // last (the tag).
            for (index, bit) in [(0, 0), (parts.data.len() / 2, 3), (last, 7)] {
                let tampered = flip_in(&value.value, parts.data, index, bit);
                assert_eq!(
                    verifier.verify(&classifier, &value.key, expected, &tampered),
                    Verdict::Failed(VerifyFailure::NotDecrypted),
                    "{name}: {key}: data byte {index}"
                );
            }
            // The plugin (here its seed table) does not know a tampered DEK
            // source, nor tampered annotations (the plugin authenticates them).
            let tampered = flip_in(
                &value.value,
                parts.dek_source,
                parts.dek_source.len() / 2,
                1,
            );
            assert_eq!(
                verifier.verify(&classifier, &value.key, expected, &tampered),
                Verdict::Failed(VerifyFailure::PluginRefused),
                "{name}: {key}: DEK source"
            );
            let annotations = if binds_annotations(&fixture) {
                assert!(!parts.annotation_values.is_empty(), "{name}: {key}");
                parts.annotation_values.as_slice()
            } else {
                &[]
            };
            for annotation in annotations {
                let tampered = flip_in(&value.value, annotation, 0, 0);
                assert_eq!(
                    verifier.verify(&classifier, &value.key, expected, &tampered),
                    Verdict::Failed(VerifyFailure::PluginRefused),
                    "{name}: {key}: annotation"
                );
            }
            // The untouched value still verifies: the failures came from the bit.
            assert_eq!(
                verifier.verify(&classifier, &value.key, expected, &value.value),
                Verdict::Verified,
                "{name}: {key}"
            );
            checked += 1;
        }
        // Each tampered DEK source was asked for once, and refused.
        assert!(
            verifier
                .unwrap_failures()
                .iter()
                .all(|failure| failure.failure == VerifyFailure::PluginRefused),
            "{name}"
        );
    }
    assert!(checked > 100, "only {checked} kms v2 values checked");
}

#[test]
fn a_value_moved_to_another_etcd_key_fails() {
    for fixture in all_fixtures() {
        let name = name(&fixture);
        let verifier = kms_verifier(&fixture);
        let classifier = Classifier::default();
        let values: Vec<StoredValue> = registry_values(&fixture)
            .into_iter()
            .filter(|value| provider_of(value) == Provider::KmsV2)
            .collect();
        let keys: Vec<&[u8]> = values.iter().map(|value| value.key.as_slice()).collect();
        for value in &values {
            let key = String::from_utf8_lossy(&value.key).into_owned();
            // Another object of the same resource, and the same name under
            // another resource: the AAD no longer matches.
            let other = keys
                .iter()
                .find(|other| {
                    **other != value.key && expected_object(other) == expected_object(&value.key)
                })
                .map(|other| other.to_vec());
            let renamed = if key.starts_with("/registry/secrets/") {
                key.replacen("/registry/secrets/", "/registry/configmaps/", 1)
            } else {
                key.replacen("/registry/configmaps/", "/registry/secrets/", 1)
            };
            for target in other.into_iter().chain([renamed.into_bytes()]) {
                assert_eq!(
                    verifier.verify(&classifier, &target, expected_object(&target), &value.value),
                    Verdict::Failed(VerifyFailure::NotDecrypted),
                    "{name}: {key} moved to {}",
                    String::from_utf8_lossy(&target)
                );
            }
        }
    }
}

/// The fixtures with aescbc/aesgcm/secretbox keys (mixed, both files).
fn fixtures_with_keys() -> Vec<(Fixture, String)> {
    let found: Vec<(Fixture, String)> = all_fixtures()
        .into_iter()
        .filter_map(|fixture| encryption_config_yaml(&fixture, |_| {}).map(|yaml| (fixture, yaml)))
        .collect();
    assert_eq!(found.len(), 2, "mixed.db and mixed.member.db have keys");
    found
}

fn symmetric(provider: Provider) -> bool {
    matches!(
        provider,
        Provider::Aescbc | Provider::Aesgcm | Provider::Secretbox
    )
}

#[test]
fn symmetric_values_verify_with_the_config_keys_and_fail_with_wrong_ones() {
    for (fixture, yaml) in fixtures_with_keys() {
        let name = name(&fixture);
        let right = config_verifier(&yaml);
        // Every key with one bit changed.
        let wrong_yaml = encryption_config_yaml(&fixture, |key| key[0] ^= 1).expect("keys");
        let wrong = config_verifier(&wrong_yaml);
        // The right keys under another name.
        let renamed = config_verifier(&yaml.replace("name: key1", "name: other-key"));
        let classifier = Classifier::default();
        let mut seen: BTreeMap<Provider, u64> = BTreeMap::new();
        for value in registry_values(&fixture) {
            let provider = provider_of(&value);
            if !symmetric(provider) {
                continue;
            }
            *seen.entry(provider).or_default() += 1;
            let key = String::from_utf8_lossy(&value.key).into_owned();
            let expected = expected_object(&value.key);
            let verify = |verifier: &Verifier, etcd_key: &[u8], stored: &[u8]| -> Verdict {
                verifier.verify(&classifier, etcd_key, expected, stored)
            };
            assert_eq!(
                verify(&right, &value.key, &value.value),
                Verdict::Verified,
                "{name}: {key}"
            );
            assert_eq!(
                verify(&renamed, &value.key, &value.value),
                Verdict::Failed(VerifyFailure::NoKey),
                "{name}: {key}"
            );
            // The payload after `k8s:enc:<provider>:v1:key1:`.
            let payload_start = format!("k8s:enc:{}:v1:key1:", provider.as_str()).len();
            let payload = &value.value[payload_start..];
            let last = payload.len() - 1;
            match provider {
                Provider::Aescbc => {
                    // No MAC: a wrong key almost always breaks the padding,
                    // and otherwise yields garbage that is not an object.
                    assert!(
                        matches!(
                            verify(&wrong, &value.key, &value.value),
                            Verdict::Failed(
                                VerifyFailure::NotDecrypted | VerifyFailure::NotAnObject
                            )
                        ),
                        "{name}: {key}"
                    );
                    // A bit of the IV flips the same bit of the first
                    // plaintext block (`k8s\0`...): decrypts, not an object.
                    assert_eq!(
                        verify(&right, &value.key, &flip_in(&value.value, payload, 0, 0)),
                        Verdict::Failed(VerifyFailure::NotAnObject),
                        "{name}: {key}: IV"
                    );
                    assert!(
                        matches!(
                            verify(&right, &value.key, &flip_in(&value.value, payload, last, 0)),
                            Verdict::Failed(
                                VerifyFailure::NotDecrypted | VerifyFailure::NotAnObject
                            )
                        ),
                        "{name}: {key}: last block"
                    );
                }
                _ => {
                    assert_eq!(
                        verify(&wrong, &value.key, &value.value),
                        Verdict::Failed(VerifyFailure::NotDecrypted),
                        "{name}: {key}"
                    );
                    for index in [0, payload.len() / 2, last] {
                        assert_eq!(
                            verify(
                                &right,
                                &value.key,
                                &flip_in(&value.value, payload, index, 2)
                            ),
                            Verdict::Failed(VerifyFailure::NotDecrypted),
                            "{name}: {key}: payload byte {index}"
                        );
                    }
                }
            }
            // aesgcm binds the value to its etcd key; aescbc and secretbox
            // have no associated data, so a moved value still opens (what
            // kube-apiserver's providers do, not a gap in verification).
            let moved = format!("{key}-moved");
            let moved_verdict = verify(&right, moved.as_bytes(), &value.value);
            if provider == Provider::Aesgcm {
                assert_eq!(
                    moved_verdict,
                    Verdict::Failed(VerifyFailure::NotDecrypted),
                    "{name}: {key}"
                );
            } else {
                assert_eq!(moved_verdict, Verdict::Verified, "{name}: {key}");
            }
        }
        let promised = expected(&fixture);
        let promised = &promised.summaries["secrets"].latest;
        for provider in [Provider::Aescbc, Provider::Aesgcm, Provider::Secretbox] {
            assert_eq!(
                seen.get(&provider).copied().unwrap_or(0),
                promised[provider.as_str()],
                "{name}: {} values",
                provider.as_str()
            );
        }
    }
}

/// `etcd-inspect scan --file DB --encryption-config CONFIG --format json`:
/// exit code and the summary record.
fn cli_scan(db: &std::path::Path, config: &std::path::Path) -> (i32, Value) {
    let (db, config) = (db.display().to_string(), config.display().to_string());
    let run = etcd_inspect(&[
        "scan",
        "--resources",
        "all",
        "--format",
        "json",
        "--file",
        &db,
        "--encryption-config",
        &config,
    ]);
    assert!(
        run.summary.is_object(),
        "no summary; stderr: {}",
        run.stderr
    );
    (run.code, run.summary)
}

#[test]
fn the_binary_verifies_with_an_encryption_config_and_flags_a_wrong_key() {
    let dir = tempfile::Builder::new()
        .prefix("kk")
        .tempdir_in("/tmp")
        .expect("temp dir");
    for (index, (fixture, yaml)) in fixtures_with_keys().into_iter().enumerate() {
        let name = name(&fixture);
        let right = dir.path().join(format!("right-{index}.yaml"));
        std::fs::write(&right, &yaml).expect("write config");
        let wrong = dir.path().join(format!("wrong-{index}.yaml"));
        let wrong_yaml = encryption_config_yaml(&fixture, |key| key[0] ^= 1).expect("keys");
        std::fs::write(&wrong, wrong_yaml).expect("write config");

        // mixed holds plaintext: exit 1 either way, but no verify finding
        // with the right keys.
        let (code, summary) = cli_scan(&fixture.db, &right);
        assert_eq!(code, 1, "{name}: {summary}");
        let verify = &summary["verify"];
        assert_eq!(verify["encryption_config"], true, "{name}");
        for provider in ["aescbc", "aesgcm", "secretbox"] {
            assert_eq!(verify["verified"][provider], 3, "{name}: {verify}");
        }
        assert_eq!(verify["failed"], serde_json::json!({}), "{name}: {verify}");
        assert!(summary["findings"].get("verify-failed").is_none(), "{name}");
        // kms v2 and v1 values: no plugin given, so not verified.
        assert!(
            verify["not_verified"]["kms-v2"].as_u64() > Some(0),
            "{name}"
        );

        let (code, summary) = cli_scan(&fixture.db, &wrong);
        assert_eq!(code, 1, "{name}");
        let failed: u64 = summary["verify"]["failed"]
            .as_object()
            .expect("failed counts")
            .values()
            .filter_map(Value::as_u64)
            .sum();
        assert_eq!(failed, 9, "{name}: {}", summary["verify"]);
        assert_eq!(summary["findings"]["verify-failed"], 9, "{name}");
        // Never a key or a plaintext in the report.
        let text = summary.to_string();
        assert!(!text.contains("password"), "{name}");
    }
}
