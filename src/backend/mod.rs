//! The core: keys, stores and authorization behind every front door.
//!
//! `Backend` knows nothing about subjects, headers or WIT. Front doors decode a request,
//! call one method here, and encode the result; errors are [`BackendError`], whose
//! [`ErrorKind`] each front door maps to its wire error in exactly one function.
//! [`crate::seal`] adds sealed mode's seal (initialize, unlock, lock, rotate) on top.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use zeroize::Zeroizing;

use crate::authz::{self, Authorizer, AuthzError, Policy};
use crate::error::ErrorKind;
use crate::keys::{Keyring, TransitKey};
use crate::seal::key_record::KeyRecordError;
use crate::seal::SealError;
use crate::store::envelope::{self, EnvelopeError, SecretValue};
pub use crate::store::mappings::MappingChange;
pub(crate) use crate::store::page::{page_limit, Page, PageRequest};
use crate::store::{
    is_api_name, validate_name, ApplicationName, EntityKey, Grantee, MappingTable, SecretMeta,
    SecretStore, StoreError,
};

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
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error(transparent)]
    KeyRecord(#[from] KeyRecordError),
}

impl BackendError {
    /// A short code for the audit trail: what failed, never with what a request sent.
    pub fn code(&self) -> &'static str {
        match self {
            BackendError::Authz(AuthzError::InvalidEntityJwt(_)) => "invalid_entity_jwt",
            BackendError::Authz(AuthzError::InvalidHostJwt(_)) => "invalid_host_jwt",
            BackendError::Authz(AuthzError::UntrustedIssuer(_)) => "untrusted_issuer",
            BackendError::Authz(AuthzError::NotMapped) => "not_mapped",
            BackendError::Authz(AuthzError::Policy(_)) => "invalid_policy",
            BackendError::Authz(AuthzError::BadTrustedIssuer(_)) => "bad_trusted_issuer",
            BackendError::Store(StoreError::InvalidName { .. }) => "invalid_name",
            BackendError::Store(StoreError::InvalidEntity(_)) => "invalid_entity",
            BackendError::Store(StoreError::InvalidApplication(_)) => "invalid_application",
            BackendError::Store(StoreError::NotFound(_)) => "not_found",
            BackendError::Store(StoreError::VersionConflict { .. }) => "version_conflict",
            BackendError::Store(StoreError::Contention(_)) => "contention",
            BackendError::Store(StoreError::AlreadyExists(_)) => "already_exists",
            BackendError::Store(StoreError::Corrupt { .. }) => "corrupt",
            BackendError::Store(StoreError::NoBucket(_)) => "no_bucket",
            BackendError::Store(StoreError::Misconfigured { .. }) => "misconfigured_bucket",
            BackendError::Store(StoreError::OwnedByAnother { .. }) => "owned_by_another",
            BackendError::Store(StoreError::Upstream(_)) => "upstream",
            BackendError::Envelope(EnvelopeError::WrongName) => "wrong_name",
            BackendError::Envelope(_) => "undecryptable",
            BackendError::InvalidVersion(_) => "invalid_version",
            BackendError::MissingField(_) => "missing_field",
            BackendError::NotAnObject(_) => "not_an_object",
            BackendError::Sealed => "sealed",
            BackendError::Seal(e) => e.code(),
            BackendError::KeyRecord(e) => e.code(),
        }
    }

    /// What kind of failure this is: the one thing front doors map.
    pub fn kind(&self) -> ErrorKind {
        match self {
            BackendError::Authz(e) => e.kind(),
            BackendError::Store(e) => e.kind(),
            BackendError::Envelope(_) => ErrorKind::Internal,
            BackendError::InvalidVersion(_)
            | BackendError::MissingField(_)
            | BackendError::NotAnObject(_) => ErrorKind::Invalid,
            BackendError::Sealed => ErrorKind::Sealed,
            BackendError::Seal(e) => e.kind(),
            BackendError::KeyRecord(e) => e.kind(),
        }
    }
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
    /// `context.application.name`: the wadm application the host says the entity is part
    /// of. A claim: it grants only what was granted to that application.
    pub application: Option<&'a str>,
}

/// Who asked, as far as it was verified: filled in by [`Unsealed::read`] as each JWT
/// verifies, so a refusal after verification still says who was refused (the audit trail).
#[derive(Debug, Default, Clone)]
pub struct Who {
    pub entity: Option<String>,
    pub host: Option<String>,
    /// The application the request named, if it is an application name.
    pub application: Option<String>,
    /// Which grant allowed the read: `entity` or `application`.
    pub granted_by: Option<&'static str>,
}

/// A secret as served: its version and its (decrypted) value.
pub struct ServedSecret {
    pub version: u64,
    pub value: SecretValue,
}

/// What an instance holds while unsealed, and the work that uses it.
#[derive(Default)]
struct HeldKeys {
    /// The data keys and the transit key; `None` while sealed.
    keys: Option<(Arc<Keyring>, Arc<TransitKey>)>,
    /// Bumped by every `lock`: keys prepared before a lock are never installed after it.
    epoch: u64,
    /// Work that uses the keys (re-encryption, a pending key activation); `lock` stops it.
    background: Vec<tokio::task::JoinHandle<()>>,
}

/// The core. Its keys may be absent: a sealed store holds none until it is unlocked, and
/// `lock` drops them again (dropping zeroizes them).
///
/// **The seal holds by construction.** Every operation that reads or changes the store is a
/// method of [`Unsealed`], which only [`Backend::unsealed`] makes, and only while the keys
/// are there. What may be done while sealed is exactly the methods of `Backend` itself:
/// `server_xkey` ([`Backend::transit_public`]), `status` ([`Backend::is_sealed`],
/// [`Backend::counts`], [`Backend::ping`]), and `unlock`/`lock` (the seal's own methods).
pub struct Backend {
    /// The transit public key, known even while sealed (hosts cache it for their lifetime).
    transit_public: RwLock<Option<String>>,
    seal: RwLock<HeldKeys>,
    secrets: SecretStore,
    mappings: MappingTable,
    authorizer: Authorizer,
    /// Write values in the sample's format (`--write-legacy-format`), for a rolling
    /// migration from the sample; keyed mode only.
    legacy_writes: bool,
    /// Sealed mode's `TRANSIT_XKEY_SEED`, if configured: while sealed it opens a host's
    /// request (never a value), so that the refusal names the secret asked for.
    configured_transit: Option<Arc<TransitKey>>,
}

/// Proof that the store was unsealed when it was made, with the keys it had then. Every
/// store operation is a method of this type, so none can run without the check.
pub struct Unsealed<'a> {
    backend: &'a Backend,
    keys: Arc<Keyring>,
    transit: Arc<TransitKey>,
}

/// The store was locked after the keys were prepared: they were not installed.
#[derive(Debug, thiserror::Error)]
#[error("the store was locked meanwhile; unlock again")]
pub struct LockedMeanwhile;

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
        let _ = backend.install(0, keys, transit);
        backend
    }

    /// A backend with no keys yet (sealed mode).
    pub fn sealed(secrets: SecretStore, mappings: MappingTable, authorizer: Authorizer) -> Self {
        Self {
            transit_public: RwLock::default(),
            seal: RwLock::default(),
            secrets,
            mappings,
            authorizer,
            legacy_writes: false,
            configured_transit: None,
        }
    }

    /// Sealed mode with a configured transit key: known while sealed (see
    /// [`Backend::configured_transit`]), and announced as `server_xkey`.
    pub fn with_configured_transit(mut self, transit: TransitKey) -> Self {
        self.set_transit_public(Some(transit.public_key().to_string()));
        self.configured_transit = Some(Arc::new(transit));
        self
    }

    /// The transit key configured for sealed mode, if any. It opens requests only: every
    /// value stays behind [`Backend::unsealed`].
    pub fn configured_transit(&self) -> Option<Arc<TransitKey>> {
        self.configured_transit.clone()
    }

    /// Write values in the sample's format, so sample instances sharing the buckets can
    /// read them (a rolling migration).
    pub fn with_legacy_writes(mut self, on: bool) -> Self {
        self.legacy_writes = on;
        self
    }

    /// The store's keys and operations, unless it is sealed.
    pub fn unsealed(&self) -> Result<Unsealed<'_>, BackendError> {
        let seal = read(&self.seal);
        let (keys, transit) = seal.keys.clone().ok_or(BackendError::Sealed)?;
        Ok(Unsealed {
            backend: self,
            keys,
            transit,
        })
    }

    // What may be done while sealed.

    /// The transit public key (`server_xkey`), if known: it is, even while sealed, once the
    /// store is initialized or a transit seed was configured.
    pub fn transit_public(&self) -> Option<String> {
        read(&self.transit_public).clone()
    }

    pub fn set_transit_public(&self, public: Option<String>) {
        *write(&self.transit_public) = public;
    }

    pub fn is_sealed(&self) -> bool {
        read(&self.seal).keys.is_none()
    }

    /// (secrets, entities with a mapping), from memory: for `status` (so far, while the
    /// mirrors load).
    pub fn counts(&self) -> (usize, usize) {
        (self.secrets.len(), self.mappings.len())
    }

    /// Whether both mirrors hold their whole bucket. Until then gets are answered from the
    /// buckets themselves, and listings wait.
    pub fn is_loaded(&self) -> bool {
        self.secrets.is_loaded() && self.mappings.is_loaded()
    }

    /// Wait until both mirrors hold their whole bucket (fails only if a load stops making
    /// progress).
    pub async fn loaded(&self) -> Result<(), BackendError> {
        self.secrets.loaded().await?;
        Ok(self.mappings.loaded().await?)
    }

    /// The two mirrors (secrets, mappings): their load and lag, for metrics and `status`.
    pub fn mirrors(&self) -> [&crate::store::MirrorHandle; 2] {
        [self.secrets.mirror(), self.mappings.mirror()]
    }

    /// JWT checks answered from the cache of verified tokens, and those that were not.
    pub fn jwt_cache_counts(&self) -> (u64, u64) {
        self.authorizer.cache_counts()
    }

    /// One round trip to each bucket (health checks).
    pub async fn ping(&self) -> Result<(), BackendError> {
        self.secrets.ping().await?;
        Ok(self.mappings.ping().await?)
    }

    // The seal itself: unlock installs keys, lock drops them.

    /// The current lock epoch: read it before preparing keys, and give it to
    /// [`Backend::install`] or [`Backend::replace_keys`].
    pub fn seal_epoch(&self) -> u64 {
        read(&self.seal).epoch
    }

    /// Unseal with `keys`, unless the store was locked since `epoch` was read.
    pub fn install(
        &self,
        epoch: u64,
        keys: Keyring,
        transit: TransitKey,
    ) -> Result<(), LockedMeanwhile> {
        let mut seal = write(&self.seal);
        if seal.epoch != epoch {
            return Err(LockedMeanwhile);
        }
        self.set_transit_public(Some(transit.public_key().to_string()));
        seal.keys = Some((Arc::new(keys), Arc::new(transit)));
        Ok(())
    }

    /// Replace the data keys (a rotation), only if the store is still unsealed in `epoch`:
    /// a reload racing a lock never unseals the store again. Returns whether it did.
    pub fn replace_keys(&self, epoch: u64, keys: Keyring) -> bool {
        let mut seal = write(&self.seal);
        if seal.epoch != epoch {
            return false;
        }
        match &mut seal.keys {
            Some((current, _)) => {
                *current = Arc::new(keys);
                true
            }
            None => false,
        }
    }

    /// Run `work` in the background while the store stays unsealed in `epoch`; `lock` stops
    /// it. Returns false (and runs nothing) if the store was locked since.
    pub fn spawn_while_unsealed(
        &self,
        epoch: u64,
        work: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> bool {
        let mut seal = write(&self.seal);
        if seal.epoch != epoch || seal.keys.is_none() {
            return false;
        }
        seal.background.retain(|task| !task.is_finished());
        seal.background.push(tokio::spawn(work));
        true
    }

    /// Seal now: bump the epoch and drop the keys. The returned [`Stopping`] stops the
    /// background work that used them; wait for it before saying the store is locked.
    pub fn seal_now(&self) -> Stopping {
        let mut seal = write(&self.seal);
        seal.epoch += 1;
        seal.keys = None;
        Stopping(std::mem::take(&mut seal.background))
    }

    /// Seal, and wait until the background work that used the keys has stopped. A request
    /// already past [`Backend::unsealed`] may still finish with the keys it took.
    pub async fn lock(&self) {
        self.seal_now().wait().await;
    }
}

/// Background work being stopped by a lock.
#[must_use = "wait for the background work to stop"]
pub struct Stopping(Vec<tokio::task::JoinHandle<()>>);

impl Stopping {
    pub async fn wait(self) {
        for task in self.0 {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Unsealed<'_> {
    /// The transit key (opening requests, sealing replies).
    pub fn transit(&self) -> &TransitKey {
        &self.transit
    }

    /// The transit key, shared.
    pub fn transit_key(&self) -> Arc<TransitKey> {
        Arc::clone(&self.transit)
    }

    /// The data keys (re-encryption).
    pub fn keys(&self) -> &Arc<Keyring> {
        &self.keys
    }

    /// The secrets store itself: for the seal's re-encryption, the tests and the bench.
    /// Front doors call the operations below.
    pub fn secrets(&self) -> &SecretStore {
        &self.backend.secrets
    }

    /// The mapping table itself: for the tests and the bench. Front doors call the
    /// operations below.
    pub fn mappings(&self) -> &MappingTable {
        &self.backend.mappings
    }

    /// One page of the secrets' metadata, in name order (see [`PageRequest`]). Waits for the
    /// mirror to hold the whole bucket.
    pub async fn list_page(
        &self,
        request: &PageRequest<'_>,
    ) -> Result<Page<SecretMeta>, BackendError> {
        Ok(self.secrets().list_page(request).await?)
    }

    /// One page of the names `entity` may read, in name order (see [`PageRequest`]).
    pub async fn mapping_page(
        &self,
        entity: &str,
        request: &PageRequest<'_>,
    ) -> Result<Page<String>, BackendError> {
        self.grant_page(&Grantee::entity(entity)?, request).await
    }

    /// One page of the names granted to `grantee` (an entity or an application).
    pub async fn grant_page(
        &self,
        grantee: &Grantee,
        request: &PageRequest<'_>,
    ) -> Result<Page<String>, BackendError> {
        Ok(self.mappings().names_page(grantee, request).await?)
    }

    /// Which grant gives `entity`, asked for by `application`, the secret `key` under
    /// `policy`: the entity's mapping first, then the application's (a second lookup in
    /// memory, made only when the first grants nothing). The API's own names are never
    /// served to a component, whatever a grant says. The one place a get is authorized.
    async fn grant_for(
        &self,
        entity: &EntityKey,
        application: Option<&ApplicationName>,
        policy: &Policy,
        key: &str,
    ) -> Result<&'static str, BackendError> {
        if is_api_name(key) {
            return Err(AuthzError::NotMapped.into());
        }
        let named = application.map(ApplicationName::as_str);
        let candidates = [
            Some((Grantee::Entity(entity.clone()), "entity")),
            application.map(|app| (Grantee::Application(app.clone()), "application")),
        ];
        for (grantee, kind) in candidates.into_iter().flatten() {
            if policy.admits(&grantee, named)
                && self.backend.mappings.permits(&grantee, key).await?
            {
                return Ok(kind);
            }
        }
        Err(AuthzError::NotMapped.into())
    }

    /// Authorize and serve a read. No NATS I/O unless an older version is requested, or the
    /// mirrors are still loading (then the mapping and the value are read from the buckets).
    pub async fn read(
        &self,
        req: &ReadRequest<'_>,
        who: &mut Who,
    ) -> Result<ServedSecret, BackendError> {
        let backend = self.backend;
        validate_name(req.key)?;
        let policy = authz::parse_policy(req.policy)?;
        // A name that is not an application name names no application: it grants nothing.
        let application = req.application.and_then(|a| ApplicationName::parse(a).ok());
        who.application = application.as_ref().map(ToString::to_string);
        who.host = Some(backend.authorizer.verify_host(req.host_jwt)?.subject);
        let entity = backend.authorizer.verify_entity(req.entity_jwt)?;
        who.entity = Some(entity.subject.to_string());
        let granted_by = self
            .grant_for(&entity.subject, application.as_ref(), &policy, req.key)
            .await?;
        who.granted_by = Some(granted_by);
        let version = match req.version.filter(|v| !v.is_empty()) {
            None => None,
            Some(v) => Some(
                v.parse::<u64>()
                    .map_err(|_| BackendError::InvalidVersion(v.to_string()))?,
            ),
        };
        let served = self.opened(req.key, version).await?;
        match req.field {
            Some(field) if !field.is_empty() => Ok(ServedSecret {
                version: served.version,
                value: select_field(&served.value, field)?,
            }),
            _ => Ok(served),
        }
    }

    /// The whole value of `name` at `version` (the latest when `None`), with no grant
    /// checked: for `read_secret`, an admin operation, which the serve loop has let through
    /// only signed when the backend runs with `--admin-keys`. Whoever may administer may
    /// read: an admin can grant itself any secret anyway.
    pub async fn read_as_admin(
        &self,
        name: &str,
        version: Option<u64>,
    ) -> Result<ServedSecret, BackendError> {
        validate_name(name)?;
        self.opened(name, version).await
    }

    /// `name` at `version` (the latest when `None`), opened: the one read of a value, after
    /// whatever authorized it. No NATS I/O for the latest version once the mirror is loaded.
    async fn opened(&self, name: &str, version: Option<u64>) -> Result<ServedSecret, BackendError> {
        let secrets = &self.backend.secrets;
        let stored = match version {
            None => secrets.current(name).await?,
            Some(revision) => secrets.version(name, revision).await?,
        }
        .ok_or_else(|| StoreError::NotFound(name.to_string()))?;
        let value = envelope::open(&stored.sealed, name, &self.keys)?;
        Ok(ServedSecret {
            version: stored.revision,
            value,
        })
    }

    /// The latest value of `name`, with no JWT checks: for a front door whose callers NATS
    /// permissions have already authorized (the Piggy Bank API).
    pub async fn value(&self, name: &str) -> Result<SecretValue, BackendError> {
        validate_name(name)?;
        let stored = self
            .secrets()
            .current(name)
            .await?
            .ok_or_else(|| StoreError::NotFound(name.to_string()))?;
        Ok(envelope::open(&stored.sealed, name, &self.keys)?)
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
            .secrets()
            .created_ms(name)
            .await?
            .unwrap_or_else(crate::clock::now_ms);
        let sealed = match self.backend.legacy_writes {
            true => envelope::seal_legacy(value, self.keys.current()),
            false => envelope::seal(value, name, self.keys.current(), created),
        }
        .map_err(EnvelopeError::from)?;
        Ok(self.secrets().put(name, sealed, expected).await?)
    }

    pub async fn delete(&self, name: &str) -> Result<(), BackendError> {
        Ok(self.secrets().delete(name).await?)
    }

    /// Add or remove `names` for `entity`; returns the entity's resulting names.
    pub async fn update_mapping(
        &self,
        entity: &str,
        change: MappingChange,
        names: &BTreeSet<String>,
    ) -> Result<Vec<String>, BackendError> {
        self.update_grant(&Grantee::entity(entity)?, change, names)
            .await
    }

    /// Add or remove `names` for `grantee` (an entity or an application); returns its
    /// resulting names.
    pub async fn update_grant(
        &self,
        grantee: &Grantee,
        change: MappingChange,
        names: &BTreeSet<String>,
    ) -> Result<Vec<String>, BackendError> {
        Ok(self.mappings().update(grantee, change, names).await?)
    }

    /// Metadata of one secret.
    pub async fn info(&self, name: &str) -> Result<SecretMeta, BackendError> {
        validate_name(name)?;
        Ok(self
            .secrets()
            .meta(name)
            .await?
            .ok_or_else(|| StoreError::NotFound(name.to_string()))?)
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
