//! `read_secret`: an operator reads a secret's whole value through the backend, as `vault
//! kv get` does, so that reading takes an admin signature instead of the data key (which
//! opens every secret, and which a sealed store never hands out).
//!
//! **Request.** Subject `{prefix}.read_secret`; header `Piggybank-Requester-Xkey`: a public
//! xkey the requester made for this request alone; body JSON [`ReadSecretRequest`]
//! `{"key": NAME, "version": N}` (`version` optional: the latest). It is an admin operation:
//! with `--admin-keys`, the serve loop lets it through only signed, and the signature covers
//! the subject, the body and every other header, the requester xkey among them
//! (`crate::admin_auth::signed_bytes`), so the key a value is sealed to cannot be swapped.
//!
//! **Reply.** The reply subject is the requester's choice, and anyone allowed `_INBOX.>`
//! reads what is published there. So the one reply that carries a value is made by
//! [`seal_reply`], and by nothing else: header `Piggybank-Sender-Xkey` (the backend's transit
//! public key) and a body that is an nkeys `xkv1` box of [`ReadValue`] JSON, sealed *from the
//! transit key* to the requester xkey. Only the holder of the one-time seed opens it, and a
//! requester that pinned the transit key knows the backend made it (anyone may seal a value
//! of their own to a public requester key, and answer first). Every other reply is an admin
//! error, which carries no value.
//!
//! Invariants:
//! - The value is only ever in a `Zeroizing` buffer or a zeroize-on-drop struct, and leaves
//!   the backend only inside the box; it is never logged.
//! - The plaintext names its purpose ([`PURPOSE`]) and has no `key` field: a box made for a
//!   read, opened by the backend as a host's `get` or a `put_secret` (the transit key opens
//!   boxes from the requester key too), parses as neither.
//! - [`SealedValue::open`] is the one place a client opens it: it checks the pin, the purpose,
//!   and that the value is the secret (and version) it asked for.

use async_nats::HeaderMap;
use base64::Engine as _;
use nkeys::XKey;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::admin::naming;
use super::reply::Reply;
use crate::backend::{ServedSecret, Unsealed};
use crate::config::headers::{REQUESTER_XKEY, SENDER_XKEY};
use crate::decision::Decision;
use crate::error::ErrorKind;
use crate::keys::TransitKey;
use crate::store::envelope::SecretValue;
use crate::store::validate_name;

/// What a read reply's plaintext is for: never a request, a status proof or an initialize
/// reply (`crate::seal::transfer::purpose`).
pub const PURPOSE: &str = "piggybank-read-secret-v1";

/// Body of `read_secret`. Unknown fields are refused: a `field` the backend does not honor
/// here must not be answered with the whole value as if it had been.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReadSecretRequest {
    pub key: String,
    /// The version (revision) to read; the latest when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

/// The sealed plaintext of a `read_secret` reply. Exactly one of `string_secret` and
/// `binary_secret` (standard base64) is set: the kind is stored with the value and
/// served as it is, never guessed.
#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct ReadValue {
    pub purpose: String,
    /// The secret's name (the request's `key`).
    pub name: String,
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary_secret: Option<String>,
}

/// Answer `read_secret` on the unsealed store (the door answers the seal's refusal first).
pub(crate) async fn read_secret(
    store: &Unsealed<'_>,
    headers: Option<&HeaderMap>,
    payload: &[u8],
) -> Reply {
    let requester = match headers.and_then(|h| h.get(REQUESTER_XKEY)) {
        Some(value) => match XKey::from_public_key(value.as_str().trim()) {
            Ok(key) => key,
            Err(_) => {
                return Reply::bad_request(
                    format!("{REQUESTER_XKEY} is not a public xkey (X...)"),
                    "invalid_xkey",
                )
            }
        },
        None => {
            return Reply::bad_request(
                format!(
                    "{REQUESTER_XKEY} is required: the public xkey of a one-time key the value \
                     is sealed to"
                ),
                "invalid_headers",
            )
        }
    };
    let request: ReadSecretRequest = match serde_json::from_slice(payload) {
        Ok(r) => r,
        Err(e) => {
            return Reply::bad_request(
                format!(r#"expected {{"key": NAME, "version": N (optional)}}: {e}"#),
                "invalid_body",
            )
        }
    };
    // Named on the record only if it is a name: the body is the requester's text.
    if let Err(e) = validate_name(&request.key) {
        return Reply::core_error(&e.into());
    }
    match store.read_as_admin(&request.key, request.version).await {
        Ok(served) => {
            let version = served.version;
            let sealed = seal_reply(served, &request.key, store.transit(), &requester);
            naming(sealed, &request.key, Some(version))
        }
        Err(e) => naming(Reply::core_error(&e), &request.key, request.version),
    }
}

/// The one reply that carries a value: `served` sealed from `transit` to `requester`.
/// Takes the value by value, so it is dropped (zeroized) here.
fn seal_reply(served: ServedSecret, name: &str, transit: &TransitKey, requester: &XKey) -> Reply {
    let failed = || {
        Reply::admin_error(
            500,
            "the value could not be sealed to the requester xkey",
            Decision::refused(ErrorKind::Internal, "encryption_error"),
        )
    };
    let mut plain = ReadValue {
        purpose: PURPOSE.to_string(),
        name: name.to_string(),
        version: served.version,
        string_secret: None,
        binary_secret: None,
    };
    match &served.value {
        SecretValue::String(s) => plain.string_secret = Some(s.as_str().to_owned()),
        SecretValue::Binary(b) => {
            plain.binary_secret = Some(base64::engine::general_purpose::STANDARD.encode(b))
        }
    }
    drop(served);
    // Sized up front so that the buffer is not reallocated, which would leave a copy behind
    // (only a string of mostly control characters, escaped six bytes each, outgrows it).
    let size = plain.string_secret.as_ref().map_or(0, |s| s.len() * 2)
        + plain.binary_secret.as_ref().map_or(0, String::len)
        + name.len()
        + 128;
    let mut json = Zeroizing::new(Vec::with_capacity(size));
    if serde_json::to_writer(&mut *json, &plain).is_err() {
        return failed();
    }
    drop(plain);
    let Ok(sealed) = transit.vouch(&json, requester) else {
        return failed();
    };
    let mut h = HeaderMap::new();
    h.insert(SENDER_XKEY, transit.public_key());
    Reply::with_headers(h, sealed)
}

/// Why a `read_secret` reply was not believed. Never carries the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealedValueError {
    #[error("the reply names no {SENDER_XKEY}, or not a public xkey")]
    NoSender,
    #[error(
        "the reply was not sealed from the pinned transit key: someone else on the bus answered"
    )]
    NotFromPinnedTransit,
    #[error("the reply does not open with this request's one-time key")]
    Open,
    #[error("the sealed reply is not a read_secret reply")]
    WrongPurpose,
    #[error("the sealed reply is for another secret or version than the one asked for")]
    OtherSecret,
}

/// A `read_secret` reply as a client receives it.
pub struct SealedValue<'a> {
    pub headers: Option<&'a HeaderMap>,
    pub body: &'a [u8],
}

impl SealedValue<'_> {
    /// Open as `requester` (the one-time xkey this request made): the version and value of
    /// `name` (at `version`, when one was asked). With `pin` (the transit public key the
    /// requester trusts), only a reply sealed from it opens.
    pub fn open(
        &self,
        requester: &XKey,
        pin: Option<&str>,
        name: &str,
        version: Option<u64>,
    ) -> Result<(u64, SecretValue), SealedValueError> {
        let sender = self
            .headers
            .and_then(|h| h.get(SENDER_XKEY))
            .map(|v| v.as_str().trim().to_string())
            .ok_or(SealedValueError::NoSender)?;
        if pin.is_some_and(|pin| pin.trim() != sender) {
            return Err(SealedValueError::NotFromPinnedTransit);
        }
        let sender = XKey::from_public_key(&sender).map_err(|_| SealedValueError::NoSender)?;
        let json = requester
            .open(self.body, &sender)
            .map(Zeroizing::new)
            .map_err(|_| SealedValueError::Open)?;
        let mut plain: ReadValue =
            serde_json::from_slice(&json).map_err(|_| SealedValueError::WrongPurpose)?;
        if plain.purpose != PURPOSE {
            return Err(SealedValueError::WrongPurpose);
        }
        if plain.name != name || version.is_some_and(|v| v != plain.version) {
            return Err(SealedValueError::OtherSecret);
        }
        let value = match (plain.string_secret.take(), plain.binary_secret.take()) {
            (Some(s), None) => SecretValue::String(Zeroizing::new(s)),
            (None, Some(b)) => {
                let b = Zeroizing::new(b);
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b.as_bytes())
                    .map_err(|_| SealedValueError::WrongPurpose)?;
                SecretValue::Binary(Zeroizing::new(bytes))
            }
            _ => return Err(SealedValueError::WrongPurpose),
        };
        Ok((plain.version, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transit() -> TransitKey {
        TransitKey::from_xkey(XKey::new())
    }

    fn served(value: SecretValue) -> ServedSecret {
        ServedSecret { version: 7, value }
    }

    fn open(
        reply: &Reply,
        requester: &XKey,
        pin: Option<&str>,
    ) -> Result<(u64, SecretValue), SealedValueError> {
        SealedValue {
            headers: reply.headers.as_ref(),
            body: &reply.payload,
        }
        .open(requester, pin, "db", None)
    }

    #[test]
    fn a_read_reply_opens_only_for_the_requester_and_keeps_the_kind() {
        let (transit, requester) = (transit(), XKey::new());
        let value = SecretValue::String(Zeroizing::new("s3cr3t".into()));
        let reply = seal_reply(served(value), "db", &transit, &requester);
        assert!(!reply.payload.windows(6).any(|w| w == b"s3cr3t"));
        let (version, opened) = open(&reply, &requester, Some(transit.public_key())).unwrap();
        assert_eq!((version, opened.as_bytes()), (7, &b"s3cr3t"[..]));
        assert!(matches!(opened, SecretValue::String(_)));
        // Another key opens nothing.
        assert_eq!(
            open(&reply, &XKey::new(), None).err(),
            Some(SealedValueError::Open)
        );
        // Binary stays binary, even when it is valid UTF-8.
        let value = SecretValue::Binary(Zeroizing::new(b"text-like".to_vec()));
        let reply = seal_reply(served(value), "db", &transit, &requester);
        let (_, opened) = open(&reply, &requester, None).unwrap();
        assert!(matches!(opened, SecretValue::Binary(ref b) if b.as_slice() == b"text-like"));
    }

    #[test]
    fn a_pinned_requester_refuses_a_reply_sealed_by_anyone_else() {
        let (real, impostor, requester) = (transit(), transit(), XKey::new());
        let value = SecretValue::String(Zeroizing::new("forged".into()));
        let forged = seal_reply(served(value), "db", &impostor, &requester);
        assert_eq!(
            open(&forged, &requester, Some(real.public_key())).err(),
            Some(SealedValueError::NotFromPinnedTransit)
        );
        // Control: unpinned, the same reply opens (which is why a pin is worth giving).
        assert!(open(&forged, &requester, None).is_ok());
    }

    #[test]
    fn a_reply_for_another_secret_or_purpose_is_refused() {
        let (transit, requester) = (transit(), XKey::new());
        let value = SecretValue::String(Zeroizing::new("x".into()));
        let reply = seal_reply(served(value), "other", &transit, &requester);
        assert_eq!(
            open(&reply, &requester, None).err(),
            Some(SealedValueError::OtherSecret)
        );
        // A box from the transit key with another purpose (a status proof, say).
        let other = transit
            .vouch(br#"{"purpose":"piggybank-unseal-proof-v1"}"#, &requester)
            .unwrap();
        let mut h = HeaderMap::new();
        h.insert(SENDER_XKEY, transit.public_key());
        let reply = Reply::with_headers(h, other);
        assert_eq!(
            open(&reply, &requester, None).err(),
            Some(SealedValueError::WrongPurpose)
        );
    }

    #[test]
    fn a_read_plaintext_is_neither_a_host_request_nor_a_put() {
        let plain = ReadValue {
            purpose: PURPOSE.into(),
            name: "db".into(),
            version: 1,
            string_secret: Some("v".into()),
            binary_secret: None,
        };
        let json = serde_json::to_vec(&plain).unwrap();
        assert!(serde_json::from_slice::<wasmcloud_secrets_types::SecretRequest>(&json).is_err());
        assert!(serde_json::from_slice::<super::super::wire::PutSecretRequest>(&json).is_err());
    }
}
