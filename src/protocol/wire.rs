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
pub struct DeleteSecretRequest {
    pub key: String,
}

/// Body of `list_secrets` (optional: an empty body lists everything).
#[derive(Serialize, Deserialize, Debug, Default)]
pub struct ListSecretsRequest {
    #[serde(default)]
    pub prefix: String,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct ListSecretsResponse {
    pub secrets: Vec<SecretMeta>,
}

/// Reply of `get_mappings.{entity}`, `add_mapping` and `remove_mapping` are `ok` (sample).
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct MappingsResponse {
    pub entity: String,
    pub secrets: Vec<String>,
}

/// JSON body of every admin error reply (also in headers `Nats-Service-Error[-Code]`).
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct AdminError {
    pub error: String,
    pub code: u16,
}

/// The one mapping from core errors to the protocol's `GetSecretError`.
pub fn get_secret_error(err: &BackendError) -> GetSecretError {
    match err {
        BackendError::Authz(a) => match a {
            AuthzError::InvalidEntityJwt(m) => GetSecretError::InvalidEntityJWT(m.clone()),
            AuthzError::InvalidHostJwt(m) => GetSecretError::InvalidHostJWT(m.clone()),
            AuthzError::UntrustedIssuer(_) | AuthzError::NotMapped => GetSecretError::Unauthorized,
            AuthzError::Policy(m) => GetSecretError::PolicyError(m.clone()),
            AuthzError::BadTrustedIssuer(_) => GetSecretError::Other(a.to_string()),
        },
        BackendError::Store(s) => match s {
            StoreError::NotFound(_) => GetSecretError::SecretNotFound,
            StoreError::InvalidName { .. } | StoreError::InvalidEntity(_) => {
                GetSecretError::InvalidRequest
            }
            StoreError::Upstream(m) => GetSecretError::UpstreamError(m.clone()),
            other => GetSecretError::Other(other.to_string()),
        },
        BackendError::Envelope(EnvelopeError::Key(_)) => GetSecretError::DecryptionError,
        BackendError::Envelope(e) => GetSecretError::Other(e.to_string()),
        BackendError::InvalidVersion(_) => GetSecretError::InvalidRequest,
        BackendError::MissingField(_) | BackendError::NotAnObject(_) | BackendError::Sealed => {
            GetSecretError::Other(err.to_string())
        }
    }
}

/// The one mapping from core errors to `put_secret` errors.
pub fn put_secret_error(err: &BackendError) -> PutSecretError {
    match err {
        BackendError::Store(StoreError::InvalidName { .. }) => {
            PutSecretError::InvalidName(err.to_string())
        }
        BackendError::Store(StoreError::VersionConflict { .. }) => {
            PutSecretError::VersionConflict(err.to_string())
        }
        BackendError::Sealed => PutSecretError::Sealed(err.to_string()),
        _ => PutSecretError::Upstream(err.to_string()),
    }
}

/// The one mapping from core errors to admin status codes.
pub fn admin_code(err: &BackendError) -> u16 {
    match err {
        BackendError::Store(StoreError::NotFound(_)) => 404,
        BackendError::Store(StoreError::VersionConflict { .. } | StoreError::Contention(_)) => 409,
        BackendError::Store(StoreError::InvalidName { .. } | StoreError::InvalidEntity(_))
        | BackendError::InvalidVersion(_) => 400,
        BackendError::Authz(_) => 403,
        BackendError::Sealed => 423,
        _ => 500,
    }
}
