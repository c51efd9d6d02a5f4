//! Storage on NATS JetStream KV: the buckets ([`buckets`]: names, specs, creation) and their
//! ordered reads (`kv_stream`), secrets ([`SecretStore`]), the entity allow-list
//! ([`MappingTable`]), the paging rule ([`page`]) and the at-rest format ([`envelope`]).
//! Sealed mode's key record is [`crate::seal`]'s.
//!
//! Both stores serve reads from an in-memory mirror kept fresh by a KV watch ([`mirror`]),
//! so the request hot path makes no NATS round trip once the mirror is loaded. They serve
//! from the moment they are opened: while the mirror loads, a read of one key goes to the
//! bucket, and what needs every key waits for the load. Every write is conditional where it
//! must be (`create`/`update` on the revision) and is applied to the local mirror as soon as
//! the server acknowledges it, so the instance that made a change honours it at once.

pub mod buckets;
pub mod envelope;
pub(crate) mod kv_stream;
pub(crate) mod mappings;
pub(crate) mod mirror;
pub mod owner;
pub mod page;
pub(crate) mod rekey;
pub mod secrets;

pub(crate) use buckets::{
    existing_bucket, jetstream, open_or_create_bucket, Bucket, BucketSpec, Buckets,
};
pub use mappings::Grantee;
pub(crate) use mappings::MappingTable;
pub(crate) use mirror::MirrorHandle;
pub use secrets::SecretMeta;
pub(crate) use secrets::SecretStore;

use crate::error::ErrorKind;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid secret name {name:?}: {why}")]
    InvalidName { name: String, why: &'static str },
    #[error("invalid entity {0:?}: expected a public nkey (component M..., provider V...)")]
    InvalidEntity(String),
    #[error(
        "invalid application {0:?}: 1 to 128 ASCII letters, digits, '-' or '_' (a wadm \
         manifest name)"
    )]
    InvalidApplication(String),
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
        "KV bucket {bucket:?} was changed outside piggybank ({what}); refusing to serve from \
         it: restore its config (see docs/operations.md, \"Buckets\"), or check who changed it"
    )]
    Misconfigured { bucket: String, what: String },
    #[error(
        "KV bucket {bucket:?} belongs to {owner}; this instance is {this}: one store has one \
         key (check -n, -b and ENCRYPTION_XKEY_SEED; a rekey runs with the old key in \
         PREVIOUS_ENCRYPTION_XKEY_SEEDS)"
    )]
    OwnedByAnother {
        bucket: String,
        owner: String,
        this: String,
    },
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
            StoreError::InvalidName { .. }
            | StoreError::InvalidEntity(_)
            | StoreError::InvalidApplication(_) => ErrorKind::Invalid,
            StoreError::NotFound(_) => ErrorKind::NotFound,
            StoreError::VersionConflict { .. }
            | StoreError::Contention(_)
            | StoreError::AlreadyExists(_) => ErrorKind::Conflict,
            StoreError::Corrupt { .. } | StoreError::Misconfigured { .. } => ErrorKind::Internal,
            StoreError::OwnedByAnother { .. } => ErrorKind::Conflict,
            StoreError::NoBucket(_) | StoreError::Upstream(_) => ErrorKind::Unavailable,
        }
    }

    pub(crate) fn upstream(e: impl std::fmt::Display) -> Self {
        StoreError::Upstream(e.to_string())
    }
}

/// Longest secret name accepted (NATS KV keys are subjects; keep them well under limits).
pub(crate) const MAX_NAME_LEN: usize = 255;

/// Check that `name` is a usable NATS KV key: `[A-Za-z0-9-_/=.]`, no empty `.` token.
pub(crate) fn validate_name(name: &str) -> Result<(), StoreError> {
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

/// The namespace of the Piggy Bank API's own names: `_api/<application>/<name>`. The
/// wasmCloud protocol never serves a name in it to a component, and no grant may name one
/// ([`validate_grantable`]): what a service may write through the API is never what a
/// component reads, unless the operator shares a protocol secret with the API.
pub(crate) const API_NAMESPACE: &str = "_api/";

/// Whether `name` is one of the Piggy Bank API's own names (see [`API_NAMESPACE`]).
pub(crate) fn is_api_name(name: &str) -> bool {
    name.starts_with(API_NAMESPACE)
}

/// Check a name a grant (a mapping of an entity or an application) may give: a valid name,
/// outside the API's namespace.
pub(crate) fn validate_grantable(name: &str) -> Result<(), StoreError> {
    validate_name(name)?;
    if is_api_name(name) {
        return Err(StoreError::InvalidName {
            name: name.to_string(),
            why: "names under _api/ are the Piggy Bank API's own: share a protocol secret with \
                  the API instead (--share-with-api)",
        });
    }
    Ok(())
}

/// Longest application name accepted (a wadm manifest's name, a Piggy Bank API application).
pub(crate) const MAX_APPLICATION_LEN: usize = 128;

/// An application's name, checked: 1 to 128 ASCII letters, digits, `-` or `_`. A wadm
/// manifest's name (`context.application.name`) and a Piggy Bank API application are both
/// one. wadm allows any Unicode word character; NATS subjects and KV keys take ASCII only, so
/// a name outside ASCII cannot be granted (and is refused, never mangled). No `.`, `*`, `>`
/// or `/` can be in one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ApplicationName(Box<str>);

impl ApplicationName {
    pub fn parse(name: &str) -> Result<Self, StoreError> {
        let ok = !name.is_empty()
            && name.len() <= MAX_APPLICATION_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        match ok {
            true => Ok(Self(name.into())),
            false => Err(StoreError::InvalidApplication(
                name.chars().take(MAX_APPLICATION_LEN).collect(),
            )),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ApplicationName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A component's (`M...`) or provider's (`V...`) public key, checked as an nkey: the only
/// key a mapping is stored under or looked up by. A JWT subject, an admin request's entity
/// and a backup's mapping each become one through [`EntityKey::parse`], so no wildcard
/// (`>`, `*`), dotted text or key of another kind ever reaches a KV subject.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntityKey(Box<str>);

impl EntityKey {
    pub fn parse(entity: &str) -> Result<Self, StoreError> {
        // Only components (module keys, `M...`) and providers (service keys, `V...`) read
        // secrets; any other valid key (an account, a host) could never be served. A valid
        // nkey is base32 with a checksum: no `.`, `*` or `>` can be in one.
        let readable = matches!(entity.as_bytes().first(), Some(b'M' | b'V'));
        match nkeys::KeyPair::from_public_key(entity) {
            Ok(_) if readable => Ok(Self(entity.into())),
            _ => Err(StoreError::InvalidEntity(
                entity.chars().take(MAX_NAME_LEN).collect(),
            )),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for EntityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_component_and_provider_keys_are_entities() {
        use nkeys::KeyPair;
        assert!(EntityKey::parse(&KeyPair::new_module().public_key()).is_ok());
        assert!(EntityKey::parse(&KeyPair::new_service().public_key()).is_ok());
        for other in [
            KeyPair::new_account().public_key(),
            KeyPair::new_server().public_key(),
            KeyPair::new_user().public_key(),
            "MNOTAKEY".to_string(),
            String::new(),
            ">".to_string(),
            "*".to_string(),
            "M.>".to_string(),
            format!("{}.x", KeyPair::new_module().public_key()),
        ] {
            assert!(EntityKey::parse(&other).is_err(), "{other}");
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
    fn application_names_are_ascii_words() {
        for ok in ["shop", "my-app_2", "A", &"a".repeat(128)] {
            assert!(ApplicationName::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a.b", "a/b", "*", ">", "a b", "café", &"a".repeat(129)] {
            assert!(ApplicationName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn entities_must_be_public_nkeys() {
        let module = nkeys::KeyPair::new_module().public_key();
        assert!(EntityKey::parse(&module).is_ok());
        assert!(EntityKey::parse("not-a-key").is_err());
        let seed = nkeys::KeyPair::new_module().seed().unwrap();
        assert!(EntityKey::parse(&seed).is_err());
    }
}
