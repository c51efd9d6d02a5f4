//! Backup and restore of one backend's buckets: every kept version of every secret, the
//! mappings and sealed mode's key record, in one file, still sealed.
//!
//! # Format (version 1)
//!
//! ```text
//! header line   one JSON object (`Header`), padded with spaces to HEADER_WIDTH bytes, then "\n"
//! body          JSON lines, one `Line` each, every one ending with "\n":
//!   {"type":"version","secret":NAME,"revision":N,"written_ms":MS,"value":BASE64}
//!   {"type":"mapping","entity":KEY,"names":[NAME,...]}
//!   {"type":"key_record","value":BASE64}
//! ```
//!
//! `value` is the bytes the bucket holds, in standard base64: a version's sealed envelope
//! (`store::envelope`), the key record's JSON (keys wrapped by the database key). So the file
//! holds no plaintext and making it needs no key. Versions come in the source stream's order
//! (each secret's versions oldest first), then the mappings, then the key record, which is
//! read last so that it holds every data key a value in the file was sealed with (keys are
//! only ever added to it). The header counts the body and carries its length and SHA-256;
//! the writer streams the body and fills the padded header in at the end, so a backup of
//! any size needs memory only for the names, never the values.
//!
//! # Invariants
//! - `restore` writes nothing until the whole file is verified ([`VerifiedBackup::open`]:
//!   header, length, checksum, every line, counts), and nothing into a bucket that holds
//!   anything, unless forced.
//! - A secret's versions are written in their order, so its latest version stays the latest.
//!   KV revisions cannot be chosen: a restored version gets a new revision.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::ops::ControlFlow;
use std::time::Duration;

use async_nats::jetstream::consumer::{push, DeliverPolicy};
use async_nats::jetstream::{self, kv};
use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt as _;
use sha2::{Digest as _, Sha256};

use crate::config;
use crate::seal::key_record::KeyRecord;
use crate::seal::RECORD_KEY;
use crate::store::{self, envelope, BucketSpec, StoreError};

/// The `format` every backup's header names.
pub const FORMAT: &str = "piggybank-backup";
/// The version of the format this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The header line's width, newline included: the writer reserves it before the body and
/// fills it in once the counts and the checksum are known. Readers read one line, whatever
/// its width.
pub const HEADER_WIDTH: usize = 4096;
/// Longest header line a reader accepts.
const MAX_HEADER: u64 = 64 * 1024;
/// Longest body line a reader accepts: a value of NATS's largest max payload (64 MiB), in
/// base64, with room for the rest of the line.
const MAX_LINE: u64 = 96 * 1024 * 1024;
/// Restore keeps this many writes in flight (their acks awaited in order).
const WINDOW: usize = 256;
/// A bucket read that delivers nothing for this long has failed.
const IDLE: Duration = Duration::from_secs(30);

/// What a backup holds and how to check it: the first line of the file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Always [`FORMAT`]: what tells a backup from any other file.
    pub format: String,
    /// [`FORMAT_VERSION`] when written by this code.
    pub version: u32,
    /// The backend (`-n/--name`) whose buckets were read.
    pub backend: String,
    /// The secrets bucket that was read (`-b`).
    pub secrets_bucket: String,
    /// Versions that bucket kept per secret: restore creates its bucket with as many.
    pub secrets_history: i64,
    /// When the backup was made (RFC 3339, UTC).
    pub created_at: String,
    /// Secrets with at least one version in the body.
    pub secrets: u64,
    /// Version lines in the body.
    pub versions: u64,
    /// Mapping lines (entities) in the body.
    pub mappings: u64,
    /// Whether the body holds sealed mode's key record.
    pub key_record: bool,
    /// Length of the body in bytes: a shorter file was truncated.
    pub body_bytes: u64,
    /// SHA-256 of the body, lowercase hex.
    pub body_sha256: String,
}

/// One line of the body.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum Line {
    /// One kept version of a secret: its sealed envelope, as stored.
    Version {
        secret: String,
        /// Its revision in the source bucket (for reference: restore cannot keep it).
        revision: u64,
        /// When the source bucket stored it, unix ms.
        written_ms: u64,
        value: String,
    },
    /// The secrets one entity may read.
    Mapping { entity: String, names: Vec<String> },
    /// Sealed mode's key record, as stored (wrapped keys only).
    KeyRecord { value: String },
}

/// Errors of backup and restore.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("backup file: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a piggybank backup: {0}")]
    NotABackup(String),
    #[error(
        "the backup is in format version {found}; this piggybank reads version {FORMAT_VERSION}"
    )]
    UnsupportedVersion { found: u64 },
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

/// The buckets of one backend: what a backup reads and a restore writes.
#[derive(Debug, Clone)]
pub struct Buckets {
    /// `-b`: one key per secret, one revision per version.
    pub secrets: String,
    /// `SECRETS_<name>_state`.
    pub mappings: String,
    /// `SECRETS_<name>_vault`: sealed mode only.
    pub vault: String,
}

impl Buckets {
    pub fn of(backend_name: &str, secrets_bucket: &str) -> Self {
        Self {
            secrets: secrets_bucket.to_string(),
            mappings: config::mappings_bucket(backend_name),
            vault: config::vault_bucket(backend_name),
        }
    }
}

/// One message of a bucket's stream.
struct KvMessage {
    key: String,
    revision: u64,
    written_ms: u64,
    /// A delete or purge marker.
    deleted: bool,
    value: Bytes,
}

/// Which messages of a bucket to read.
#[derive(Clone, Copy)]
enum Delivery {
    /// Every message still in the stream, in stream order.
    History { headers_only: bool },
    /// The last message of each key.
    Latest { headers_only: bool },
}

/// Read the messages of `kv`'s stream that exist now, in stream order, until `each` breaks.
/// Writes made after the read starts are not read.
async fn read_bucket(
    client: &async_nats::Client,
    kv: &kv::Store,
    delivery: Delivery,
    mut each: impl FnMut(KvMessage) -> Result<ControlFlow<()>, BackupError>,
) -> Result<(), BackupError> {
    let state = kv.stream.get_info().await.map_err(upstream)?.state;
    if state.messages == 0 {
        return Ok(());
    }
    let last = state.last_sequence;
    let (deliver_policy, headers_only) = match delivery {
        Delivery::History { headers_only } => (DeliverPolicy::All, headers_only),
        Delivery::Latest { headers_only } => (DeliverPolicy::LastPerSubject, headers_only),
    };
    let consumer = kv
        .stream
        .create_consumer(push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            description: Some("piggybank backup".to_string()),
            filter_subject: format!("{}>", kv.prefix),
            deliver_policy,
            headers_only,
            ..Default::default()
        })
        .await
        .map_err(upstream)?;
    if consumer.cached_info().num_pending == 0 {
        return Ok(());
    }
    let mut messages = consumer.messages().await.map_err(upstream)?;
    loop {
        let next = tokio::time::timeout(IDLE, messages.next())
            .await
            .map_err(|_| {
                upstream(format!(
                    "bucket {:?} delivered nothing for {} s",
                    kv.name,
                    IDLE.as_secs()
                ))
            })?;
        let message = next
            .ok_or_else(|| upstream(format!("the read of bucket {:?} ended early", kv.name)))?
            .map_err(upstream)?;
        let (revision, pending, published) = {
            let info = message.info().map_err(upstream)?;
            (info.stream_sequence, info.pending, info.published)
        };
        if revision > last {
            return Ok(());
        }
        if let Some(key) = message.subject.strip_prefix(kv.prefix.as_str()) {
            let deleted = message
                .headers
                .as_ref()
                .and_then(|h| h.get("KV-Operation"))
                .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE");
            let flow = each(KvMessage {
                key: key.to_string(),
                revision,
                written_ms: unix_ms(published),
                deleted,
                value: message.payload.clone(),
            })?;
            if flow.is_break() {
                return Ok(());
            }
        }
        if pending == 0 || revision >= last {
            return Ok(());
        }
    }
}

fn unix_ms(t: time::OffsetDateTime) -> u64 {
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Streams the body into the file behind a reserved header line, hashing and counting.
struct BodyWriter<W: Write + Seek> {
    out: BufWriter<W>,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write + Seek> BodyWriter<W> {
    fn start(mut out: W) -> Result<Self, BackupError> {
        out.seek(SeekFrom::Start(0))?;
        let mut out = BufWriter::with_capacity(1 << 20, out);
        let mut reserved = vec![b' '; HEADER_WIDTH];
        reserved[HEADER_WIDTH - 1] = b'\n';
        out.write_all(&reserved)?;
        Ok(Self {
            out,
            hasher: Sha256::new(),
            bytes: 0,
        })
    }

    fn line(&mut self, line: &Line) -> Result<(), BackupError> {
        let mut text = serde_json::to_vec(line).map_err(std::io::Error::other)?;
        text.push(b'\n');
        self.hasher.update(&text);
        self.bytes += text.len() as u64;
        self.out.write_all(&text)?;
        Ok(())
    }

    /// Fill the header in with the body's length and checksum.
    fn finish(self, mut header: Header) -> Result<Header, BackupError> {
        header.body_bytes = self.bytes;
        header.body_sha256 = data_encoding::HEXLOWER.encode(&self.hasher.finalize());
        let text = serde_json::to_vec(&header).map_err(std::io::Error::other)?;
        if text.len() >= HEADER_WIDTH {
            return Err(BackupError::HeaderTooLong);
        }
        let mut out = self.out.into_inner().map_err(|e| e.into_error())?;
        out.seek(SeekFrom::Start(0))?;
        out.write_all(&text)?;
        out.write_all(&vec![b' '; HEADER_WIDTH - 1 - text.len()])?;
        out.write_all(b"\n")?;
        out.flush()?;
        Ok(header)
    }
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

/// Write a backup of `buckets` to `out`, from its start; `progress` gets the number of
/// versions written so far. Reads the buckets directly: no key is needed, and nothing is
/// decrypted. Returns the header written.
pub async fn backup<W: Write + Seek>(
    client: &async_nats::Client,
    js_domain: Option<&str>,
    buckets: &Buckets,
    backend_name: &str,
    out: W,
    mut progress: impl FnMut(u64),
) -> Result<Header, BackupError> {
    let js = store::jetstream(client, js_domain);
    let secrets = store::existing_bucket(&js, &buckets.secrets).await?;
    let mappings = store::existing_bucket(&js, &buckets.mappings).await?;
    let vault = existing(&js, &buckets.vault).await?;
    let mut header = Header {
        format: FORMAT.to_string(),
        version: FORMAT_VERSION,
        backend: backend_name.to_string(),
        secrets_bucket: buckets.secrets.clone(),
        secrets_history: secrets.stream.cached_info().config.max_messages_per_subject,
        created_at: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(upstream)?,
        secrets: 0,
        versions: 0,
        mappings: 0,
        key_record: false,
        body_bytes: 0,
        body_sha256: String::new(),
    };

    // Pass 1, headers only: which secrets are live, and since which revision (a purge
    // leaves only its marker; a delete marker hides what came before it).
    let mut keys: HashMap<String, KeyState> = HashMap::new();
    let first = Delivery::History { headers_only: true };
    read_bucket(client, &secrets, first, |m| {
        let state = keys.entry(m.key).or_default();
        if m.deleted {
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
    read_bucket(client, &secrets, second, |m| {
        let Some(state) = keys.get_mut(&m.key) else {
            return Ok(ControlFlow::Continue(()));
        };
        if m.deleted || !state.live || m.revision <= state.since {
            return Ok(ControlFlow::Continue(()));
        }
        if !state.written {
            state.written = true;
            header.secrets += 1;
        }
        body.line(&Line::Version {
            value: b64(&m.value),
            secret: m.key,
            revision: m.revision,
            written_ms: m.written_ms,
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
    read_bucket(client, &mappings, latest, |m| {
        if m.deleted {
            return Ok(ControlFlow::Continue(()));
        }
        let names: BTreeSet<String> =
            serde_json::from_slice(&m.value).map_err(|e| BackupError::Unreadable {
                bucket: buckets.mappings.clone(),
                key: m.key.clone(),
                why: format!("not a JSON array of names: {e}"),
            })?;
        body.line(&Line::Mapping {
            entity: m.key,
            names: names.into_iter().collect(),
        })?;
        header.mappings += 1;
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
    body.finish(header)
}

/// One body line, checked and decoded.
enum Entry {
    Version {
        secret: String,
        value: Vec<u8>,
    },
    Mapping {
        entity: String,
        names: Vec<String>,
    },
    /// Written before the body is read again (see [`BodyCheck::key_record`]).
    KeyRecord,
}

/// Checks body lines one by one, and counts them.
#[derive(Default)]
struct BodyCheck {
    /// Per secret: the last revision seen (versions must come in order) and how many.
    secrets: HashMap<String, (u64, u64)>,
    entities: HashSet<String>,
    versions: u64,
    key_record: Option<Vec<u8>>,
}

impl BodyCheck {
    fn line(&mut self, text: &[u8]) -> Result<Entry, String> {
        let line: Line = serde_json::from_slice(text).map_err(|e| e.to_string())?;
        let decode = |value: &str| {
            base64::engine::general_purpose::STANDARD
                .decode(value)
                .map_err(|e| format!("value is not base64: {e}"))
        };
        match line {
            Line::Version {
                secret,
                revision,
                value,
                ..
            } => {
                store::validate_name(&secret).map_err(|e| e.to_string())?;
                let value = decode(&value)?;
                envelope::parse(&value).map_err(|e| format!("a version of {secret:?}: {e}"))?;
                let (last, count) = self.secrets.entry(secret.clone()).or_default();
                if revision <= *last {
                    return Err(format!("the versions of {secret:?} are out of order"));
                }
                *last = revision;
                *count += 1;
                self.versions += 1;
                Ok(Entry::Version { secret, value })
            }
            Line::Mapping { entity, names } => {
                store::validate_entity(&entity).map_err(|e| e.to_string())?;
                for name in &names {
                    store::validate_name(name).map_err(|e| e.to_string())?;
                }
                if !self.entities.insert(entity.clone()) {
                    return Err(format!("entity {entity} is mapped twice"));
                }
                Ok(Entry::Mapping { entity, names })
            }
            Line::KeyRecord { value } => {
                if self.key_record.is_some() {
                    return Err("a second key record".into());
                }
                let value = decode(&value)?;
                serde_json::from_slice::<KeyRecord>(&value)
                    .map_err(|e| format!("the key record is not one: {e}"))?;
                self.key_record = Some(value);
                Ok(Entry::KeyRecord)
            }
        }
    }

    /// Most versions any one secret has.
    fn max_versions(&self) -> u64 {
        self.secrets.values().map(|(_, n)| *n).max().unwrap_or(0)
    }
}

/// Read the header line; `(header, its length in bytes)`.
fn read_header(input: &mut impl BufRead) -> Result<(Header, u64), BackupError> {
    let mut line = Vec::new();
    let n = input.take(MAX_HEADER).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Err(BackupError::NotABackup("the file is empty".into()));
    }
    if line.last() != Some(&b'\n') {
        return Err(BackupError::NotABackup(
            "it has no complete header line (truncated?)".into(),
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(&line)
        .map_err(|_| BackupError::NotABackup("its first line is not a JSON header".into()))?;
    if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
        return Err(BackupError::NotABackup(format!(
            "its header does not say \"format\": \"{FORMAT}\""
        )));
    }
    match value.get("version").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(FORMAT_VERSION) => {}
        Some(found) => return Err(BackupError::UnsupportedVersion { found }),
        None => return Err(BackupError::NotABackup("its header has no version".into())),
    }
    let header = serde_json::from_value(value)
        .map_err(|e| BackupError::NotABackup(format!("its header is malformed: {e}")))?;
    Ok((header, n as u64))
}

/// Read the body from where `input` stands, feeding each line to `each`; returns its length
/// and SHA-256. A line that does not parse is reported only once the length and the checksum
/// have been compared (`first_problem`), so a truncated or altered file is named as such.
fn read_body(
    input: &mut impl BufRead,
    mut each: impl FnMut(u64, &[u8]) -> Result<(), BackupError>,
) -> Result<(u64, String, Option<BackupError>), BackupError> {
    let (mut hasher, mut bytes, mut number) = (Sha256::new(), 0u64, 1u64);
    let mut first_problem = None;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = input.by_ref().take(MAX_LINE).read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        hasher.update(&line);
        bytes += n as u64;
        number += 1;
        if first_problem.is_some() {
            continue;
        }
        if line.last() != Some(&b'\n') {
            first_problem = Some(BackupError::Corrupt {
                line: number,
                why: "the line does not end (truncated, or longer than any value)".into(),
            });
            continue;
        }
        if let Err(e) = each(number, &line) {
            first_problem = Some(e);
        }
    }
    let sha = data_encoding::HEXLOWER.encode(&hasher.finalize());
    Ok((bytes, sha, first_problem))
}

/// A backup file whose header, length, checksum and every line have been checked: the only
/// thing [`restore`] accepts.
pub struct VerifiedBackup<R> {
    header: Header,
    body_start: u64,
    key_record: Option<Vec<u8>>,
    max_versions: u64,
    file: R,
}

impl<R: Read + Seek> VerifiedBackup<R> {
    /// Check the whole file: its header, then its body's length and SHA-256 against the
    /// header, then every line (names, entities, base64, envelopes, the key record, each
    /// secret's versions in order), then the counts.
    pub fn open(mut file: R) -> Result<Self, BackupError> {
        file.seek(SeekFrom::Start(0))?;
        let mut input = BufReader::with_capacity(1 << 20, &mut file);
        let (header, body_start) = read_header(&mut input)?;
        let mut check = BodyCheck::default();
        let (bytes, sha, problem) = read_body(&mut input, |number, line| {
            check
                .line(line)
                .map(drop)
                .map_err(|why| BackupError::Corrupt { line: number, why })
        })?;
        drop(input);
        if bytes < header.body_bytes {
            return Err(BackupError::Truncated {
                expected: header.body_bytes,
                found: bytes,
            });
        }
        if bytes > header.body_bytes {
            return Err(BackupError::TooLong {
                expected: header.body_bytes,
                found: bytes,
            });
        }
        if sha != header.body_sha256 {
            return Err(BackupError::Checksum {
                expected: header.body_sha256.clone(),
                found: sha,
            });
        }
        if let Some(problem) = problem {
            return Err(problem);
        }
        let counts = [
            ("secrets", header.secrets, check.secrets.len() as u64),
            ("versions", header.versions, check.versions),
            ("mappings", header.mappings, check.entities.len() as u64),
            (
                "key records",
                u64::from(header.key_record),
                u64::from(check.key_record.is_some()),
            ),
        ];
        for (what, expected, found) in counts {
            if expected != found {
                return Err(BackupError::Counts {
                    what,
                    expected,
                    found,
                });
            }
        }
        Ok(Self {
            max_versions: check.max_versions(),
            key_record: check.key_record,
            header,
            body_start,
            file,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }
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
    pub key_record: bool,
    /// The buckets restore created (the others existed).
    pub created: Vec<String>,
}

/// Whether `kv` holds a live key.
async fn holds_anything(client: &async_nats::Client, kv: &kv::Store) -> Result<bool, BackupError> {
    let mut found = false;
    let latest = Delivery::Latest { headers_only: true };
    read_bucket(client, kv, latest, |m| {
        found = !m.deleted;
        Ok(if found {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        })
    })
    .await?;
    Ok(found)
}

/// The subject a KV put of `key` goes to, as `kv::Store::put` makes it (through the
/// domain's API prefix when the bucket is in another JetStream domain).
fn put_subject(kv: &kv::Store, js_domain: Option<&str>, key: &str) -> String {
    let mut subject = String::new();
    if let Some(domain) = js_domain.map(str::trim).filter(|d| !d.is_empty()) {
        if kv.use_jetstream_prefix {
            subject.push_str(&format!("$JS.{domain}.API."));
        }
    }
    subject.push_str(kv.put_prefix.as_deref().unwrap_or(&kv.prefix));
    subject.push_str(key);
    subject
}

/// How `run` describes the buckets it creates (`server::open_backend`, `open_seal`); restore
/// creates them alike.
const SECRETS_DESCRIPTION: &str = "piggybank secrets (sealed values)";
const MAPPINGS_DESCRIPTION: &str = "piggybank entity-to-secret mappings";
const VAULT_DESCRIPTION: &str = "piggybank sealed key record (wrapped keys only)";

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

/// Load a verified backup into `destination`'s buckets, creating the missing ones as `run`
/// does. Refuses (before writing anything) buckets that hold anything unless forced, and a
/// secrets bucket that keeps fewer versions than the backup has. Writes the key record
/// first, then every version in the backup's order (so each secret's latest stays its
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
        mut file,
    } = backup;
    let buckets = &destination.buckets;
    let js = store::jetstream(client, js_domain);
    let spec = |name: &str, description: &'static str, history: i64| BucketSpec {
        name: name.to_string(),
        description,
        history,
        replicas: destination.replicas,
    };
    let history = destination
        .history
        .unwrap_or(header.secrets_history)
        .clamp(1, i64::from(config::DEFAULT_MAX_SECRET_HISTORY));
    let secrets_spec = spec(&buckets.secrets, SECRETS_DESCRIPTION, history);
    let mappings_spec = spec(&buckets.mappings, MAPPINGS_DESCRIPTION, 1);
    let vault_spec = key_record
        .is_some()
        .then(|| spec(&buckets.vault, VAULT_DESCRIPTION, 1));

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
        if holds_anything(client, kv).await? {
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

    let mut created = Vec::new();
    let secrets = ensure(&js, &secrets_spec, found_secrets, &mut created).await?;
    let mappings = ensure(&js, &mappings_spec, found_mappings, &mut created).await?;
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
    let total = header.versions + header.mappings;
    let mut written = 0u64;
    let partial = |written: u64, why: String| BackupError::Partial {
        written,
        total,
        why,
    };
    let mut in_flight: VecDeque<jetstream::context::PublishAckFuture> = VecDeque::new();
    file.seek(SeekFrom::Start(body_start))?;
    let mut input = BufReader::with_capacity(1 << 20, &mut file);
    let mut check = BodyCheck::default();
    let mut hasher = Sha256::new();
    let mut line = Vec::new();
    for number in 2u64.. {
        line.clear();
        let n = input
            .by_ref()
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .map_err(|e| partial(written, e.to_string()))?;
        if n == 0 {
            break;
        }
        hasher.update(&line);
        let entry = check
            .line(&line)
            .map_err(|why| partial(written, format!("line {number}: {why}")))?;
        let (subject, value) = match entry {
            Entry::Version { secret, value } => (put_subject(&secrets, js_domain, &secret), value),
            Entry::Mapping { entity, names } => {
                let names: BTreeSet<String> = names.into_iter().collect();
                let value = serde_json::to_vec(&names).map_err(upstream)?;
                (put_subject(&mappings, js_domain, &entity), value)
            }
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
    if data_encoding::HEXLOWER.encode(&hasher.finalize()) != header.body_sha256 {
        return Err(partial(
            written,
            "the file changed while it was being restored".into(),
        ));
    }
    Ok(Restored {
        secrets: header.secrets,
        versions: header.versions,
        mappings: header.mappings,
        key_record: key_record.is_some(),
        created,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use zeroize::Zeroizing;

    fn header(secrets: u64, versions: u64, mappings: u64, key_record: bool) -> Header {
        Header {
            format: FORMAT.into(),
            version: FORMAT_VERSION,
            backend: "nats-kv".into(),
            secrets_bucket: "WASMCLOUD_SECRETS".into(),
            secrets_history: 64,
            created_at: "2026-01-01T00:00:00Z".into(),
            secrets,
            versions,
            mappings,
            key_record,
            body_bytes: 0,
            body_sha256: String::new(),
        }
    }

    /// A small backup: two versions of one secret, one of another, one mapping.
    fn small_backup() -> Vec<u8> {
        let key = crate::keys::DataKey::from_seed(&crate::keys::generate_seed()).unwrap();
        let sealed = |text: &str| {
            let value = envelope::SecretValue::String(Zeroizing::new(text.to_string()));
            b64(&envelope::seal(&value, &key, 1).unwrap())
        };
        let mut out = Cursor::new(Vec::new());
        let mut body = BodyWriter::start(&mut out).unwrap();
        for (secret, revision, text) in [("db", 1, "one"), ("api", 2, "two"), ("db", 3, "three")] {
            body.line(&Line::Version {
                secret: secret.into(),
                revision,
                written_ms: 5,
                value: sealed(text),
            })
            .unwrap();
        }
        body.line(&Line::Mapping {
            entity: nkeys::KeyPair::new_module().public_key(),
            names: vec!["api".into(), "db".into()],
        })
        .unwrap();
        body.finish(header(2, 3, 1, false)).unwrap();
        out.into_inner()
    }

    #[test]
    fn a_backup_verifies_with_its_header_padded_to_a_fixed_width() {
        let bytes = small_backup();
        assert_eq!(bytes[HEADER_WIDTH - 1], b'\n');
        let verified = VerifiedBackup::open(Cursor::new(bytes)).unwrap();
        let header = verified.header();
        assert_eq!(
            (header.secrets, header.versions, header.mappings),
            (2, 3, 1)
        );
        assert_eq!(verified.max_versions, 2);
    }

    #[test]
    fn every_flipped_body_byte_and_every_cut_is_refused() {
        let bytes = small_backup();
        for at in HEADER_WIDTH..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x01;
            match VerifiedBackup::open(Cursor::new(flipped)) {
                Err(BackupError::Checksum { .. }) => {}
                Err(other) => panic!("byte {at}: {other}"),
                Ok(_) => panic!("byte {at} flipped, and the backup verified"),
            }
        }
        for len in 0..bytes.len() {
            let cut = bytes[..len].to_vec();
            let refused = VerifiedBackup::open(Cursor::new(cut));
            assert!(
                matches!(
                    refused,
                    Err(BackupError::Truncated { .. } | BackupError::NotABackup(_))
                ),
                "cut at {len}"
            );
        }
    }

    #[test]
    fn a_body_whose_counts_disagree_with_its_header_is_refused() {
        let mut out = Cursor::new(Vec::new());
        let body = BodyWriter::start(&mut out).unwrap();
        body.finish(header(1, 1, 0, false)).unwrap();
        let refused = VerifiedBackup::open(Cursor::new(out.into_inner()));
        assert!(
            matches!(
                refused,
                Err(BackupError::Counts {
                    what: "secrets",
                    ..
                })
            ),
            "{:?}",
            refused.err()
        );
    }

    #[test]
    fn other_files_and_other_versions_are_named_as_such() {
        let refused = |bytes: &[u8]| VerifiedBackup::open(Cursor::new(bytes.to_vec())).err();
        assert!(matches!(
            refused(b"{\"format\":\"tar\"}\n"),
            Some(BackupError::NotABackup(_))
        ));
        assert!(matches!(
            refused(b"hello\n"),
            Some(BackupError::NotABackup(_))
        ));
        assert!(matches!(
            refused(b"{\"format\":\"piggybank-backup\",\"version\":2}\n"),
            Some(BackupError::UnsupportedVersion { found: 2 })
        ));
    }

    #[test]
    fn lines_refuse_unknown_types_and_fields() {
        let parse = |text: &str| serde_json::from_str::<Line>(text).is_ok();
        assert!(parse(r#"{"type":"key_record","value":"e30="}"#));
        assert!(!parse(r#"{"type":"key_record","value":"e30=","extra":1}"#));
        assert!(!parse(r#"{"type":"nonce","value":"e30="}"#));
        assert!(!parse(r#"{"value":"e30="}"#));
    }
}
