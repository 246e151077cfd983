//! `scan --file` on a file that etcd is writing (issue 14 §2): a running
//! member's `member/snap/db` is refused (etcd holds its flock); a file whose
//! meta pages change during the walk is discarded; a copy taken mid-commit,
//! whose newest meta page points past its end, is read as of the older meta
//! page and the report says so.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::common::bbolt_craft::{etcd_file, Craft, PAGE};
use crate::common::etcd::Etcd;
use crate::common::fixtures::fixture_dir;
use crate::common::inspect::etcd_inspect;
use kube_kms::inspect::source::bbolt::{self, FileError, FileOptions, ReadAt};

use kube_kms::inspect::audit::{Ledger, LedgerOptions, ResourceFilter};

#[test]
fn the_live_db_of_a_running_member_is_refused() {
    let etcd = Etcd::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        for index in 0..20 {
            etcd.put(format!("/registry/secrets/ns/s{index}"), b"k8s\0x".to_vec())
                .await;
        }
    });
    let db = etcd.data_dir.join("member/snap/db");
    assert!(db.is_file(), "{}", db.display());
    let run = etcd_inspect(&[
        "scan",
        "--file",
        db.to_str().expect("utf-8"),
        "--format",
        "json",
    ]);
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("locked"), "{}", run.stderr);
    assert!(
        run.stderr.contains("etcdctl snapshot save"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("--endpoints"), "{}", run.stderr);
    assert!(run.values.is_empty(), "{}", run.stdout);
}

/// An in-memory file that a "commit" rewrites (meta page 0 with a newer
/// txid) as soon as the walk reads past the meta pages.
struct Committing {
    bytes: Mutex<Vec<u8>>,
    newer_meta: Vec<u8>,
    committed: AtomicBool,
}

impl ReadAt for Committing {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let mut bytes = self.bytes.lock().expect("lock");
        if offset >= 2 * PAGE as u64 && !self.committed.swap(true, Ordering::SeqCst) {
            bytes[..PAGE].copy_from_slice(&self.newer_meta);
        }
        bytes.as_slice().read_at(buf, offset)
    }
    fn size(&self) -> std::io::Result<u64> {
        Ok(self.bytes.lock().expect("lock").len() as u64)
    }
}

fn scan_source<R: ReadAt + Sync>(source: R) -> Result<bbolt::FileSummary, FileError> {
    let mut scan = Ledger::new(LedgerOptions {
        resources: ResourceFilter::All,
        ..LedgerOptions::default()
    });
    bbolt::read_image(
        source,
        &mut scan,
        FileOptions {
            verify_trailer: false,
        },
    )
}

#[test]
fn meta_pages_that_change_during_the_walk_discard_the_result() {
    let craft = etcd_file(8, &[]);
    // Unchanged: scans.
    scan_source(craft.bytes.clone()).expect("a still file scans");
    let mut newer = craft.clone();
    newer.meta(0, 2, 8, 3);
    let source = Committing {
        bytes: Mutex::new(craft.bytes.clone()),
        newer_meta: newer.bytes[..PAGE].to_vec(),
        committed: AtomicBool::new(false),
    };
    let error = scan_source(source).expect_err("a file committed to mid-walk");
    let message = error.to_string();
    assert!(message.contains("changed while it was read"), "{message}");
    assert!(message.contains("etcdctl snapshot save"), "{message}");
}

/// Makes the older meta page of `bytes` the newest (txid + 1) with a
/// high-water mark past the end of the file, as a copy taken between
/// etcd's page writes and its file growth would be.
fn newest_meta_past_the_end(bytes: &mut [u8]) -> (u64, u64) {
    let page_size = u32::from_le_bytes(bytes[24..28].try_into().expect("4 bytes")) as usize;
    let txid = |at: usize| u64::from_le_bytes(bytes[at + 64..at + 72].try_into().expect("8"));
    let (older, newer) = if txid(0) < txid(page_size) {
        (0, page_size)
    } else {
        (page_size, 0)
    };
    let new_txid = txid(newer) + 1;
    let past = (bytes.len() / page_size + 5) as u64;
    let mut craft = Craft {
        bytes: bytes[..2 * page_size].to_vec(),
    };
    // Rewrite the meta fields in place, keeping root and page id.
    let meta = older + 16;
    craft.bytes[meta + 40..meta + 48].copy_from_slice(&past.to_le_bytes());
    craft.bytes[meta + 48..meta + 56].copy_from_slice(&new_txid.to_le_bytes());
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in &craft.bytes[meta..meta + 56] {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    craft.bytes[meta + 56..meta + 64].copy_from_slice(&hash.to_le_bytes());
    bytes[..2 * page_size].copy_from_slice(&craft.bytes);
    ((older / page_size) as u64, new_txid)
}

#[test]
fn a_copy_taken_mid_commit_is_read_as_of_the_older_meta_and_says_so() {
    // A real member db (no snapshot trailer to break).
    let original = fixture_dir().join("plaintext.member.db");
    let dir = tempfile::tempdir().expect("temp dir");
    let copy = dir.path().join("mid-commit.db");
    let mut bytes = std::fs::read(&original).expect("fixture");
    let (page, txid) = newest_meta_past_the_end(&mut bytes);
    std::fs::write(&copy, &bytes).expect("write");

    let expected = etcd_inspect(&[
        "scan",
        "--file",
        original.to_str().expect("utf-8"),
        "--format",
        "json",
    ]);
    let run = etcd_inspect(&[
        "scan",
        "--file",
        copy.to_str().expect("utf-8"),
        "--format",
        "json",
    ]);
    assert_eq!(run.code, expected.code, "{}{}", run.stdout, run.stderr);
    assert_eq!(run.values, expected.values);
    let notice = run.summary["details"]["meta_fallback"]
        .as_str()
        .unwrap_or_else(|| panic!("no meta_fallback in {}", run.summary));
    assert!(
        notice.contains(&format!("meta page {page} (txid {txid})")) && notice.contains("older"),
        "{notice}"
    );
    assert!(run.stderr.contains("older meta page"), "{}", run.stderr);
    assert!(expected.summary["details"]["meta_fallback"].is_null());
}
