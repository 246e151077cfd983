//! bbolt's meta pages and the snapshot trailer: finding the page size and
//! the current meta page (checksummed with FNV-1a; the older one is used
//! when the newest points past the end of a copy taken mid-commit),
//! noticing a file that changed while it was read, and verifying the
//! SHA-256 trailer `etcdctl snapshot save` appends (with the file's own
//! SHA-256, for the report's identity).
use super::page::{u32_at, u64_at, PageHeader, META_PAGE, PAGE_HEADER_SIZE};
use super::{hex, read_exact_at, BboltError, Database, ReadAt};
use crate::inspect::aligned::AlignedBuf;

const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
/// Bytes of the meta structure covered by its checksum (everything before it).
const META_CHECKSUMMED: usize = 56;
pub(super) const META_SIZE: usize = META_CHECKSUMMED + 8;
/// An `etcdctl snapshot save` file is the image plus its SHA-256.
const TRAILER_SIZE: u64 = 32;
/// Bytes hashed per read when checking a snapshot trailer: the buffer stays
/// in the core's L2 cache between the kernel's copy and the hash.
pub(super) const HASH_BLOCK: usize = 256 << 10;
/// What hashing a file gives: the trailer's verdict and the file's SHA-256.
type Hashed = Result<(TrailerStatus, [u8; 32]), BboltError>;
/// Blocks the checksum's reader thread may have filled before the hash takes them.
const HASH_READ_AHEAD: usize = 2;

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
pub(super) fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
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

/// What [`Database::verify_trailer`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrailerStatus {
    /// No snapshot trailer (a member `db` file).
    Absent,
    /// The trailer matches the SHA-256 of the image.
    Verified,
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
    /// file sequentially, [`HASH_BLOCK`] bytes at a time, on a reader thread.
    pub fn verify_trailer(&self) -> Result<TrailerStatus, BboltError>
    where
        R: Sync,
    {
        if self.trailer.is_none() {
            return Ok(TrailerStatus::Absent);
        }
        self.hash_file().map(|(status, _)| status)
    }

    /// Reads the whole file once: verifies the snapshot trailer (if any)
    /// against the image's SHA-256, and returns the SHA-256 of the whole
    /// file (what `sha256sum` prints), which reports use as its identity.
    pub fn hash_file(&self) -> Result<(TrailerStatus, [u8; 32]), BboltError>
    where
        R: Sync,
    {
        self.hash_file_timed(HASH_BLOCK).0
    }

    /// [`Database::hash_file`], reading `block` bytes at a time (tests use
    /// small blocks), and the CPU time of its reader thread.
    ///
    /// The reads run on a thread of their own, [`HASH_READ_AHEAD`] blocks
    /// ahead of the hash: the kernel's copy out of the page cache (a quarter
    /// of the hashing thread's CPU) then leaves the critical path of a
    /// checksummed scan, which is the SHA-256 itself.
    pub(super) fn hash_file_timed(&self, block: usize) -> (Hashed, Option<std::time::Duration>)
    where
        R: Sync,
    {
        let block = block.max(1) as u64;
        let (image_size, file_size) = (self.image_size, self.file_size);
        std::thread::scope(|scope| {
            // Filled blocks wait here (bounded, so memory stays a few
            // blocks); emptied buffers go back to the reader for reuse.
            let (filled, ready) = std::sync::mpsc::sync_channel(HASH_READ_AHEAD);
            let (give_back, returned) = std::sync::mpsc::channel::<AlignedBuf>();
            let reader = scope.spawn(move || {
                let cpu = crate::inspect::cputime::thread_cpu_time();
                // The image in blocks, then the trailer (if any) on its own,
                // so that no block straddles the end of the image.
                let mut offset = 0u64;
                while offset < file_size {
                    let limit = if offset < image_size {
                        image_size
                    } else {
                        file_size
                    };
                    let len = (limit - offset).min(block) as usize;
                    let mut buf = returned.try_recv().unwrap_or_default();
                    buf.resize(len);
                    let read =
                        read_exact_at(&self.source, &mut buf, offset, file_size).map(|()| buf);
                    let failed = read.is_err();
                    // A closed channel means the hash stopped early: stop too.
                    if filled.send(read).is_err() || failed {
                        break;
                    }
                    offset += len as u64;
                }
                crate::inspect::cputime::thread_cpu_since(cpu)
            });
            let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
            let mut image_hash = None;
            let mut hashed = 0u64;
            let mut failure = None;
            for read in ready.iter() {
                let buf = match read {
                    Ok(buf) => buf,
                    Err(error) => {
                        failure = Some(error);
                        break;
                    }
                };
                if hashed == image_size && image_hash.is_none() {
                    // The file hash goes on over the trailer; the image hash stops here.
                    image_hash = Some(hasher.clone());
                }
                hasher.update(&buf);
                hashed += buf.len() as u64;
                // The reader may be done already: then the buffer is dropped.
                let _ = give_back.send(buf);
            }
            drop(ready);
            let cpu = reader.join().ok().flatten();
            if let Some(error) = failure {
                return (Err(error), cpu);
            }
            if hashed != file_size {
                let error = BboltError::Io {
                    offset: hashed,
                    len: file_size - hashed.min(file_size),
                    source: std::io::Error::other("the checksum's reader thread stopped"),
                };
                return (Err(error), cpu);
            }
            let image_hash = image_hash.unwrap_or_else(|| hasher.clone());
            (self.check_trailer(image_hash, hasher), cpu)
        })
    }

    /// Compares the image's hash with the trailer; returns the file's SHA-256.
    fn check_trailer(
        &self,
        hasher: ring::digest::Context,
        file_hasher: ring::digest::Context,
    ) -> Result<(TrailerStatus, [u8; 32]), BboltError> {
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
}
