//! Tamper evidence: each instance signs its records with a key of its own, and chains them.
//!
//! - **The instance key** ([`InstanceKey`]) is an ed25519 key made at start, never stored,
//!   wiped on drop. Its public half is written as an nkey (`N...`, a server key), announced
//!   in `status` (`audit.instance_key`) and on every record (`instance_key`).
//! - **The chain** ([`Chain`]): one per instance and trail. Each record carries its sequence
//!   in the chain (`seq`, from 1), the previous record's digest (`prev`) and time
//!   (`prev_time_ms`). A record removed, added, reordered or changed is then visible to
//!   `piggybank audit --verify` ([`super::verify`]), without any secret: only public keys
//!   are needed.
//! - **One signature per message.** The last record of each message the writer publishes
//!   carries a signature (`sig`) over its canonical bytes; the records before it carry
//!   none. The signed record names its predecessor's digest, which names its own, so one
//!   signature covers every record back to the previous signed one: signing costs one
//!   ed25519 signature per message, not per record (a busy instance writes tens of records
//!   per message). A record is authentic when a valid signature follows it in its chain with
//!   no break between.
//!
//! Canonical bytes (what is signed, and what is digested): [`SIGNED_PREFIX`], then the record
//! as JSON without `sig`: fields in the order [`AuditRecord`] declares them, absent optional
//! fields left out, no whitespace (serde_json's compact form). A verifier re-serializes the
//! record it read, so only what the record type holds is covered, and an unknown field is
//! ignored. The digest (`prev` of the next record) is the SHA-256, hex, of the canonical
//! bytes: a signature added to the last record of a message changes no link.

use ed25519_dalek::{Signer as _, SigningKey, Verifier as _};
use sha2::{Digest as _, Sha256};

use super::{AuditRecord, Trail};

/// Domain separation: a record's signature can never be taken for any other signature the
/// key could make (it signs nothing else, but the prefix says so by construction).
pub const SIGNED_PREFIX: &[u8] = b"piggybank-audit-record-v1\n";

/// nkeys' prefix byte of a server public key (`N...`).
const SERVER_PUBLIC_PREFIX: u8 = 13 << 3;

#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("no randomness for the instance key: {0}")]
    Random(String),
    #[error("a record could not be encoded: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The instance's signing key. Made at start and never stored; `SigningKey` wipes itself
/// on drop (ed25519-dalek's `zeroize` feature).
pub struct InstanceKey {
    signing: SigningKey,
    public: String,
}

impl std::fmt::Debug for InstanceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl InstanceKey {
    pub fn generate() -> Result<Self, ChainError> {
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::getrandom(seed.as_mut()).map_err(|e| ChainError::Random(e.to_string()))?;
        let signing = SigningKey::from_bytes(&seed);
        let public = encode_server_public(signing.verifying_key().as_bytes());
        Ok(Self { signing, public })
    }

    /// The public key, as an nkey (`N...`).
    pub fn public(&self) -> &str {
        &self.public
    }

    fn sign(&self, bytes: &[u8]) -> String {
        let signature = self.signing.sign(bytes);
        data_encoding::BASE64URL_NOPAD.encode(&signature.to_bytes())
    }
}

/// An ed25519 public key written as nkeys writes a server key: base32 (no padding) of the
/// prefix byte, the key, and the CRC-16 (XMODEM, little-endian) of both. Written here
/// because nkeys 0.4 encodes a public key only from a `KeyPair`, which keeps an unwiped copy
/// of the seed; what it writes is read back with nkeys (`check_signature`, and a unit test).
fn encode_server_public(key: &[u8; 32]) -> String {
    let mut raw = Vec::with_capacity(35);
    raw.push(SERVER_PUBLIC_PREFIX);
    raw.extend_from_slice(key);
    let crc = crc16(&raw);
    raw.extend_from_slice(&crc.to_le_bytes());
    data_encoding::BASE32_NOPAD.encode(&raw)
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for byte in data {
        crc ^= u16::from(*byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// What is signed: the prefix and the record as JSON without its signature.
pub fn canonical_bytes(record: &AuditRecord) -> Result<Vec<u8>, serde_json::Error> {
    let mut unsigned = record.clone();
    unsigned.sig = None;
    let mut bytes = SIGNED_PREFIX.to_vec();
    serde_json::to_writer(&mut bytes, &unsigned)?;
    Ok(bytes)
}

/// The digest the next record names as `prev`: SHA-256 (hex) of its canonical bytes.
pub fn digest(record: &AuditRecord) -> Result<String, serde_json::Error> {
    Ok(digest_of(&canonical_bytes(record)?))
}

fn digest_of(canonical: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(&Sha256::digest(canonical))
}

/// Why a record's signature does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadSignature {
    /// No `sig` or no `instance_key`.
    Missing,
    /// `instance_key` is not a server nkey.
    BadKey,
    /// The signature is not `instance_key`'s over the record.
    Invalid,
}

impl BadSignature {
    pub fn as_str(self) -> &'static str {
        match self {
            BadSignature::Missing => "unsigned",
            BadSignature::BadKey => "signed by something that is not an instance key",
            BadSignature::Invalid => "its signature does not verify",
        }
    }
}

/// Check that `record` is signed by the key it names.
pub fn check_signature(record: &AuditRecord) -> Result<(), BadSignature> {
    let (Some(key), Some(sig)) = (&record.instance_key, &record.sig) else {
        return Err(BadSignature::Missing);
    };
    let (prefix, raw) = nkeys::from_public_key(key).map_err(|_| BadSignature::BadKey)?;
    if prefix != SERVER_PUBLIC_PREFIX {
        return Err(BadSignature::BadKey);
    }
    let verifying =
        ed25519_dalek::VerifyingKey::from_bytes(&raw).map_err(|_| BadSignature::BadKey)?;
    let sig = data_encoding::BASE64URL_NOPAD
        .decode(sig.as_bytes())
        .ok()
        .and_then(|s| ed25519_dalek::Signature::from_slice(&s).ok())
        .ok_or(BadSignature::Invalid)?;
    let bytes = canonical_bytes(record).map_err(|_| BadSignature::Invalid)?;
    verifying
        .verify(&bytes, &sig)
        .map_err(|_| BadSignature::Invalid)
}

/// One instance's chain on one trail: what the next record links to.
#[derive(Debug, Clone)]
pub struct Chain {
    trail: Trail,
    seq: u64,
    prev: Option<String>,
    prev_time_ms: Option<u64>,
}

impl Chain {
    pub fn new(trail: Trail) -> Self {
        Self {
            trail,
            seq: 0,
            prev: None,
            prev_time_ms: None,
        }
    }

    /// The sequence of the last record sealed (0: none yet).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Link `record` to the chain: the record to write, unsigned. The caller writes records
    /// in the order they were linked, and signs the last of each message ([`sign`]).
    pub fn link(
        &mut self,
        mut record: AuditRecord,
        key: &InstanceKey,
    ) -> Result<AuditRecord, ChainError> {
        record.trail = Some(self.trail);
        record.instance_key = Some(key.public().to_string());
        record.seq = Some(self.seq + 1);
        record.prev = self.prev.clone();
        record.prev_time_ms = self.prev_time_ms;
        record.sig = None;
        let canonical = canonical_bytes(&record)?;
        self.seq += 1;
        self.prev = Some(digest_of(&canonical));
        self.prev_time_ms = Some(record.time_ms);
        Ok(record)
    }

    /// Link `record` and sign it: the line to write (JSON, no newline). For a record that is
    /// a message of its own.
    pub fn seal(&mut self, record: AuditRecord, key: &InstanceKey) -> Result<Vec<u8>, ChainError> {
        let record = self.link(record, key)?;
        sign(record, key)
    }
}

/// Sign a linked record (the last of its message): the line to write (JSON, no newline).
pub fn sign(mut record: AuditRecord, key: &InstanceKey) -> Result<Vec<u8>, ChainError> {
    record.sig = None;
    record.sig = Some(key.sign(&canonical_bytes(&record)?));
    Ok(serde_json::to_vec(&record)?)
}

/// Room a signature takes in a record's line: `,"sig":"` and 86 base64url characters.
pub const SIGNATURE_BYTES: usize = 96;

#[cfg(test)]
mod tests {
    use super::*;

    fn record(op: &str) -> AuditRecord {
        AuditRecord {
            time_ms: 1,
            operation: op.into(),
            ..AuditRecord::default()
        }
    }

    #[test]
    fn the_public_key_is_the_nkey_nkeys_would_write() {
        let key = InstanceKey::generate().unwrap();
        let seed = key.signing.to_bytes();
        let nkey = nkeys::KeyPair::new_from_raw(nkeys::KeyPairType::Server, seed).unwrap();
        assert_eq!(key.public(), nkey.public_key());
        assert!(key.public().starts_with('N'));
    }

    #[test]
    fn a_sealed_record_verifies_and_links_to_the_one_before() {
        let key = InstanceKey::generate().unwrap();
        let mut chain = Chain::new(Trail::Decisions);
        let first: AuditRecord =
            serde_json::from_slice(&chain.seal(record("get"), &key).unwrap()).unwrap();
        let second: AuditRecord =
            serde_json::from_slice(&chain.seal(record("put_secret"), &key).unwrap()).unwrap();
        assert_eq!(check_signature(&first), Ok(()));
        assert_eq!(check_signature(&second), Ok(()));
        assert_eq!((first.seq, second.seq), (Some(1), Some(2)));
        assert_eq!(first.prev, None);
        assert_eq!(second.prev, Some(digest(&first).unwrap()));
    }

    #[test]
    fn a_changed_or_resigned_record_does_not_verify() {
        let key = InstanceKey::generate().unwrap();
        let mut chain = Chain::new(Trail::Decisions);
        let sealed: AuditRecord =
            serde_json::from_slice(&chain.seal(record("get"), &key).unwrap()).unwrap();
        let mut changed = sealed.clone();
        changed.operation = "put_secret".into();
        assert_eq!(check_signature(&changed), Err(BadSignature::Invalid));
        let mut unsigned = sealed.clone();
        unsigned.sig = None;
        assert_eq!(check_signature(&unsigned), Err(BadSignature::Missing));
        // Another key's signature over the same record, claiming the first key.
        let other = InstanceKey::generate().unwrap();
        let mut resigned = sealed.clone();
        resigned.sig = Some(other.sign(&canonical_bytes(&sealed).unwrap()));
        assert_eq!(check_signature(&resigned), Err(BadSignature::Invalid));
        // A user key is no instance key.
        let mut user = sealed;
        user.instance_key = Some(nkeys::KeyPair::new_user().public_key());
        assert_eq!(check_signature(&user), Err(BadSignature::BadKey));
    }

    /// The cost of sealing (chaining and signing) one record: `cargo test --release --lib
    /// -- --ignored sealing_cost --nocapture`.
    #[test]
    #[ignore]
    fn sealing_cost() {
        let key = InstanceKey::generate().unwrap();
        let mut chain = Chain::new(Trail::Decisions);
        let record = AuditRecord {
            time_ms: 1_700_000_000_000,
            request_id: "NAY2537EL4FQ-123456".into(),
            instance_id: "NAY2537EL4FQ".into(),
            front_door: "protocol".into(),
            operation: "get".into(),
            secret: Some("shop/db-password".into()),
            version: Some(3),
            entity: Some(nkeys::KeyPair::new_module().public_key()),
            host: Some(nkeys::KeyPair::new_server().public_key()),
            ..AuditRecord::default()
        };
        let n = 20_000u32;
        let started = std::time::Instant::now();
        let mut bytes = 0;
        for _ in 0..n {
            bytes += chain.seal(record.clone(), &key).unwrap().len();
        }
        let per = started.elapsed() / n;
        let plain = std::time::Instant::now();
        for _ in 0..n {
            bytes += serde_json::to_vec(&record).unwrap().len();
        }
        eprintln!(
            "sealing: {per:?}/record (serializing alone: {:?}), {} bytes/record",
            plain.elapsed() / n,
            bytes / (2 * n as usize)
        );
    }
}
