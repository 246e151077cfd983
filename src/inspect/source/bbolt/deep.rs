//! The deep scan of a bbolt file (`--deep`): every page the walk of the
//! current meta page did not reach (free pages, pages only the older meta
//! reaches, any page below the high-water mark outside the tree) and the
//! slack past the high-water mark (pre-grown member dbs), searched for
//! remnants of values in scope by [`crate::inspect::remnants`].
//!
//! Why: bbolt copies pages on write and leaves the old ones as they were until
//! reused; compaction frees old revisions but only `etcdctl defrag` rewrites the
//! file without them, and a snapshot copies free pages verbatim. The pages are
//! read as contiguous byte ranges (runs of unreachable pages, and the slack
//! joined to the run before it) in windows that overlap by
//! [`OVERLAP`] bytes, so a remnant across a window boundary is found once.

use super::{BboltError, Database, PageSet, ReadAt};
use crate::inspect::aligned::AlignedBuf;
use crate::inspect::remnants::{RemnantReport, RemnantScope, RemnantSearch, OVERLAP};

/// Bytes read at once (several unreachable pages close together).
const CHUNK_SIZE: u64 = 4 << 20;

/// Examines every page of `db` not in `reachable` (from [`Database::walk`])
/// and the slack past the high-water mark. `Err` for I/O problems, and when
/// the file changed while it was read ([`BboltError::Changed`]).
pub fn search<R: ReadAt>(
    db: &Database<R>,
    reachable: &PageSet,
    scope: &RemnantScope,
) -> Result<RemnantReport, BboltError> {
    let page_size = db.page_size();
    let high_water = db.meta().high_water;
    let slack_start = high_water.saturating_mul(page_size);
    let image_end = db.image_size();
    let mut report = RemnantReport::default();
    let searcher = RemnantSearch::new(scope, page_size);
    // Contiguous byte ranges: runs of unreachable pages, the slack joined
    // to a run that ends at the high-water mark.
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for pgid in (2..high_water).filter(|&pgid| !reachable.contains(pgid)) {
        report.pages_examined += 1;
        let (from, to) = (pgid * page_size, (pgid + 1) * page_size);
        match ranges.last_mut() {
            Some(last) if last.1 == from => last.1 = to,
            _ => ranges.push((from, to)),
        }
    }
    if slack_start < image_end {
        report.slack_bytes = image_end - slack_start;
        match ranges.last_mut() {
            Some(last) if last.1 == slack_start => last.1 = image_end,
            _ => ranges.push((slack_start, image_end)),
        }
    }
    let mut buf = AlignedBuf::new();
    for (from, to) in ranges {
        // Each window reports the remnants starting in its middle part: the
        // OVERLAP bytes before it are context (a PEM block's BEGIN line, a
        // record's tag), the OVERLAP bytes after it are left to the next
        // window, which holds what follows them.
        let mut window = from;
        let mut report_from = from;
        loop {
            let len = (to - window).min(CHUNK_SIZE);
            buf.resize(len as usize);
            db.read_image(window, &mut buf)?;
            report.bytes_read += len;
            let last = window + len == to;
            let report_until = if last { to } else { window + len - OVERLAP };
            let part = (report_from - window) as usize..(report_until - window) as usize;
            searcher.search_window(&buf, window, part, &mut report.remnants);
            if last {
                break;
            }
            report_from = report_until;
            window = report_until - OVERLAP;
        }
    }
    db.check_unchanged()?;
    report.remnants.sort_by_key(|remnant| remnant.offset);
    Ok(report)
}
