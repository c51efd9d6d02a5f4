//! `rotate`, and what follows it on every instance: the record watch that loads a key
//! another instance added, its activation, and the background re-encryption of the values
//! the current key did not seal. All of it needs the database key held (unsealed), and a
//! `lock` stops it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use serde::Serialize;

use super::key_record;
use super::state::{lock, Seal, SealError};
use crate::backend::BackendError;
use crate::store::StoreError;

/// How long after `rotate` its key becomes current: every instance loads it as a readable
/// key first (they watch the record), so no instance meets a value it cannot open.
pub(crate) const ACTIVATION_DELAY_MS: u64 = 1_000;

/// The first wait before the record watch is resubscribed; it doubles up to
/// [`WATCH_RETRY_MAX`] while the watch keeps ending.
const WATCH_RETRY: std::time::Duration = std::time::Duration::from_millis(500);
const WATCH_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(10);

/// A rotation's new key.
#[derive(Debug, Clone, Serialize)]
pub struct Rotated {
    pub key_id: String,
    pub key_version: usize,
    pub active_from_ms: u64,
}

/// Clears `running` when dropped: a re-encryption stopped by `lock` can run again later.
struct RunningFlag(Arc<Progress>);

impl Drop for RunningFlag {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::SeqCst);
    }
}

/// Background re-encryption after a rotation, as `status` reports it.
#[derive(Default)]
pub(super) struct Progress {
    pub(super) running: AtomicBool,
    pub(super) done: AtomicUsize,
    pub(super) total: AtomicUsize,
    pub(super) resealed: AtomicUsize,
    pub(super) failed: AtomicUsize,
}

impl Seal {
    /// Follow the record: when another instance rotates, load the new key (if unlocked).
    /// The first subscription fails the start; later ones are retried for ever, and each
    /// starts with the current record, so a change missed while resubscribing is loaded
    /// then. Before `initialize` there is no record, and a history watch ends at once: the
    /// record's changes are followed instead, without a resubscription (or a log line) every
    /// 500 ms. A watch that keeps ending is logged once and retried with a doubling wait.
    /// Keyed mode has no record: nothing to follow.
    pub async fn watch(self: &Arc<Self>) -> Result<(), StoreError> {
        use futures::StreamExt as _;
        let Some(record) = &self.record else {
            return Ok(());
        };
        let first = record.watch().await?;
        let (record, this) = (record.clone(), Arc::downgrade(self));
        tokio::spawn(async move {
            let mut updates = Some(first);
            // Consecutive watches that ended: the first is logged, and each waits twice as
            // long as the one before (up to WATCH_RETRY_MAX), so a NATS outage is one line.
            let mut ended = 0u32;
            // Whether `updates` follows changes only (no record when it was made).
            let mut changes_only = false;
            loop {
                if let Some(mut stream) = updates.take() {
                    let mut delivered = false;
                    while let Some(update) = stream.next().await {
                        delivered = true;
                        ended = 0;
                        if let Err(e) = update {
                            // The watch's consumer recovers by itself; keep following it.
                            tracing::warn!(error = %e, "key record watch error");
                            continue;
                        }
                        let Some(seal) = this.upgrade() else {
                            return;
                        };
                        if let Err(e) = seal.reload().await {
                            tracing::warn!(error = %e, "cannot load the changed key record");
                        }
                    }
                    if !delivered && !changes_only {
                        // No record yet (not initialized): async-nats ends a watch with
                        // nothing to deliver at once. Follow changes instead, which waits.
                        match record.watch_changes().await {
                            Ok(changes) => {
                                updates = Some(changes);
                                changes_only = true;
                                // A record written before that subscription: load it now.
                                if let (Ok(Some(_)), Some(seal)) =
                                    (record.entry().await, this.upgrade())
                                {
                                    if let Err(e) = seal.reload().await {
                                        tracing::warn!(error = %e, "cannot load the key record");
                                    }
                                }
                                continue;
                            }
                            Err(e) => tracing::debug!(error = %e, "cannot watch the key record"),
                        }
                    }
                }
                if this.strong_count() == 0 {
                    return;
                }
                let wait = WATCH_RETRY
                    .saturating_mul(2u32.saturating_pow(ended))
                    .min(WATCH_RETRY_MAX);
                match ended {
                    0 => tracing::warn!("the key record watch ended; resubscribing"),
                    _ => tracing::debug!(
                        retry_in_ms = wait.as_millis() as u64,
                        "the key record watch ended again"
                    ),
                }
                ended = ended.saturating_add(1);
                tokio::time::sleep(wait).await;
                match record.watch().await {
                    Ok(stream) => {
                        updates = Some(stream);
                        changes_only = false;
                    }
                    Err(e) => tracing::debug!(error = %e, "cannot watch the key record yet"),
                }
            }
        });
        Ok(())
    }

    /// Add a new data key, current after [`ACTIVATION_DELAY_MS`]; then every value is
    /// re-sealed with it in the background.
    pub async fn rotate(self: &Arc<Self>) -> Result<Rotated, BackendError> {
        let record_store = self.record_store()?;
        let mut entry = record_store
            .entry()
            .await?
            .ok_or(SealError::NotInitialized)?;
        let now = crate::clock::now_ms();
        let active_from = now + ACTIVATION_DELAY_MS;
        let id = {
            let database_key = lock(&self.database_key);
            let database_key = database_key.as_ref().ok_or(BackendError::Sealed)?;
            key_record::rotate(&mut entry.record, database_key, now, active_from)?
        };
        record_store.update(&entry.record, entry.revision).await?;
        self.reload().await?;
        tracing::info!(key_id = %id, "data key rotated");
        Ok(Rotated {
            key_id: id,
            key_version: entry.record.data_keys.len(),
            active_from_ms: active_from,
        })
    }

    /// Re-open the record with the database key held (no-op while sealed): load new keys,
    /// schedule the next activation, and re-seal what the current key did not seal.
    pub(super) fn reload(
        self: &Arc<Self>,
    ) -> futures::future::BoxFuture<'static, Result<(), BackendError>> {
        let this = Arc::clone(self);
        Box::pin(async move {
            let record = this.existing().await?;
            let now = crate::clock::now_ms();
            let epoch = {
                let database_key = lock(&this.database_key);
                let Some(database_key) = database_key.as_ref() else {
                    return Ok(());
                };
                // Read under the database key's lock, which `lock` holds while it bumps the epoch.
                let epoch = this.backend.seal_epoch();
                let (keys, _) = key_record::open(&record, database_key, now)?;
                if !this.backend.replace_keys(epoch, keys) {
                    return Ok(());
                }
                epoch
            };
            if let Some(at) = key_record::pending_activation(&record, now) {
                let later = Arc::clone(&this);
                this.backend.spawn_while_unsealed(epoch, async move {
                    tokio::time::sleep(std::time::Duration::from_millis(at - now)).await;
                    if let Err(e) = later.reload().await {
                        tracing::warn!(error = %e, "cannot activate the rotated key");
                    }
                });
            }
            this.reencrypt_if_needed(epoch);
            Ok(())
        })
    }

    /// Start re-sealing, in the background, every value not under the current key (at most
    /// one run at a time; each run is resumable, so a crash only costs a new run).
    fn reencrypt_if_needed(self: &Arc<Self>, epoch: u64) {
        let Ok(store) = self.backend.unsealed() else {
            return;
        };
        let current = store.keys().current().id().to_string();
        // Which values are stale is known once the mirror holds them all: check again then.
        let Some(stale) = store.secrets().any_needing_reseal(&current) else {
            let this = Arc::clone(self);
            let later = async move {
                let loaded = match this.backend.unsealed() {
                    Ok(store) => store.secrets().loaded().await,
                    Err(_) => return,
                };
                match loaded {
                    Ok(()) => this.reencrypt_if_needed(epoch),
                    Err(e) => tracing::warn!(error = %e, "cannot check for values to re-encrypt"),
                }
            };
            self.backend.spawn_while_unsealed(epoch, later);
            return;
        };
        if !stale || self.reencryption.running.swap(true, Ordering::SeqCst) {
            return;
        }
        let this = Arc::clone(self);
        let work = async move {
            // Cleared however the run ends: finished, or stopped by `lock`.
            let running = RunningFlag(Arc::clone(&this.reencryption));
            let Ok(store) = this.backend.unsealed() else {
                return;
            };
            let progress = Arc::clone(&this.reencryption);
            progress.done.store(0, Ordering::SeqCst);
            let report =
                crate::store::rekey::rekey(store.secrets(), store.keys(), |done, total| {
                    progress.done.store(done, Ordering::SeqCst);
                    progress.total.store(total, Ordering::SeqCst);
                })
                .await;
            let report = match report {
                Ok(report) => report,
                Err(e) => {
                    tracing::warn!(error = %e, "re-encryption could not start");
                    return;
                }
            };
            progress.resealed.store(report.resealed, Ordering::SeqCst);
            progress.failed.store(report.failed.len(), Ordering::SeqCst);
            tracing::info!(
                total = report.total,
                resealed = report.resealed,
                failed = report.failed.len(),
                "re-encryption finished"
            );
            drop(running);
            // A rotation during the run: go again for the newer key.
            let newer = this
                .backend
                .unsealed()
                .is_ok_and(|s| s.keys().current().id() != current);
            if newer {
                this.reencrypt_if_needed(epoch);
            }
        };
        if !self.backend.spawn_while_unsealed(epoch, work) {
            self.reencryption.running.store(false, Ordering::SeqCst);
        }
    }
}
