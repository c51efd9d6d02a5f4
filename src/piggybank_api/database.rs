//! `{prefix}.database.<op>`: initialize, unlock, lock, status and rotate of a sealed store,
//! and `status` of every store.
//!
//! Every instance of a backend subscribes to `unlock`, `lock` and `status` without a queue
//! group, so an unlock share or a lock reaches all of them (each replies; a requester reads
//! the first reply, or gathers them all for `status`). `initialize` and `rotate` are answered
//! by one instance (queue group); the record is created with KV `create`, so two
//! initializations cannot both win.
//!
//! A backend run with `ENCRYPTION_XKEY_SEED` ("keyed" mode) has no seal: it answers `status`
//! like a sealed-mode one (so one command reports on any backend) and refuses the other
//! operations with 409, rather than leaving the requester to time out.
//!
//! Replies carry `Status` and a JSON body; errors are `{"error": "..."}`. A failed request
//! changes nothing, except that shares which do not unlock the store are all discarded.
//!
//! Subjects carry the backend's name, `{prefix}.database.{name}.{op}` ([`subject`]), so two
//! sealed backends on one account never answer each other. The older `{prefix}.database.{op}`
//! is still served, as a deprecated alias (logged at warn, at most once a minute).
//!
//! Key material never has to cross the bus in clear (`crate::key_transfer`): `initialize`
//! seals the key or shares to the requester's one-time xkey (header
//! `Piggybank-Requester-Xkey`); each instance makes an ephemeral unseal xkey at start, held
//! only in memory and announced by `status` (`unseal_xkey`), and answers an `unlock` sealed
//! to it and naming it (an `unlock` naming another instance gets no answer from this one).
//! The clear forms (no header on `initialize`, `{"database_key": ...}` on `unlock`), which
//! Piggy Bank's own clients use, are still accepted with a warning each time, and refused
//! with `--sealed-keys-only`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::admin_auth::AdminMode;
use crate::backend::Backend;
use crate::key_transfer::{Sealed, SealedInitialize, SealedUnlock};
use crate::keys::vault::{self, MasterKey, ShareSpec, VaultError, VaultRecord};
use crate::serve::Reply;
use crate::store::StoreError;

/// The key of the record in the vault bucket.
pub const RECORD_KEY: &str = "keyring";
/// Operations under `{prefix}.database`.
const OPS: &[&str] = &["initialize", "unlock", "lock", "status", "rotate"];
/// Operations one instance answers (queue group); the others reach every instance.
const ONCE: &[&str] = &["initialize", "rotate"];

/// The operation of a database subject: its last token.
pub fn operation(subject: &str) -> &str {
    subject.rsplit('.').next().unwrap_or_default()
}

/// The subject of operation `op` of backend `name`: `{prefix}.database.{name}.{op}`.
pub fn subject(prefix: &str, name: &str, op: &str) -> String {
    format!("{prefix}.database.{name}.{op}")
}

/// A database subject of backend `name` under `prefix`: its operation, and whether it came
/// on the deprecated alias `{prefix}.database.{op}`. `None`: another backend's, or not a
/// database subject at all.
pub fn parse_subject<'a>(prefix: &str, name: &str, subject: &'a str) -> Option<(&'a str, bool)> {
    let rest = subject.strip_prefix(prefix)?.strip_prefix(".database.")?;
    match rest.split_once('.') {
        None => Some((rest, true)),
        Some((backend, op)) if backend == name && !op.contains('.') => Some((op, false)),
        Some(_) => None,
    }
}

/// Whether `op` is answered by one instance (`initialize`, `rotate`: the queue-group
/// subscription) rather than by every instance (the broadcast one).
pub fn answered_once(op: &str) -> bool {
    ONCE.contains(&op)
}
/// How long after `rotate` its key becomes current: every instance loads it as a readable
/// key first (they watch the record), so no instance meets a value it cannot open.
pub const ACTIVATION_DELAY_MS: u64 = 1_000;

#[derive(Debug, thiserror::Error)]
enum OpError {
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
    #[error("database is sealed: unlock it first")]
    Sealed,
    #[error("the database was locked while this unlock ran; unlock again")]
    LockedMeanwhile,
    #[error("the key record changed meanwhile (another rotation?); try again")]
    Conflict,
    #[error("{0}")]
    BadRequest(String),
    /// An unlock sealed for another instance: not answered here.
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
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("{0}")]
    Store(String),
}

impl OpError {
    fn status(&self) -> u16 {
        match self {
            OpError::AlreadyInitialized
            | OpError::AlreadyUnlocked
            | OpError::Conflict
            | OpError::NoSeal => 409,
            OpError::NotInitialized | OpError::Sealed | OpError::LockedMeanwhile => 423,
            OpError::Vault(VaultError::WrongKey | VaultError::WrongShares)
            | OpError::UnknownShare => 403,
            OpError::Vault(VaultError::Corrupt(_)) | OpError::Store(_) => 500,
            _ => 400,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct InitializeRequest {
    shares: Option<u8>,
    threshold: Option<u8>,
}

/// `initialize`'s key material: the key, or the shares and their threshold. Borrows the
/// zeroized key and shares; serialized into a zeroized buffer (or the clear reply).
#[derive(Serialize)]
struct KeyMaterial<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    database_key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shares: Option<Vec<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    threshold: Option<u8>,
}

/// Zeroized on drop: it holds the key or a share.
#[derive(Deserialize, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
#[serde(deny_unknown_fields)]
struct UnlockRequest {
    database_key: Option<String>,
    share: Option<String>,
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

/// One instance's `status` reply. The CLI reads it too: fields that older backends did not
/// send are `Option`s, absent when missing.
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
    /// backends (which were unauthenticated).
    #[serde(default)]
    pub admin: Option<AdminMode>,
    /// This instance's ephemeral unseal xkey: `unlock` seals the key or share to it.
    /// Absent from older backends, which take keys only in clear.
    #[serde(default)]
    pub unseal_xkey: Option<String>,
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

/// The seal of one instance: its backend, the record's bucket, and unlock progress.
pub struct Database {
    backend: Arc<Backend>,
    /// The record's bucket; `None` in keyed mode, which has no seal.
    kv: Option<kv::Store>,
    /// The transit key was configured (TRANSIT_XKEY_SEED): `lock` keeps it.
    configured_transit: Option<crate::keys::TransitKey>,
    instance_id: String,
    shares: Mutex<Vec<Zeroizing<Vec<u8>>>>,
    /// Held while unlocked, to load keys that `rotate` adds (on any instance). Zeroized on
    /// drop, and dropped by `lock`.
    master: Mutex<Option<MasterKey>>,
    reencryption: Arc<Progress>,
    /// Whether admin operations must be signed (reported by `status`).
    admin: AdminMode,
    /// This process's unseal xkey, made at start and held only in memory: `unlock` key
    /// material is sealed to its public half, which `status` announces.
    unseal: nkeys::XKey,
    /// Refuse key material sent in clear (`--sealed-keys-only`).
    sealed_keys_only: bool,
    /// When the deprecated subjects were last warned about (at most once a minute).
    alias_warned: Mutex<Option<std::time::Instant>>,
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

impl Database {
    /// Sealed mode: the seal kept in `kv`.
    pub fn new(
        backend: Arc<Backend>,
        kv: kv::Store,
        configured_transit: Option<crate::keys::TransitKey>,
    ) -> Self {
        Self::with(backend, Some(kv), configured_transit)
    }

    /// Report `admin` as `mode` in `status` (the server sets it from `--admin-keys`).
    pub fn with_admin_mode(mut self, mode: AdminMode) -> Self {
        self.admin = mode;
        self
    }

    /// Refuse a key or share sent in clear (`--sealed-keys-only`).
    pub fn with_sealed_keys_only(mut self, sealed_keys_only: bool) -> Self {
        self.sealed_keys_only = sealed_keys_only;
        self
    }

    /// Log that a deprecated subject (`{prefix}.database.{op}`, without the backend name)
    /// was used: at warn, at most once a minute.
    pub fn note_deprecated_subject(&self, op: &str) {
        let mut warned = self.alias_warned.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        if warned.is_some_and(|at| now.duration_since(at) < std::time::Duration::from_secs(60)) {
            return;
        }
        *warned = Some(now);
        tracing::warn!(
            op,
            "a database operation came on the deprecated subject without the backend name; \
             use <prefix>.database.<name>.<op>"
        );
    }

    /// Keyed mode: no seal; only `status` is served.
    pub fn keyed(backend: Arc<Backend>) -> Self {
        Self::with(backend, None, None)
    }

    fn with(
        backend: Arc<Backend>,
        kv: Option<kv::Store>,
        configured_transit: Option<crate::keys::TransitKey>,
    ) -> Self {
        Self {
            backend,
            kv,
            configured_transit,
            instance_id: new_instance_id(),
            shares: Mutex::default(),
            master: Mutex::default(),
            reencryption: Arc::default(),
            admin: AdminMode::default(),
            unseal: nkeys::XKey::new(),
            sealed_keys_only: false,
            alias_warned: Mutex::default(),
        }
    }

    pub fn mode(&self) -> Mode {
        match self.kv {
            Some(_) => Mode::Sealed,
            None => Mode::Keyed,
        }
    }

    /// The id `status` reports for this instance.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    fn kv(&self) -> Result<&kv::Store, OpError> {
        self.kv.as_ref().ok_or(OpError::NoSeal)
    }

    /// Follow the record: when another instance rotates, load the new key (if unlocked).
    /// Keyed mode has no record: nothing to follow.
    pub async fn watch(self: &Arc<Self>) -> Result<(), StoreError> {
        use futures::StreamExt as _;
        let Some(kv) = &self.kv else {
            return Ok(());
        };
        // The first subscription fails the start; later ones are retried for ever.
        let first = kv
            .watch_with_history(RECORD_KEY)
            .await
            .map_err(StoreError::upstream)?;
        let (kv, this) = (kv.clone(), Arc::downgrade(self));
        tokio::spawn(async move {
            let mut updates = Some(first);
            loop {
                if let Some(mut stream) = updates.take() {
                    // Each subscription starts with the current record: a change missed
                    // while resubscribing is loaded then.
                    while let Some(update) = stream.next().await {
                        if let Err(e) = update {
                            // The watch's consumer recovers by itself; keep following it.
                            tracing::warn!(error = %e, "key record watch error");
                            continue;
                        }
                        let Some(database) = this.upgrade() else {
                            return;
                        };
                        if let Err(e) = database.reload().await {
                            tracing::warn!(error = %e, "cannot load the changed key record");
                        }
                    }
                }
                if this.strong_count() == 0 {
                    return;
                }
                tracing::warn!("the key record watch ended; resubscribing");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                match kv.watch_with_history(RECORD_KEY).await {
                    Ok(stream) => updates = Some(stream),
                    Err(e) => tracing::warn!(error = %e, "cannot watch the key record yet"),
                }
            }
        });
        Ok(())
    }

    /// Re-open the record with the master key held (no-op while sealed): load new keys,
    /// schedule the next activation, and re-seal what the current key did not seal.
    fn reload(self: &Arc<Self>) -> futures::future::BoxFuture<'static, Result<(), OpError>> {
        let this = Arc::clone(self);
        Box::pin(async move {
            let record = this.existing().await?;
            let now = crate::store::secrets::now_ms();
            let epoch = {
                let master = this.master.lock().unwrap_or_else(|p| p.into_inner());
                let Some(master) = master.as_ref() else {
                    return Ok(());
                };
                // Read under the master's lock, which `lock` holds while it bumps the epoch.
                let epoch = this.backend.seal_epoch();
                let (keys, _) = vault::open(&record, master, now)?;
                if !this.backend.replace_keys(epoch, keys) {
                    return Ok(());
                }
                epoch
            };
            if let Some(at) = vault::pending_activation(&record, now) {
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
        let stale = store
            .secrets()
            .list("")
            .iter()
            .any(|m| m.key_id.as_deref() != Some(current.as_str()));
        if !stale || self.reencryption.running.swap(true, Ordering::SeqCst) {
            return;
        }
        let this = Arc::clone(self);
        let work = async move {
            // Cleared however the run ends: finished, or stopped by `lock`.
            let _running = RunningFlag(Arc::clone(&this.reencryption));
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
            progress.resealed.store(report.resealed, Ordering::SeqCst);
            progress.failed.store(report.failed.len(), Ordering::SeqCst);
            tracing::info!(
                total = report.total,
                resealed = report.resealed,
                failed = report.failed.len(),
                "re-encryption finished"
            );
            drop(_running);
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

    /// Read the record, if the store is initialized (never, in keyed mode).
    pub async fn record(&self) -> Result<Option<VaultRecord>, StoreError> {
        let Some(kv) = &self.kv else {
            return Ok(None);
        };
        let Some(bytes) = kv.get(RECORD_KEY).await.map_err(StoreError::upstream)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                key: RECORD_KEY.into(),
                why: e.to_string(),
            })
    }

    /// Answer `op` (the last subject token). Keyed mode answers `status` only.
    /// `None`: not this instance's to answer (an `unlock` sealed for another instance).
    pub async fn handle(
        self: &Arc<Self>,
        op: &str,
        headers: Option<&async_nats::HeaderMap>,
        payload: &[u8],
    ) -> Option<Reply> {
        let requester = headers
            .and_then(|h| h.get(crate::config::headers::REQUESTER_XKEY))
            .map(|v| v.as_str());
        let result = match op {
            "status" => self.status().await,
            _ if self.mode() == Mode::Keyed && OPS.contains(&op) => Err(OpError::NoSeal),
            "initialize" => self.initialize(payload, requester).await,
            "unlock" => self.unlock(payload).await,
            "lock" => Ok(self.lock().await),
            "rotate" => self.rotate().await,
            other => Err(OpError::BadRequest(format!(
                "unknown operation {other:?}: use initialize, unlock, lock, status or rotate"
            ))),
        };
        Some(match result {
            Ok(body) => super::reply(200, body.to_string().into_bytes()),
            Err(OpError::OtherInstance) => return None,
            Err(e) => super::reply(
                e.status(),
                serde_json::json!({ "error": e.to_string() })
                    .to_string()
                    .into_bytes(),
            ),
        })
    }

    async fn existing(&self) -> Result<VaultRecord, OpError> {
        self.record()
            .await
            .map_err(|e| OpError::Store(e.to_string()))?
            .ok_or(OpError::NotInitialized)
    }

    async fn initialize(
        &self,
        payload: &[u8],
        requester: Option<&str>,
    ) -> Result<serde_json::Value, OpError> {
        // Where the key goes is settled before anything is created.
        match requester {
            Some(xkey) if nkeys::XKey::from_public_key(xkey.trim()).is_err() => {
                return Err(OpError::BadRequest(format!(
                    "{} is not a public xkey (X...)",
                    crate::config::headers::REQUESTER_XKEY
                )))
            }
            Some(_) => {}
            None if self.sealed_keys_only => return Err(OpError::ClearKeyRefused),
            None => {}
        }
        let request: InitializeRequest = if payload.iter().all(u8::is_ascii_whitespace) {
            InitializeRequest::default()
        } else {
            serde_json::from_slice(payload)
                .map_err(|e| OpError::BadRequest(format!("invalid JSON: {e}")))?
        };
        let split = match (request.shares, request.threshold) {
            (None, None) => None,
            (Some(shares), Some(threshold)) => Some(ShareSpec { shares, threshold }),
            _ => {
                return Err(OpError::BadRequest(
                    "give both shares and threshold, or neither".into(),
                ))
            }
        };
        if self
            .record()
            .await
            .map_err(|e| OpError::Store(e.to_string()))?
            .is_some()
        {
            return Err(OpError::AlreadyInitialized);
        }
        let (mut record, master) = vault::initialize(
            self.configured_transit.as_ref(),
            split,
            crate::store::secrets::now_ms(),
        )?;
        // Made before the record is stored, which keeps a check value of each share.
        let shares = split.map(|spec| master.split(spec));
        if let Some(all) = &shares {
            record.share_checks = vault::share_checks(all)?;
        }
        let body = serde_json::to_vec(&record).map_err(|e| OpError::Store(e.to_string()))?;
        self.kv()?
            .create(RECORD_KEY, body.into())
            .await
            .map_err(|e| match e.kind() {
                kv::CreateErrorKind::AlreadyExists => OpError::AlreadyInitialized,
                _ => OpError::Store(e.to_string()),
            })?;
        self.backend
            .set_transit_public(Some(record.transit_public.clone()));
        tracing::info!(split = ?split, "database initialized; it stays sealed until unlocked");
        let key = master.to_base64();
        let material = KeyMaterial {
            database_key: shares.is_none().then_some(key.as_str()),
            shares: shares
                .as_ref()
                .map(|all| all.iter().map(|s| s.as_str()).collect()),
            threshold: split.map(|spec| spec.threshold),
        };
        let Some(requester) = requester else {
            tracing::warn!(
                "initialize answered the database key in clear (no {} header): anyone who can \
                 read the reply subject has it; piggybank init seals it, and \
                 --sealed-keys-only refuses this",
                crate::config::headers::REQUESTER_XKEY
            );
            let mut clear =
                serde_json::to_value(&material).map_err(|e| OpError::Store(e.to_string()))?;
            clear["sealed"] = true.into();
            return Ok(clear);
        };
        let plaintext = Zeroizing::new(
            serde_json::to_vec(&material).map_err(|e| OpError::Store(e.to_string()))?,
        );
        // The requester's key was checked above; the record exists now, so a failure here
        // is reported rather than the key shown in clear.
        let sealed = Sealed::seal(&plaintext, requester)
            .map_err(|e| OpError::Store(format!("cannot seal the key to the requester: {e}")))?;
        serde_json::to_value(SealedInitialize {
            sealed: true,
            threshold: split.map(|spec| spec.threshold),
            sealed_to: requester.trim().to_string(),
            key_material: sealed,
        })
        .map_err(|e| OpError::Store(e.to_string()))
    }

    /// The unlock request in `payload`: the sealed form, opened with this instance's unseal
    /// key (`OtherInstance` when it names another instance), or the clear form, with a
    /// warning (refused with `--sealed-keys-only`).
    fn unlock_request(&self, payload: &[u8]) -> Result<UnlockRequest, OpError> {
        let expected = || {
            OpError::BadRequest(
                r#"expected {"instance_id", "sender_xkey", "secret"} (sealed to this instance's unseal_xkey), or {"database_key": "..."} or {"share": "..."}"#
                    .into(),
            )
        };
        if let Ok(sealed) = serde_json::from_slice::<SealedUnlock>(payload) {
            if sealed.instance_id != self.instance_id {
                return Err(OpError::OtherInstance);
            }
            let plaintext = sealed.key_material().open(&self.unseal).map_err(|_| {
                OpError::BadRequest(
                    "cannot open the key material: it is not sealed to this instance's \
                     unseal_xkey (from a status of an earlier run?)"
                        .into(),
                )
            })?;
            return serde_json::from_slice(&plaintext).map_err(|_| expected());
        }
        if self.sealed_keys_only {
            return Err(OpError::ClearKeyRefused);
        }
        let request: UnlockRequest = serde_json::from_slice(payload).map_err(|_| expected())?;
        tracing::warn!(
            "unlock received a key or share in clear: it crossed the bus readable by any \
             subscriber; piggybank unlock seals it, and --sealed-keys-only refuses this"
        );
        Ok(request)
    }

    async fn unlock(self: &Arc<Self>, payload: &[u8]) -> Result<serde_json::Value, OpError> {
        let request = self.unlock_request(payload)?;
        // Read before anything else: a lock from now on makes this unlock install nothing.
        let epoch = self.backend.seal_epoch();
        let record = self.existing().await?;
        if !self.backend.is_sealed() {
            return Err(OpError::AlreadyUnlocked);
        }
        let master = match (&request.database_key, &request.share, record.split) {
            (Some(key), None, None) => MasterKey::from_base64(key)?,
            (None, Some(share), Some(spec)) => {
                let share = vault::decode_share(share)?;
                // A share this store was not split into never takes a slot: a forged one
                // cannot spoil the operators' unlock.
                if !vault::share_is_known(&record, &share) {
                    return Err(OpError::UnknownShare);
                }
                let mut pending = self.shares.lock().unwrap_or_else(|p| p.into_inner());
                if pending.iter().any(|s| s[0] == share[0]) {
                    return Err(OpError::RepeatedShare);
                }
                pending.push(share);
                if pending.len() < usize::from(spec.threshold) {
                    return Ok(serde_json::json!({
                        "sealed": true,
                        "progress": pending.len(),
                        "threshold": spec.threshold,
                    }));
                }
                let combined = MasterKey::combine(&pending, spec.threshold);
                pending.clear();
                combined?
            }
            (Some(_), None, Some(_)) => {
                return Err(OpError::BadRequest(
                    "this database was split into shares: unlock with {\"share\": \"...\"}".into(),
                ))
            }
            (None, Some(_), None) => {
                return Err(OpError::BadRequest(
                    "this database has one key: unlock with {\"database_key\": \"...\"}".into(),
                ))
            }
            _ => {
                return Err(OpError::BadRequest(
                    "give exactly one of database_key and share".into(),
                ))
            }
        };
        let (keys, transit) = vault::open(&record, &master, crate::store::secrets::now_ms())?;
        let transit = transit
            .or_else(|| self.configured_transit.clone())
            .ok_or_else(|| {
                OpError::Store("the record holds no transit key, and none is configured".into())
            })?;
        // A lock since `epoch` was read wins: nothing is installed or kept after it.
        self.backend
            .install(epoch, keys, transit)
            .map_err(|_| OpError::LockedMeanwhile)?;
        {
            let mut held = self.master.lock().unwrap_or_else(|p| p.into_inner());
            if self.backend.seal_epoch() != epoch {
                return Err(OpError::LockedMeanwhile);
            }
            *held = Some(master);
        }
        tracing::info!("database unlocked");
        // Resume a rotation: a pending activation, or values not yet re-sealed.
        self.reload().await?;
        Ok(serde_json::json!({ "sealed": false }))
    }

    /// Seal this instance: drop the master key and the data keys, forget the shares given
    /// so far, and stop (and wait for) the background work that used the keys.
    async fn lock(&self) -> serde_json::Value {
        let stopping = {
            let mut held = self.master.lock().unwrap_or_else(|p| p.into_inner());
            let stopping = self.backend.seal_now();
            held.take();
            stopping
        };
        self.shares
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        stopping.wait().await;
        tracing::info!("database locked");
        serde_json::json!({ "sealed": true })
    }

    async fn status(&self) -> Result<serde_json::Value, OpError> {
        let report = self.report().await?;
        serde_json::to_value(report).map_err(|e| OpError::Store(e.to_string()))
    }

    /// This instance's status: the fields both modes share, then the seal's.
    async fn report(&self) -> Result<StatusReport, OpError> {
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
            secrets: Some(self.backend.counts().0),
            mapped_entities: Some(self.backend.counts().1),
            reencryption: None,
            admin: Some(self.admin),
            unseal_xkey: Some(self.unseal.public_key()),
        };
        if self.mode() == Mode::Keyed {
            return Ok(report);
        }
        let record = self
            .record()
            .await
            .map_err(|e| OpError::Store(e.to_string()))?;
        let split = record.as_ref().and_then(|r| r.split);
        report.initialized = record.is_some();
        report.progress = self.shares.lock().unwrap_or_else(|p| p.into_inner()).len();
        report.threshold = split.map(|s| s.threshold);
        report.shares = split.map(|s| s.shares);
        report.key_version = Some(record.as_ref().map_or(0, |r| r.data_keys.len()));
        report.key_id = record
            .as_ref()
            .and_then(|r| r.current_key_id())
            .map(str::to_string);
        report.reencryption = Some(Reencryption {
            running: self.reencryption.running.load(Ordering::SeqCst),
            done: self.reencryption.done.load(Ordering::SeqCst),
            total: self.reencryption.total.load(Ordering::SeqCst),
            resealed: self.reencryption.resealed.load(Ordering::SeqCst),
            failed: self.reencryption.failed.load(Ordering::SeqCst),
        });
        Ok(report)
    }

    /// Add a new data key, current after [`ACTIVATION_DELAY_MS`]; then every value is
    /// re-sealed with it in the background.
    async fn rotate(self: &Arc<Self>) -> Result<serde_json::Value, OpError> {
        let entry = self
            .kv()?
            .entry(RECORD_KEY)
            .await
            .map_err(|e| OpError::Store(e.to_string()))?
            .ok_or(OpError::NotInitialized)?;
        let mut record: VaultRecord =
            serde_json::from_slice(&entry.value).map_err(|e| OpError::Store(e.to_string()))?;
        let now = crate::store::secrets::now_ms();
        let active_from = now + ACTIVATION_DELAY_MS;
        let id = {
            let master = self.master.lock().unwrap_or_else(|p| p.into_inner());
            let master = master.as_ref().ok_or(OpError::Sealed)?;
            vault::rotate(&mut record, master, now, active_from)?
        };
        let body = serde_json::to_vec(&record).map_err(|e| OpError::Store(e.to_string()))?;
        self.kv()?
            .update(RECORD_KEY, body.into(), entry.revision)
            .await
            .map_err(|e| match e.kind() {
                kv::UpdateErrorKind::WrongLastRevision => OpError::Conflict,
                _ => OpError::Store(e.to_string()),
            })?;
        self.reload().await?;
        tracing::info!(key_id = %id, "data key rotated");
        Ok(serde_json::json!({
            "key_id": id,
            "key_version": record.data_keys.len(),
            "active_from_ms": active_from,
        }))
    }
}

/// A random id for this process's instance, as `status` reports it.
fn new_instance_id() -> String {
    let key = nkeys::KeyPair::new_server().public_key();
    key.get(..12).unwrap_or(&key).to_string()
}
