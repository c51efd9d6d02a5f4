//! `MappingTable`: which secrets each entity may read.
//!
//! Bucket `SECRETS_{name}_state`, key = entity public key (a JWT subject), value = JSON array
//! of secret names: the sample backend's format, so its data is served unchanged.
//!
//! Reads come from memory. Updates are read-modify-write with compare-and-set on the KV
//! revision (`create` for a new entity, `update` otherwise), retried on conflict, so
//! concurrent writers on any instance lose nothing; no lock stream is needed.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, RwLock};

use async_nats::jetstream::kv;
use bytes::Bytes;

use super::mirror::{self, Change, MirrorHandle};
use super::secrets::{page_names, Page, PageRequest};
use super::{validate_entity, validate_name, Bucket, StoreError};

/// Attempts at a compare-and-set before giving up with `Contention`.
const CAS_ATTEMPTS: usize = 32;

/// Entity -> (revision, names it may read).
type Cache = Arc<RwLock<HashMap<String, (u64, HashSet<String>)>>>;

pub struct MappingTable {
    kv: kv::Store,
    cache: Cache,
    _mirror: MirrorHandle,
}

fn parse_names(key: &str, value: &[u8]) -> Result<BTreeSet<String>, StoreError> {
    serde_json::from_slice(value).map_err(|e| StoreError::Corrupt {
        key: key.to_string(),
        why: e.to_string(),
    })
}

fn apply(cache: &Cache, change: Change) {
    let names = match &change.value {
        None => HashSet::new(),
        Some(value) => match parse_names(&change.key, value) {
            Ok(names) => names.into_iter().collect(),
            Err(e) => {
                // Deny by default: a mapping we cannot read grants nothing.
                tracing::warn!(error = %e, "ignoring unreadable mapping");
                HashSet::new()
            }
        },
    };
    let mut map = cache.write().unwrap_or_else(|p| p.into_inner());
    mirror::insert_if_newer(&mut map, change.key, change.revision, names);
}

/// The kind of change an update makes to an entity's set of names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MappingChange {
    Add,
    Remove,
}

impl MappingTable {
    /// Open the mappings bucket in JetStream domain `js_domain` (none: the account's own) and
    /// load it into memory.
    pub async fn open(
        client: &async_nats::Client,
        js_domain: Option<&str>,
        bucket: Bucket<'_>,
    ) -> Result<Self, StoreError> {
        let js = super::jetstream(client, js_domain);
        let kv = bucket.open(&js).await?;
        let cache: Cache = Arc::default();
        let sink = cache.clone();
        let mirror = mirror::spawn(client, &kv, move |change| apply(&sink, change)).await?;
        Ok(Self {
            kv,
            cache,
            _mirror: mirror,
        })
    }

    /// Whether `entity` may read `name`. In memory; no I/O.
    pub fn allows(&self, entity: &str, name: &str) -> bool {
        let map = self.cache.read().unwrap_or_else(|p| p.into_inner());
        map.get(entity)
            .is_some_and(|(_, names)| names.contains(name))
    }

    /// The names `entity` may read, sorted.
    pub fn names(&self, entity: &str) -> Vec<String> {
        let map = self.cache.read().unwrap_or_else(|p| p.into_inner());
        let mut names: Vec<String> = map
            .get(entity)
            .map(|(_, names)| names.iter().cloned().collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    /// One page of the names `entity` may read (see [`page_names`]): only the page is copied,
    /// however many names the entity has.
    pub fn names_page(&self, entity: &str, request: &PageRequest<'_>) -> Page<String> {
        let map = self.cache.read().unwrap_or_else(|p| p.into_inner());
        let Some((_, names)) = map.get(entity) else {
            return Page::default();
        };
        let page = page_names(names.iter().map(String::as_str), request);
        Page {
            items: page.items.into_iter().map(str::to_owned).collect(),
            next: page.next,
        }
    }

    /// One round trip to the bucket's stream: is JetStream answering for this bucket?
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.kv
            .status()
            .await
            .map(|_| ())
            .map_err(StoreError::upstream)
    }

    /// Number of entities with at least one mapping.
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
        entity: &str,
        change: MappingChange,
        names: &BTreeSet<String>,
    ) -> Result<Vec<String>, StoreError> {
        validate_entity(entity)?;
        for name in names {
            validate_name(name)?;
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
                        Change {
                            key: entity.to_string(),
                            revision,
                            at: time::OffsetDateTime::now_utc(),
                            value: Some(value),
                        },
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
