//! The server's background work: the periodic self-test whose verdict Status
//! serves, and keyring reloads (polled for file changes, forced on request,
//! e.g. SIGHUP).
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::{interval_at, Instant, MissedTickBehavior};

use crate::backend::{KeyBackend, ReloadOutcome};
use crate::server::stats::ServerStats;

/// Runs the self-test and logs when the verdict changes.
pub(crate) async fn self_test_once<B: KeyBackend>(
    backend: &B,
    stats: &ServerStats,
    previous: Option<&str>,
) -> Arc<str> {
    backend.self_test().await;
    stats.record_self_test();
    let healthz = backend.status().healthz;
    if previous != Some(&*healthz) {
        if &*healthz == "ok" {
            tracing::info!(healthz = %healthz, "self-test passed");
        } else {
            tracing::error!(healthz = %healthz, "self-test failed: Status reports unhealthy");
        }
    }
    healthz
}

/// Self-test every `period`, forever (first run one period from now: the
/// server runs one before it starts serving).
pub(crate) async fn self_test_loop<B: KeyBackend>(
    backend: Arc<B>,
    stats: Arc<ServerStats>,
    period: Duration,
    mut last: Arc<str>,
) {
    // A zero period would spin (and tokio's interval panics on it).
    let period = period.max(Duration::from_millis(100));
    let mut ticker = interval_at(Instant::now() + period, period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        last = self_test_once(&*backend, &stats, Some(&last)).await;
    }
}

/// Reloads when the keyring changed (every `poll`, if set) or when `force` is notified.
pub(crate) async fn reload_loop<B: KeyBackend>(
    backend: Arc<B>,
    stats: Arc<ServerStats>,
    poll: Option<Duration>,
    force: Arc<Notify>,
) {
    let mut ticker = poll.map(|period| {
        let period = period.max(Duration::from_millis(10));
        let mut ticker = interval_at(Instant::now() + period, period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticker
    });
    // The last failure logged at error level, so a file that stays broken
    // is reported once, not every poll.
    let mut last_failure: Option<String> = None;
    loop {
        let forced = match ticker.as_mut() {
            Some(ticker) => tokio::select! {
                _ = ticker.tick() => false,
                () = force.notified() => true,
            },
            None => {
                force.notified().await;
                true
            }
        };
        let before = backend.status().key_id;
        let reloading = Arc::clone(&backend);
        let outcome = tokio::task::spawn_blocking(move || reloading.reload(forced)).await;
        match outcome {
            Ok(Ok(ReloadOutcome::Unchanged)) => {
                if forced {
                    tracing::info!(key_id = %before, "reload requested: keyring unchanged");
                }
                last_failure = None;
            }
            Ok(Ok(ReloadOutcome::Reloaded { primary_key_id })) => {
                stats.record_reload(true);
                tracing::info!(
                    old_key_id = %before,
                    new_key_id = %primary_key_id,
                    forced,
                    "keyring reloaded"
                );
                last_failure = None;
                // Status must reflect the new keys' health, not the old ones'.
                let healthz = backend.status().healthz;
                self_test_once(&*backend, &stats, Some(&healthz)).await;
            }
            Ok(Err(error)) => {
                stats.record_reload(false);
                let message = error.to_string();
                if forced || last_failure.as_deref() != Some(message.as_str()) {
                    tracing::error!(
                        error = %message,
                        key_id = %before,
                        "keyring reload failed; the previous keyring keeps serving"
                    );
                } else {
                    tracing::debug!(error = %message, "keyring still fails to load");
                }
                last_failure = Some(message);
            }
            Err(join_error) => {
                stats.record_reload(false);
                tracing::error!(error = %join_error, "keyring reload task failed; the previous keyring keeps serving");
            }
        }
    }
}
