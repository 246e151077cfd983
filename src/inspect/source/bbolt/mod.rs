//! The bbolt source: etcd backup files (etcd's backend is bbolt), read
//! read-only, written for untrusted input and speed.
//!
//! By what it does:
//! - [`page`]: the page layout (header, elements, bucket headers) and
//!   [`PageSet`], the pages a walk reached;
//! - [`meta`]: the meta pages (page size, current meta, fallback to the
//!   older one, change detection) and the `etcdctl snapshot save` trailer
//!   (SHA-256 of the image);
//! - [`walk`]: the walk of the B+ tree of buckets from the current meta
//!   page, handing every key/value of every bucket to a [`Visitor`];
//! - [`read`]: how the walk reads (coalesced, page-aligned, overflow runs
//!   checked before they are read, a read-ahead thread);
//! - [`keyspace`]: etcd's `key` and `meta` buckets turned into
//!   observations (revision keys and records decoded by
//!   [`crate::inspect::mvcc`]);
//! - [`deep`]: the deep scan of the pages the walk did not reach;
//! - `file`: all of it as an audit [`Source`](super::Source) ([`FileSource`]).
//!
//! Layout facts: `../shared/spec/storage.md` (from etcd-io/bbolt
//! `internal/common/page.go`, `meta.go`, `bucket.go`). No mmap (the crate
//! forbids `unsafe`): pages are read with positioned reads ([`ReadAt`]),
//! level by level, sorted by page id, several at a time in large coalesced
//! reads into one reused buffer, and parsed in place. So a file is read
//! about once, sequentially, with memory bounded by the chunk size (and the
//! largest single value), whatever the file size. Problems in one page are
//! reported to the visitor and the walk goes on with the rest; problems
//! with the file as a whole (no valid meta page, truncated, I/O errors) end
//! it with a [`BboltError`].

use std::fmt::Write as _;
use std::io;

use meta::META_SIZE;

pub mod deep;
mod file;
pub mod keyspace;
pub mod meta;
pub mod page;
pub mod read;
pub mod walk;
pub use file::FileSource;
pub use keyspace::{
    read_file, read_image, start_read_file, FileError, FileOptions, FileSummary, PendingHash,
    ReadCpu,
};
pub use meta::{Meta, TrailerStatus};
pub use page::{
    PageHeader, PageSet, BRANCH_PAGE, FREELIST_PAGE, LEAF_PAGE, META_PAGE, PAGE_HEADER_SIZE,
};
pub use walk::{Visitor, WalkStats};

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

#[cfg(test)]
mod tests;
