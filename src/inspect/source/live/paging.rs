//! Reading the range: latest values in pages pinned to the revision of the
//! first page (a page too large is asked again with half the limit), the
//! compaction revision found by binary search, and the history replayed by
//! a watch from the compaction revision (see the module doc of
//! [`super`]). Runs on the reader thread and sends what it reads to the
//! sink's side.
use std::time::Duration;

use etcd_client::{GetOptions, GetResponse, WatchOptions};

use super::error::{
    classify, is_compacted, is_future_revision, is_too_large, printable_key, LiveError,
};
use super::session::{deadline, Phase, Session};
use super::{Feed, LiveSource, Message, MAX_RESPONSE_BYTES};

/// A serializable read on a member behind the pinned revision is retried this
/// many times, [`FUTURE_REVISION_PAUSE`] apart, before giving up.
const FUTURE_REVISION_RETRIES: u32 = 40;
const FUTURE_REVISION_PAUSE: Duration = Duration::from_millis(50);

pub(super) async fn fetch(source: &LiveSource, feed: &mut Feed) -> Result<(), LiveError> {
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
pub(super) fn continue_after(page: &GetResponse) -> Option<Vec<u8>> {
    page.kvs().last().map(|kv| {
        let mut next = Vec::with_capacity(kv.key().len() + 1);
        next.extend_from_slice(kv.key());
        next.push(0);
        next
    })
}

impl Session {
    /// One page from `from`. `revision: None` is the first, linearizable
    /// read that fixes the pinned revision; later pages are serializable reads
    /// at the given revision.
    pub(super) async fn range_page(
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
    pub(super) async fn current_revision(&mut self) -> Result<(i64, u64, u64), LiveError> {
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
    pub(super) async fn compact_revision(&mut self, pinned: i64) -> Result<Option<i64>, LiveError> {
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
    pub(super) async fn revision_served(&mut self, revision: i64) -> Result<bool, LiveError> {
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
    pub(super) async fn replay_changes(
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
}
