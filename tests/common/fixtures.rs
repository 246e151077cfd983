//! Fixture helpers for the etcd-inspect tests: where the shared etcd backups
//! are, and what each one must contain, read from its `.json` (never
//! hard-coded). Two `.json` shapes exist: the generated fixtures (objects keyed
//! by etcd key, with `latest` and `history` states) and `apiserver/` ones
//! (objects as a list, plus `other_keys`); both become an [`Expected`].
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

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
