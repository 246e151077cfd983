//! Who may call the socket: every request's SO_PEERCRED credentials (taken
//! by tonic when the connection is accepted, `UdsConnectInfo::peer_cred`) are
//! checked against a [`CallerPolicy`] before any service sees the request.
//!
//! Admitted: root, the socket file's owner (read once at bind time), and any
//! uid/gid listed with `--allow-uid`/`--allow-gid`. A refused caller gets
//! PERMISSION_DENIED on each call (rather than a dropped connection, so a
//! misconfigured client says why), a warn line with its uid/gid/pid (never
//! the payload), and `kube_kms_callers_refused_total` counts it. A connection
//! without credentials (not a unix socket) is refused.
//!
//! The socket mode stays the first gate; this check also covers abstract
//! sockets (no file mode) and sockets opened wider with `--socket-mode`.
//! The hot path is a few integer comparisons: no allocation, no lock.
//! Refusals are logged at most once per [`REFUSAL_LOG_INTERVAL`] (the next
//! line says how many were not logged), so a local client that calls in a
//! loop cannot fill the node's disk with log lines; the metric counts each.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Status};

use crate::server::stats::ServerStats;

/// Which peer credentials are admitted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallerPolicy {
    /// Extra uids admitted besides root and the socket's owner (`--allow-uid`).
    pub uids: Vec<u32>,
    /// Gids whose members are admitted, by the caller's primary gid as
    /// SO_PEERCRED reports it (`--allow-gid`).
    pub gids: Vec<u32>,
}

/// The policy resolved for one socket, cheap to clone per connection.
#[derive(Clone, Debug)]
pub(crate) struct CallerCheck {
    owner_uid: u32,
    uids: Arc<[u32]>,
    gids: Arc<[u32]>,
    stats: Arc<ServerStats>,
    refusal_log: Arc<RefusalLog>,
}

/// How often at most a refused caller is logged.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Rate limit of the refusal log lines, shared by every connection.
#[derive(Debug)]
struct RefusalLog {
    start: Instant,
    interval_ms: u64,
    /// Milliseconds since `start` before which no line is logged.
    next_ms: AtomicU64,
    /// Refusals not logged since the last line.
    unlogged: AtomicU64,
}

impl RefusalLog {
    fn new(interval: Duration) -> Self {
        Self {
            start: Instant::now(),
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            next_ms: AtomicU64::new(0),
            unlogged: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when this refusal is to be logged (`n` refusals were not
    /// logged since the last line), `None` when it is only counted.
    fn admit(&self) -> Option<u64> {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = self.next_ms.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now.saturating_add(self.interval_ms),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            Some(self.unlogged.swap(0, Ordering::Relaxed))
        } else {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

impl CallerCheck {
    pub(crate) fn new(policy: &CallerPolicy, owner_uid: u32, stats: Arc<ServerStats>) -> Self {
        Self {
            owner_uid,
            uids: policy.uids.as_slice().into(),
            gids: policy.gids.as_slice().into(),
            stats,
            refusal_log: Arc::new(RefusalLog::new(REFUSAL_LOG_INTERVAL)),
        }
    }

    /// Whether a peer with `uid`/`gid` may call.
    fn admits(&self, uid: u32, gid: u32) -> bool {
        uid == 0 || uid == self.owner_uid || self.uids.contains(&uid) || self.gids.contains(&gid)
    }
}

impl tonic::service::Interceptor for CallerCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let credentials = request
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|info| info.peer_cred);
        match credentials {
            Some(cred) if self.admits(cred.uid(), cred.gid()) => Ok(request),
            Some(cred) => {
                self.stats.record_caller_refused();
                if let Some(unlogged) = self.refusal_log.admit() {
                    tracing::warn!(
                        uid = cred.uid(),
                        gid = cred.gid(),
                        pid = cred.pid().unwrap_or(0),
                        owner_uid = self.owner_uid,
                        unlogged,
                        "refused a caller: its uid is neither root, the socket's owner nor allowed by --allow-uid/--allow-gid"
                    );
                }
                Err(Status::permission_denied(
                    "this caller's uid/gid may not use the KMS plugin (see kube-kms serve --allow-uid/--allow-gid)",
                ))
            }
            None => {
                self.stats.record_caller_refused();
                if let Some(unlogged) = self.refusal_log.admit() {
                    tracing::warn!(
                        unlogged,
                        "refused a caller: no peer credentials on the connection"
                    );
                }
                Err(Status::permission_denied(
                    "caller credentials unavailable: only unix socket peers are admitted",
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_the_owner_and_listed_ids_are_admitted() {
        let policy = CallerPolicy {
            uids: vec![1001],
            gids: vec![2002],
        };
        let check = CallerCheck::new(&policy, 500, Arc::default());
        assert!(check.admits(0, 0));
        assert!(check.admits(500, 500));
        assert!(check.admits(1001, 9));
        assert!(check.admits(9, 2002));
        assert!(!check.admits(65534, 65534));
        let default = CallerCheck::new(&CallerPolicy::default(), 500, Arc::default());
        assert!(!default.admits(1001, 2002));
    }

    #[test]
    fn refusals_are_logged_at_most_once_per_interval_and_the_rest_counted() {
        let log = RefusalLog::new(Duration::from_secs(3600));
        assert_eq!(log.admit(), Some(0));
        for _ in 0..99 {
            assert_eq!(log.admit(), None);
        }
        assert_eq!(log.unlogged.load(Ordering::Relaxed), 99);
        // Once the interval has passed, the next line carries the count.
        log.next_ms.store(0, Ordering::Relaxed);
        assert_eq!(log.admit(), Some(99));
        assert_eq!(log.admit(), None);

        let every = RefusalLog::new(Duration::ZERO);
        assert_eq!(every.admit(), Some(0));
        assert_eq!(every.admit(), Some(0));
    }
}
