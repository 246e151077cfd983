//! CPU time of the calling thread, for the per-thread figures of a file scan
//! (`etcd-inspect scan --timings`, printed by tools/bench-inspect). Read
//! from the scheduler's nanosecond accounting in `/proc/thread-self/schedstat`
//! (what the plugin benchmark reads per server thread too), so other load on
//! the machine does not inflate it; `None` where that file does not exist.
use std::time::Duration;

/// CPU time the calling thread has used so far.
pub fn thread_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let nanos = stat.split_whitespace().next()?.parse::<u64>().ok()?;
    Some(Duration::from_nanos(nanos))
}

/// CPU time the calling thread used since `start` (a [`thread_cpu_time`]).
pub fn thread_cpu_since(start: Option<Duration>) -> Option<Duration> {
    Some(thread_cpu_time()?.saturating_sub(start?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_this_threads_work_only() {
        let start = thread_cpu_time();
        assert!(start.is_some(), "no /proc/thread-self/schedstat");
        // Busy for a while on this thread; another thread's sleep adds nothing.
        let mut x = 1u64;
        let began = std::time::Instant::now();
        while began.elapsed() < Duration::from_millis(30) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let used = thread_cpu_since(start).expect("cpu time");
        assert!(used > Duration::from_millis(1), "{used:?}");
        let other = std::thread::spawn(|| {
            let start = thread_cpu_time();
            std::thread::sleep(Duration::from_millis(30));
            thread_cpu_since(start).expect("cpu time")
        })
        .join()
        .expect("thread");
        assert!(other < Duration::from_millis(20), "{other:?}");
    }
}
