//! bbolt's page layout: the page header (`id u64, flags u16, count u16,
//! overflow u32`), branch and leaf elements, the bucket header inside a leaf
//! value, bounds-checked little-endian reads, and [`PageSet`], the bitset of
//! pages a walk reached. Layout facts: `../shared/spec/storage.md` (from
//! etcd-io/bbolt `internal/common/page.go`).

/// Size of a page header: `id u64, flags u16, count u16, overflow u32`.
pub const PAGE_HEADER_SIZE: usize = 16;
/// Size of a branch or leaf element.
pub(super) const ELEMENT_SIZE: usize = 16;
/// Size of a bucket header inside a leaf value: `root u64, sequence u64`.
pub(super) const BUCKET_HEADER_SIZE: usize = 16;
/// Page flag: branch page.
pub const BRANCH_PAGE: u16 = 0x01;
/// Page flag: leaf page.
pub const LEAF_PAGE: u16 = 0x02;
/// Page flag: meta page.
pub const META_PAGE: u16 = 0x04;
/// Page flag: freelist page.
pub const FREELIST_PAGE: u16 = 0x10;
/// Leaf element flag: the value is a nested bucket.
pub(super) const BUCKET_LEAF_FLAG: u32 = 0x01;
pub(super) fn u16_at(bytes: &[u8], offset: usize) -> Option<u16> {
    let slice = bytes.get(offset..offset.checked_add(2)?)?;
    Some(u16::from_le_bytes(slice.try_into().ok()?))
}

pub(super) fn u32_at(bytes: &[u8], offset: usize) -> Option<u32> {
    let slice = bytes.get(offset..offset.checked_add(4)?)?;
    let mut array = [0u8; 4];
    array.copy_from_slice(slice);
    Some(u32::from_le_bytes(array))
}

pub(super) fn u64_at(bytes: &[u8], offset: usize) -> Option<u64> {
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
    pub(super) fn run_end(&self, pgid: u64) -> Option<u64> {
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
    pub(super) fn insert_range(&mut self, from: u64, to: u64) {
        for pgid in from..to.min(self.len) {
            self.insert(pgid);
        }
    }
}
