//! `SecretStore`: sealed secret values in a KV bucket, one key per secret, one revision per
//! version, mirrored in memory.
//!
//! The mirror holds the latest *sealed* value of every secret (never plaintext), plus a
//! tombstone with the delete marker's revision for deleted secrets, so a late watch delivery
//! of an older value cannot resurrect a deletion. Older versions are read from the stream on
//! demand: they are rare, and keeping them all in memory would cost `history` times as much.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_nats::jetstream::{self, kv};
use async_nats::HeaderMap;
use bytes::Bytes;
use time::OffsetDateTime;

use super::envelope::{self, SecretKind};
use super::mirror::{self, Change, MirrorHandle};
use super::{validate_name, BucketSpec, StoreError};

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
    updated: OffsetDateTime,
    /// `None` for a deleted secret (a tombstone).
    sealed: Option<Bytes>,
}

type Cache = Arc<RwLock<HashMap<String, (u64, Cached)>>>;

pub struct SecretStore {
    kv: kv::Store,
    js: jetstream::Context,
    cache: Cache,
    _mirror: MirrorHandle,
}

fn apply(cache: &Cache, change: Change) {
    let mut map = cache.write().unwrap_or_else(|p| p.into_inner());
    let cached = Cached {
        updated: change.at,
        sealed: change.value,
    };
    mirror::insert_if_newer(&mut map, change.key, change.revision, cached);
}

impl SecretStore {
    /// Open (or create) the secrets bucket and load it into memory.
    pub async fn open(client: &async_nats::Client, spec: &BucketSpec) -> Result<Self, StoreError> {
        let js = jetstream::new(client.clone());
        let kv = super::open_bucket(&js, spec).await?;
        let cache: Cache = Arc::default();
        let sink = cache.clone();
        let mirror = mirror::spawn(client, &kv, move |change| apply(&sink, change)).await?;
        Ok(Self {
            kv,
            js,
            cache,
            _mirror: mirror,
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, (u64, Cached)>> {
        self.cache.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The latest version of `name`, from memory.
    pub fn latest(&self, name: &str) -> Option<StoredSecret> {
        let map = self.read();
        let (revision, cached) = map.get(name)?;
        Some(StoredSecret {
            revision: *revision,
            updated: cached.updated,
            sealed: cached.sealed.clone()?,
        })
    }

    /// Version `revision` of `name`. The latest is served from memory; older ones cost one
    /// read of the stream. A deleted or unknown version is `None`.
    pub async fn version(
        &self,
        name: &str,
        revision: u64,
    ) -> Result<Option<StoredSecret>, StoreError> {
        if revision == 0 {
            return Ok(None); // revisions start at 1
        }
        match self.latest(name) {
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
        let expected = format!("{}{}", self.kv.prefix, name);
        let deleted = message
            .headers
            .get("KV-Operation")
            .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE");
        if message.subject.as_str() != expected || deleted {
            return Ok(None);
        }
        Ok(Some(StoredSecret {
            revision,
            updated: message.time,
            sealed: message.payload,
        }))
    }

    /// When `name`'s first version was written, for a new version's envelope.
    pub fn created_ms(&self, name: &str) -> Option<u64> {
        let latest = self.latest(name)?;
        envelope::parse(&latest.sealed).ok()?.0.created_ms
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
                let current = self.latest(name).map(|l| l.revision);
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
            Change {
                key: name.to_string(),
                revision,
                at: OffsetDateTime::now_utc(),
                value: Some(sealed),
            },
        );
        Ok(revision)
    }

    fn conflict(&self, name: &str, expected: u64) -> StoreError {
        StoreError::VersionConflict {
            name: name.to_string(),
            expected,
            current: self.latest(name).map_or(0, |l| l.revision),
        }
    }

    /// Delete a secret and every one of its versions (a KV purge).
    pub async fn delete(&self, name: &str) -> Result<(), StoreError> {
        validate_name(name)?;
        if self.latest(name).is_none() {
            return Err(StoreError::NotFound(name.to_string()));
        }
        let subject = format!(
            "{}{}",
            self.kv.put_prefix.as_deref().unwrap_or(&self.kv.prefix),
            name
        );
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
            Change {
                key: name.to_string(),
                revision: ack.sequence,
                at: OffsetDateTime::now_utc(),
                value: None,
            },
        );
        Ok(())
    }

    /// Metadata of every live secret whose name starts with `prefix`, sorted by name.
    pub fn list(&self, prefix: &str) -> Vec<SecretMeta> {
        let map = self.read();
        let mut out: Vec<SecretMeta> = map
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .filter_map(|(name, (revision, cached))| meta(name, *revision, cached))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Metadata of one live secret.
    pub fn meta(&self, name: &str) -> Option<SecretMeta> {
        let map = self.read();
        let (revision, cached) = map.get(name)?;
        meta(name, *revision, cached)
    }

    /// One round trip to the bucket's stream: is JetStream answering for this bucket?
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.kv
            .status()
            .await
            .map(|_| ())
            .map_err(StoreError::upstream)
    }

    /// Number of live secrets.
    pub fn len(&self) -> usize {
        self.read()
            .values()
            .filter(|(_, c)| c.sealed.is_some())
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn meta(name: &str, revision: u64, cached: &Cached) -> Option<SecretMeta> {
    let sealed = cached.sealed.as_ref()?;
    let header = envelope::parse(sealed).ok().map(|(h, _)| h);
    Some(SecretMeta {
        name: name.to_string(),
        version: revision,
        kind: header.as_ref().map_or(SecretKind::Legacy, |h| h.kind),
        created_at: header
            .as_ref()
            .and_then(|h| h.created_ms)
            .and_then(rfc3339_from_ms),
        updated_at: rfc3339(cached.updated),
        key_id: header.and_then(|h| h.key_id),
    })
}

pub(crate) fn now_ms() -> u64 {
    u64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn rfc3339_from_ms(ms: u64) -> Option<String> {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()?;
    Some(rfc3339(t))
}
