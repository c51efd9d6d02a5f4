//! The seal of one instance: the state machine of sealed mode.
//!
//! ```text
//!   uninitialized --initialize--> sealed --unlock (the key, or the last share)--> unsealed
//!                                  |  ^                                              |
//!                    a share below |  '-------------------------lock------------------'
//!                    the threshold '--> sealed, `progress` of `threshold` given
//! ```
//!
//! The keys themselves and the lock epoch live in [`Backend`]; this adds what sealed mode
//! needs on top: the key record's bucket ([`RecordStore`]), the shares given so far, and the
//! database key that opens the record again when another instance rotates (`rotation`).
//! What needs no I/O is decided in `transitions`; front doors parse a request into the types
//! here, call one method, and encode what it returns.
//!
//! Key material never has to cross the bus in clear (`super::transfer`): `initialize` seals
//! the key or shares to the requester's one-time xkey; each instance makes an ephemeral
//! unseal xkey at start, held only in memory and announced by `status`, and an `unlock` is
//! sealed to it. The clear forms are accepted with a warning each time, unless the store was
//! built with `sealed_keys_only`.
//!
//! A backend run with `ENCRYPTION_XKEY_SEED` ("keyed" mode) has no seal: it answers `status`
//! and refuses the other operations with [`SealError::NoSeal`].

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::bucket::RecordStore;
use super::key_record::{self, DatabaseKey, ShareSpec};
use super::rotation::Progress;
use super::transfer::{SealedInitialize, SealedUnlock};
use super::transitions::{self, Shares, Step};
use crate::backend::{Backend, BackendError};
use crate::error::ErrorKind;
use crate::keys::{Keyring, TransitKey};
use crate::store::StoreError;

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
    /// Run without it: the keys are in the record, wrapped by a database key that `unlock`
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

/// The seal of one instance: its backend, the key record's bucket, the shares given so far,
/// and the database key while unsealed.
pub struct Seal {
    pub(super) backend: Arc<Backend>,
    /// The record's bucket; `None` in keyed mode, which has no seal.
    pub(super) record: Option<RecordStore>,
    /// The transit key was configured (TRANSIT_XKEY_SEED): `lock` keeps it.
    pub(super) configured_transit: Option<TransitKey>,
    pub(super) instance_id: String,
    /// The shares given so far (split store), until enough unlock it or a lock drops them.
    pub(super) shares: Mutex<Shares>,
    /// Held while unlocked, to load keys that `rotate` adds (on any instance). Zeroized on
    /// drop, and dropped by `lock`.
    pub(super) database_key: Mutex<Option<DatabaseKey>>,
    /// The re-encryption after a rotation, as `status` reports it (`super::rotation`).
    pub(super) reencryption: Arc<Progress>,
    /// This process's unseal xkey, held only in memory: `unlock` key material is sealed to
    /// its public half, which `status` announces. Replaced at every lock and every unlock,
    /// so a recorded unlock cannot be replayed.
    pub(super) unseal: Mutex<Arc<nkeys::XKey>>,
    /// Refuse key material in clear (`--sealed-keys-only`).
    pub(super) sealed_keys_only: bool,
}

/// A mutex's guard, poisoned or not: a panic elsewhere must never stop a `lock` from sealing.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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
            database_key: Mutex::default(),
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

    pub(super) fn record_store(&self) -> Result<&RecordStore, SealError> {
        self.record.as_ref().ok_or(SealError::NoSeal)
    }

    /// Read the record, if the store is initialized (never, in keyed mode).
    pub async fn record(&self) -> Result<Option<key_record::KeyRecord>, StoreError> {
        match &self.record {
            Some(record) => record.get().await,
            None => Ok(None),
        }
    }

    pub(super) async fn existing(&self) -> Result<key_record::KeyRecord, BackendError> {
        Ok(self.record().await?.ok_or(SealError::NotInitialized)?)
    }

    /// Create the record: new data and transit keys, wrapped by a new database key (split
    /// into shares if `split`). The store stays sealed. The key or shares are handed out
    /// once, as `delivery` says; a requester key that is not an xkey is refused before
    /// anything is created.
    pub async fn initialize(
        &self,
        split: Option<ShareSpec>,
        delivery: KeyDelivery<'_>,
    ) -> Result<Initialized, BackendError> {
        let record_store = self.record_store()?;
        transitions::check_delivery(delivery, self.sealed_keys_only)?;
        if record_store.get().await?.is_some() {
            return Err(SealError::AlreadyInitialized.into());
        }
        let (mut record, database_key) = key_record::initialize(
            self.configured_transit.as_ref(),
            split,
            crate::clock::now_ms(),
        )?;
        // Made before the record is stored, which keeps a check value of each share.
        let shares = split.map(|spec| database_key.split(spec));
        if let Some(all) = &shares {
            record.share_checks = key_record::share_checks(all)?;
            key_record::bind(&mut record, &database_key)?;
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
                .then(|| database_key.to_base64().as_str().to_string()),
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
        // wraps under the database key.
        let transit = match &self.configured_transit {
            Some(configured) => configured.clone(),
            None => key_record::open(&record, &database_key, crate::clock::now_ms())?
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

    /// Unseal with the key, or keep a share until `threshold` shares are given. Shares that
    /// together do not unlock the store are all discarded.
    pub async fn unlock(self: &Arc<Self>, input: UnlockInput) -> Result<Unlocked, BackendError> {
        self.record_store()?;
        let unseal = Arc::clone(&lock(&self.unseal));
        let request =
            transitions::open_unlock(input, &self.instance_id, &unseal, self.sealed_keys_only)?;
        // Read before anything else: a lock from now on makes this unlock install nothing.
        let epoch = self.backend.seal_epoch();
        let record = self.existing().await?;
        if !self.backend.is_sealed() {
            return Err(SealError::AlreadyUnlocked.into());
        }
        let database_key = match lock(&self.shares).step(&request, &record)? {
            Step::Key(key) => key,
            Step::Progress {
                progress,
                threshold,
            } => {
                return Ok(Unlocked::Progress {
                    progress,
                    threshold,
                })
            }
        };
        let (keys, transit) = key_record::open(&record, &database_key, crate::clock::now_ms())?;
        let transit = transit
            .or_else(|| self.configured_transit.clone())
            .ok_or_else(|| {
                SealError::Internal(
                    "the record holds no transit key, and none is configured".into(),
                )
            })?;
        transitions::check_transit(
            &record,
            transit.public_key(),
            self.backend.transit_public().as_deref(),
        )?;
        self.commit_unlock(epoch, keys, transit, database_key)?;
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

    /// An unlock's last step: install the keys and hold the database key, unless the store
    /// was locked since `epoch` was read. A lock since then wins: nothing is installed or
    /// kept after it.
    pub(super) fn commit_unlock(
        &self,
        epoch: u64,
        keys: Keyring,
        transit: TransitKey,
        database_key: DatabaseKey,
    ) -> Result<(), SealError> {
        self.backend
            .install(epoch, keys, transit)
            .map_err(|_| SealError::LockedMeanwhile)?;
        let mut held = lock(&self.database_key);
        if self.backend.seal_epoch() != epoch {
            return Err(SealError::LockedMeanwhile);
        }
        *held = Some(database_key);
        Ok(())
    }

    fn renew_unseal_key(&self) {
        *lock(&self.unseal) = Arc::new(nkeys::XKey::new());
    }

    /// Auto-unlock at start with the database key this process was given: unseals, or says
    /// why not. A store that is not initialized yet stays sealed (`Ok(false)`); a key that
    /// does not open the record is an error.
    pub(crate) async fn unlock_at_start(
        self: &Arc<Self>,
        database_key: &Zeroizing<String>,
    ) -> Result<bool, BackendError> {
        let record = match self.record().await? {
            Some(record) => record,
            None => return Ok(false),
        };
        if record.split.is_some() {
            return Err(SealError::Invalid(
                "auto-unlock needs the database key, and this database was split into \
                 shares: unlock it with `piggybank unlock`"
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

    /// Seal this instance: drop the database key and the data keys, forget the shares given
    /// so far, and stop (and wait for) the background work that used the keys.
    pub async fn lock(&self) -> Result<(), BackendError> {
        self.record_store()?;
        let stopping = {
            let mut held = lock(&self.database_key);
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
}

/// A random id for this process's instance, as `status` reports it.
fn new_instance_id() -> String {
    let key = nkeys::KeyPair::new_server().public_key();
    key.get(..12).unwrap_or(&key).to_string()
}
