//! The wrapped-seed format under a fixed KEK and key_id.
//!
//! First byte even: the rest is untrusted input to `unwrap`. It must never
//! panic, and if it opens, it must be byte for byte what `wrap` makes of that
//! plaintext with that salt (no malleability), and must not open under
//! another key_id.
//! First byte odd: the rest is (salt, plaintext, mutation). The genuine wrap
//! must open; any real bit flip or truncation of it must not.
#![no_main]
use kube_kms::secret::Key256;
use kube_kms::wrap;
use libfuzzer_sys::fuzz_target;

const KEY_ID: &str = "kk-v1-0123456789abcdef";
const OTHER_KEY_ID: &str = "kk-v2-0123456789abcdef";

fuzz_target!(|data: &[u8]| {
    let kek = Key256::from_array([0x42; 32]);
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        if let Ok(plaintext) = wrap::unwrap(&kek, KEY_ID, rest) {
            let salt: [u8; wrap::SALT_LEN] = rest[1..1 + wrap::SALT_LEN].try_into().unwrap();
            let again =
                wrap::wrap_with_salt(&kek, KEY_ID, plaintext.expose_secret(), &salt).unwrap();
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
    let salt: [u8; wrap::SALT_LEN] = salt.try_into().unwrap();
    let wrapped = match wrap::wrap_with_salt(&kek, KEY_ID, plaintext, &salt) {
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
    let position = u16::from_le_bytes([mutation[0], mutation[1]]) as usize % (wrapped.len() * 8);
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
});
