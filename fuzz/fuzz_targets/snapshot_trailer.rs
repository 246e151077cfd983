//! Snapshot trailers: a file whose last 32 bytes are the SHA-256 of the rest
//! (size % 512 == 32) must verify, any other trailer must not, and nothing
//! panics. Meta checksums are recomputed (4 KiB pages, as in the seeds) so
//! most inputs open.
#![no_main]
use kube_kms::inspect::bbolt::{BboltError, Database, TrailerStatus};
use libfuzzer_sys::fuzz_target;
use sha2::Digest as _;

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

fn fix_meta(file: &mut [u8], page: usize) {
    let meta = page + 16;
    if let Some(sum) = file.get(meta..meta + 56).map(fnv1a64) {
        if let Some(slot) = file.get_mut(meta + 56..meta + 64) {
            slot.copy_from_slice(&sum.to_le_bytes());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut file = rest.to_vec();
    fix_meta(&mut file, 0);
    fix_meta(&mut file, 4096);
    if mode & 1 == 1 {
        // Make it a well-formed snapshot: whole 512-byte blocks + SHA-256.
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
});
