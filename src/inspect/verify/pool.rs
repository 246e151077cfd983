//! Runs a [`Verifier`] on worker threads for the scan engine.
//!
//! The engine's `observe` is synchronous and may run inside the live source's
//! tokio runtime, so it must neither decrypt (too slow for one thread) nor
//! block on async work. It copies each value to verify (ciphertext only) into
//! a batch; full batches go through a bounded channel to the workers. Memory
//! is bounded by (channel capacity + workers + 1) batches of about
//! [`BATCH_BYTES`] (a single larger value makes its own batch). Workers call
//! the verifier, which reaches the plugin through its own thread
//! ([`super::plugin`]), so nothing here needs a runtime.

use std::collections::BTreeMap;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::{ExpectedObject, Verdict, Verifier, VerifyFailure, VerifySummary};
use crate::inspect::classify::{Classifier, Provider};

/// A batch is sent when it holds this many bytes of keys and values.
pub const BATCH_BYTES: usize = 256 * 1024;
/// ... or this many values.
const BATCH_ITEMS: usize = 512;

/// One value in a batch: its caller-chosen tag, where its key and value sit
/// in the batch's buffer, and what it must decrypt to.
struct Item {
    tag: u64,
    key_end: usize,
    value_end: usize,
    provider: Provider,
    expected: ExpectedObject,
}

#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    items: Vec<Item>,
}

impl Batch {
    /// An empty batch, reusing a returned one's buffers when there is one:
    /// a fresh 256 KiB buffer is a new mapping whose pages fault in and
    /// unmap again per batch, a cost the scan thread (the critical path)
    /// would pay on every batch.
    fn reuse(spare: &Mutex<Vec<Batch>>) -> Batch {
        match spare.lock().ok().and_then(|mut spare| spare.pop()) {
            Some(batch) => batch,
            None => Batch {
                bytes: Vec::with_capacity(BATCH_BYTES + BATCH_SLACK),
                items: Vec::with_capacity(BATCH_ITEMS),
            },
        }
    }
}

/// Room past [`BATCH_BYTES`] so a batch's last value rarely reallocates it.
const BATCH_SLACK: usize = 64 * 1024;

/// What a worker found.
#[derive(Default)]
struct WorkerOutcome {
    failures: Vec<(u64, VerifyFailure)>,
    verified: BTreeMap<Provider, u64>,
}

/// Verification on worker threads; see the module doc.
pub struct VerifyPool {
    verifier: Arc<Verifier>,
    sender: Option<SyncSender<Batch>>,
    workers: Vec<JoinHandle<WorkerOutcome>>,
    batch: Batch,
    /// Batches the workers are done with (ciphertext only, cleared).
    spare: Arc<Mutex<Vec<Batch>>>,
    not_verified: BTreeMap<Provider, u64>,
}

impl std::fmt::Debug for VerifyPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyPool")
            .field("verifier", &self.verifier)
            .field("workers", &self.workers.len())
            .finish_non_exhaustive()
    }
}

/// The outcome of a pool: failures by tag, and the summary.
#[derive(Debug, Default)]
pub struct PoolOutcome {
    /// `(tag, failure)` of every value that failed, in no particular order.
    pub failures: Vec<(u64, VerifyFailure)>,
    /// Counts for the report.
    pub summary: VerifySummary,
}

impl VerifyPool {
    /// Starts `threads` workers (at least one) verifying with `verifier`;
    /// values are classified again with `classifier`.
    pub fn start(verifier: Arc<Verifier>, classifier: Classifier, threads: usize) -> Self {
        let threads = threads.max(1);
        let (sender, receiver) = sync_channel::<Batch>(threads * 2);
        let receiver = Arc::new(Mutex::new(receiver));
        let classifier = Arc::new(classifier);
        let spare = Arc::new(Mutex::new(Vec::new()));
        let workers = (0..threads)
            .map(|_| {
                let receiver = Arc::clone(&receiver);
                let verifier = Arc::clone(&verifier);
                let classifier = Arc::clone(&classifier);
                let spare = Arc::clone(&spare);
                std::thread::spawn(move || work(&receiver, &verifier, &classifier, &spare))
            })
            .collect();
        let batch = Batch::reuse(&spare);
        Self {
            verifier,
            sender: Some(sender),
            workers,
            batch,
            spare,
            not_verified: BTreeMap::new(),
        }
    }

    /// Worker count for this machine: one per CPU, at most 8.
    pub fn default_threads() -> usize {
        std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(1)
            .clamp(1, 8)
    }

    /// Whether values of `provider` are verified at all.
    pub fn verifies(&self, provider: Provider) -> bool {
        self.verifier.verifies(provider)
    }

    /// Queues one value (classified as `provider`) for verification, or counts
    /// it as not verifiable. May block while the workers catch up.
    pub fn submit(
        &mut self,
        tag: u64,
        provider: Provider,
        etcd_key: &[u8],
        expected: ExpectedObject,
        value: &[u8],
    ) {
        if !provider.is_encrypted() {
            return;
        }
        if !self.verifier.verifies(provider) {
            *self.not_verified.entry(provider).or_default() += 1;
            return;
        }
        let batch = &mut self.batch;
        batch.bytes.extend_from_slice(etcd_key);
        let key_end = batch.bytes.len();
        batch.bytes.extend_from_slice(value);
        batch.items.push(Item {
            tag,
            key_end,
            value_end: batch.bytes.len(),
            provider,
            expected,
        });
        if batch.bytes.len() >= BATCH_BYTES || batch.items.len() >= BATCH_ITEMS {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.batch.items.is_empty() {
            return;
        }
        let batch = std::mem::replace(&mut self.batch, Batch::reuse(&self.spare));
        if let Some(sender) = &self.sender {
            // Fails only when every worker is gone (a worker panicked); the
            // values are then reported as not verified by `finish`.
            if let Err(error) = sender.send(batch) {
                for item in error.0.items {
                    *self.not_verified.entry(item.provider).or_default() += 1;
                }
            }
        }
    }

    /// Waits for the workers and returns what they found.
    pub fn finish(mut self) -> PoolOutcome {
        self.flush();
        drop(self.sender.take());
        let mut outcome = PoolOutcome::default();
        let mut lost_workers = 0;
        for worker in self.workers.drain(..) {
            match worker.join() {
                Ok(found) => {
                    outcome.failures.extend(found.failures);
                    for (provider, count) in found.verified {
                        *outcome.summary.verified.entry(provider).or_default() += count;
                    }
                }
                Err(_) => lost_workers += 1,
            }
        }
        for (_, failure) in &outcome.failures {
            *outcome.summary.failed.entry(*failure).or_default() += 1;
        }
        if lost_workers > 0 {
            // Cannot happen without a bug; say so rather than claim a clean result.
            outcome.summary.unwrap_failures.push(super::UnwrapFailure {
                key_id: String::new(),
                failure: VerifyFailure::PluginUnreachable,
                detail: format!("{lost_workers} verification worker(s) stopped unexpectedly"),
            });
        }
        outcome.summary.not_verified = std::mem::take(&mut self.not_verified);
        outcome.summary.kms_source = self.verifier.kms_source();
        outcome.summary.with_encryption_config = self.verifier.verifies(Provider::Aescbc);
        outcome.summary.decrypt_calls = self.verifier.decrypt_calls();
        outcome
            .summary
            .unwrap_failures
            .extend(self.verifier.unwrap_failures());
        outcome
    }
}

fn work(
    receiver: &Mutex<Receiver<Batch>>,
    verifier: &Verifier,
    classifier: &Classifier,
    spare: &Mutex<Vec<Batch>>,
) -> WorkerOutcome {
    let mut outcome = WorkerOutcome::default();
    loop {
        let mut batch = match receiver.lock() {
            Ok(receiver) => match receiver.recv() {
                Ok(batch) => batch,
                Err(_) => return outcome,
            },
            Err(_) => return outcome,
        };
        let mut start = 0;
        for item in &batch.items {
            let key = batch.bytes.get(start..item.key_end).unwrap_or(&[]);
            let value = batch.bytes.get(item.key_end..item.value_end).unwrap_or(&[]);
            start = item.value_end;
            match verifier.verify(classifier, key, item.expected, value) {
                Verdict::Verified => *outcome.verified.entry(item.provider).or_default() += 1,
                Verdict::Failed(failure) => outcome.failures.push((item.tag, failure)),
                Verdict::NotVerified => {}
            }
        }
        batch.bytes.clear();
        batch.items.clear();
        // At most one spare per batch in flight; the rest are freed.
        if let Ok(mut spare) = spare.lock() {
            if spare.len() < SPARE_BATCHES {
                spare.push(batch);
            }
        }
    }
}

/// Returned batches kept for reuse.
const SPARE_BATCHES: usize = 16;
