//! The live source of `etcd-inspect`: reads a running etcd over its v3 API
//! (plain or TLS with client certificates, optional user/password) and turns
//! what it reads into [`Observed`] events for an [`ObservationSink`].
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

use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, ConnectOptions, GetOptions, GetResponse, Identity, KvClient, TlsOptions,
    WatchClient, WatchOptions, WatchResponse,
};

use crate::inspect::{ObservationSink, Observed, Revision};
use crate::secret::SecretBytes;

mod cluster;
pub use cluster::{read_password_file, ClusterSource};

/// Keys per range request when [`LiveSource::page_size`] is not positive.
pub const DEFAULT_PAGE_SIZE: i64 = 1000;
/// Largest range response accepted; a larger page is asked again, halved.
pub const MAX_RESPONSE_BYTES: usize = 8 << 20;
/// Largest watch response accepted while replaying history (one batch of at
/// most 1000 revisions).
pub const MAX_WATCH_MESSAGE_BYTES: usize = 256 << 20;

/// TCP connect deadline for each endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Deadline of the first request (and of authentication): a dead endpoint
/// fails within it.
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of every later request, and the longest silence tolerated on the
/// history watch while etcd still owes events.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// HTTP/2 keep-alive: a connection that stops answering pings is dropped.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// A serializable read on a member behind the pinned revision is retried this
/// many times, [`FUTURE_REVISION_PAUSE`] apart, before giving up.
const FUTURE_REVISION_RETRIES: u32 = 40;
const FUTURE_REVISION_PAUSE: Duration = Duration::from_millis(50);

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

/// Why a live scan failed. Messages name the endpoint and what to do.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// The options do not make a usable connection.
    #[error("invalid etcd connection options: {0}")]
    Config(String),
    /// A TLS file could not be read.
    #[error("cannot read {what} {path}: {source}; check --cacert/--cert/--key")]
    ReadTlsFile {
        /// Which file (CA, client certificate, client key).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The password file could not be read.
    #[error("--password-file {}: cannot read it", path.display())]
    ReadPasswordFile {
        /// Its path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The first contact with etcd failed.
    #[error(
        "cannot reach etcd at {endpoints}: {detail}; check --endpoints and that etcd is running \
         (for TLS: https:// endpoints with --cacert, and --cert/--key if etcd requires client certificates)"
    )]
    Unreachable {
        /// The endpoints tried.
        endpoints: String,
        /// What the transport said.
        detail: String,
    },
    /// etcd did not answer in time.
    #[error(
        "etcd at {endpoints} did not answer {what} within {seconds}s; the scan is incomplete: \
         check --endpoints, the network and etcd's health, then rerun"
    )]
    Timeout {
        /// The endpoints tried.
        endpoints: String,
        /// The request that timed out.
        what: String,
        /// The deadline.
        seconds: u64,
    },
    /// etcd refused the credentials or the permission.
    #[error(
        "etcd at {endpoints} refused {what}: {detail}; check --user/--password or the client \
         certificate (--cert/--key) and that it may read the scanned keys"
    )]
    Auth {
        /// The endpoints tried.
        endpoints: String,
        /// The refused request.
        what: String,
        /// etcd's answer.
        detail: String,
    },
    /// The connection broke after the scan started.
    #[error(
        "lost the connection to etcd at {endpoints} while {what}: {detail}; the scan is \
         incomplete: rerun it once etcd is reachable"
    )]
    ConnectionLost {
        /// The endpoints tried.
        endpoints: String,
        /// What the scan was doing.
        what: String,
        /// What the transport said.
        detail: String,
    },
    /// etcd compacted past a revision the scan needs.
    #[error(
        "etcd compacted revision {revision} away while {what}; the scan is incomplete: rerun it \
         (compaction, e.g. kube-apiserver's every 5 minutes, moved past the scan's revision)"
    )]
    Compacted {
        /// The revision the scan needed.
        revision: i64,
        /// What the scan was doing.
        what: String,
    },
    /// One value is too large to fetch within [`MAX_RESPONSE_BYTES`].
    #[error(
        "the value of the key after {after} is larger than {limit} bytes, the most a page may \
         hold; the scan is incomplete"
    )]
    ValueTooLarge {
        /// The key the failing page started after (base64 if not UTF-8).
        after: String,
        /// The limit.
        limit: usize,
    },
    /// The history watch ended without replaying up to the pinned revision.
    #[error(
        "etcd cancelled the history watch ({reason}) before revision {revision}; the history \
         scan is incomplete: rerun, or scan without --history"
    )]
    WatchCancelled {
        /// etcd's reason, if any.
        reason: String,
        /// The pinned revision the replay had to reach.
        revision: i64,
    },
    /// The scan's own machinery failed (thread or runtime could not start).
    #[error("etcd-inspect failed internally: {0}; the scan is incomplete")]
    Internal(String),
    /// etcd rejected a request for another reason.
    #[error("etcd at {endpoints} rejected {what}: {detail}")]
    Request {
        /// The endpoints tried.
        endpoints: String,
        /// The rejected request.
        what: String,
        /// etcd's answer.
        detail: String,
    },
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

/// What the reader thread sends to the sink's side.
enum Message {
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
struct Feed {
    sender: tokio::sync::mpsc::Sender<Message>,
    summary: LiveSummary,
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

async fn fetch(source: &LiveSource, feed: &mut Feed) -> Result<(), LiveError> {
    let mut session = Session::connect(source).await?;
    if source.history {
        fetch_history(&mut session, feed).await
    } else {
        fetch_latest(&mut session, feed).await
    }
}

/// Latest values: pages at the revision of the first page.
async fn fetch_latest(session: &mut Session, feed: &mut Feed) -> Result<(), LiveError> {
    let start = session.start.clone();
    let first = session.range_page(&start, None).await?;
    feed.summary.pages += 1;
    let header = first
        .header()
        .ok_or_else(|| session.missing_header("the first range request"))?;
    let pinned = header.revision();
    feed.summary.revision = pinned;
    feed.summary.cluster_id = header.cluster_id();
    feed.summary.member_id = header.member_id();
    let next = continue_after(&first);
    let more = first.more();
    feed.send(Message::Page(first)).await?;
    feed.summary.compact_revision = session.compact_revision(pinned).await?;
    match next {
        Some(from) if more => page_through(session, from, pinned, feed).await,
        _ => Ok(()),
    }
}

/// History: the state at the compaction revision, then every change after it
/// up to the pinned revision (see the module doc).
async fn fetch_history(session: &mut Session, feed: &mut Feed) -> Result<(), LiveError> {
    let (pinned, cluster_id, member_id) = session.current_revision().await?;
    feed.summary.revision = pinned;
    feed.summary.cluster_id = cluster_id;
    feed.summary.member_id = member_id;
    let compacted = session.compact_revision(pinned).await?;
    feed.summary.compact_revision = compacted;
    let replay_from = match compacted {
        Some(compact) => {
            let start = session.start.clone();
            page_through(session, start, compact, feed).await?;
            compact.saturating_add(1)
        }
        None => 1,
    };
    session.replay_changes(replay_from, pinned, feed).await
}

/// Reads every page of the range from `from` at `revision`.
async fn page_through(
    session: &mut Session,
    mut from: Vec<u8>,
    revision: i64,
    feed: &mut Feed,
) -> Result<(), LiveError> {
    loop {
        let page = session.range_page(&from, Some(revision)).await?;
        feed.summary.pages += 1;
        let next = continue_after(&page);
        let more = page.more();
        feed.send(Message::Page(page)).await?;
        match next {
            Some(key) if more => from = key,
            _ => return Ok(()),
        }
    }
}

/// The key to continue from after a page: its last key + `\0`.
fn continue_after(page: &GetResponse) -> Option<Vec<u8>> {
    page.kvs().last().map(|kv| {
        let mut next = Vec::with_capacity(kv.key().len() + 1);
        next.extend_from_slice(kv.key());
        next.push(0);
        next
    })
}

/// The sink's side: turns pages and watch responses into observations.
struct Emitter {
    start: Vec<u8>,
    end: Vec<u8>,
    /// Revision of the last change seen on the history watch, and the index
    /// of that change within its revision (its sub revision).
    current_main: i64,
    sub: i64,
    puts: u64,
    deletes: u64,
}

impl Emitter {
    fn page(&mut self, page: &GetResponse, sink: &mut dyn ObservationSink) {
        for kv in page.kvs() {
            sink.observe(Observed::Put {
                key: kv.key(),
                revision: Revision {
                    main: kv.mod_revision(),
                    sub: 0,
                },
                value: kv.value(),
            });
            self.puts += 1;
        }
    }

    fn changes(&mut self, response: &WatchResponse, pinned: i64, sink: &mut dyn ObservationSink) {
        for event in response.events() {
            let Some(kv) = event.kv() else {
                continue;
            };
            let main = kv.mod_revision();
            if main > pinned {
                return;
            }
            // The watch covers all keys, so counting here gives the change's
            // index within its revision.
            if main == self.current_main {
                self.sub += 1;
            } else {
                self.current_main = main;
                self.sub = 0;
            }
            if !in_range(kv.key(), &self.start, &self.end) {
                continue;
            }
            let revision = Revision {
                main,
                sub: self.sub,
            };
            // etcd writes a delete as a KeyValue with only key and
            // mod_revision (version 0); every put has version >= 1. Reading
            // that avoids etcd-client's panic on an unknown event type.
            if kv.version() == 0 {
                sink.observe(Observed::Delete {
                    key: kv.key(),
                    revision,
                });
                self.deletes += 1;
            } else {
                sink.observe(Observed::Put {
                    key: kv.key(),
                    revision,
                    value: kv.value(),
                });
                self.puts += 1;
            }
        }
    }
}

/// `[start, end)` for every key beginning with `prefix`, as etcd spells it:
/// `end == [0]` means "no upper bound".
pub fn prefix_range(prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    if prefix.is_empty() {
        return (vec![0], vec![0]);
    }
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return (prefix.to_vec(), end);
        }
    }
    (prefix.to_vec(), vec![0])
}

/// Whether `key` lies in `[start, end)` (`end == [0]`: no upper bound).
fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    key >= start && (end == [0] || key < end)
}

/// A connected client and the range being scanned.
struct Session {
    kv: KvClient,
    watch: WatchClient,
    endpoints: String,
    start: Vec<u8>,
    end: Vec<u8>,
    page_limit: i64,
}

impl Session {
    async fn connect(source: &LiveSource) -> Result<Self, LiveError> {
        let endpoints = split_endpoints(&source.endpoints)?;
        let tls = tls_options(source)?;
        let any_https = endpoints.iter().any(|url| url.starts_with("https://"));
        if any_https && tls.is_none() {
            return Err(LiveError::Config(
                "an https:// endpoint needs --cacert (the CA that signed etcd's server certificate)"
                    .to_owned(),
            ));
        }
        if tls.is_some() {
            if let Some(url) = endpoints.iter().find(|url| url.starts_with("http://")) {
                return Err(LiveError::Config(format!(
                    "{url} is plain http but TLS files (--cacert/--cert/--key) were given; use https://"
                )));
            }
        }
        let mut options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_keep_alive(KEEP_ALIVE_INTERVAL, KEEP_ALIVE_TIMEOUT)
            .with_keep_alive_while_idle(true);
        if let Some(tls) = tls {
            options = options.with_tls(tls);
        }
        match (&source.user, &source.password) {
            (Some(user), Some(password)) => {
                let password = std::str::from_utf8(password.expose_secret())
                    .map_err(|_| LiveError::Config("the etcd password is not UTF-8".to_owned()))?;
                options = options
                    .with_user(user.clone(), password.to_owned())
                    .with_auto_token_refresh(true);
            }
            (Some(_), None) => {
                return Err(LiveError::Config(
                    "--user needs --password (etcd user authentication)".to_owned(),
                ))
            }
            (None, Some(_)) => return Err(LiveError::Config("--password needs --user".to_owned())),
            (None, None) => {}
        }
        let joined = endpoints.join(",");
        // With a user, connect authenticates: it is the first request.
        let client = match tokio::time::timeout(
            FIRST_REQUEST_TIMEOUT,
            Client::connect(&endpoints, Some(options)),
        )
        .await
        {
            Ok(Ok(client)) => client,
            Ok(Err(error)) => {
                return Err(classify(
                    error,
                    &joined,
                    "authentication",
                    Phase::Connecting,
                ))
            }
            Err(_) => {
                return Err(LiveError::Unreachable {
                    endpoints: joined,
                    detail: format!(
                        "no answer to authentication within {}s",
                        FIRST_REQUEST_TIMEOUT.as_secs()
                    ),
                })
            }
        };
        let (start, end) = prefix_range(&source.prefix);
        let page_limit = if source.page_size > 0 {
            source.page_size
        } else {
            DEFAULT_PAGE_SIZE
        };
        Ok(Self {
            kv: client
                .kv_client()
                .max_decoding_message_size(MAX_RESPONSE_BYTES),
            watch: client
                .watch_client()
                .max_decoding_message_size(MAX_WATCH_MESSAGE_BYTES),
            endpoints: joined,
            start,
            end,
            page_limit,
        })
    }

    /// One page from `from`. `revision: None` is the first, linearizable
    /// read that fixes the pinned revision; later pages are serializable reads
    /// at the given revision.
    async fn range_page(
        &mut self,
        from: &[u8],
        revision: Option<i64>,
    ) -> Result<GetResponse, LiveError> {
        let (what, phase) = match revision {
            None => ("the first range request".to_owned(), Phase::Connecting),
            Some(revision) => (
                format!(
                    "reading the page after {} at revision {revision}",
                    printable_key(from)
                ),
                Phase::Scanning,
            ),
        };
        let mut future_retries = 0;
        loop {
            let mut options = GetOptions::new()
                .with_range(self.end.clone())
                .with_limit(self.page_limit);
            if let Some(revision) = revision {
                options = options.with_revision(revision).with_serializable();
            }
            let answer = deadline(
                &self.endpoints,
                phase,
                &what,
                self.kv.get(from.to_vec(), Some(options)),
            )
            .await?;
            match answer {
                Ok(page) => return Ok(page),
                Err(error) if is_too_large(&error) => {
                    if self.page_limit <= 1 {
                        return Err(LiveError::ValueTooLarge {
                            after: printable_key(from),
                            limit: MAX_RESPONSE_BYTES,
                        });
                    }
                    self.page_limit = (self.page_limit / 2).max(1);
                }
                Err(error)
                    if is_future_revision(&error) && future_retries < FUTURE_REVISION_RETRIES =>
                {
                    // A serializable read reached a member that has not yet
                    // applied the pinned revision: it catches up shortly.
                    future_retries += 1;
                    tokio::time::sleep(FUTURE_REVISION_PAUSE).await;
                }
                Err(error) => {
                    return Err(match (revision, is_compacted(&error)) {
                        (Some(revision), true) => LiveError::Compacted { revision, what },
                        _ => classify(error, &self.endpoints, &what, phase),
                    })
                }
            }
        }
    }

    /// The current revision, from a linearizable count-only read.
    /// The current revision, with the cluster and member ids of the header.
    async fn current_revision(&mut self) -> Result<(i64, u64, u64), LiveError> {
        let what = "the first range request";
        let options = GetOptions::new()
            .with_range(self.end.clone())
            .with_count_only();
        let answer = deadline(
            &self.endpoints,
            Phase::Connecting,
            what,
            self.kv.get(self.start.clone(), Some(options)),
        )
        .await?;
        let response =
            answer.map_err(|error| classify(error, &self.endpoints, what, Phase::Connecting))?;
        response
            .header()
            .map(|header| (header.revision(), header.cluster_id(), header.member_id()))
            .ok_or_else(|| self.missing_header(what))
    }

    /// The compaction revision (see the module doc), `None` if revision 1 is
    /// still served.
    async fn compact_revision(&mut self, pinned: i64) -> Result<Option<i64>, LiveError> {
        if self.revision_served(1).await? {
            return Ok(None);
        }
        if !self.revision_served(pinned).await? {
            return Err(LiveError::Compacted {
                revision: pinned,
                what: "looking for the compaction revision".to_owned(),
            });
        }
        // Invariant: `low` is compacted, `high` is served.
        let (mut low, mut high) = (1_i64, pinned);
        while high - low > 1 {
            let middle = low + (high - low) / 2;
            if self.revision_served(middle).await? {
                high = middle;
            } else {
                low = middle;
            }
        }
        Ok(Some(high))
    }

    /// Whether etcd still serves reads at `revision`.
    async fn revision_served(&mut self, revision: i64) -> Result<bool, LiveError> {
        let what = format!("probing revision {revision} for compaction");
        let mut future_retries = 0;
        loop {
            let options = GetOptions::new()
                .with_revision(revision)
                .with_keys_only()
                .with_limit(1)
                .with_serializable();
            let answer = deadline(
                &self.endpoints,
                Phase::Scanning,
                &what,
                self.kv.get(self.start.clone(), Some(options)),
            )
            .await?;
            match answer {
                Ok(_) => return Ok(true),
                Err(error) if is_compacted(&error) => return Ok(false),
                Err(error)
                    if is_future_revision(&error) && future_retries < FUTURE_REVISION_RETRIES =>
                {
                    future_retries += 1;
                    tokio::time::sleep(FUTURE_REVISION_PAUSE).await;
                }
                Err(error) => return Err(classify(error, &self.endpoints, &what, Phase::Scanning)),
            }
        }
    }

    /// Replays every change in `[from, pinned]` (all keys; the emitter
    /// keeps those under the prefix).
    async fn replay_changes(
        &mut self,
        from: i64,
        pinned: i64,
        feed: &mut Feed,
    ) -> Result<(), LiveError> {
        // Revision 1 of a new etcd holds no change; nothing to replay when
        // the window is empty.
        if from > pinned || pinned < 2 {
            return Ok(());
        }
        let what = format!("replaying history from revision {from} to {pinned}");
        let options = WatchOptions::new()
            .with_all_keys()
            .with_start_revision(from);
        let answer = deadline(
            &self.endpoints,
            Phase::Scanning,
            &what,
            self.watch.watch(vec![0], Some(options)),
        )
        .await?;
        let mut stream =
            answer.map_err(|error| classify(error, &self.endpoints, &what, Phase::Scanning))?;
        loop {
            let message = deadline(&self.endpoints, Phase::Scanning, &what, stream.message())
                .await?
                .map_err(|error| classify(error, &self.endpoints, &what, Phase::Scanning))?;
            let Some(response) = message else {
                return Err(LiveError::ConnectionLost {
                    endpoints: self.endpoints.clone(),
                    what,
                    detail: "etcd closed the watch stream".to_owned(),
                });
            };
            feed.summary.watch_responses += 1;
            if response.compact_revision() > 0 {
                return Err(LiveError::Compacted {
                    revision: from,
                    what,
                });
            }
            if response.canceled() {
                return Err(LiveError::WatchCancelled {
                    reason: response.cancel_reason().to_owned(),
                    revision: pinned,
                });
            }
            // etcd never splits one revision over two responses (no
            // fragmenting was asked for), so once `pinned` (or a later
            // revision) shows, every change up to `pinned` was seen.
            let reached_pinned = response
                .events()
                .iter()
                .filter_map(|event| event.kv())
                .any(|kv| kv.mod_revision() >= pinned);
            if !response.events().is_empty() {
                feed.send(Message::Changes { response, pinned }).await?;
            }
            if reached_pinned {
                return Ok(());
            }
        }
    }

    fn missing_header(&self, what: &str) -> LiveError {
        LiveError::Request {
            endpoints: self.endpoints.clone(),
            what: what.to_owned(),
            detail: "the response has no header (no revision)".to_owned(),
        }
    }
}

/// Runs `request` under the phase's deadline.
async fn deadline<T>(
    endpoints: &str,
    phase: Phase,
    what: &str,
    request: impl std::future::Future<Output = T>,
) -> Result<T, LiveError> {
    let limit = match phase {
        Phase::Connecting => FIRST_REQUEST_TIMEOUT,
        Phase::Scanning => REQUEST_TIMEOUT,
    };
    tokio::time::timeout(limit, request)
        .await
        .map_err(|_| match phase {
            Phase::Connecting => LiveError::Unreachable {
                endpoints: endpoints.to_owned(),
                detail: format!("no answer to {what} within {}s", limit.as_secs()),
            },
            Phase::Scanning => LiveError::Timeout {
                endpoints: endpoints.to_owned(),
                what: what.to_owned(),
                seconds: limit.as_secs(),
            },
        })
}

/// Whether the scan had read anything yet: decides between "cannot reach"
/// and "lost the connection".
#[derive(Debug, Clone, Copy)]
enum Phase {
    Connecting,
    Scanning,
}

fn split_endpoints(endpoints: &[String]) -> Result<Vec<String>, LiveError> {
    let split: Vec<String> = endpoints
        .iter()
        .flat_map(|element| element.split(','))
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::to_owned)
        .collect();
    if split.is_empty() {
        return Err(LiveError::Config(
            "no etcd endpoint given; pass --endpoints URL[,URL...]".to_owned(),
        ));
    }
    Ok(split)
}

fn tls_options(source: &LiveSource) -> Result<Option<TlsOptions>, LiveError> {
    if source.cacert.is_none() && source.cert.is_none() && source.key.is_none() {
        return Ok(None);
    }
    let mut tls = TlsOptions::new();
    if let Some(path) = &source.cacert {
        tls = tls.ca_certificate(Certificate::from_pem(read_tls_file("CA file", path)?));
    }
    match (&source.cert, &source.key) {
        (Some(cert), Some(key)) => {
            let cert = read_tls_file("client certificate", cert)?;
            let key = SecretBytes::new(read_tls_file("client key", key)?);
            tls = tls.identity(Identity::from_pem(cert, key.expose_secret()));
        }
        (Some(_), None) => {
            return Err(LiveError::Config(
                "--cert needs --key (the client certificate's private key)".to_owned(),
            ))
        }
        (None, Some(_)) => {
            return Err(LiveError::Config(
                "--key needs --cert (the client certificate)".to_owned(),
            ))
        }
        (None, None) => {}
    }
    Ok(Some(tls))
}

fn read_tls_file(what: &'static str, path: &Path) -> Result<Vec<u8>, LiveError> {
    std::fs::read(path).map_err(|source| LiveError::ReadTlsFile {
        what,
        path: path.to_owned(),
        source,
    })
}

fn grpc_status(error: &etcd_client::Error) -> Option<&tonic::Status> {
    match error {
        etcd_client::Error::GRpcStatus(status) => Some(status),
        _ => None,
    }
}

fn is_compacted(error: &etcd_client::Error) -> bool {
    grpc_status(error).is_some_and(|status| status.message().contains("has been compacted"))
}

fn is_future_revision(error: &etcd_client::Error) -> bool {
    grpc_status(error).is_some_and(|status| status.message().contains("future revision"))
}

fn is_too_large(error: &etcd_client::Error) -> bool {
    grpc_status(error).is_some_and(|status| status.message().contains("message length too large"))
}

fn is_auth_message(message: &str) -> bool {
    [
        "authentication failed",
        "user name is empty",
        "invalid auth token",
        "permission denied",
        "user name not found",
    ]
    .iter()
    .any(|needle| message.contains(needle))
}

/// Turns a client error into the error the user can act on.
fn classify(error: etcd_client::Error, endpoints: &str, what: &str, phase: Phase) -> LiveError {
    let detail = error_chain(&error);
    let endpoints = endpoints.to_owned();
    let what = what.to_owned();
    let transport_failure = match &error {
        // etcd answers bad credentials and missing tokens with
        // InvalidArgument; its messages are stable across 3.x.
        etcd_client::Error::GRpcStatus(status) if is_auth_message(status.message()) => {
            return LiveError::Auth {
                endpoints,
                what,
                detail,
            }
        }
        etcd_client::Error::GRpcStatus(status) => match status.code() {
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
                return LiveError::Auth {
                    endpoints,
                    what,
                    detail,
                }
            }
            tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::Internal
            | tonic::Code::DeadlineExceeded => true,
            _ => false,
        },
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::InvalidArgs(_)
        | etcd_client::Error::InvalidUri(_)
        | etcd_client::Error::EndpointError(_) => {
            return LiveError::Config(format!(
                "{detail}; check --endpoints (URL[,URL...], e.g. https://10.0.0.1:2379)"
            ))
        }
        _ => false,
    };
    match (transport_failure, phase) {
        (true, Phase::Connecting) => LiveError::Unreachable { endpoints, detail },
        (true, Phase::Scanning) => LiveError::ConnectionLost {
            endpoints,
            what,
            detail,
        },
        (false, _) => LiveError::Request {
            endpoints,
            what,
            detail,
        },
    }
}

/// The error and its sources, joined: tonic's top-level messages alone
/// ("transport error") do not say what failed.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A key for messages: as text when it is UTF-8, else base64.
fn printable_key(key: &[u8]) -> String {
    let trimmed = key.strip_suffix(&[0]).unwrap_or(key);
    match std::str::from_utf8(trimmed) {
        Ok(text) => format!("{text:?}"),
        Err(_) => {
            use base64::Engine as _;
            format!(
                "base64:{}",
                base64::engine::general_purpose::STANDARD.encode(trimmed)
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_range_increments_the_last_byte_below_ff() {
        assert_eq!(
            prefix_range(b"/registry/secrets/"),
            (
                b"/registry/secrets/".to_vec(),
                b"/registry/secrets0".to_vec()
            )
        );
        assert_eq!(
            prefix_range(b"a\xff\xff"),
            (b"a\xff\xff".to_vec(), b"b".to_vec())
        );
        assert_eq!(prefix_range(b"\xff"), (b"\xff".to_vec(), vec![0]));
        assert_eq!(prefix_range(b""), (vec![0], vec![0]));
    }

    #[test]
    fn in_range_honours_open_end() {
        let (start, end) = prefix_range(b"/registry/");
        assert!(in_range(b"/registry/secrets/a", &start, &end));
        assert!(!in_range(b"/registry0", &start, &end));
        assert!(!in_range(b"/regis", &start, &end));
        assert!(in_range(b"\xff\xff", &[0], &[0]));
    }

    #[test]
    fn endpoints_split_on_commas_and_empty_is_an_error() {
        let split = split_endpoints(&["http://a:1, http://b:2".to_owned()]);
        assert_eq!(
            split.ok(),
            Some(vec!["http://a:1".to_owned(), "http://b:2".to_owned()])
        );
        assert!(matches!(
            split_endpoints(&[" , ".to_owned()]),
            Err(LiveError::Config(_))
        ));
    }

    #[test]
    fn printable_key_uses_base64_for_binary_keys() {
        assert_eq!(printable_key(b"/registry/a\0"), "\"/registry/a\"");
        assert_eq!(printable_key(b"\xff\x00\x01"), "base64:/wAB");
    }
}
