//! The walk of the B+ tree of buckets from the current meta page, level by
//! level: every page visited is checked (stored id, flags, below the
//! high-water mark, element array and every key/value inside the page,
//! overflow included) and marked in a [`PageSet`], so a page reached twice
//! is reported instead of walked again and corrupt files cannot loop. Each
//! key/value of every bucket goes to a [`Visitor`]; problems in one page are
//! reported to it and the walk goes on.
use super::page::{
    u32_at, u64_at, PageHeader, PageSet, BRANCH_PAGE, BUCKET_HEADER_SIZE, BUCKET_LEAF_FLAG,
    ELEMENT_SIZE, FREELIST_PAGE, LEAF_PAGE, PAGE_HEADER_SIZE,
};
use super::read::{Pending, CHUNK_SIZE};
use super::{read_exact_at, BboltError, Database, ReadAt};
use crate::inspect::aligned::AlignedBuf;

/// Deepest bucket/branch nesting accepted (bbolt trees are a few levels deep).
const MAX_DEPTH: u32 = 64;

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

impl<R: ReadAt> Database<R> {
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
    pub(super) fn walk_chunked(
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

pub(super) struct Walker<'d, 'v, R> {
    pub(super) db: &'d Database<R>,
    pub(super) visitor: &'v mut dyn Visitor,
    pub(super) reachable: PageSet,
    /// Path of every bucket found, indexed by bucket number (0 = root bucket).
    pub(super) buckets: Vec<Vec<Vec<u8>>>,
    /// Pages to read in the next round.
    pub(super) next: Vec<Pending>,
    pub(super) stats: WalkStats,
    /// Largest coalesced read ([`CHUNK_SIZE`]).
    pub(super) chunk_size: u64,
}

impl<R: ReadAt + Sync> Walker<'_, '_, R> {
    pub(super) fn page_error(&mut self, pgid: u64, problem: String) {
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
    pub(super) fn process_page(&mut self, pending: Pending, header: PageHeader, page: &[u8]) {
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
