//! A progress line on stderr for long scans: a sink wrapper that counts what
//! a source reads and, when stderr is a terminal, redraws one line a few
//! times a second once the scan has run for half a second. It prints counts
//! only, never keys or values, and clears its line when done.
use std::io::Write;
use std::time::{Duration, Instant};

use super::{ObservationSink, Observed};

/// How long a scan runs before the line appears (short scans stay silent).
const QUIET_START: Duration = Duration::from_millis(500);
/// How often the line is redrawn.
const REDRAW_EVERY: Duration = Duration::from_millis(200);
/// Observations between clock reads, so counting stays nearly free.
const CHECK_EVERY: u64 = 1024;

/// Wraps `inner`, forwarding everything, and draws progress on `out`.
pub struct Progress<'a, W: Write> {
    inner: &'a mut dyn ObservationSink,
    out: W,
    label: &'static str,
    started: Instant,
    last_drawn: Option<Instant>,
    values: u64,
    deletes: u64,
    errors: u64,
}

impl<'a, W: Write> Progress<'a, W> {
    /// Counts what reaches `inner`; `label` names the source ("file", "etcd").
    pub fn new(inner: &'a mut dyn ObservationSink, out: W, label: &'static str) -> Self {
        Self {
            inner,
            out,
            label,
            started: Instant::now(),
            last_drawn: None,
            values: 0,
            deletes: 0,
            errors: 0,
        }
    }

    fn tick(&mut self) {
        if !(self.values + self.deletes).is_multiple_of(CHECK_EVERY) {
            return;
        }
        let now = Instant::now();
        let due = match self.last_drawn {
            None => now.duration_since(self.started) >= QUIET_START,
            Some(last) => now.duration_since(last) >= REDRAW_EVERY,
        };
        if due {
            self.last_drawn = Some(now);
            // Progress is best effort: a failing stderr must not stop the scan.
            let _ = write!(
                self.out,
                "\r\x1b[2Ketcd-inspect: {} values, {} deletions read from {} ({:.1} s){}",
                self.values,
                self.deletes,
                self.label,
                now.duration_since(self.started).as_secs_f64(),
                if self.errors > 0 {
                    format!(", {} read errors", self.errors)
                } else {
                    String::new()
                },
            );
            let _ = self.out.flush();
        }
    }
}

impl<W: Write> ObservationSink for Progress<'_, W> {
    fn observe(&mut self, observed: Observed<'_>) {
        match observed {
            Observed::Put { .. } => self.values += 1,
            Observed::Delete { .. } => self.deletes += 1,
        }
        self.inner.observe(observed);
        self.tick();
    }

    fn observe_copy(&mut self, observed: Observed<'_>, location: super::Location<'_>) {
        if let Observed::Put { .. } = observed {
            self.values += 1;
        }
        self.inner.observe_copy(observed, location);
        self.tick();
    }

    fn read_error(&mut self, message: String) {
        self.errors += 1;
        self.inner.read_error(message);
    }
}

impl<W: Write> Drop for Progress<'_, W> {
    fn drop(&mut self) {
        if self.last_drawn.is_some() {
            let _ = write!(self.out, "\r\x1b[2K");
            let _ = self.out.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::Revision;

    #[derive(Default)]
    struct Count(u64, u64);
    impl ObservationSink for Count {
        fn observe(&mut self, _: Observed<'_>) {
            self.0 += 1;
        }
        fn read_error(&mut self, _: String) {
            self.1 += 1;
        }
    }

    fn feed(sink: &mut dyn ObservationSink, n: u64) {
        for i in 0..n {
            let revision = Revision {
                main: i as i64,
                sub: 0,
            };
            sink.observe(Observed::Put {
                key: b"/registry/secrets/a/b",
                revision,
                value: b"SECRETVALUE",
            });
        }
    }

    #[test]
    fn forwards_everything_and_a_short_scan_draws_nothing() {
        let mut inner = Count::default();
        let mut out = Vec::new();
        {
            let mut progress = Progress::new(&mut inner, &mut out, "file");
            feed(&mut progress, 5000);
            progress.read_error("page 7: bad".into());
        }
        assert_eq!((inner.0, inner.1), (5000, 1));
        assert!(out.is_empty());
    }

    #[test]
    fn a_long_scan_draws_counts_only_and_clears_its_line() {
        let mut inner = Count::default();
        let mut out = Vec::new();
        {
            let mut progress = Progress::new(&mut inner, &mut out, "file");
            progress.started -= QUIET_START;
            feed(&mut progress, 2048);
        }
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("1024 values, 0 deletions read from file"),
            "{text:?}"
        );
        assert!(
            !text.contains("SECRETVALUE") && !text.contains("/registry"),
            "{text:?}"
        );
        assert!(text.ends_with("\r\x1b[2K"), "{text:?}");
    }
}
