//! The Prometheus metrics of the server, encoded at scrape time from
//! [`ServerStats`]' atomics, the backend's status and [`Health`] by a
//! `prometheus-client` [`Collector`]: the RPC hot path only ever touches the
//! atomics, never a registry lock.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `kube_kms_requests_total` | counter | `method`, `code` |
//! | `kube_kms_request_duration_seconds` | histogram | `method`, `code` |
//! | `kube_kms_decrypt_failures_total` | counter | `reason` |
//! | `kube_kms_encrypt_failures_total` | counter | `reason` |
//! | `kube_kms_key_info` | gauge (info) | `key_id` (the primary only) |
//! | `kube_kms_keyring_versions` | gauge | `state` |
//! | `kube_kms_backend_ignored_objects` | gauge | |
//! | `kube_kms_keyring_reloads_total` | counter | `result` (`success`, `failure`) |
//! | `kube_kms_keyring_rollbacks_refused_total` | counter | |
//! | `kube_kms_keyring_last_reload_success_timestamp_seconds` | gauge | |
//! | `kube_kms_self_tests_total` | counter | `result` (`pass`, `fail`) |
//! | `kube_kms_self_test_ok` | gauge | |
//! | `kube_kms_ready` | gauge | |
//! | `kube_kms_callers_refused_total` | counter | |
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::backend::KeyBackend;
use crate::server::health::Health;
use crate::server::stats::{code_label, ServerStats, FAILURE_REASONS};

/// The `Content-Type` of [`encode`]'s output (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Reads the server's state on each scrape.
pub(crate) struct ServerCollector<B> {
    backend: Arc<B>,
    stats: Arc<ServerStats>,
    health: Arc<Health>,
    /// Reported as the last successful load until a reload happens: the
    /// keyring was loaded when the server started.
    started_unix_seconds: u64,
}

impl<B> std::fmt::Debug for ServerCollector<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCollector").finish_non_exhaustive()
    }
}

/// A registry holding the server's collector.
pub(crate) fn registry<B: KeyBackend>(
    backend: Arc<B>,
    stats: Arc<ServerStats>,
    health: Arc<Health>,
) -> Registry {
    let started_unix_seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0);
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ServerCollector {
        backend,
        stats,
        health,
        started_unix_seconds,
    }));
    registry
}

/// The registry's metrics in Prometheus text format.
pub(crate) fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut text = String::with_capacity(8 * 1024);
    prometheus_client::encoding::prometheus_text::encode(&mut text, registry)?;
    Ok(text)
}

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: &[(&[(&str, &str)], u64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        ConstCounter::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: &[(&[(&str, &str)], i64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        ConstGauge::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

impl<B: KeyBackend> Collector for ServerCollector<B> {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let calls = self.stats.call_histograms();
        {
            let mut metric = encoder.encode_descriptor(
                "kube_kms_requests",
                "KMS v2 calls handled, by method and gRPC code.",
                None,
                MetricType::Counter,
            )?;
            for call in &calls {
                let labels = [
                    ("method", call.method.name()),
                    ("code", code_label(call.code)),
                ];
                ConstCounter::new(call.count).encode(metric.encode_family(&labels)?)?;
            }
        }
        {
            let mut metric = encoder.encode_descriptor(
                "kube_kms_request_duration_seconds",
                "Time spent handling KMS v2 calls (from the decoded request to the response), by method and gRPC code.",
                None,
                MetricType::Histogram,
            )?;
            for call in &calls {
                let labels = [
                    ("method", call.method.name()),
                    ("code", code_label(call.code)),
                ];
                metric
                    .encode_family(&labels)?
                    .encode_histogram::<NoLabelSet>(
                        call.sum_seconds,
                        call.count,
                        &call.buckets,
                        None,
                    )?;
            }
        }

        let snapshot = self.stats.snapshot();
        let by_reason = |counts: &[u64]| -> Vec<(Vec<(&str, &str)>, u64)> {
            FAILURE_REASONS
                .iter()
                .zip(counts)
                .map(|(reason, count)| (vec![("reason", *reason)], *count))
                .collect()
        };
        for (name, help, counts) in [
            (
                "kube_kms_decrypt_failures",
                "Decrypt calls that failed, by reason.",
                &snapshot.decrypt_failures[..],
            ),
            (
                "kube_kms_encrypt_failures",
                "Encrypt calls that failed, by reason.",
                &snapshot.encrypt_failures[..],
            ),
        ] {
            let series = by_reason(counts);
            let series: Vec<(&[(&str, &str)], u64)> = series
                .iter()
                .map(|(labels, count)| (labels.as_slice(), *count))
                .collect();
            counter(&mut encoder, name, help, &series)?;
        }

        {
            let status = self.backend.status();
            let mut metric = encoder.encode_descriptor(
                "kube_kms_key",
                "The key_id of the primary key, which Encrypt wraps under.",
                None,
                MetricType::Info,
            )?;
            metric.encode_info(&[("key_id", &*status.key_id)])?;
        }

        let versions = self.backend.version_counts();
        let as_gauge = |count: u64| i64::try_from(count).unwrap_or(i64::MAX);
        gauge(
            &mut encoder,
            "kube_kms_keyring_versions",
            "Key versions in the serving keyring, by state.",
            &[
                (&[("state", "primary")], as_gauge(versions.primary)),
                (&[("state", "enabled")], as_gauge(versions.enabled)),
                (&[("state", "disabled")], as_gauge(versions.disabled)),
                (&[("state", "destroyed")], as_gauge(versions.destroyed)),
            ],
        )?;
        gauge(
            &mut encoder,
            "kube_kms_backend_ignored_objects",
            "Objects that look like kube-kms keys or key records but are not trusted (e.g. public PKCS#11 objects), ignored at the last look.",
            &[(&[], as_gauge(self.backend.ignored_objects()))],
        )?;
        counter(
            &mut encoder,
            "kube_kms_keyring_reloads",
            "Keyring reloads: success brought in a changed keyring; failure kept the previous one serving.",
            &[
                (&[("result", "success")], snapshot.reloads_ok),
                (&[("result", "failure")], snapshot.reloads_failed),
            ],
        )?;
        counter(
            &mut encoder,
            "kube_kms_keyring_rollbacks_refused",
            "Changed keyrings refused as a rollback (a served version dropped, or the generation lowered); the previous keyring kept serving.",
            &[(&[], self.backend.rollbacks_refused())],
        )?;
        let last_load = if snapshot.last_reload_unix_seconds == 0 {
            self.started_unix_seconds
        } else {
            snapshot.last_reload_unix_seconds
        };
        gauge(
            &mut encoder,
            "kube_kms_keyring_last_reload_success_timestamp_seconds",
            "Unix time of the last successful keyring load (the server's start until a reload succeeds).",
            &[(&[], as_gauge(last_load))],
        )?;
        counter(
            &mut encoder,
            "kube_kms_self_tests",
            "Wrap/unwrap self-tests run, by result.",
            &[
                (
                    &[("result", "pass")],
                    snapshot
                        .self_tests
                        .saturating_sub(snapshot.self_tests_failed),
                ),
                (&[("result", "fail")], snapshot.self_tests_failed),
            ],
        )?;
        gauge(
            &mut encoder,
            "kube_kms_self_test_ok",
            "1 if the last wrap/unwrap self-test passed (Status reports healthz ok), else 0.",
            &[(&[], i64::from(self.health.self_test_passed()))],
        )?;
        gauge(
            &mut encoder,
            "kube_kms_ready",
            "1 if /readyz answers 200: self-test passing and the keyring file loads.",
            &[(&[], i64::from(self.health.readiness().is_ok()))],
        )?;
        counter(
            &mut encoder,
            "kube_kms_callers_refused",
            "Calls refused PERMISSION_DENIED because the caller's uid/gid (SO_PEERCRED) is neither root, the socket's owner nor allowed by --allow-uid/--allow-gid.",
            &[(&[], snapshot.callers_refused)],
        )?;
        Ok(())
    }
}
