//! Backup and restore of one backend's buckets: every kept version of every secret, the
//! mappings and sealed mode's key record, in one file, still sealed.
//!
//! The file's format is [`format`]'s; this module reads the buckets and writes them back.
//!
//! # Invariants
//! - A backup is signed by an admin key ([`format`]); `restore` reads only a
//!   [`VerifiedBackup`], which exists only once its signature verified against the admin
//!   keys the operator trusts (or the operator said not to check), and the whole file is
//!   checked (header, length, checksum, every line, counts).
//! - `restore` writes nothing until every check has passed: the file's, then the target's
//!   (buckets that hold anything, unless forced; a history too short; every value against
//!   the server's `max_payload` and each bucket's max value size; all of what goes into each
//!   existing bucket against its stream's `max_msgs` and `max_bytes`), so a restore that
//!   cannot finish does not start.
//! - A secret's versions are written in their order, so its latest version stays the latest.
//!   KV revisions cannot be chosen: a restored version gets a new revision.

mod format;
mod sizes;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::ops::ControlFlow;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;

use format::{b64, BodyCheck, BodyLines, BodyWriter, Entry, Line};
pub use format::{
    Header, Trust, VerifiedBackup, FORMAT, FORMAT_VERSION, FORMAT_VERSION_UNSIGNED, HEADER_WIDTH,
};
use sizes::{Largest, Total, Totals};

use crate::admin_auth::AdminSigner;

use crate::clock;
use crate::config;
use crate::seal::key_record::KeyRecord;
use crate::seal::RECORD_KEY;
use crate::store::kv_stream::{Delivery, KvStream};
use crate::store::{self, BucketSpec, Buckets, StoreError};

/// How backup's and restore's reads name their consumers.
const DESCRIPTION: &str = "piggybank backup";
/// Restore keeps this many writes in flight (their acks awaited in order).
const WINDOW: usize = 256;

/// Errors of backup and restore.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("backup file: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a piggybank backup: {0}")]
    NotABackup(String),
    #[error(
        "the backup is in format version {found}; this piggybank reads versions \
         {FORMAT_VERSION_UNSIGNED} and {FORMAT_VERSION}"
    )]
    UnsupportedVersion { found: u64 },
    #[error(
        "the backup is in format version {FORMAT_VERSION_UNSIGNED}, which is not signed: \
         whoever could write the file could have changed it unseen; restore it only if you \
         know where it has been, with --unauthenticated"
    )]
    Unauthenticated,
    #[error(
        "the backup is signed by admin key {signer}; give the admin keys to trust \
         (--admin-keys or ADMIN_KEYS, as the backend runs with them) so that restore can \
         verify it"
    )]
    NoTrustedKeys { signer: String },
    #[error(
        "the backup is signed by {signer:?}, which is not one of the trusted admin keys \
         (--admin-keys / ADMIN_KEYS)"
    )]
    UntrustedSigner { signer: String },
    #[error(
        "the backup's signature does not verify: its header was changed after it was signed \
         (or the signature is damaged)"
    )]
    BadSignature,
    #[error(
        "{what} (line {line}) is {bytes} bytes, more than {limit} bytes, the most {limited_by} \
         accepts"
    )]
    TooLarge {
        what: String,
        line: u64,
        bytes: u64,
        limit: u64,
        limited_by: String,
    },
    #[error(
        "bucket {bucket:?} is too small for the backup: restore would store {need} {unit} in \
         it{estimate} beside the {held} it holds, and its {limit_name} is {limit}; nothing was \
         written: raise the limit (nats stream edit KV_{bucket}), or delete the bucket so that \
         restore creates it"
    )]
    BucketTooSmall {
        bucket: String,
        /// `max_bytes` or `max_msgs`.
        limit_name: &'static str,
        limit: u64,
        need: u64,
        held: u64,
        unit: &'static str,
        /// How `need` was counted (for bytes: an estimate of what the stream counts).
        estimate: String,
    },
    #[error(
        "the backup is truncated: its header announces a body of {expected} bytes, the file \
         holds {found}"
    )]
    Truncated { expected: u64, found: u64 },
    #[error(
        "the backup is corrupt: its body is {found} bytes, longer than the {expected} its \
         header announces"
    )]
    TooLong { expected: u64, found: u64 },
    #[error(
        "the backup is corrupt: the SHA-256 of its body is {found}, its header says {expected}"
    )]
    Checksum { expected: String, found: String },
    #[error("the backup is corrupt: line {line}: {why}")]
    Corrupt { line: u64, why: String },
    #[error("the backup is corrupt: its header counts {expected} {what}, its body holds {found}")]
    Counts {
        what: &'static str,
        expected: u64,
        found: u64,
    },
    #[error("the backup header does not fit in {HEADER_WIDTH} bytes (names too long?)")]
    HeaderTooLong,
    #[error(
        "refusing to restore into buckets that are not empty: {}; restore into empty or \
         missing buckets, or give --force to write on top of what is there",
        .0.join(", ")
    )]
    NotEmpty(Vec<String>),
    #[error(
        "bucket {bucket:?} keeps {history} versions per secret, but the backup has a secret \
         with {needed}: delete the bucket so that restore creates it with the backup's history"
    )]
    HistoryTooShort {
        bucket: String,
        history: i64,
        needed: u64,
    },
    #[error("cannot back up {key:?} in bucket {bucket:?}: {why}")]
    Unreadable {
        bucket: String,
        key: String,
        why: String,
    },
    #[error(
        "restore stopped after {written} of {total} entries were written: {why}; the buckets \
         hold part of the backup: delete them and restore again"
    )]
    Partial {
        written: u64,
        total: u64,
        why: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn upstream(e: impl std::fmt::Display) -> BackupError {
    BackupError::Store(StoreError::upstream(e))
}

/// A secret seen by the first pass over the secrets stream.
#[derive(Default)]
struct KeyState {
    /// Revision of its last delete or purge marker (0: none): older versions are gone.
    since: u64,
    /// Whether its last message is a value (not a marker).
    live: bool,
    /// Whether a version of it was written to the backup.
    written: bool,
}

/// Write a backup of `buckets` to `out`, from its start, its header signed by `signer`;
/// `progress` gets the number of versions written so far. Reads the buckets directly: no
/// data key is needed, and nothing is decrypted. Returns the header written.
pub async fn backup<W: Write + Seek>(
    client: &async_nats::Client,
    js_domain: Option<&str>,
    buckets: &Buckets,
    backend_name: &str,
    signer: &AdminSigner,
    out: W,
    mut progress: impl FnMut(u64),
) -> Result<Header, BackupError> {
    let js = store::jetstream(client, js_domain);
    let secrets = store::existing_bucket(&js, &buckets.secrets).await?;
    let secrets_history = secrets.stream.cached_info().config.max_messages_per_subject;
    let secrets = KvStream::of(&secrets);
    let mappings = KvStream::of(&store::existing_bucket(&js, &buckets.mappings).await?);
    let vault = existing(&js, &buckets.vault).await?;
    let mut header = Header {
        format: FORMAT.to_string(),
        version: FORMAT_VERSION,
        backend: backend_name.to_string(),
        secrets_bucket: buckets.secrets.clone(),
        secrets_history,
        created_at: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(upstream)?,
        secrets: 0,
        versions: 0,
        mappings: 0,
        app_mappings: 0,
        key_record: false,
        body_bytes: 0,
        body_sha256: String::new(),
        signer: String::new(),
        signature: String::new(),
    };

    // Pass 1, headers only: which secrets are live, and since which revision (a purge
    // leaves only its marker; a delete marker hides what came before it).
    let mut keys: HashMap<String, KeyState> = HashMap::new();
    let first = Delivery::History { headers_only: true };
    secrets
        .read_existing::<BackupError>(client, &js, first, DESCRIPTION, |m| {
            let state = keys.entry(m.key).or_default();
            if m.value.is_none() {
                state.since = m.revision;
                state.live = false;
            } else {
                state.live = true;
            }
            Ok(ControlFlow::Continue(()))
        })
        .await?;

    // Pass 2: the values of the live secrets' versions, in stream order.
    let mut body = BodyWriter::start(out)?;
    let second = Delivery::History {
        headers_only: false,
    };
    secrets
        .read_existing::<BackupError>(client, &js, second, DESCRIPTION, |m| {
            let Some(state) = keys.get_mut(&m.key) else {
                return Ok(ControlFlow::Continue(()));
            };
            // Markers, and versions a later delete or purge hid, are not backed up.
            let Some(value) = m.value.filter(|_| state.live && m.revision > state.since) else {
                return Ok(ControlFlow::Continue(()));
            };
            if !state.written {
                state.written = true;
                header.secrets += 1;
            }
            body.line(&Line::Version {
                value: b64(&value),
                secret: m.key,
                revision: m.revision,
                written_ms: clock::unix_ms(m.at),
            })?;
            header.versions += 1;
            progress(header.versions);
            Ok(ControlFlow::Continue(()))
        })
        .await?;
    drop(keys);

    let latest = Delivery::Latest {
        headers_only: false,
    };
    mappings
        .read_existing::<BackupError>(client, &js, latest, DESCRIPTION, |m| {
            let Some(value) = m.value else {
                return Ok(ControlFlow::Continue(()));
            };
            let names: BTreeSet<String> =
                serde_json::from_slice(&value).map_err(|e| BackupError::Unreadable {
                    bucket: buckets.mappings.clone(),
                    key: m.key.clone(),
                    why: format!("not a JSON array of names: {e}"),
                })?;
            let names = names.into_iter().collect();
            match store::Grantee::from_kv_key(&m.key) {
                Some(store::Grantee::Application(application)) => {
                    body.line(&Line::AppMapping {
                        application: application.to_string(),
                        names,
                    })?;
                    header.app_mappings += 1;
                }
                // An entity's, or a key that is neither (restore refuses it, by name).
                _ => {
                    body.line(&Line::Mapping {
                        entity: m.key,
                        names,
                    })?;
                    header.mappings += 1;
                }
            }
            Ok(ControlFlow::Continue(()))
        })
        .await?;

    // Last, so that it holds every data key the values above were sealed with.
    if let Some(vault) = vault {
        let entry = vault.entry(RECORD_KEY).await.map_err(upstream)?;
        if let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) {
            serde_json::from_slice::<KeyRecord>(&entry.value).map_err(|e| {
                BackupError::Unreadable {
                    bucket: buckets.vault.clone(),
                    key: RECORD_KEY.to_string(),
                    why: e.to_string(),
                }
            })?;
            body.line(&Line::KeyRecord {
                value: b64(&entry.value),
            })?;
            header.key_record = true;
        }
    }
    body.finish(header, signer)
}

/// Where and how to restore.
#[derive(Debug, Clone)]
pub struct Destination {
    pub buckets: Buckets,
    /// Versions kept per secret by a secrets bucket that restore creates; `None`: as many as
    /// the backed-up bucket kept.
    pub history: Option<i64>,
    /// Replicas of the buckets restore creates.
    pub replicas: usize,
    /// Write on top of buckets that are not empty.
    pub force: bool,
}

/// What a restore wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub secrets: u64,
    pub versions: u64,
    pub mappings: u64,
    /// Grants to wadm applications written.
    pub app_mappings: u64,
    pub key_record: bool,
    /// The buckets restore created (the others existed).
    pub created: Vec<String>,
}

/// Whether `kv` holds a live key.
async fn holds_anything(
    client: &async_nats::Client,
    js: &jetstream::Context,
    kv: &kv::Store,
) -> Result<bool, BackupError> {
    let mut found = false;
    let latest = Delivery::Latest { headers_only: true };
    let kv = KvStream::of(kv);
    kv.read_existing::<BackupError>(client, js, latest, DESCRIPTION, |m| {
        found = m.value.is_some();
        Ok(if found {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        })
    })
    .await?;
    Ok(found)
}

/// The bucket `name`, if it exists.
async fn existing(js: &jetstream::Context, name: &str) -> Result<Option<kv::Store>, BackupError> {
    match store::existing_bucket(js, name).await {
        Ok(kv) => Ok(Some(kv)),
        Err(StoreError::NoBucket(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The bucket found, or else the bucket `spec` describes, created (and named in `created`).
async fn ensure(
    js: &jetstream::Context,
    spec: &BucketSpec,
    found: Option<kv::Store>,
    created: &mut Vec<String>,
) -> Result<kv::Store, BackupError> {
    if let Some(kv) = found {
        return Ok(kv);
    }
    created.push(spec.name.clone());
    Ok(store::open_or_create_bucket(js, spec).await?)
}

/// The most bytes one value written to the bucket `name` may have: the connection's
/// `max_payload` (a larger publish is refused, and closes the connection), and the bucket's
/// max value size when it exists and has one (a bucket restore creates has none). Returns
/// the limit and what sets it.
fn value_limit(max_payload: usize, name: &str, bucket: Option<&kv::Store>) -> (u64, String) {
    let payload = match max_payload {
        0 => u64::MAX,
        n => n as u64,
    };
    let mut limit = (payload, "the server's max_payload".to_string());
    if let Some(kv) = bucket {
        let max_value = kv.stream.cached_info().config.max_message_size;
        if let Ok(max_value) = u64::try_from(max_value) {
            if max_value > 0 && max_value < limit.0 {
                limit = (max_value, format!("bucket {name:?}'s max value size"));
            }
        }
    }
    limit
}

/// Refuse the whole backup if any value it holds is larger than what the target accepts
/// for it, naming the largest such value (see [`value_limit`]).
fn check_sizes(
    largest: &Largest,
    max_payload: usize,
    buckets: [(&str, Option<&kv::Store>); 3],
) -> Result<(), BackupError> {
    let [secrets, mappings, vault] = buckets;
    let kinds = [
        (&largest.version, secrets),
        (&largest.mapping, mappings),
        (&largest.key_record, vault),
    ];
    for (value, (name, bucket)) in kinds {
        let Some(value) = value else {
            continue;
        };
        let (limit, limited_by) = value_limit(max_payload, name, bucket);
        if value.bytes > limit {
            return Err(BackupError::TooLarge {
                what: value.what.clone(),
                line: value.line,
                bytes: value.bytes,
                limit,
                limited_by,
            });
        }
    }
    Ok(())
}

/// Bytes a stream counts against its `max_bytes` for each message beside the message's
/// subject and payload: nats-server's file store counts a record as its length (4),
/// sequence (8), timestamp (8) and subject length (2), the subject, the payload and a hash
/// (8) (`fileStoreMsgSize`; the memory store counts 16, so this overestimates there).
const STORED_OVERHEAD: u64 = 22 + 8;
/// Headers on a message restore writes through the KV API rather than a bare publish: the
/// key record's `create` sends `Nats-Expected-Last-Subject-Sequence` (the stream counts a
/// header's length, 4 bytes, and its text), rounded up. Bare publishes carry none.
const KV_API_HEADERS: u64 = 64;

/// Refuse the whole backup if any existing target bucket cannot hold all of what restore
/// writes into it, beside what it holds already (with `--force`), by its stream's
/// `max_msgs` or `max_bytes` (whatever its discard policy: with `new` the writes would stop
/// part way, with `old` the first restored versions would be evicted by the last). A bucket
/// restore creates has neither limit. The bytes are an estimate of what the stream counts
/// ([`STORED_OVERHEAD`]), rounded up; with `--force`, what per-secret history would evict
/// is not subtracted, so a forced restore into a nearly full bucket may be refused when it
/// would have fitted. The server refuses a message when the stream's bytes plus its
/// payload reach `max_bytes`, so the total must stay below it.
fn check_totals(buckets: [(Option<&kv::Store>, Total, u64); 3]) -> Result<(), BackupError> {
    for (bucket, total, headers) in buckets {
        let Some(kv) = bucket.filter(|_| total.messages > 0) else {
            continue;
        };
        let info = kv.stream.cached_info();
        let (config, state) = (&info.config, &info.state);
        if let Ok(limit) = u64::try_from(config.max_messages) {
            if limit > 0 && state.messages.saturating_add(total.messages) > limit {
                return Err(BackupError::BucketTooSmall {
                    bucket: kv.name.clone(),
                    limit_name: "max_msgs",
                    limit,
                    need: total.messages,
                    held: state.messages,
                    unit: "messages",
                    estimate: String::new(),
                });
            }
        }
        if let Ok(limit) = u64::try_from(config.max_bytes) {
            // The subject of every message: "$KV." bucket "." key (the key is in `bytes`).
            let per_message = STORED_OVERHEAD + headers + 5 + kv.name.len() as u64;
            let need = total
                .bytes
                .saturating_add(total.messages.saturating_mul(per_message));
            if limit > 0 && state.bytes.saturating_add(need) >= limit {
                return Err(BackupError::BucketTooSmall {
                    bucket: kv.name.clone(),
                    limit_name: "max_bytes",
                    limit,
                    need,
                    held: state.bytes,
                    unit: "bytes",
                    estimate: format!(
                        " ({} messages: their keys and values, {} bytes, and \
                         {per_message} bytes each of subject and record overhead)",
                        total.messages, total.bytes
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Load a verified backup into `destination`'s buckets, creating the missing ones as `run`
/// does ([`Buckets`]). Refuses, before creating or writing anything: buckets that hold
/// anything unless forced, a secrets bucket that keeps fewer versions than the backup has,
/// a backup holding a value larger than the server or its bucket accepts (the largest
/// is named), and a backup an existing bucket cannot hold in all ([`check_totals`]). Writes the key record first, then every version in the backup's order (so each secret's latest stays its
/// latest), then the mappings. `progress` gets (entries written, entries in all).
pub async fn restore<R: Read + Seek>(
    client: &async_nats::Client,
    js_domain: Option<&str>,
    destination: &Destination,
    backup: VerifiedBackup<R>,
    mut progress: impl FnMut(u64, u64),
) -> Result<Restored, BackupError> {
    let VerifiedBackup {
        header,
        body_start,
        key_record,
        max_versions,
        largest,
        totals,
        signed_by: _,
        mut file,
    } = backup;
    let buckets = &destination.buckets;
    let js = store::jetstream(client, js_domain);
    let history = destination
        .history
        .unwrap_or(header.secrets_history)
        .clamp(1, i64::from(config::DEFAULT_MAX_SECRET_HISTORY));
    let secrets_spec = buckets.secrets_spec(history, destination.replicas);
    let mappings_spec = buckets.mappings_spec(destination.replicas);
    let vault_spec = key_record
        .is_some()
        .then(|| buckets.vault_spec(destination.replicas));

    // Every check first; nothing is created or written until all pass.
    let found_secrets = existing(&js, &secrets_spec.name).await?;
    let found_mappings = existing(&js, &mappings_spec.name).await?;
    let found_vault = match &vault_spec {
        Some(spec) => existing(&js, &spec.name).await?,
        None => None,
    };
    let mut occupied = Vec::new();
    for kv in [&found_secrets, &found_mappings, &found_vault]
        .into_iter()
        .flatten()
    {
        if holds_anything(client, &js, kv).await? {
            occupied.push(kv.name.clone());
        }
    }
    if !occupied.is_empty() && !destination.force {
        return Err(BackupError::NotEmpty(occupied));
    }
    if let Some(kv) = &found_secrets {
        let kept = kv.stream.cached_info().config.max_messages_per_subject;
        if kept > 0 && kept.unsigned_abs() < max_versions {
            return Err(BackupError::HistoryTooShort {
                bucket: buckets.secrets.clone(),
                history: kept,
                needed: max_versions,
            });
        }
    }
    check_sizes(
        &largest,
        client.server_info().max_payload,
        [
            (&secrets_spec.name, found_secrets.as_ref()),
            (&mappings_spec.name, found_mappings.as_ref()),
            (&buckets.vault, found_vault.as_ref()),
        ],
    )?;
    let Totals {
        versions,
        mappings,
        key_record: record,
    } = totals;
    check_totals([
        (found_secrets.as_ref(), versions, 0),
        (found_mappings.as_ref(), mappings, 0),
        (found_vault.as_ref(), record, KV_API_HEADERS),
    ])?;

    let mut created = Vec::new();
    let secrets = KvStream::of(&ensure(&js, &secrets_spec, found_secrets, &mut created).await?);
    let mappings = KvStream::of(&ensure(&js, &mappings_spec, found_mappings, &mut created).await?);
    if let (Some(record), Some(spec)) = (&key_record, &vault_spec) {
        let vault = ensure(&js, spec, found_vault, &mut created).await?;
        let record = Bytes::from(record.clone());
        if destination.force {
            vault.put(RECORD_KEY, record).await.map_err(upstream)?;
        } else {
            vault.create(RECORD_KEY, record).await.map_err(|e| {
                if e.kind() == kv::CreateErrorKind::AlreadyExists {
                    BackupError::NotEmpty(vec![buckets.vault.clone()])
                } else {
                    upstream(e)
                }
            })?;
        }
    }

    // Versions and mappings, in the file's order, WINDOW writes in flight. One connection
    // publishes them in order and the stream stores them in that order, so each secret's
    // versions keep theirs.
    let total = header.versions + header.mappings + header.app_mappings;
    let mut written = 0u64;
    let partial = |written: u64, why: String| BackupError::Partial {
        written,
        total,
        why,
    };
    let mut in_flight: VecDeque<jetstream::context::PublishAckFuture> = VecDeque::new();
    file.seek(SeekFrom::Start(body_start))?;
    let mut lines = BodyLines::new(BufReader::with_capacity(1 << 20, &mut file));
    let mut check = BodyCheck::default();
    while let Some((number, line)) = lines
        .next_line()
        .map_err(|e| partial(written, e.to_string()))?
    {
        let entry = check
            .line(number, line)
            .map_err(|why| partial(written, format!("line {number}: {why}")))?;
        let (subject, value) = match entry {
            Entry::Version { secret, value } => (secrets.put_subject(js_domain, &secret), value),
            Entry::Mapping { entity, value } => (mappings.put_subject(js_domain, &entity), value),
            Entry::KeyRecord => continue,
        };
        let ack = js
            .publish(subject, value.into())
            .await
            .map_err(|e| partial(written, e.to_string()))?;
        in_flight.push_back(ack);
        if in_flight.len() >= WINDOW {
            if let Some(ack) = in_flight.pop_front() {
                ack.await.map_err(|e| partial(written, e.to_string()))?;
                written += 1;
                progress(written, total);
            }
        }
    }
    while let Some(ack) = in_flight.pop_front() {
        ack.await.map_err(|e| partial(written, e.to_string()))?;
        written += 1;
        progress(written, total);
    }
    if lines.sha256() != header.body_sha256 {
        return Err(partial(
            written,
            "the file changed while it was being restored".into(),
        ));
    }
    Ok(Restored {
        secrets: header.secrets,
        versions: header.versions,
        mappings: header.mappings,
        app_mappings: header.app_mappings,
        key_record: key_record.is_some(),
        created,
    })
}
