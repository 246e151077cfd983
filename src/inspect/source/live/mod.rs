//! The live source of `etcd-inspect`: reads a running etcd over its v3 API
//! (plain or TLS with client certificates, optional user/password) and turns
//! what it reads into [`Observed`](crate::inspect::Observed) events for an [`ObservationSink`].
//!
//! By what it does: `session` (endpoints, TLS, authentication, deadlines),
//! `paging` (pinned pages, the compaction revision, the history watch, on
//! the reader thread), `emit` (responses into observations), `error` (etcd
//! client errors into [`LiveError`] messages), `cluster` (all of it as an
//! audit [`Source`](super::Source): [`ClusterSource`]).
//!
//! # Latest values (the default)
//! The range `[prefix, prefix_end)` is read in pages of at most
//! [`LiveSource::page_size`] keys. The first page is a linearizable read; its
//! header revision becomes the *pinned* revision and every later page is a
//! serializable read at exactly that revision, continuing from the last key
//! plus `\0`. So the scan sees one consistent point in time (writes made during
//! the scan do not show up). The client runs on a reader thread one page
//! ahead of the sink, so etcd serves a page while the sink examines the last
//! one; at most three pages are in memory (being read, queued, examined). A page
//! whose encoded size exceeds [`MAX_RESPONSE_BYTES`] is asked again with half
//! the limit, so huge values shrink the page instead of growing memory.
//!
//! # Compaction revision
//! etcd 3.4 has no API that returns the compaction revision directly (`Status`
//! does not carry it, and a watch only reports it when asked for a revision
//! below it). A range at revision `r` fails with "required revision has been
//! compacted" exactly when `r` is below the compaction revision, so a binary
//! search over `[1, pinned]` with single-key, keys-only probes finds it in
//! about log2(pinned) cheap requests.
//!
//! # History (`history = true`)
//! etcd still serves, for a compaction revision `C` and the pinned revision
//! `P`: the state at `C` (each key's last write at or before `C`), and every
//! change after `C`. The history scan emits exactly that, with no key+revision
//! twice and without remembering keys:
//! 1. a paged range at revision `C` (skipped when etcd never compacted), whose
//!    values all have `mod_revision <= C`;
//! 2. a watch from `C + 1` (or from revision 1) that replays every Put and
//!    Delete after `C`, stopping after revision `P`; all of these have
//!    revisions `> C`, so they never repeat step 1.
//!
//! The latest value of each key is among them (its highest revision), as in a
//! backup file, so the sink tells latest from history the same way for both
//! sources; no separate range at `P` is made. The watch covers all keys and
//! filters by prefix here: every revision up to `P` holds at least one change
//! somewhere in the key space, so seeing revision `P` (or a later one) proves
//! the replay is complete. Progress notifications cannot prove it on etcd
//! 3.4.23 and older, which may send them ahead of pending events (etcd issue
//! 15220). This needs read access to the whole key space. etcd sends the replay
//! in batches of at most 1000 revisions, never splitting a revision; memory is
//! bounded by three batches (being read, queued, examined), each at most
//! [`MAX_WATCH_MESSAGE_BYTES`]. A change's sub
//! revision is its position among the changes of its revision, as in the file;
//! values from ranges carry sub revision 0 (a range does not tell it).
//!
//! # Failure
//! Every request has a deadline and the connection uses HTTP/2 keep-alive, so
//! a dead or hung etcd fails within seconds. Any failure after the scan started
//! (connection lost, compaction past the pinned revision, watch cancelled)
//! ends the scan with an error: a partial scan is never reported as complete.

use std::path::PathBuf;

use crate::inspect::ObservationSink;
use crate::secret::SecretBytes;

mod cluster;
mod emit;
mod error;
mod paging;
mod session;
pub use cluster::{read_password_file, ClusterSource};
pub use emit::prefix_range;
pub use error::LiveError;

use emit::Emitter;
use etcd_client::{GetResponse, WatchResponse};
use paging::fetch;

/// Keys per range request when [`LiveSource::page_size`] is not positive.
pub const DEFAULT_PAGE_SIZE: i64 = 1000;
/// Largest range response accepted; a larger page is asked again, halved.
pub const MAX_RESPONSE_BYTES: usize = 8 << 20;
/// Largest watch response accepted while replaying history (one batch of at
/// most 1000 revisions).
pub const MAX_WATCH_MESSAGE_BYTES: usize = 256 << 20;

/// Where and what to read in a live etcd.
#[derive(Debug, Clone, Default)]
pub struct LiveSource {
    /// etcd client URLs (`https://10.0.0.1:2379`, `http://127.0.0.1:2379`, or
    /// `host:port`, which means https when TLS files are given). An element may
    /// hold several URLs separated by commas.
    pub endpoints: Vec<String>,
    /// PEM CA bundle that signed etcd's server certificate (`--cacert`).
    pub cacert: Option<PathBuf>,
    /// PEM client certificate (`--cert`), e.g. kube-apiserver's
    /// `apiserver-etcd-client.crt`.
    pub cert: Option<PathBuf>,
    /// PEM private key of the client certificate (`--key`).
    pub key: Option<PathBuf>,
    /// etcd user for etcd's own authentication (`--user`).
    pub user: Option<String>,
    /// Password of [`LiveSource::user`].
    pub password: Option<SecretBytes>,
    /// Every key starting with these bytes is read (empty: the whole key space).
    pub prefix: Vec<u8>,
    /// Keys per range request; not positive means [`DEFAULT_PAGE_SIZE`].
    pub page_size: i64,
    /// Also replay the older revisions etcd still serves (see the module doc).
    pub history: bool,
}

/// What a live scan read, besides the observations it emitted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveSummary {
    /// The pinned revision: the scan shows etcd as of this revision.
    pub revision: i64,
    /// etcd's compaction revision: revisions below it are gone. `None` when
    /// etcd never compacted (every revision is still served).
    pub compact_revision: Option<i64>,
    /// Whether older revisions were replayed.
    pub history: bool,
    /// The cluster id in the header of the first response (identifies the
    /// etcd cluster the report is about).
    pub cluster_id: u64,
    /// The member id in that header (the member that answered first).
    pub member_id: u64,
    /// Put observations emitted.
    pub puts: u64,
    /// Delete observations emitted (history only).
    pub deletes: u64,
    /// Range requests answered.
    pub pages: u64,
    /// Watch responses read while replaying history.
    pub watch_responses: u64,
}

/// Reads `source` and hands every value (and, with history, every change) to
/// `sink`. Returns only after the whole range was read; any failure is an
/// error, never a shorter result.
///
/// The etcd client runs on a reader thread of its own, one page ahead of the
/// sink: etcd serves page n+1 while the sink examines page n. The channel
/// between them holds one page, so at most three pages are in memory.
pub async fn read(
    source: &LiveSource,
    sink: &mut dyn ObservationSink,
) -> Result<LiveSummary, LiveError> {
    let (sender, mut receiver) = tokio::sync::mpsc::channel(1);
    let owned = source.clone();
    let reader = std::thread::Builder::new()
        .name("etcd-live-reader".to_owned())
        .spawn(move || read_on_own_thread(owned, sender))
        .map_err(|error| LiveError::Internal(format!("cannot start the reader thread: {error}")))?;
    let (start, end) = prefix_range(&source.prefix);
    let mut emitter = Emitter {
        start,
        end,
        current_main: 0,
        sub: 0,
        puts: 0,
        deletes: 0,
    };
    let outcome = loop {
        match receiver.recv().await {
            Some(Message::Page(page)) => emitter.page(&page, sink),
            Some(Message::Changes { response, pinned }) => emitter.changes(&response, pinned, sink),
            Some(Message::Finished(summary)) => break Ok(summary),
            Some(Message::Failed(error)) => break Err(error),
            None => {
                break Err(LiveError::Internal(
                    "the etcd reader thread ended without a result".to_owned(),
                ))
            }
        }
    };
    drop(receiver);
    // The reader has sent its last message and is ending.
    if reader.join().is_err() {
        return Err(LiveError::Internal(
            "the etcd reader thread panicked".to_owned(),
        ));
    }
    outcome.map(|summary| LiveSummary {
        puts: emitter.puts,
        deletes: emitter.deletes,
        ..summary
    })
}

/// What the reader thread sends to the sink's side (see [`paging`]).
pub(super) enum Message {
    /// A range page: every value is a put at its `mod_revision`.
    Page(GetResponse),
    /// A history watch response; changes after `pinned` are not emitted.
    Changes {
        response: WatchResponse,
        pinned: i64,
    },
    /// The read is complete (observation counts not filled in).
    Finished(LiveSummary),
    /// The read failed; nothing more follows.
    Failed(LiveError),
}

/// The reader's end of the channel, and what it counts.
pub(super) struct Feed {
    pub(super) sender: tokio::sync::mpsc::Sender<Message>,
    pub(super) summary: LiveSummary,
}

impl Feed {
    async fn send(&mut self, message: Message) -> Result<(), LiveError> {
        self.sender
            .send(message)
            .await
            .map_err(|_| LiveError::Internal("the scan stopped reading".to_owned()))
    }
}

fn read_on_own_thread(source: LiveSource, sender: tokio::sync::mpsc::Sender<Message>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = sender.blocking_send(Message::Failed(LiveError::Internal(format!(
                "cannot start the reader's runtime: {error}"
            ))));
            return;
        }
    };
    runtime.block_on(async move {
        let mut feed = Feed {
            sender,
            summary: LiveSummary {
                history: source.history,
                ..LiveSummary::default()
            },
        };
        let last = match fetch(&source, &mut feed).await {
            Ok(()) => Message::Finished(feed.summary.clone()),
            Err(error) => Message::Failed(error),
        };
        let _ = feed.sender.send(last).await;
    });
}
#[cfg(test)]
mod tests;
