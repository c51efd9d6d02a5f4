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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use async_nats::HeaderMap;
use base64::Engine as _;
use futures::future::BoxFuture;
use nkeys::{KeyPair, KeyPairType};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::config::headers;
use crate::store::StoreError;

/// Domain-separation tag: these signatures can never be mistaken for another protocol's.
pub const DOMAIN: &[u8] = b"piggybank-admin-v2\0";
/// How far a request's time may be from the verifier's clock, in the past or the future.
pub const MAX_SKEW: Duration = Duration::from_secs(30);
/// How long an accepted nonce is remembered: more than the 60 s window a request can be
/// valid in (30 s either side), with room for instances' clocks to differ.
pub const NONCE_TTL: Duration = Duration::from_secs(90);
/// Random bytes in a nonce (sent as twice as many hex characters).
pub const NONCE_BYTES: usize = 16;
/// The one message of every refusal.
pub const REFUSED: &str = "admin signature required or invalid";
/// The message when the nonce store cannot be reached (the request is not served).
pub const UNCHECKED: &str =
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
pub fn parse_admin_keys<S: AsRef<str>>(list: &[S]) -> Result<Vec<String>, AdminKeyError> {
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
pub fn signed_bytes(
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
        self.sign_at(
            subject,
            body,
            crate::store::secrets::now_ms(),
            &new_nonce(),
            headers,
        );
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

/// A fresh random nonce: [`NONCE_BYTES`] bytes as lowercase hex.
pub fn new_nonce() -> String {
    use crypto_secretbox::aead::rand_core::RngCore as _;
    let mut bytes = [0u8; NONCE_BYTES];
    crypto_secretbox::aead::OsRng.fill_bytes(&mut bytes);
    data_encoding::HEXLOWER.encode(&bytes)
}

/// Whether a nonce was new when recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Fresh,
    Seen,
}

/// Where accepted nonces are remembered, shared by every instance of a backend.
pub trait NonceStore: Send + Sync {
    /// Record `key` if it is new (atomically: of two concurrent calls, one sees `Seen`).
    fn record<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Recorded, StoreError>>;
}

/// The servers' store: a KV bucket; `create` fails when the key exists.
impl NonceStore for kv::Store {
    fn record<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Recorded, StoreError>> {
        Box::pin(async move {
            match self.create(key, bytes::Bytes::new()).await {
                Ok(_) => Ok(Recorded::Fresh),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(Recorded::Seen),
                Err(e) => Err(StoreError::upstream(e)),
            }
        })
    }
}

/// An in-memory store, for tests and for one process (never shared between instances).
#[derive(Default)]
pub struct MemoryNonces(Mutex<std::collections::HashSet<String>>);

impl NonceStore for MemoryNonces {
    fn record<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Recorded, StoreError>> {
        let fresh = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_string());
        Box::pin(async move {
            Ok(if fresh {
                Recorded::Fresh
            } else {
                Recorded::Seen
            })
        })
    }
}

/// Open the nonce bucket of backend `name`, creating it if missing (servers only): history
/// 1, entries aged out after [`NONCE_TTL`].
pub async fn open_nonce_bucket(
    js: &jetstream::Context,
    name: &str,
    replicas: usize,
) -> Result<kv::Store, StoreError> {
    let bucket = crate::config::nonces_bucket(name);
    match crate::store::existing_bucket(js, &bucket).await {
        Err(StoreError::NoBucket(_)) => {}
        other => return other,
    }
    let created = js
        .create_key_value(kv::Config {
            bucket: bucket.clone(),
            description: "piggybank admin request nonces (replay protection)".into(),
            history: 1,
            max_age: NONCE_TTL,
            num_replicas: replicas,
            ..Default::default()
        })
        .await;
    match created {
        Ok(store) => Ok(store),
        // Another instance created it first.
        Err(_) => crate::store::existing_bucket(js, &bucket).await,
    }
}

/// Which instances a nonce is unique across.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceScope<'a> {
    /// Operations one instance answers: the nonce is accepted once, by any instance.
    Shared,
    /// Operations every instance receives (`lock`): once per instance, this one.
    Instance(&'a str),
}

/// How an endpoint receives a signed operation, which decides its nonce's scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signed {
    /// One instance answers (a queue group): the nonce is accepted once, by any instance.
    Once,
    /// Every instance answers (`lock`): once per instance.
    OnEveryInstance,
}

/// Refusals are logged at most this often, with the count since the last log.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Checks admin signatures (server side).
pub struct AdminVerifier {
    keys: HashMap<String, KeyPair>,
    nonces: Arc<dyn NonceStore>,
    /// Refusals since the last warning, and when that was (a flood must not flood the log).
    refused: Mutex<(u64, Option<std::time::Instant>)>,
    /// When this verifier (this instance) started, in Unix ms: a request every instance
    /// answers must be signed after it, or one recorded earlier could be replayed to an
    /// instance started since (its nonce scope is new).
    started_ms: u64,
}

impl std::fmt::Debug for AdminVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminVerifier")
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl AdminVerifier {
    /// Accept signatures by `keys` (see [`parse_admin_keys`]); remember nonces in
    /// `nonces`, the bucket every instance shares ([`open_nonce_bucket`]).
    pub fn new<S: AsRef<str>>(keys: &[S], nonces: kv::Store) -> Result<Self, AdminKeyError> {
        Self::with_nonce_store(keys, Arc::new(nonces))
    }

    /// As [`AdminVerifier::new`], with any nonce store.
    pub fn with_nonce_store<S: AsRef<str>>(
        keys: &[S],
        nonces: Arc<dyn NonceStore>,
    ) -> Result<Self, AdminKeyError> {
        let keys = parse_admin_keys(keys)?
            .into_iter()
            .map(|k| check_admin_key(&k).map(|pair| (k, pair)))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            keys,
            nonces,
            refused: Mutex::default(),
            started_ms: crate::store::secrets::now_ms(),
        })
    }

    /// Check a request as the serve loop received it, for an operation its endpoint
    /// classified as `signed`; `instance` is this instance's id (the nonce scope of
    /// [`Signed::OnEveryInstance`]). Logs the outcome: an accepted request at info with the
    /// key that signed it (the audit trail); refusals at warn with the reason, at most every
    /// 10 s, never with the request's content.
    pub async fn check(
        &self,
        msg: &async_nats::Message,
        signed: Signed,
        instance: &str,
    ) -> Result<AdminKeyId, AdminRefusal> {
        let scope = match signed {
            Signed::Once => NonceScope::Shared,
            Signed::OnEveryInstance => NonceScope::Instance(instance),
        };
        let subject = msg.subject.as_str();
        let checked = self
            .verify_at(
                subject,
                msg.headers.as_ref(),
                &msg.payload,
                scope,
                crate::store::secrets::now_ms(),
            )
            .await;
        match &checked {
            Ok(key) => tracing::info!(admin = %key, subject, "signed admin request"),
            Err(refusal) => self.log_refusal(refusal),
        }
        checked
    }

    fn log_refusal(&self, refusal: &AdminRefusal) {
        let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        refused.0 += 1;
        let now = std::time::Instant::now();
        if refused
            .1
            .is_some_and(|at| now.duration_since(at) < WARN_EVERY)
        {
            return;
        }
        tracing::warn!(
            reason = refusal.reason(),
            refused_since_last_warning = refused.0,
            "admin request refused"
        );
        *refused = (0, Some(now));
    }

    /// The public keys accepted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Check a request that one instance answers, against this instance's clock.
    pub async fn verify(
        &self,
        subject: &str,
        headers: Option<&HeaderMap>,
        body: &[u8],
    ) -> Result<AdminKeyId, AdminRefusal> {
        self.verify_at(
            subject,
            headers,
            body,
            NonceScope::Shared,
            crate::store::secrets::now_ms(),
        )
        .await
    }

    /// Check a request that every instance receives (`lock`): `instance` is this one's id.
    pub async fn verify_on_instance(
        &self,
        instance: &str,
        subject: &str,
        headers: Option<&HeaderMap>,
        body: &[u8],
    ) -> Result<AdminKeyId, AdminRefusal> {
        self.verify_at(
            subject,
            headers,
            body,
            NonceScope::Instance(instance),
            crate::store::secrets::now_ms(),
        )
        .await
    }

    /// The whole check, at time `now_ms`. The nonce is recorded last, only when every
    /// other check passed.
    pub async fn verify_at(
        &self,
        subject: &str,
        headers: Option<&HeaderMap>,
        body: &[u8],
        scope: NonceScope<'_>,
        now_ms: u64,
    ) -> Result<AdminKeyId, AdminRefusal> {
        let refuse = |r| Err(AdminRefusal::Refused(r));
        let Some(headers) = headers else {
            return refuse(RefusalReason::Missing);
        };
        let one = |name: &str| -> Result<&str, AdminRefusal> {
            let mut values = headers.get_all(name);
            match (values.next(), values.next()) {
                (Some(v), None) => Ok(v.as_str()),
                _ => Err(AdminRefusal::Refused(RefusalReason::Missing)),
            }
        };
        let key = one(headers::ADMIN_KEY)?;
        let time = one(headers::ADMIN_TIME)?;
        let nonce = one(headers::ADMIN_NONCE)?;
        let signature = one(headers::ADMIN_SIGNATURE)?;
        let (Some(time_ms), true, Some(signature)) = (
            parse_time(time),
            is_nonce(nonce),
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(signature)
                .ok(),
        ) else {
            return refuse(RefusalReason::Malformed);
        };
        let Some(pair) = self.keys.get(key) else {
            return refuse(RefusalReason::UnknownKey);
        };
        let bytes = signed_bytes(subject, key, time_ms, nonce, Some(headers), body);
        if pair.verify(&bytes, &signature).is_err() {
            return refuse(RefusalReason::BadSignature);
        }
        let skew = u64::try_from(MAX_SKEW.as_millis()).unwrap_or(u64::MAX);
        if time_ms.saturating_add(skew) < now_ms {
            return refuse(RefusalReason::Expired);
        }
        if time_ms > now_ms.saturating_add(skew) {
            return refuse(RefusalReason::FromTheFuture);
        }
        let record_key = match scope {
            NonceScope::Shared => nonce.to_string(),
            NonceScope::Instance(_) if time_ms < self.started_ms => {
                return refuse(RefusalReason::Expired)
            }
            NonceScope::Instance(instance) => format!("{nonce}.{}", kv_token(instance)),
        };
        match self.nonces.record(&record_key).await {
            Ok(Recorded::Fresh) => Ok(AdminKeyId(key.to_string())),
            Ok(Recorded::Seen) => refuse(RefusalReason::Replayed),
            Err(e) => Err(AdminRefusal::Unavailable(e.to_string())),
        }
    }
}

/// Unix milliseconds: 1 to 20 ASCII digits, no leading zero.
fn parse_time(text: &str) -> Option<u64> {
    let canonical = !text.is_empty()
        && text.len() <= 20
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    canonical.then(|| text.parse().ok()).flatten()
}

/// Exactly `2 * NONCE_BYTES` lowercase hex characters.
fn is_nonce(text: &str) -> bool {
    text.len() == 2 * NONCE_BYTES && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `text` reduced to characters a KV key token may hold.
fn kv_token(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUBJECT: &str = "wasmcloud.secrets.v1alpha1.nats-kv.delete_secret";
    const BODY: &[u8] = br#"{"key":"db"}"#;
    const NOW: u64 = 1_800_000_000_000;

    fn signer() -> (AdminSigner, Zeroizing<String>) {
        let seed = AdminSigner::generate_seed();
        (AdminSigner::from_seed(&seed).unwrap(), seed)
    }

    /// A verifier started long before `NOW` (the tests' fixed clock).
    fn verifier(keys: &[&str]) -> AdminVerifier {
        let mut v =
            AdminVerifier::with_nonce_store(keys, Arc::new(MemoryNonces::default())).unwrap();
        v.started_ms = 0;
        v
    }

    fn signed(signer: &AdminSigner, subject: &str, body: &[u8], time: u64) -> HeaderMap {
        let mut h = HeaderMap::new();
        signer.sign_at(subject, body, time, &new_nonce(), &mut h);
        h
    }

    async fn check(
        v: &AdminVerifier,
        subject: &str,
        h: Option<&HeaderMap>,
        body: &[u8],
    ) -> Result<AdminKeyId, AdminRefusal> {
        v.verify_at(subject, h, body, NonceScope::Shared, NOW).await
    }

    fn reason(r: Result<AdminKeyId, AdminRefusal>) -> RefusalReason {
        match r {
            Err(AdminRefusal::Refused(reason)) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_request_signed_by_an_admin_key_is_accepted_once() {
        let (s, _) = signer();
        let v = verifier(&[s.public_key()]);
        let h = signed(&s, SUBJECT, BODY, NOW);
        let id = check(&v, SUBJECT, Some(&h), BODY).await.unwrap();
        assert_eq!(id.0, s.public_key());
        assert_eq!(
            reason(check(&v, SUBJECT, Some(&h), BODY).await),
            RefusalReason::Replayed
        );
        // A fresh nonce for the same request is a new request.
        let again = signed(&s, SUBJECT, BODY, NOW);
        assert!(check(&v, SUBJECT, Some(&again), BODY).await.is_ok());
    }

    #[tokio::test]
    async fn a_replay_is_refused_by_another_verifier_sharing_the_store() {
        let (s, _) = signer();
        let store: Arc<dyn NonceStore> = Arc::new(MemoryNonces::default());
        let a = AdminVerifier::with_nonce_store(&[s.public_key()], Arc::clone(&store)).unwrap();
        let b = AdminVerifier::with_nonce_store(&[s.public_key()], store).unwrap();
        let h = signed(&s, SUBJECT, BODY, NOW);
        assert!(check(&a, SUBJECT, Some(&h), BODY).await.is_ok());
        assert_eq!(
            reason(check(&b, SUBJECT, Some(&h), BODY).await),
            RefusalReason::Replayed
        );
    }

    #[tokio::test]
    async fn a_broadcast_nonce_is_once_per_instance() {
        let (s, _) = signer();
        let v = verifier(&[s.public_key()]);
        let h = signed(&s, "piggybank.database.lock", b"", NOW);
        let on = |instance: &'static str| {
            let (v, h) = (&v, &h);
            async move {
                v.verify_at(
                    "piggybank.database.lock",
                    Some(h),
                    b"",
                    NonceScope::Instance(instance),
                    NOW,
                )
                .await
            }
        };
        assert!(on("NAAA").await.is_ok());
        assert!(on("NBBB").await.is_ok(), "another instance's copy");
        assert_eq!(reason(on("NAAA").await), RefusalReason::Replayed);
        // An instance started after the request was signed refuses it: a recorded request
        // cannot be replayed to it.
        let mut late = verifier(&[s.public_key()]);
        late.started_ms = NOW + 1;
        let replayed = late
            .verify_at(
                "piggybank.database.lock",
                Some(&h),
                b"",
                NonceScope::Instance("NCCC"),
                NOW + 2,
            )
            .await;
        assert_eq!(reason(replayed), RefusalReason::Expired);
        assert_eq!(reason(on("NBBB").await), RefusalReason::Replayed);
    }

    #[tokio::test]
    async fn a_bad_signature_is_refused() {
        let (s, _) = signer();
        let v = verifier(&[s.public_key()]);
        let mut h = signed(&s, SUBJECT, BODY, NOW);
        let sig = h
            .get(headers::ADMIN_SIGNATURE)
            .unwrap()
            .as_str()
            .to_string();
        let mut raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&sig)
            .unwrap();
        raw[10] ^= 1;
        h.insert(
            headers::ADMIN_SIGNATURE,
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(&raw)
                .as_str(),
        );
        assert_eq!(
            reason(check(&v, SUBJECT, Some(&h), BODY).await),
            RefusalReason::BadSignature
        );
    }

    #[tokio::test]
    async fn a_key_not_listed_is_refused_even_when_its_signature_is_good() {
        let (admin, _) = signer();
        let (other, _) = signer();
        let v = verifier(&[admin.public_key()]);
        let h = signed(&other, SUBJECT, BODY, NOW);
        assert_eq!(
            reason(check(&v, SUBJECT, Some(&h), BODY).await),
            RefusalReason::UnknownKey
        );
        // Claiming the admin's key while signing with another is a bad signature.
        let mut claimed = h.clone();
        claimed.insert(headers::ADMIN_KEY, admin.public_key());
        assert_eq!(
            reason(check(&v, SUBJECT, Some(&claimed), BODY).await),
            RefusalReason::BadSignature
        );
    }

    #[tokio::test]
    async fn old_and_future_requests_are_refused_at_30_seconds() {
        let (s, _) = signer();
        let v = verifier(&[s.public_key()]);
        let skew = MAX_SKEW.as_millis() as u64;
        for (time, expected) in [
            (NOW - skew - 1, Some(RefusalReason::Expired)),
            (NOW - skew, None),
            (NOW + skew, None),
            (NOW + skew + 1, Some(RefusalReason::FromTheFuture)),
            (0, Some(RefusalReason::Expired)),
            (u64::MAX, Some(RefusalReason::FromTheFuture)),
        ] {
            let h = signed(&s, SUBJECT, BODY, time);
            let got = check(&v, SUBJECT, Some(&h), BODY).await;
            match expected {
                None => assert!(got.is_ok(), "time {time}: {got:?}"),
                Some(r) => assert_eq!(reason(got), r, "time {time}"),
            }
        }
    }

    #[tokio::test]
    async fn a_changed_body_or_subject_is_refused() {
        let (s, _) = signer();
        let v = verifier(&[s.public_key()]);
        let h = signed(&s, SUBJECT, BODY, NOW);
        assert_eq!(
            reason(check(&v, SUBJECT, Some(&h), br#"{"key":"dc"}"#).await),
            RefusalReason::BadSignature
        );
        let other = "wasmcloud.secrets.v1alpha1.other.delete_secret";
        assert_eq!(
            reason(check(&v, other, Some(&h), BODY).await),
            RefusalReason::BadSignature
        );
        // Nothing was recorded by those refusals: the genuine request still goes through.
        assert!(check(&v, SUBJECT, Some(&h), BODY).await.is_ok());
    }

    #[tokio::test]
    async fn a_changed_time_or_nonce_is_refused() {
        let (s, _) = signer();
        let v = verifier(&[s.public_key()]);
        let h = signed(&s, SUBJECT, BODY, NOW);
        let mut later = h.clone();
        later.insert(headers::ADMIN_TIME, (NOW + 1).to_string().as_str());
        assert_eq!(
            reason(check(&v, SUBJECT, Some(&later), BODY).await),
            RefusalReason::BadSignature
        );
        let mut renonced = h.clone();
        renonced.insert(headers::ADMIN_NONCE, new_nonce().as_str());
        assert_eq!(
            reason(check(&v, SUBJECT, Some(&renonced), BODY).await),
            RefusalReason::BadSignature
        );
    }

    #[tokio::test]
    async fn missing_duplicated_or_malformed_headers_are_refused() {
        let (s, _) = signer();
        let v = verifier(&[s.public_key()]);
        assert_eq!(
            reason(check(&v, SUBJECT, None, BODY).await),
            RefusalReason::Missing
        );
        let good = signed(&s, SUBJECT, BODY, NOW);
        for name in [
            headers::ADMIN_KEY,
            headers::ADMIN_TIME,
            headers::ADMIN_NONCE,
            headers::ADMIN_SIGNATURE,
        ] {
            let mut without = HeaderMap::new();
            for (n, values) in good.iter() {
                if n.as_ref() as &[u8] != name.as_bytes() {
                    for value in values {
                        without.append(n.clone(), value.as_str());
                    }
                }
            }
            assert_eq!(
                reason(check(&v, SUBJECT, Some(&without), BODY).await),
                RefusalReason::Missing,
                "without {name}"
            );
            let mut twice = good.clone();
            let value = good.get(name).unwrap().as_str().to_string();
            twice.append(name, value.as_str());
            assert_eq!(
                reason(check(&v, SUBJECT, Some(&twice), BODY).await),
                RefusalReason::Missing,
                "{name} twice"
            );
        }
        let nonce = good.get(headers::ADMIN_NONCE).unwrap().as_str().to_string();
        for (name, bad) in [
            (headers::ADMIN_TIME, format!("0{NOW}")),
            (headers::ADMIN_TIME, format!("+{NOW}")),
            (headers::ADMIN_TIME, "1e12".to_string()),
            (headers::ADMIN_TIME, "99999999999999999999999".to_string()),
            (headers::ADMIN_NONCE, nonce.to_uppercase()),
            (headers::ADMIN_NONCE, nonce[..30].to_string()),
            (headers::ADMIN_NONCE, format!("{}.x", &nonce[..30])),
            (headers::ADMIN_SIGNATURE, "not base64!".to_string()),
        ] {
            let mut h = good.clone();
            h.insert(name, bad.as_str());
            assert_eq!(
                reason(check(&v, SUBJECT, Some(&h), BODY).await),
                RefusalReason::Malformed,
                "{name}: {bad}"
            );
        }
        let mut short = good.clone();
        short.insert(headers::ADMIN_SIGNATURE, "AAAA");
        assert_eq!(
            reason(check(&v, SUBJECT, Some(&short), BODY).await),
            RefusalReason::BadSignature
        );
    }

    #[tokio::test]
    async fn every_refusal_says_the_same_thing() {
        let refusals = [
            RefusalReason::Missing,
            RefusalReason::Malformed,
            RefusalReason::UnknownKey,
            RefusalReason::BadSignature,
            RefusalReason::Expired,
            RefusalReason::FromTheFuture,
            RefusalReason::Replayed,
        ];
        for r in refusals {
            let refusal = AdminRefusal::Refused(r);
            assert_eq!(refusal.to_string(), REFUSED);
            assert_eq!(refusal.code(), 403);
        }
    }

    struct Down;
    impl NonceStore for Down {
        fn record<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Recorded, StoreError>> {
            Box::pin(async { Err(StoreError::Upstream("timed out".into())) })
        }
    }

    #[tokio::test]
    async fn a_nonce_store_that_does_not_answer_refuses_with_503() {
        let (s, _) = signer();
        let v = AdminVerifier::with_nonce_store(&[s.public_key()], Arc::new(Down)).unwrap();
        let h = signed(&s, SUBJECT, BODY, NOW);
        let err = check(&v, SUBJECT, Some(&h), BODY).await.unwrap_err();
        assert_eq!(err.code(), 503);
        // An invalid request is still a plain refusal: the store is never asked.
        assert_eq!(
            reason(check(&v, SUBJECT, None, BODY).await),
            RefusalReason::Missing
        );
    }

    #[test]
    fn signed_bytes_are_length_prefixed_so_fields_cannot_shift() {
        let a = signed_bytes("a.b", "Ukey", 1, "n", None, b"x");
        let b = signed_bytes("a.", "bUkey", 1, "n", None, b"x");
        assert_ne!(a, b);
        assert!(a.starts_with(DOMAIN));
        let mut expected = DOMAIN.to_vec();
        expected.extend_from_slice(&3u32.to_be_bytes());
        expected.extend_from_slice(b"a.b");
        expected.extend_from_slice(&4u32.to_be_bytes());
        expected.extend_from_slice(b"Ukey");
        expected.extend_from_slice(&1u64.to_be_bytes());
        expected.extend_from_slice(&1u32.to_be_bytes());
        expected.extend_from_slice(b"n");
        expected.extend_from_slice(&0u32.to_be_bytes());
        expected.extend_from_slice(&Sha256::digest(b"x"));
        assert_eq!(a, expected);
    }

    /// Every header but the signature's own is covered, in one order whatever the order
    /// they were added in.
    #[test]
    fn signed_bytes_cover_every_other_header() {
        let bytes = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (name, value) in pairs {
                h.append(*name, *value);
            }
            signed_bytes("s", "Ukey", 1, "n", Some(&h), b"")
        };
        let base = bytes(&[]);
        let xkey = bytes(&[("Piggybank-Requester-Xkey", "XA")]);
        assert_ne!(base, xkey);
        assert_ne!(xkey, bytes(&[("Piggybank-Requester-Xkey", "XB")]));
        assert_eq!(
            bytes(&[("b", "2"), ("a", "1")]),
            bytes(&[("a", "1"), ("b", "2")])
        );
        assert_eq!(base, bytes(&[(headers::ADMIN_SIGNATURE, "sig")]));
        assert_ne!(base, bytes(&[("piggybank-admin-signature", "sig")]));
    }

    #[test]
    fn admin_keys_are_user_public_keys() {
        let user = KeyPair::new_user().public_key();
        assert_eq!(
            parse_admin_keys(&[format!(" {user} "), String::new(), user.clone()]).unwrap(),
            vec![user.clone()]
        );
        assert!(parse_admin_keys::<&str>(&[]).unwrap().is_empty());
        for bad in [
            KeyPair::new_account().public_key(),
            KeyPair::new_server().public_key(),
            "UNOTAKEY".to_string(),
        ] {
            let err = parse_admin_keys(&[bad.as_str()]).unwrap_err();
            assert!(matches!(err, AdminKeyError::Invalid { .. }), "{bad}: {err}");
        }
        let seed = AdminSigner::generate_seed();
        let err = parse_admin_keys(&[seed.as_str()]).unwrap_err();
        assert_eq!(err, AdminKeyError::SeedGiven);
        assert!(
            !err.to_string().contains(seed.as_str()),
            "a seed is never echoed"
        );
    }

    #[test]
    fn a_signer_needs_a_user_seed_and_never_shows_it() {
        let (s, seed) = signer();
        assert!(s.public_key().starts_with('U'));
        assert!(!format!("{s:?}").contains(seed.as_str()));
        let account_seed = KeyPair::new_account().seed().unwrap();
        assert_eq!(
            AdminSigner::from_seed(&account_seed).unwrap_err(),
            AdminKeyError::BadSeed
        );
        assert_eq!(
            AdminSigner::from_seed("SUnot").unwrap_err(),
            AdminKeyError::BadSeed
        );
        let h = s.sign(SUBJECT, BODY);
        assert!(is_nonce(h.get(headers::ADMIN_NONCE).unwrap().as_str()));
        assert_eq!(h.get(headers::ADMIN_KEY).unwrap().as_str(), s.public_key());
    }
}
