//! `status`: what one instance reports about its seal and its store, in either mode. The CLI
//! reads [`StatusReport`] too, so fields that older backends did not send are `Option`s.

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use super::state::{lock, Mode, Seal, SealError};
use crate::admin_auth::AdminMode;
use crate::backend::BackendError;

/// One instance's `status`. The CLI reads it too: fields that older backends did not send
/// are `Option`s, absent when missing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusReport {
    #[serde(default)]
    pub mode: Mode,
    /// The backend's crate version.
    pub version: Option<String>,
    /// Random, per process: tells the instances that answered apart.
    pub instance_id: String,
    /// Keyed mode: always (its key is configured).
    pub initialized: bool,
    pub sealed: bool,
    /// Shares given so far towards `threshold` (sealed mode, split store).
    pub progress: usize,
    pub threshold: Option<u8>,
    pub shares: Option<u8>,
    /// How many data keys the record holds (sealed mode; rotations + 1). `None` in keyed mode.
    pub key_version: Option<usize>,
    /// The current data key's id.
    pub key_id: Option<String>,
    pub server_xkey: Option<String>,
    /// Secrets in the store (this instance's mirror).
    pub secrets: Option<usize>,
    /// Entities with a mapping.
    pub mapped_entities: Option<usize>,
    /// Sealed mode: the background re-encryption after a rotation.
    pub reencryption: Option<Reencryption>,
    /// `signed` when run with `--admin-keys`, else `unauthenticated`; absent from older
    /// backends (which were unauthenticated). Filled in by the front door, which checks.
    #[serde(default)]
    pub admin: Option<AdminMode>,
    /// This instance's ephemeral unseal xkey: `unlock` seals the key or share to it.
    /// Absent from older backends, which take keys only in clear.
    #[serde(default)]
    pub unseal_xkey: Option<String>,
    /// When the request carried a one-time xkey (`Piggybank-Requester-Xkey`) and this
    /// instance holds the transit key: `instance_id` and `unseal_xkey`, vouched for by the
    /// transit key ([`crate::seal::transfer::InstanceClaim`]), so `piggybank unlock` can tell
    /// this instance from an impostor. `None` otherwise (a sealed instance run without
    /// `TRANSIT_XKEY_SEED` holds no transit key to prove anything with).
    #[serde(default)]
    pub unseal_proof: Option<String>,
    /// Audit records this instance could not write (buffer full, or not acknowledged).
    /// Filled in by the front door; absent from older backends.
    #[serde(default)]
    pub audit_dropped: Option<u64>,
    /// Requests this instance's front doors shed since start, by reason (`refused_reply`,
    /// `too_large`, `lane_full`, `slow_consumer`; see `serve::ShedCounts`). Filled in by the
    /// front door; absent from older backends.
    #[serde(default)]
    pub shed: Option<std::collections::BTreeMap<String, u64>>,
    /// The audit trail of this instance: its signing key, counts, retention and whether its
    /// streams are the ones it configured. Filled in by the front door; absent when auditing
    /// is off, and from older backends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<crate::audit::AuditStatus>,
    /// Whether this instance's in-memory mirrors hold both buckets whole. `false` while
    /// their initial load runs: gets are then answered from the buckets themselves, listings
    /// wait, and `secrets` and `mapped_entities` count what has arrived so far. Absent from
    /// older backends (which answered only once loaded).
    #[serde(default)]
    pub loaded: Option<bool>,
    /// Changes the two mirrors have yet to apply, as their consumers last reported.
    #[serde(default)]
    pub mirror_pending: Option<u64>,
}

/// Progress of the re-encryption after a rotation.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Reencryption {
    pub running: bool,
    pub done: usize,
    pub total: usize,
    pub resealed: usize,
    pub failed: usize,
}

impl Seal {
    /// This instance's status: the fields both modes share, then the seal's. `admin` is
    /// left for the front door to fill in. With `requester` (a one-time public xkey), the
    /// report carries `unseal_proof` when this instance holds the transit key.
    pub async fn report(&self, requester: Option<&str>) -> Result<StatusReport, BackendError> {
        let (secrets, mapped_entities) = self.backend.counts();
        let unseal_xkey = lock(&self.unseal).public_key();
        let unseal_proof = match requester {
            None => None,
            Some(requester) => self.vouch(&unseal_xkey, requester)?,
        };
        let mut report = StatusReport {
            mode: self.mode(),
            version: Some(env!("CARGO_PKG_VERSION").to_string()),
            instance_id: self.instance_id.clone(),
            initialized: true,
            sealed: self.backend.is_sealed(),
            progress: 0,
            threshold: None,
            shares: None,
            key_version: None,
            key_id: self
                .backend
                .unsealed()
                .ok()
                .map(|store| store.keys().current().id().to_string()),
            server_xkey: self.backend.transit_public(),
            secrets: Some(secrets),
            mapped_entities: Some(mapped_entities),
            reencryption: None,
            admin: None,
            unseal_xkey: Some(unseal_xkey),
            unseal_proof,
            audit_dropped: None,
            shed: None,
            audit: None,
            loaded: Some(self.backend.is_loaded()),
            mirror_pending: Some(self.backend.mirrors().iter().map(|m| m.pending()).sum()),
        };
        if self.mode() == Mode::Keyed {
            return Ok(report);
        }
        let record = self.record().await?;
        let split = record.as_ref().and_then(|r| r.split);
        report.initialized = record.is_some();
        report.progress = lock(&self.shares).len();
        report.threshold = split.map(|s| s.threshold);
        report.shares = split.map(|s| s.shares);
        report.key_version = Some(record.as_ref().map_or(0, |r| r.data_keys.len()));
        report.key_id = record
            .as_ref()
            .and_then(|r| r.current_key_id())
            .map(str::to_string);
        let progress = &self.reencryption;
        report.reencryption = Some(Reencryption {
            running: progress.running.load(Ordering::SeqCst),
            done: progress.done.load(Ordering::SeqCst),
            total: progress.total.load(Ordering::SeqCst),
            resealed: progress.resealed.load(Ordering::SeqCst),
            failed: progress.failed.load(Ordering::SeqCst),
        });
        Ok(report)
    }

    /// The proof that `unseal_xkey` is this instance's, for `requester`: sealed from the
    /// configured transit key, or (unlocked) the one in use. `None` when this instance holds
    /// neither (sealed, run without `TRANSIT_XKEY_SEED`).
    fn vouch(&self, unseal_xkey: &str, requester: &str) -> Result<Option<String>, BackendError> {
        let transit = match &self.configured_transit {
            Some(configured) => Some(configured.clone()),
            None => self
                .backend
                .unsealed()
                .ok()
                .map(|store| store.transit().clone()),
        };
        let Some(transit) = transit else {
            return Ok(None);
        };
        let claim = crate::seal::transfer::InstanceClaim {
            instance_id: self.instance_id.clone(),
            unseal_xkey: unseal_xkey.to_string(),
        };
        claim.vouch(&transit, requester).map(Some).map_err(|e| {
            SealError::Invalid(format!("{}: {e}", crate::config::headers::REQUESTER_XKEY)).into()
        })
    }
}
