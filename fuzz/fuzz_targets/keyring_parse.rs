//! Arbitrary bytes as a keyring file: parsing never panics, and a keyring that
//! loads re-serializes canonically and loads back to the same metadata and keys.
#![no_main]
use kube_kms::keyring::format;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(keyring) = format::parse(data) else {
        return;
    };
    let written = format::serialize(&keyring).expect("a keyring that loaded must serialize");
    let again = format::parse(&written).expect("a serialized keyring must load");
    assert_eq!(again.metadata(), keyring.metadata());
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
});
