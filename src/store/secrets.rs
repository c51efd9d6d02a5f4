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
use super::mirror::{self, Change, Inserted, MirrorHandle};
use super::{validate_name, Bucket, StoreError};

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
        let subject = format!("{}{}", self.kv.prefix, name);
        match self
            .kv
            .stream
            .get_last_raw_message_by_subject(&subject)
            .await
        {
            Ok(message) if mirror::is_deletion(Some(&message.headers)) => Ok(None),
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
        let expected = format!("{}{}", self.kv.prefix, name);
        if message.subject.as_str() != expected || mirror::is_deletion(Some(&message.headers)) {
            return Ok(None);
        }
        Ok(Some(StoredSecret {
            revision,
            updated: message.time,
            sealed: message.payload,
        }))
    }

    /// When `name`'s first version was written, for a new version's envelope.
    pub async fn created_ms(&self, name: &str) -> Result<Option<u64>, StoreError> {
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
    pub async fn list_page(
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

    /// Whether any live value was sealed by a data key other than `key_id` (or by the
    /// sample, which names none); `None` until the mirror is loaded. Reads only the
    /// envelopes' headers.
    pub fn any_sealed_by_another_key(&self, key_id: &str) -> Option<bool> {
        if !self.is_loaded() {
            return None;
        }
        let mirror = self.read();
        Some(mirror.map.values().any(|(_, cached)| {
            cached.sealed.as_deref().is_some_and(|sealed| {
                let header = envelope::parse(sealed).ok().map(|(h, _)| h);
                header.and_then(|h| h.key_id).as_deref() != Some(key_id)
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

/// Entries in a page of a listing (`list_secrets`, `get_mappings`, the WIT `list-secrets` and
/// `list-mappings`) when the caller names no limit.
pub const PAGE_DEFAULT: usize = 1000;

/// Most entries in a page; a larger requested limit is lowered to this.
///
/// Why it always fits a NATS message: a [`SecretMeta`] that piggybank wrote serializes to at
/// most 484 bytes of JSON, comma included: a name of 255 bytes that JSON never escapes
/// (names are `[A-Za-z0-9-_/=.]`), a 20-digit version, a 6-letter kind, two RFC 3339 times
/// of at most 35 bytes, a 56-byte key id, and the keys and quotes around them. So a page of
/// `PAGE_MAX` entries plus its envelope (`{"secrets":[...],"next":"<255 bytes>"}`) is at most
/// 968,300 bytes, under the default NATS max payload of 1 MiB (1,048,576), and the default
/// page is half that. A mapping page is smaller: a name is at most 258 bytes with quotes and
/// comma. Data piggybank did not write (a key id or name planted in the bucket) can be
/// longer; then the front door's size check answers an error instead (code 413), and
/// [`crate::client::AdminClient`] asks again for smaller pages. The unit test
/// `a_full_page_of_the_largest_entries_fits_a_nats_message` checks the arithmetic.
pub const PAGE_MAX: usize = 2000;

/// `limit` was 0: a page holds at least one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("limit must be at least 1 (default {PAGE_DEFAULT}, at most {PAGE_MAX})")]
pub struct ZeroLimit;

/// The number of entries a page holds for a requested `limit`: [`PAGE_DEFAULT`] when none is
/// named, at most [`PAGE_MAX`]; 0 is refused.
pub fn page_limit(requested: Option<u64>) -> Result<usize, ZeroLimit> {
    match requested {
        None => Ok(PAGE_DEFAULT),
        Some(0) => Err(ZeroLimit),
        Some(n) => Ok(usize::try_from(n).map_or(PAGE_MAX, |n| n.min(PAGE_MAX))),
    }
}

/// Which page of a listing to return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest<'a> {
    /// Only names that start with this.
    pub prefix: &'a str,
    /// The cursor: only names strictly after this one (the previous page's `next`).
    pub after: Option<&'a str>,
    /// Most entries returned; already checked with [`page_limit`] (0 is treated as 1).
    pub limit: usize,
}

/// One page of a listing, in name order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// When more entries remain: the last name of this page, to pass as the next request's
    /// `after`. `None`: this is the last page.
    pub next: Option<String>,
}

impl<T> Default for Page<T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            next: None,
        }
    }
}

/// The paging rule every listing follows, as a pure function: of `names` (any order, no
/// duplicates), those that start with `request.prefix` and sort strictly after
/// `request.after`, the first `request.limit` in byte order, and the cursor of the next page
/// when more remain. A listing is not a snapshot: a name added behind the cursor while a
/// caller pages is not seen, one added ahead of it is.
pub fn page_names<'a>(
    names: impl IntoIterator<Item = &'a str>,
    request: &PageRequest<'_>,
) -> Page<&'a str> {
    let limit = request.limit.max(1);
    let mut items: Vec<&str> = names
        .into_iter()
        .filter(|n| n.starts_with(request.prefix) && request.after.is_none_or(|a| *n > a))
        .collect();
    let more = items.len() > limit;
    if more {
        // The `limit` smallest first, in O(n); only they are sorted.
        items.select_nth_unstable(limit - 1);
        items.truncate(limit);
    }
    items.sort_unstable();
    let next = if more {
        items.last().map(|n| n.to_string())
    } else {
        None
    };
    Page { items, next }
}

/// [`page_names`] over a map ordered by name: the same page, found by a range scan, so it
/// costs the page's size plus the entries `keep` skips, never a pass over every name.
pub fn page_of_sorted<'a, V>(
    map: &'a BTreeMap<Box<str>, V>,
    request: &PageRequest<'_>,
    keep: impl Fn(&V) -> bool,
) -> Page<(&'a str, &'a V)> {
    let limit = request.limit.max(1);
    // Names with the prefix are one contiguous run in byte order, starting at the prefix.
    let from = match request.after {
        Some(after) if after >= request.prefix => Bound::Excluded(after),
        _ => Bound::Included(request.prefix),
    };
    let mut items: Vec<(&str, &V)> = map
        .range::<str, _>((from, Bound::Unbounded))
        .take_while(|(name, _)| name.starts_with(request.prefix))
        .filter(|(_, value)| keep(value))
        .map(|(name, value)| (&**name, value))
        .take(limit + 1)
        .collect();
    let more = items.len() > limit;
    items.truncate(limit);
    let next = match more {
        true => items.last().map(|(name, _)| name.to_string()),
        false => None,
    };
    Page { items, next }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn page<'a>(
        names: &[&'a str],
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Page<&'a str> {
        page_names(
            names.iter().copied(),
            &PageRequest {
                prefix,
                after,
                limit,
            },
        )
    }

    #[test]
    fn pages_follow_name_order_and_resume_strictly_after_the_cursor() {
        let names = ["d", "a", "c/2", "b", "c/1", "e", "c/3"];
        let first = page(&names, "", None, 3);
        assert_eq!(first.items, ["a", "b", "c/1"]);
        assert_eq!(first.next.as_deref(), Some("c/1"));
        let second = page(&names, "", first.next.as_deref(), 3);
        assert_eq!(second.items, ["c/2", "c/3", "d"]);
        let third = page(&names, "", second.next.as_deref(), 3);
        assert_eq!((third.items, third.next), (vec!["e"], None));
        // Exactly `limit` left: no next page is announced.
        let exact = page(&names, "", Some("c/3"), 2);
        assert_eq!((exact.items, exact.next), (vec!["d", "e"], None));
        // A cursor that is not a name still works: it is a position in name order.
        assert_eq!(page(&names, "", Some("bz"), 2).items, ["c/1", "c/2"]);
        assert_eq!(page(&names, "", Some("z"), 2), Page::default());
    }

    #[test]
    fn pages_respect_the_prefix() {
        let names = ["c/2", "a", "c/1", "cc", "c/3"];
        let first = page(&names, "c/", None, 2);
        assert_eq!(first.items, ["c/1", "c/2"]);
        assert_eq!(first.next.as_deref(), Some("c/2"));
        let last = page(&names, "c/", first.next.as_deref(), 2);
        assert_eq!((last.items, last.next), (vec!["c/3"], None));
        // A cursor before the prefix starts at the prefix's first name.
        assert_eq!(page(&names, "c/", Some("a"), 1).items, ["c/1"]);
        assert_eq!(page(&names, "x/", None, 5), Page::default());
    }

    #[test]
    fn paging_through_returns_every_name_once() {
        let names: Vec<String> = (0..1037).rev().map(|i| format!("app/{i:05}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let p = page(&refs, "app/", after.as_deref(), 100);
            assert!(p.items.len() <= 100);
            seen.extend(p.items.iter().map(|s| s.to_string()));
            match p.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let mut expected = names.clone();
        expected.sort();
        assert_eq!(seen, expected);
    }

    #[test]
    fn a_page_of_the_ordered_map_is_the_page_of_its_names() {
        let names = [
            "a", "b", "c", "c/", "c/1", "c/10", "c/2", "c/3", "cc", "d", "d/x", "e=1", "z",
        ];
        // Every third entry is a tombstone, which no page may show.
        let map: BTreeMap<Box<str>, bool> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (Box::from(*n), i % 3 != 1))
            .collect();
        let live: Vec<&str> = names
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 3 != 1)
            .map(|(_, n)| *n)
            .collect();
        for prefix in ["", "c", "c/", "d", "x", "c/1"] {
            for after in [
                None,
                Some(""),
                Some("a"),
                Some("bz"),
                Some("c/1"),
                Some("cc"),
                Some("z"),
            ] {
                for limit in [1, 2, 3, 100] {
                    let request = PageRequest {
                        prefix,
                        after,
                        limit,
                    };
                    let expected = page_names(live.iter().copied(), &request);
                    let got = page_of_sorted(&map, &request, |live| *live);
                    let got_names: Vec<&str> = got.items.iter().map(|(n, _)| *n).collect();
                    assert_eq!(
                        (got_names, got.next),
                        (expected.items, expected.next),
                        "{request:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn limits_default_clamp_and_refuse_zero() {
        assert_eq!(page_limit(None), Ok(PAGE_DEFAULT));
        assert_eq!(page_limit(Some(7)), Ok(7));
        assert_eq!(page_limit(Some(PAGE_MAX as u64 + 1)), Ok(PAGE_MAX));
        assert_eq!(page_limit(Some(u64::MAX)), Ok(PAGE_MAX));
        assert_eq!(page_limit(Some(0)), Err(ZeroLimit));
        assert_eq!(
            page(&["a", "b"], "", None, 0).items,
            ["a"],
            "0 is read as 1"
        );
    }

    /// The bound documented on [`PAGE_MAX`], computed rather than trusted.
    #[test]
    fn a_full_page_of_the_largest_entries_fits_a_nats_message() {
        const NATS_DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;
        let name = "n".repeat(super::super::MAX_NAME_LEN);
        // The longest RFC 3339 time `rfc3339` writes: nanoseconds and a non-UTC offset.
        let time = "2026-11-25T15:30:00.123456789+01:00".to_string();
        let meta = SecretMeta {
            name: name.clone(),
            version: u64::MAX,
            kind: SecretKind::Legacy,
            created_at: Some(time.clone()),
            updated_at: time,
            key_id: Some(nkeys::XKey::new().public_key()),
        };
        let entry = serde_json::to_vec(&meta).unwrap().len() + 1;
        assert!(entry <= 484, "a SecretMeta entry takes {entry} bytes");
        #[derive(serde::Serialize)]
        struct Reply {
            secrets: Vec<SecretMeta>,
            next: Option<String>,
        }
        let page = Reply {
            secrets: vec![meta; PAGE_MAX],
            next: Some(name.clone()),
        };
        let size = serde_json::to_vec(&page).unwrap().len();
        assert!(size <= 968_300, "{size}");
        assert!(size < NATS_DEFAULT_MAX_PAYLOAD, "{size}");
        // Mappings: `{"entity":"<56>","secrets":[...],"next":"<255>"}`.
        let names = serde_json::to_vec(&vec![name; PAGE_MAX]).unwrap().len();
        assert!(names + 400 < NATS_DEFAULT_MAX_PAYLOAD / 2, "{names}");
    }
}
