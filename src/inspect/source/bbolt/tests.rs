//! Unit tests of the bbolt reader (whole-file tests are in tests/it/inspect_file.rs).
use super::meta::fnv1a64;
use super::read::CHUNK_SIZE;
use super::*;
use crate::inspect::aligned::AlignedBuf;

#[test]
fn fnv1a_known_answer() {
    assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
}

#[test]
fn page_set_tracks_pages() {
    let mut set = PageSet::new(130);
    assert!(set.insert(0));
    assert!(!set.insert(0));
    assert!(set.insert(129));
    assert!(!set.insert(130));
    assert_eq!(set.count(), 2);
    assert_eq!(set.missing().count(), 128);
    assert!(set.contains(129) && !set.contains(64));
    assert_eq!(set.first_in(1, 130), Some(129));
    assert_eq!(set.first_in(0, 130), Some(0));
    assert_eq!(set.first_in(1, 129), None);
    assert_eq!(set.first_in(200, 300), None);
    set.insert_range(60, 70);
    assert_eq!(set.first_in(1, 200), Some(60));
    assert_eq!(set.count(), 12);
}

#[test]
fn bytes_read_at_handles_end() {
    let data = vec![1u8, 2, 3];
    let mut buf = [0u8; 4];
    assert_eq!(data.read_at(&mut buf, 1).unwrap(), 2);
    assert_eq!(data.read_at(&mut buf, 10).unwrap(), 0);
}

/// Records what a walk hands out, in order.
#[derive(Default, PartialEq, Debug)]
struct Transcript(Vec<String>);

impl Visitor for Transcript {
    fn entry(&mut self, bucket: &[Vec<u8>], key: &[u8], value: &[u8], offset: u64) {
        // Values stand in by length and checksum: never printed.
        self.0.push(format!(
            "{bucket:?} {key:?} {offset} {} {:x}",
            value.len(),
            fnv1a64(value)
        ));
    }
    fn page_error(&mut self, error: BboltError) {
        self.0.push(format!("error {error}"));
    }
}

#[test]
fn read_ahead_walk_matches_the_sequential_walk() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures");
    let mut walked = 0;
    for entry in std::fs::read_dir(&dir).expect("fixture dir") {
        let path = entry.expect("fixture entry").path();
        if path.extension().is_none_or(|ext| ext != "db") {
            continue;
        }
        let mut bytes = std::fs::read(&path).expect("fixture");
        // Also a copy with a corrupt page, so errors interleave too.
        let mut corrupt = bytes.clone();
        if let Some(byte) = corrupt.get_mut(4096 * 3 + 8) {
            *byte ^= 0x55;
        }
        for image in [std::mem::take(&mut bytes), corrupt] {
            let Ok(db) = Database::open(image) else {
                continue;
            };
            let mut sequential = Transcript::default();
            let expected = db.walk_with(&mut sequential, false).expect("walk");
            // One page per chunk: many chunks, and every overflow page
            // needs the chunk extended.
            for (read_ahead, chunk) in [(true, 1), (true, 3 * db.page_size()), (false, 1)] {
                let mut other = Transcript::default();
                let stats = db
                    .walk_chunked(&mut other, read_ahead, chunk)
                    .expect("walk");
                assert_eq!(other, sequential, "{} {read_ahead} {chunk}", path.display());
                assert_eq!(stats.reachable, expected.reachable);
                assert_eq!(stats.entries, expected.entries);
            }
            walked += 1;
        }
    }
    assert!(walked >= 2, "no fixtures walked in {}", dir.display());
}

/// An in-memory file that counts page-sized (or larger) reads into a
/// destination that does not start at a page boundary: the kernel's
/// copy out of the page cache is several times slower into those.
struct AlignmentProbe {
    bytes: Vec<u8>,
    misaligned: std::sync::atomic::AtomicU64,
    reads: std::sync::atomic::AtomicU64,
}

impl ReadAt for AlignmentProbe {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        use std::sync::atomic::Ordering::Relaxed;
        if buf.len() >= 4096 {
            self.reads.fetch_add(1, Relaxed);
            if !(buf.as_ptr() as usize).is_multiple_of(4096) {
                self.misaligned.fetch_add(1, Relaxed);
            }
        }
        self.bytes.read_at(buf, offset)
    }
    fn size(&self) -> io::Result<u64> {
        self.bytes.size()
    }
}

#[test]
fn file_reads_land_on_page_aligned_buffers() {
    use std::sync::atomic::Ordering::Relaxed;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures/apiserver/kmsv2-rotated.db");
    let probe = AlignmentProbe {
        bytes: std::fs::read(&path).expect("fixture"),
        misaligned: Default::default(),
        reads: Default::default(),
    };
    let db = Database::open(&probe).expect("open");
    assert!(db.has_trailer());
    assert_eq!(
        db.verify_trailer().expect("trailer"),
        TrailerStatus::Verified
    );
    for (read_ahead, chunk) in [(false, CHUNK_SIZE), (true, 1), (true, 3 * db.page_size())] {
        db.walk_chunked(&mut Transcript::default(), read_ahead, chunk)
            .expect("walk");
    }
    let mut buf = AlignedBuf::new();
    db.read_pages(2, 3, &mut buf).expect("read_pages");
    assert!(probe.reads.load(Relaxed) > 10);
    assert_eq!(
        probe.misaligned.load(Relaxed),
        0,
        "of {} reads",
        probe.reads.load(Relaxed)
    );
}

#[test]
fn garbage_is_not_bbolt() {
    let error = Database::open(vec![0x55u8; 8192]).unwrap_err();
    assert!(matches!(error, BboltError::NoValidMeta { .. }), "{error}");
    assert!(error.to_string().contains("magic"), "{error}");
}

/// The checksum's reader thread hands the hash the file in blocks: whatever
/// the block size (one byte, blocks that do not divide the image, one block
/// for all), the trailer verdict and the file's SHA-256 are those of the
/// bytes, and a flipped image byte or trailer byte is a mismatch.
#[test]
fn hash_file_reads_in_blocks_of_any_size() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures/apiserver/kmsv2-rotated.db");
    let bytes = std::fs::read(&path).expect("fixture");
    let want: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, &bytes)
        .as_ref()
        .try_into()
        .expect("32 bytes");
    let image_len = bytes.len() - 32;
    let blocks = [
        1,
        4096,
        4096 * 3 + 512,
        256 << 10,
        image_len,
        bytes.len() * 2,
    ];
    let db = Database::open(bytes.clone()).expect("open");
    assert!(db.has_trailer());
    for block in blocks {
        let (hashed, _) = db.hash_file_timed(block);
        let (status, digest) = hashed.expect("hash");
        assert_eq!(status, TrailerStatus::Verified, "block {block}");
        assert_eq!(digest, want, "block {block}");
    }
    // No trailer: the image is the file (a member's db).
    let untrailed = Database::open(bytes[..image_len].to_vec()).expect("open");
    assert!(!untrailed.has_trailer());
    let (status, digest) = untrailed.hash_file_timed(4096).0.expect("hash");
    assert_eq!(status, TrailerStatus::Absent);
    assert_eq!(
        digest.as_slice(),
        ring::digest::digest(&ring::digest::SHA256, &bytes[..image_len]).as_ref()
    );
    // A flipped byte past the meta pages (the walk never needs to read it
    // for the hash to see it), then a flipped trailer byte.
    for flip in [image_len - 1, bytes.len() - 1] {
        let mut corrupt = bytes.clone();
        corrupt[flip] ^= 0x01;
        let db = Database::open(corrupt).expect("open");
        for block in blocks {
            let error = db.hash_file_timed(block).0.unwrap_err();
            assert!(
                matches!(error, BboltError::TrailerMismatch { .. }),
                "flip {flip}, block {block}: {error}"
            );
        }
    }
}
