//! Admin operations on the protocol subject tree: the sample's `put_secret`, `add_mapping`,
//! `remove_mapping` (same bodies and replies), and piggybank's `delete_secret`,
//! `list_secrets`, `get_mappings`.
//!
//! Mutations without a result answer `ok` (as the sample); queries answer JSON; every error
//! answers [`Reply::admin_error`]. `put_secret` keeps the sample's `PutSecretResponse` shape.
//! The two listings answer one page at a time, in name order, with a `next` cursor
//! (`crate::store::secrets::page_names` is the rule), so a page fits in a default-sized NATS
//! message (the bound is on `crate::store::secrets::PAGE_MAX`).

use std::collections::BTreeSet;

use async_nats::HeaderMap;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use super::get::requester_key;
use super::reply::Reply;
use super::wire::{
    admin_code, put_secret_error, DeleteSecretRequest, GetMappingsRequest, ListSecretsRequest,
    ListSecretsResponse, MappingsResponse, PutSecretError, PutSecretRequest, PutSecretResponse,
};
use crate::audit::AuditNote;
use crate::backend::{BackendError, MappingChange, Unsealed};
use crate::error::ErrorKind;
use crate::store::envelope::SecretValue;
use crate::store::secrets::{page_limit, PageRequest};
use crate::store::validate_entity;

pub(crate) fn put_error(e: PutSecretError) -> Reply {
    let note = AuditNote::default().failed(put_kind(&e), put_reason(&e));
    Reply::json(&PutSecretResponse {
        revision: 0,
        error: Some(e),
    })
    .audited(note)
}

/// The audit trail's reason for a `put_secret` error: its variant, never its text.
fn put_reason(e: &PutSecretError) -> &'static str {
    match e {
        PutSecretError::InvalidPayload => "invalid_payload",
        PutSecretError::InvalidHeaders => "invalid_headers",
        PutSecretError::InvalidXKey => "invalid_xkey",
        PutSecretError::DecryptionError => "decryption_error",
        PutSecretError::NoSecretProvided => "no_secret",
        PutSecretError::BothSecretsProvided => "both_secrets",
        PutSecretError::InvalidName(_) => "invalid_name",
        PutSecretError::Sealed(_) => "sealed",
        PutSecretError::InvalidVersion(_) => "invalid_version",
        PutSecretError::VersionConflict(_) => "version_conflict",
        PutSecretError::Upstream(_) => "upstream",
    }
}

fn put_kind(e: &PutSecretError) -> ErrorKind {
    match e {
        PutSecretError::InvalidHeaders => ErrorKind::Denied,
        PutSecretError::Sealed(_) => ErrorKind::Sealed,
        PutSecretError::VersionConflict(_) => ErrorKind::Conflict,
        PutSecretError::Upstream(_) => ErrorKind::Unavailable,
        _ => ErrorKind::Invalid,
    }
}

/// Name the secret in the reply's audit note.
fn naming(reply: Reply, secret: &str, version: Option<u64>) -> Reply {
    let mut note = reply.audit.clone().unwrap_or_default();
    note.secret = Some(secret.to_string());
    note.version = version.or(note.version);
    let mut reply = reply;
    reply.audit = Some(note);
    reply
}

pub(crate) fn backend_error(e: &BackendError) -> Reply {
    Reply::admin_error(admin_code(e), e.to_string())
}

pub async fn put_secret(
    store: &Unsealed<'_>,
    headers: Option<&HeaderMap>,
    payload: &[u8],
) -> Reply {
    if payload.is_empty() {
        return put_error(PutSecretError::InvalidPayload);
    }
    let requester = match requester_key(headers) {
        Ok(k) => k,
        Err(wasmcloud_secrets_types::GetSecretError::InvalidHeaders) => {
            return put_error(PutSecretError::InvalidHeaders)
        }
        Err(_) => return put_error(PutSecretError::InvalidXKey),
    };
    let Ok(opened) = store.transit().open(payload, &requester) else {
        return put_error(PutSecretError::DecryptionError);
    };
    let Ok(mut request) = serde_json::from_slice::<PutSecretRequest>(&opened) else {
        return put_error(PutSecretError::InvalidPayload);
    };
    let value = match (request.string_secret.take(), request.binary_secret.take()) {
        (Some(_), Some(_)) => return put_error(PutSecretError::BothSecretsProvided),
        (None, None) => return put_error(PutSecretError::NoSecretProvided),
        (Some(s), None) => SecretValue::String(Zeroizing::new(s)),
        (None, Some(b)) => SecretValue::Binary(Zeroizing::new(b)),
    };
    let expected = match request.version.trim() {
        "" => None,
        v => match v.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => {
                return put_error(PutSecretError::InvalidVersion(format!(
                    "{v:?}: put's version is the expected current revision (0 = create only)"
                )))
            }
        },
    };
    match store.put(&request.key, &value, expected).await {
        Ok(revision) => {
            tracing::info!(key = %request.key, revision, kind = ?value.kind(), "secret stored");
            let reply = Reply::json(&PutSecretResponse {
                revision,
                error: None,
            });
            naming(
                reply.audited(AuditNote::default().allowed()),
                &request.key,
                Some(revision),
            )
        }
        Err(e) => naming(put_error(put_secret_error(&e)), &request.key, None),
    }
}

pub async fn delete_secret(store: &Unsealed<'_>, payload: &[u8]) -> Reply {
    let request: DeleteSecretRequest = match serde_json::from_slice(payload) {
        Ok(r) => r,
        Err(e) => return Reply::admin_error(400, format!("expected {{\"key\": NAME}}: {e}")),
    };
    let reply = match store.delete(&request.key).await {
        Ok(()) => {
            tracing::info!(key = %request.key, "secret deleted");
            Reply::ok()
        }
        Err(e) => backend_error(&e),
    };
    naming(reply, &request.key, None)
}

/// Parse an optional JSON body: empty (or only whitespace) is the default request.
fn optional_body<T: DeserializeOwned + Default>(
    payload: &[u8],
    expected: &str,
) -> Result<T, Reply> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(payload)
        .map_err(|e| Reply::admin_error(400, format!("expected {expected}: {e}")))
}

fn limit(requested: Option<u64>) -> Result<usize, Reply> {
    page_limit(requested).map_err(|e| Reply::admin_error(400, e.to_string()))
}

/// `list_secrets`: one page of metadata, in name order (see [`ListSecretsRequest`]). Waits
/// for the mirror to hold the whole bucket.
pub async fn list_secrets(store: &Unsealed<'_>, payload: &[u8]) -> Reply {
    let page = async {
        let request = optional_body::<ListSecretsRequest>(
            payload,
            r#"{"prefix": TEXT, "limit": N, "after": NAME}, every field optional"#,
        )?;
        let limit = limit(request.limit)?;
        let request = PageRequest {
            prefix: &request.prefix,
            after: request.after.as_deref(),
            limit,
        };
        store
            .secrets()
            .list_page(&request)
            .await
            .map_err(|e| backend_error(&e.into()))
    };
    match page.await {
        Ok(page) => Reply::json(&ListSecretsResponse {
            secrets: page.items,
            next: page.next,
        }),
        Err(reply) => reply,
    }
}

/// Parse a mapping body: a JSON array of secret names (the sample sends a set).
fn mapping_names(payload: &[u8]) -> Result<BTreeSet<String>, Reply> {
    let names: Vec<String> = serde_json::from_slice(payload).map_err(|e| {
        Reply::admin_error(400, format!("expected a JSON array of secret names: {e}"))
    })?;
    if names.is_empty() {
        return Err(Reply::admin_error(400, "expected at least one secret name"));
    }
    Ok(names.into_iter().collect())
}

/// `add_mapping.{entity}` and `remove_mapping.{entity}`.
pub async fn update_mapping(
    store: &Unsealed<'_>,
    change: MappingChange,
    entity: &str,
    payload: &[u8],
) -> Reply {
    let names = match mapping_names(payload) {
        Ok(n) => n,
        Err(reply) => return reply,
    };
    match store.update_mapping(entity, change, &names).await {
        Ok(_) => {
            tracing::info!(entity, ?change, secrets = ?names, "mapping updated");
            Reply::ok()
        }
        Err(e) => backend_error(&e),
    }
}

/// `get_mappings.{entity}`: one page of the names the entity may read (see
/// [`GetMappingsRequest`]).
pub async fn get_mappings(store: &Unsealed<'_>, entity: &str, payload: &[u8]) -> Reply {
    let page = async {
        let request = optional_body::<GetMappingsRequest>(
            payload,
            r#"an empty body or {"prefix": TEXT, "limit": N, "after": NAME}"#,
        )?;
        validate_entity(entity).map_err(|e| backend_error(&e.into()))?;
        let limit = limit(request.limit)?;
        let request = PageRequest {
            prefix: &request.prefix,
            after: request.after.as_deref(),
            limit,
        };
        store
            .mappings()
            .names_page(entity, &request)
            .await
            .map_err(|e| backend_error(&e.into()))
    };
    match page.await {
        Ok(page) => Reply::json(&MappingsResponse {
            entity: entity.to_string(),
            secrets: page.items,
            next: page.next,
        }),
        Err(reply) => reply,
    }
}
