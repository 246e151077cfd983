//! Unit tests of `store`.
use super::*;

fn record(version: u32, key_id: &str, state: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "format": RECORD_FORMAT,
        "version": version,
        "key_id": key_id,
        "state": state,
        "created": 1_700_000_000u64,
        "disabled_at": 1_700_000_100u64,
        "generation": 4,
    }))
    .unwrap()
}

#[test]
fn records_parse_and_are_checked() {
    let parsed = parse_record(
        "kube-kms-state-v3",
        &record(3, "kk-p11-v3-0123456789abcdef", "disabled"),
    )
    .unwrap();
    assert_eq!(parsed.id, 3);
    assert_eq!(parsed.state, KeyState::Disabled);
    assert_eq!(parsed.generation, 4);
    assert_eq!(parsed.disabled_at, Some(time_of(1_700_000_100)));
    assert_eq!(
        parsed.info().disabled_at.as_deref(),
        Some("2023-11-14T22:15:00Z")
    );
    // Label and version disagree; key_id of another version; unknown state.
    assert!(parse_record("kube-kms-state-v4", &record(3, "kk-p11-v3-00", "enabled")).is_err());
    assert!(parse_record("kube-kms-state-v3", &record(3, "kk-p11-v31-00", "enabled")).is_err());
    assert!(parse_record("kube-kms-state-v3", &record(3, "kk-p11-v3-00", "active")).is_err());
    assert!(parse_record("kube-kms-state-v3", &vec![b' '; MAX_RECORD_BYTES + 1]).is_err());
}

proptest::proptest! {
    /// Whatever bytes a token hands back as a record, parsing returns
    /// (an error or a record) without panicking.
    #[test]
    fn arbitrary_records_never_panic(label in ".{0,40}", value in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
        let _ = parse_record(&label, &value);
    }
}
