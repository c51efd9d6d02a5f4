//! Signed administration: who may change or read the store's state, proven per request.
//!
//! NATS authorizes subjects, and on a wasmCloud lattice many clients (every host, every
//! provider) may publish on the backend's subjects. So when `--admin-keys` is set, every
//! operation that changes or reveals store state must carry an ed25519 signature by one of
//! those nkeys, in four headers:
//!
//! | header | value |
//! |---|---|
//! | `Piggybank-Admin-Key` | the signer's public nkey, a user key (`U...`) |
//! | `Piggybank-Admin-Time` | when it was signed: unix milliseconds, decimal, no leading zero |
//! | `Piggybank-Admin-Nonce` | 16 random bytes as 32 lowercase hex characters |
//! | `Piggybank-Admin-Signature` | the 64-byte ed25519 signature, base64url without padding |
//!
//! The signature is over these bytes ([`signed_bytes`]; `u32be`/`u64be` are big-endian
//! integers, every variable field is length-prefixed, so no two requests share them):
//!
//! ```text
//! "piggybank-admin-v2" 0x00
//! u32be(len(subject)) subject          the NATS subject, as sent
//! u32be(len(key))     key              the Piggybank-Admin-Key text
//! u64be(time_ms)                       the Piggybank-Admin-Time value
//! u32be(len(nonce))   nonce            the Piggybank-Admin-Nonce text
//! u32be(n)                             every other header, n (name, value) pairs, sorted
//!   n x (u32be(len(name)) name           by name then value: a header the backend reads
//!        u32be(len(value)) value)        (Piggybank-Requester-Xkey) cannot be swapped
//! sha256(body)                         32 bytes
//! ```
//!
//! A request is accepted only if its time is within [`MAX_SKEW`] (30 s) of the verifying
//! instance's clock, before or after, and its nonce was never accepted before by any
//! instance: each accepted nonce is recorded with KV `create` (which fails when the key
//! exists) in the bucket `SECRETS_{name}_nonces`, which ages entries out after
//! [`NONCE_TTL`], longer than the 60 s a signed request can be valid. Operations that reach
//! every instance (`lock`) record the nonce once per instance ([`NonceScope::Instance`]),
//! so each instance still refuses a second copy.
//!
//! Invariants: a refusal never says which check failed (one message,
//! [`REFUSED`]); the nonce is recorded only after every other check passed, so a refused
//! request changes nothing; the nonce is the KV key verbatim and its format is strict, so
//! no re-encoding of one nonce can be a second, fresh one.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use base64::Engine as _;
use nkeys::{KeyPair, KeyPairType};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::config::headers;

/// Domain-separation tag: these signatures can never be mistaken for another protocol's.
pub(crate) const DOMAIN: &[u8] = b"piggybank-admin-v2\0";
/// How far a request's time may be from the verifier's clock, in the past or the future.
pub(crate) const MAX_SKEW: Duration = Duration::from_secs(30);
/// How long an accepted nonce is remembered: more than the 60 s window a request can be
/// valid in (30 s either side), with room for instances' clocks to differ.
pub(crate) const NONCE_TTL: Duration = Duration::from_secs(90);
/// Random bytes in a nonce (sent as twice as many hex characters).
pub(crate) const NONCE_BYTES: usize = 16;
/// The one message of every refusal.
pub const REFUSED: &str = "admin signature required or invalid";
/// The message when the nonce store cannot be reached (the request is not served).
pub(crate) const UNCHECKED: &str =
    "admin signature could not be checked (replay store unavailable); try again";

/// Whether a backend requires signed administration, as `status` reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminMode {
    /// Run with `--admin-keys`: admin operations must be signed by one of them.
    Signed,
    /// Run without: anyone who may publish on the subjects may administer (the sample's way).
    #[default]
    Unauthenticated,
}

impl std::fmt::Display for AdminMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AdminMode::Signed => "signed",
            AdminMode::Unauthenticated => "unauthenticated",
        })
    }
}

/// Public key text of the admin key that signed a request (for the audit log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminKeyId(pub String);

impl std::fmt::Display for AdminKeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a request was refused. Only for logs and tests: the requester always sees [`REFUSED`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// No headers, or one of the four missing or given twice.
    Missing,
    /// A header that does not parse (time, nonce or signature encoding).
    Malformed,
    /// The key is not one of `--admin-keys`.
    UnknownKey,
    /// The signature does not verify for these bytes and this key.
    BadSignature,
    /// Signed more than [`MAX_SKEW`] ago, or (for an operation every instance answers)
    /// before this instance started.
    Expired,
    /// Signed more than [`MAX_SKEW`] ahead of this instance's clock.
    FromTheFuture,
    /// The nonce was accepted before (by any instance).
    Replayed,
}

/// A refused admin request. `Display` never tells the requester which check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminRefusal {
    #[error("{REFUSED}")]
    Refused(RefusalReason),
    /// The nonce store did not answer: the request is valid as far as could be checked, but
    /// replay cannot be ruled out, so it is not served.
    #[error("{UNCHECKED}")]
    Unavailable(String),
}

impl AdminRefusal {
    /// The admin status code: 403, or 503 when the nonce store failed.
    pub fn code(&self) -> u16 {
        match self {
            AdminRefusal::Refused(_) => 403,
            AdminRefusal::Unavailable(_) => 503,
        }
    }

    /// For logs: which check failed (never sent to the requester).
    pub fn reason(&self) -> &'static str {
        match self {
            AdminRefusal::Refused(r) => match r {
                RefusalReason::Missing => "missing signature headers",
                RefusalReason::Malformed => "malformed signature headers",
                RefusalReason::UnknownKey => "key not in --admin-keys",
                RefusalReason::BadSignature => "bad signature",
                RefusalReason::Expired => "signed too long ago",
                RefusalReason::FromTheFuture => "signed in the future",
                RefusalReason::Replayed => "nonce already used",
            },
            AdminRefusal::Unavailable(_) => "nonce store unavailable",
        }
    }
}

/// A bad `--admin-keys` entry or admin seed. Never repeats a seed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminKeyError {
    #[error("invalid admin key {key:?}: {why}")]
    Invalid { key: String, why: &'static str },
    #[error(
        "an admin key looks like a seed (it starts with 'S'): give the public key (U...), \
         never the seed, in --admin-keys / ADMIN_KEYS / admin_keys"
    )]
    SeedGiven,
    #[error("the admin seed is not a valid nkey user seed (SU...)")]
    BadSeed,
}

/// Parse `--admin-keys`: trimmed, empty entries skipped, duplicates dropped; each must be
/// a valid nkey *user* public key (`U...`), the key type `nk -gen user` and `nsc` make for
/// people and tools. Returns the keys in the order given.
pub(crate) fn parse_admin_keys<S: AsRef<str>>(list: &[S]) -> Result<Vec<String>, AdminKeyError> {
    let mut keys: Vec<String> = Vec::new();
    for key in list
        .iter()
        .map(|k| k.as_ref().trim())
        .filter(|k| !k.is_empty())
    {
        check_admin_key(key)?;
        if !keys.iter().any(|k| k == key) {
            keys.push(key.to_string());
        }
    }
    Ok(keys)
}

fn check_admin_key(key: &str) -> Result<KeyPair, AdminKeyError> {
    if key.starts_with('S') {
        return Err(AdminKeyError::SeedGiven);
    }
    let shown = || key.chars().take(60).collect::<String>();
    let pair = KeyPair::from_public_key(key).map_err(|_| AdminKeyError::Invalid {
        key: shown(),
        why: "not an nkey public key",
    })?;
    if pair.key_pair_type() != KeyPairType::User {
        return Err(AdminKeyError::Invalid {
            key: shown(),
            why: "admin keys are nkey user keys (U...); make one with `nk -gen user -pubout`",
        });
    }
    Ok(pair)
}

/// The headers a signature names itself with; every other header is signed.
const SIGNATURE_HEADERS: [&str; 4] = [
    headers::ADMIN_KEY,
    headers::ADMIN_TIME,
    headers::ADMIN_NONCE,
    headers::ADMIN_SIGNATURE,
];

/// The bytes an admin signature covers (see the module docs): the subject, the signer, the
/// time, the nonce, every header but the four signature headers, and the body's digest.
pub(crate) fn signed_bytes(
    subject: &str,
    key: &str,
    time_ms: u64,
    nonce: &str,
    headers: Option<&HeaderMap>,
    body: &[u8],
) -> Vec<u8> {
    let mut covered: Vec<(&str, &str)> = headers
        .into_iter()
        .flat_map(|h| h.iter())
        .filter(|(name, _)| !SIGNATURE_HEADERS.contains(&name.as_ref()))
        .flat_map(|(name, values)| values.iter().map(move |v| (name.as_ref(), v.as_str())))
        .collect();
    covered.sort_unstable();
    let field = |out: &mut Vec<u8>, bytes: &[u8]| {
        out.extend_from_slice(&len32(bytes).to_be_bytes());
        out.extend_from_slice(bytes);
    };
    let mut out = Vec::with_capacity(DOMAIN.len() + 64 + subject.len() + key.len());
    out.extend_from_slice(DOMAIN);
    field(&mut out, subject.as_bytes());
    field(&mut out, key.as_bytes());
    out.extend_from_slice(&time_ms.to_be_bytes());
    field(&mut out, nonce.as_bytes());
    out.extend_from_slice(
        &u32::try_from(covered.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    for (name, value) in covered {
        field(&mut out, name.as_bytes());
        field(&mut out, value.as_bytes());
    }
    out.extend_from_slice(&Sha256::digest(body));
    out
}

/// A field's length as the format writes it. NATS subjects and header values are far
/// shorter than 4 GiB; a longer one is written as `u32::MAX`, which never verifies.
fn len32(field: &[u8]) -> u32 {
    u32::try_from(field.len()).unwrap_or(u32::MAX)
}

/// Signs admin requests (client side). `Debug` never shows the seed.
#[derive(Clone)]
pub struct AdminSigner {
    key: Arc<KeyPair>,
    public: String,
}

impl std::fmt::Debug for AdminSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminSigner")
            .field("public_key", &self.public)
            .finish_non_exhaustive()
    }
}

impl AdminSigner {
    /// From an nkey user seed (`SU...`).
    pub fn from_seed(seed: &str) -> Result<Self, AdminKeyError> {
        let key = KeyPair::from_seed(seed.trim()).map_err(|_| AdminKeyError::BadSeed)?;
        if key.key_pair_type() != KeyPairType::User {
            return Err(AdminKeyError::BadSeed);
        }
        let public = key.public_key();
        Ok(Self {
            key: Arc::new(key),
            public,
        })
    }

    /// A new admin key's seed (a user nkey), for `piggybank dev`.
    pub fn generate_seed() -> Zeroizing<String> {
        // `seed()` only fails on a public-only key; a new key always has its private half.
        Zeroizing::new(KeyPair::new_user().seed().unwrap_or_default())
    }

    /// The public key to list in `--admin-keys`.
    pub fn public_key(&self) -> &str {
        &self.public
    }

    /// The four signature headers for a request of `body` on `subject`, signed now.
    pub fn sign(&self, subject: &str, body: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        self.sign_into(subject, body, &mut headers);
        headers
    }

    /// Add the four signature headers to `headers` (replacing any already there), signing
    /// every other header in it: add them all before signing.
    pub fn sign_into(&self, subject: &str, body: &[u8], headers: &mut HeaderMap) {
        self.sign_at(subject, body, crate::clock::now_ms(), &new_nonce(), headers);
    }

    /// Sign with a given time and nonce (tests make old, future and repeated requests).
    pub fn sign_at(
        &self,
        subject: &str,
        body: &[u8],
        time_ms: u64,
        nonce: &str,
        headers: &mut HeaderMap,
    ) {
        let bytes = signed_bytes(subject, &self.public, time_ms, nonce, Some(headers), body);
        // Signing only fails without a seed, and a signer is only made from one.
        let signature = self.key.sign(&bytes).unwrap_or_default();
        headers.insert(headers::ADMIN_KEY, self.public.as_str());
        headers.insert(headers::ADMIN_TIME, time_ms.to_string().as_str());
        headers.insert(headers::ADMIN_NONCE, nonce);
        headers.insert(
            headers::ADMIN_SIGNATURE,
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(signature)
                .as_str(),
        );
    }
}

impl AdminSigner {
    /// Sign a document that is not a request (a backup's header), under the document's own
    /// domain tag; [`verify_document`] checks it. Request signatures start with [`DOMAIN`],
    /// which no document tag may be, so neither can pass for the other.
    pub(crate) fn sign_document(&self, domain: &'static [u8], document: &[u8]) -> Vec<u8> {
        if domain == DOMAIN {
            return Vec::new(); // never verifies
        }
        let mut bytes = Vec::with_capacity(domain.len() + document.len());
        bytes.extend_from_slice(domain);
        bytes.extend_from_slice(document);
        // Signing only fails without a seed, and a signer is only made from one.
        self.key.sign(&bytes).unwrap_or_default()
    }
}

/// Whether `signature` is `key`'s signature of `document` under `domain` (see
/// [`AdminSigner::sign_document`]); `key` must be an admin key (a user public key).
pub(crate) fn verify_document(
    key: &str,
    domain: &'static [u8],
    document: &[u8],
    signature: &[u8],
) -> bool {
    let Ok(pair) = check_admin_key(key) else {
        return false;
    };
    if domain == DOMAIN {
        return false;
    }
    let mut bytes = Vec::with_capacity(domain.len() + document.len());
    bytes.extend_from_slice(domain);
    bytes.extend_from_slice(document);
    pair.verify(&bytes, signature).is_ok()
}

mod verify;
#[cfg(test)]
use verify::is_nonce;
pub use verify::*;

#[cfg(test)]
mod tests;
