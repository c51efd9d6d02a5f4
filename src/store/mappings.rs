//! `MappingTable`: which secrets each entity may read.
//!
//! Bucket `SECRETS_{name}_state`, key = entity public key (a JWT subject), value = JSON array
//! of secret names: the sample backend's format, so its data is served unchanged.
//!
//! Reads come from memory once the mirror is loaded. While it loads, the mirror may still
//! hold a grant that was revoked since, so [`MappingTable::permits`] reads the entity's
//! mapping from the bucket instead (one request), and the memory-only
//! [`MappingTable::allows`] grants nothing: an incomplete mirror can only deny, never grant.
//! Updates are read-modify-write with compare-and-set on the KV revision (`create` for a new
//! entity, `update` otherwise), retried on conflict, so concurrent writers on any instance
//! lose nothing; no lock stream is needed.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, RwLock};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;

use super::kv_stream;
use super::mirror::{self, Change, MirrorHandle};
use super::page::{page_names, Page, PageRequest};
use super::{validate_grantable, Bucket, EntityKey, StoreError};

/// Attempts at a compare-and-set before giving up with `Contention`.
const CAS_ATTEMPTS: usize = 32;

/// Entity -> (revision, names it may read).
type Cache = Arc<RwLock<BTreeMap<Box<str>, (u64, HashSet<String>)>>>;

pub struct MappingTable {
    kv: kv::Store,
    cache: Cache,
    mirror: MirrorHandle,
}

fn parse_names(key: &str, value: &[u8]) -> Result<BTreeSet<String>, StoreError> {
    serde_json::from_slice(value).map_err(|e| StoreError::Corrupt {
        key: key.to_string(),
        why: e.to_string(),
    })
}

/// The names a stored mapping grants: none for a deletion, and none (deny by default) for a
/// value that cannot be read.
fn granted(key: &str, value: Option<&[u8]>) -> HashSet<String> {
    match value.map(|value| parse_names(key, value)) {
        None => HashSet::new(),
        Some(Ok(names)) => names.into_iter().collect(),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "ignoring unreadable mapping");
            HashSet::new()
        }
    }
}

/// Apply a batch of changes under one write lock; they are parsed before it is taken.
fn apply(cache: &Cache, changes: Vec<Change>) {
    let changes: Vec<(String, u64, HashSet<String>)> = changes
        .into_iter()
        .map(|change| {
            let names = granted(&change.key, change.value.as_deref());
            (change.key, change.revision, names)
        })
        .collect();
    let mut map = cache.write().unwrap_or_else(|p| p.into_inner());
    for (key, revision, names) in changes {
        mirror::insert_if_newer(&mut map, key, revision, names);
    }
}

/// The kind of change an update makes to an entity's set of names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MappingChange {
    Add,
    Remove,
}

impl MappingTable {
    /// Open the mappings bucket in JetStream domain `js_domain` (none: the account's own) and
    /// start loading it into memory. Returns before the load ends.
    pub async fn open(
        client: &async_nats::Client,
        js_domain: Option<&str>,
        bucket: Bucket<'_>,
    ) -> Result<Self, StoreError> {
        let js = super::jetstream(client, js_domain);
        let kv = bucket.open(&js).await?;
        let cache: Cache = Arc::default();
        let sink = cache.clone();
        let mirror = mirror::spawn(client, &js, &kv, "mappings", move |changes| {
            apply(&sink, changes)
        });
        Ok(Self { kv, cache, mirror })
    }

    /// Whether the mirror holds the whole bucket (the initial load has ended).
    pub fn is_loaded(&self) -> bool {
        self.mirror.is_loaded()
    }

    /// Wait until the mirror holds the whole bucket; fails only if the load stops making
    /// progress for 30 s.
    pub async fn loaded(&self) -> Result<(), StoreError> {
        self.mirror.loaded().await
    }

    /// The mirror's load and lag.
    pub fn mirror(&self) -> &MirrorHandle {
        &self.mirror
    }

    /// Whether `entity` may read `name`, from memory; no I/O. `false` until the mirror is
    /// loaded (see [`MappingTable::permits`]).
    pub fn allows(&self, entity: &EntityKey, name: &str) -> bool {
        if !self.is_loaded() {
            return false;
        }
        let map = self.cache.read().unwrap_or_else(|p| p.into_inner());
        map.get(entity.as_str())
            .is_some_and(|(_, names)| names.contains(name))
    }

    /// Whether `entity` may read `name`: from memory once the mirror is loaded, before that
    /// from the entity's mapping in the bucket (one read of its last message, on the stream's
    /// leader).
    pub async fn permits(&self, entity: &EntityKey, name: &str) -> Result<bool, StoreError> {
        if self.is_loaded() {
            return Ok(self.allows(entity, name));
        }
        Ok(self.stored(entity).await?.contains(name))
    }

    /// The names the bucket grants `entity` now, read from the stream's leader. The subject
    /// names one entity's key: an [`EntityKey`] holds no wildcard.
    async fn stored(&self, entity: &EntityKey) -> Result<HashSet<String>, StoreError> {
        let subject = kv_stream::key_subject(&self.kv, entity.as_str());
        match self
            .kv
            .stream
            .get_last_raw_message_by_subject(&subject)
            .await
        {
            Ok(message) if kv_stream::is_deletion(Some(&message.headers)) => Ok(HashSet::new()),
            Ok(message) => Ok(granted(entity.as_str(), Some(&message.payload))),
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
                Ok(HashSet::new())
            }
            Err(e) => Err(StoreError::upstream(e)),
        }
    }

    /// One page of the names `entity` may read (see [`page_names`]): only the page is copied,
    /// however many names the entity has. From the bucket while the mirror loads.
    pub(crate) async fn names_page(
        &self,
        entity: &EntityKey,
        request: &PageRequest<'_>,
    ) -> Result<Page<String>, StoreError> {
        let page = |names: &HashSet<String>| {
            let page = page_names(names.iter().map(String::as_str), request);
            Page {
                items: page.items.into_iter().map(str::to_owned).collect(),
                next: page.next,
            }
        };
        if !self.is_loaded() {
            return Ok(page(&self.stored(entity).await?));
        }
        let map = self.cache.read().unwrap_or_else(|p| p.into_inner());
        Ok(map
            .get(entity.as_str())
            .map(|(_, names)| page(names))
            .unwrap_or_default())
    }

    /// One round trip to the bucket's stream: is JetStream answering for this bucket?
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.kv
            .status()
            .await
            .map(|_| ())
            .map_err(StoreError::upstream)
    }

    /// Number of entities with at least one mapping (so far, while the mirror loads).
    pub fn len(&self) -> usize {
        let map = self.cache.read().unwrap_or_else(|p| p.into_inner());
        map.values().filter(|(_, names)| !names.is_empty()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Add or remove `names` for `entity`, atomically with respect to other writers.
    /// Returns the entity's resulting set of names.
    pub async fn update(
        &self,
        entity: &EntityKey,
        change: MappingChange,
        names: &BTreeSet<String>,
    ) -> Result<Vec<String>, StoreError> {
        let entity = entity.as_str();
        for name in names {
            validate_grantable(name)?;
        }
        for _ in 0..CAS_ATTEMPTS {
            let current = self.kv.entry(entity).await.map_err(StoreError::upstream)?;
            let (mut set, revision) = match &current {
                Some(e) if e.operation == kv::Operation::Put => {
                    (parse_names(entity, &e.value)?, Some(e.revision))
                }
                Some(e) => (BTreeSet::new(), Some(e.revision)),
                None => (BTreeSet::new(), None),
            };
            match change {
                MappingChange::Add => set.extend(names.iter().cloned()),
                MappingChange::Remove => set.retain(|n| !names.contains(n)),
            }
            let value = Bytes::from(serde_json::to_vec(&set).map_err(StoreError::upstream)?);
            let written = match revision {
                Some(rev) => self
                    .kv
                    .update(entity, value.clone(), rev)
                    .await
                    .map_err(|e| {
                        (
                            e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                            e.to_string(),
                        )
                    }),
                None => self.kv.create(entity, value.clone()).await.map_err(|e| {
                    (
                        e.kind() == kv::CreateErrorKind::AlreadyExists,
                        e.to_string(),
                    )
                }),
            };
            match written {
                Ok(revision) => {
                    apply(
                        &self.cache,
                        vec![Change {
                            key: entity.to_string(),
                            revision,
                            at: time::OffsetDateTime::now_utc(),
                            value: Some(value),
                        }],
                    );
                    return Ok(set.into_iter().collect());
                }
                Err((true, _)) => continue,
                Err((false, e)) => return Err(StoreError::Upstream(e)),
            }
        }
        Err(StoreError::Contention(entity.to_string()))
    }
}
