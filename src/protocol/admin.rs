//! Admin operations on the protocol subject tree: the sample's `put_secret`, `add_mapping`,
//! `remove_mapping` (same bodies and replies), and piggybank's `delete_secret`,
//! `list_secrets`, `get_mappings`. `read_secret`, the one admin operation whose reply carries
//! a value, has a module of its own ([`super::read_secret`]).
//!
//! Mutations without a result answer `ok` (as the sample); queries answer JSON; every error
//! answers [`Reply::admin_error`]. `put_secret` keeps the sample's `PutSecretResponse` shape.
//! The two listings answer one page at a time, in name order, with a `next` cursor
//! (`crate::store::page::page_names` is the rule), so a page fits in a default-sized NATS
//! message (the bound is on `crate::store::page::PAGE_MAX`).

use std::collections::BTreeSet;

use async_nats::HeaderMap;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use super::get::{requester_key, BadXkey};
use super::reply::Reply;
use super::wire::{
    put_secret_error, DeleteSecretRequest, GetMappingsRequest, ListSecretsRequest,
    ListSecretsResponse, MappingsResponse, PutSecretError, PutSecretRequest, PutSecretResponse,
};
use crate::audit::AuditNote;
use crate::backend::{page_limit, BackendError, MappingChange, PageRequest, Unsealed};
use crate::decision::Decision;
use crate::error::ErrorKind;
use crate::store::envelope::SecretValue;
use crate::store::{Grantee, StoreError};

/// A `put_secret` refusal in the sample's `PutSecretResponse`, noted with what was decided.
fn put_error(e: PutSecretError, decided: Decision) -> Reply {
    Reply::json(&PutSecretResponse {
        revision: 0,
        error: Some(e),
    })
    .audited(AuditNote::default().decided(decided))
}

/// A `put_secret` request this door could not decode (the core never saw it).
fn undecodable(e: PutSecretError, reason: &'static str) -> Reply {
    put_error(e, Decision::refused(ErrorKind::Invalid, reason))
}

/// The core refused a `put_secret`: its wire error and its own decision.
pub(crate) fn put_core_error(e: &BackendError) -> Reply {
    put_error(put_secret_error(e), Decision::of(e))
}

/// Name the secret in the reply's audit note.
pub(super) fn naming(reply: Reply, secret: &str, version: Option<u64>) -> Reply {
    let mut note = reply.audit.clone().unwrap_or_default();
    note.secret = Some(secret.to_string());
    note.version = version.or(note.version);
    let mut reply = reply;
    reply.audit = Some(note);
    reply
}

pub async fn put_secret(
    store: &Unsealed<'_>,
    headers: Option<&HeaderMap>,
    payload: &[u8],
) -> Reply {
    if payload.is_empty() {
        return undecodable(PutSecretError::InvalidPayload, "invalid_payload");
    }
    let requester = match requester_key(headers) {
        Ok(k) => k,
        Err(BadXkey::NoHeaders) => {
            return undecodable(PutSecretError::InvalidHeaders, "invalid_headers")
        }
        Err(BadXkey::Invalid) => return undecodable(PutSecretError::InvalidXKey, "invalid_xkey"),
    };
    let Ok(opened) = store.transit().open(payload, &requester) else {
        return undecodable(PutSecretError::DecryptionError, "decryption_error");
    };
    let Ok(mut request) = serde_json::from_slice::<PutSecretRequest>(&opened) else {
        return undecodable(PutSecretError::InvalidPayload, "invalid_payload");
    };
    let value = match (request.string_secret.take(), request.binary_secret.take()) {
        (Some(_), Some(_)) => {
            return undecodable(PutSecretError::BothSecretsProvided, "both_secrets")
        }
        (None, None) => return undecodable(PutSecretError::NoSecretProvided, "no_secret"),
        (Some(s), None) => SecretValue::String(Zeroizing::new(s)),
        (None, Some(b)) => SecretValue::Binary(Zeroizing::new(b)),
    };
    let expected = match request.version.trim() {
        "" => None,
        v => match v.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => {
                return undecodable(
                    PutSecretError::InvalidVersion(format!(
                        "{v:?}: put's version is the expected current revision (0 = create only)"
                    )),
                    "invalid_version",
                )
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
        Err(e) => naming(put_core_error(&e), &request.key, None),
    }
}

pub async fn delete_secret(store: &Unsealed<'_>, payload: &[u8]) -> Reply {
    let request: DeleteSecretRequest = match serde_json::from_slice(payload) {
        Ok(r) => r,
        Err(e) => {
            return Reply::bad_request(format!("expected {{\"key\": NAME}}: {e}"), "invalid_body")
        }
    };
    let reply = match store.delete(&request.key).await {
        Ok(()) => {
            tracing::info!(key = %request.key, "secret deleted");
            Reply::ok()
        }
        Err(e) => Reply::core_error(&e),
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
        .map_err(|e| Reply::bad_request(format!("expected {expected}: {e}"), "invalid_body"))
}

fn limit(requested: Option<u64>) -> Result<usize, Reply> {
    page_limit(requested).map_err(|e| Reply::bad_request(e.to_string(), "invalid_limit"))
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
            .list_page(&request)
            .await
            .map_err(|e| Reply::core_error(&e))
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
        Reply::bad_request(
            format!("expected a JSON array of secret names: {e}"),
            "invalid_body",
        )
    })?;
    if names.is_empty() {
        return Err(Reply::bad_request(
            "expected at least one secret name",
            "invalid_body",
        ));
    }
    Ok(names.into_iter().collect())
}

/// `add_mapping.{entity}` and `remove_mapping.{entity}`; `add_app_mapping.{application}`
/// and `remove_app_mapping.{application}`. `grantee` is the subject's last token, checked.
pub async fn update_mapping(
    store: &Unsealed<'_>,
    change: MappingChange,
    grantee: Result<Grantee, StoreError>,
    payload: &[u8],
) -> Reply {
    let grantee = match grantee {
        Ok(grantee) => grantee,
        Err(e) => return Reply::core_error(&e.into()),
    };
    let names = match mapping_names(payload) {
        Ok(n) => n,
        Err(reply) => return reply,
    };
    let reply = match store.update_grant(&grantee, change, &names).await {
        Ok(_) => {
            tracing::info!(%grantee, ?change, secrets = ?names, "mapping updated");
            Reply::ok()
        }
        Err(e) => Reply::core_error(&e),
    };
    naming_application(reply, &grantee)
}

/// Name a grant's application in the reply's audit note (an entity is named by the door).
fn naming_application(mut reply: Reply, grantee: &Grantee) -> Reply {
    if let Grantee::Application(app) = grantee {
        let note = reply.audit.get_or_insert_with(Default::default);
        note.application = Some(app.to_string());
    }
    reply
}

/// `get_mappings.{entity}` or `get_app_mappings.{application}`: one page of the names
/// granted (see [`GetMappingsRequest`]).
pub async fn get_mappings(
    store: &Unsealed<'_>,
    grantee: Result<Grantee, StoreError>,
    payload: &[u8],
) -> Reply {
    let grantee = match grantee {
        Ok(grantee) => grantee,
        Err(e) => return Reply::core_error(&e.into()),
    };
    let page = async {
        let request = optional_body::<GetMappingsRequest>(
            payload,
            r#"an empty body or {"prefix": TEXT, "limit": N, "after": NAME}"#,
        )?;
        let limit = limit(request.limit)?;
        let request = PageRequest {
            prefix: &request.prefix,
            after: request.after.as_deref(),
            limit,
        };
        store
            .grant_page(&grantee, &request)
            .await
            .map_err(|e| Reply::core_error(&e))
    };
    let (entity, application) = match &grantee {
        Grantee::Entity(entity) => (entity.to_string(), None),
        Grantee::Application(app) => (String::new(), Some(app.to_string())),
    };
    let reply = match page.await {
        Ok(page) => Reply::json(&MappingsResponse {
            entity,
            application,
            secrets: page.items,
            next: page.next,
        }),
        Err(reply) => reply,
    };
    naming_application(reply, &grantee)
}
