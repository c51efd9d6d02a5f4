//! Wire types of the admin operations, and the one mapping from core errors to wire errors.
//!
//! `PutSecretRequest`/`PutSecretResponse` have the sample backend's JSON shape (they live in
//! its crate, not in `wasmcloud-secrets-types`), so scripts and clients written for it work
//! unchanged. `PutSecretError` keeps the sample's variants and adds piggybank's own after them.

use serde::{Deserialize, Serialize};
use wasmcloud_secrets_types::GetSecretError;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::authz::AuthzError;
use crate::backend::BackendError;
use crate::error::ErrorKind;
use crate::store::envelope::EnvelopeError;
use crate::store::{SecretMeta, StoreError};

/// Sealed body of `put_secret`. Zeroized on drop: it carries the value.
#[derive(Serialize, Deserialize, Default, Zeroize, ZeroizeOnDrop)]
pub struct PutSecretRequest {
    pub key: String,
    /// Compare-and-set: empty = unconditional, `0` = must not exist, `N` = current must be N.
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub string_secret: Option<String>,
    #[serde(default)]
    pub binary_secret: Option<Vec<u8>>,
}

#[derive(Serialize, Deserialize, Debug, Default, PartialEq, Eq)]
pub struct PutSecretResponse {
    pub revision: u64,
    pub error: Option<PutSecretError>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PutSecretError {
    #[error("Invalid payload")]
    InvalidPayload,
    #[error("Invalid headers")]
    InvalidHeaders,
    #[error("Invalid XKey")]
    InvalidXKey,
    #[error("Error decrypting secret")]
    DecryptionError,
    #[error("No secret provided")]
    NoSecretProvided,
    // Piggybank additions.
    #[error("Both a string and a binary secret were provided")]
    BothSecretsProvided,
    #[error("Invalid secret name: {0}")]
    InvalidName(String),
    #[error("Sealed: {0}")]
    Sealed(String),
    #[error("Invalid version: {0}")]
    InvalidVersion(String),
    #[error("Version conflict: {0}")]
    VersionConflict(String),
    #[error("Backend error: {0}")]
    Upstream(String),
}

/// Body of `delete_secret`.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) struct DeleteSecretRequest {
    pub key: String,
}

/// Body of `list_secrets`. Every field is optional, and so is the body: an empty body, or the
/// older `{"prefix": "..."}`, asks for the first page.
#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ListSecretsRequest {
    #[serde(default)]
    pub prefix: String,
    /// Most entries in the reply: default [`PAGE_DEFAULT`](crate::store::page::PAGE_DEFAULT)
    /// (1000), at most [`PAGE_MAX`](crate::store::page::PAGE_MAX) (2000; a larger limit is
    /// lowered); 0 is refused (400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// The cursor: the previous page's `next`. The page starts strictly after this name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// Reply of `list_secrets`: one page, in name order.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ListSecretsResponse {
    pub secrets: Vec<SecretMeta>,
    /// `null` on the last page; otherwise the last name of this page, to send as `after`.
    /// Always written, so a caller can tell a last page from a backend that does not page
    /// (a reply without it is complete).
    #[serde(default)]
    pub next: Option<String>,
}

/// Body of `get_mappings.{entity}`: optional, as for `list_secrets` (the sample-era client
/// sends an empty body and gets the first page).
#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct GetMappingsRequest {
    /// Only names that start with this.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    /// As [`ListSecretsRequest::limit`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// As [`ListSecretsRequest::after`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// Reply of `get_mappings.{entity}`, one page of it (`add_mapping` and `remove_mapping`
/// answer `ok`, as the sample's).
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct MappingsResponse {
    /// The entity (`get_mappings`); empty for an application's grants.
    pub entity: String,
    /// The application (`get_app_mappings`); absent for an entity's mappings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application: Option<String>,
    pub secrets: Vec<String>,
    /// As [`ListSecretsResponse::next`].
    #[serde(default)]
    pub next: Option<String>,
}

/// Admin error code of a reply that would not fit in one NATS message (the connection's max
/// payload): HTTP's "content too large". The request was valid; ask for less (a smaller
/// `limit`). Also the Piggy Bank API's `Status` in that case.
pub const REPLY_TOO_LARGE: u16 = 413;

/// JSON body of every admin error reply (also in headers `Nats-Service-Error[-Code]`).
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct AdminError {
    pub error: String,
    pub code: u16,
}

/// The one mapping from core errors to the protocol's `GetSecretError`: by kind, except
/// where the sample's wire format names a finer cause (which JWT is invalid, an upstream
/// error, a decryption error) that hosts report as it is.
pub(crate) fn get_secret_error(err: &BackendError) -> GetSecretError {
    match err {
        BackendError::Authz(AuthzError::InvalidEntityJwt(m)) => {
            GetSecretError::InvalidEntityJWT(m.clone())
        }
        BackendError::Authz(AuthzError::InvalidHostJwt(m)) => {
            GetSecretError::InvalidHostJWT(m.clone())
        }
        BackendError::Authz(AuthzError::Policy(m)) => GetSecretError::PolicyError(m.clone()),
        BackendError::Store(StoreError::Upstream(m)) => GetSecretError::UpstreamError(m.clone()),
        BackendError::Envelope(EnvelopeError::Key(_)) => GetSecretError::DecryptionError,
        // A field that is missing or not selectable: the request is valid, the secret is
        // not what it expects; the message says which.
        BackendError::MissingField(_) | BackendError::NotAnObject(_) => {
            GetSecretError::Other(err.to_string())
        }
        _ => match err.kind() {
            ErrorKind::Denied => GetSecretError::Unauthorized,
            ErrorKind::NotFound => GetSecretError::SecretNotFound,
            ErrorKind::Invalid => GetSecretError::InvalidRequest,
            ErrorKind::Unavailable => GetSecretError::UpstreamError(err.to_string()),
            ErrorKind::Conflict | ErrorKind::Sealed | ErrorKind::Internal => {
                GetSecretError::Other(err.to_string())
            }
        },
    }
}

/// The one mapping from core errors to `put_secret` errors: by kind.
pub(crate) fn put_secret_error(err: &BackendError) -> PutSecretError {
    let message = err.to_string();
    match err.kind() {
        ErrorKind::Invalid => PutSecretError::InvalidName(message),
        ErrorKind::Conflict => PutSecretError::VersionConflict(message),
        ErrorKind::Sealed => PutSecretError::Sealed(message),
        ErrorKind::Denied | ErrorKind::NotFound | ErrorKind::Unavailable | ErrorKind::Internal => {
            PutSecretError::Upstream(message)
        }
    }
}
