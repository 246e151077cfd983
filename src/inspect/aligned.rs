//! Page-aligned read buffers for the file scan.
//!
//! The kernel copies file data out of the page cache into the caller's
//! buffer; on the development machine's AMD EPYC that copy runs 4-5x slower
//! into a destination that is not cache-line aligned (82 MB: 32 ms instead
//! of 7 ms of system time), and `malloc` places large blocks 16 bytes past a
//! page boundary. A [`AlignedBuf`] keeps its bytes at a page boundary inside
//! an ordinary `Vec<u8>` (no `unsafe`): it over-allocates by a page and
//! starts at the first aligned offset.
use std::ops::{Deref, DerefMut};

/// Alignment of the first byte: a page, so page-sized reads land on whole
/// destination pages too.
pub const ALIGN: usize = 4096;

/// A byte buffer whose contents start at an [`ALIGN`]-byte boundary.
/// Derefs to its `len` bytes.
#[derive(Default)]
pub struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl std::fmt::Debug for AlignedBuf {
    // The bytes may be a secret's (file pages): show the size only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .finish()
    }
}

impl AlignedBuf {
    /// An empty buffer (allocates on the first [`AlignedBuf::resize`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// A zeroed buffer of `len` bytes.
    pub fn with_len(len: usize) -> Self {
        let mut buf = Self::new();
        buf.resize(len);
        buf
    }

    /// Sets the length to `len`, keeping the first `min(len, old len)` bytes.
    /// Bytes past the old length are unspecified (zero or left over from an
    /// earlier use): callers fill them. Reuses the allocation when it is
    /// big enough, so a buffer reused for same-sized reads costs nothing.
    pub fn resize(&mut self, len: usize) {
        if self.start + len <= self.storage.len() {
            self.len = len;
            return;
        }
        let mut storage = vec![0u8; len + ALIGN];
        let start = storage.as_ptr().align_offset(ALIGN).min(ALIGN);
        let kept = self.len.min(len);
        if let (Some(to), Some(from)) = (
            storage.get_mut(start..start + kept),
            self.storage.get(self.start..self.start + kept),
        ) {
            to.copy_from_slice(from);
        }
        self.storage = storage;
        self.start = start;
        self.len = len;
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.storage
            .get(self.start..self.start + self.len)
            .unwrap_or(&[])
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        let (start, len) = (self.start, self.len);
        self.storage.get_mut(start..start + len).unwrap_or(&mut [])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aligned(buf: &AlignedBuf) -> bool {
        (buf.as_ptr() as usize).is_multiple_of(ALIGN)
    }

    #[test]
    fn starts_at_a_page_boundary_and_keeps_contents_when_growing() {
        let mut buf = AlignedBuf::with_len(100);
        assert!(aligned(&buf));
        assert_eq!(buf.len(), 100);
        buf.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
        buf.resize(50);
        assert_eq!(buf.len(), 50);
        buf.resize(256 << 10);
        assert!(aligned(&buf));
        assert_eq!(buf.len(), 256 << 10);
        assert!(buf.iter().take(50).enumerate().all(|(i, b)| *b == i as u8));
        // Shrinking and growing within the allocation keeps the address.
        let address = buf.as_ptr();
        buf.resize(4096);
        buf.resize(200 << 10);
        assert_eq!(buf.as_ptr(), address);
        assert_eq!(format!("{buf:?}"), "AlignedBuf { len: 204800 }");
        assert!(AlignedBuf::new().is_empty());
    }
}
