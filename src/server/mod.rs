//! The KMS v2 gRPC server on a unix socket, over any [`KeyBackend`].
//!
//! [`Server::run`] is the one entry point for the binary, the demo and the
//! tests (the mini-redis layout): it takes an already bound
//! [`SocketListener`] and a shutdown future. Before serving it runs one
//! self-test so the first Status already tells the truth; while serving it
//! re-runs the self-test periodically and polls the backend for keyring
//! changes; when `shutdown` completes it removes the socket file, stops
//! accepting, lets in-flight calls finish within the grace period and
//! returns.
//!
//! On the socket, beside `v2.KeyManagementService`, it serves the standard
//! `grpc.health.v1.Health` service (SERVING while [`Health`] says ready, for
//! `v2.KeyManagementService` and `""`). With [`Server::with_http`] it also
//! serves `/metrics`, `/livez` and `/readyz` over HTTP.
//!
//! Who may call, and how much: every call's peer credentials are checked
//! first ([`callers`]); each connection may carry at most
//! [`ServerOptions::max_streams_per_connection`] concurrent calls (the HTTP/2
//! SETTINGS the client sees and a per-connection limit); at most
//! [`ServerOptions::max_concurrent_calls`] KMS calls run at once across all
//! connections (more wait for a slot); and every call ends after
//! [`ServerOptions::call_timeout`] (CANCELLED, "Timeout expired"). A local client can
//! therefore neither pin the backend nor hold calls open forever.
//!
//! Modules: [`callers`] (the credential check), [`service`] (the RPC handlers and the one error mapping),
//! [`socket`] (creating and removing the socket), [`stats`] (counters),
//! [`health`] (readiness), [`metrics`] (Prometheus encoding), `http` (the
//! operator endpoints), `tasks` (self-test and reload loops).
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::backend::KeyBackend;
use crate::proto::v2::key_management_service_server::{
    KeyManagementService, KeyManagementServiceServer,
};

pub mod callers;
pub mod health;
mod http;
pub mod metrics;
pub mod service;
pub mod socket;
pub mod stats;
mod tasks;

pub use callers::CallerPolicy;
pub use health::Health;
pub use socket::{SocketAddress, SocketError, SocketListener, DEFAULT_SOCKET_MODE};
pub use stats::{Method, ServerStats, StatsSnapshot};

/// Largest gRPC message accepted: a legitimate Decrypt carries at most 1 KiB
/// of ciphertext, a 1 KiB key_id and under 32 KiB of annotations.
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024;

/// How the server behaves; `Default` gives the documented defaults.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// How long in-flight calls may run after shutdown starts (default 5 s).
    pub shutdown_grace: Duration,
    /// Period of the wrap/unwrap self-test behind Status' healthz (default 10 s).
    pub self_test_interval: Duration,
    /// How often the backend is asked whether its keys changed (default 1 s;
    /// `None`: only when a reload is requested through a [`ReloadHandle`]).
    pub reload_poll_interval: Option<Duration>,
    /// Which callers besides root and the socket's owner are admitted
    /// (default: none).
    pub callers: CallerPolicy,
    /// Concurrent calls (HTTP/2 streams) one connection may carry (default
    /// [`DEFAULT_MAX_STREAMS_PER_CONNECTION`]).
    pub max_streams_per_connection: u32,
    /// KMS calls handled at once over all connections; more wait for a slot
    /// within their timeout (default [`DEFAULT_MAX_CONCURRENT_CALLS`]).
    pub max_concurrent_calls: usize,
    /// How long one call may take, waiting for a slot included, before it
    /// is ended (CANCELLED, "Timeout expired") (default [`DEFAULT_CALL_TIMEOUT`]).
    pub call_timeout: Duration,
}

/// Default of [`ServerOptions::max_streams_per_connection`]: kube-apiserver
/// multiplexes its calls over one connection; cold starts decrypt in bursts.
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: u32 = 128;
/// Default of [`ServerOptions::max_concurrent_calls`] (two apiservers' worth
/// of streams, or several clients).
pub const DEFAULT_MAX_CONCURRENT_CALLS: usize = 256;
/// Default of [`ServerOptions::call_timeout`]: longer than kube-apiserver's
/// default KMS timeout (3 s), so it only ends calls nobody waits for anymore.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            shutdown_grace: Duration::from_secs(5),
            self_test_interval: Duration::from_secs(10),
            reload_poll_interval: Some(Duration::from_secs(1)),
            callers: CallerPolicy::default(),
            max_streams_per_connection: DEFAULT_MAX_STREAMS_PER_CONNECTION,
            max_concurrent_calls: DEFAULT_MAX_CONCURRENT_CALLS,
            call_timeout: DEFAULT_CALL_TIMEOUT,
        }
    }
}

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The gRPC transport failed.
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Asks a running server to reload its keys now (what SIGHUP does).
#[derive(Clone, Debug)]
pub struct ReloadHandle(Arc<Notify>);

impl ReloadHandle {
    /// Requests a forced reload; requests made while one runs coalesce.
    pub fn request(&self) {
        self.0.notify_one();
    }
}

/// A configured server, not yet running.
pub struct Server<B> {
    backend: Arc<B>,
    options: ServerOptions,
    stats: Arc<ServerStats>,
    reload: Arc<Notify>,
    http: Option<TcpListener>,
}

impl<B: KeyBackend> Server<B> {
    /// A server for `backend`.
    pub fn new(backend: Arc<B>, options: ServerOptions) -> Self {
        Self {
            backend,
            options,
            stats: Arc::new(ServerStats::default()),
            reload: Arc::new(Notify::new()),
            http: None,
        }
    }

    /// Also serves `/metrics`, `/livez` and `/readyz` on `listener` (an
    /// already bound TCP listener, e.g. `--metrics-addr`) while the server runs.
    pub fn with_http(mut self, listener: TcpListener) -> Self {
        self.http = Some(listener);
        self
    }

    /// The server's counters (live: keep the `Arc` and snapshot it any time).
    pub fn stats(&self) -> Arc<ServerStats> {
        Arc::clone(&self.stats)
    }

    /// A handle that forces a reload while the server runs.
    pub fn reload_handle(&self) -> ReloadHandle {
        ReloadHandle(Arc::clone(&self.reload))
    }

    /// Serves on `listener` until `shutdown` completes, then shuts down
    /// gracefully (see the module docs). The socket file is removed in every case.
    pub async fn run(
        self,
        listener: SocketListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServerError> {
        let address = listener.address().to_string();
        let check = callers::CallerCheck::new(
            &self.options.callers,
            listener.owner_uid(),
            Arc::clone(&self.stats),
        );
        let (incoming, socket_file) = listener.into_parts();
        let healthz = tasks::self_test_once(&*self.backend, &self.stats, None).await;
        let (reporter, health_service) = tonic_health::server::health_reporter();
        let health = Arc::new(Health::new(Arc::clone(&healthz), reporter));
        health.publish().await;
        let mut background = BackgroundTasks(vec![
            tokio::spawn(tasks::self_test_loop(
                Arc::clone(&self.backend),
                Arc::clone(&self.stats),
                Arc::clone(&health),
                self.options.self_test_interval,
                healthz,
            )),
            tokio::spawn(tasks::reload_loop(
                Arc::clone(&self.backend),
                Arc::clone(&self.stats),
                Arc::clone(&health),
                self.options.reload_poll_interval,
                Arc::clone(&self.reload),
            )),
        ]);
        if let Some(listener) = self.http {
            let http_address = listener
                .local_addr()
                .map(|address| address.to_string())
                .unwrap_or_default();
            let state = Arc::new(http::HttpState {
                registry: metrics::registry(
                    Arc::clone(&self.backend),
                    Arc::clone(&self.stats),
                    Arc::clone(&health),
                ),
                health: Arc::clone(&health),
            });
            background
                .0
                .push(tokio::spawn(http::serve(listener, state)));
            tracing::info!(address = %http_address, "serving /metrics, /livez and /readyz");
        }

        let service = kms_service(service::KmsService::new(
            Arc::clone(&self.backend),
            Arc::clone(&self.stats),
            self.options.max_concurrent_calls,
        ));
        let (stop_accepting, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = transport(&self.options)
            .layer(tonic::service::InterceptorLayer::new(check))
            .add_service(service)
            .add_service(health_service)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            });
        tokio::pin!(serving);

        tracing::info!(
            socket = %address,
            key_id = %self.backend.status().key_id,
            "serving KMS v2"
        );
        let result = tokio::select! {
            result = &mut serving => result,
            () = shutdown => {
                tracing::info!(grace = ?self.options.shutdown_grace, "shutting down: no new connections, finishing in-flight calls");
                // New clients fail fast instead of queueing on a closing socket.
                if let Some(file) = &socket_file {
                    file.remove();
                }
                let _ = stop_accepting.send(());
                match tokio::time::timeout(self.options.shutdown_grace, &mut serving).await {
                    Ok(result) => result,
                    Err(_) => {
                        tracing::warn!("shutdown grace expired; dropping the calls still in flight");
                        Ok(())
                    }
                }
            }
        };
        drop(background);
        drop(socket_file);
        tracing::info!("stopped");
        result.map_err(ServerError::from)
    }
}

/// The gRPC transport every kube-kms server is built on ([`Server::run`],
/// [`serve_baseline`]): one place for the HTTP/2 settings and bounds. The
/// caller check is layered on by each (it needs the listener's owner).
fn transport(options: &ServerOptions) -> tonic::transport::Server {
    let streams = options.max_streams_per_connection.max(1);
    tonic::transport::Server::builder()
        .max_concurrent_streams(Some(streams))
        .concurrency_limit_per_connection(streams as usize)
        .timeout(options.call_timeout)
}

/// `service` as `v2.KeyManagementService`, with the message bounds.
fn kms_service<S: KeyManagementService>(service: S) -> KeyManagementServiceServer<S> {
    KeyManagementServiceServer::new(service)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE)
}

/// Serves `service` (any `v2.KeyManagementService`) on `listener` the way
/// [`Server::run`] serves the real one: same transport, message bounds,
/// accept loop, caller check (default policy), bounds (default options) and
/// health service, but no backend, counters, logs or background tasks. The plugin benchmark (benches/plugin.rs) runs a no-op
/// service on it as its baseline, so the two differ only by what a call does
/// in kube-kms' own code. Runs until the listener fails.
pub async fn serve_baseline<S: KeyManagementService>(
    listener: SocketListener,
    service: S,
) -> Result<(), ServerError> {
    let options = ServerOptions::default();
    let check = callers::CallerCheck::new(
        &options.callers,
        listener.owner_uid(),
        Arc::new(ServerStats::default()),
    );
    let (incoming, _socket_file) = listener.into_parts();
    let (_reporter, health_service) = tonic_health::server::health_reporter();
    transport(&options)
        .layer(tonic::service::InterceptorLayer::new(check))
        .add_service(kms_service(service))
        .add_service(health_service)
        // As `Server::run` serves (with a shutdown signal, here one that
        // never comes): tonic then watches each connection for it.
        .serve_with_incoming_shutdown(incoming, std::future::pending::<()>())
        .await
        .map_err(ServerError::from)
}

/// Aborts the background tasks when the server stops, however it stops.
struct BackgroundTasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for BackgroundTasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Binds nothing itself: serves `backend` on `listener` until `shutdown`.
/// Shorthand for `Server::new(backend, options).run(listener, shutdown)`.
pub async fn run<B: KeyBackend>(
    listener: SocketListener,
    backend: Arc<B>,
    options: ServerOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    Server::new(backend, options).run(listener, shutdown).await
}
