//! `etcd-inspect`: reads etcd values, live or from a bbolt backup file, and
//! classifies each as plaintext or under which provider and key.
//!
//! Where things go, by folder: [`source`] (one module per place etcd's keys
//! are read from: a bbolt backup file, a live etcd; later a WAL, a data dir)
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

/// Receives what a source reads, in any order.
pub trait ObservationSink {
    /// One change read from the source.
    fn observe(&mut self, observed: Observed<'_>);
    /// A non-fatal read problem: reported, the scan goes on, the exit code becomes 2.
    fn read_error(&mut self, message: String);
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
