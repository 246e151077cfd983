//! In-process counters the server keeps about itself: calls per method and
//! outcome, decrypt failures by reason, reloads and self-tests.
//!
//! Plain atomics, so the hot path never takes a lock. The Prometheus endpoint
//! (issue 5) reads a [`StatsSnapshot`]; tests read it to check that failures
//! were counted.
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

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

    fn index(self) -> usize {
        match self {
            Method::Status => 0,
            Method::Encrypt => 1,
            Method::Decrypt => 2,
        }
    }
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
    calls_ok: [AtomicU64; 3],
    calls_failed: [AtomicU64; 3],
    decrypt_failures: [AtomicU64; FAILURE_REASONS.len()],
    encrypt_failures: [AtomicU64; FAILURE_REASONS.len()],
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    last_reload_unix_seconds: AtomicU64,
    self_tests: AtomicU64,
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
    pub(crate) fn record_call(&self, method: Method, ok: bool) {
        let counters = if ok {
            &self.calls_ok
        } else {
            &self.calls_failed
        };
        if let Some(counter) = counters.get(method.index()) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
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

    pub(crate) fn record_self_test(&self) {
        self.self_tests.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        StatsSnapshot {
            calls_ok: self.calls_ok.each_ref().map(load),
            calls_failed: self.calls_failed.each_ref().map(load),
            decrypt_failures: self.decrypt_failures.each_ref().map(load),
            encrypt_failures: self.encrypt_failures.each_ref().map(load),
            reloads_ok: load(&self.reloads_ok),
            reloads_failed: load(&self.reloads_failed),
            last_reload_unix_seconds: load(&self.last_reload_unix_seconds),
            self_tests: load(&self.self_tests),
        }
    }
}
