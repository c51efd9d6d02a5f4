//! A live, in-memory mirror of a KV bucket, fed by an ordered JetStream consumer.
//!
//! `async_nats`' own `watch_all` ends at once on an empty bucket, so it cannot keep a cache of
//! a bucket that starts empty; this drives the consumer directly instead. Delivery starts with
//! the last message of every key (deleted keys arrive as their delete/purge marker), then
//! follows every change. [`spawn`] returns once that initial snapshot has been applied, so a
//! backend is ready only when its caches are complete.
//!
//! Changes carry their stream sequence (the KV revision). Sinks apply a change only when it is
//! newer than what they hold, which makes replays after a reconnect harmless and lets writers
//! apply their own writes at once (read-your-writes) without racing the mirror.

use std::time::Duration;

use async_nats::jetstream::consumer::{push, DeliverPolicy};
use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::StreamExt;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::StoreError;

/// One change to a key.
pub struct Change {
    pub key: String,
    pub revision: u64,
    pub at: OffsetDateTime,
    /// `None` when the key was deleted or purged.
    pub value: Option<Bytes>,
}

/// Insert `value` for `key` unless the map already holds that key at `revision` or later:
/// the one rule both caches follow, so replays and late deliveries never move a key back.
pub fn insert_if_newer<V>(
    map: &mut std::collections::HashMap<String, (u64, V)>,
    key: String,
    revision: u64,
    value: V,
) {
    if map.get(&key).is_some_and(|(held, _)| *held >= revision) {
        return;
    }
    map.insert(key, (revision, value));
}

/// Keeps the mirror task alive; dropping it stops the task.
pub struct MirrorHandle {
    task: JoinHandle<()>,
}

impl Drop for MirrorHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const KV_OPERATION: &str = "KV-Operation";

/// Start mirroring `store` into `sink`, and wait until the initial snapshot is applied.
pub async fn spawn<F>(
    client: &async_nats::Client,
    store: &kv::Store,
    sink: F,
) -> Result<MirrorHandle, StoreError>
where
    F: Fn(Change) + Send + Sync + 'static,
{
    let (ready_tx, mut ready_rx) = watch::channel(false);
    let store = store.clone();
    let client = client.clone();
    let bucket = store.name.clone();
    let task = tokio::spawn(async move {
        let mut failures = 0u32;
        loop {
            match follow(&client, &store, &sink, &ready_tx).await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    tracing::warn!(bucket = %store.name, error = %e, "KV mirror interrupted; resubscribing");
                }
            }
            let backoff = Duration::from_millis(100 * u64::from(failures.min(20)) + 50);
            tokio::time::sleep(backoff).await;
        }
    });
    let handle = MirrorHandle { task };
    tokio::time::timeout(Duration::from_secs(30), ready_rx.wait_for(|ready| *ready))
        .await
        .map_err(|_| StoreError::Upstream(format!("timed out loading bucket {bucket}")))?
        .map_err(|_| StoreError::Upstream(format!("mirror of bucket {bucket} stopped")))?;
    Ok(handle)
}

async fn follow<F>(
    client: &async_nats::Client,
    store: &kv::Store,
    sink: &F,
    ready: &watch::Sender<bool>,
) -> Result<(), StoreError>
where
    F: Fn(Change),
{
    let consumer = store
        .stream
        .create_consumer(push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            description: Some("piggybank cache".to_string()),
            filter_subject: format!("{}>", store.prefix),
            deliver_policy: DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await
        .map_err(StoreError::upstream)?;
    if consumer.cached_info().num_pending == 0 {
        ready.send_replace(true);
    }
    let mut messages = consumer.messages().await.map_err(StoreError::upstream)?;
    while let Some(message) = messages.next().await {
        let message = message.map_err(StoreError::upstream)?;
        let info = message.info().map_err(StoreError::upstream)?;
        let (revision, pending, at) = (info.stream_sequence, info.pending, info.published);
        let Some(key) = message.subject.strip_prefix(store.prefix.as_str()) else {
            continue;
        };
        let deleted = message
            .headers
            .as_ref()
            .and_then(|h| h.get(KV_OPERATION))
            .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE");
        sink(Change {
            key: key.to_string(),
            revision,
            at,
            value: (!deleted).then(|| message.payload.clone()),
        });
        if pending == 0 {
            ready.send_replace(true);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::insert_if_newer;
    use std::collections::HashMap;

    #[test]
    fn older_or_equal_revisions_never_replace_newer_ones() {
        let mut map = HashMap::new();
        insert_if_newer(&mut map, "k".into(), 5, "five");
        insert_if_newer(&mut map, "k".into(), 3, "three"); // late watch delivery
        insert_if_newer(&mut map, "k".into(), 5, "replay");
        assert_eq!(map["k"], (5, "five"));
        insert_if_newer(&mut map, "k".into(), 6, "six");
        assert_eq!(map["k"], (6, "six"));
    }
}
