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
use crate::backend::{ReadRequest, Unsealed};
use crate::config::headers::{RESPONSE_XKEY, WASMCLOUD_HOST_XKEY};
use crate::keys;
use crate::store::envelope::SecretValue;

pub(crate) fn error(e: GetSecretError) -> Reply {
    Reply::json(&SecretResponse {
        secret: None,
        error: Some(e),
    })
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
    match respond(store, headers, payload).await {
        Ok(reply) => reply,
        Err(e) => error(e),
    }
}

async fn respond(
    store: &Unsealed<'_>,
    headers: Option<&HeaderMap>,
    payload: &[u8],
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
    let served = store.read(&read).await.map_err(|e| {
        tracing::debug!(key = %request.key, error = %e, "get refused");
        get_secret_error(&e)
    })?;

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
    Ok(Reply {
        headers: Some(h),
        payload: sealed.into(),
    })
}
