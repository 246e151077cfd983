//! Hostile bbolt files (issue 14 §1): crafted byte by byte, each of the
//! shapes bbolt never writes and that make a naive walk loop, explode or read
//! far more than the file: an inline bucket reached level after level by two
//! elements (2^n walk), a value or page shared by two parents, a sub-bucket
//! inside an inline bucket, overflow runs past the high-water mark, over
//! pages already reached, or larger than bbolt's maximum value size. Each
//! scan ends with exit 2 and a read error naming the page; the work done
//! (bytes read) stays about the file's size. The small files are kept under
//! `fuzz/regressions/bbolt_file/` (replayed by `fuzz_regressions`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::bbolt_craft::{bucket_value, etcd_file, leaf_bytes, Craft, BUCKET, PAGE};
use crate::common::inspect::ETCD_INSPECT;
use kube_kms::inspect::source::bbolt::{self, FileOptions, FileSummary, ReadAt};

use kube_kms::inspect::audit::{Ledger, LedgerOptions, ResourceFilter};

/// Liveness guard only (not a performance assertion): a scan that has not
/// ended after this long is looping, and is killed so the machine survives.
const HANG: Duration = Duration::from_secs(60);

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `etcd-inspect scan --file PATH --format json` under a 4 GiB address
/// space limit, killed after [`HANG`]; `code` is None when killed.
fn scan(path: &Path) -> Run {
    let dir = tempfile::tempdir().expect("temp dir");
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 4194304; exec \"$0\" scan --file \"$1\" --format json --skip-checksum >\"$2\" 2>\"$3\"")
        .arg(ETCD_INSPECT)
        .arg(path)
        .arg(&out)
        .arg(&err)
        .stdin(Stdio::null())
        .spawn()
        .expect("etcd-inspect runs");
    let started = Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status.code().unwrap_or(-1));
        }
        if started.elapsed() > HANG {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        code,
        stdout: std::fs::read_to_string(out).unwrap_or_default(),
        stderr: std::fs::read_to_string(err).unwrap_or_default(),
    }
}

/// Writes `craft` to a temp file and asserts the scan ends with exit 2 and a
/// read error naming page `pgid` and containing `reason`.
fn refused(name: &str, craft: &Craft, pgid: u64, reason: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(format!("{name}.db"));
    std::fs::write(&path, &craft.bytes).expect("write");
    let run = scan(&path);
    let all = format!("{}{}", run.stdout, run.stderr);
    assert_eq!(run.code, Some(2), "{name}: {all}");
    assert!(!all.contains("panicked"), "{name}: {all}");
    let page = format!("page {pgid} ");
    assert!(
        run.stderr
            .lines()
            .any(|line| line.contains(&page) && line.contains(reason)),
        "{name}: no read error naming {page:?} with {reason:?}: {all}"
    );
}

/// The library scan of `source`: its summary and read errors.
fn library_scan<R: ReadAt + Sync>(source: R) -> (FileSummary, Vec<String>) {
    let mut scan = Ledger::new(LedgerOptions {
        resources: ResourceFilter::All,
        ..LedgerOptions::default()
    });
    let summary = bbolt::read_image(
        source,
        &mut scan,
        FileOptions {
            verify_trailer: false,
        },
    )
    .expect("an etcd file with page errors still scans");
    (summary, scan.finish().read_errors().to_vec())
}

/// An inline bucket whose page holds two bucket elements pointing at the same
/// key and value: the next level, `levels` deep. A walk that follows both
/// visits 2^levels buckets.
fn doubling_inline_bucket(levels: usize) -> Vec<u8> {
    let mut value = bucket_value(0, &leaf_bytes(&[]));
    for _ in 0..levels {
        let mut page = vec![0u8; 16 + 2 * 16];
        page[8..10].copy_from_slice(&0x02u16.to_le_bytes());
        page[10..12].copy_from_slice(&2u16.to_le_bytes());
        for (element, pos) in [(16usize, 32u32), (32, 16)] {
            page[element..element + 4].copy_from_slice(&BUCKET.to_le_bytes());
            page[element + 4..element + 8].copy_from_slice(&pos.to_le_bytes());
            page[element + 8..element + 12].copy_from_slice(&1u32.to_le_bytes());
            page[element + 12..element + 16].copy_from_slice(&(value.len() as u32).to_le_bytes());
        }
        page.push(b'a');
        page.extend_from_slice(&value);
        value = bucket_value(0, &page);
    }
    value
}

/// The crafted files, by name: (file, page named, reason).
fn hostile_files() -> Vec<(&'static str, Craft, u64, &'static str)> {
    let mut files = Vec::new();

    let doubling = doubling_inline_bucket(48);
    files.push((
        "inline_bucket_doubling",
        etcd_file(8, &[(BUCKET, b"x", &doubling)]),
        2,
        "inline bucket",
    ));

    // Two elements of the `key` bucket's leaf share one revision's key and
    // value: it would be counted twice.
    let mut shared = etcd_file(8, &[]);
    let at = 3 * PAGE;
    let count = 2u16.to_le_bytes();
    shared.put(at + 10, &count);
    // Element 0 at +16, data moved to +48; element 1 at +32 points there too.
    let data: Vec<u8> = shared.bytes[at + 32..at + PAGE - 16].to_vec();
    shared.put(at + 48, &data);
    let element0: Vec<u8> = shared.bytes[at + 16..at + 32].to_vec();
    shared.put(
        at + 16,
        &[&element0[..4], &32u32.to_le_bytes(), &element0[8..]].concat(),
    );
    shared.put(
        at + 32,
        &[&element0[..4], &16u32.to_le_bytes(), &element0[8..]].concat(),
    );
    files.push(("shared_leaf_value", shared, 3, "shared by two elements"));

    // Two buckets of the root bucket with the same root page.
    let key_bucket = bucket_value(3, &[]);
    files.push((
        "shared_bucket_page",
        etcd_file(8, &[(BUCKET, b"meta", &key_bucket)]),
        3,
        "already reached",
    ));

    // A sub-bucket inside an inline bucket, itself inline.
    let inner = bucket_value(0, &leaf_bytes(&[]));
    let outer = bucket_value(0, &leaf_bytes(&[(BUCKET, b"y", &inner)]));
    files.push((
        "inline_bucket_in_inline_bucket",
        etcd_file(8, &[(BUCKET, b"x", &outer)]),
        2,
        "inside an inline bucket",
    ));

    // A sub-bucket inside an inline bucket pointing at a real page.
    let inner = bucket_value(4, &[]);
    let outer = bucket_value(0, &leaf_bytes(&[(BUCKET, b"y", &inner)]));
    let mut nested = etcd_file(8, &[(BUCKET, b"x", &outer)]);
    nested.leaf(4, &[]);
    files.push((
        "page_bucket_in_inline_bucket",
        nested,
        2,
        "inside an inline bucket",
    ));

    // The `key` bucket's leaf claims 100 overflow pages in an 8-page file.
    let mut past = etcd_file(8, &[]);
    past.put(3 * PAGE + 12, &100u32.to_le_bytes());
    files.push(("overflow_past_high_water", past, 3, "high-water mark"));

    // A branch whose first child's overflow run covers its second child.
    let mut overlap = etcd_file(8, &[]);
    overlap.branch(3, &[4, 5]);
    let kv = crate::common::bbolt_craft::key_value(b"/registry/secrets/ns/b", 6, b"x");
    overlap.leaf(4, &[(0, &crate::common::bbolt_craft::revision_key(6), &kv)]);
    overlap.leaf(5, &[]);
    overlap.put(4 * PAGE + 12, &1u32.to_le_bytes());
    files.push(("overflow_over_reached_page", overlap, 4, "already reached"));
    files
}

#[test]
fn crafted_files_well_formed_baseline_scans_clean_of_errors() {
    // The generator writes what the reader accepts: no read errors.
    let (summary, errors) = library_scan(etcd_file(8, &[]).bytes);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(summary.revisions, 1);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("ok.db");
    std::fs::write(&path, etcd_file(8, &[]).bytes).expect("write");
    let run = scan(&path);
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
}

#[test]
fn hostile_files_end_with_exit_2_naming_the_page() {
    for (name, craft, pgid, reason) in hostile_files() {
        refused(name, &craft, pgid, reason);
        // The library: page errors, and no more read than the file.
        let size = craft.bytes.len() as u64;
        let (summary, errors) = library_scan(craft.bytes);
        assert!(!errors.is_empty(), "{name}");
        assert!(summary.bytes_read <= 2 * size, "{name}: {summary:?}");
        assert!(summary.revisions <= 1, "{name}: a revision counted twice");
    }
}

/// Many children each claiming an overflow run to the end of the file: each
/// run is refused before it is read, so the walk reads about the file once.
#[test]
fn overflow_runs_over_reached_pages_are_refused_before_they_are_read() {
    let pages = 2048usize;
    let mut craft = etcd_file(pages, &[]);
    let children: Vec<u64> = (4..pages as u64).step_by(70).collect();
    craft.branch(3, &children);
    for &child in &children {
        craft.leaf(child, &[]);
        let overflow = (pages as u64 - 1 - child) as u32;
        craft.put(child as usize * PAGE + 12, &overflow.to_le_bytes());
    }
    let size = craft.bytes.len() as u64;
    let (summary, errors) = library_scan(craft.bytes.clone());
    assert!(
        summary.bytes_read <= 2 * size,
        "read {} bytes of a {size}-byte file",
        summary.bytes_read
    );
    assert_eq!(errors.len(), children.len() - 1, "{errors:?}");
    refused("overflow_runs", &craft, children[0], "already reached");
}

/// A source of `size` bytes that is all zeros but for `pages` (a sparse file
/// in memory).
struct Sparse {
    head: Vec<u8>,
    size: u64,
}

impl ReadAt for Sparse {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        if offset >= self.size {
            return Ok(0);
        }
        let len = (buf.len() as u64).min(self.size - offset) as usize;
        for (index, byte) in buf[..len].iter_mut().enumerate() {
            *byte = usize::try_from(offset)
                .ok()
                .and_then(|at| self.head.get(at + index))
                .copied()
                .unwrap_or(0);
        }
        Ok(len)
    }
    fn size(&self) -> std::io::Result<u64> {
        Ok(self.size)
    }
}

/// A 2.4 GiB file whose `key` leaf claims 599,000 overflow pages: more than
/// bbolt's largest value, refused without reading (or allocating) it.
fn huge_overflow() -> (Craft, u64) {
    let pages = 600_000u64;
    let mut craft = etcd_file(8, &[]);
    craft.meta(0, 2, pages, 2).meta(1, 2, pages, 1);
    craft.put(3 * PAGE + 12, &599_000u32.to_le_bytes());
    (craft, pages * PAGE as u64)
}

#[test]
fn an_overflow_run_larger_than_bbolt_values_is_refused_unread() {
    let (craft, size) = huge_overflow();
    let (summary, errors) = library_scan(Sparse {
        head: craft.bytes.clone(),
        size,
    });
    assert!(summary.bytes_read < 1 << 20, "{summary:?}");
    assert!(
        errors
            .iter()
            .any(|error| error.contains("page 3 ") && error.contains("maximum")),
        "{errors:?}"
    );
    // The same as a sparse file on disk, through the binary.
    let dir = tempfile::tempdir().expect("temp dir");
    let path: PathBuf = dir.path().join("huge.db");
    std::fs::write(&path, &craft.bytes).expect("write");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|file| file.set_len(size))
        .expect("sparse file");
    let run = scan(&path);
    assert_eq!(run.code, Some(2), "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("page 3 "), "{}", run.stderr);
}

/// Writes the small crafted files to `fuzz/regressions/bbolt_file/`
/// (`cargo test --test it -- --ignored write_hostile_regressions`); they are
/// kept in the repository and replayed by `fuzz_regressions`.
#[test]
#[ignore]
fn write_hostile_regressions() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/bbolt_file");
    for (name, craft, _, _) in hostile_files() {
        std::fs::write(dir.join(format!("hostile_{name}")), &craft.bytes).expect("write");
    }
}

/// 200 chains of 32 branch pages, the pages of one level 32 pages apart:
/// each round of the walk has pages close enough to be read together, with
/// the other levels' pages between them. Coalesced reads would read the
/// whole file once per level; the walk stops bridging gaps once it has read
/// a few times the file, so the total stays linear in the file's size.
#[test]
fn interleaved_levels_do_not_make_the_walk_read_the_file_once_per_level() {
    let (levels, chains) = (32u64, 200u64);
    let pages = 4 + chains * levels;
    let mut craft = etcd_file(pages as usize, &[]);
    let id = |chain: u64, level: u64| 4 + chain * levels + level;
    let firsts: Vec<u64> = (0..chains).map(|chain| id(chain, 0)).collect();
    craft.branch(3, &firsts);
    for chain in 0..chains {
        for level in 0..levels - 1 {
            craft.branch(id(chain, level), &[id(chain, level + 1)]);
        }
        craft.leaf(id(chain, levels - 1), &[]);
    }
    let size = craft.bytes.len() as u64;
    let (summary, errors) = library_scan(craft.bytes);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(summary.reachable_pages, pages);
    assert!(
        summary.bytes_read <= 5 * size,
        "read {} bytes of a {size}-byte file",
        summary.bytes_read
    );
}
