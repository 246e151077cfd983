//! Byte-string interning for the scan engine: every etcd key and every
//! classification string becomes a `u32` id, so a record of a value is a few
//! integers however long its key.
//!
//! Owns the choice of hasher for the scan's tables (seeded foldhash) and
//! [`Interner`], which
//! keeps all strings back to back in one buffer: interning a new key costs no
//! allocation of its own (one `Vec<u8>` per key, twice, was 13% of a file
//! scan), and looking up a known one allocates nothing.

use std::collections::HashMap;

/// The hasher of the scan's tables: foldhash (SipHash was 8% of a file scan),
/// seeded at random per table, so crafted keys in a backup cannot aim for
/// collisions.
pub(super) type FastState = foldhash::fast::RandomState;

/// A `HashMap` with the seeded fast hasher.
pub(super) type FastMap<K, V> = HashMap<K, V, FastState>;

/// Hashes a key that already is a seeded, avalanched hash: uses it as is.
#[derive(Clone, Copy, Default)]
struct HashIsKey(u64);

impl std::hash::Hasher for HashIsKey {
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; fold anything else in all the same.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[derive(Clone, Copy, Default)]
struct HashIsKeyState;

impl std::hash::BuildHasher for HashIsKeyState {
    type Hasher = HashIsKey;
    fn build_hasher(&self) -> HashIsKey {
        HashIsKey::default()
    }
}

/// No further string with the same hash.
const END_OF_CHAIN: u32 = u32::MAX;

/// Interns byte strings: ids are dense (`0..len()`) in order of first sight.
#[derive(Default)]
pub(super) struct Interner {
    /// Every interned string, back to back.
    bytes: Vec<u8>,
    /// `ends[id]`: where string `id` ends in `bytes` (it starts where the
    /// previous one ends).
    ends: Vec<usize>,
    /// Hash of a string -> the most recent id with that hash.
    heads: HashMap<u64, u32, HashIsKeyState>,
    /// `next[id]`: the previous id with the same hash, or [`END_OF_CHAIN`]
    /// (distinct strings whose hashes collide are chained, not lost).
    next: Vec<u32>,
    state: FastState,
}

impl std::fmt::Debug for Interner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interner")
            .field("strings", &self.ends.len())
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

impl Interner {
    /// The table hash of `bytes` (for [`Interner::find`] and [`Interner::insert`]).
    pub(super) fn hash(&self, bytes: &[u8]) -> u64 {
        use std::hash::BuildHasher as _;
        self.state.hash_one(bytes)
    }

    /// The id of `bytes` (whose hash is `hash`), if interned.
    pub(super) fn find(&self, hash: u64, bytes: &[u8]) -> Option<u32> {
        let mut id = *self.heads.get(&hash)?;
        while id != END_OF_CHAIN {
            if self.get(id) == bytes {
                return Some(id);
            }
            id = self.next.get(id as usize).copied().unwrap_or(END_OF_CHAIN);
        }
        None
    }

    /// Adds `bytes` (not interned yet; `hash` from [`Interner::hash`]); returns its id.
    pub(super) fn insert(&mut self, hash: u64, bytes: &[u8]) -> u32 {
        let id = self.ends.len() as u32;
        self.bytes.extend_from_slice(bytes);
        self.ends.push(self.bytes.len());
        let previous = self.heads.insert(hash, id).unwrap_or(END_OF_CHAIN);
        self.next.push(previous);
        id
    }

    /// The id of `bytes`, interning it on first sight.
    pub(super) fn intern(&mut self, bytes: &[u8]) -> u32 {
        let hash = self.hash(bytes);
        match self.find(hash, bytes) {
            Some(id) => id,
            None => self.insert(hash, bytes),
        }
    }

    /// The string with id `id` (empty for an unknown id).
    pub(super) fn get(&self, id: u32) -> &[u8] {
        let id = id as usize;
        let start = match id.checked_sub(1) {
            Some(previous) => self.ends.get(previous).copied().unwrap_or(0),
            None => 0,
        };
        let end = self.ends.get(id).copied().unwrap_or(start);
        self.bytes.get(start..end).unwrap_or(&[])
    }

    /// Number of strings interned.
    pub(super) fn len(&self) -> usize {
        self.ends.len()
    }
}

/// The ids of `keys` in byte order of the keys. Keys share a long prefix
/// (`/registry/secrets/`) and then often a namespace: a most-significant-first
/// radix refinement sorts by 8 bytes at a time as one integer, and only the
/// runs still tied move on to the next 8 bytes, so comparisons rarely touch
/// the keys themselves (a comparison sort of whole keys was 8% of a scan).
pub(crate) fn sorted_ids(keys: &Interner) -> Vec<u32> {
    let count = keys.len() as u32;
    let first = keys.get(0);
    let mut shared = first.len();
    for id in 1..count {
        let key = keys.get(id);
        shared = shared.min(
            first
                .iter()
                .zip(key)
                .take(shared)
                .take_while(|(a, b)| a == b)
                .count(),
        );
    }
    // Big-endian with zero padding orders like the bytes; keys that differ
    // only past their end (a shorter key padded) are settled by whole-key
    // comparison once every key of the run has ended.
    let word_at = |id: u32, depth: usize| {
        let mut word = [0u8; 8];
        let rest = keys.get(id).get(depth..).unwrap_or(&[]);
        let take = rest.len().min(8);
        if let (Some(target), Some(source)) = (word.get_mut(..take), rest.get(..take)) {
            target.copy_from_slice(source);
        }
        u64::from_be_bytes(word)
    };
    let mut order: Vec<(u64, u32)> = (0..count).map(|id| (word_at(id, shared), id)).collect();
    order.sort_unstable();
    // Runs of equal words still to order, with the depth their words are
    // at (an explicit stack: a crafted long key must not recurse deeply).
    let mut tied = Vec::new();
    push_tied_runs(&order, 0, shared, &mut tied);
    while let Some((start, end, depth)) = tied.pop() {
        let Some(run) = order.get_mut(start..end) else {
            continue;
        };
        let next = depth + 8;
        if run.iter().all(|&(_, id)| keys.get(id).len() <= next) {
            run.sort_unstable_by(|&(_, a), &(_, b)| keys.get(a).cmp(keys.get(b)));
            continue;
        }
        for entry in run.iter_mut() {
            entry.0 = word_at(entry.1, next);
        }
        run.sort_unstable();
        push_tied_runs(run, start, next, &mut tied);
    }
    order.into_iter().map(|(_, id)| id).collect()
}

/// Pushes `(start, end, depth)` for every run of 2+ equal words in `run`
/// (which begins at `offset` in the whole order).
fn push_tied_runs(
    run: &[(u64, u32)],
    offset: usize,
    depth: usize,
    tied: &mut Vec<(usize, usize, usize)>,
) {
    let mut start = 0;
    while let Some(&(word, _)) = run.get(start) {
        let length = run
            .get(start..)
            .unwrap_or(&[])
            .iter()
            .take_while(|&&(other, _)| other == word)
            .count()
            .max(1);
        if length > 1 {
            tied.push((offset + start, offset + start + length, depth));
        }
        start += length;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interns_and_chains_collisions() {
        let mut interner = Interner::default();
        let a = interner.intern(b"/registry/secrets/a/one");
        let b = interner.intern(b"");
        let c = interner.intern(b"/registry/secrets/a/two");
        assert_eq!((a, b, c), (0, 1, 2));
        assert_eq!(interner.intern(b"/registry/secrets/a/one"), a);
        assert_eq!(interner.intern(b""), b);
        assert_eq!(interner.get(c), b"/registry/secrets/a/two");
        assert_eq!(interner.get(b), b"");
        assert_eq!(interner.get(99), b"");
        // Two strings forced onto one hash stay distinct.
        let x = interner.insert(7, b"x");
        let y = interner.insert(7, b"y");
        assert_eq!(interner.find(7, b"x"), Some(x));
        assert_eq!(interner.find(7, b"y"), Some(y));
        assert_eq!(interner.find(7, b"z"), None);
        assert_eq!(interner.len(), 5);
    }
}
