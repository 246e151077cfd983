//! The server's background work: the periodic self-test whose verdict Status
//! serves, and keyring reloads (polled for file changes, forced on request,
//! e.g. SIGHUP).
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::{interval_at, Instant, MissedTickBehavior};

use crate::backend::{KeyBackend, ReloadOutcome};
use crate::server::health::Health;
use crate::server::stats::ServerStats;

/// Runs the self-test, counts it and logs when the verdict changes. The
/// caller hands the verdict to [`Health`].
pub(crate) async fn self_test_once<B: KeyBackend>(
    backend: &B,
    stats: &ServerStats,
    previous: Option<&str>,
) -> Arc<str> {
    backend.self_test().await;
    let healthz = backend.status().healthz;
    stats.record_self_test(&*healthz == crate::backend::HEALTHY);
    if previous != Some(&*healthz) {
        if &*healthz == crate::backend::HEALTHY {
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
    health: Arc<Health>,
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
        health.set_self_test(Arc::clone(&last)).await;
    }
}

/// Reloads when the keyring changed (every `poll`, if set) or when `force` is notified.
pub(crate) async fn reload_loop<B: KeyBackend>(
    backend: Arc<B>,
    stats: Arc<ServerStats>,
    health: Arc<Health>,
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
                health.set_reload_error(None).await;
            }
            Ok(Ok(ReloadOutcome::Reloaded { primary_key_id })) => {
                stats.record_reload(true);
                let versions = backend.version_counts();
                tracing::info!(
                    old_key_id = %before,
                    new_key_id = %primary_key_id,
                    forced,
                    enabled = versions.enabled,
                    disabled = versions.disabled,
                    destroyed = versions.destroyed,
                    "keyring reloaded"
                );
                if *before != *primary_key_id {
                    tracing::info!(
                        old_key_id = %before,
                        new_key_id = %primary_key_id,
                        "key rotation: Encrypt now wraps under the new primary"
                    );
                }
                last_failure = None;
                // Status must reflect the new keys' health, not the old ones'.
                let healthz = backend.status().healthz;
                let verdict = self_test_once(&*backend, &stats, Some(&healthz)).await;
                health.set_self_test(verdict).await;
                health.set_reload_error(None).await;
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
                health.set_reload_error(Some(message.clone())).await;
                last_failure = Some(message);
            }
            Err(join_error) => {
                stats.record_reload(false);
                tracing::error!(error = %join_error, "keyring reload task failed; the previous keyring keeps serving");
                health
                    .set_reload_error(Some(format!("reload task failed: {join_error}")))
                    .await;
            }
        }
    }
}
