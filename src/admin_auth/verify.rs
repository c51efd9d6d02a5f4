//! The server's side of signed administration: where accepted nonces are remembered
//! (shared by every instance of a backend), and [`AdminVerifier`], which checks a request's
//! signature, time and nonce before any handler runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::future::BoxFuture;
use nkeys::KeyPair;

use super::*;
use crate::config::headers;
use crate::store::StoreError;

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
/// 1, entries aged out after [`NONCE_TTL`] ([`crate::store::buckets`] holds its spec).
pub(crate) async fn open_nonce_bucket(
    js: &jetstream::Context,
    name: &str,
    replicas: usize,
) -> Result<kv::Store, StoreError> {
    let spec = crate::store::buckets::nonces_spec(name, NONCE_TTL, replicas);
    crate::store::open_or_create_bucket(js, &spec).await
}

/// Which instances a nonce is unique across.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NonceScope<'a> {
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
    pub(super) started_ms: u64,
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
            started_ms: crate::clock::now_ms(),
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
                crate::clock::now_ms(),
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
            crate::clock::now_ms(),
        )
        .await
    }

    /// The whole check, at time `now_ms`. The nonce is recorded last, only when every
    /// other check passed.
    pub(crate) async fn verify_at(
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
pub(super) fn is_nonce(text: &str) -> bool {
    text.len() == 2 * NONCE_BYTES && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `text` reduced to characters a KV key token may hold.
fn kv_token(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect()
}
