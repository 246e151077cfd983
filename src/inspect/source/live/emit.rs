//! Turning what etcd sent (range pages, watch responses) into observations:
//! only keys inside the range, revisions with their sub revision (a
//! change's position within its revision), puts and deletes counted.
use etcd_client::{GetResponse, WatchResponse};

use crate::inspect::{ObservationSink, Observed, Revision};

/// The sink's side: turns pages and watch responses into observations.
pub(super) struct Emitter {
    pub(super) start: Vec<u8>,
    pub(super) end: Vec<u8>,
    /// Revision of the last change seen on the history watch, and the index
    /// of that change within its revision (its sub revision).
    pub(super) current_main: i64,
    pub(super) sub: i64,
    pub(super) puts: u64,
    pub(super) deletes: u64,
}

impl Emitter {
    pub(super) fn page(&mut self, page: &GetResponse, sink: &mut dyn ObservationSink) {
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

    pub(super) fn changes(
        &mut self,
        response: &WatchResponse,
        pinned: i64,
        sink: &mut dyn ObservationSink,
    ) {
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
pub(super) fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    key >= start && (end == [0] || key < end)
}
