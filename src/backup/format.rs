//! The backup file format, apart from any I/O but the file's own: writing a body behind a
//! reserved header ([`BodyWriter`]), checking a file whole ([`VerifiedBackup::open`]), and
//! decoding its lines one by one ([`BodyCheck`]). Pure: no NATS, so every rule is unit-tested.
//!
//! # Format (version 2)
//!
//! ```text
//! header line   one JSON object (`Header`), padded with spaces to HEADER_WIDTH bytes, then "\n"
//! body          JSON lines, one `Line` each, every one ending with "\n":
//!   {"type":"version","secret":NAME,"revision":N,"written_ms":MS,"value":BASE64}
//!   {"type":"mapping","entity":KEY,"names":[NAME,...]}
//!   {"type":"app_mapping","application":NAME,"names":[NAME,...]}
//!   {"type":"key_record","value":BASE64}
//! ```
//!
//! `value` is the bytes the bucket holds, in standard base64: a version's sealed envelope
//! (`store::envelope`), the key record's JSON (keys wrapped by the database key). So the file
//! holds no plaintext and making it needs no key. Versions come in the source stream's order
//! (each secret's versions oldest first), then the mappings (of entities and of wadm
//! applications, in the bucket's order), then the key record, which is
//! read last so that it holds every data key a value in the file was sealed with (keys are
//! only ever added to it). The header counts the body and carries its length and SHA-256;
//! the writer streams the body and fills the padded header in at the end, so a backup of
//! any size needs memory only for the names, never the values.
//!
//! # Authentication
//!
//! The header is signed by an admin key (`signer`, a user nkey; `signature`, ed25519 over
//! [`SIGNATURE_DOMAIN`] followed by the header's JSON without its `signature` field, as
//! [`Header`] serializes it). The header holds the body's length and SHA-256, so the
//! signature covers every byte that restore reads. Someone who can edit the file but holds
//! no admin seed cannot make a file that verifies: recomputing the checksum changes the
//! header, which no longer matches its signature. [`VerifiedBackup::open`] checks the
//! signature, and that its signer is one of the admin keys the operator trusts
//! ([`Trust`]), before it reads the body. Version 1 (before signatures) is read only when
//! the operator accepts an unauthenticated file ([`Trust::Unauthenticated`]).
//!
//! A signature says who made the file, not when: an admin's older backup verifies as well
//! as their latest (restore refuses buckets that hold anything, unless forced).

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use super::sizes::{Largest, Totals};
use super::BackupError;
use crate::admin_auth::{self, AdminSigner};
use crate::seal::key_record::KeyRecord;
use crate::seal::RECORD_KEY;
use crate::store::{self, envelope};

/// The `format` every backup's header names.
pub const FORMAT: &str = "piggybank-backup";
/// The version of the format this code writes (and reads).
pub const FORMAT_VERSION: u32 = 2;
/// The version before headers were signed: read only from an unauthenticated source.
pub const FORMAT_VERSION_UNSIGNED: u32 = 1;
/// The tag a header's signed bytes start with: no admin request's signature (nor any other
/// document's) can be taken for a backup's.
pub const SIGNATURE_DOMAIN: &[u8] = b"piggybank-backup-v2\0";
/// The header line's width, newline included: the writer reserves it before the body and
/// fills it in once the counts and the checksum are known. Readers read one line, whatever
/// its width.
pub const HEADER_WIDTH: usize = 4096;
/// Longest header line a reader accepts.
const MAX_HEADER: u64 = 64 * 1024;
/// Longest body line a reader accepts: a value of NATS's largest max payload (64 MiB), in
/// base64, with room for the rest of the line.
pub(super) const MAX_LINE: u64 = 96 * 1024 * 1024;

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
    /// Grants to wadm applications (`app_mapping` lines) in the body. Absent when none, so
    /// that a header written before them signs the same bytes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub app_mappings: u64,
    /// Whether the body holds sealed mode's key record.
    pub key_record: bool,
    /// Length of the body in bytes: a shorter file was truncated.
    pub body_bytes: u64,
    /// SHA-256 of the body, lowercase hex.
    pub body_sha256: String,
    /// The admin key that signed this header (a user public key, `U...`); absent in
    /// version 1.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub signer: String,
    /// The signer's ed25519 signature of the header (module docs), base64url without
    /// padding; absent in version 1.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub signature: String,
}

impl Header {
    /// The bytes the signature covers: the header as it serializes without its signature.
    fn signed_bytes(&self) -> Result<Vec<u8>, BackupError> {
        let unsigned = Header {
            signature: String::new(),
            ..self.clone()
        };
        Ok(serde_json::to_vec(&unsigned).map_err(std::io::Error::other)?)
    }
}

/// Whose signature a backup must carry for restore to read it.
#[derive(Debug, Clone, Copy)]
pub enum Trust<'a> {
    /// Signed by one of these admin keys (user public keys, as `run --admin-keys` has them).
    AdminKeys(&'a [String]),
    /// The operator vouches for the file (`restore --unauthenticated`): a version 1 file is
    /// read, and a version 2 file's signer is not checked.
    Unauthenticated,
}

/// Check `header`'s signature against `trust`; returns the signer it verified, if any.
fn authenticate(header: &Header, trust: Trust<'_>) -> Result<Option<String>, BackupError> {
    let keys = match trust {
        Trust::Unauthenticated => return Ok(None),
        Trust::AdminKeys(keys) => keys,
    };
    if header.version == FORMAT_VERSION_UNSIGNED {
        return Err(BackupError::Unauthenticated);
    }
    if header.signer.is_empty() || header.signature.is_empty() {
        return Err(BackupError::BadSignature);
    }
    let signer = header.signer.clone();
    if keys.is_empty() {
        return Err(BackupError::NoTrustedKeys { signer });
    }
    if !keys.contains(&signer) {
        return Err(BackupError::UntrustedSigner { signer });
    }
    let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&header.signature)
        .map_err(|_| BackupError::BadSignature)?;
    let signed = header.signed_bytes()?;
    if !admin_auth::verify_document(&signer, SIGNATURE_DOMAIN, &signed, &signature) {
        return Err(BackupError::BadSignature);
    }
    Ok(Some(signer))
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One line of the body.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub(super) enum Line {
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
    /// The secrets granted to one wadm application.
    AppMapping {
        application: String,
        names: Vec<String>,
    },
    /// Sealed mode's key record, as stored (wrapped keys only).
    KeyRecord { value: String },
}

pub(super) fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Streams the body into the file behind a reserved header line, hashing and counting.
pub(super) struct BodyWriter<W: Write + Seek> {
    out: BufWriter<W>,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write + Seek> BodyWriter<W> {
    pub(super) fn start(mut out: W) -> Result<Self, BackupError> {
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

    pub(super) fn line(&mut self, line: &Line) -> Result<(), BackupError> {
        let mut text = serde_json::to_vec(line).map_err(std::io::Error::other)?;
        text.push(b'\n');
        self.hasher.update(&text);
        self.bytes += text.len() as u64;
        self.out.write_all(&text)?;
        Ok(())
    }

    /// Fill the header in with the body's length and checksum, signed by `signer`.
    pub(super) fn finish(
        self,
        mut header: Header,
        signer: &AdminSigner,
    ) -> Result<Header, BackupError> {
        header.version = FORMAT_VERSION;
        header.body_bytes = self.bytes;
        header.body_sha256 = data_encoding::HEXLOWER.encode(&self.hasher.finalize());
        header.signer = signer.public_key().to_string();
        header.signature = String::new();
        let signature = signer.sign_document(SIGNATURE_DOMAIN, &header.signed_bytes()?);
        header.signature = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature);
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

/// One body line, checked and decoded.
pub(super) enum Entry {
    Version {
        secret: String,
        value: Vec<u8>,
    },
    /// A grant's key in the mappings bucket (an entity's, or an application's
    /// `app.<name>`) and the value restore writes for it ([`mapping_value`]).
    Mapping {
        entity: String,
        value: Vec<u8>,
    },
    /// Written before the body is read again (see [`BodyCheck::key_record`]).
    KeyRecord,
}

/// The payload restore writes for a mapping: its names as a sorted JSON array.
pub(super) fn mapping_value(names: &[String]) -> Result<Vec<u8>, String> {
    let names: std::collections::BTreeSet<&String> = names.iter().collect();
    serde_json::to_vec(&names).map_err(|e| e.to_string())
}

/// Checks body lines one by one, counts them, and notes the largest values.
#[derive(Default)]
pub(super) struct BodyCheck {
    /// Per secret: the last revision seen (versions must come in order) and how many.
    secrets: HashMap<String, (u64, u64)>,
    entities: HashSet<String>,
    applications: HashSet<String>,
    versions: u64,
    key_record: Option<Vec<u8>>,
    pub(super) largest: Largest,
    pub(super) totals: Totals,
}

impl BodyCheck {
    /// Check line `number` of the file, `text`.
    pub(super) fn line(&mut self, number: u64, text: &[u8]) -> Result<Entry, String> {
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
                Largest::note(&mut self.largest.version, number, value.len(), || {
                    format!("a version of secret {secret:?}")
                });
                self.totals.versions.add(&secret, value.len());
                Ok(Entry::Version { secret, value })
            }
            Line::Mapping { entity, names } => {
                store::EntityKey::parse(&entity).map_err(|e| e.to_string())?;
                // The rule `add_mapping` applies: no component is granted an API name.
                for name in &names {
                    store::validate_grantable(name).map_err(|e| e.to_string())?;
                }
                if !self.entities.insert(entity.clone()) {
                    return Err(format!("entity {entity} is mapped twice"));
                }
                let value = mapping_value(&names)?;
                Largest::note(&mut self.largest.mapping, number, value.len(), || {
                    format!("the mapping of entity {entity}")
                });
                self.totals.mappings.add(&entity, value.len());
                Ok(Entry::Mapping { entity, value })
            }
            Line::AppMapping { application, names } => {
                let grantee =
                    store::Grantee::application(&application).map_err(|e| e.to_string())?;
                for name in &names {
                    store::validate_grantable(name).map_err(|e| e.to_string())?;
                }
                if !self.applications.insert(application.clone()) {
                    return Err(format!("application {application} is granted twice"));
                }
                let value = mapping_value(&names)?;
                Largest::note(&mut self.largest.mapping, number, value.len(), || {
                    format!("the grants of application {application}")
                });
                let key = grantee.kv_key().into_owned();
                self.totals.mappings.add(&key, value.len());
                Ok(Entry::Mapping { entity: key, value })
            }
            Line::KeyRecord { value } => {
                if self.key_record.is_some() {
                    return Err("a second key record".into());
                }
                let value = decode(&value)?;
                serde_json::from_slice::<KeyRecord>(&value)
                    .map_err(|e| format!("the key record is not one: {e}"))?;
                Largest::note(&mut self.largest.key_record, number, value.len(), || {
                    "the key record".to_string()
                });
                self.totals.key_record.add(RECORD_KEY, value.len());
                self.key_record = Some(value);
                Ok(Entry::KeyRecord)
            }
        }
    }

    /// Most versions any one secret has.
    pub(super) fn max_versions(&self) -> u64 {
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
        Some(v) if v == u64::from(FORMAT_VERSION) || v == u64::from(FORMAT_VERSION_UNSIGNED) => {}
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
    let mut lines = BodyLines::new(input);
    let mut first_problem = None;
    while let Some((number, line)) = lines.next_line()? {
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
        if let Err(e) = each(number, line) {
            first_problem = Some(e);
        }
    }
    let bytes = lines.bytes;
    Ok((bytes, lines.sha256(), first_problem))
}

/// Reads a body line by line (at most [`MAX_LINE`] bytes each), hashing and counting what it
/// reads: the one reader of a body, for the whole-file check and for restore alike.
pub(super) struct BodyLines<R> {
    input: R,
    hasher: Sha256,
    /// Bytes read so far.
    bytes: u64,
    /// The number of the last line read, in the file (the header is line 1).
    number: u64,
    line: Vec<u8>,
}

impl<R: BufRead> BodyLines<R> {
    pub(super) fn new(input: R) -> Self {
        Self {
            input,
            hasher: Sha256::new(),
            bytes: 0,
            number: 1,
            line: Vec::new(),
        }
    }

    /// The next line, newline included (none when cut short), and its number in the file;
    /// `None` at the end.
    pub(super) fn next_line(&mut self) -> std::io::Result<Option<(u64, &[u8])>> {
        self.line.clear();
        let n = (&mut self.input)
            .take(MAX_LINE)
            .read_until(b'\n', &mut self.line)?;
        if n == 0 {
            return Ok(None);
        }
        self.hasher.update(&self.line);
        self.bytes += n as u64;
        self.number += 1;
        Ok(Some((self.number, &self.line)))
    }

    /// The SHA-256 of what was read, lowercase hex, as a header carries it.
    pub(super) fn sha256(self) -> String {
        data_encoding::HEXLOWER.encode(&self.hasher.finalize())
    }
}

/// A backup file whose header, length, checksum and every line have been checked: the only
/// thing [`restore`](super::restore) accepts.
pub struct VerifiedBackup<R> {
    pub(super) header: Header,
    /// Where the body starts: restore reads it again from there.
    pub(super) body_start: u64,
    /// The key record's bytes, which restore writes first.
    pub(super) key_record: Option<Vec<u8>>,
    /// Most versions any one secret has: the history a secrets bucket needs.
    pub(super) max_versions: u64,
    /// The largest value of each kind: restore checks them against the target's limits.
    pub(super) largest: Largest,
    /// All restore writes of each kind: checked against the target buckets' total limits.
    pub(super) totals: Totals,
    /// The admin key whose signature verified (`None`: not checked, [`Trust::Unauthenticated`]).
    pub(super) signed_by: Option<String>,
    pub(super) file: R,
}

impl<R: Read + Seek> VerifiedBackup<R> {
    /// Check the whole file: its header and the header's signature against `trust`, then
    /// its body's length and SHA-256 against the header, then every line (names, entities, base64, envelopes, the key record, each
    /// secret's versions in order), then the counts.
    pub fn open(mut file: R, trust: Trust<'_>) -> Result<Self, BackupError> {
        file.seek(SeekFrom::Start(0))?;
        let mut input = BufReader::with_capacity(1 << 20, &mut file);
        let (header, body_start) = read_header(&mut input)?;
        // First: a body is worth reading only behind a header that is the signer's.
        let signed_by = authenticate(&header, trust)?;
        let mut check = BodyCheck::default();
        let (bytes, sha, problem) = read_body(&mut input, |number, line| {
            check
                .line(number, line)
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
                "application grants",
                header.app_mappings,
                check.applications.len() as u64,
            ),
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
            largest: check.largest,
            totals: check.totals,
            signed_by,
            header,
            body_start,
            file,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The admin key whose signature verified; `None` when restore was told not to check.
    pub fn signed_by(&self) -> Option<&str> {
        self.signed_by.as_deref()
    }
}

#[cfg(test)]
mod tests;
