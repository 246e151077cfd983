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
use std::sync::Arc;

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
}

impl CallerCheck {
    pub(crate) fn new(policy: &CallerPolicy, owner_uid: u32, stats: Arc<ServerStats>) -> Self {
        Self {
            owner_uid,
            uids: policy.uids.as_slice().into(),
            gids: policy.gids.as_slice().into(),
            stats,
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
                tracing::warn!(
                    uid = cred.uid(),
                    gid = cred.gid(),
                    pid = cred.pid().unwrap_or(0),
                    owner_uid = self.owner_uid,
                    "refused a caller: its uid is neither root, the socket's owner nor allowed by --allow-uid/--allow-gid"
                );
                Err(Status::permission_denied(
                    "this caller's uid/gid may not use the KMS plugin (see kube-kms serve --allow-uid/--allow-gid)",
                ))
            }
            None => {
                self.stats.record_caller_refused();
                tracing::warn!("refused a caller: no peer credentials on the connection");
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
}
