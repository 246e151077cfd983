//! The server's readiness verdict, one source for `/readyz` and for the
//! standard `grpc.health.v1.Health` service on the socket.
//!
//! Ready means: the last wrap/unwrap self-test passed, and the last attempt
//! to load the keyring file succeeded (or nothing asked for one). A reload
//! that fails keeps the previous keyring serving — Status still says `ok`,
//! because kube-apiserver can go on encrypting — but the plugin then no longer
//! serves what is on disk (a rotation made there is not in effect, a deleted
//! or unreadable file would stop the next start), so an operator must hear
//! about it: readiness turns false with the reason, and back to true when a
//! reload succeeds. Liveness (`/livez`) does not follow it: restarting the
//! process would not fix the file, and would lose the keys still serving.
//!
//! Reasons never carry key material: they are the self-test's and the keyring
//! loader's error texts (paths, versions, key_ids, what was wrong).
use std::sync::{Arc, Mutex};

use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::proto::v2::key_management_service_server::SERVICE_NAME;

/// What readiness depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct State {
    /// The last self-test's verdict (`"ok"` or why it failed).
    self_test: Arc<str>,
    /// Why the last keyring reload failed, while it still does.
    reload_error: Option<String>,
}

impl State {
    fn verdict(&self) -> Result<(), String> {
        if &*self.self_test != crate::backend::HEALTHY {
            return Err(format!("self-test failing: {}", self.self_test));
        }
        if let Some(error) = &self.reload_error {
            return Err(format!(
                "keyring reload failing (the previously loaded keyring keeps serving): {error}"
            ));
        }
        Ok(())
    }
}

/// The readiness state shared by the background tasks, the HTTP endpoints and
/// the gRPC health service.
#[derive(Debug)]
pub struct Health {
    state: Mutex<State>,
    /// Serializes publishing to the gRPC health service so updates arrive in order.
    publishing: tokio::sync::Mutex<()>,
    reporter: HealthReporter,
}

impl Health {
    /// Readiness starting from the verdict of the first self-test.
    pub(crate) fn new(self_test: Arc<str>, reporter: HealthReporter) -> Self {
        Self {
            state: Mutex::new(State {
                self_test,
                reload_error: None,
            }),
            publishing: tokio::sync::Mutex::new(()),
            reporter,
        }
    }

    /// `Ok` when ready, else why not.
    pub fn readiness(&self) -> Result<(), String> {
        self.lock().verdict()
    }

    /// Whether the last self-test passed.
    pub fn self_test_passed(&self) -> bool {
        &*self.lock().self_test == crate::backend::HEALTHY
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is two plain values: a panic elsewhere cannot leave it torn.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a self-test verdict.
    pub(crate) async fn set_self_test(&self, verdict: Arc<str>) {
        self.update(|state| state.self_test = verdict).await;
    }

    /// Records the outcome of a reload attempt (`None`: the keyring loaded or was unchanged).
    pub(crate) async fn set_reload_error(&self, error: Option<String>) {
        self.update(|state| state.reload_error = error).await;
    }

    /// Publishes the current verdict to the gRPC health service.
    pub(crate) async fn publish(&self) {
        let _in_order = self.publishing.lock().await;
        let status = match self.readiness() {
            Ok(()) => ServingStatus::Serving,
            Err(_) => ServingStatus::NotServing,
        };
        for service in [SERVICE_NAME, ""] {
            self.reporter.set_service_status(service, status).await;
        }
    }

    async fn update(&self, change: impl FnOnce(&mut State)) {
        let (before, after) = {
            let mut state = self.lock();
            let before = state.verdict();
            change(&mut state);
            (before, state.verdict())
        };
        if before == after {
            return;
        }
        match &after {
            Ok(()) => tracing::info!("ready: self-test passing and keyring loaded"),
            Err(reason) => tracing::warn!(reason = %reason, "not ready"),
        }
        self.publish().await;
    }
}
