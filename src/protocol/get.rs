//! `get`: open the sealed `SecretRequest`, authorize and read through the core, and seal the
//! `SecretResponse` to the requester from a fresh one-time key.
//!
//! Errors are plain JSON `SecretResponse{error}` without the response-key header, as hosts
//! expect. Nothing decrypted is ever logged; decrypted buffers are zeroized.

use async_nats::HeaderMap;
use nkeys::XKey;
use wasmcloud_secrets_types::{GetSecretError, Secret, SecretRequest, SecretResponse};
use zeroize::{Zeroize, Zeroizing};

use super::reply::Reply;
use super::wire::get_secret_error;
use crate::audit::AuditNote;
use crate::backend::{Backend, BackendError, ReadRequest, Who};
use crate::config::headers::{RESPONSE_XKEY, WASMCLOUD_HOST_XKEY};
use crate::decision::Decision;
use crate::error::ErrorKind;
use crate::keys;
use crate::store::envelope::SecretValue;
use crate::store::validate_name;

/// A `get` refused: the error the host reads, and what was decided (for the audit trail).
pub(crate) struct Refused {
    pub wire: GetSecretError,
    pub decision: Decision,
}

impl Refused {
    /// A request this door could not decode: the core never saw it.
    fn undecodable(wire: GetSecretError, reason: &'static str) -> Self {
        Refused {
            wire,
            decision: Decision::refused(ErrorKind::Invalid, reason),
        }
    }

    /// The core refused it: its own decision.
    pub(crate) fn by_core(err: &BackendError) -> Self {
        Refused {
            wire: get_secret_error(err),
            decision: Decision::of(err),
        }
    }

    /// The reply, and its audit note (`note`, decided).
    pub(crate) fn reply(self, note: AuditNote) -> Reply {
        Reply::json(&SecretResponse {
            secret: None,
            error: Some(self.wire),
        })
        .audited(note.decided(self.decision))
    }
}

/// What is wrong with a request's `WasmCloud-Host-Xkey`, for each operation's own error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadXkey {
    /// The request has no headers at all.
    NoHeaders,
    /// The header is missing or not an xkey public key.
    Invalid,
}

/// Read and check the requester's one-time public xkey from the request headers.
pub fn requester_key(headers: Option<&HeaderMap>) -> Result<XKey, BadXkey> {
    let headers = headers.ok_or(BadXkey::NoHeaders)?;
    let value = headers.get(WASMCLOUD_HOST_XKEY).ok_or(BadXkey::Invalid)?;
    XKey::from_public_key(value.as_str()).map_err(|_| BadXkey::Invalid)
}

/// Answer a `get`. While the store is sealed, the request is still opened when the transit
/// key is at hand, so that its refusal (`denied`/`sealed`) names the secret asked for.
pub async fn handle(backend: &Backend, headers: Option<&HeaderMap>, payload: &[u8]) -> Reply {
    let mut note = AuditNote::operation("get");
    match respond(backend, headers, payload, &mut note).await {
        Ok(reply) => reply.audited(note.allowed()),
        Err(refused) => refused.reply(note),
    }
}

async fn respond(
    backend: &Backend,
    headers: Option<&HeaderMap>,
    payload: &[u8],
    note: &mut AuditNote,
) -> Result<Reply, Refused> {
    let sealed = || Refused::by_core(&BackendError::Sealed);
    if payload.is_empty() {
        return Err(Refused::undecodable(
            GetSecretError::InvalidPayload,
            "invalid_payload",
        ));
    }
    let requester = requester_key(headers).map_err(|bad| match bad {
        BadXkey::NoHeaders => {
            Refused::undecodable(GetSecretError::InvalidHeaders, "invalid_headers")
        }
        BadXkey::Invalid => Refused::undecodable(GetSecretError::InvalidXKey, "invalid_xkey"),
    })?;
    let store = backend.unsealed();
    // Sealed: the configured transit key, if any, opens the request (never a value).
    let transit = match &store {
        Ok(store) => Some(store.transit_key()),
        Err(_) => backend.configured_transit(),
    };
    let Some(transit) = transit else {
        return Err(sealed());
    };
    let opened = match transit.open(payload, &requester) {
        Ok(opened) => opened,
        // Sealed to another transit key than the one configured: still the seal's refusal.
        Err(_) if store.is_err() => return Err(sealed()),
        Err(_) => {
            return Err(Refused::undecodable(
                GetSecretError::DecryptionError,
                "decryption_error",
            ))
        }
    };
    let request: SecretRequest = serde_json::from_slice(&opened)
        .map_err(|_| Refused::undecodable(GetSecretError::InvalidRequest, "invalid_request"))?;
    // Named on the record only if it is a name: a request's key is the requester's text,
    // and a record holds no more of it than a valid name (at most 255 bytes, no controls).
    if validate_name(&request.key).is_ok() {
        note.secret = Some(request.key.clone());
    }
    let store = store.map_err(|e| Refused::by_core(&e))?;
    let read = ReadRequest {
        key: &request.key,
        field: request.field.as_deref(),
        version: request.version.as_deref(),
        entity_jwt: &request.context.entity_jwt,
        host_jwt: &request.context.host_jwt,
        policy: &request.context.application.policy,
        application: request.context.application.name.as_deref(),
    };
    let mut who = Who::default();
    let served = store.read(&read, &mut who).await;
    note.entity = who.entity;
    note.host = who.host;
    note.application = who.application;
    note.granted_by = who.granted_by.map(str::to_string);
    let served = served.map_err(|e| {
        tracing::debug!(key = %request.key, error = %e, "get refused");
        Refused::by_core(&e)
    })?;
    note.version = Some(served.version);

    let mut secret = Secret {
        version: served.version.to_string(),
        string_secret: None,
        binary_secret: None,
    };
    match served.value {
        SecretValue::String(s) => secret.string_secret = Some(s.as_str().to_owned()),
        SecretValue::Binary(b) => secret.binary_secret = Some(b.to_vec()),
    }
    let mut response = SecretResponse {
        secret: Some(secret),
        error: None,
    };
    let encoded = serde_json::to_vec(&response).map(Zeroizing::new);
    if let Some(secret) = response.secret.as_mut() {
        secret.string_secret.zeroize();
        secret.binary_secret.zeroize();
    }
    let encryption = || Refused {
        wire: GetSecretError::EncryptionError,
        decision: Decision::refused(ErrorKind::Internal, "encryption_error"),
    };
    let encoded = encoded.map_err(|_| encryption())?;
    let (sealed, one_time_public) =
        keys::seal_to(&encoded, &requester).map_err(|_| encryption())?;
    let mut h = HeaderMap::new();
    h.insert(RESPONSE_XKEY, one_time_public.as_str());
    Ok(Reply::with_headers(h, sealed))
}
