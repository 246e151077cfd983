//! The invariants the fuzz targets check, one function per target, shared
//! with the normal test suite: each `fuzz_targets/T.rs` calls `checks::T` on
//! the fuzzer's bytes, and `tests/it/fuzz_regressions.rs` calls the same function
//! on every file in `fuzz/regressions/T/` and `fuzz/seeds/T/`, so a crash
//! input turned regression runs on stable in `.ci/run`.
//!
//! A check panics (assert) when an invariant breaks; parsers themselves must
//! never panic. Included with `#[path]` by both crates, hence no `//!`-level
//! crate attributes here.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};

use kube_kms::backend::file::FileBackend;
use kube_kms::backend::KeyBackend;
use kube_kms::inspect::audit::{Ledger, LedgerOptions, ResourceFilter};
use kube_kms::inspect::classify::{self, build, Classification, Classifier, Provider};
use kube_kms::inspect::encryption_config::{EncryptionConfig, KeyedProvider};
use kube_kms::inspect::remnants::RemnantScope;
use kube_kms::inspect::report::Report;
use kube_kms::inspect::source::bbolt::{self, BboltError, Database, FileOptions, TrailerStatus};
use kube_kms::inspect::{ObservationSink, Observed, Revision};
use kube_kms::keyring::format;
use kube_kms::proto::v2::DecryptRequest;
use kube_kms::secret::Key256;
use kube_kms::wrap;
use prost::Message as _;
use sha2::Digest as _;

// ---------------------------------------------------------------- keyring

/// Arbitrary bytes as a keyring file: parsing never panics, and a keyring
/// that loads re-serializes canonically and loads back to the same metadata
/// and keys.
pub fn keyring_parse(data: &[u8]) {
    let Ok(keyring) = format::parse(data) else {
        return;
    };
    let written = format::serialize(&keyring).expect("a keyring that loaded must serialize");
    let again = format::parse(&written).expect("a serialized keyring must load");
    assert_eq!(again.metadata(), keyring.metadata());
    assert_eq!(again.versions().len(), keyring.versions().len());
    for (a, b) in keyring.versions().iter().zip(again.versions()) {
        assert_eq!(
            a.material().map(|k| *k.expose_secret()),
            b.material().map(|k| *k.expose_secret()),
            "material changed in a round trip"
        );
    }
    let rewritten = format::serialize(&again).expect("serialize again");
    assert_eq!(
        &written[..],
        &rewritten[..],
        "serialization is not canonical"
    );
}

// ---------------------------------------------------------------- wrapped seed

const KEY_ID: &str = "kk-v1-0123456789abcdef";
const OTHER_KEY_ID: &str = "kk-v2-0123456789abcdef";

/// The wrapped-seed format under a fixed KEK and key_id.
///
/// First byte even: the rest is untrusted input to `unwrap`. It must never
/// panic, and if it opens, it must be byte for byte what `wrap` makes of that
/// plaintext with that salt (no malleability), and must not open under
/// another key_id.
/// First byte odd: the rest is (salt, mutation, plaintext). The genuine wrap
/// (current format, or format 1 when the mutation's last byte is odd) must
/// open; any single bit flip or truncation of it must not.
pub fn wrapped_seed(data: &[u8]) {
    let kek = Key256::from_array([0x42; 32]);
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        if let Ok(plaintext) = wrap::unwrap(&kek, KEY_ID, rest) {
            let salt: [u8; wrap::SALT_LEN] = rest
                .get(1..1 + wrap::SALT_LEN)
                .and_then(|salt| salt.try_into().ok())
                .expect("an input that opens has a salt");
            let again = if rest.first() == Some(&wrap::LEGACY_FORMAT_VERSION) {
                wrap::wrap_legacy_with_salt(&kek, KEY_ID, plaintext.expose_secret(), &salt)
            } else {
                wrap::wrap_with_salt(&kek, KEY_ID, plaintext.expose_secret(), &salt)
            }
            .expect("re-wrap what opened");
            assert_eq!(
                again, rest,
                "an input that opens must be the canonical wrap"
            );
            assert!(wrap::unwrap(&kek, OTHER_KEY_ID, rest).is_err());
        }
        return;
    }
    if rest.len() < wrap::SALT_LEN + 4 {
        return;
    }
    let (salt, rest) = rest.split_at(wrap::SALT_LEN);
    let (mutation, plaintext) = rest.split_at(4);
    let salt: [u8; wrap::SALT_LEN] = salt.try_into().expect("salt length");
    let made = if mutation[3] & 1 == 1 {
        wrap::wrap_legacy_with_salt(&kek, KEY_ID, plaintext, &salt)
    } else {
        wrap::wrap_with_salt(&kek, KEY_ID, plaintext, &salt)
    };
    let wrapped = match made {
        Ok(wrapped) => wrapped,
        Err(wrap::WrapError::PlaintextTooLarge { .. }) => {
            assert!(plaintext.len() > wrap::MAX_PLAINTEXT_LEN);
            return;
        }
        Err(other) => panic!("wrap failed: {other}"),
    };
    assert!(wrapped.len() <= wrap::MAX_WRAPPED_LEN);
    let opened = wrap::unwrap(&kek, KEY_ID, &wrapped).expect("genuine wrap must open");
    assert_eq!(opened.expose_secret(), plaintext);
    let position =
        usize::from(u16::from_le_bytes([mutation[0], mutation[1]])) % (wrapped.len() * 8);
    if mutation[2] & 1 == 0 {
        let mut flipped = wrapped.clone();
        flipped[position / 8] ^= 1 << (position % 8);
        assert!(
            wrap::unwrap(&kek, KEY_ID, &flipped).is_err(),
            "bit flip {position} accepted"
        );
    } else {
        let len = position / 8;
        assert!(
            wrap::unwrap(&kek, KEY_ID, &wrapped[..len]).is_err(),
            "truncation to {len} accepted"
        );
    }
}

// ---------------------------------------------------------------- KMS v2 Decrypt request

/// Polls a future that never waits (the file backend does its work inline).
fn ready<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut context = Context::from_waker(Waker::noop());
    for _ in 0..1000 {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
    }
    panic!("the backend future did not complete without waiting");
}

/// A file backend over a fresh keyring (random KEKs, two versions: v1
/// enabled, v2 primary) in a private temp directory, made once per process;
/// and v1's key_id.
fn backend() -> &'static (FileBackend, String) {
    static BACKEND: OnceLock<(FileBackend, String)> = OnceLock::new();
    BACKEND.get_or_init(|| {
        let dir: PathBuf = std::env::temp_dir().join(format!(
            "kube-kms-fuzz-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir for the fuzz keyring");
        let path = dir.join("keyring.json");
        let mut keyring =
            kube_kms::keyring::Keyring::initial(std::time::SystemTime::now()).expect("keyring");
        keyring
            .rotate(std::time::SystemTime::now())
            .expect("rotate");
        kube_kms::keyring::create(&path, &keyring).expect("write the fuzz keyring");
        let backend = FileBackend::open(&path).expect("open the fuzz keyring");
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(dir.join("keyring.json.lock"));
        let _ = std::fs::remove_dir(&dir);
        let first = keyring.versions()[0].key_id().to_owned();
        (backend, first)
    })
}

/// The server's Decrypt path on the wire bytes of a request: prost decoding
/// never panics, a decoded request re-encodes to a message that decodes to
/// the same request, and the backend (random KEKs the fuzzer cannot know)
/// never opens a ciphertext it did not make.
///
/// First byte odd: the rest is (plaintext length, plaintext, key_id tweak):
/// a genuine Encrypt result is sent back through the wire encoding; it must
/// open to the plaintext under its own key_id and fail under any other.
pub fn decrypt_request(data: &[u8]) {
    let (backend, first_key_id) = backend();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let Ok(request) = DecryptRequest::decode(rest) else {
            return;
        };
        let encoded = request.encode_to_vec();
        let again = DecryptRequest::decode(encoded.as_slice()).expect("re-encoded request decodes");
        assert!(
            again == request,
            "a decoded request changed in a round trip"
        );
        let annotations: BTreeMap<String, Vec<u8>> = request.annotations.into_iter().collect();
        let result = ready(backend.unwrap(&request.key_id, &request.ciphertext, &annotations));
        assert!(
            result.is_err(),
            "a ciphertext the backend never made was decrypted"
        );
        return;
    }
    let Some((&len, rest)) = rest.split_first() else {
        return;
    };
    let len = usize::from(len).min(rest.len());
    let (plaintext, tweak) = rest.split_at(len);
    let wrapped = ready(backend.wrap(plaintext)).expect("wrap a plaintext of at most 255 bytes");
    let mut request = DecryptRequest {
        ciphertext: wrapped.ciphertext,
        uid: String::from_utf8_lossy(tweak).into_owned(),
        key_id: wrapped.key_id.to_string(),
        annotations: wrapped.annotations.into_iter().collect(),
    };
    let decoded =
        DecryptRequest::decode(request.encode_to_vec().as_slice()).expect("own request decodes");
    let annotations: BTreeMap<String, Vec<u8>> = decoded.annotations.clone().into_iter().collect();
    let opened = ready(backend.unwrap(&decoded.key_id, &decoded.ciphertext, &annotations))
        .expect("a genuine ciphertext opens");
    assert_eq!(opened.expose_secret(), plaintext);
    // Any other key_id (the tweak appended, or the other version's) fails.
    let others = [
        format!("{}{}", request.key_id, String::from_utf8_lossy(tweak)),
        first_key_id.clone(),
    ];
    for other in others {
        if other == request.key_id {
            continue;
        }
        request.key_id = other;
        assert!(
            ready(backend.unwrap(&request.key_id, &decoded.ciphertext, &annotations)).is_err(),
            "a ciphertext opened under another key_id"
        );
    }
}

// ---------------------------------------------------------------- stored values

fn utf8(bytes: Option<&[u8]>) -> Option<&str> {
    bytes.and_then(|b| std::str::from_utf8(b).ok())
}

/// The fields the report uses, owned, to compare two classifications.
fn fields(c: &Classification<'_>) -> (Provider, Option<Vec<u8>>, Option<Vec<u8>>) {
    (
        c.provider(),
        c.name.map(<[u8]>::to_vec),
        c.key_id.map(<[u8]>::to_vec),
    )
}

/// Classification of arbitrary stored values, and the scan engine around it:
/// never panics, whatever the bytes; a value classified as kms v2, protobuf
/// plaintext or aescbc/aesgcm/secretbox classifies the same after being
/// re-encoded from its classification with other payload bytes; and values
/// built from fuzzer fields classify as built.
pub fn classify_value(data: &[u8]) {
    let classification = classify::classify(data);
    let annotation_keys: Vec<&[u8]> = classification.annotation_keys().collect();
    let named = Classifier::with_names(["key:1", "kube-kms"]).classify(data);
    assert_eq!(
        named.provider().is_encrypted(),
        classification.provider().is_encrypted(),
        "configured names changed whether a value is encrypted"
    );
    reencoded_classifies_the_same(&classification, &annotation_keys);
    built_values_classify_as_built(data);

    // The first byte splits key and value, so keys are fuzzed too.
    let split = usize::from(data.first().copied().unwrap_or(0)).min(data.len());
    let (key, value) = data.split_at(split);
    let mut scan = Ledger::new(LedgerOptions {
        prefix: Vec::new(),
        resources: ResourceFilter::All,
        ..LedgerOptions::default()
    });
    scan.observe(Observed::Put {
        key,
        revision: Revision { main: 1, sub: 0 },
        value,
    });
    scan.observe(Observed::Delete {
        key: value,
        revision: Revision { main: 2, sub: 0 },
    });
    let report = Report::new(scan.finish(), Default::default());
    let mut out = Vec::new();
    let _ = report.write_json(&mut out);
    let _ = report.write_table(&mut out);
}

fn reencoded_classifies_the_same(c: &Classification<'_>, annotation_keys: &[&[u8]]) {
    match c.provider() {
        Provider::KmsV2 => {
            let (Some(name), Some(key_id)) = (utf8(c.name), utf8(c.key_id)) else {
                return;
            };
            let keys: Vec<&str> = annotation_keys
                .iter()
                .filter_map(|k| std::str::from_utf8(k).ok())
                .collect();
            if keys.len() != annotation_keys.len() {
                return;
            }
            // Empty values: the annotations' total size cannot grow past the bound.
            let annotations: Vec<(&str, &[u8])> = keys.iter().map(|k| (*k, &b""[..])).collect();
            let dek = match c.dek_source_type {
                Some(classify::DekSourceType::AesGcmKey) => 0,
                Some(classify::DekSourceType::HkdfSha256XnonceAesGcmSeed) => 1,
                None => panic!("kms v2 without a DEK source type"),
            };
            let value = build::kms_v2(name, key_id, Some(dek), &annotations, b"other data");
            let again = classify::classify(&value);
            assert_eq!(fields(&again), fields(c), "kms v2 re-encoding");
            assert_eq!(again.dek_source_type, c.dek_source_type);
            let again_keys: Vec<&[u8]> = again.annotation_keys().collect();
            assert_eq!(again_keys, annotation_keys, "annotation keys changed");
        }
        Provider::Identity if c.encoding == Some(classify::Encoding::Protobuf) => {
            let (Some(api_version), Some(kind)) = (utf8(c.api_version), utf8(c.kind)) else {
                return;
            };
            let value = build::plaintext_protobuf(api_version, kind, b"\x0a\x01x");
            let again = classify::classify(&value);
            assert_eq!(again.provider(), Provider::Identity);
            assert_eq!(again.encoding, c.encoding);
            assert_eq!(utf8(again.api_version), Some(api_version));
            assert_eq!(utf8(again.kind), Some(kind));
        }
        Provider::Aescbc | Provider::Aesgcm | Provider::Secretbox => {
            let Some(name) = utf8(c.name) else {
                return;
            };
            let word = match c.provider() {
                Provider::Aescbc => "aescbc",
                Provider::Aesgcm => "aesgcm",
                _ => "secretbox",
            };
            // Payload validity depends only on its length.
            let value = build::symmetric(word, name, 48);
            let again = classify::classify(&value);
            // With a 48-byte payload, an earlier `:` inside the name may now
            // fit; the name found is then a prefix of the original.
            assert_eq!(again.provider(), c.provider(), "{word} re-encoding");
            let found = again.name.unwrap_or_default();
            assert!(
                name.as_bytes().starts_with(found) && !found.is_empty(),
                "{word} name {name:?} became {:?}",
                String::from_utf8_lossy(found)
            );
        }
        _ => {}
    }
}

/// Builds a valid value from fuzzer fields and checks it classifies as built.
fn built_values_classify_as_built(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let text: String = rest
        .iter()
        .map(|&b| char::from(b'a' + b % 26))
        .take(40)
        .collect();
    if text.is_empty() {
        return;
    }
    let (name, key_id) = text.split_at(text.len() / 2);
    let name = if name.is_empty() { "p" } else { name };
    let key_id = if key_id.is_empty() { "k" } else { key_id };
    match selector % 3 {
        0 => {
            let value = build::kms_v2(
                name,
                key_id,
                Some(u64::from(selector >> 7)),
                &[("kms.example.com", b"x")],
                rest,
            );
            let c = classify::classify(&value);
            assert_eq!(c.provider(), Provider::KmsV2);
            assert_eq!(c.name, Some(name.as_bytes()));
            assert_eq!(c.key_id, Some(key_id.as_bytes()));
            assert_eq!(
                c.annotation_keys().collect::<Vec<_>>(),
                [&b"kms.example.com"[..]]
            );
        }
        1 => {
            let value = build::plaintext_protobuf(name, key_id, rest);
            let c = classify::classify(&value);
            assert_eq!(c.provider(), Provider::Identity);
            assert_eq!(c.api_version, Some(name.as_bytes()));
            assert_eq!(c.kind, Some(key_id.as_bytes()));
        }
        _ => {
            let value = build::symmetric("aesgcm", name, 28 + rest.len());
            let c = classify::classify(&value);
            assert_eq!(c.provider(), Provider::Aesgcm);
            assert_eq!(c.name, Some(name.as_bytes()));
        }
    }
}

// ---------------------------------------------------------------- bbolt files

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Recomputes a meta page's checksum (4 KiB pages, as in the seed fixtures)
/// so mutations get past the meta pages into the tree walk.
fn fix_meta(file: &mut [u8], page: usize) {
    let meta = page + 16;
    if let Some(sum) = file.get(meta..meta + 56).map(fnv1a64) {
        if let Some(slot) = file.get_mut(meta + 56..meta + 64) {
            slot.copy_from_slice(&sum.to_le_bytes());
        }
    }
}

/// A whole bbolt file, read from memory: the reader and the MVCC source never
/// panic and never loop; a scan that succeeds gives a report whose per-key
/// counts add up, and scanning the same bytes twice gives the same report.
pub fn bbolt_file(data: &[u8]) {
    let mut file = data.to_vec();
    fix_meta(&mut file, 0);
    fix_meta(&mut file, 4096);
    let report = |file: &[u8]| -> Option<Vec<u8>> {
        let mut scan = Ledger::new(LedgerOptions {
            resources: ResourceFilter::All,
            ..LedgerOptions::default()
        });
        let options = FileOptions {
            verify_trailer: false,
        };
        let summary = bbolt::read_image(file, &mut scan, options).ok()?;
        // The deep scan of what the walk did not reach: whatever the bytes,
        // remnants lie inside the file and say what they are.
        let scope = RemnantScope {
            prefix: b"/registry".to_vec(),
            resources: ResourceFilter::All,
            classifier: Classifier::default(),
        };
        if let Ok(db) = Database::open(file) {
            if let Ok(residue) = bbolt::deep::search(&db, &summary.reachable, &scope) {
                for remnant in &residue.remnants {
                    assert!(remnant.offset < file.len() as u64, "remnant past the end");
                    assert_eq!(remnant.page, remnant.offset / db.page_size());
                }
            }
        }
        let report = Report::new(scan.finish(), Default::default());
        let _ = report.result.resource_summaries();
        let _ = report.result.groups();
        let mut out = Vec::new();
        report
            .write_json(&mut out)
            .expect("a report of a finished scan writes to memory");
        Some(out)
    };
    let first = report(&file);
    let second = report(&file);
    assert_eq!(first, second, "two scans of the same bytes differ");
}

// ---------------------------------------------------------------- snapshot trailer

/// Snapshot trailers: a file whose last 32 bytes are the SHA-256 of the rest
/// (size % 512 == 32) must verify, any other trailer must not, and nothing
/// panics. First byte odd: the rest is made a well-formed snapshot first.
pub fn snapshot_trailer(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut file = rest.to_vec();
    fix_meta(&mut file, 0);
    fix_meta(&mut file, 4096);
    if mode & 1 == 1 {
        file.truncate(file.len() / 512 * 512);
        let digest: [u8; 32] = sha2::Sha256::digest(&file).into();
        file.extend_from_slice(&digest);
        if let Ok(db) = Database::open(file.as_slice()) {
            assert!(matches!(db.verify_trailer(), Ok(TrailerStatus::Verified)));
        }
    } else if let Ok(db) = Database::open(file.as_slice()) {
        match db.verify_trailer() {
            Ok(TrailerStatus::Verified) => {
                let (image, trailer) = file.split_at(file.len() - 32);
                let digest: [u8; 32] = sha2::Sha256::digest(image).into();
                assert_eq!(&digest[..], trailer);
            }
            Ok(TrailerStatus::Absent) => assert!(file.len() % 512 != 32),
            Err(BboltError::TrailerMismatch { .. }) => {}
            Err(other) => panic!("unexpected error verifying an in-memory trailer: {other}"),
        }
    }
}

// ---------------------------------------------------------------- EncryptionConfiguration

/// The EncryptionConfiguration parser on arbitrary text: never panics, and a
/// configuration that parses, written back out (as JSON, which is YAML) from
/// what was parsed, parses to the same kms names, key names and key bytes.
pub fn encryption_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = EncryptionConfig::parse(text) else {
        return;
    };
    let kinds = [
        KeyedProvider::AesCbc,
        KeyedProvider::AesGcm,
        KeyedProvider::Secretbox,
    ];
    use base64::Engine as _;
    let mut providers = Vec::new();
    for kind in kinds {
        let keys: Vec<serde_json::Value> = config
            .key_names(kind)
            .into_iter()
            .map(|name| {
                let key = config.key(kind, name).expect("a listed key exists");
                serde_json::json!({
                    "name": name,
                    "secret": base64::engine::general_purpose::STANDARD.encode(key.expose_secret()),
                })
            })
            .collect();
        if !keys.is_empty() {
            providers.push(serde_json::json!({ kind.as_str(): { "keys": keys } }));
        }
    }
    for name in config.kms_names() {
        providers.push(serde_json::json!({ "kms": { "name": name, "apiVersion": "v2" } }));
    }
    let written = serde_json::json!({
        "kind": "EncryptionConfiguration",
        "apiVersion": "apiserver.config.k8s.io/v1",
        "resources": [{ "resources": ["secrets"], "providers": providers }],
    })
    .to_string();
    let again = EncryptionConfig::parse(&written).expect("a re-written configuration parses");
    assert_eq!(again.kms_names(), config.kms_names(), "kms names changed");
    for kind in kinds {
        let names: BTreeSet<&str> = config.key_names(kind).into_iter().collect();
        let names_again: BTreeSet<&str> = again.key_names(kind).into_iter().collect();
        assert_eq!(names, names_again, "{} key names changed", kind.as_str());
        for name in names {
            assert_eq!(
                again.key(kind, name).map(|k| k.expose_secret().to_vec()),
                config.key(kind, name).map(|k| k.expose_secret().to_vec()),
                "{} key {name:?} changed",
                kind.as_str()
            );
        }
    }
}

// ---------------------------------------------------------------- scan reports

/// The destroy gate's report reader on arbitrary bytes: never panics, and
/// whenever the gate would let a report through, no line of it that is a
/// kms v2 value record under the key_id (read independently, as plain JSON)
/// was missed.
pub fn scan_report(data: &[u8]) {
    use kube_kms::keyring::destroy_gate::{self, Coverage, RequiredResources};
    const KEY_ID: &str = "fixture-kek-1";
    let path = std::path::Path::new("fuzz.jsonl");
    let Ok(usage) = destroy_gate::read_records(data, path, KEY_ID) else {
        return;
    };
    let coverage = Coverage {
        etcd_prefix: "/registry".to_string(),
        resources: RequiredResources::All,
    };
    let verdict = destroy_gate::evaluate(vec![usage], std::time::UNIX_EPOCH, &coverage);
    if !verdict.allows() {
        return;
    }
    let text = String::from_utf8_lossy(data);
    for line in text.lines() {
        let Ok(record) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let data = &record["data"];
        let under_key_id = record["type"] == "value"
            && data["provider"] == "kms-v2"
            && data["key_id"]["text"] == KEY_ID;
        assert!(
            !under_key_id,
            "the gate allowed a report using {KEY_ID}: {line}"
        );
    }
}

/// `vault_stored_form`: the Vault backend's parsers of what kube-apiserver
/// hands back (the key_id and the stored wrapped seed). The first byte picks
/// the part: even, `data` (UTF-8 or not) as a key_id: one that parses is
/// exactly the key_id of what it names; odd, a version (next 4 bytes) and a
/// stored form: one that expands is the compact form of what it expands to,
/// and never expands under another version.
pub fn vault_stored_form(data: &[u8]) {
    use kube_kms::backend::vault::transit;
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let Ok(text) = std::str::from_utf8(rest) else {
            return;
        };
        if let Some((version, mount, key)) = transit::parse_key_id(text) {
            assert_eq!(transit::key_id_for(mount, key, version), text);
            assert!(transit::validate_mount(mount).is_ok());
            assert!(transit::validate_key(key).is_ok());
        }
        return;
    }
    let Some((number, stored)) = rest.split_first_chunk::<4>() else {
        return;
    };
    let version = u32::from_be_bytes(*number);
    if let Some(transit_form) = transit::expand(version, stored) {
        assert_eq!(
            transit::compact(version, &transit_form).as_deref(),
            Ok(stored),
            "an input that expands must be the compact form"
        );
        assert_eq!(transit::expand(version.wrapping_add(1), stored), None);
    }
}

/// `wal_segment`: the first byte is a mode. Bit 0: read as the last segment
/// (a torn record is tolerated). Bit 1 clear: the rest is a segment as is;
/// bit 1 set: the rest, cut into chunks (a length byte, then that many
/// bytes), becomes the data of entry records framed and chained by the
/// writer, so the request decoder is reached past the CRC; they must all
/// read back exactly. Either way: no panic, errors name an offset inside
/// the file, records are 8-byte aligned and in order, and every put's key
/// and value lie inside its entry's data.
pub fn wal_segment(data: &[u8]) {
    use kube_kms::inspect::source::wal::request::{decode_entry, decode_request, Op};
    use kube_kms::inspect::source::wal::segment::encode::{entry, SegmentWriter};
    use kube_kms::inspect::source::wal::segment::{RecordType, SegmentReader};

    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let last = mode & 1 == 1;
    let (bytes, chunks) = if mode & 2 == 0 {
        (rest.to_vec(), None)
    } else {
        let mut writer = SegmentWriter::new(u32::from(mode) << 8);
        let mut chunks = Vec::new();
        let mut input = rest;
        while let Some((&len, tail)) = input.split_first() {
            let take = usize::from(len).min(tail.len());
            let (chunk, tail) = tail.split_at(take);
            let record = entry(1, chunks.len() as u64 + 1, 0, chunk);
            writer.record(RecordType::Entry, &record);
            chunks.push(record);
            input = tail;
        }
        let mut bytes = writer.bytes;
        bytes.resize(bytes.len() + usize::from(mode >> 2) * 8, 0);
        (bytes, Some(chunks))
    };
    let size = bytes.len() as u64;
    let mut reader = SegmentReader::new(bytes.as_slice(), size, u32::from(mode) << 8, last);
    let mut previous = None;
    let mut entries = Vec::new();
    loop {
        match reader.next_record() {
            Ok(Some(record)) => {
                assert_eq!(record.offset % 8, 0);
                assert!(previous.is_none_or(|before| before < record.offset));
                assert!(record.offset + 8 + record.data.len() as u64 <= size);
                previous = Some(record.offset);
                if record.kind != RecordType::Entry {
                    continue;
                }
                entries.push(record.data.to_vec());
                if let Ok(decoded) = decode_entry(record.data) {
                    let mut ops = Vec::new();
                    let _ = decode_request(decoded.data, &mut ops);
                    let span = decoded.data.as_ptr_range();
                    for op in ops {
                        let (Op::Put { key, .. } | Op::Delete { key }) = op;
                        let inside = |part: &[u8]| {
                            part.is_empty()
                                || (span.start <= part.as_ptr()
                                    && part.as_ptr_range().end <= span.end)
                        };
                        assert!(inside(key));
                        if let Op::Put { value, .. } = op {
                            assert!(inside(value));
                        }
                    }
                }
            }
            Ok(None) => {
                assert!(reader.end().is_some());
                break;
            }
            Err(error) => {
                assert!(
                    chunks.is_none(),
                    "a segment the writer framed failed: {error}"
                );
                assert!(error.offset() <= size);
                break;
            }
        }
    }
    if let Some(chunks) = chunks {
        assert_eq!(entries, chunks);
    }
}
