//! `etcd-inspect`: reads etcd values, live or from a bbolt backup file, and
//! classifies each as plaintext or under which provider and key.
//!
//! Where things go, by folder: [`source`] (one module per place etcd's keys
//! are read from: a bbolt backup file, a live etcd; a member's WAL and data dir)
//! turns what it reads into [`Observed`] events for an [`ObservationSink`];
//! [`audit`] drives a source into its [`audit::Ledger`], the sink that owns
//! classification ([`classify`], [`verify`]), history and policy, and
//! returns a [`report::Report`]; [`report`] holds the typed records and the
//! output formats. So a file and a live etcd holding the same data give the
//! same report, and a new source or output format is one new module.

/// An etcd MVCC revision: the main revision of the transaction and the index of
/// the change within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Revision {
    /// Transaction revision (etcd's `mod_revision`).
    pub main: i64,
    /// Change index within that transaction.
    pub sub: i64,
}

/// One change to one etcd key, as a source read it. Values are borrowed from
/// the source's buffer and never outlive the call that receives them.
#[derive(Debug, Clone, Copy)]
pub enum Observed<'a> {
    /// The key was written with `value` at `revision`.
    Put {
        /// The etcd key, e.g. `/registry/secrets/default/db-pass`.
        key: &'a [u8],
        /// When it was written.
        revision: Revision,
        /// The stored bytes (possibly a secret: never print them).
        value: &'a [u8],
    },
    /// The key was deleted at `revision` (a tombstone).
    Delete {
        /// The etcd key.
        key: &'a [u8],
        /// When it was deleted.
        revision: Revision,
    },
}

/// Where a copy of a value was read, outside the keyspace being scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location<'a> {
    /// A raft entry in a write-ahead log segment (`member/wal/*.wal`).
    Wal {
        /// The segment file.
        segment: &'a str,
        /// Byte offset of the entry's record in the segment.
        offset: u64,
        /// Raft term of the entry.
        term: u64,
        /// Raft index of the entry.
        index: u64,
    },
    /// A revision in a leftover `member/snap/*.snap.db` (a database received
    /// from the leader); the revision is the observation's.
    SnapDb {
        /// The file.
        file: &'a str,
    },
}

/// Receives what a source reads, in any order.
pub trait ObservationSink {
    /// One change read from the source.
    fn observe(&mut self, observed: Observed<'_>);
    /// A non-fatal read problem: reported, the scan goes on, the exit code becomes 2.
    fn read_error(&mut self, message: String);
    /// One change read from a copy outside the keyspace (a WAL entry, a
    /// leftover `snap.db`): not part of the keyspace's history, reported with
    /// where it is. A sink that does not tell copies apart takes it as
    /// [`Self::observe`].
    fn observe_copy(&mut self, observed: Observed<'_>, location: Location<'_>) {
        let _ = location;
        self.observe(observed);
    }
}

/// A sink adapter that hands every observation to `inner` as a copy at one
/// [`Location`] (a leftover `snap.db` scanned by the file reader).
pub struct CopySink<'s> {
    /// The sink that receives the copies.
    pub inner: &'s mut dyn ObservationSink,
    /// The file the copies are in.
    pub file: &'s str,
}

impl ObservationSink for CopySink<'_> {
    fn observe(&mut self, observed: Observed<'_>) {
        self.inner
            .observe_copy(observed, Location::SnapDb { file: self.file });
    }

    fn read_error(&mut self, message: String) {
        self.inner.read_error(message);
    }
}

pub mod aligned;
pub mod audit;
pub mod classify;
pub mod cputime;
pub mod encryption_config;
mod intern;
pub mod mvcc;
pub mod pb;
pub mod progress;
pub mod remnants;
pub mod report;
pub mod resource;
pub mod source;
pub mod stale;
pub mod unknown;
pub mod verify;
