//! What every root of trust shares when it serves: [`KeyRing`] turns a
//! [`Root`] (the key operations and the key_id scheme of one kind of root)
//! into a [`KeyBackend`].
//!
//! A `KeyRing` owns:
//! - one immutable [`Snapshot`] of the root's key versions behind an
//!   [`ArcSwap`]: the primary (its key_id and key), key_id → key (or "not
//!   usable": disabled, destroyed), the version counts, and the root's change
//!   marker. Status, Encrypt and Decrypt each read one snapshot, so the key_id
//!   Encrypt returns is the one Status reported for the same view;
//! - the health text Status serves ([`Health`]): the last self-test's
//!   verdict, or the reason a root call found the root broken;
//! - reload: serialized; the root reads its versions (or says nothing
//!   changed), a new snapshot is built and swapped in; on any error the
//!   previous snapshot keeps serving. A root with a refresh interval is read
//!   at most that often (the last error is repeated until the next read);
//! - the on-demand read when a Decrypt names a key_id the root may hold but
//!   the snapshot does not know (a version another node just made), at most
//!   once per [`ON_DEMAND_SPACING`];
//! - the self-test: a random canary wrapped under the snapshot's primary and
//!   unwrapped again, inline on every new snapshot before it serves
//!   ([`SelfTest::Inline`], for roots that answer at once) or through the
//!   root within a time limit ([`SelfTest::Bounded`]);
//! - a `Debug` that shows the root's own `Debug` (which must print nothing
//!   secret) and the primary's key_id, never a key.
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::{BackendError, KeyBackend, KeyStatus, ReloadOutcome, VersionCounts, Wrapped, HEALTHY};
use crate::secret::SecretBytes;

mod root;

pub use root::{Health, Listing, Root, RootListing, RootSnapshot, SelfTest, Snapshot, Version};

/// Least time between two on-demand reads for unknown key_ids.
pub const ON_DEMAND_SPACING: Duration = Duration::from_secs(2);

/// When the source was last read and what it said (for the refresh interval).
struct LastRead {
    at: Instant,
    error: Option<BackendError>,
}

/// A [`KeyBackend`] made of a [`Root`] and the shared serving state.
pub struct KeyRing<R: Root> {
    root: R,
    snapshot: ArcSwap<RootSnapshot<R>>,
    health: Health,
    /// Serializes reloads; remembers the last read.
    reloading: Mutex<LastRead>,
    /// Coalesces the on-demand reads for unknown key_ids.
    on_demand: tokio::sync::Mutex<Option<Instant>>,
}

impl<R: Root> std::fmt::Debug for KeyRing<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("root", &self.root)
            .field("primary_key_id", &self.snapshot.load().primary_key_id)
            .finish_non_exhaustive()
    }
}

impl<R: Root> KeyRing<R> {
    /// Serves `listing` of `root`. An inline root is self-tested at once;
    /// a bounded one reports "not run yet" until [`KeyBackend::self_test`]
    /// runs (the server runs one before it serves).
    pub fn new(root: R, listing: RootListing<R>) -> Result<Self, BackendError> {
        let snapshot = Snapshot::build(&root, listing)?;
        let ring = Self {
            root,
            snapshot: ArcSwap::from_pointee(snapshot),
            health: Health::new("self-test: not run yet"),
            reloading: Mutex::new(LastRead {
                at: Instant::now(),
                error: None,
            }),
            on_demand: tokio::sync::Mutex::new(None),
        };
        if ring.root.self_test() == SelfTest::Inline {
            let verdict = ring.test_inline(&ring.snapshot.load());
            ring.health.set(health_text(verdict));
        }
        Ok(ring)
    }

    /// The root.
    pub fn root(&self) -> &R {
        &self.root
    }

    /// The root, to configure it before serving.
    pub fn root_mut(&mut self) -> &mut R {
        &mut self.root
    }

    /// The first step of an unwrap, without waiting: `Ok(None)` when the
    /// snapshot does not know `key_id`.
    fn start_unwrap<'a>(
        &'a self,
        key_id: &str,
        ciphertext: &[u8],
    ) -> Result<
        Option<impl Future<Output = Result<SecretBytes, BackendError>> + Send + use<'a, R>>,
        BackendError,
    > {
        let snapshot = self.snapshot.load();
        Ok(match snapshot.lookup(key_id)? {
            Some(key) => Some(self.root.unwrap(key, key_id, ciphertext, &self.health)),
            None => None,
        })
    }

    /// Reads the root for an unknown `key_id` (see [`ON_DEMAND_SPACING`]).
    async fn read_for_unknown(&self, key_id: &str) {
        let mut last = self.on_demand.lock().await;
        let recent = last.is_some_and(|at| at.elapsed() < ON_DEMAND_SPACING);
        let known = {
            let snapshot = self.snapshot.load();
            if snapshot.keys.contains_key(key_id) {
                return;
            }
            snapshot.len()
        };
        if recent {
            return;
        }
        *last = Some(Instant::now());
        match self.root.read_now(known, &self.health).await {
            Ok(listing) => match Snapshot::build(&self.root, listing) {
                Ok(fresh) => {
                    if fresh.keys.contains_key(key_id) {
                        tracing::info!(key_id, source = %self.root.source(), "learned a new key version");
                    }
                    self.snapshot.store(Arc::new(fresh));
                }
                Err(error) => {
                    tracing::warn!(error = %error, "reading the keys for an unknown key_id: keeping the previous keys")
                }
            },
            Err(error) => {
                tracing::warn!(error = %error, "reading the keys for an unknown key_id failed")
            }
        }
    }

    /// Wraps and unwraps a random canary under `snapshot`'s primary.
    async fn round_trip(&self, snapshot: &RootSnapshot<R>) -> Result<(), String> {
        let canary = self_test_canary()?;
        let key_id = &snapshot.primary_key_id;
        let ciphertext = self
            .root
            .wrap(
                &snapshot.primary,
                key_id,
                canary.expose_secret(),
                &self.health,
            )
            .await
            .map_err(|error| format!("self-test: wrap under {key_id} failed: {error}"))?;
        let opened = self
            .root
            .unwrap(&snapshot.primary, key_id, &ciphertext, &self.health)
            .await
            .map_err(|error| format!("self-test: unwrap under {key_id} failed: {error}"))?;
        check_self_test_canary(&canary, &opened, key_id)
    }

    /// The round trip of an inline root, without a runtime.
    fn test_inline(&self, snapshot: &RootSnapshot<R>) -> Result<(), String> {
        let mut test = std::pin::pin!(self.round_trip(snapshot));
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        match test.as_mut().poll(&mut context) {
            std::task::Poll::Ready(verdict) => verdict,
            std::task::Poll::Pending => {
                Err("self-test: the root did not answer at once (not an inline root)".into())
            }
        }
    }

    fn read_and_swap(&self, force: bool) -> Result<ReloadOutcome, BackendError> {
        let current = self.snapshot.load_full();
        let Some(listing) = self.root.read(&current, force, &self.health)? else {
            return Ok(ReloadOutcome::Unchanged);
        };
        if !force && listing.marker == current.marker {
            return Ok(ReloadOutcome::Unchanged);
        }
        let fresh = Snapshot::build(&self.root, listing)?;
        let inline = self.root.self_test() == SelfTest::Inline;
        if inline {
            if let Err(reason) = self.test_inline(&fresh) {
                return Err(BackendError::Unavailable(format!(
                    "new {} rejected: {reason}",
                    self.root.source()
                )));
            }
        }
        let primary_key_id = Arc::clone(&fresh.primary_key_id);
        self.snapshot.store(Arc::new(fresh));
        if inline {
            self.health.set(Arc::from(HEALTHY));
        }
        Ok(ReloadOutcome::Reloaded { primary_key_id })
    }
}

impl<R: Root> KeyBackend for KeyRing<R> {
    fn status(&self) -> KeyStatus {
        KeyStatus {
            key_id: Arc::clone(&self.snapshot.load().primary_key_id),
            healthz: self.health.get(),
        }
    }

    fn wrap(&self, plaintext: &[u8]) -> impl Future<Output = Result<Wrapped, BackendError>> + Send {
        // The call is made while the snapshot is held, and the future does
        // not keep it: a reload can swap it while the root works.
        let (call, key_id) = {
            let snapshot = self.snapshot.load();
            let key_id = Arc::clone(&snapshot.primary_key_id);
            let call = self
                .root
                .wrap(&snapshot.primary, &key_id, plaintext, &self.health);
            (call, key_id)
        };
        async move {
            Ok(Wrapped {
                ciphertext: call.await?,
                key_id,
                annotations: BTreeMap::new(),
            })
        }
    }

    fn unwrap(
        &self,
        key_id: &str,
        ciphertext: &[u8],
        _annotations: &BTreeMap<String, Vec<u8>>,
    ) -> impl Future<Output = Result<SecretBytes, BackendError>> + Send {
        let first = self
            .root
            .screen(ciphertext)
            .and_then(|()| self.start_unwrap(key_id, ciphertext));
        async move {
            let call = match first? {
                Some(call) => call,
                None if self.root.may_hold(key_id) => {
                    self.read_for_unknown(key_id).await;
                    self.start_unwrap(key_id, ciphertext)?
                        .ok_or(BackendError::UnknownKeyId)?
                }
                None => return Err(BackendError::UnknownKeyId),
            };
            call.await
        }
    }

    async fn self_test(&self) {
        let snapshot = self.snapshot.load_full();
        let verdict = match self.root.self_test() {
            SelfTest::Inline => self.test_inline(&snapshot),
            SelfTest::Bounded(limit) => {
                match tokio::time::timeout(limit, self.round_trip(&snapshot)).await {
                    Ok(verdict) => verdict,
                    Err(_) => Err(format!(
                        "self-test: wrap and unwrap did not finish within {limit:?}"
                    )),
                }
            }
        };
        if verdict.is_err() {
            self.root.after_failed_self_test(&self.health).await;
        }
        self.health.set(health_text(verdict));
    }

    fn reload(&self, force: bool) -> Result<ReloadOutcome, BackendError> {
        // What the lock guards is bookkeeping: a panic cannot leave it harmful.
        let mut last = self
            .reloading
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(interval) = self.root.refresh_interval() {
            if !force && last.at.elapsed() < interval {
                return match &last.error {
                    Some(error) => Err(error.clone()),
                    None => Ok(ReloadOutcome::Unchanged),
                };
            }
            last.at = Instant::now();
        }
        let outcome = self.read_and_swap(force);
        last.error = outcome.as_ref().err().cloned();
        outcome
    }

    fn version_counts(&self) -> VersionCounts {
        self.snapshot.load().counts
    }

    fn rollbacks_refused(&self) -> u64 {
        self.root.rollbacks_refused()
    }

    fn ignored_objects(&self) -> u64 {
        self.root.ignored_objects()
    }
}

/// A random 32-byte canary for a self-test (the size of a DEK seed).
fn self_test_canary() -> Result<SecretBytes, String> {
    let mut canary = SecretBytes::new(vec![0u8; 32]);
    getrandom::getrandom(canary.expose_secret_mut())
        .map_err(|error| format!("self-test: random generator failed: {error}"))?;
    Ok(canary)
}

/// What Status reports as healthz for a self-test verdict.
fn health_text(verdict: Result<(), String>) -> Arc<str> {
    match verdict {
        Ok(()) => Arc::from(HEALTHY),
        Err(reason) => Arc::from(reason),
    }
}

/// The self-test verdict once the canary came back from `key_id` as `opened`.
fn check_self_test_canary(
    canary: &SecretBytes,
    opened: &SecretBytes,
    key_id: &str,
) -> Result<(), String> {
    if bool::from(subtle::ConstantTimeEq::ct_eq(
        opened.expose_secret(),
        canary.expose_secret(),
    )) {
        Ok(())
    } else {
        Err(format!(
            "self-test: unwrap under {key_id} returned other bytes"
        ))
    }
}
