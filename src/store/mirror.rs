//! A live, in-memory mirror of a KV bucket, fed by an ordered read of its stream
//! ([`super::kv_stream`]).
//!
//! `async_nats`' own `watch_all` ends at once on an empty bucket, so it cannot keep a cache of
//! a bucket that starts empty; this drives the consumer directly instead. Delivery starts with
//! what the bucket holds (every message, or the last of every key when the bucket keeps many
//! older versions: see [`load_policy`]), then follows every change. Once the consumer reports
//! nothing pending, the mirror is *loaded*: it holds every key, and lags the bucket only by
//! the delivery of the latest changes.
//!
//! [`spawn`] returns at once. Whoever needs the whole bucket waits with
//! [`MirrorHandle::loaded`], which fails only when the load stops making progress for
//! [`STALL`], never on total time, so a large bucket cannot time a start out. Until the load
//! ends, the stores read single keys from the bucket itself (see `SecretStore::current` and
//! `MappingTable::permits`).
//!
//! Changes carry their stream sequence (the KV revision). Sinks apply a change only when it is
//! newer than what they hold ([`insert_if_newer`]), which makes replays after a reconnect
//! harmless and lets writers apply their own writes at once (read-your-writes) without racing
//! the mirror. A sink gets the changes that have arrived in batches of up to [`BATCH`], so it
//! takes its lock once per batch, not once per key; that keeps the mirror ahead of the
//! client's subscription buffer (65,536 messages), whose overflow would drop messages and make
//! the consumer start again from the last one applied. A consumer made after an interruption
//! resumes after the last stream sequence applied, never from the start.

use std::collections::btree_map::{BTreeMap, Entry};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::{self, kv};
use futures::{FutureExt, Stream, StreamExt};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::kv_stream::KvStream;
use super::StoreError;

/// Most changes handed to a sink at once (what has already arrived, never waited for).
pub(crate) const BATCH: usize = 1024;
/// A wait for the load fails once the load has made no progress (no consumer made, no change
/// applied) for this long.
pub(crate) const STALL: Duration = Duration::from_secs(30);
/// Timeout of the mirror's JetStream API requests. Making a consumer that starts at the last
/// message of every key of a large bucket takes the server seconds (about 1 to 3 s for a
/// million keys on 2 busy cores), more than async-nats' default of 5 s allows for larger ones.
const API_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) use super::kv_stream::Change;

/// What [`insert_if_newer`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Inserted<V> {
    /// The map already held that key at this revision or a later one: nothing changed.
    Stale,
    /// The key was new.
    New,
    /// The key's older value, now replaced.
    Replaced(V),
}

/// Insert `value` for `key` unless the map already holds that key at `revision` or later:
/// the one rule both caches follow, so replays and late deliveries never move a key back.
pub fn insert_if_newer<V>(
    map: &mut BTreeMap<Box<str>, (u64, V)>,
    key: String,
    revision: u64,
    value: V,
) -> Inserted<V> {
    match map.entry(key.into_boxed_str()) {
        Entry::Vacant(slot) => {
            slot.insert((revision, value));
            Inserted::New
        }
        Entry::Occupied(slot) if slot.get().0 >= revision => Inserted::Stale,
        Entry::Occupied(mut slot) => {
            Inserted::Replaced(std::mem::replace(slot.get_mut(), (revision, value)).1)
        }
    }
}

/// How the load reads a bucket holding `messages` messages under `keys` keys: every message
/// when there are at most a quarter more messages than keys, else only the last of each key.
///
/// A consumer that starts at the last message of every key costs the server a pass over
/// every key before it delivers anything (measured at 0.7 to 3.3 s for a million keys, against
/// 0.05 to 0.1 s for one that starts at the first message), and reading a version that a
/// later one replaces is harmless ([`insert_if_newer`]), so a bucket with little history is
/// cheaper read whole.
pub(crate) fn load_policy(messages: u64, keys: u64) -> DeliverPolicy {
    if messages <= keys.saturating_add(keys / 4) {
        DeliverPolicy::All
    } else {
        DeliverPolicy::LastPerSubject
    }
}

/// Where a consumer resumes: after `last`, the highest stream sequence applied (0: none, so
/// from the start).
fn after(last: u64) -> DeliverPolicy {
    match last {
        0 => DeliverPolicy::All,
        _ => DeliverPolicy::ByStartSequence {
            start_sequence: last + 1,
        },
    }
}

/// How far a mirror has got, shared by its task and its handle.
struct Progress {
    bucket: String,
    /// Which store this mirrors, for metrics: `secrets` or `mappings`.
    store: &'static str,
    loaded: watch::Sender<bool>,
    /// Messages the consumer had yet to deliver after the last one applied.
    pending: AtomicU64,
    /// Counts every sign of progress: a consumer made, a batch applied.
    steps: AtomicU64,
    started: std::time::Instant,
}

impl Progress {
    fn step(&self) {
        self.steps.fetch_add(1, Ordering::Relaxed);
    }
}

/// Keeps the mirror task alive (dropping it stops the task) and tells how far it got.
pub struct MirrorHandle {
    task: JoinHandle<()>,
    progress: Arc<Progress>,
}

impl Drop for MirrorHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MirrorHandle {
    /// Whether the initial load has ended: from then on the mirror holds every key, and lags
    /// the bucket only by the delivery of the latest changes.
    pub fn is_loaded(&self) -> bool {
        *self.progress.loaded.borrow()
    }

    /// Messages not applied yet, as the consumer last reported: the whole bucket at first,
    /// then, once loaded, the changes still in flight (0 when caught up).
    pub fn pending(&self) -> u64 {
        self.progress.pending.load(Ordering::Relaxed)
    }

    /// `secrets` or `mappings`.
    pub fn store(&self) -> &'static str {
        self.progress.store
    }

    /// Wait until the initial load has ended. Fails when it makes no progress for `STALL`
    /// (however long it takes while it does).
    pub async fn loaded(&self) -> Result<(), StoreError> {
        let mut loaded = self.progress.loaded.subscribe();
        loop {
            let steps = self.progress.steps.load(Ordering::Relaxed);
            match tokio::time::timeout(STALL, loaded.wait_for(|done| *done)).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(_)) => {
                    return Err(StoreError::Upstream(format!(
                        "the mirror of bucket {} stopped",
                        self.progress.bucket
                    )))
                }
                Err(_) if self.progress.steps.load(Ordering::Relaxed) == steps => {
                    return Err(StoreError::Upstream(format!(
                        "bucket {} is still loading and made no progress for {} s",
                        self.progress.bucket,
                        STALL.as_secs()
                    )))
                }
                Err(_) => {}
            }
        }
    }
}

/// Start mirroring `store` into `sink`; `name` says which store it is (`secrets` or
/// `mappings`, for metrics). Returns at once: the load runs in the background (see
/// [`MirrorHandle::loaded`]).
pub fn spawn<F>(
    client: &async_nats::Client,
    js: &jetstream::Context,
    store: &kv::Store,
    name: &'static str,
    sink: F,
) -> MirrorHandle
where
    F: Fn(Vec<Change>) + Send + Sync + 'static,
{
    let progress = Arc::new(Progress {
        bucket: store.name.clone(),
        store: name,
        loaded: watch::channel(false).0,
        pending: AtomicU64::new(0),
        steps: AtomicU64::new(0),
        started: std::time::Instant::now(),
    });
    let mut js = js.clone();
    js.set_timeout(API_TIMEOUT);
    let mirror = Mirror {
        client: client.clone(),
        js,
        kv: KvStream::of(store),
        progress: Arc::clone(&progress),
        sink,
    };
    let task = tokio::spawn(mirror.run());
    MirrorHandle { task, progress }
}

struct Mirror<F> {
    client: async_nats::Client,
    js: jetstream::Context,
    kv: KvStream,
    progress: Arc<Progress>,
    sink: F,
}

impl<F: Fn(Vec<Change>)> Mirror<F> {
    async fn run(self) {
        // The highest stream sequence applied: where a new consumer resumes.
        let mut last = 0u64;
        let mut failures = 0u32;
        loop {
            let before = last;
            let error = match self.follow(&mut last).await {
                Ok(()) => "the consumer ended".to_string(),
                Err(e) => e.to_string(),
            };
            // Back off further only while nothing gets through.
            failures = if last > before { 1 } else { failures + 1 };
            tracing::warn!(
                bucket = %self.progress.bucket, error, resume_after = last,
                "KV mirror interrupted; resubscribing"
            );
            let backoff = Duration::from_millis(100 * u64::from(failures.min(20)) + 50);
            tokio::time::sleep(backoff).await;
        }
    }

    /// Read the bucket, then follow every change as it happens. The first consumer starts as
    /// [`load_policy`] says; one made after an interruption resumes after what was applied.
    async fn follow(&self, last: &mut u64) -> Result<(), StoreError> {
        let start = match *last {
            0 => {
                let stream = self.kv.stream().get_info().await;
                let state = stream.map_err(StoreError::upstream)?.state;
                load_policy(state.messages, state.subjects_count)
            }
            applied => after(applied),
        };
        let (pending, messages) = self
            .kv
            .ordered(&self.client, &self.js, start, false, "piggybank cache")
            .await?;
        self.progress.step();
        self.progress.pending.store(pending, Ordering::Relaxed);
        if pending == 0 {
            self.loaded();
        }
        self.apply(messages, last).await
    }

    /// Mark the mirror loaded (once).
    fn loaded(&self) {
        // Every change delivered while caught up reports nothing pending: notify only once.
        let first = self
            .progress
            .loaded
            .send_if_modified(|loaded| !std::mem::replace(loaded, true));
        if first {
            tracing::info!(
                bucket = %self.progress.bucket,
                load_ms = self.progress.started.elapsed().as_millis() as u64,
                "KV mirror loaded"
            );
        }
    }

    /// Hand `messages` to the sink, a batch of what has arrived at a time, recording `last`,
    /// until they end. The mirror is loaded once nothing is pending.
    async fn apply<S, E>(&self, messages: S, last: &mut u64) -> Result<(), StoreError>
    where
        S: Stream<Item = Result<jetstream::Message, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut messages = messages;
        // Reused: `ready_chunks` would allocate room for a full batch of messages (hundreds
        // of KiB) for every change that arrives alone.
        let mut batch = Vec::new();
        while let Some(first) = messages.next().await {
            batch.push(first);
            while batch.len() < BATCH {
                match messages.next().now_or_never() {
                    Some(Some(message)) => batch.push(message),
                    // Ended: the next `next()` says so again.
                    Some(None) | None => break,
                }
            }
            let mut changes = Vec::with_capacity(batch.len());
            let mut newest = *last;
            let mut pending = None;
            let mut failed = None;
            let now = OffsetDateTime::now_utc();
            let loaded = self.progress.loaded.borrow().to_owned();
            for message in batch.drain(..) {
                let message = match message {
                    Ok(message) => message,
                    Err(e) => {
                        failed = Some(StoreError::upstream(e));
                        break;
                    }
                };
                let message = match self.kv.message(&message) {
                    Ok(message) => message,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                };
                if loaded {
                    let lag = (now - message.at).as_seconds_f64().max(0.0);
                    crate::metrics::mirror_lag(self.progress.store, lag);
                }
                newest = newest.max(message.revision);
                pending = Some(message.pending);
                changes.extend(message.change);
            }
            if !changes.is_empty() {
                (self.sink)(changes);
            }
            *last = newest;
            self.progress.step();
            if let Some(left) = pending {
                self.progress.pending.store(left, Ordering::Relaxed);
            }
            if let Some(e) = failed {
                return Err(e);
            }
            if pending == Some(0) {
                self.loaded();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_or_equal_revisions_never_replace_newer_ones() {
        let mut map = BTreeMap::new();
        assert_eq!(
            insert_if_newer(&mut map, "k".into(), 5, "five"),
            Inserted::New
        );
        // A late watch delivery, and a replay.
        assert_eq!(
            insert_if_newer(&mut map, "k".into(), 3, "three"),
            Inserted::Stale
        );
        assert_eq!(
            insert_if_newer(&mut map, "k".into(), 5, "replay"),
            Inserted::Stale
        );
        assert_eq!(map["k"], (5, "five"));
        assert_eq!(
            insert_if_newer(&mut map, "k".into(), 6, "six"),
            Inserted::Replaced("five")
        );
        assert_eq!(map["k"], (6, "six"));
    }

    #[test]
    fn a_bucket_with_little_history_is_read_whole() {
        assert_eq!(load_policy(0, 0), DeliverPolicy::All);
        assert_eq!(load_policy(1_000_000, 1_000_000), DeliverPolicy::All);
        assert_eq!(load_policy(1_250_000, 1_000_000), DeliverPolicy::All);
        assert_eq!(
            load_policy(1_250_001, 1_000_000),
            DeliverPolicy::LastPerSubject
        );
        // Every secret rotated a few times: only the last version of each is read.
        assert_eq!(load_policy(300, 100), DeliverPolicy::LastPerSubject);
        assert_eq!(load_policy(u64::MAX, u64::MAX), DeliverPolicy::All);
    }
}
