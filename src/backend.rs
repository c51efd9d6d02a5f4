//! The core: keys, stores and authorization behind every front door.
//!
//! `Backend` knows nothing about subjects, headers or WIT. Front doors decode a request,
//! call one method here, and encode the result; errors are [`BackendError`], which each
//! front door maps to its wire error in exactly one function.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use zeroize::Zeroizing;

use crate::authz::{self, Authorizer, AuthzError};
use crate::keys::{Keyring, TransitKey};
use crate::store::envelope::{self, EnvelopeError, SecretValue};
pub use crate::store::mappings::MappingChange;
use crate::store::{validate_name, MappingTable, SecretMeta, SecretStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Authz(#[from] AuthzError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error("invalid version {0:?}: a version is a revision number")]
    InvalidVersion(String),
    #[error("secret has no field {0:?}")]
    MissingField(String),
    #[error("field {0:?} was requested but the secret is not a JSON object")]
    NotAnObject(String),
    #[error("the store is sealed: unlock it first (piggybank unlock)")]
    Sealed,
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

/// A read request, already decrypted and parsed by a front door.
pub struct ReadRequest<'a> {
    pub key: &'a str,
    pub field: Option<&'a str>,
    pub version: Option<&'a str>,
    pub entity_jwt: &'a str,
    pub host_jwt: &'a str,
    pub policy: &'a str,
}

/// A secret as served: its version and its (decrypted) value.
pub struct ServedSecret {
    pub version: u64,
    pub value: SecretValue,
}

/// The core. Its keys may be absent: a sealed store holds none until it is unlocked, and
/// `lock` drops them again (dropping zeroizes them). Readers take an `Arc` of what is there.
pub struct Backend {
    /// The transit public key, known even while sealed (hosts cache it for their lifetime).
    transit_public: RwLock<Option<String>>,
    transit: RwLock<Option<Arc<TransitKey>>>,
    keys: RwLock<Option<Arc<Keyring>>>,
    secrets: SecretStore,
    mappings: MappingTable,
    authorizer: Authorizer,
}

impl Backend {
    /// A backend holding its keys (run with `ENCRYPTION_XKEY_SEED`).
    pub fn new(
        transit: TransitKey,
        keys: Keyring,
        secrets: SecretStore,
        mappings: MappingTable,
        authorizer: Authorizer,
    ) -> Self {
        let backend = Self::sealed(secrets, mappings, authorizer);
        backend.set_transit(Some(transit));
        backend.set_keys(Some(keys));
        backend
    }

    /// A backend with no keys yet (sealed mode).
    pub fn sealed(secrets: SecretStore, mappings: MappingTable, authorizer: Authorizer) -> Self {
        Self {
            transit_public: RwLock::default(),
            transit: RwLock::default(),
            keys: RwLock::default(),
            secrets,
            mappings,
            authorizer,
        }
    }

    /// The transit key, if this instance holds it.
    pub fn transit(&self) -> Result<Arc<TransitKey>, BackendError> {
        read(&self.transit).clone().ok_or(BackendError::Sealed)
    }

    /// The transit public key (`server_xkey`), if known: it is, even while sealed, once the
    /// store is initialized or a transit seed was configured.
    pub fn transit_public(&self) -> Option<String> {
        read(&self.transit_public).clone()
    }

    pub fn set_transit_public(&self, public: Option<String>) {
        *write(&self.transit_public) = public;
    }

    pub fn set_transit(&self, transit: Option<TransitKey>) {
        if let Some(t) = &transit {
            self.set_transit_public(Some(t.public_key().to_string()));
        }
        *write(&self.transit) = transit.map(Arc::new);
    }

    /// The data keys, unless sealed.
    pub fn keys(&self) -> Result<Arc<Keyring>, BackendError> {
        read(&self.keys).clone().ok_or(BackendError::Sealed)
    }

    pub fn set_keys(&self, keys: Option<Keyring>) {
        *write(&self.keys) = keys.map(Arc::new);
    }

    pub fn is_sealed(&self) -> bool {
        read(&self.keys).is_none()
    }

    pub fn secrets(&self) -> &SecretStore {
        &self.secrets
    }

    pub fn mappings(&self) -> &MappingTable {
        &self.mappings
    }

    /// Authorize and serve a read. No NATS I/O unless an older version is requested.
    pub async fn read(&self, req: &ReadRequest<'_>) -> Result<ServedSecret, BackendError> {
        validate_name(req.key)?;
        authz::check_policy(req.policy)?;
        self.authorizer.verify_host(req.host_jwt)?;
        let entity = self.authorizer.verify_entity(req.entity_jwt)?;
        if !self.mappings.allows(&entity.subject, req.key) {
            return Err(AuthzError::NotMapped.into());
        }
        let not_found = || StoreError::NotFound(req.key.to_string());
        let stored = match req.version.filter(|v| !v.is_empty()) {
            None => self.secrets.latest(req.key),
            Some(v) => {
                let revision: u64 = v
                    .parse()
                    .map_err(|_| BackendError::InvalidVersion(v.to_string()))?;
                self.secrets.version(req.key, revision).await?
            }
        }
        .ok_or_else(not_found)?;
        let value = envelope::open(&stored.sealed, &*self.keys()?)?;
        let value = match req.field {
            Some(field) if !field.is_empty() => select_field(&value, field)?,
            _ => value,
        };
        Ok(ServedSecret {
            version: stored.revision,
            value,
        })
    }

    /// The latest value of `name`, with no JWT checks: for a front door whose callers NATS
    /// permissions have already authorized (the Piggy Bank API).
    pub fn value(&self, name: &str) -> Result<SecretValue, BackendError> {
        validate_name(name)?;
        let stored = self
            .secrets
            .latest(name)
            .ok_or_else(|| StoreError::NotFound(name.to_string()))?;
        Ok(envelope::open(&stored.sealed, &*self.keys()?)?)
    }

    /// Store a new version of `name`. `expected` is a compare-and-set on the current version
    /// (`Some(0)`: must not exist yet). Returns the new version.
    pub async fn put(
        &self,
        name: &str,
        value: &SecretValue,
        expected: Option<u64>,
    ) -> Result<u64, BackendError> {
        validate_name(name)?;
        let created = self
            .secrets
            .created_ms(name)
            .unwrap_or_else(crate::store::secrets::now_ms);
        let sealed =
            envelope::seal(value, self.keys()?.current(), created).map_err(EnvelopeError::from)?;
        Ok(self.secrets.put(name, sealed, expected).await?)
    }

    pub async fn delete(&self, name: &str) -> Result<(), BackendError> {
        Ok(self.secrets.delete(name).await?)
    }

    pub fn list(&self, prefix: &str) -> Vec<SecretMeta> {
        self.secrets.list(prefix)
    }

    /// Add or remove `names` for `entity`; returns the entity's resulting names.
    pub async fn update_mapping(
        &self,
        entity: &str,
        change: MappingChange,
        names: &BTreeSet<String>,
    ) -> Result<Vec<String>, BackendError> {
        Ok(self.mappings.update(entity, change, names).await?)
    }

    /// Metadata of one secret.
    pub fn info(&self, name: &str) -> Result<SecretMeta, BackendError> {
        validate_name(name)?;
        Ok(self
            .secrets
            .meta(name)
            .ok_or_else(|| StoreError::NotFound(name.to_string()))?)
    }

    pub fn mappings_of(&self, entity: &str) -> Result<Vec<String>, BackendError> {
        crate::store::validate_entity(entity)?;
        Ok(self.mappings.names(entity))
    }
}

/// `field`: when the secret is a JSON object, serve one member. A string member is served as
/// that string; any other JSON value as its JSON text.
fn select_field(value: &SecretValue, field: &str) -> Result<SecretValue, BackendError> {
    let parsed: Result<serde_json::Map<String, serde_json::Value>, _> =
        serde_json::from_slice(value.as_bytes());
    let mut object = parsed.map_err(|_| BackendError::NotAnObject(field.to_string()))?;
    let member = object
        .remove(field)
        .ok_or_else(|| BackendError::MissingField(field.to_string()))?;
    let text = match member {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    };
    // The parsed map's other members drop here; serde_json offers no zeroizing map.
    Ok(SecretValue::String(Zeroizing::new(text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> SecretValue {
        SecretValue::String(Zeroizing::new(s.to_string()))
    }

    fn as_str(v: &SecretValue) -> &str {
        std::str::from_utf8(v.as_bytes()).unwrap()
    }

    #[test]
    fn field_selects_a_member_of_a_json_object() {
        let v = text(r#"{"user":"admin","port":5432,"tls":{"on":true}}"#);
        assert_eq!(as_str(&select_field(&v, "user").unwrap()), "admin");
        assert_eq!(as_str(&select_field(&v, "port").unwrap()), "5432");
        assert_eq!(as_str(&select_field(&v, "tls").unwrap()), r#"{"on":true}"#);
        assert!(matches!(
            select_field(&v, "nope"),
            Err(BackendError::MissingField(_))
        ));
        assert!(matches!(
            select_field(&text("[1]"), "a"),
            Err(BackendError::NotAnObject(_))
        ));
        assert!(matches!(
            select_field(&text("plain"), "a"),
            Err(BackendError::NotAnObject(_))
        ));
    }
}
