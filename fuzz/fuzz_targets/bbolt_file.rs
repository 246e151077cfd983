//! A whole bbolt file from the fuzzer, read from memory: the reader and the
//! MVCC source never panic and never loop. Meta checksums are recomputed
//! (for a 4 KiB page size, as in the seed fixtures) so mutations get past the
//! meta pages into the tree walk.
#![no_main]
use kube_kms::inspect::mvcc::{self, FileScanOptions};
use kube_kms::inspect::scan::{ResourceFilter, Scan, ScanOptions};
use libfuzzer_sys::fuzz_target;

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
    let mut file = data.to_vec();
    fix_meta(&mut file, 0);
    fix_meta(&mut file, 4096);
    let mut scan = Scan::new(ScanOptions {
        resources: ResourceFilter::All,
        ..ScanOptions::default()
    });
    let options = FileScanOptions {
        verify_trailer: false,
    };
    if mvcc::scan_source(file.as_slice(), &mut scan, options).is_ok() {
        let result = scan.finish();
        let _ = result.resource_summaries();
        let _ = result.groups();
    }
});
