//! `SecretStore`: sealed secret values in a KV bucket, one key per secret, one revision per
//! version, mirrored in memory.
//!
//! The mirror holds the latest *sealed* value of every secret (never plaintext), plus a
//! tombstone with the delete marker's revision for deleted secrets, so a late watch delivery
//! of an older value cannot resurrect a deletion. Older versions are read from the stream on
//! demand: they are rare, and keeping them all in memory would cost `history` times as much.
//!
//! The store serves as soon as it is opened, while its mirror loads (see `store::mirror`).
//! Until the load has ended, a read of one secret ([`SecretStore::current`]) reads its latest
//! message from the bucket (one request to the stream's leader), because the mirror may not
//! have reached a later version or a deletion yet; a deleted secret is never served. What
//! needs every secret ([`SecretStore::list_page`], [`SecretStore::list`]) waits for the load.
//! The memory-only reads ([`SecretStore::latest`]) answer `None` until then.
//!
//! Memory per secret: its name, its sealed value copied to an allocation of its own (a value
//! still pointing into the connection's read buffer would keep the whole buffer alive), its
//! revision and time, in a `BTreeMap`: ordered, so a page of a listing costs its own size,
//! and no rehash doubles the table while a large bucket loads.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, RwLock};

use async_nats::jetstream::{self, kv};
use async_nats::HeaderMap;
use bytes::Bytes;
use time::OffsetDateTime;

use super::envelope::{self, SecretKind};
use super::kv_stream;
use super::mirror::{self, Change, Inserted, MirrorHandle};
use super::page::{page_of_sorted, Page, PageRequest};
use super::{validate_name, Bucket, StoreError};

/// The paging limits' former home, kept for the integration tests that name it.
pub use super::page::{PAGE_DEFAULT, PAGE_MAX};

/// One stored version of a secret, still sealed.
#[derive(Clone)]
pub struct StoredSecret {
    pub revision: u64,
    pub updated: OffsetDateTime,
    pub sealed: Bytes,
}

/// What `list_secrets` reports: never a value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SecretMeta {
    pub name: String,
    /// Latest version (the KV revision).
    pub version: u64,
    pub kind: SecretKind,
    /// RFC 3339 time of the first version, when known (not for values the sample wrote).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// RFC 3339 time of the latest version.
    pub updated_at: String,
    /// Data key that sealed the latest version (`None`: the configured key, legacy format).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

/// The latest version of one secret, keyed by its revision in the map.
struct Cached {
    /// When it was written, in Unix nanoseconds (half the room of an `OffsetDateTime`).
    updated_ns: i64,
    /// `None` for a deleted secret (a tombstone).
    sealed: Option<Box<[u8]>>,
}

impl Cached {
    fn stored(&self, revision: u64) -> Option<StoredSecret> {
        Some(StoredSecret {
            revision,
            updated: time_from_ns(self.updated_ns),
            sealed: Bytes::copy_from_slice(self.sealed.as_deref()?),
        })
    }
}

/// Name -> (revision, latest version), and how many of them are live (not tombstones).
#[derive(Default)]
struct Mirror {
    map: BTreeMap<Box<str>, (u64, Cached)>,
    live: usize,
}

type Cache = Arc<RwLock<Mirror>>;

pub struct SecretStore {
    kv: kv::Store,
    js: jetstream::Context,
    cache: Cache,
    mirror: MirrorHandle,
}

fn unix_ns(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos()).unwrap_or(i64::MAX)
}

fn time_from_ns(ns: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns)).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Apply a batch of changes under one write lock; values are copied before it is taken.
fn apply(cache: &Cache, changes: Vec<Change>) {
    let changes: Vec<(String, u64, Cached)> = changes
        .into_iter()
        .map(|change| {
            let cached = Cached {
                updated_ns: unix_ns(change.at),
                sealed: change.value.map(|v| Box::from(v.as_ref())),
            };
            (change.key, change.revision, cached)
        })
        .collect();
    let mut mirror = cache.write().unwrap_or_else(|p| p.into_inner());
    for (key, revision, cached) in changes {
        let live = cached.sealed.is_some();
        let was_live = match mirror::insert_if_newer(&mut mirror.map, key, revision, cached) {
            Inserted::Stale => continue,
            Inserted::New => false,
            Inserted::Replaced(old) => old.sealed.is_some(),
        };
        match (was_live, live) {
            (false, true) => mirror.live += 1,
            (true, false) => mirror.live = mirror.live.saturating_sub(1),
            _ => {}
        }
    }
}

impl SecretStore {
    /// Open the secrets bucket (see [`Bucket`] for whether it may be created) in JetStream
    /// domain `js_domain` (none: the account's own) and start loading it into memory. Returns
    /// before the load ends (see [`SecretStore::loaded`]).
    pub async fn open(
        client: &async_nats::Client,
        js_domain: Option<&str>,
        bucket: Bucket<'_>,
    ) -> Result<Self, StoreError> {
        let js = super::jetstream(client, js_domain);
        let kv = bucket.open(&js).await?;
        let cache: Cache = Arc::default();
        let sink = cache.clone();
        let mirror = mirror::spawn(client, &js, &kv, "secrets", move |changes| {
            apply(&sink, changes)
        });
        Ok(Self {
            kv,
            js,
            cache,
            mirror,
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Mirror> {
        self.cache.read().unwrap_or_else(|p| p.into_inner())
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

    /// The latest version of `name` in memory, loaded or not.
    fn memory(&self, name: &str) -> Option<StoredSecret> {
        let mirror = self.read();
        let (revision, cached) = mirror.map.get(name)?;
        cached.stored(*revision)
    }

    /// The latest version of `name`, from memory; `None` (never a value the bucket may have
    /// replaced or deleted) until the mirror is loaded. Readers that must answer during the
    /// load use [`SecretStore::current`].
    pub fn latest(&self, name: &str) -> Option<StoredSecret> {
        match self.is_loaded() {
            true => self.memory(name),
            false => None,
        }
    }

    /// The latest version of `name`: from memory once the mirror is loaded, before that from
    /// the bucket (one read of its last message, on the stream's leader).
    pub async fn current(&self, name: &str) -> Result<Option<StoredSecret>, StoreError> {
        if self.is_loaded() {
            return Ok(self.memory(name));
        }
        let subject = kv_stream::key_subject(&self.kv, name);
        match self
            .kv
            .stream
            .get_last_raw_message_by_subject(&subject)
            .await
        {
            Ok(message) if kv_stream::is_deletion(Some(&message.headers)) => Ok(None),
            Ok(message) => Ok(Some(StoredSecret {
                revision: message.sequence,
                updated: message.time,
                sealed: message.payload,
            })),
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
                Ok(None)
            }
            Err(e) => Err(StoreError::upstream(e)),
        }
    }

    /// Version `revision` of `name`. The latest is served from memory (from the bucket while
    /// the mirror loads); older ones cost one read of the stream. A deleted or unknown version
    /// is `None`.
    pub async fn version(
        &self,
        name: &str,
        revision: u64,
    ) -> Result<Option<StoredSecret>, StoreError> {
        if revision == 0 {
            return Ok(None); // revisions start at 1
        }
        match self.current(name).await? {
            Some(latest) if latest.revision == revision => return Ok(Some(latest)),
            Some(latest) if latest.revision < revision => return Ok(None),
            None => return Ok(None),
            Some(_) => {}
        }
        let message = match self.kv.stream.get_raw_message(revision).await {
            Ok(m) => m,
            Err(e)
                if matches!(
                    e.kind(),
                    jetstream::stream::RawMessageErrorKind::NoMessageFound
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(StoreError::upstream(e)),
        };
        let expected = kv_stream::key_subject(&self.kv, name);
        if message.subject.as_str() != expected || kv_stream::is_deletion(Some(&message.headers)) {
            return Ok(None);
        }
        Ok(Some(StoredSecret {
            revision,
            updated: message.time,
            sealed: message.payload,
        }))
    }

    /// When `name`'s first version was written, for a new version's envelope.
    pub(crate) async fn created_ms(&self, name: &str) -> Result<Option<u64>, StoreError> {
        let Some(latest) = self.current(name).await? else {
            return Ok(None);
        };
        Ok(envelope::parse(&latest.sealed)
            .ok()
            .and_then(|(header, _)| header.created_ms))
    }

    /// Write a new version. `expected`: `None` writes unconditionally, `Some(0)` only if the
    /// secret does not exist, `Some(r)` only if its latest version is `r`.
    pub async fn put(
        &self,
        name: &str,
        sealed: Vec<u8>,
        expected: Option<u64>,
    ) -> Result<u64, StoreError> {
        validate_name(name)?;
        let sealed = Bytes::from(sealed);
        let result = match expected {
            None => self
                .kv
                .put(name, sealed.clone())
                .await
                .map_err(StoreError::upstream),
            Some(0) => self.kv.create(name, sealed.clone()).await.map_err(|e| {
                if e.kind() == kv::CreateErrorKind::AlreadyExists {
                    self.conflict(name, 0)
                } else {
                    StoreError::upstream(e)
                }
            }),
            Some(rev) => {
                let current = self.current(name).await?.map(|l| l.revision);
                if current != Some(rev) {
                    return Err(self.conflict(name, rev));
                }
                self.kv
                    .update(name, sealed.clone(), rev)
                    .await
                    .map_err(|e| {
                        if e.kind() == kv::UpdateErrorKind::WrongLastRevision {
                            self.conflict(name, rev)
                        } else {
                            StoreError::upstream(e)
                        }
                    })
            }
        };
        let revision = result?;
        apply(
            &self.cache,
            vec![Change {
                key: name.to_string(),
                revision,
                at: OffsetDateTime::now_utc(),
                value: Some(sealed),
            }],
        );
        Ok(revision)
    }

    fn conflict(&self, name: &str, expected: u64) -> StoreError {
        StoreError::VersionConflict {
            name: name.to_string(),
            expected,
            current: self.memory(name).map_or(0, |l| l.revision),
        }
    }

    /// Delete a secret and every one of its versions (a KV purge).
    pub async fn delete(&self, name: &str) -> Result<(), StoreError> {
        validate_name(name)?;
        if self.current(name).await?.is_none() {
            return Err(StoreError::NotFound(name.to_string()));
        }
        let subject = kv_stream::write_subject(&self.kv, name);
        let mut headers = HeaderMap::new();
        headers.insert("KV-Operation", "PURGE");
        headers.insert("Nats-Rollup", "sub");
        let ack = self
            .js
            .publish_with_headers(subject, headers, Bytes::new())
            .await
            .map_err(StoreError::upstream)?
            .await
            .map_err(StoreError::upstream)?;
        apply(
            &self.cache,
            vec![Change {
                key: name.to_string(),
                revision: ack.sequence,
                at: OffsetDateTime::now_utc(),
                value: None,
            }],
        );
        Ok(())
    }

    /// Metadata of every live secret whose name starts with `prefix`, sorted by name. Waits
    /// for the mirror to be loaded.
    pub async fn list(&self, prefix: &str) -> Result<Vec<SecretMeta>, StoreError> {
        self.loaded().await?;
        let mirror = self.read();
        Ok(mirror
            .map
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(name, _)| name.starts_with(prefix))
            .filter_map(|(name, (revision, cached))| meta_of(name, *revision, cached))
            .collect())
    }

    /// One page of the live secrets whose name starts with `request.prefix`, in name order,
    /// strictly after `request.after`. Costs the page's own size (the mirror is ordered),
    /// however many secrets there are. Waits for the mirror to be loaded.
    pub(crate) async fn list_page(
        &self,
        request: &PageRequest<'_>,
    ) -> Result<Page<SecretMeta>, StoreError> {
        self.loaded().await?;
        let mirror = self.read();
        let page = page_of_sorted(&mirror.map, request, |(_, cached)| cached.sealed.is_some());
        Ok(Page {
            items: page
                .items
                .into_iter()
                .filter_map(|(name, (revision, cached))| meta_of(name, *revision, cached))
                .collect(),
            next: page.next,
        })
    }

    /// Metadata of one live secret (from the bucket while the mirror loads).
    pub async fn meta(&self, name: &str) -> Result<Option<SecretMeta>, StoreError> {
        Ok(self
            .current(name)
            .await?
            .map(|latest| meta(name, latest.revision, latest.updated, &latest.sealed)))
    }

    /// Whether any live value needs a rekey: sealed by a data key other than `key_id` (or by
    /// the sample, which names none), or not bound to its name; `None` until the mirror is
    /// loaded. Reads only the envelopes' headers.
    pub(crate) fn any_needing_reseal(&self, key_id: &str) -> Option<bool> {
        if !self.is_loaded() {
            return None;
        }
        let mirror = self.read();
        Some(mirror.map.values().any(|(_, cached)| {
            cached.sealed.as_deref().is_some_and(|sealed| {
                envelope::parse(sealed).map_or(true, |(h, _)| h.needs_reseal(key_id))
            })
        }))
    }

    /// One round trip to the bucket's stream: is JetStream answering for this bucket?
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.kv
            .status()
            .await
            .map(|_| ())
            .map_err(StoreError::upstream)
    }

    /// Number of live secrets in the mirror (so far, while it loads).
    pub fn len(&self) -> usize {
        self.read().live
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn meta_of(name: &str, revision: u64, cached: &Cached) -> Option<SecretMeta> {
    let sealed = cached.sealed.as_deref()?;
    Some(meta(
        name,
        revision,
        time_from_ns(cached.updated_ns),
        sealed,
    ))
}

fn meta(name: &str, revision: u64, updated: OffsetDateTime, sealed: &[u8]) -> SecretMeta {
    let header = envelope::parse(sealed).ok().map(|(h, _)| h);
    SecretMeta {
        name: name.to_string(),
        version: revision,
        kind: header.as_ref().map_or(SecretKind::Legacy, |h| h.kind),
        created_at: header
            .as_ref()
            .and_then(|h| h.created_ms)
            .and_then(rfc3339_from_ms),
        updated_at: rfc3339(updated),
        key_id: header.and_then(|h| h.key_id),
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn rfc3339_from_ms(ms: u64) -> Option<String> {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()?;
    Some(rfc3339(t))
}
