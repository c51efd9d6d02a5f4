//! `MappingTable`: which secrets each entity, and each wadm application, may read.
//!
//! Bucket `SECRETS_{name}_state`, value = JSON array of secret names. The key is a
//! [`Grantee`]'s: an entity's public key (a JWT subject; the sample backend's format, so its
//! data is served unchanged), or `app.<application>` for a grant to a wadm application. The
//! two never collide, by construction: an entity key is a checked nkey (base32, no `.`), and
//! an application key always has a `.` after `app`; [`Grantee::from_kv_key`] reads a key
//! back as exactly one of them.
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
use super::{validate_grantable, ApplicationName, Bucket, EntityKey, StoreError};

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

/// The first token of an application grant's key: `app.<application>`.
pub(crate) const APPLICATION_KEY_PREFIX: &str = "app.";

/// Who a grant is to: an entity (by its key) or a wadm application (by its name).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Grantee {
    Entity(EntityKey),
    Application(ApplicationName),
}

impl Grantee {
    /// An entity, from its public key (checked).
    pub fn entity(key: &str) -> Result<Self, StoreError> {
        Ok(Grantee::Entity(EntityKey::parse(key)?))
    }

    /// A wadm application, from its name (checked).
    pub fn application(name: &str) -> Result<Self, StoreError> {
        Ok(Grantee::Application(ApplicationName::parse(name)?))
    }

    /// Its key in the bucket: the entity's key (borrowed: the get path allocates nothing
    /// for it), or `app.<application>`.
    pub fn kv_key(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Grantee::Entity(entity) => std::borrow::Cow::Borrowed(entity.as_str()),
            Grantee::Application(app) => format!("{APPLICATION_KEY_PREFIX}{app}").into(),
        }
    }

    /// Read a bucket key back: `None` for a key that is neither (it grants nothing).
    pub fn from_kv_key(key: &str) -> Option<Self> {
        match key.strip_prefix(APPLICATION_KEY_PREFIX) {
            Some(app) => ApplicationName::parse(app).ok().map(Grantee::Application),
            None => EntityKey::parse(key).ok().map(Grantee::Entity),
        }
    }

    /// Whether it is an entity (for counting mapped entities).
    fn is_entity_key(key: &str) -> bool {
        !key.starts_with(APPLICATION_KEY_PREFIX)
    }
}

impl std::fmt::Display for Grantee {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Grantee::Entity(entity) => write!(f, "entity {entity}"),
            Grantee::Application(app) => write!(f, "application {app}"),
        }
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
        self.grants(entity.as_str(), name)
    }

    /// Whether the grant stored under `kv_key` gives `name`, from memory; `false` until the
    /// mirror is loaded.
    fn grants(&self, kv_key: &str, name: &str) -> bool {
        if !self.is_loaded() {
            return false;
        }
        let map = self.cache.read().unwrap_or_else(|p| p.into_inner());
        map.get(kv_key)
            .is_some_and(|(_, names)| names.contains(name))
    }

    /// Whether `grantee` may read `name`: from memory once the mirror is loaded, before that
    /// from its grant in the bucket (one read of its last message, on the stream's leader).
    pub async fn permits(&self, grantee: &Grantee, name: &str) -> Result<bool, StoreError> {
        if self.is_loaded() {
            return Ok(self.grants(&grantee.kv_key(), name));
        }
        Ok(self.stored(grantee).await?.contains(name))
    }

    /// The names the bucket grants `grantee` now, read from the stream's leader. The subject
    /// names one key: an [`EntityKey`] and an [`ApplicationName`] hold no wildcard.
    async fn stored(&self, grantee: &Grantee) -> Result<HashSet<String>, StoreError> {
        let key = grantee.kv_key();
        let subject = kv_stream::key_subject(&self.kv, &key);
        match self
            .kv
            .stream
            .get_last_raw_message_by_subject(&subject)
            .await
        {
            Ok(message) if kv_stream::is_deletion(Some(&message.headers)) => Ok(HashSet::new()),
            Ok(message) => Ok(granted(&key, Some(&message.payload))),
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
                Ok(HashSet::new())
            }
            Err(e) => Err(StoreError::upstream(e)),
        }
    }

    /// One page of the names `grantee` may read (see [`page_names`]): only the page is
    /// copied, however many names it has. From the bucket while the mirror loads.
    pub(crate) async fn names_page(
        &self,
        grantee: &Grantee,
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
            return Ok(page(&self.stored(grantee).await?));
        }
        let map = self.cache.read().unwrap_or_else(|p| p.into_inner());
        Ok(map
            .get(grantee.kv_key().as_ref())
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
        map.iter()
            .filter(|(key, (_, names))| Grantee::is_entity_key(key) && !names.is_empty())
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Add or remove `names` for `grantee`, atomically with respect to other writers.
    /// Returns its resulting set of names.
    pub async fn update(
        &self,
        grantee: &Grantee,
        change: MappingChange,
        names: &BTreeSet<String>,
    ) -> Result<Vec<String>, StoreError> {
        let key = grantee.kv_key();
        let entity: &str = &key;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_key_is_read_back_as_exactly_one_kind_of_grantee() {
        let key = nkeys::KeyPair::new_module().public_key();
        let entity = Grantee::entity(&key).unwrap();
        // An application may be named like an entity key: its bucket key is another.
        let app = Grantee::application(&key).unwrap();
        assert_ne!(entity.kv_key(), app.kv_key());
        assert_eq!(Grantee::from_kv_key(&entity.kv_key()), Some(entity));
        assert_eq!(Grantee::from_kv_key(&app.kv_key()), Some(app));
        for neither in ["app.", "app.a.b", "app.>", "shop", ">", "M.x"] {
            assert_eq!(Grantee::from_kv_key(neither), None, "{neither}");
        }
        assert!(Grantee::application("app.x").is_err());
    }
}
