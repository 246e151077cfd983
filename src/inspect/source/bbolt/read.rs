//! How the walk reads: pages in physical order, nearby pages coalesced into
//! chunk-sized reads into page-aligned buffers, overflow runs checked before
//! they are read (so a corrupt claim is refused unread), and a read-ahead
//! thread that fills the next chunks while the walk parses the current one.
use std::io;

use super::page::{PageHeader, PageSet, ELEMENT_SIZE, PAGE_HEADER_SIZE};
use super::walk::Walker;
use super::{read_exact_at, BboltError, Database, ReadAt};
use crate::inspect::aligned::AlignedBuf;

/// Bytes read at once when pages are close together: small enough that the
/// buffer stays in the CPU cache between the kernel's copy and the parse.
pub(super) const CHUNK_SIZE: u64 = 256 << 10;
/// Chunks the read-ahead thread may have filled before the walk takes them.
const READ_AHEAD: usize = 2;
/// Times the image a walk may read while it coalesces nearby pages into one
/// read (files written by bbolt need about one).
const REREAD_BUDGET: u64 = 3;
/// bbolt's largest key (`MaxKeySize`).
const MAX_KEY_SIZE: u64 = 32 << 10;
/// bbolt's largest value (`MaxValueSize`, 2 GiB - 2).
const MAX_VALUE_SIZE: u64 = (1 << 31) - 2;
/// The most bytes one page run can need: a page holding a single element
/// with the largest key and value bbolt accepts. A longer overflow claim is
/// corrupt, and is refused before anything is read or allocated for it.
const MAX_RUN_BYTES: u64 = (PAGE_HEADER_SIZE + ELEMENT_SIZE) as u64 + MAX_KEY_SIZE + MAX_VALUE_SIZE;

/// A page waiting to be read: its id, the bucket it belongs to, its depth.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pending {
    pub(super) pgid: u64,
    pub(super) bucket: u32,
    pub(super) depth: u32,
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
    pub(super) fn check_run(
        &self,
        pgid: u64,
        header: &PageHeader,
        reached: &PageSet,
    ) -> Result<u64, String> {
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
}

impl<R: ReadAt + Sync> Walker<'_, '_, R> {
    /// Reads the pages of one round in physical order, coalescing nearby
    /// pages into chunk-sized reads, and processes each. With `read_ahead`
    /// and more than one chunk, a reader thread fills the next chunks while
    /// this one parses: the kernel's copy out of the page cache (a quarter of
    /// a scan's CPU) then runs on the other core. Chunks are processed in the
    /// same order either way, so the visitor sees the same sequence.
    pub(super) fn read_batch(
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
}
