//! The buckets: what each of a backend's buckets is called, how it is created (description,
//! history, replicas), and the one way piggybank opens one. `run`, `dev` and the provider
//! create the buckets they serve from; `restore` creates the ones it fills, alike; every
//! client command opens existing buckets only, so a typo is an error, never a new bucket.
//!
//! The names' formats are wire names, kept with the others in [`crate::config`].

use std::time::Duration;

use async_nats::jetstream::{self, kv};

use super::StoreError;
use crate::config;

/// How `run` describes the buckets it creates, so that `nats kv ls` tells them apart.
const SECRETS_DESCRIPTION: &str = "piggybank secrets (sealed values)";
const MAPPINGS_DESCRIPTION: &str = "piggybank entity-to-secret mappings";
const VAULT_DESCRIPTION: &str = "piggybank sealed key record (wrapped keys only)";
const NONCES_DESCRIPTION: &str = "piggybank admin request nonces (replay protection)";

/// The buckets of one backend, by name: what a server opens, a backup reads and a restore
/// writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Buckets {
    /// `-b`: one key per secret, one revision per version.
    pub secrets: String,
    /// `SECRETS_<name>_state`: one key per entity, the names it may read.
    pub mappings: String,
    /// `SECRETS_<name>_vault`: sealed mode's key record only.
    pub vault: String,
}

impl Buckets {
    /// The buckets of the backend `backend_name` (`-n`) whose secrets are in
    /// `secrets_bucket` (`-b`).
    pub fn of(backend_name: &str, secrets_bucket: &str) -> Self {
        Self {
            secrets: secrets_bucket.to_string(),
            mappings: config::mappings_bucket(backend_name),
            vault: config::vault_bucket(backend_name),
        }
    }

    /// The secrets bucket, keeping `history` versions of each secret.
    pub(crate) fn secrets_spec(&self, history: i64, replicas: usize) -> BucketSpec {
        BucketSpec {
            name: self.secrets.clone(),
            description: SECRETS_DESCRIPTION,
            history,
            replicas,
            max_age: Duration::ZERO,
            compression: true,
        }
    }

    /// The mappings bucket: only the latest names of an entity matter.
    pub(crate) fn mappings_spec(&self, replicas: usize) -> BucketSpec {
        BucketSpec {
            name: self.mappings.clone(),
            description: MAPPINGS_DESCRIPTION,
            history: 1,
            replicas,
            max_age: Duration::ZERO,
            compression: true,
        }
    }

    /// Sealed mode's key record bucket: one key, its latest version.
    pub(crate) fn vault_spec(&self, replicas: usize) -> BucketSpec {
        BucketSpec {
            name: self.vault.clone(),
            description: VAULT_DESCRIPTION,
            history: 1,
            replicas,
            max_age: Duration::ZERO,
            compression: true,
        }
    }
}

/// The nonce bucket of signed administration (`SECRETS_<name>_nonces`): one key per accepted
/// nonce, aged out after `ttl`, longer than a signed request can be valid.
pub(crate) fn nonces_spec(backend_name: &str, ttl: Duration, replicas: usize) -> BucketSpec {
    BucketSpec {
        name: config::nonces_bucket(backend_name),
        description: NONCES_DESCRIPTION,
        history: 1,
        replicas,
        max_age: ttl,
        compression: false,
    }
}

/// How a bucket is created when it does not exist yet.
#[derive(Debug, Clone)]
pub struct BucketSpec {
    pub name: String,
    pub description: &'static str,
    pub history: i64,
    pub replicas: usize,
    /// How long an entry is kept; zero: for ever.
    pub max_age: Duration,
    pub compression: bool,
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
pub(crate) async fn existing_bucket(
    js: &jetstream::Context,
    name: &str,
) -> Result<kv::Store, StoreError> {
    match js.get_key_value(name).await {
        Ok(store) => Ok(store),
        Err(e) if is_missing(&e) => Err(StoreError::NoBucket(name.to_string())),
        Err(e) => Err(StoreError::Upstream(format!("bucket {name:?}: {e}"))),
    }
}

/// What in an existing bucket's stream config is not what piggybank (or the sample, through
/// the same client library) configures, and would let someone change what it reads without
/// writing through it: entries brought in from elsewhere (`sources`, `mirror`), other
/// subjects, copies republished elsewhere, messages deleted out of the history (a deleted
/// revocation brings the grant before it back), entries aged out early (a nonce aged out
/// early is a replay), or old entries evicted silently. History, replicas, compression and
/// the description are the operator's to choose, and are not checked.
pub(crate) fn misconfigured(spec: &BucketSpec, config: &jetstream::stream::Config) -> Vec<String> {
    let mut found = Vec::new();
    let subjects = [format!("$KV.{}.>", spec.name)];
    if config.subjects != subjects {
        found.push(format!(
            "subjects {:?} (expected {:?})",
            config.subjects, subjects
        ));
    }
    if config.mirror.is_some() {
        found.push("a mirror".to_string());
    }
    if config.sources.as_ref().is_some_and(|s| !s.is_empty()) {
        found.push("sources".to_string());
    }
    if config.republish.is_some() {
        found.push("a republish".to_string());
    }
    if !config.deny_delete {
        found.push("deny_delete is off".to_string());
    }
    let ages_too_early = if spec.max_age.is_zero() {
        !config.max_age.is_zero()
    } else {
        config.max_age.is_zero() || config.max_age < spec.max_age
    };
    if ages_too_early {
        found.push(format!(
            "max_age {:?} (expected {:?})",
            config.max_age, spec.max_age
        ));
    }
    if config.discard != jetstream::stream::DiscardPolicy::New {
        found.push("discard policy is not `new`".to_string());
    }
    found
}

/// Open `spec.name`, creating it if it does not exist: for the servers (`run`, `dev`, the
/// provider) only. An existing bucket is checked ([`misconfigured`]): one whose stream config
/// was changed is refused, naming what changed. Otherwise it is used as it is (a differing
/// replica count is reported, not changed).
pub(crate) async fn open_or_create_bucket(
    js: &jetstream::Context,
    spec: &BucketSpec,
) -> Result<kv::Store, StoreError> {
    match existing_bucket(js, &spec.name).await {
        Ok(store) => {
            let found = misconfigured(spec, &store.stream.cached_info().config);
            if !found.is_empty() {
                return Err(StoreError::Misconfigured {
                    bucket: spec.name.clone(),
                    what: found.join(", "),
                });
            }
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
                    max_age: spec.max_age,
                    compression: spec.compression,
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
    fn a_backends_buckets_are_named_as_the_sample_names_them() {
        let buckets = Buckets::of("nats-kv", "WASMCLOUD_SECRETS");
        assert_eq!(buckets.secrets, "WASMCLOUD_SECRETS");
        assert_eq!(buckets.mappings, "SECRETS_nats-kv_state");
        assert_eq!(buckets.vault, "SECRETS_nats-kv_vault");
        let secrets = buckets.secrets_spec(64, 3);
        assert_eq!((secrets.history, secrets.replicas), (64, 3));
        assert_eq!(buckets.mappings_spec(3).history, 1);
        let nonces = nonces_spec("nats-kv", Duration::from_secs(90), 3);
        assert_eq!(nonces.name, "SECRETS_nats-kv_nonces");
        assert_eq!(
            (nonces.max_age, nonces.history),
            (Duration::from_secs(90), 1)
        );
        assert_eq!(buckets.vault_spec(1).name, "SECRETS_nats-kv_vault");
    }
}
