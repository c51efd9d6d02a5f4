//! One store, one key: the secrets bucket records which store it belongs to, in its stream's
//! metadata (`piggybank.backend`, `piggybank.data_key`), and an instance that is not that
//! store refuses to start and names both.
//!
//! Why: values are sealed under the store's data key. Two instances with different keys on
//! one bucket would both serve, in one queue group, and each would write values the other
//! cannot open; a sealed instance of another backend would adopt the store's secrets.
//!
//! - **The owner** is the backend's name (`-n`) and its data key's id: the public xkey of
//!   `ENCRYPTION_XKEY_SEED` in keyed mode, `sealed` in sealed mode (the key lives in that
//!   backend's key record, which rotation changes in place).
//! - **Claimed when missing.** A bucket with no owner recorded (made by the sample, or by a
//!   version before this one) is adopted, and the owner is recorded then.
//! - **A rekey moves it.** An instance whose previous keys (`PREVIOUS_ENCRYPTION_XKEY_SEEDS`)
//!   hold the recorded key serves the store (a rekey in progress), and leaves the record as it
//!   is: values under the recorded key may remain. `piggybank rekey`, once every value is
//!   under the current key, records that key ([`rekeyed`]); from then on an instance with only
//!   the old key refuses, since it could not open what is now stored.
//! - **Read fresh, at start only.** The stream's info is asked for once; the hot path never
//!   sees this. Recording is an update of the stream's config (JetStream has no
//!   compare-and-set for it), so the claim is read back: of two instances with different keys
//!   claiming one new bucket in the same instant, the one whose claim was overwritten refuses.

use std::collections::HashMap;

use async_nats::jetstream;

use super::StoreError;

/// The stream metadata keys.
pub(crate) const BACKEND_KEY: &str = "piggybank.backend";
pub(crate) const DATA_KEY_KEY: &str = "piggybank.data_key";
/// The data key id of a sealed-mode store.
pub(crate) const SEALED: &str = "sealed";

/// Which store a bucket belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub backend: String,
    pub data_key: String,
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "backend {:?} with data key {}",
            self.backend, self.data_key
        )
    }
}

impl Owner {
    fn of(metadata: &HashMap<String, String>) -> Option<Self> {
        Some(Self {
            backend: metadata.get(BACKEND_KEY)?.clone(),
            data_key: metadata.get(DATA_KEY_KEY)?.clone(),
        })
    }
}

/// What an instance is, for the owner check: its owner, and the keys it may take a store
/// over from (its previous data keys).
#[derive(Debug, Clone)]
pub struct Claim {
    pub owner: Owner,
    pub previous: Vec<String>,
}

/// What the check decided.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Ours,
    Record,
    Refuse(Owner),
}

fn judge(recorded: Option<&Owner>, claim: &Claim) -> Verdict {
    match recorded {
        None => Verdict::Record,
        Some(owner) if *owner == claim.owner => Verdict::Ours,
        // A rekey in progress.
        Some(owner)
            if owner.backend == claim.owner.backend && claim.previous.contains(&owner.data_key) =>
        {
            Verdict::Ours
        }
        Some(owner) => Verdict::Refuse(owner.clone()),
    }
}

/// The bucket's stream config, read now (not a cached copy).
async fn stream_config(
    js: &jetstream::Context,
    bucket: &str,
) -> Result<jetstream::stream::Config, StoreError> {
    let upstream =
        |e: &dyn std::fmt::Display| StoreError::Upstream(format!("bucket {bucket:?}: {e}"));
    let mut stream = js
        .get_stream(format!("KV_{bucket}"))
        .await
        .map_err(|e| upstream(&e))?;
    Ok(stream
        .info()
        .await
        .map_err(|e| upstream(&e))?
        .config
        .clone())
}

async fn record(
    js: &jetstream::Context,
    bucket: &str,
    mut config: jetstream::stream::Config,
    owner: &Owner,
) -> Result<(), StoreError> {
    config
        .metadata
        .insert(BACKEND_KEY.into(), owner.backend.clone());
    config
        .metadata
        .insert(DATA_KEY_KEY.into(), owner.data_key.clone());
    js.update_stream(&config)
        .await
        .map(|_| ())
        .map_err(|e| StoreError::Upstream(format!("recording bucket {bucket:?}'s owner: {e}")))
}

/// After `piggybank rekey` re-sealed every value of `bucket` under `current`: record it as
/// the store's key, if the recorded one is among `previous` (a bucket with no owner recorded
/// is left so: the next instance records it). Refuses a bucket of another key.
pub(crate) async fn rekeyed(
    js: &jetstream::Context,
    bucket: &str,
    current: &str,
    previous: &[String],
) -> Result<(), StoreError> {
    let config = stream_config(js, bucket).await?;
    let Some(owner) = Owner::of(&config.metadata) else {
        return Ok(());
    };
    if owner.data_key == current {
        return Ok(());
    }
    if !previous.contains(&owner.data_key) {
        return Err(StoreError::OwnedByAnother {
            bucket: bucket.to_string(),
            owner: owner.to_string(),
            this: format!("a rekey to data key {current} from {}", previous.join(", ")),
        });
    }
    let moved = Owner {
        backend: owner.backend.clone(),
        data_key: current.to_string(),
    };
    record(js, bucket, config, &moved).await?;
    tracing::info!(bucket, from = %owner, to = %moved, "the store's data key is now the rekey's");
    Ok(())
}

/// Check that the secrets bucket `bucket` belongs to `claim`'s store, recording the owner if
/// none is recorded; refuses otherwise.
pub(crate) async fn claim(
    js: &jetstream::Context,
    bucket: &str,
    claim: &Claim,
) -> Result<(), StoreError> {
    let config = stream_config(js, bucket).await?;
    let found = Owner::of(&config.metadata);
    match judge(found.as_ref(), claim) {
        Verdict::Ours => return Ok(()),
        Verdict::Refuse(owner) => {
            return Err(StoreError::OwnedByAnother {
                bucket: bucket.to_string(),
                owner: owner.to_string(),
                this: claim.owner.to_string(),
            })
        }
        Verdict::Record => {}
    }
    record(js, bucket, config, &claim.owner).await?;
    tracing::info!(bucket, owner = %claim.owner, "recorded the bucket's owner");
    // Read back: another instance may have recorded itself in the same instant.
    match Owner::of(&stream_config(js, bucket).await?.metadata) {
        Some(owner) if owner == claim.owner => Ok(()),
        other => Err(StoreError::OwnedByAnother {
            bucket: bucket.to_string(),
            owner: other.map_or_else(|| "nobody".to_string(), |o| o.to_string()),
            this: claim.owner.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(backend: &str, key: &str) -> Owner {
        Owner {
            backend: backend.into(),
            data_key: key.into(),
        }
    }

    #[test]
    fn a_store_is_served_only_by_its_own_backend_and_key() {
        let claim = Claim {
            owner: owner("nats-kv", "XNEW"),
            previous: vec!["XOLD".into()],
        };
        assert_eq!(judge(None, &claim), Verdict::Record);
        assert_eq!(
            judge(Some(&owner("nats-kv", "XNEW")), &claim),
            Verdict::Ours
        );
        // A rekey in progress: the recorded key is one of this instance's previous keys.
        assert_eq!(
            judge(Some(&owner("nats-kv", "XOLD")), &claim),
            Verdict::Ours
        );
        for other in [
            owner("nats-kv", "XOTHER"),
            owner("other", "XNEW"),
            owner("other", "XOLD"),
            owner("nats-kv", SEALED),
        ] {
            assert_eq!(
                judge(Some(&other), &claim),
                Verdict::Refuse(other.clone()),
                "{other}"
            );
        }
    }
}
