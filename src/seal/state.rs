//! Sealed mode's seal, in the core: initialize, unlock, lock and rotate, the master key held
//! while unlocked, the record watch, and the re-encryption that follows a rotation.
//!
//! The keys themselves and the seal epoch live in [`Backend`]; this adds what sealed mode
//! needs on top: the record ([`RecordStore`]), the shares given so far, and the master key
//! that opens the record again when another instance rotates. Front doors parse a request
//! into the types here, call one method, and encode what it returns.
//!
//! Key material never has to cross the bus in clear (`crate::seal::transfer`): `initialize`
//! seals the key or shares to the requester's one-time xkey; each instance makes an
//! ephemeral unseal xkey at start, held only in memory and announced by `status`, and an
//! `unlock` is sealed to it. The clear forms are accepted with a warning each time, unless
//! the store was built with `sealed_keys_only`.
//!
//! A backend run with `ENCRYPTION_XKEY_SEED` ("keyed" mode) has no seal: it answers `status`
//! and refuses the other operations with [`SealError::NoSeal`].

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::bucket::RecordStore;
use super::key_record::{self, DatabaseKey, ShareSpec};
use super::transfer::{SealedInitialize, SealedUnlock};
use crate::admin_auth::AdminMode;
use crate::backend::{Backend, BackendError};
use crate::error::ErrorKind;
use crate::keys::TransitKey;
use crate::store::StoreError;

/// How long after `rotate` its key becomes current: every instance loads it as a readable
/// key first (they watch the record), so no instance meets a value it cannot open.
pub const ACTIVATION_DELAY_MS: u64 = 1_000;

/// Failures of the seal's own operations (the record's are [`StoreError`]s, the keys'
/// [`key_record::KeyRecordError`]s).
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("database already initialized")]
    AlreadyInitialized,
    #[error("database not initialized")]
    NotInitialized,
    #[error("database already unlocked")]
    AlreadyUnlocked,
    #[error("share already given")]
    RepeatedShare,
    #[error("this is not one of the shares this database was split into")]
    UnknownShare,
    #[error("the database was locked while this unlock ran; unlock again")]
    LockedMeanwhile,
    #[error("{0}")]
    Invalid(String),
    /// An unlock sealed for another instance: not this instance's to answer.
    #[error("meant for another instance")]
    OtherInstance,
    #[error(
        "this backend accepts the database key only sealed (--sealed-keys-only): seal it to \
         the instance's unseal_xkey (piggybank unlock does), and send a one-time xkey in \
         Piggybank-Requester-Xkey to initialize"
    )]
    ClearKeyRefused,
    #[error("this backend runs with ENCRYPTION_XKEY_SEED: it has no seal (to change its data key, see `piggybank rekey`)")]
    NoSeal,
    #[error("{0}")]
    Internal(String),
    #[error("the key record read is not this store's: refused")]
    ForeignRecord,
}

impl SealError {
    /// A short code for the audit trail.
    pub fn code(&self) -> &'static str {
        match self {
            SealError::AlreadyInitialized => "already_initialized",
            SealError::NotInitialized => "not_initialized",
            SealError::AlreadyUnlocked => "already_unlocked",
            SealError::RepeatedShare => "repeated_share",
            SealError::UnknownShare => "unknown_share",
            SealError::LockedMeanwhile => "locked_meanwhile",
            SealError::Invalid(_) => "invalid",
            SealError::OtherInstance => "other_instance",
            SealError::ClearKeyRefused => "clear_key_refused",
            SealError::NoSeal => "no_seal",
            SealError::Internal(_) => "internal",
            SealError::ForeignRecord => "foreign_record",
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            SealError::AlreadyInitialized | SealError::AlreadyUnlocked | SealError::NoSeal => {
                ErrorKind::Conflict
            }
            SealError::NotInitialized | SealError::LockedMeanwhile => ErrorKind::Sealed,
            SealError::UnknownShare | SealError::ForeignRecord => ErrorKind::Denied,
            SealError::Internal(_) => ErrorKind::Internal,
            SealError::RepeatedShare
            | SealError::Invalid(_)
            | SealError::OtherInstance
            | SealError::ClearKeyRefused => ErrorKind::Invalid,
        }
    }
}

/// How a backend holds its data key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Run with `ENCRYPTION_XKEY_SEED`: the key is configured; there is no seal.
    Keyed,
    /// Run without it: the keys are in the record, wrapped by a master key that `unlock`
    /// gives. The default when reading a `status` reply of a backend from before `mode`
    /// was reported: those answered `status` in sealed mode only.
    #[default]
    Sealed,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Keyed => "keyed",
            Mode::Sealed => "sealed",
        })
    }
}

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

/// Where `initialize` delivers the key or shares.
#[derive(Debug, Clone, Copy)]
pub enum KeyDelivery<'a> {
    /// Sealed to this one-time public xkey of the requester.
    SealedTo(&'a str),
    /// In clear, in the reply: the form Piggy Bank's own clients use (warned each time).
    Clear,
}

/// `initialize`'s key material in clear: the key, or the shares and their threshold.
#[derive(Serialize, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
pub struct KeyMaterial {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shares: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<u8>,
}

/// What `initialize` hands out, once.
pub enum Initialized {
    Sealed(SealedInitialize),
    Clear(KeyMaterial),
}

/// An unlock's key or share, as sent in clear (or as the plaintext of a sealed unlock).
/// Zeroized on drop.
#[derive(Deserialize, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
#[serde(deny_unknown_fields)]
pub struct ClearUnlock {
    pub database_key: Option<String>,
    pub share: Option<String>,
}

/// An unlock request: as a front door parsed it, or given to this process at start.
pub enum UnlockInput {
    /// Sealed to an instance's unseal xkey, naming that instance.
    Sealed(SealedUnlock),
    /// In clear, over the bus (warned each time; refused with `sealed_keys_only`).
    Clear(ClearUnlock),
    /// Given to this process itself (auto-unlock: a key file or the environment); it never
    /// crossed the bus. Front doors never make one.
    Local(ClearUnlock),
}

/// What an accepted unlock did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unlocked {
    /// The store is unsealed.
    Unsealed,
    /// A share was kept: `progress` of `threshold` given.
    Progress { progress: usize, threshold: u8 },
}

/// A rotation's new key.
#[derive(Debug, Clone, Serialize)]
pub struct Rotated {
    pub key_id: String,
    pub key_version: usize,
    pub active_from_ms: u64,
}

/// The seal of one instance: its backend, the record, and unlock progress.
pub struct Seal {
    backend: Arc<Backend>,
    /// The record's bucket; `None` in keyed mode, which has no seal.
    record: Option<RecordStore>,
    /// The transit key was configured (TRANSIT_XKEY_SEED): `lock` keeps it.
    configured_transit: Option<TransitKey>,
    instance_id: String,
    shares: Mutex<Vec<Zeroizing<Vec<u8>>>>,
    /// Held while unlocked, to load keys that `rotate` adds (on any instance). Zeroized on
    /// drop, and dropped by `lock`.
    master: Mutex<Option<DatabaseKey>>,
    reencryption: Arc<Progress>,
    /// This process's unseal xkey, held only in memory: `unlock` key material is sealed to
    /// its public half, which `status` announces. Replaced at every lock and every unlock,
    /// so a recorded unlock cannot be replayed.
    unseal: Mutex<Arc<nkeys::XKey>>,
    /// Refuse key material in clear (`--sealed-keys-only`).
    sealed_keys_only: bool,
}

/// Clears `running` when dropped: a re-encryption stopped by `lock` can run again later.
struct RunningFlag(Arc<Progress>);

impl Drop for RunningFlag {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::SeqCst);
    }
}

/// Background re-encryption after a rotation, as `status` reports it.
#[derive(Default)]
struct Progress {
    running: AtomicBool,
    done: AtomicUsize,
    total: AtomicUsize,
    resealed: AtomicUsize,
    failed: AtomicUsize,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Seal {
    /// Sealed mode: the seal kept in `record`. With `sealed_keys_only`, key material in
    /// clear is refused.
    pub fn new(
        backend: Arc<Backend>,
        record: RecordStore,
        configured_transit: Option<TransitKey>,
        sealed_keys_only: bool,
    ) -> Self {
        Self {
            sealed_keys_only,
            ..Self::with(backend, Some(record), configured_transit)
        }
    }

    /// Keyed mode: no seal; only `status` is served.
    pub fn keyed(backend: Arc<Backend>) -> Self {
        Self::with(backend, None, None)
    }

    fn with(
        backend: Arc<Backend>,
        record: Option<RecordStore>,
        configured_transit: Option<TransitKey>,
    ) -> Self {
        Self {
            backend,
            record,
            configured_transit,
            instance_id: new_instance_id(),
            shares: Mutex::default(),
            master: Mutex::default(),
            reencryption: Arc::default(),
            unseal: Mutex::new(Arc::new(nkeys::XKey::new())),
            sealed_keys_only: false,
        }
    }

    pub fn mode(&self) -> Mode {
        match self.record {
            Some(_) => Mode::Sealed,
            None => Mode::Keyed,
        }
    }

    /// The id `status` reports for this instance.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    fn record_store(&self) -> Result<&RecordStore, SealError> {
        self.record.as_ref().ok_or(SealError::NoSeal)
    }

    /// Read the record, if the store is initialized (never, in keyed mode).
    pub async fn record(&self) -> Result<Option<key_record::KeyRecord>, StoreError> {
        match &self.record {
            Some(record) => record.get().await,
            None => Ok(None),
        }
    }

    async fn existing(&self) -> Result<key_record::KeyRecord, BackendError> {
        Ok(self.record().await?.ok_or(SealError::NotInitialized)?)
    }

    /// Follow the record: when another instance rotates, load the new key (if unlocked).
    /// The first subscription fails the start; later ones are retried for ever, and each
    /// starts with the current record, so a change missed while resubscribing is loaded
    /// then. Keyed mode has no record: nothing to follow.
    pub async fn watch(self: &Arc<Self>) -> Result<(), StoreError> {
        use futures::StreamExt as _;
        let Some(record) = &self.record else {
            return Ok(());
        };
        let first = record.watch().await?;
        let (record, this) = (record.clone(), Arc::downgrade(self));
        tokio::spawn(async move {
            let mut updates = Some(first);
            loop {
                if let Some(mut stream) = updates.take() {
                    while let Some(update) = stream.next().await {
                        if let Err(e) = update {
                            // The watch's consumer recovers by itself; keep following it.
                            tracing::warn!(error = %e, "key record watch error");
                            continue;
                        }
                        let Some(seal) = this.upgrade() else {
                            return;
                        };
                        if let Err(e) = seal.reload().await {
                            tracing::warn!(error = %e, "cannot load the changed key record");
                        }
                    }
                }
                if this.strong_count() == 0 {
                    return;
                }
                tracing::warn!("the key record watch ended; resubscribing");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                match record.watch().await {
                    Ok(stream) => updates = Some(stream),
                    Err(e) => tracing::warn!(error = %e, "cannot watch the key record yet"),
                }
            }
        });
        Ok(())
    }

    /// Create the record: new data and transit keys, wrapped by a new master key (split
    /// into shares if `split`). The store stays sealed. The key or shares are handed out
    /// once, as `delivery` says; a requester key that is not an xkey is refused before
    /// anything is created.
    pub async fn initialize(
        &self,
        split: Option<ShareSpec>,
        delivery: KeyDelivery<'_>,
    ) -> Result<Initialized, BackendError> {
        let record_store = self.record_store()?;
        match delivery {
            KeyDelivery::SealedTo(xkey) if nkeys::XKey::from_public_key(xkey.trim()).is_err() => {
                return Err(SealError::Invalid(format!(
                    "{} is not a public xkey (X...)",
                    crate::config::headers::REQUESTER_XKEY
                ))
                .into())
            }
            KeyDelivery::Clear if self.sealed_keys_only => {
                return Err(SealError::ClearKeyRefused.into())
            }
            _ => {}
        }
        if record_store.get().await?.is_some() {
            return Err(SealError::AlreadyInitialized.into());
        }
        let (mut record, master) = key_record::initialize(
            self.configured_transit.as_ref(),
            split,
            crate::store::secrets::now_ms(),
        )?;
        // Made before the record is stored, which keeps a check value of each share.
        let shares = split.map(|spec| master.split(spec));
        if let Some(all) = &shares {
            record.share_checks = key_record::share_checks(all)?;
            key_record::bind(&mut record, &master)?;
        }
        record_store.create(&record).await.map_err(|e| match e {
            StoreError::AlreadyExists(_) => SealError::AlreadyInitialized.into(),
            other => BackendError::from(other),
        })?;
        self.backend
            .set_transit_public(Some(record.transit_public.clone()));
        tracing::info!(split = ?split, "database initialized; it stays sealed until unlocked");
        let material = KeyMaterial {
            database_key: shares
                .is_none()
                .then(|| master.to_base64().as_str().to_string()),
            shares: shares
                .as_ref()
                .map(|all| all.iter().map(|s| s.as_str().to_string()).collect()),
            threshold: split.map(|spec| spec.threshold),
        };
        let KeyDelivery::SealedTo(requester) = delivery else {
            tracing::warn!(
                "initialize answered the database key in clear (no {} header): anyone who can \
                 read the reply subject has it; piggybank init seals it, and \
                 --sealed-keys-only refuses this",
                crate::config::headers::REQUESTER_XKEY
            );
            return Ok(Initialized::Clear(material));
        };
        let internal = |e: String| BackendError::from(SealError::Internal(e));
        // Sealed from the transit key, which proves to a requester that pinned it that this
        // key is the backend's (anyone can seal something to the requester's public key).
        // The record was just made: its transit key is the configured one, or the one it
        // wraps under the master key.
        let transit = match &self.configured_transit {
            Some(configured) => configured.clone(),
            None => key_record::open(&record, &master, crate::store::secrets::now_ms())?
                .1
                .ok_or_else(|| internal("the new record holds no transit key".into()))?,
        };
        // The requester's key was checked above; the record exists now, so a failure here
        // is reported rather than the key shown in clear.
        let threshold = split.map(|spec| spec.threshold);
        SealedInitialize::vouched(&material, threshold, &transit, requester)
            .map(Initialized::Sealed)
            .map_err(|e| internal(format!("cannot seal the key to the requester: {e}")))
    }

    /// The key or share of `input`: a sealed unlock opened with this instance's unseal key
    /// ([`SealError::OtherInstance`] when it names another instance), or the clear form,
    /// with a warning (refused with `sealed_keys_only`).
    fn open_unlock(&self, input: UnlockInput) -> Result<ClearUnlock, SealError> {
        match input {
            UnlockInput::Sealed(sealed) => {
                if sealed.instance_id != self.instance_id {
                    return Err(SealError::OtherInstance);
                }
                let unseal = Arc::clone(&lock(&self.unseal));
                let plaintext = sealed.key_material().open(&unseal).map_err(|_| {
                    SealError::Invalid(
                        "cannot open the key material: it is not sealed to this instance's \
                         unseal_xkey (from a status of an earlier run?)"
                            .into(),
                    )
                })?;
                serde_json::from_slice(&plaintext).map_err(|_| {
                    SealError::Invalid(
                        r#"the sealed key material is not {"database_key": "..."} or {"share": "..."}"#
                            .into(),
                    )
                })
            }
            UnlockInput::Local(local) => Ok(local),
            UnlockInput::Clear(_) if self.sealed_keys_only => Err(SealError::ClearKeyRefused),
            UnlockInput::Clear(clear) => {
                tracing::warn!(
                    "unlock received a key or share in clear: it crossed the bus readable by \
                     any subscriber; piggybank unlock seals it, and --sealed-keys-only \
                     refuses this"
                );
                Ok(clear)
            }
        }
    }

    /// Unseal with the key, or keep a share until `threshold` shares are given. Shares that
    /// together do not unlock the store are all discarded.
    pub async fn unlock(self: &Arc<Self>, input: UnlockInput) -> Result<Unlocked, BackendError> {
        self.record_store()?;
        let request = self.open_unlock(input)?;
        // Read before anything else: a lock from now on makes this unlock install nothing.
        let epoch = self.backend.seal_epoch();
        let record = self.existing().await?;
        if !self.backend.is_sealed() {
            return Err(SealError::AlreadyUnlocked.into());
        }
        let invalid = |m: &str| BackendError::from(SealError::Invalid(m.into()));
        let master = match (&request.database_key, &request.share, record.split) {
            (Some(key), None, None) => DatabaseKey::from_base64(key)?,
            (None, Some(share), Some(spec)) => {
                let share = key_record::decode_share(share)?;
                // A share this store was not split into never takes a slot: a forged one
                // cannot spoil the operators' unlock.
                if !key_record::share_is_known(&record, &share) {
                    return Err(SealError::UnknownShare.into());
                }
                let mut pending = lock(&self.shares);
                if pending.iter().any(|s| s[0] == share[0]) {
                    return Err(SealError::RepeatedShare.into());
                }
                pending.push(share);
                if pending.len() < usize::from(spec.threshold) {
                    return Ok(Unlocked::Progress {
                        progress: pending.len(),
                        threshold: spec.threshold,
                    });
                }
                let combined = DatabaseKey::combine(&pending, spec.threshold);
                pending.clear();
                combined?
            }
            (Some(_), None, Some(_)) => {
                return Err(invalid(
                    "this database was split into shares: unlock with {\"share\": \"...\"}",
                ))
            }
            (None, Some(_), None) => {
                return Err(invalid(
                    "this database has one key: unlock with {\"database_key\": \"...\"}",
                ))
            }
            _ => return Err(invalid("give exactly one of database_key and share")),
        };
        let (keys, transit) = key_record::open(&record, &master, crate::store::secrets::now_ms())?;
        let transit = transit
            .or_else(|| self.configured_transit.clone())
            .ok_or_else(|| {
                SealError::Internal(
                    "the record holds no transit key, and none is configured".into(),
                )
            })?;
        // The record is read over NATS, where a forged reply could carry a record of someone
        // else's making (with a key they also send): its transit key must be the one this
        // instance already knows (from the record at start, or the configured one), and the
        // one the record names.
        let pinned = self.backend.transit_public();
        let opened = transit.public_key().to_string();
        if opened != record.transit_public || pinned.as_ref().is_some_and(|p| *p != opened) {
            tracing::warn!("unlock refused: the key record's transit key is not this store's");
            return Err(SealError::ForeignRecord.into());
        }
        // A lock since `epoch` was read wins: nothing is installed or kept after it.
        self.backend
            .install(epoch, keys, transit)
            .map_err(|_| SealError::LockedMeanwhile)?;
        {
            let mut held = lock(&self.master);
            if self.backend.seal_epoch() != epoch {
                return Err(SealError::LockedMeanwhile.into());
            }
            *held = Some(master);
        }
        // A recorded unlock sealed to the old unseal key can never be replayed.
        self.renew_unseal_key();
        tracing::info!("database unlocked");
        // Resume a rotation: a pending activation, or values not yet re-sealed. The store is
        // unsealed whatever this says: a failure here is retried by the record watch.
        if let Err(e) = self.reload().await {
            tracing::warn!(error = %e, "unlocked, but the key record could not be reloaded yet");
        }
        Ok(Unlocked::Unsealed)
    }

    fn renew_unseal_key(&self) {
        *lock(&self.unseal) = Arc::new(nkeys::XKey::new());
    }

    /// Auto-unlock at start with the database key this process was given: unseals, or says
    /// why not. A store that is not initialized yet stays sealed (`Ok(false)`); a key that
    /// does not open the record is an error.
    pub async fn unlock_at_start(
        self: &Arc<Self>,
        database_key: &Zeroizing<String>,
    ) -> Result<bool, BackendError> {
        let record = match self.record().await? {
            Some(record) => record,
            None => return Ok(false),
        };
        if record.split.is_some() {
            return Err(SealError::Invalid(
                "auto-unlock needs the database key, and this database was split into                  shares: unlock it with `piggybank unlock`"
                    .into(),
            )
            .into());
        }
        let input = UnlockInput::Local(ClearUnlock {
            database_key: Some(database_key.to_string()),
            share: None,
        });
        match self.unlock(input).await {
            Ok(_) | Err(BackendError::Seal(SealError::AlreadyUnlocked)) => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Seal this instance: drop the master key and the data keys, forget the shares given
    /// so far, and stop (and wait for) the background work that used the keys.
    pub async fn lock(&self) -> Result<(), BackendError> {
        self.record_store()?;
        let stopping = {
            let mut held = lock(&self.master);
            let stopping = self.backend.seal_now();
            held.take();
            stopping
        };
        lock(&self.shares).clear();
        // An unlock recorded before this lock, sealed to the old unseal key, opens nothing.
        self.renew_unseal_key();
        stopping.wait().await;
        tracing::info!("database locked");
        Ok(())
    }

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

    /// Add a new data key, current after [`ACTIVATION_DELAY_MS`]; then every value is
    /// re-sealed with it in the background.
    pub async fn rotate(self: &Arc<Self>) -> Result<Rotated, BackendError> {
        let record_store = self.record_store()?;
        let mut entry = record_store
            .entry()
            .await?
            .ok_or(SealError::NotInitialized)?;
        let now = crate::store::secrets::now_ms();
        let active_from = now + ACTIVATION_DELAY_MS;
        let id = {
            let master = lock(&self.master);
            let master = master.as_ref().ok_or(BackendError::Sealed)?;
            key_record::rotate(&mut entry.record, master, now, active_from)?
        };
        record_store.update(&entry.record, entry.revision).await?;
        self.reload().await?;
        tracing::info!(key_id = %id, "data key rotated");
        Ok(Rotated {
            key_id: id,
            key_version: entry.record.data_keys.len(),
            active_from_ms: active_from,
        })
    }

    /// Re-open the record with the master key held (no-op while sealed): load new keys,
    /// schedule the next activation, and re-seal what the current key did not seal.
    fn reload(self: &Arc<Self>) -> futures::future::BoxFuture<'static, Result<(), BackendError>> {
        let this = Arc::clone(self);
        Box::pin(async move {
            let record = this.existing().await?;
            let now = crate::store::secrets::now_ms();
            let epoch = {
                let master = lock(&this.master);
                let Some(master) = master.as_ref() else {
                    return Ok(());
                };
                // Read under the master's lock, which `lock` holds while it bumps the epoch.
                let epoch = this.backend.seal_epoch();
                let (keys, _) = key_record::open(&record, master, now)?;
                if !this.backend.replace_keys(epoch, keys) {
                    return Ok(());
                }
                epoch
            };
            if let Some(at) = key_record::pending_activation(&record, now) {
                let later = Arc::clone(&this);
                this.backend.spawn_while_unsealed(epoch, async move {
                    tokio::time::sleep(std::time::Duration::from_millis(at - now)).await;
                    if let Err(e) = later.reload().await {
                        tracing::warn!(error = %e, "cannot activate the rotated key");
                    }
                });
            }
            this.reencrypt_if_needed(epoch);
            Ok(())
        })
    }

    /// Start re-sealing, in the background, every value not under the current key (at most
    /// one run at a time; each run is resumable, so a crash only costs a new run).
    fn reencrypt_if_needed(self: &Arc<Self>, epoch: u64) {
        let Ok(store) = self.backend.unsealed() else {
            return;
        };
        let current = store.keys().current().id().to_string();
        // Which values are stale is known once the mirror holds them all: check again then.
        let Some(stale) = store.secrets().any_sealed_by_another_key(&current) else {
            let this = Arc::clone(self);
            let later = async move {
                let loaded = match this.backend.unsealed() {
                    Ok(store) => store.secrets().loaded().await,
                    Err(_) => return,
                };
                match loaded {
                    Ok(()) => this.reencrypt_if_needed(epoch),
                    Err(e) => tracing::warn!(error = %e, "cannot check for values to re-encrypt"),
                }
            };
            self.backend.spawn_while_unsealed(epoch, later);
            return;
        };
        if !stale || self.reencryption.running.swap(true, Ordering::SeqCst) {
            return;
        }
        let this = Arc::clone(self);
        let work = async move {
            // Cleared however the run ends: finished, or stopped by `lock`.
            let running = RunningFlag(Arc::clone(&this.reencryption));
            let Ok(store) = this.backend.unsealed() else {
                return;
            };
            let progress = Arc::clone(&this.reencryption);
            progress.done.store(0, Ordering::SeqCst);
            let report =
                crate::store::rekey::rekey(store.secrets(), store.keys(), |done, total| {
                    progress.done.store(done, Ordering::SeqCst);
                    progress.total.store(total, Ordering::SeqCst);
                })
                .await;
            let report = match report {
                Ok(report) => report,
                Err(e) => {
                    tracing::warn!(error = %e, "re-encryption could not start");
                    return;
                }
            };
            progress.resealed.store(report.resealed, Ordering::SeqCst);
            progress.failed.store(report.failed.len(), Ordering::SeqCst);
            tracing::info!(
                total = report.total,
                resealed = report.resealed,
                failed = report.failed.len(),
                "re-encryption finished"
            );
            drop(running);
            // A rotation during the run: go again for the newer key.
            let newer = this
                .backend
                .unsealed()
                .is_ok_and(|s| s.keys().current().id() != current);
            if newer {
                this.reencrypt_if_needed(epoch);
            }
        };
        if !self.backend.spawn_while_unsealed(epoch, work) {
            self.reencryption.running.store(false, Ordering::SeqCst);
        }
    }
}

/// A random id for this process's instance, as `status` reports it.
fn new_instance_id() -> String {
    let key = nkeys::KeyPair::new_server().public_key();
    key.get(..12).unwrap_or(&key).to_string()
}
