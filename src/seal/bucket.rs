//! The key record's bucket, `SECRETS_<name>_vault` (history 1): one entry, `keyring`, the
//! [`KeyRecord`] (the data keys and the transit key wrapped by the database key, never a
//! key in clear). Created once (KV `create`, so two initializations cannot both win) and
//! changed only by compare-and-set (`rotate`).

use async_nats::jetstream::kv;

use super::key_record::KeyRecord;
use crate::store::StoreError;

/// The key of the record in its bucket.
pub(crate) const RECORD_KEY: &str = "keyring";

/// The record's bucket.
#[derive(Clone)]
pub struct RecordStore {
    kv: kv::Store,
}

/// A record as read, with the revision a compare-and-set needs.
pub struct RecordEntry {
    pub record: KeyRecord,
    pub revision: u64,
}

impl RecordStore {
    pub fn new(kv: kv::Store) -> Self {
        Self { kv }
    }

    /// The record, if the store is initialized.
    pub async fn get(&self) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self.entry().await?.map(|entry| entry.record))
    }

    /// The record and its revision, if the store is initialized.
    pub async fn entry(&self) -> Result<Option<RecordEntry>, StoreError> {
        let Some(entry) = self
            .kv
            .entry(RECORD_KEY)
            .await
            .map_err(StoreError::upstream)?
        else {
            return Ok(None);
        };
        if entry.operation != kv::Operation::Put {
            return Ok(None);
        }
        Ok(Some(RecordEntry {
            record: decode(&entry.value)?,
            revision: entry.revision,
        }))
    }

    /// Store the first record; [`StoreError::AlreadyExists`] if there is one.
    pub async fn create(&self, record: &KeyRecord) -> Result<(), StoreError> {
        self.kv
            .create(RECORD_KEY, encode(record)?.into())
            .await
            .map_err(|e| match e.kind() {
                kv::CreateErrorKind::AlreadyExists => StoreError::AlreadyExists(RECORD_KEY.into()),
                _ => StoreError::upstream(e),
            })?;
        Ok(())
    }

    /// Replace the record read at `revision`; [`StoreError::Contention`] if it changed since.
    pub async fn update(&self, record: &KeyRecord, revision: u64) -> Result<(), StoreError> {
        self.kv
            .update(RECORD_KEY, encode(record)?.into(), revision)
            .await
            .map_err(|e| match e.kind() {
                kv::UpdateErrorKind::WrongLastRevision => StoreError::Contention(RECORD_KEY.into()),
                _ => StoreError::upstream(e),
            })?;
        Ok(())
    }

    /// Follow the record: the current entry first, then every change. When there is no
    /// record yet, the stream ends at once (async-nats ends a history watch with nothing to
    /// deliver): follow it with [`RecordStore::watch_changes`] then.
    pub async fn watch(&self) -> Result<kv::Watch, StoreError> {
        self.kv
            .watch_with_history(RECORD_KEY)
            .await
            .map_err(StoreError::upstream)
    }

    /// Follow the record's changes from now on (no current entry): a stream that stays open
    /// while there is no record.
    pub async fn watch_changes(&self) -> Result<kv::Watch, StoreError> {
        self.kv
            .watch(RECORD_KEY)
            .await
            .map_err(StoreError::upstream)
    }
}

fn encode(record: &KeyRecord) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(record).map_err(|e| StoreError::Corrupt {
        key: RECORD_KEY.into(),
        why: e.to_string(),
    })
}

fn decode(bytes: &[u8]) -> Result<KeyRecord, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: RECORD_KEY.into(),
        why: e.to_string(),
    })
}
