//! Re-seal every secret with the keyring's current data key, bound to its name, online.
//!
//! Each secret whose latest version was sealed by another key (or by the sample, which
//! recorded none), or is not bound to its name (written before names were bound), is opened
//! and written back, bound, as a new version with compare-and-set on the revision it read.
//! A concurrent write wins: the rewrite is retried on what was written (which, from an
//! instance with the same current key, needs nothing). Running it again is the resume: values already bound and under the current key are skipped.
//!
//! Older versions in the history keep the key they were sealed with; once the old key is
//! dropped they can no longer be read.

use std::time::Duration;

use futures::StreamExt as _;

use super::envelope::{self, EnvelopeError};
use super::{SecretStore, StoreError};
use crate::clock::now_ms;
use crate::keys::Keyring;

/// Secrets re-sealed at once.
const IN_FLIGHT: usize = 32;
/// Compare-and-set attempts per secret before it is reported as failed.
const ATTEMPTS: usize = 50;

/// What a run did. Names (never values) of the secrets it could not re-seal, with why.
#[derive(Debug, Default)]
pub(crate) struct RekeyReport {
    pub total: usize,
    pub resealed: usize,
    pub already_current: usize,
    /// Deleted while the run went on.
    pub gone: usize,
    pub failed: Vec<(String, String)>,
}

enum Outcome {
    Resealed,
    Current,
    Gone,
    Failed(String),
}

/// Re-seal every secret under `keys.current()`. `progress(done, total)` is called as it goes.
/// Waits for the store's mirror to hold every secret; fails only if that load stalls.
pub async fn rekey(
    store: &SecretStore,
    keys: &Keyring,
    mut progress: impl FnMut(usize, usize),
) -> Result<RekeyReport, StoreError> {
    let names: Vec<String> = store.list("").await?.into_iter().map(|m| m.name).collect();
    let mut report = RekeyReport {
        total: names.len(),
        ..RekeyReport::default()
    };
    let mut outcomes = futures::stream::iter(names)
        .map(|name| async move {
            let outcome = reseal(store, keys, &name).await;
            (name, outcome)
        })
        .buffer_unordered(IN_FLIGHT);
    let mut done = 0;
    while let Some((name, outcome)) = outcomes.next().await {
        match outcome {
            Outcome::Resealed => report.resealed += 1,
            Outcome::Current => report.already_current += 1,
            Outcome::Gone => report.gone += 1,
            Outcome::Failed(why) => report.failed.push((name, why)),
        }
        done += 1;
        progress(done, report.total);
    }
    report.failed.sort();
    Ok(report)
}

async fn reseal(store: &SecretStore, keys: &Keyring, name: &str) -> Outcome {
    let current = keys.current().id();
    for _ in 0..ATTEMPTS {
        let latest = match store.current(name).await {
            Ok(Some(latest)) => latest,
            Ok(None) => return Outcome::Gone,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        let header = match envelope::parse(&latest.sealed) {
            Ok((header, _)) => header,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        if !header.needs_reseal(current) {
            return Outcome::Current;
        }
        let value = match envelope::open(&latest.sealed, name, keys) {
            Ok(value) => value,
            Err(EnvelopeError::UnknownKey(kid)) => {
                return Outcome::Failed(format!(
                    "sealed by data key {kid}, which is not in the keyring \
                     (add its seed to PREVIOUS_ENCRYPTION_XKEY_SEEDS)"
                ))
            }
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        let created = header.created_ms.unwrap_or_else(now_ms);
        let sealed = match envelope::seal(&value, name, keys.current(), created) {
            Ok(sealed) => sealed,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        match store.put(name, sealed, Some(latest.revision)).await {
            Ok(_) => return Outcome::Resealed,
            // Written meanwhile: look again once the mirror has the new version.
            Err(StoreError::VersionConflict { .. }) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => return Outcome::Failed(e.to_string()),
        }
    }
    Outcome::Failed(format!("still changing after {ATTEMPTS} attempts"))
}
