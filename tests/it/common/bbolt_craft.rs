//! Builds bbolt files byte by byte, hostile ones included: meta pages with
//! their FNV-1a checksum, branch and leaf pages whose elements may point
//! anywhere (shared values, nested inline buckets, overflow claims). Layout:
//! `../shared/spec/storage.md`. Only what the hostile-file tests need.

/// Page size of every crafted file.
pub const PAGE: usize = 4096;
/// Leaf element flag: the value is a bucket.
pub const BUCKET: u32 = 0x01;

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// A file being built: `pages * PAGE` bytes, pages 0 and 1 are meta pages.
#[derive(Debug, Clone)]
pub struct Craft {
    /// The whole image.
    pub bytes: Vec<u8>,
}

impl Craft {
    /// A file of `pages` zeroed pages.
    pub fn new(pages: usize) -> Self {
        Self {
            bytes: vec![0; pages * PAGE],
        }
    }

    /// Number of pages.
    pub fn pages(&self) -> u64 {
        (self.bytes.len() / PAGE) as u64
    }

    /// Writes meta page `which` (0 or 1): root bucket at `root`, high-water
    /// mark `high_water`, transaction `txid`, no persisted freelist.
    pub fn meta(&mut self, which: u64, root: u64, high_water: u64, txid: u64) -> &mut Self {
        let at = which as usize * PAGE;
        self.header(which, 0x04, 0, 0);
        let mut meta = Vec::with_capacity(64);
        meta.extend(0xED0C_DAEDu32.to_le_bytes());
        meta.extend(2u32.to_le_bytes());
        meta.extend((PAGE as u32).to_le_bytes());
        meta.extend(0u32.to_le_bytes());
        meta.extend(root.to_le_bytes());
        meta.extend(0u64.to_le_bytes());
        meta.extend(u64::MAX.to_le_bytes());
        meta.extend(high_water.to_le_bytes());
        meta.extend(txid.to_le_bytes());
        let sum = fnv1a64(&meta);
        meta.extend(sum.to_le_bytes());
        self.bytes[at + 16..at + 16 + 64].copy_from_slice(&meta);
        self
    }

    /// Both meta pages, txids 2 (page 0) and 1 (page 1), high-water mark = file.
    pub fn metas(&mut self, root: u64) -> &mut Self {
        let pages = self.pages();
        self.meta(0, root, pages, 2).meta(1, root, pages, 1)
    }

    /// A page header at page `pgid`.
    pub fn header(&mut self, pgid: u64, flags: u16, count: u16, overflow: u32) -> &mut Self {
        let at = pgid as usize * PAGE;
        self.bytes[at..at + 8].copy_from_slice(&pgid.to_le_bytes());
        self.bytes[at + 8..at + 10].copy_from_slice(&flags.to_le_bytes());
        self.bytes[at + 10..at + 12].copy_from_slice(&count.to_le_bytes());
        self.bytes[at + 12..at + 16].copy_from_slice(&overflow.to_le_bytes());
        self
    }

    /// A well-formed leaf page at `pgid` holding `elements` (flags, key, value).
    pub fn leaf(&mut self, pgid: u64, elements: &[(u32, &[u8], &[u8])]) -> &mut Self {
        let page = leaf_bytes(elements);
        let at = pgid as usize * PAGE;
        self.bytes[at..at + page.len()].copy_from_slice(&page);
        self.bytes[at..at + 8].copy_from_slice(&pgid.to_le_bytes());
        self
    }

    /// A branch page at `pgid` whose elements point at `children` (keys "a", "b", ...).
    pub fn branch(&mut self, pgid: u64, children: &[u64]) -> &mut Self {
        self.header(pgid, 0x01, children.len() as u16, 0);
        let at = pgid as usize * PAGE;
        let keys = 16 + children.len() * 16;
        for (index, child) in children.iter().enumerate() {
            // One-byte keys, after the element array.
            let data = keys + index;
            let element = at + 16 + index * 16;
            let pos = (data - (element - at)) as u32;
            self.bytes[element..element + 4].copy_from_slice(&pos.to_le_bytes());
            self.bytes[element + 4..element + 8].copy_from_slice(&1u32.to_le_bytes());
            self.bytes[element + 8..element + 16].copy_from_slice(&child.to_le_bytes());
            self.bytes[at + data] = b'a' + (index % 26) as u8;
        }
        self
    }

    /// Overwrites bytes at file offset `at`.
    pub fn put(&mut self, at: usize, bytes: &[u8]) -> &mut Self {
        self.bytes[at..at + bytes.len()].copy_from_slice(bytes);
        self
    }
}

/// A leaf page (header with id 0, elements, then keys and values in element
/// order, as bbolt writes them) as bytes; also the inline page of a bucket.
pub fn leaf_bytes(elements: &[(u32, &[u8], &[u8])]) -> Vec<u8> {
    let mut page = vec![0u8; 16 + elements.len() * 16];
    page[8..10].copy_from_slice(&0x02u16.to_le_bytes());
    page[10..12].copy_from_slice(&(elements.len() as u16).to_le_bytes());
    for (index, (flags, key, value)) in elements.iter().enumerate() {
        let element = 16 + index * 16;
        let pos = (page.len() - element) as u32;
        page[element..element + 4].copy_from_slice(&flags.to_le_bytes());
        page[element + 4..element + 8].copy_from_slice(&pos.to_le_bytes());
        page[element + 8..element + 12].copy_from_slice(&(key.len() as u32).to_le_bytes());
        page[element + 12..element + 16].copy_from_slice(&(value.len() as u32).to_le_bytes());
        page.extend_from_slice(key);
        page.extend_from_slice(value);
    }
    page
}

/// A bucket header pointing at page `root` (0: inline, `inline` follows).
pub fn bucket_value(root: u64, inline: &[u8]) -> Vec<u8> {
    let mut value = root.to_le_bytes().to_vec();
    value.extend(0u64.to_le_bytes());
    value.extend_from_slice(inline);
    value
}

/// An etcd revision key (`main` BE, `_`, sub BE).
pub fn revision_key(main: i64) -> Vec<u8> {
    let mut key = main.to_be_bytes().to_vec();
    key.push(b'_');
    key.extend(0i64.to_be_bytes());
    key
}

/// An `mvccpb.KeyValue` for `key` at revision `main` holding `value`.
pub fn key_value(key: &[u8], main: i64, value: &[u8]) -> Vec<u8> {
    fn varint(out: &mut Vec<u8>, mut n: u64) {
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }
    let mut kv = vec![0x0a];
    varint(&mut kv, key.len() as u64);
    kv.extend_from_slice(key);
    for field in [0x10u8, 0x18] {
        kv.push(field);
        varint(&mut kv, main as u64);
    }
    kv.extend([0x20, 1, 0x2a]);
    varint(&mut kv, value.len() as u64);
    kv.extend_from_slice(value);
    kv
}

/// A minimal etcd database: root bucket leaf at page 2 with a `key` bucket
/// whose leaf is page 3 (one revision of `/registry/secrets/ns/a`), in a
/// file of `pages` pages. Extra root-bucket elements follow `key`.
pub fn etcd_file(pages: usize, extra: &[(u32, &[u8], &[u8])]) -> Craft {
    let mut craft = Craft::new(pages);
    let key_bucket = bucket_value(3, &[]);
    let mut root: Vec<(u32, &[u8], &[u8])> = vec![(BUCKET, b"key", &key_bucket)];
    root.extend_from_slice(extra);
    craft.metas(2).leaf(2, &root);
    let kv = key_value(b"/registry/secrets/ns/a", 5, b"k8s\0 not really");
    craft.leaf(3, &[(0, &revision_key(5), &kv)]);
    craft
}
