//! A read-only reader of bbolt database files (etcd's backend), written for
//! untrusted input and speed.
//!
//! It owns: finding the page size and the current meta page, verifying an
//! `etcdctl snapshot save` trailer (SHA-256 of the image), and walking the B+
//! tree of buckets from the current meta page, handing every key/value of every
//! bucket to a [`Visitor`]. Layout facts: `../shared/spec/storage.md` (from
//! etcd-io/bbolt `internal/common/page.go`, `meta.go`, `bucket.go`).
//!
//! No mmap (the crate forbids `unsafe`): pages are read with positioned reads
//! ([`ReadAt`]). The walk goes level by level: the pages to visit next are
//! sorted by page id and read in physical order, several at a time in large
//! coalesced reads into one reused buffer, and parsed in place. So a file is
//! read about once, sequentially, with memory bounded by the chunk size (and the
//! largest single value), whatever the file size.
//!
//! Every page visited is checked (stored id, flags, below the high-water mark,
//! element array and every key/value inside the page including overflow) and
//! marked in a [`PageSet`]; a page reached twice is reported instead of being
//! walked again, so corrupt files cannot loop. The set of reachable pages is
//! returned by [`Database::walk`] for callers that look at the other pages
//! (the deep scan of freed pages). Problems in one page are reported to the
//! visitor and the walk goes on with the rest; problems with the file as a
//! whole (no valid meta page, truncated, I/O errors) end it with a
//! [`BboltError`].

use std::fmt::Write as _;
use std::io;

use crate::inspect::aligned::AlignedBuf;

pub mod deep;
mod file;
pub mod keyspace;
pub use file::FileSource;
pub use keyspace::{read_file, read_image, FileError, FileOptions, FileSummary, ReadCpu};

/// Size of a page header: `id u64, flags u16, count u16, overflow u32`.
pub const PAGE_HEADER_SIZE: usize = 16;
/// Size of a branch or leaf element.
const ELEMENT_SIZE: usize = 16;
/// Size of a bucket header inside a leaf value: `root u64, sequence u64`.
const BUCKET_HEADER_SIZE: usize = 16;
/// Page flag: branch page.
pub const BRANCH_PAGE: u16 = 0x01;
/// Page flag: leaf page.
pub const LEAF_PAGE: u16 = 0x02;
/// Page flag: meta page.
pub const META_PAGE: u16 = 0x04;
/// Page flag: freelist page.
pub const FREELIST_PAGE: u16 = 0x10;
/// Leaf element flag: the value is a nested bucket.
const BUCKET_LEAF_FLAG: u32 = 0x01;
const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
/// Bytes of the meta structure covered by its checksum (everything before it).
const META_CHECKSUMMED: usize = 56;
const META_SIZE: usize = META_CHECKSUMMED + 8;
/// An `etcdctl snapshot save` file is the image plus its SHA-256.
const TRAILER_SIZE: u64 = 32;
/// Bytes read at once when pages are close together: small enough that the
/// buffer stays in the CPU cache between the kernel's copy and the parse.
const CHUNK_SIZE: u64 = 256 << 10;
/// Bytes hashed per read when checking a snapshot trailer: the buffer stays
/// in the core's L2 cache between the kernel's copy and the hash.
const HASH_BLOCK: usize = 256 << 10;
/// Chunks the read-ahead thread may have filled before the walk takes them.
const READ_AHEAD: usize = 2;
/// Times the image a walk may read while it coalesces nearby pages into one
/// read (files written by bbolt need about one).
const REREAD_BUDGET: u64 = 3;
/// Deepest bucket/branch nesting accepted (bbolt trees are a few levels deep).
const MAX_DEPTH: u32 = 64;
/// bbolt's largest key (`MaxKeySize`).
const MAX_KEY_SIZE: u64 = 32 << 10;
/// bbolt's largest value (`MaxValueSize`, 2 GiB - 2).
const MAX_VALUE_SIZE: u64 = (1 << 31) - 2;
/// The most bytes one page run can need: a page holding a single element
/// with the largest key and value bbolt accepts. A longer overflow claim is
/// corrupt, and is refused before anything is read or allocated for it.
const MAX_RUN_BYTES: u64 = (PAGE_HEADER_SIZE + ELEMENT_SIZE) as u64 + MAX_KEY_SIZE + MAX_VALUE_SIZE;

/// Something that can be read at arbitrary offsets: a file, or bytes in memory
/// (tests and fuzzing).
pub trait ReadAt {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read
    /// (0 at end of input).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Total size in bytes.
    fn size(&self) -> io::Result<u64>;
}

impl ReadAt for std::fs::File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(self, buf, offset)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

impl ReadAt for [u8] {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.len());
        let available = self.get(start..).unwrap_or(&[]);
        let count = available.len().min(buf.len());
        buf.get_mut(..count)
            .unwrap_or(&mut [])
            .copy_from_slice(available.get(..count).unwrap_or(&[]));
        Ok(count)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }
}

impl ReadAt for Vec<u8> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.as_slice().read_at(buf, offset)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        (**self).read_at(buf, offset)
    }
    fn size(&self) -> io::Result<u64> {
        (**self).size()
    }
}

/// Why a file could not be read as a bbolt database, or a page could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BboltError {
    /// The operating system refused a read.
    #[error("reading {len} bytes at offset {offset}: {source}")]
    Io {
        /// Where the read started.
        offset: u64,
        /// How many bytes were asked for.
        len: u64,
        /// The OS error.
        source: io::Error,
    },
    /// The file ended before a read that the meta page says must succeed.
    #[error("file ends at {size} bytes but {len} bytes were needed at offset {offset}: the file is truncated")]
    UnexpectedEof {
        /// Where the read started.
        offset: u64,
        /// Bytes asked for.
        len: u64,
        /// File size.
        size: u64,
    },
    /// Neither meta page is valid: not a bbolt file, or both meta pages are corrupt.
    #[error("not a bbolt database (or its meta pages are corrupt): {detail}")]
    NoValidMeta {
        /// What was wrong with each meta page.
        detail: String,
    },
    /// The meta page describes more pages than the file holds.
    #[error("file truncated: the meta page (txid {txid}) says the database has {pages} pages of {page_size} bytes ({needed} bytes), but the file holds {available} bytes of pages; page {first_missing} at offset {first_missing_offset} is missing")]
    Truncated {
        /// txid of the meta page used.
        txid: u64,
        /// High-water mark (number of pages).
        pages: u64,
        /// Page size.
        page_size: u64,
        /// `pages * page_size`.
        needed: u64,
        /// Bytes available for pages (file size without a snapshot trailer).
        available: u64,
        /// First page not (fully) in the file.
        first_missing: u64,
        /// Its offset.
        first_missing_offset: u64,
    },
    /// The snapshot trailer does not match the SHA-256 of the image.
    #[error("snapshot checksum mismatch: SHA-256 of the first {image_len} bytes is {actual}, the trailer at offset {image_len} says {expected}; the file is corrupt or truncated (a copy of the snapshot may be intact)")]
    TrailerMismatch {
        /// Bytes hashed.
        image_len: u64,
        /// Hex digest computed.
        actual: String,
        /// Hex digest stored.
        expected: String,
    },
    /// The file changed while it was read: a process (a running etcd) is
    /// writing it, and what was read is discarded.
    #[error("the file changed while it was read ({detail}): a running etcd is writing it, so revisions may have been missed or counted twice and the result is discarded; scan a copy taken with `etcdctl snapshot save`, or the live member with --endpoints")]
    Changed {
        /// What changed.
        detail: String,
    },
    /// One page is corrupt; the walk skipped it (and what hangs below it).
    #[error("page {pgid} (offset {offset}): {problem}")]
    Page {
        /// Page number.
        pgid: u64,
        /// Byte offset of the page (or of the inline page's value) in the file.
        offset: u64,
        /// What is wrong.
        problem: String,
    },
}

impl BboltError {
    /// True for problems confined to one page, after which a walk goes on.
    pub fn is_page_error(&self) -> bool {
        matches!(self, BboltError::Page { .. })
    }
}

/// A decoded meta page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Which meta page (0 or 1).
    pub page: u64,
    /// Page size of the database.
    pub page_size: u32,
    /// bbolt flags.
    pub flags: u32,
    /// Root page of the root bucket.
    pub root: u64,
    /// Sequence of the root bucket.
    pub root_sequence: u64,
    /// Freelist page, or `u64::MAX` when the freelist is not persisted (etcd).
    pub freelist: u64,
    /// High-water mark: number of pages in use (`pgid` in bbolt).
    pub high_water: u64,
    /// Transaction id.
    pub txid: u64,
}

/// FNV-1a 64-bit, as bbolt checksums its meta pages.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

fn u16_at(bytes: &[u8], offset: usize) -> Option<u16> {
    let slice = bytes.get(offset..offset.checked_add(2)?)?;
    Some(u16::from_le_bytes(slice.try_into().ok()?))
}

fn u32_at(bytes: &[u8], offset: usize) -> Option<u32> {
    let slice = bytes.get(offset..offset.checked_add(4)?)?;
    let mut array = [0u8; 4];
    array.copy_from_slice(slice);
    Some(u32::from_le_bytes(array))
}

fn u64_at(bytes: &[u8], offset: usize) -> Option<u64> {
    let slice = bytes.get(offset..offset.checked_add(8)?)?;
    let mut array = [0u8; 8];
    array.copy_from_slice(slice);
    Some(u64::from_le_bytes(array))
}

/// A page header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageHeader {
    /// Page id stored in the page.
    pub id: u64,
    /// Page type flags.
    pub flags: u16,
    /// Number of elements.
    pub count: u16,
    /// Number of extra pages this page spans.
    pub overflow: u32,
}

impl PageHeader {
    /// The page after this page's run (itself and its overflow pages), if
    /// `pgid` is where the header sits; `None` when that overflows.
    fn run_end(&self, pgid: u64) -> Option<u64> {
        pgid.checked_add(u64::from(self.overflow))?.checked_add(1)
    }

    /// Decodes the 16-byte header at the start of `bytes`.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        Some(Self {
            id: u64_at(bytes, 0)?,
            flags: u16_at(bytes, 8)?,
            count: u16_at(bytes, 10)?,
            overflow: u32_at(bytes, 12)?,
        })
    }
}

/// Parses and validates a meta page (header + meta) found at `page`.
fn parse_meta(bytes: &[u8], page: u64) -> Result<Meta, String> {
    let header = PageHeader::parse(bytes).ok_or("too short for a page header")?;
    let meta = bytes
        .get(PAGE_HEADER_SIZE..PAGE_HEADER_SIZE + META_SIZE)
        .ok_or("too short for a meta page")?;
    let field32 = |offset| u32_at(meta, offset).unwrap_or(0);
    let field64 = |offset| u64_at(meta, offset).unwrap_or(0);
    let magic = field32(0);
    if magic != MAGIC {
        return Err(format!("magic is {magic:#010x}, expected {MAGIC:#010x}"));
    }
    let version = field32(4);
    if version != VERSION {
        return Err(format!(
            "format version {version}, this reader knows {VERSION}"
        ));
    }
    let stored = field64(META_CHECKSUMMED);
    let computed = fnv1a64(meta.get(..META_CHECKSUMMED).unwrap_or(&[]));
    if stored != computed {
        return Err(format!(
            "checksum mismatch (stored {stored:#018x}, computed {computed:#018x})"
        ));
    }
    if header.flags != META_PAGE {
        return Err(format!(
            "page flags {:#06x}, expected meta ({META_PAGE:#06x})",
            header.flags
        ));
    }
    if header.id != page {
        return Err(format!("page header says page {}", header.id));
    }
    let page_size = field32(8);
    if !page_size.is_power_of_two() || !(512..=(1 << 24)).contains(&page_size) {
        return Err(format!("implausible page size {page_size}"));
    }
    Ok(Meta {
        page,
        page_size,
        flags: field32(12),
        root: field64(16),
        root_sequence: field64(24),
        freelist: field64(32),
        high_water: field64(40),
        txid: field64(48),
    })
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// Reads exactly `buf.len()` bytes at `offset`.
fn read_exact_at<R: ReadAt + ?Sized>(
    source: &R,
    buf: &mut [u8],
    offset: u64,
    size: u64,
) -> Result<(), BboltError> {
    let len = buf.len() as u64;
    let mut done = 0usize;
    while done < buf.len() {
        let position = offset + done as u64;
        let target = buf.get_mut(done..).unwrap_or(&mut []);
        match source.read_at(target, position) {
            Ok(0) => return Err(BboltError::UnexpectedEof { offset, len, size }),
            Ok(count) => done += count,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(BboltError::Io {
                    offset: position,
                    len,
                    source,
                })
            }
        }
    }
    Ok(())
}

/// What [`Database::verify_trailer`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrailerStatus {
    /// No snapshot trailer (a member `db` file).
    Absent,
    /// The trailer matches the SHA-256 of the image.
    Verified,
}

/// A set of page ids below the high-water mark (a bitset).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageSet {
    words: Vec<u64>,
    len: u64,
}

impl PageSet {
    /// An empty set for pages `0..len`.
    pub fn new(len: u64) -> Self {
        let words = usize::try_from(len.div_ceil(64)).unwrap_or(0);
        Self {
            words: vec![0; words],
            len,
        }
    }

    /// Number of page ids the set can hold (`0..capacity()`).
    pub fn capacity(&self) -> u64 {
        self.len
    }

    /// Adds `pgid`; returns false if it was already present or out of range.
    pub fn insert(&mut self, pgid: u64) -> bool {
        if pgid >= self.len {
            return false;
        }
        let Some(word) = self.words.get_mut((pgid / 64) as usize) else {
            return false;
        };
        let bit = 1u64 << (pgid % 64);
        let fresh = *word & bit == 0;
        *word |= bit;
        fresh
    }

    /// True if `pgid` is in the set.
    pub fn contains(&self, pgid: u64) -> bool {
        pgid < self.len
            && self
                .words
                .get((pgid / 64) as usize)
                .is_some_and(|word| word & (1u64 << (pgid % 64)) != 0)
    }

    /// Number of pages in the set.
    pub fn count(&self) -> u64 {
        self.words
            .iter()
            .map(|word| u64::from(word.count_ones()))
            .sum()
    }

    /// Page ids in `0..capacity()` that are not in the set, ascending.
    pub fn missing(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.len).filter(|&pgid| !self.contains(pgid))
    }

    /// The first page of `from..to` in the set, if any (64 pages per step).
    pub fn first_in(&self, from: u64, to: u64) -> Option<u64> {
        let to = to.min(self.len);
        let mut pgid = from;
        while pgid < to {
            let word = self.words.get((pgid / 64) as usize).copied().unwrap_or(0);
            let bits = word >> (pgid % 64);
            if bits != 0 {
                let found = pgid + u64::from(bits.trailing_zeros());
                return (found < to).then_some(found);
            }
            pgid = (pgid / 64 + 1) * 64;
        }
        None
    }

    /// Adds every page of `from..to` (below the capacity).
    fn insert_range(&mut self, from: u64, to: u64) {
        for pgid in from..to.min(self.len) {
            self.insert(pgid);
        }
    }
}

/// Receives the contents of the buckets during [`Database::walk`].
pub trait Visitor {
    /// One key/value of a bucket. `bucket` is the bucket's path from the root
    /// (etcd's MVCC store is `[b"key"]`). Entries arrive in physical page
    /// order, not key order. Borrowed bytes are only valid during the call.
    /// `offset` is where the key sits in the file (for error messages).
    fn entry(&mut self, bucket: &[Vec<u8>], key: &[u8], value: &[u8], offset: u64);
    /// A corrupt page that was skipped; the walk goes on.
    fn page_error(&mut self, error: BboltError);
}

/// What a walk did.
#[derive(Debug, Clone, Default)]
pub struct WalkStats {
    /// Pages reachable from the meta page (tree pages, their overflow pages,
    /// both meta pages, the freelist page if persisted).
    pub reachable: PageSet,
    /// Bytes read from the file.
    pub bytes_read: u64,
    /// Number of read calls.
    pub reads: u64,
    /// Leaf entries handed to the visitor.
    pub entries: u64,
    /// Path of every bucket found (the root bucket, first, has an empty path).
    pub buckets: Vec<Vec<Vec<u8>>>,
    /// CPU time of the read-ahead threads (zero without read-ahead).
    pub read_ahead_cpu: std::time::Duration,
}

/// An open bbolt file: its page size and current meta page.
#[derive(Debug)]
pub struct Database<R> {
    source: R,
    file_size: u64,
    image_size: u64,
    page_size: u64,
    meta: Meta,
    other_meta: Result<Meta, String>,
    /// Why the older meta page is in use, if it is.
    fallback: Option<String>,
    /// Both meta pages as read at open (for [`Database::check_unchanged`]).
    metas: [[u8; PAGE_HEADER_SIZE + META_SIZE]; 2],
    trailer: Option<[u8; 32]>,
}

/// The header and meta bytes of both meta pages (what a commit rewrites).
fn read_meta_pages<R: ReadAt + ?Sized>(
    source: &R,
    page_size: u64,
    file_size: u64,
) -> Result<[[u8; PAGE_HEADER_SIZE + META_SIZE]; 2], BboltError> {
    let mut metas = [[0u8; PAGE_HEADER_SIZE + META_SIZE]; 2];
    for (index, meta) in metas.iter_mut().enumerate() {
        let offset = index as u64 * page_size;
        if offset + meta.len() as u64 <= file_size {
            read_exact_at(source, meta, offset, file_size)?;
        }
    }
    Ok(metas)
}

/// A page waiting to be read: its id, the bucket it belongs to, its depth.
#[derive(Debug, Clone, Copy)]
struct Pending {
    pgid: u64,
    bucket: u32,
    depth: u32,
}

/// One coalesced read of a round: the pending pages `first..last` of the
/// round's sorted list, which lie in pages `start..end`.
#[derive(Debug, Clone, Copy)]
struct PlannedChunk {
    first: usize,
    last: usize,
    start: u64,
    end: u64,
}

impl<R: ReadAt> Database<R> {
    /// Opens a bbolt file: finds the page size and the current meta page,
    /// detects an `etcdctl snapshot save` trailer, and checks that the file
    /// holds every page the meta page claims. Reads a few bytes only.
    pub fn open(source: R) -> Result<Self, BboltError> {
        let file_size = source.size().map_err(|source| BboltError::Io {
            offset: 0,
            len: 0,
            source,
        })?;
        let head_len = (PAGE_HEADER_SIZE + META_SIZE) as u64;
        if file_size < head_len {
            return Err(BboltError::NoValidMeta {
                detail: format!(
                    "the file is {file_size} bytes, shorter than one meta page ({head_len} bytes)"
                ),
            });
        }
        let (image_size, trailer) = if file_size % 512 == TRAILER_SIZE && file_size > TRAILER_SIZE {
            let mut trailer = [0u8; 32];
            read_exact_at(&source, &mut trailer, file_size - TRAILER_SIZE, file_size)?;
            (file_size - TRAILER_SIZE, Some(trailer))
        } else {
            (file_size, None)
        };
        let read_meta = |offset: u64, page: u64| -> Result<Result<Meta, String>, BboltError> {
            if offset + head_len > image_size {
                return Ok(Err(format!(
                    "offset {offset} is past the end of the file ({image_size} bytes)"
                )));
            }
            let mut bytes = [0u8; PAGE_HEADER_SIZE + META_SIZE];
            read_exact_at(&source, &mut bytes, offset, file_size)?;
            Ok(parse_meta(&bytes, page))
        };
        let meta0 = read_meta(0, 0)?;
        let meta1 = match &meta0 {
            Ok(meta) => read_meta(u64::from(meta.page_size), 1)?.and_then(|meta1| {
                if meta1.page_size == meta.page_size {
                    Ok(meta1)
                } else {
                    Err(format!(
                        "page size {} differs from meta 0's {}",
                        meta1.page_size, meta.page_size
                    ))
                }
            }),
            Err(_) => {
                let mut found = Err("no valid meta page at 1 KiB << i, i = 0..14".to_string());
                for shift in 0..15u32 {
                    let offset = 1024u64 << shift;
                    if let Ok(meta) = read_meta(offset, 1)? {
                        if u64::from(meta.page_size) == offset {
                            found = Ok(meta);
                            break;
                        }
                    }
                }
                found
            }
        };
        let (meta, other_meta) = match (meta0, meta1) {
            (Ok(m0), Ok(m1)) if m1.txid > m0.txid => (m1, Ok(m0)),
            (Ok(m0), other) => (m0, other),
            (Err(e0), Ok(m1)) => (m1, Err(format!("meta page 0 invalid: {e0}"))),
            (Err(e0), Err(e1)) => {
                return Err(BboltError::NoValidMeta {
                    detail: format!("meta page 0 at offset 0: {e0}; meta page 1: {e1}"),
                })
            }
        };
        let page_size = u64::from(meta.page_size);
        let fits = |meta: &Meta| {
            meta.high_water >= 3
                && meta
                    .high_water
                    .checked_mul(page_size)
                    .is_some_and(|needed| needed <= image_size)
        };
        // A copy taken while etcd committed can hold the new meta page but
        // not yet the pages it grew the file by: the older meta page (whose
        // tree that commit does not overwrite) is what bbolt itself would
        // fall back to.
        let (meta, other_meta, fallback) = match other_meta {
            Ok(older) if !fits(&meta) && fits(&older) => {
                let notice = format!(
                    "the newest meta page {} (txid {}) needs {} pages of {page_size} bytes but the file holds {image_size} bytes (a copy taken while etcd was committing?): read as of the older meta page {} (txid {})",
                    meta.page, meta.txid, meta.high_water, older.page, older.txid
                );
                (older, Ok(meta), Some(notice))
            }
            other => (meta, other, None),
        };
        let needed = meta.high_water.checked_mul(page_size);
        if !fits(&meta) {
            let first_missing = image_size / page_size;
            return Err(BboltError::Truncated {
                txid: meta.txid,
                pages: meta.high_water,
                page_size,
                needed: needed.unwrap_or(u64::MAX),
                available: image_size,
                first_missing,
                first_missing_offset: first_missing.saturating_mul(page_size),
            });
        }
        let metas = read_meta_pages(&source, page_size, file_size)?;
        Ok(Self {
            source,
            file_size,
            image_size,
            page_size,
            meta,
            other_meta,
            fallback,
            metas,
            trailer,
        })
    }

    /// Why the older meta page is in use, when the newest one points past
    /// the end of the file (see [`Database::open`]); `None` normally.
    pub fn meta_fallback(&self) -> Option<&str> {
        self.fallback.as_deref()
    }

    /// Checks that both meta pages and the file size are as they were when
    /// the file was opened: call after reading, so that a result read while
    /// a writer committed is discarded ([`BboltError::Changed`]).
    pub fn check_unchanged(&self) -> Result<(), BboltError> {
        let size = self.source.size().map_err(|source| BboltError::Io {
            offset: 0,
            len: 0,
            source,
        })?;
        let detail = if size != self.file_size {
            Some(format!(
                "its size went from {} to {size} bytes",
                self.file_size
            ))
        } else if read_meta_pages(&self.source, self.page_size, self.file_size)? != self.metas {
            Some("its meta pages were rewritten".to_string())
        } else {
            None
        };
        match detail {
            Some(detail) => Err(BboltError::Changed { detail }),
            None => Ok(()),
        }
    }

    /// The meta page in use (the valid one with the larger txid).
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// The other meta page, or why it is invalid (a sign of corruption: both
    /// are valid in files written by bbolt).
    pub fn other_meta(&self) -> Result<&Meta, &str> {
        self.other_meta.as_ref().map_err(String::as_str)
    }

    /// Page size in bytes.
    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// Size of the file, trailer included.
    pub fn file_size(&self) -> u64 {
        self.file_size
    }

    /// Size of the database image (the file without a snapshot trailer).
    pub fn image_size(&self) -> u64 {
        self.image_size
    }

    /// True when the file ends with an `etcdctl snapshot save` trailer.
    pub fn has_trailer(&self) -> bool {
        self.trailer.is_some()
    }

    /// The underlying source.
    pub fn source(&self) -> &R {
        &self.source
    }

    /// Verifies the snapshot trailer: SHA-256 of the image. Reads the whole
    /// image sequentially, [`HASH_BLOCK`] bytes at a time.
    pub fn verify_trailer(&self) -> Result<TrailerStatus, BboltError> {
        if self.trailer.is_none() {
            return Ok(TrailerStatus::Absent);
        }
        self.hash_file().map(|(status, _)| status)
    }

    /// Reads the whole file once: verifies the snapshot trailer (if any)
    /// against the image's SHA-256, and returns the SHA-256 of the whole
    /// file (what `sha256sum` prints), which reports use as its identity.
    pub fn hash_file(&self) -> Result<(TrailerStatus, [u8; 32]), BboltError> {
        let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = AlignedBuf::with_len(HASH_BLOCK);
        let mut offset = 0u64;
        while offset < self.image_size {
            let len = (self.image_size - offset).min(buf.len() as u64) as usize;
            let chunk = buf.get_mut(..len).unwrap_or(&mut []);
            read_exact_at(&self.source, chunk, offset, self.file_size)?;
            hasher.update(&*chunk);
            offset += len as u64;
        }
        // The file hash goes on over the trailer; the image hash stops here.
        let mut file_hasher = hasher.clone();
        let tail_len = (self.file_size - self.image_size).min(buf.len() as u64) as usize;
        let tail = buf.get_mut(..tail_len).unwrap_or(&mut []);
        read_exact_at(&self.source, tail, self.image_size, self.file_size)?;
        file_hasher.update(&*tail);
        let mut file_digest = [0u8; 32];
        file_digest.copy_from_slice(file_hasher.finish().as_ref());
        let Some(expected) = self.trailer else {
            return Ok((TrailerStatus::Absent, file_digest));
        };
        let digest = hasher.finish();
        let actual = digest.as_ref();
        if actual == expected {
            Ok((TrailerStatus::Verified, file_digest))
        } else {
            Err(BboltError::TrailerMismatch {
                image_len: self.image_size,
                actual: hex(actual),
                expected: hex(&expected),
            })
        }
    }

    /// Reads `count` whole pages starting at `first` into `buf` (resized).
    /// The range must lie below the high-water mark.
    pub fn read_pages(
        &self,
        first: u64,
        count: u64,
        buf: &mut AlignedBuf,
    ) -> Result<(), BboltError> {
        let end = first.saturating_add(count);
        if end > self.meta.high_water {
            return Err(BboltError::Page {
                pgid: first,
                offset: first.saturating_mul(self.page_size),
                problem: format!(
                    "pages {first}..{end} go past the high-water mark {}",
                    self.meta.high_water
                ),
            });
        }
        let len = usize::try_from(count * self.page_size).map_err(|_| BboltError::Page {
            pgid: first,
            offset: first * self.page_size,
            problem: "page run too large".to_string(),
        })?;
        buf.resize(len);
        read_exact_at(&self.source, buf, first * self.page_size, self.file_size)
    }

    /// Checks the run (the page and its overflow pages) of the page whose
    /// header `header` sits at `pgid`, before any overflow page is read: it
    /// ends below the high-water mark, the header names that page, it is no
    /// longer than the largest page bbolt writes ([`MAX_RUN_BYTES`]), and none
    /// of its overflow pages is in `reached` (a page is never shared). Returns
    /// the page after the run. Runs that pass are disjoint from every page
    /// reached, so the walk reads each page of the file about once.
    fn check_run(&self, pgid: u64, header: &PageHeader, reached: &PageSet) -> Result<u64, String> {
        let high_water = self.meta.high_water;
        let overflow = header.overflow;
        let Some(end) = header.run_end(pgid).filter(|&end| end <= high_water) else {
            return Err(format!(
                "overflow {overflow} runs past the high-water mark {high_water}"
            ));
        };
        if header.id != pgid {
            return Err(format!(
                "page header says page {} (corrupt page or bad pointer)",
                header.id
            ));
        }
        let run_bytes = (end - pgid).saturating_mul(self.page_size);
        if overflow > 0 && run_bytes > MAX_RUN_BYTES.next_multiple_of(self.page_size) {
            return Err(format!(
                "its {overflow} overflow pages ({run_bytes} bytes) are more than bbolt's largest page ({MAX_RUN_BYTES} bytes: a maximum key and a maximum value): refused unread"
            ));
        }
        if let Some(shared) = reached.first_in(pgid + 1, end) {
            return Err(format!(
                "its {overflow} overflow pages overlap page {shared}, already reached from another parent (shared page): refused unread"
            ));
        }
        Ok(end)
    }

    /// Loads one planned chunk into `buf`: pages `start..end`, extended over
    /// the overflow pages of any pending page in it whose run passes
    /// [`Database::check_run`] against `reached` (the pages reached when the
    /// round began, pending ones included), so each such page is whole in
    /// the buffer and no refused run is ever read. Returns the number of
    /// reads made.
    fn load_chunk(
        &self,
        batch: &[Pending],
        planned: &PlannedChunk,
        buf: &mut AlignedBuf,
        reached: &PageSet,
    ) -> Result<u64, BboltError> {
        self.read_pages(planned.start, planned.end - planned.start, buf)?;
        let mut needed_end = planned.end;
        for pending in batch.get(planned.first..planned.last).unwrap_or(&[]) {
            let offset = ((pending.pgid - planned.start) * self.page_size) as usize;
            let Some(header) = buf.get(offset..).and_then(PageHeader::parse) else {
                continue;
            };
            if let Ok(page_end) = self.check_run(pending.pgid, &header, reached) {
                needed_end = needed_end.max(page_end);
            }
        }
        if needed_end == planned.end {
            return Ok(1);
        }
        // Read the rest straight into the buffer's tail (no second copy).
        let loaded = buf.len();
        let extra = (needed_end - planned.end)
            .checked_mul(self.page_size)
            .and_then(|extra| usize::try_from(extra).ok())
            .ok_or_else(|| BboltError::Page {
                pgid: planned.end,
                offset: planned.end.saturating_mul(self.page_size),
                problem: "page run too large".to_string(),
            })?;
        buf.resize(loaded + extra);
        let tail = buf.get_mut(loaded..).unwrap_or(&mut []);
        read_exact_at(
            &self.source,
            tail,
            planned.end * self.page_size,
            self.file_size,
        )?;
        Ok(2)
    }

    /// Reads `buf.len()` bytes of the image at `offset` (any offset inside the
    /// image, e.g. the slack past the high-water mark of a member db).
    pub fn read_image(&self, offset: u64, buf: &mut [u8]) -> Result<(), BboltError> {
        let end = offset.saturating_add(buf.len() as u64);
        if end > self.image_size {
            return Err(BboltError::UnexpectedEof {
                offset,
                len: buf.len() as u64,
                size: self.image_size,
            });
        }
        read_exact_at(&self.source, buf, offset, self.file_size)
    }

    /// Walks every bucket reachable from the current meta page and hands each
    /// key/value to `visitor`. Returns the reachable pages and read figures.
    /// Corrupt pages are reported to the visitor and skipped; `Err` only for
    /// I/O problems.
    pub fn walk(&self, visitor: &mut dyn Visitor) -> Result<WalkStats, BboltError>
    where
        R: Sync,
    {
        self.walk_with(visitor, true)
    }

    /// [`Database::walk`]; `read_ahead: false` reads on the calling thread
    /// only (for when another thread already keeps the second core busy,
    /// e.g. the snapshot checksum).
    pub fn walk_with(
        &self,
        visitor: &mut dyn Visitor,
        read_ahead: bool,
    ) -> Result<WalkStats, BboltError>
    where
        R: Sync,
    {
        self.walk_chunked(visitor, read_ahead, CHUNK_SIZE)
    }

    /// The walk, with reads of at most `chunk_size` bytes (tests use tiny
    /// chunks to drive the read-ahead thread through small files).
    fn walk_chunked(
        &self,
        visitor: &mut dyn Visitor,
        read_ahead: bool,
        chunk_size: u64,
    ) -> Result<WalkStats, BboltError>
    where
        R: Sync,
    {
        let mut walker = Walker {
            db: self,
            visitor,
            reachable: PageSet::new(self.meta.high_water),
            buckets: vec![Vec::new()],
            next: Vec::new(),
            stats: WalkStats::default(),
            chunk_size,
        };
        walker.reachable.insert(0);
        walker.reachable.insert(1);
        walker.mark_freelist()?;
        walker.enqueue(self.meta.root, 0, 0, Parent::Meta);
        let mut buf = AlignedBuf::new();
        while !walker.next.is_empty() {
            let mut batch = std::mem::take(&mut walker.next);
            batch.sort_unstable_by_key(|pending| pending.pgid);
            // What the read-ahead thread checks overflow runs against (the
            // walker's own set changes while it reads).
            let reached = walker.reachable.clone();
            walker.read_batch(&batch, &mut buf, read_ahead, &reached)?;
        }
        let mut stats = walker.stats;
        stats.reachable = walker.reachable;
        stats.buckets = walker.buckets;
        Ok(stats)
    }
}

/// Who pointed to a page (for error messages).
#[derive(Debug, Clone, Copy)]
enum Parent {
    Meta,
    Branch(u64),
    BucketValue(u64),
}

struct Walker<'d, 'v, R> {
    db: &'d Database<R>,
    visitor: &'v mut dyn Visitor,
    reachable: PageSet,
    /// Path of every bucket found, indexed by bucket number (0 = root bucket).
    buckets: Vec<Vec<Vec<u8>>>,
    /// Pages to read in the next round.
    next: Vec<Pending>,
    stats: WalkStats,
    /// Largest coalesced read ([`CHUNK_SIZE`]).
    chunk_size: u64,
}

impl<R: ReadAt + Sync> Walker<'_, '_, R> {
    fn page_error(&mut self, pgid: u64, problem: String) {
        let offset = pgid.saturating_mul(self.db.page_size);
        self.visitor.page_error(BboltError::Page {
            pgid,
            offset,
            problem,
        });
    }

    fn mark_freelist(&mut self) -> Result<(), BboltError> {
        let freelist = self.db.meta.freelist;
        if freelist == u64::MAX {
            return Ok(());
        }
        if freelist < 2 || freelist >= self.db.meta.high_water {
            self.page_error(
                freelist,
                format!(
                    "the meta page names page {freelist} as freelist, outside 2..{}",
                    self.db.meta.high_water
                ),
            );
            return Ok(());
        }
        let mut header = [0u8; PAGE_HEADER_SIZE];
        read_exact_at(
            &self.db.source,
            &mut header,
            freelist * self.db.page_size,
            self.db.file_size,
        )?;
        let run = PageHeader::parse(&header)
            .filter(|header| header.flags == FREELIST_PAGE)
            .ok_or_else(|| "freelist page has a bad header".to_string())
            .and_then(|header| self.db.check_run(freelist, &header, &self.reachable));
        match run {
            Ok(end) => self.reachable.insert_range(freelist, end),
            Err(problem) => self.page_error(freelist, format!("freelist: {problem}")),
        }
        Ok(())
    }

    /// Queues a page of bucket `bucket` for the next round, unless it is out of
    /// range or already reached.
    fn enqueue(&mut self, pgid: u64, bucket: u32, depth: u32, parent: Parent) {
        let high_water = self.db.meta.high_water;
        let from = match parent {
            Parent::Meta => "the meta page".to_string(),
            Parent::Branch(pgid) => format!("branch page {pgid}"),
            Parent::BucketValue(offset) => format!("the bucket header at offset {offset}"),
        };
        if pgid < 2 || pgid >= high_water {
            self.page_error(
                pgid,
                format!("{from} points to page {pgid}, outside 2..{high_water}"),
            );
        } else if depth > MAX_DEPTH {
            self.page_error(pgid, format!("tree deeper than {MAX_DEPTH} levels"));
        } else if !self.reachable.insert(pgid) {
            self.page_error(
                pgid,
                format!("{from} points to page {pgid}, which was already reached (cycle or shared page)"),
            );
        } else {
            self.next.push(Pending {
                pgid,
                bucket,
                depth,
            });
        }
    }

    /// Reads the pages of one round in physical order, coalescing nearby
    /// pages into chunk-sized reads, and processes each. With `read_ahead`
    /// and more than one chunk, a reader thread fills the next chunks while
    /// this one parses: the kernel's copy out of the page cache (a quarter of
    /// a scan's CPU) then runs on the other core. Chunks are processed in the
    /// same order either way, so the visitor sees the same sequence.
    fn read_batch(
        &mut self,
        batch: &[Pending],
        buf: &mut AlignedBuf,
        read_ahead: bool,
        reached: &PageSet,
    ) -> Result<(), BboltError> {
        let plan = self.plan_chunks(batch);
        if !read_ahead || plan.len() < 2 {
            for planned in &plan {
                let reads = self.db.load_chunk(batch, planned, buf, reached)?;
                self.count_reads(reads, buf.len());
                self.process_chunk(batch, planned, buf);
            }
            return Ok(());
        }
        let db = self.db;
        std::thread::scope(|scope| {
            // Filled chunks wait here (bounded: the reader stays at most
            // READ_AHEAD chunks ahead); emptied buffers go back for reuse.
            let (filled, ready) = std::sync::mpsc::sync_channel(READ_AHEAD);
            let (give_back, returned) = std::sync::mpsc::channel::<AlignedBuf>();
            let plan_ref = &plan;
            let reader = scope.spawn(move || {
                let cpu = crate::inspect::cputime::thread_cpu_time();
                for planned in plan_ref {
                    let mut chunk_buf = returned.try_recv().unwrap_or_default();
                    let loaded = db
                        .load_chunk(batch, planned, &mut chunk_buf, reached)
                        .map(|reads| (reads, chunk_buf));
                    let failed = loaded.is_err();
                    // A closed channel means the walk stopped early: stop too.
                    if filled.send(loaded).is_err() || failed {
                        break;
                    }
                }
                crate::inspect::cputime::thread_cpu_since(cpu)
            });
            for planned in &plan {
                let (reads, chunk_buf) = ready.recv().map_err(|_| BboltError::Io {
                    offset: planned.start.saturating_mul(db.page_size),
                    len: 0,
                    source: io::Error::other("the read-ahead thread stopped"),
                })??;
                self.count_reads(reads, chunk_buf.len());
                self.process_chunk(batch, planned, &chunk_buf);
                // The reader may be done already: then the buffer is dropped.
                let _ = give_back.send(chunk_buf);
            }
            if let Ok(Some(cpu)) = reader.join() {
                self.stats.read_ahead_cpu += cpu;
            }
            Ok(())
        })
    }

    /// Groups the (sorted) pending pages of a round into chunks of at most
    /// `chunk_size` bytes (a page bigger than that gets a chunk of its own).
    /// The pages between pending pages are read too (one large read beats
    /// many small ones), until the walk has read [`REREAD_BUDGET`] times the
    /// image: a file whose levels interleave would otherwise be read once
    /// per level. After that each pending page is read alone, and as each
    /// page is pending once and accepted overflow runs are disjoint, the
    /// total stays linear in the file's size.
    fn plan_chunks(&self, batch: &[Pending]) -> Vec<PlannedChunk> {
        let page_size = self.db.page_size;
        let bridge = self.stats.bytes_read < self.db.image_size.saturating_mul(REREAD_BUDGET);
        let mut plan = Vec::new();
        let mut index = 0;
        while let Some(first) = batch.get(index) {
            let start = first.pgid;
            let mut end = start + 1;
            let mut last = index + 1;
            while let Some(pending) = batch.get(last) {
                if !bridge || (pending.pgid + 1 - start) * page_size > self.chunk_size {
                    break;
                }
                end = pending.pgid + 1;
                last += 1;
            }
            plan.push(PlannedChunk {
                first: index,
                last,
                start,
                end,
            });
            index = last;
        }
        plan
    }

    fn count_reads(&mut self, reads: u64, bytes: usize) {
        self.stats.reads += reads;
        self.stats.bytes_read += bytes as u64;
    }

    /// Checks and processes the pending pages of one loaded chunk (`buf`
    /// holds pages from `planned.start` on, and the whole of every page whose
    /// header is plausible, overflow included).
    fn process_chunk(&mut self, batch: &[Pending], planned: &PlannedChunk, buf: &[u8]) {
        let page_size = self.db.page_size;
        let start = planned.start;
        let pages = batch.get(planned.first..planned.last).unwrap_or(&[]);
        for pending in pages {
            let offset = ((pending.pgid - start) * page_size) as usize;
            let header = buf.get(offset..).and_then(PageHeader::parse);
            let Some(header) = header else {
                self.page_error(pending.pgid, "page header unreadable".to_string());
                continue;
            };
            // The same check load_chunk made, now against every page
            // reached so far (this round's runs included).
            let page_end = match self.db.check_run(pending.pgid, &header, &self.reachable) {
                Ok(page_end) => page_end,
                Err(problem) => {
                    self.page_error(pending.pgid, problem);
                    continue;
                }
            };
            self.reachable.insert_range(pending.pgid + 1, page_end);
            let page_len = ((page_end - pending.pgid) * page_size) as usize;
            let Some(page) = buf.get(offset..offset + page_len) else {
                self.page_error(pending.pgid, "page outside the read buffer".to_string());
                continue;
            };
            self.process_page(*pending, header, page);
        }
    }

    fn process_page(&mut self, pending: Pending, header: PageHeader, page: &[u8]) {
        let base = pending.pgid * self.db.page_size;
        match header.flags {
            BRANCH_PAGE => self.process_branch(pending, header, page),
            LEAF_PAGE => {
                let leaf = self.process_leaf(pending.bucket, pending.depth, page, base, false);
                if let Err(problem) = leaf {
                    self.page_error(pending.pgid, problem);
                }
            }
            flags => self.page_error(
                pending.pgid,
                format!("flags {flags:#06x}, expected a branch or leaf page"),
            ),
        }
    }

    fn process_branch(&mut self, pending: Pending, header: PageHeader, page: &[u8]) {
        let count = usize::from(header.count);
        if count == 0 {
            self.page_error(pending.pgid, "branch page with no elements".to_string());
            return;
        }
        if PAGE_HEADER_SIZE + count * ELEMENT_SIZE > page.len() {
            self.page_error(
                pending.pgid,
                format!("{count} branch elements do not fit in the page"),
            );
            return;
        }
        for element in 0..count {
            let at = PAGE_HEADER_SIZE + element * ELEMENT_SIZE;
            let (Some(pos), Some(ksize), Some(child)) =
                (u32_at(page, at), u32_at(page, at + 4), u64_at(page, at + 8))
            else {
                continue;
            };
            let key_end = (at as u64) + u64::from(pos) + u64::from(ksize);
            if key_end > page.len() as u64 {
                self.page_error(
                    pending.pgid,
                    format!(
                        "branch element {element} at offset {at}: key of {ksize} bytes at +{pos} ends past the page ({} bytes)",
                        page.len()
                    ),
                );
                continue;
            }
            self.enqueue(
                child,
                pending.bucket,
                pending.depth + 1,
                Parent::Branch(pending.pgid),
            );
        }
    }

    /// Parses a leaf page (a real one, or with `inline` an inline bucket's
    /// page inside a value at file offset `base`): hands plain entries to the
    /// visitor, follows nested buckets.
    ///
    /// Refused, as bbolt never writes them: an element whose key and value
    /// do not come after the element array and the previous element's (bbolt
    /// writes each once, in element order), so no value has two parents; and
    /// a sub-bucket inside an inline bucket (bbolt inlines only buckets
    /// without sub-buckets). With both, every element and inline page lies in
    /// bytes of its own, and the work of a page is linear in its size.
    fn process_leaf(
        &mut self,
        bucket: u32,
        depth: u32,
        page: &[u8],
        base: u64,
        inline: bool,
    ) -> Result<(), String> {
        let header = PageHeader::parse(page).ok_or("too short for a page header")?;
        if header.flags != LEAF_PAGE {
            return Err(format!("flags {:#06x}, expected a leaf page", header.flags));
        }
        let count = usize::from(header.count);
        if PAGE_HEADER_SIZE + count * ELEMENT_SIZE > page.len() {
            return Err(format!(
                "{count} leaf elements do not fit in {} bytes",
                page.len()
            ));
        }
        let mut first_problem = None;
        // Where the next element's key may start.
        let mut data_floor = (PAGE_HEADER_SIZE + count * ELEMENT_SIZE) as u64;
        for element in 0..count {
            let at = PAGE_HEADER_SIZE + element * ELEMENT_SIZE;
            let (Some(flags), Some(pos), Some(ksize), Some(vsize)) = (
                u32_at(page, at),
                u32_at(page, at + 4),
                u32_at(page, at + 8),
                u32_at(page, at + 12),
            ) else {
                continue;
            };
            let key_start = at as u64 + u64::from(pos);
            let value_start = key_start + u64::from(ksize);
            let value_end = value_start + u64::from(vsize);
            if value_end > page.len() as u64 {
                first_problem.get_or_insert_with(|| {
                    format!(
                        "leaf element {element} at offset {}: key ({ksize} bytes) and value ({vsize} bytes) at +{pos} end past the page ({} bytes)",
                        base + at as u64,
                        page.len()
                    )
                });
                continue;
            }
            if key_start < data_floor {
                first_problem.get_or_insert_with(|| {
                    format!(
                        "leaf element {element} at offset {}: its key and value at +{pos} overlap the element array or an earlier element's (a value shared by two elements)",
                        base + at as u64
                    )
                });
                continue;
            }
            data_floor = value_end;
            if inline && flags & BUCKET_LEAF_FLAG != 0 {
                first_problem.get_or_insert_with(|| {
                    format!(
                        "leaf element {element} at offset {}: a sub-bucket inside an inline bucket (bbolt never writes one)",
                        base + at as u64
                    )
                });
                continue;
            }
            let key = page
                .get(key_start as usize..value_start as usize)
                .unwrap_or(&[]);
            let value = page
                .get(value_start as usize..value_end as usize)
                .unwrap_or(&[]);
            if flags & BUCKET_LEAF_FLAG != 0 {
                if let Err(problem) =
                    self.nested_bucket(bucket, depth, key, value, base + value_start)
                {
                    first_problem.get_or_insert(problem);
                }
            } else {
                self.stats.entries += 1;
                let path = self
                    .buckets
                    .get(bucket as usize)
                    .map_or(&[][..], Vec::as_slice);
                self.visitor.entry(path, key, value, base + key_start);
            }
        }
        match first_problem {
            Some(problem) => Err(problem),
            None => Ok(()),
        }
    }

    fn nested_bucket(
        &mut self,
        parent: u32,
        depth: u32,
        name: &[u8],
        value: &[u8],
        value_offset: u64,
    ) -> Result<(), String> {
        let root = u64_at(value, 0).ok_or_else(|| {
            format!(
                "bucket value at offset {value_offset} is {} bytes, shorter than a bucket header",
                value.len()
            )
        })?;
        if depth >= MAX_DEPTH {
            return Err(format!("buckets nested deeper than {MAX_DEPTH} levels"));
        }
        let mut path = self
            .buckets
            .get(parent as usize)
            .cloned()
            .unwrap_or_default();
        path.push(name.to_vec());
        let id = u32::try_from(self.buckets.len()).map_err(|_| "too many buckets".to_string())?;
        self.buckets.push(path);
        if root == 0 {
            let inline = value.get(BUCKET_HEADER_SIZE..).unwrap_or(&[]);
            let inline_offset = value_offset + BUCKET_HEADER_SIZE as u64;
            self.process_leaf(id, depth + 1, inline, inline_offset, true)
                .map_err(|problem| format!("inline bucket at offset {inline_offset}: {problem}"))
        } else {
            self.enqueue(root, id, depth + 1, Parent::BucketValue(value_offset));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
