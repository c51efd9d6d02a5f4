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
use crate::backend::{ReadRequest, Unsealed, Who};
use crate::config::headers::{RESPONSE_XKEY, WASMCLOUD_HOST_XKEY};
use crate::error::ErrorKind;
use crate::keys;
use crate::store::envelope::SecretValue;

pub(crate) fn error(e: GetSecretError) -> Reply {
    let note = AuditNote::operation("get").failed(kind_of(&e), reason_of(&e));
    Reply::json(&SecretResponse {
        secret: None,
        error: Some(e),
    })
    .audited(note)
}

/// The audit trail's reason for a `get` error: its variant, never its text.
fn reason_of(e: &GetSecretError) -> &'static str {
    match e {
        GetSecretError::SecretNotFound => "not_found",
        GetSecretError::InvalidEntityJWT(_) => "invalid_entity_jwt",
        GetSecretError::InvalidHostJWT(_) => "invalid_host_jwt",
        GetSecretError::Unauthorized => "not_mapped",
        GetSecretError::PolicyError(_) => "invalid_policy",
        GetSecretError::InvalidRequest => "invalid_request",
        GetSecretError::InvalidHeaders => "invalid_headers",
        GetSecretError::InvalidPayload => "invalid_payload",
        GetSecretError::InvalidXKey => "invalid_xkey",
        GetSecretError::EncryptionError => "encryption_error",
        GetSecretError::DecryptionError => "decryption_error",
        GetSecretError::UpstreamError(_) => "upstream",
        GetSecretError::Other(_) => "other",
    }
}

fn kind_of(e: &GetSecretError) -> ErrorKind {
    match e {
        GetSecretError::Unauthorized
        | GetSecretError::InvalidEntityJWT(_)
        | GetSecretError::InvalidHostJWT(_) => ErrorKind::Denied,
        GetSecretError::SecretNotFound => ErrorKind::NotFound,
        GetSecretError::UpstreamError(_) => ErrorKind::Unavailable,
        _ => ErrorKind::Invalid,
    }
}

/// Read and check the requester's one-time public xkey from the request headers.
pub fn requester_key(headers: Option<&HeaderMap>) -> Result<XKey, GetSecretError> {
    let headers = headers.ok_or(GetSecretError::InvalidHeaders)?;
    let value = headers
        .get(WASMCLOUD_HOST_XKEY)
        .ok_or(GetSecretError::InvalidXKey)?;
    XKey::from_public_key(value.as_str()).map_err(|_| GetSecretError::InvalidXKey)
}

pub async fn handle(store: &Unsealed<'_>, headers: Option<&HeaderMap>, payload: &[u8]) -> Reply {
    let mut note = AuditNote::operation("get");
    match respond(store, headers, payload, &mut note).await {
        Ok(reply) => reply.audited(note.allowed()),
        Err(e) => {
            let mut reply = error(e);
            if let Some(failed) = reply.audit.as_mut() {
                failed.secret = note.secret;
                failed.entity = note.entity;
                failed.host = note.host;
            }
            reply
        }
    }
}

async fn respond(
    store: &Unsealed<'_>,
    headers: Option<&HeaderMap>,
    payload: &[u8],
    note: &mut AuditNote,
) -> Result<Reply, GetSecretError> {
    if payload.is_empty() {
        return Err(GetSecretError::InvalidPayload);
    }
    let requester = requester_key(headers)?;
    let opened = store
        .transit()
        .open(payload, &requester)
        .map_err(|_| GetSecretError::DecryptionError)?;
    let request: SecretRequest =
        serde_json::from_slice(&opened).map_err(|_| GetSecretError::InvalidRequest)?;
    let read = ReadRequest {
        key: &request.key,
        field: request.field.as_deref(),
        version: request.version.as_deref(),
        entity_jwt: &request.context.entity_jwt,
        host_jwt: &request.context.host_jwt,
        policy: &request.context.application.policy,
    };
    note.secret = Some(request.key.clone());
    let mut who = Who::default();
    let served = store.read(&read, &mut who).await;
    note.entity = who.entity;
    note.host = who.host;
    let served = served.map_err(|e| {
        tracing::debug!(key = %request.key, error = %e, "get refused");
        get_secret_error(&e)
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
    let encoded = encoded.map_err(|_| GetSecretError::EncryptionError)?;
    let (sealed, one_time_public) =
        keys::seal_to(&encoded, &requester).map_err(|_| GetSecretError::EncryptionError)?;
    let mut h = HeaderMap::new();
    h.insert(RESPONSE_XKEY, one_time_public.as_str());
    Ok(Reply::with_headers(h, sealed))
}
