//! In-process counters the server keeps about itself: calls and their
//! latency per method and gRPC code, failures by reason, reloads and
//! self-tests.
//!
//! Plain atomics, so the hot path never takes a lock: a call costs two
//! relaxed `fetch_add`s (its latency bucket and the latency sum) plus one per
//! failure reason. The Prometheus endpoint ([`crate::server::metrics`]) reads
//! them at scrape time; tests read a [`StatsSnapshot`] to check what was counted.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tonic::Code;

/// The three RPCs of `v2.KeyManagementService`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// `/v2.KeyManagementService/Status`
    Status,
    /// `/v2.KeyManagementService/Encrypt`
    Encrypt,
    /// `/v2.KeyManagementService/Decrypt`
    Decrypt,
}

impl Method {
    /// All methods, in a fixed order (the index into the counters).
    pub const ALL: [Method; 3] = [Method::Status, Method::Encrypt, Method::Decrypt];

    /// The method name as it appears in the gRPC path.
    pub fn name(self) -> &'static str {
        match self {
            Method::Status => "Status",
            Method::Encrypt => "Encrypt",
            Method::Decrypt => "Decrypt",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Method::Status => 0,
            Method::Encrypt => 1,
            Method::Decrypt => 2,
        }
    }
}

/// Upper bounds (seconds) of the latency histogram buckets: calls take
/// microseconds, so the resolution is below the millisecond; the top buckets
/// catch a stalled backend.
pub const LATENCY_BUCKETS_SECONDS: [f64; 14] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 1.0,
];

/// The same bounds in nanoseconds, for the hot path's comparison.
const LATENCY_BUCKETS_NANOS: [u64; 14] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    1_000_000_000,
];

/// The gRPC status codes 0..=16, indexed by their number.
pub const GRPC_CODES: [Code; 17] = [
    Code::Ok,
    Code::Cancelled,
    Code::Unknown,
    Code::InvalidArgument,
    Code::DeadlineExceeded,
    Code::NotFound,
    Code::AlreadyExists,
    Code::PermissionDenied,
    Code::ResourceExhausted,
    Code::FailedPrecondition,
    Code::Aborted,
    Code::OutOfRange,
    Code::Unimplemented,
    Code::Internal,
    Code::Unavailable,
    Code::DataLoss,
    Code::Unauthenticated,
];

/// The name of a gRPC code as grpc-go and grpc-prometheus spell it (`OK`,
/// `InvalidArgument`, ...), the `code` label of the request metrics.
pub fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// Latency histogram of the calls of one method that ended with one code.
/// Buckets are not cumulative here (one increment per call); the last one is `+Inf`.
#[derive(Debug, Default)]
struct CallCell {
    buckets: [AtomicU64; LATENCY_BUCKETS_NANOS.len() + 1],
    sum_nanos: AtomicU64,
}

impl CallCell {
    fn record(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let slot = LATENCY_BUCKETS_NANOS
            .iter()
            .position(|bound| nanos <= *bound)
            .unwrap_or(LATENCY_BUCKETS_NANOS.len());
        if let Some(bucket) = self.buckets.get(slot) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn count(&self) -> u64 {
        self.buckets
            .iter()
            .map(|bucket| bucket.load(Ordering::Relaxed))
            .sum()
    }
}

/// One method × code series of the request metrics, read at scrape time.
#[derive(Clone, Debug, PartialEq)]
pub struct CallHistogram {
    /// The RPC.
    pub method: Method,
    /// The gRPC code the calls ended with.
    pub code: Code,
    /// Calls counted.
    pub count: u64,
    /// Their total handling time in seconds.
    pub sum_seconds: f64,
    /// Calls per bucket, not cumulative (as `prometheus-client` takes them),
    /// keyed by the upper bounds of [`LATENCY_BUCKETS_SECONDS`], then `+Inf`.
    pub buckets: Vec<(f64, u64)>,
}

/// Every reason a Decrypt or Encrypt can fail, as counted. The labels of the
/// backend's errors plus the server's own checks.
pub const FAILURE_REASONS: [&str; 6] = [
    "unknown_key_id",
    "key_disabled",
    "authentication_failed",
    "invalid_input",
    "unavailable",
    "request_too_large",
];

/// Why a call failed, for counting.
pub(crate) fn reason_index(reason: &str) -> usize {
    FAILURE_REASONS
        .iter()
        .position(|known| *known == reason)
        .unwrap_or(FAILURE_REASONS.len() - 1)
}

/// Counters shared by the service and the background tasks.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Per method (index of [`Method::ALL`]), per gRPC code (its number).
    calls: [[CallCell; GRPC_CODES.len()]; 3],
    decrypt_failures: [AtomicU64; FAILURE_REASONS.len()],
    encrypt_failures: [AtomicU64; FAILURE_REASONS.len()],
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    last_reload_unix_seconds: AtomicU64,
    self_tests: AtomicU64,
    self_tests_failed: AtomicU64,
    last_self_test_failed: AtomicBool,
    callers_refused: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Successful calls per method, indexed like [`Method::ALL`].
    pub calls_ok: [u64; 3],
    /// Failed calls per method, indexed like [`Method::ALL`].
    pub calls_failed: [u64; 3],
    /// Decrypt failures per reason, indexed like [`FAILURE_REASONS`].
    pub decrypt_failures: [u64; FAILURE_REASONS.len()],
    /// Encrypt failures per reason, indexed like [`FAILURE_REASONS`].
    pub encrypt_failures: [u64; FAILURE_REASONS.len()],
    /// Reloads that brought in new keys.
    pub reloads_ok: u64,
    /// Reloads that failed (the previous keys kept serving).
    pub reloads_failed: u64,
    /// Wall-clock time of the last reload that brought in new keys (0: none yet).
    pub last_reload_unix_seconds: u64,
    /// Self-tests run.
    pub self_tests: u64,
    /// Self-tests that failed.
    pub self_tests_failed: u64,
    /// Whether the last self-test passed (true before the first one).
    pub last_self_test_ok: bool,
    /// Calls refused because of the caller's credentials.
    pub callers_refused: u64,
}

impl StatsSnapshot {
    /// Decrypt failures counted under `reason` (one of [`FAILURE_REASONS`]).
    pub fn decrypt_failures_for(&self, reason: &str) -> u64 {
        FAILURE_REASONS
            .iter()
            .position(|known| *known == reason)
            .and_then(|index| self.decrypt_failures.get(index).copied())
            .unwrap_or(0)
    }

    /// Successful calls of `method`.
    pub fn ok(&self, method: Method) -> u64 {
        self.calls_ok.get(method.index()).copied().unwrap_or(0)
    }

    /// Failed calls of `method`.
    pub fn failed(&self, method: Method) -> u64 {
        self.calls_failed.get(method.index()).copied().unwrap_or(0)
    }
}

impl ServerStats {
    /// Counts a call of `method` that ended with `code` after `elapsed`.
    pub(crate) fn record_call(&self, method: Method, code: Code, elapsed: Duration) {
        let cell = self
            .calls
            .get(method.index())
            .and_then(|codes| codes.get(code as usize));
        if let Some(cell) = cell {
            cell.record(elapsed);
        }
    }

    /// The request series with at least one call, plus the `OK` series of
    /// every method (so dashboards see zeros rather than gaps).
    pub fn call_histograms(&self) -> Vec<CallHistogram> {
        let mut series = Vec::new();
        for (method, codes) in Method::ALL.iter().zip(&self.calls) {
            for (code, cell) in GRPC_CODES.iter().zip(codes) {
                let bounds = LATENCY_BUCKETS_SECONDS
                    .iter()
                    .copied()
                    .chain([f64::INFINITY]);
                let buckets: Vec<(f64, u64)> = bounds
                    .zip(&cell.buckets)
                    .map(|(bound, bucket)| (bound, bucket.load(Ordering::Relaxed)))
                    .collect();
                // From the loaded buckets, so the count and the buckets agree
                // even while calls land.
                let count = buckets.iter().map(|(_, calls)| calls).sum();
                if count == 0 && *code != Code::Ok {
                    continue;
                }
                series.push(CallHistogram {
                    method: *method,
                    code: *code,
                    count,
                    sum_seconds: cell.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
                    buckets,
                });
            }
        }
        series
    }

    pub(crate) fn record_failure(&self, method: Method, reason: &str) {
        let counters = match method {
            Method::Decrypt => &self.decrypt_failures,
            Method::Encrypt => &self.encrypt_failures,
            Method::Status => return,
        };
        if let Some(counter) = counters.get(reason_index(reason)) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn record_reload(&self, ok: bool) {
        if ok {
            self.reloads_ok.fetch_add(1, Ordering::Relaxed);
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|elapsed| elapsed.as_secs())
                .unwrap_or(0);
            self.last_reload_unix_seconds.store(now, Ordering::Relaxed);
        } else {
            self.reloads_failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn record_self_test(&self, passed: bool) {
        self.self_tests.fetch_add(1, Ordering::Relaxed);
        if !passed {
            self.self_tests_failed.fetch_add(1, Ordering::Relaxed);
        }
        self.last_self_test_failed.store(!passed, Ordering::Relaxed);
    }

    /// Counts a call refused because of the caller's credentials.
    pub(crate) fn record_caller_refused(&self) {
        self.callers_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let calls_ok = self
            .calls
            .each_ref()
            .map(|codes| codes.first().map(CallCell::count).unwrap_or(0));
        let calls_failed = self
            .calls
            .each_ref()
            .map(|codes| codes.iter().skip(1).map(CallCell::count).sum());
        StatsSnapshot {
            calls_ok,
            calls_failed,
            decrypt_failures: self.decrypt_failures.each_ref().map(load),
            encrypt_failures: self.encrypt_failures.each_ref().map(load),
            reloads_ok: load(&self.reloads_ok),
            reloads_failed: load(&self.reloads_failed),
            last_reload_unix_seconds: load(&self.last_reload_unix_seconds),
            self_tests: load(&self.self_tests),
            self_tests_failed: load(&self.self_tests_failed),
            last_self_test_ok: !self.last_self_test_failed.load(Ordering::Relaxed),
            callers_refused: load(&self.callers_refused),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_indexed_by_their_number() {
        for (number, code) in GRPC_CODES.iter().enumerate() {
            assert_eq!(*code as usize, number);
            assert_eq!(Code::from(number as i32), *code);
        }
        assert_eq!(LATENCY_BUCKETS_NANOS.len(), LATENCY_BUCKETS_SECONDS.len());
        for (nanos, seconds) in LATENCY_BUCKETS_NANOS.iter().zip(LATENCY_BUCKETS_SECONDS) {
            assert_eq!(*nanos, (seconds * 1e9).round() as u64);
        }
    }

    #[test]
    fn calls_land_in_their_bucket_and_count_per_code() {
        let stats = ServerStats::default();
        stats.record_call(Method::Encrypt, Code::Ok, Duration::from_micros(7));
        stats.record_call(Method::Encrypt, Code::Ok, Duration::from_micros(10));
        stats.record_call(Method::Encrypt, Code::Ok, Duration::from_micros(300));
        stats.record_call(Method::Decrypt, Code::NotFound, Duration::from_secs(5));
        let series = stats.call_histograms();
        let encrypt = series
            .iter()
            .find(|s| s.method == Method::Encrypt && s.code == Code::Ok)
            .unwrap();
        assert_eq!(encrypt.count, 3);
        assert_eq!(encrypt.buckets[0], (0.00001, 2), "≤ 10 µs, bound inclusive");
        assert_eq!(encrypt.buckets[5], (0.0005, 1), "300 µs");
        assert!((encrypt.sum_seconds - 0.000317).abs() < 1e-9);
        let not_found = series
            .iter()
            .find(|s| s.method == Method::Decrypt && s.code == Code::NotFound)
            .unwrap();
        assert_eq!(not_found.buckets.last(), Some(&(f64::INFINITY, 1)));
        // OK series always, others only when used.
        assert_eq!(series.len(), 4);
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.ok(Method::Encrypt), 3);
        assert_eq!(snapshot.failed(Method::Decrypt), 1);
        assert_eq!(snapshot.ok(Method::Status), 0);
    }
}
