//! Storage on NATS JetStream KV: secrets ([`SecretStore`]), the entity allow-list
//! ([`MappingTable`]), the at-rest format ([`envelope`]) and sealed mode's key record
//! ([`crate::seal`]).
//!
//! Both stores serve reads from an in-memory mirror kept fresh by a KV watch ([`mirror`]),
//! so the request hot path makes no NATS round trip once the mirror is loaded. They serve
//! from the moment they are opened: while the mirror loads, a read of one key goes to the
//! bucket, and what needs every key waits for the load. Every write is conditional where it
//! must be (`create`/`update` on the revision) and is applied to the local mirror as soon as
//! the server acknowledges it, so the instance that made a change honours it at once.

pub mod envelope;
pub(crate) mod mappings;
pub(crate) mod mirror;
pub(crate) mod rekey;
pub mod secrets;

pub use mappings::MappingTable;
pub use mirror::MirrorHandle;
pub use secrets::{SecretMeta, SecretStore, StoredSecret};

use crate::error::ErrorKind;
use async_nats::jetstream::{self, kv};

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid secret name {name:?}: {why}")]
    InvalidName { name: String, why: &'static str },
    #[error("invalid entity {0:?}: expected a public nkey (component M..., provider V...)")]
    InvalidEntity(String),
    #[error("secret {0:?} not found")]
    NotFound(String),
    #[error("version conflict on {name:?}: expected revision {expected}, current is {current}")]
    VersionConflict {
        name: String,
        expected: u64,
        current: u64,
    },
    #[error("too many concurrent updates to {0:?}; try again")]
    Contention(String),
    #[error("{0:?} already exists")]
    AlreadyExists(String),
    #[error("stored data for {key:?} is corrupt: {why}")]
    Corrupt { key: String, why: String },
    #[error(
        "KV bucket {0:?} does not exist: check the bucket and backend names (only `run`, \
         `dev` and the provider create buckets)"
    )]
    NoBucket(String),
    #[error("NATS JetStream: {0}")]
    Upstream(String),
}

impl StoreError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::InvalidName { .. } | StoreError::InvalidEntity(_) => ErrorKind::Invalid,
            StoreError::NotFound(_) => ErrorKind::NotFound,
            StoreError::VersionConflict { .. }
            | StoreError::Contention(_)
            | StoreError::AlreadyExists(_) => ErrorKind::Conflict,
            StoreError::Corrupt { .. } => ErrorKind::Internal,
            StoreError::NoBucket(_) | StoreError::Upstream(_) => ErrorKind::Unavailable,
        }
    }

    pub(crate) fn upstream(e: impl std::fmt::Display) -> Self {
        StoreError::Upstream(e.to_string())
    }
}

/// Longest secret name accepted (NATS KV keys are subjects; keep them well under limits).
pub const MAX_NAME_LEN: usize = 255;

/// Check that `name` is a usable NATS KV key: `[A-Za-z0-9-_/=.]`, no empty `.` token.
pub fn validate_name(name: &str) -> Result<(), StoreError> {
    let bad = |why| {
        Err(StoreError::InvalidName {
            name: name.chars().take(MAX_NAME_LEN).collect(),
            why,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("it is longer than 255 bytes");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'/' | b'=' | b'.'))
    {
        return bad("only letters, digits and - _ / = . are allowed");
    }
    if name.starts_with('.') || name.ends_with('.') || name.contains("..") {
        return bad("it may not start or end with '.', nor contain '..'");
    }
    Ok(())
}

/// Check that `entity` is a public nkey, as a JWT subject is.
pub fn validate_entity(entity: &str) -> Result<(), StoreError> {
    // Only components (module keys, `M...`) and providers (service keys, `V...`) read
    // secrets; any other valid key (an account, a host) could never be served.
    let readable = matches!(entity.as_bytes().first(), Some(b'M' | b'V'));
    match nkeys::KeyPair::from_public_key(entity) {
        Ok(_) if readable => Ok(()),
        _ => Err(StoreError::InvalidEntity(
            entity.chars().take(MAX_NAME_LEN).collect(),
        )),
    }
}

/// How a bucket is created when it does not exist yet.
#[derive(Debug, Clone)]
pub struct BucketSpec {
    pub name: String,
    pub description: &'static str,
    pub history: i64,
    pub replicas: usize,
}

/// The one way piggybank makes a JetStream context: in the JetStream domain `domain` when one
/// is configured (`--js-domain`, a leaf node reaching a hub's JetStream), else the
/// connection's own account's JetStream. Every bucket piggybank opens goes through it, so
/// none can be opened outside the configured domain.
pub fn jetstream(client: &async_nats::Client, domain: Option<&str>) -> jetstream::Context {
    match domain.map(str::trim).filter(|d| !d.is_empty()) {
        Some(domain) => jetstream::with_domain(client.clone(), domain),
        None => jetstream::new(client.clone()),
    }
}

/// Which bucket to open, and whether opening may create it.
#[derive(Debug, Clone, Copy)]
pub enum Bucket<'a> {
    /// The servers' way (`run`, `dev`, the provider): create the bucket if it is missing.
    CreateIfMissing(&'a BucketSpec),
    /// Client commands' way: the bucket must exist.
    Existing(&'a str),
}

impl Bucket<'_> {
    pub async fn open(self, js: &jetstream::Context) -> Result<kv::Store, StoreError> {
        match self {
            Bucket::CreateIfMissing(spec) => open_or_create_bucket(js, spec).await,
            Bucket::Existing(name) => existing_bucket(js, name).await,
        }
    }
}

/// Whether getting a bucket failed because it does not exist (and not, say, a timeout).
fn is_missing(e: &jetstream::context::KeyValueError) -> bool {
    use jetstream::context::{GetStreamError, GetStreamErrorKind};
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<GetStreamError>())
        .is_some_and(|g| {
            matches!(g.kind(), GetStreamErrorKind::JetStream(j)
                if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
        })
}

/// Open the existing bucket `name`; never create it. Client commands open buckets this way,
/// so a typo in a bucket name is an error that names it, not a new empty bucket.
pub async fn existing_bucket(js: &jetstream::Context, name: &str) -> Result<kv::Store, StoreError> {
    match js.get_key_value(name).await {
        Ok(store) => Ok(store),
        Err(e) if is_missing(&e) => Err(StoreError::NoBucket(name.to_string())),
        Err(e) => Err(StoreError::Upstream(format!("bucket {name:?}: {e}"))),
    }
}

/// Open `spec.name`, creating it if it does not exist: for the servers (`run`, `dev`, the
/// provider) only. An existing bucket is used as it is (a differing replica count is
/// reported, not changed).
pub async fn open_or_create_bucket(
    js: &jetstream::Context,
    spec: &BucketSpec,
) -> Result<kv::Store, StoreError> {
    match existing_bucket(js, &spec.name).await {
        Ok(store) => {
            let replicas = store.stream.cached_info().config.num_replicas;
            if replicas != spec.replicas {
                tracing::warn!(
                    bucket = %spec.name, existing = replicas, requested = spec.replicas,
                    "bucket exists with a different replica count; leaving it as it is"
                );
            }
            Ok(store)
        }
        Err(StoreError::NoBucket(_)) => {
            let created = js
                .create_key_value(kv::Config {
                    bucket: spec.name.clone(),
                    description: spec.description.to_string(),
                    history: spec.history,
                    num_replicas: spec.replicas,
                    compression: true,
                    ..Default::default()
                })
                .await;
            match created {
                Ok(store) => Ok(store),
                // Another instance created it first.
                Err(_) => existing_bucket(js, &spec.name).await,
            }
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_component_and_provider_keys_are_entities() {
        use nkeys::KeyPair;
        assert!(validate_entity(&KeyPair::new_module().public_key()).is_ok());
        assert!(validate_entity(&KeyPair::new_service().public_key()).is_ok());
        for other in [
            KeyPair::new_account().public_key(),
            KeyPair::new_server().public_key(),
            KeyPair::new_user().public_key(),
            "MNOTAKEY".to_string(),
            String::new(),
        ] {
            assert!(validate_entity(&other).is_err(), "{other}");
        }
    }

    #[test]
    fn names_follow_nats_kv_key_rules() {
        for ok in ["db", "app/db.password", "A-b_c=d", "x.y.z"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".x",
            "x.",
            "a..b",
            "a b",
            "a*b",
            "a>b",
            "ünï",
            &"x".repeat(256),
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn entities_must_be_public_nkeys() {
        let module = nkeys::KeyPair::new_module().public_key();
        assert!(validate_entity(&module).is_ok());
        assert!(validate_entity("not-a-key").is_err());
        let seed = nkeys::KeyPair::new_module().seed().unwrap();
        assert!(validate_entity(&seed).is_err());
    }
}
