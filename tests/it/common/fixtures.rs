//! Fixture helpers for the etcd-inspect tests: where the shared etcd backups
//! are, and what each one must contain, read from its `.json` (never
//! hard-coded). Two `.json` shapes exist: the generated fixtures (objects keyed
//! by etcd key, with `latest` and `history` states) and `apiserver/` ones
//! (objects as a list, plus `other_keys`); both become an [`Expected`].
//! For verification tests: every stored value of a file ([`stored_values`]),
//! the seeds a fixture's KMS v2 plugin wrapped as a [`SeedTable`]
//! ([`seed_table`]) and its aescbc/aesgcm/secretbox keys as an
//! EncryptionConfiguration ([`encryption_config_yaml`]).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use base64::Engine as _;
use kube_kms::inspect::source::bbolt::{self, FileOptions};
use kube_kms::inspect::verify::SeedTable;
use kube_kms::inspect::{ObservationSink, Observed, Revision};
use kube_kms::secret::SecretBytes;
use serde_json::Value;

/// `../shared/fixtures`.
pub fn fixture_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures"))
}

/// One backup file and the `.json` describing it.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// The bbolt file.
    pub db: PathBuf,
    /// Its description.
    pub json: PathBuf,
}

/// Every backup of the shared fixtures: snapshots and member dbs.
pub fn all_fixtures() -> Vec<Fixture> {
    let dir = fixture_dir();
    let mut fixtures = Vec::new();
    for name in ["plaintext", "mixed", "kmsv2-rotated"] {
        for suffix in [".db", ".member.db"] {
            fixtures.push(Fixture {
                db: dir.join(format!("{name}{suffix}")),
                json: dir.join(format!("{name}.json")),
            });
        }
    }
    let apiserver = dir.join("apiserver");
    for (db, json) in [
        ("plaintext.db", "plaintext.json"),
        ("kmsv2-rotated.db", "kmsv2-rotated.json"),
        ("kmsv2-member.db", "kmsv2-rotated.json"),
    ] {
        fixtures.push(Fixture {
            db: apiserver.join(db),
            json: apiserver.join(json),
        });
    }
    fixtures
}

/// What one stored value must be classified as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedValue {
    /// `identity`, `identity-json`, `aescbc`, ..., `kms-v2`.
    pub provider: String,
    /// Key/provider name, when the fixture says.
    pub name: Option<String>,
    /// kms v2 key_id.
    pub key_id: Option<String>,
    /// kms v2 DEK source type, when the fixture says.
    pub dek_source_type: Option<String>,
    /// kms v2 annotation keys, when the fixture says.
    pub annotation_keys: Option<Vec<String>>,
}

/// The expected history of one etcd key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExpectedKey {
    /// Latest state (`None` = deleted).
    pub latest: Option<ExpectedValue>,
    /// Providers of older revisions, oldest first.
    pub history: Vec<String>,
}

/// Summary counts of one resource.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExpectedSummary {
    /// Latest values by label (`identity`, `kms-v2:<key_id>`...).
    pub latest: BTreeMap<String, u64>,
    /// Plaintext history revisions.
    pub history_plaintext: u64,
    /// Deleted keys.
    pub deleted: u64,
    /// All revisions (apiserver fixtures only).
    pub events: Option<u64>,
}

/// Everything a fixture's `.json` promises.
#[derive(Debug, Clone, Default)]
pub struct Expected {
    /// By etcd key.
    pub keys: BTreeMap<String, ExpectedKey>,
    /// `secrets` and `configmaps`.
    pub summaries: BTreeMap<String, ExpectedSummary>,
}

fn str_field(value: &Value, name: &str) -> Option<String> {
    value.get(name).and_then(Value::as_str).map(str::to_string)
}

fn value_from_state(state: &Value) -> ExpectedValue {
    ExpectedValue {
        provider: str_field(state, "provider").unwrap_or_default(),
        name: str_field(state, "name"),
        key_id: str_field(state, "key_id"),
        dek_source_type: str_field(state, "dek_source_type"),
        annotation_keys: None,
    }
}

/// `kms-v2:key-A` (apiserver label) → provider and key_id.
fn value_from_label(label: &str) -> ExpectedValue {
    let (provider, key_id) = match label.split_once(':') {
        Some((provider, key_id)) => (provider.to_string(), Some(key_id.to_string())),
        None => (label.to_string(), None),
    };
    ExpectedValue {
        provider,
        name: None,
        key_id,
        dek_source_type: None,
        annotation_keys: None,
    }
}

/// Reads a fixture's `.json`.
pub fn expected(fixture: &Fixture) -> Expected {
    let text = std::fs::read_to_string(&fixture.json).expect("fixture json readable");
    let json: Value = serde_json::from_str(&text).expect("fixture json parses");
    let mut expected = Expected::default();
    for resource in ["secrets", "configmaps"] {
        let Some(summary) = json.get(resource) else {
            continue;
        };
        expected.summaries.insert(
            resource.to_string(),
            ExpectedSummary {
                latest: summary
                    .get("latest")
                    .and_then(Value::as_object)
                    .map(|map| {
                        map.iter()
                            .map(|(label, count)| (label.clone(), count.as_u64().unwrap_or(0)))
                            .collect()
                    })
                    .unwrap_or_default(),
                history_plaintext: summary
                    .get("history_plaintext")
                    .and_then(Value::as_u64)
                    .unwrap_or(0),
                deleted: summary.get("deleted").and_then(Value::as_u64).unwrap_or(0),
                events: summary.get("events").and_then(Value::as_u64),
            },
        );
    }
    match json.get("objects") {
        Some(Value::Object(objects)) => {
            for (key, object) in objects {
                let latest = object
                    .get("latest")
                    .filter(|state| !state.is_null())
                    .map(value_from_state);
                let history = object
                    .get("history")
                    .and_then(Value::as_array)
                    .map(|states| {
                        states
                            .iter()
                            .map(|state| str_field(state, "provider").unwrap_or_default())
                            .collect()
                    })
                    .unwrap_or_default();
                expected
                    .keys
                    .insert(key.clone(), ExpectedKey { latest, history });
            }
        }
        Some(Value::Array(objects)) => {
            for object in objects {
                let key = str_field(object, "etcd_key").unwrap_or_else(|| {
                    let resource = match object.get("kind").and_then(Value::as_str) {
                        Some("ConfigMap") => "configmaps",
                        _ => "secrets",
                    };
                    format!(
                        "/registry/{resource}/{}/{}",
                        str_field(object, "namespace").unwrap_or_default(),
                        str_field(object, "name").unwrap_or_default()
                    )
                });
                let latest = str_field(object, "provider").map(|label| {
                    let mut value = value_from_label(&label);
                    value.annotation_keys = object
                        .get("annotations")
                        .and_then(Value::as_object)
                        .map(|map| map.keys().cloned().collect());
                    value
                });
                let history = object
                    .get("history")
                    .and_then(Value::as_array)
                    .map(|labels| {
                        labels
                            .iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default();
                expected.keys.insert(key, ExpectedKey { latest, history });
            }
            if let Some(others) = json.get("other_keys").and_then(Value::as_object) {
                for (key, label) in others {
                    expected.keys.insert(
                        key.clone(),
                        ExpectedKey {
                            latest: label.as_str().map(value_from_label),
                            history: Vec::new(),
                        },
                    );
                }
            }
        }
        _ => {}
    }
    expected
}

/// A scratch copy of a fixture (to truncate or corrupt), in a fresh temp dir.
pub fn scratch_copy(fixture: &Fixture, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("kk")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let name = fixture
        .db
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "copy.db".to_string());
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).expect("write scratch copy");
    (dir, path)
}

/// One revision of one key, as stored in a backup file.
#[derive(Debug, Clone)]
pub struct StoredValue {
    /// The etcd key.
    pub key: Vec<u8>,
    /// When it was written.
    pub revision: Revision,
    /// The stored bytes.
    pub value: Vec<u8>,
}

/// Collects every put a file scan observes.
#[derive(Default)]
struct Collector {
    values: Vec<StoredValue>,
    errors: Vec<String>,
}

impl ObservationSink for Collector {
    fn observe(&mut self, observed: Observed<'_>) {
        if let Observed::Put {
            key,
            revision,
            value,
        } = observed
        {
            self.values.push(StoredValue {
                key: key.to_vec(),
                revision,
                value: value.to_vec(),
            });
        }
    }

    fn read_error(&mut self, message: String) {
        self.errors.push(message);
    }
}

/// Every value (all revisions, every key) the fixture's file holds, read
/// with the library's file reader; panics on a read error.
pub fn stored_values(fixture: &Fixture) -> Vec<StoredValue> {
    let mut collector = Collector::default();
    bbolt::read_file(&fixture.db, &mut collector, FileOptions::default())
        .unwrap_or_else(|error| panic!("{}: {error}", fixture.db.display()));
    assert!(
        collector.errors.is_empty(),
        "{}: {:?}",
        fixture.db.display(),
        collector.errors
    );
    collector.values
}

fn base64_field(value: &Value, name: &str) -> Vec<u8> {
    let text = value
        .get(name)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("fixture entry without {name}"));
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap_or_else(|_| panic!("fixture field {name} is not base64"))
}

/// The seeds (or DEKs) the fixture's KMS v2 plugin wrapped, standing in for
/// it: `kms_v2_dek_sources` of a generated fixture (any annotations), or the
/// `seeds` file an apiserver fixture names (with the annotations kube-apiserver
/// stored, which must match). Empty when the fixture has no KMS v2 values.
pub fn seed_table(fixture: &Fixture) -> SeedTable {
    let text = std::fs::read_to_string(&fixture.json).expect("fixture json readable");
    let json: Value = serde_json::from_str(&text).expect("fixture json parses");
    let mut table = SeedTable::new();
    for entry in json
        .get("kms_v2_dek_sources")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        // The generated fixtures' plugin does not bind the annotations it
        // adds to its ciphertext, and their `.json` does not list them.
        table.insert_any_annotations(
            &str_field(entry, "keyID").expect("kms_v2_dek_sources entry without keyID"),
            &base64_field(entry, "encryptedDEKSource"),
            SecretBytes::new(base64_field(entry, "plaintext")),
        );
    }
    if let Some(seeds) = json.get("seeds").and_then(Value::as_str) {
        let dir = fixture.json.parent().expect("fixture json has a directory");
        let lines = std::fs::read_to_string(dir.join(seeds)).expect("seeds file readable");
        for line in lines.lines().filter(|line| !line.trim().is_empty()) {
            let entry: Value = serde_json::from_str(line).expect("seeds line parses");
            let annotations: BTreeMap<String, Vec<u8>> = entry
                .get("annotations")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .map(|(name, value)| {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(value.as_str().unwrap_or_default())
                        .expect("annotation value is base64");
                    (name.clone(), bytes)
                })
                .collect();
            table.insert(
                &str_field(&entry, "key_id").expect("seeds line without key_id"),
                &base64_field(&entry, "encryptedDEKSource_b64"),
                &annotations,
                SecretBytes::new(base64_field(&entry, "seed_b64")),
            );
        }
    }
    table
}

/// An EncryptionConfiguration (YAML) with the fixture's `provider_keys`
/// (`aescbc/key1` → base64 secret) for secrets and configmaps, or `None`
/// when it has none. `tamper` may change each key's bytes (for wrong-key
/// tests).
pub fn encryption_config_yaml(fixture: &Fixture, tamper: fn(&mut Vec<u8>)) -> Option<String> {
    let text = std::fs::read_to_string(&fixture.json).expect("fixture json readable");
    let json: Value = serde_json::from_str(&text).expect("fixture json parses");
    let keys = json.get("provider_keys").and_then(Value::as_object)?;
    if keys.is_empty() {
        return None;
    }
    let mut by_provider: BTreeMap<&str, Vec<(&str, String)>> = BTreeMap::new();
    for (label, secret) in keys {
        let (provider, name) = label
            .split_once('/')
            .expect("provider_keys labels are provider/name");
        let mut bytes = base64::engine::general_purpose::STANDARD
            .decode(secret.as_str().unwrap_or_default())
            .expect("provider key is base64");
        tamper(&mut bytes);
        by_provider.entry(provider).or_default().push((
            name,
            base64::engine::general_purpose::STANDARD.encode(bytes),
        ));
    }
    let mut yaml = String::from(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets, configmaps]\n  providers:\n",
    );
    for (provider, keys) in by_provider {
        yaml.push_str(&format!("  - {provider}:\n      keys:\n"));
        for (name, secret) in keys {
            yaml.push_str(&format!("      - name: {name}\n        secret: {secret}\n"));
        }
    }
    yaml.push_str("  - identity: {}\n");
    Some(yaml)
}
