//! `run`: validate the configuration, connect, open the stores, build the core, assemble the
//! front doors and serve them until shutdown. Each door's rules live with the door
//! ([`crate::serve::Door`]); connections are made in [`crate::connect`].

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use crate::admin_auth::{self, AdminVerifier};
use crate::audit::Auditor;
use crate::authz::{Authorizer, AuthzError};
use crate::backend::Backend;
use crate::config;
pub use crate::config::RunConfig;
use crate::connect::{connect_server, connect_serving_with_side, ConnectError};
use crate::database::{self, DatabaseApi};
use crate::keys::{DataKey, KeyError, Keyring, TransitKey};
use crate::piggybank_api;
use crate::protocol;
use crate::seal::{RecordStore, Seal};
use crate::serve::{Endpoint, ServeConfig, ServeConnection, ServeError};
use crate::store::{owner, Bucket, Buckets, MappingTable, SecretStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Authz(#[from] AuthzError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("failed to open buckets: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    AdminKeys(#[from] crate::admin_auth::AdminKeyError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
}

/// The current data key and the previous ones, from their seeds.
pub fn keyring(
    current: &Zeroizing<String>,
    previous: &[Zeroizing<String>],
) -> Result<Keyring, KeyError> {
    let previous = previous
        .iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| DataKey::from_seed(&Zeroizing::new(s.trim().to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Keyring::new(DataKey::from_seed(current)?, previous))
}

/// Build the core on an existing connection: parse keys, open (or create) both buckets and
/// load them into memory.
pub async fn open_backend(
    client: &async_nats::Client,
    config: &RunConfig,
) -> Result<Backend, ServerError> {
    config.validate()?;
    let authorizer = Authorizer::new(&config.trusted_issuers)?;
    let buckets = Buckets::of(&config.name, &config.secrets_bucket);
    let history = i64::from(config.max_secret_history);
    // Sealed mode has no keyring until it is unlocked.
    let keys = match config.is_sealed_mode() {
        true => None,
        false => Some(keyring(
            &config.encryption_xkey_seed,
            &config.previous_encryption_xkey_seeds,
        )?),
    };
    let secrets = SecretStore::open(
        client,
        config.js_domain(),
        Bucket::CreateIfMissing(&buckets.secrets_spec(history, config.replicas)),
    )
    .await?;
    let js = crate::store::jetstream(client, config.js_domain());
    owner::claim(&js, &buckets.secrets, &owner_claim(config, keys.as_ref())).await?;
    let mappings = MappingTable::open(
        client,
        config.js_domain(),
        Bucket::CreateIfMissing(&buckets.mappings_spec(config.replicas)),
    )
    .await?;
    let Some(keys) = keys else {
        let backend = Backend::sealed(secrets, mappings, authorizer);
        return Ok(match configured_transit(config)? {
            Some(transit) => backend.with_configured_transit(transit),
            None => backend,
        });
    };
    let transit = TransitKey::from_seed(&config.transit_xkey_seed)?;
    if config.write_legacy_format {
        tracing::warn!(
            "--write-legacy-format: values are written in the sample's format, so sample \
             instances can read them; kinds are not recorded (binary that is valid UTF-8 reads \
             back as a string). Switch it off once no sample instance remains."
        );
    }
    Ok(Backend::new(transit, keys, secrets, mappings, authorizer)
        .with_legacy_writes(config.write_legacy_format))
}

/// What this instance is, for the one-store-one-key check ([`owner`]): its backend name and
/// data key (keyed mode: the current key's id; sealed mode: the backend's key record), and
/// the keys a rekey may move the store from.
fn owner_claim(config: &RunConfig, keys: Option<&Keyring>) -> owner::Claim {
    let data_key = keys.map_or(owner::SEALED.to_string(), |k| k.current().id().to_string());
    let previous = keys
        .map(|k| {
            k.keys()
                .map(|key| key.id().to_string())
                .filter(|id| *id != data_key)
                .collect()
        })
        .unwrap_or_default();
    owner::Claim {
        owner: owner::Owner {
            backend: config.name.clone(),
            data_key,
        },
        previous,
    }
}

/// The transit key given by TRANSIT_XKEY_SEED, if any (optional in sealed mode).
fn configured_transit(config: &RunConfig) -> Result<Option<TransitKey>, KeyError> {
    if config.transit_xkey_seed.trim().is_empty() {
        return Ok(None);
    }
    TransitKey::from_seed(&config.transit_xkey_seed).map(Some)
}

/// Sealed mode: the vault bucket and the seal of this instance. Reads the record, so
/// `server_xkey` answers while sealed once the store is initialized.
async fn open_seal(
    client: &async_nats::Client,
    config: &RunConfig,
    backend: &Arc<Backend>,
) -> Result<Seal, ServerError> {
    let js = crate::store::jetstream(client, config.js_domain());
    let buckets = Buckets::of(&config.name, &config.secrets_bucket);
    let kv = Bucket::CreateIfMissing(&buckets.vault_spec(config.replicas))
        .open(&js)
        .await?;
    let seal = Seal::new(
        Arc::clone(backend),
        RecordStore::new(kv),
        configured_transit(config)?,
        config.sealed_keys_only,
    );
    if let Some(record) = seal.record().await? {
        if backend.transit_public().is_none() {
            backend.set_transit_public(Some(record.transit_public));
        }
    }
    Ok(seal)
}

/// Unlock at start with the configured database key. A store not initialized yet stays
/// sealed (with a warning); a key that does not unlock it stops the start.
async fn auto_unlock(seal: &Arc<Seal>, key: &Zeroizing<String>) -> Result<(), ServerError> {
    let started = Instant::now();
    match seal.unlock_at_start(key).await {
        Ok(true) => {
            tracing::info!(
                unlock_ms = started.elapsed().as_millis() as u64,
                "unlocked at start with the configured database key"
            );
            Ok(())
        }
        Ok(false) => {
            tracing::warn!(
                "a database key was given, but the database is not initialized yet: it \
                 stays sealed (initialize it, then restart or `piggybank unlock`)"
            );
            Ok(())
        }
        Err(e) => Err(ServerError::Config(crate::config::ConfigError(format!(
            "cannot unlock with the configured database key: {e}"
        )))),
    }
}

/// A backend ready to serve: its connections and its core, loaded into memory.
pub struct Started {
    /// The stores' connection: KV watches, JetStream, the audit stream.
    pub client: async_nats::Client,
    /// The front doors' connection: subscriptions and replies, with a small buffer per
    /// subscription (`max_in_flight` messages).
    pub serving: ServeConnection,
    pub backend: Arc<Backend>,
    /// `{prefix}.database.*`: the seal's front door (sealed mode), and `status` in either
    /// mode.
    pub database: Arc<DatabaseApi>,
    /// Checks admin signatures when run with `--admin-keys`; `None`: unauthenticated.
    pub admin: Option<Arc<AdminVerifier>>,
    /// The audit trail (a disabled one when `--no-audit`).
    pub auditor: Arc<Auditor>,
    /// When `start` began: "piggybank ready" reports the time to serving.
    pub started_at: Instant,
}

/// Log "piggybank loaded" once both mirrors hold their whole bucket. It looks every 10 ms
/// through a weak reference, so it never keeps a stopped backend (and its mirrors) alive.
fn log_when_loaded(backend: std::sync::Weak<Backend>, started: Instant) {
    tokio::spawn(async move {
        loop {
            let Some(backend) = backend.upgrade() else {
                return;
            };
            if backend.is_loaded() {
                let (secrets, mapped_entities) = backend.counts();
                tracing::info!(
                    secrets,
                    mapped_entities,
                    loaded_ms = started.elapsed().as_millis() as u64,
                    "piggybank loaded"
                );
                return;
            }
            drop(backend);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
}

/// Connect, open both buckets and build the core. [`serve`] logs "piggybank ready" with the
/// startup time once its subscriptions exist: from then on every request is answered, gets
/// from the buckets themselves until the mirrors hold them whole ("piggybank loaded"),
/// listings once they do.
pub async fn start(config: &RunConfig) -> Result<Started, ServerError> {
    let started = Instant::now();
    if config.trusted_issuers.iter().all(|k| k.trim().is_empty()) {
        tracing::warn!(
            "no trusted issuers configured: any entity JWT with a valid signature is accepted; \
             set --trusted-issuers (TRUSTED_ISSUERS) to the account keys that sign your components"
        );
    }
    let admin_keys = admin_auth::parse_admin_keys(&config.admin_keys)?;
    if admin_keys.is_empty() {
        tracing::warn!(
            "no admin keys configured: anyone who can publish on this backend's subjects can \
             write secrets, grant access and lock the store; set --admin-keys (ADMIN_KEYS) \
             to the nkey user keys that sign admin requests"
        );
    }
    let client = connect_server(
        &config.nats_address,
        config.nats_credentials.as_ref(),
        &config.nats_tls,
        &format!("piggybank {}", config.name),
    )
    .await?;
    let serving = connect_serving_with_side(
        &config.nats_address,
        config.nats_credentials.as_ref(),
        &config.nats_tls,
        &format!("piggybank {} (serving)", config.name),
        Some(crate::reply_policy::SERVER_INBOX_PREFIX),
        config.max_in_flight,
    )
    .await?;
    let backend = Arc::new(open_backend(&client, config).await?);
    let admin = match admin_keys.is_empty() {
        true => None,
        false => {
            let js = crate::store::jetstream(&client, config.js_domain());
            let nonces = admin_auth::open_nonce_bucket(&js, &config.name, config.replicas).await?;
            Some(Arc::new(AdminVerifier::new(&admin_keys, nonces)?))
        }
    };
    let admin_mode = match admin {
        Some(_) => admin_auth::AdminMode::Signed,
        None => admin_auth::AdminMode::Unauthenticated,
    };
    let seal = match config.is_sealed_mode() {
        true => {
            let seal = Arc::new(open_seal(&client, config, &backend).await?);
            seal.watch().await?;
            if let Some(key) = &config.database_key {
                auto_unlock(&seal, key).await?;
            }
            seal
        }
        false => {
            if config.database_key.is_some() {
                tracing::warn!(
                    "a database key was given, but this backend runs with \
                     ENCRYPTION_XKEY_SEED and has no seal: ignoring it"
                );
            }
            Arc::new(Seal::keyed(Arc::clone(&backend)))
        }
    };
    // The audit writer has a connection of its own: nothing it publishes can break the
    // one the mirrors and the nonce store share.
    let audit_client = match config.audit.enabled {
        true => Some(
            connect_server(
                &config.nats_address,
                config.nats_credentials.as_ref(),
                &config.nats_tls,
                &format!("piggybank {} (audit)", config.name),
            )
            .await?,
        ),
        false => None,
    };
    let auditor = Arc::new(match audit_client {
        Some(audit_client) => {
            Auditor::start(
                audit_client,
                config.js_domain(),
                &config.name,
                seal.instance_id(),
                &config.audit,
            )
            .await?
        }
        None => Auditor::disabled(seal.instance_id()),
    });
    let database = Arc::new(
        DatabaseApi::new(seal, admin_mode, Arc::clone(&auditor))
            .with_shed(Arc::clone(serving.shed())),
    );
    crate::metrics::register(crate::metrics::Gauges {
        sealed: {
            let backend = Arc::clone(&backend);
            Arc::new(move || backend.is_sealed())
        },
        audit_dropped: {
            let auditor = Arc::clone(&auditor);
            Arc::new(move || auditor.dropped())
        },
        jwt_cache: {
            let backend = Arc::clone(&backend);
            Arc::new(move || backend.jwt_cache_counts())
        },
        mirrors: {
            let backend = Arc::clone(&backend);
            Arc::new(move || {
                backend
                    .mirrors()
                    .iter()
                    .map(|m| crate::metrics::MirrorReading {
                        store: m.store(),
                        pending: m.pending(),
                        loaded: m.is_loaded(),
                    })
                    .collect()
            })
        },
    });
    log_when_loaded(Arc::downgrade(&backend), started);
    Ok(Started {
        client,
        serving,
        backend,
        database,
        admin,
        auditor,
        started_at: started,
    })
}

/// The NATS front doors of a started backend, as endpoints of the one serve loop: the
/// wasmCloud protocol, the database operations, and the Piggy Bank API when configured.
/// Each door owns its rules; this only assembles them.
pub fn endpoints(started: &Started, config: &RunConfig) -> Vec<Endpoint> {
    let queue_group = config::queue_group(&config.nats_queue_base, &config.name);
    let mut endpoints = vec![protocol::endpoint(
        Arc::clone(&started.backend),
        config.subject_prefix(),
        queue_group.clone(),
    )];
    // Side traffic: on a connection and in lanes apart from the hosts' (crate::serve).
    endpoints.extend(
        database::endpoints(
            Arc::clone(&started.database),
            config.database_prefix(),
            &config.name,
            &queue_group,
        )
        .into_iter()
        .map(Endpoint::on_side),
    );
    if let Some(prefix) = &config.piggybank_prefix {
        endpoints.push(
            piggybank_api::endpoint(
                Arc::clone(&started.backend),
                prefix,
                &queue_group,
                config.piggybank_access.clone(),
            )
            .on_side(),
        );
    }
    endpoints
}

/// Serve every NATS front door of a started backend until `shutdown`; then drain.
pub async fn serve(
    started: Started,
    config: &RunConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let endpoints = endpoints(&started, config);
    let serve_config = ServeConfig {
        max_in_flight: config.max_in_flight,
        max_request_bytes: config.max_request_bytes,
        reply_prefixes: config.reply_prefixes.clone(),
        app_inboxes: config.app_inboxes.clone(),
        admin: started.admin.clone(),
        instance_id: started.database.seal().instance_id().to_string(),
        drain_timeout: config.drain_timeout,
        auditor: Arc::clone(&started.auditor),
        on_serving: Some(ready_log(&started, config)),
    };
    crate::serve::serve(started.serving.clone(), endpoints, serve_config, shutdown).await?;
    tracing::info!("piggybank stopped");
    Ok(())
}

/// "piggybank ready", once every front door is subscribed: gets are answered from then on,
/// from the buckets until the mirrors are loaded. (Logged before the subscriptions existed, a
/// client that waited for it could find no responder.)
fn ready_log(started: &Started, config: &RunConfig) -> Arc<dyn Fn() + Send + Sync> {
    let (backend, database, auditor) = (
        Arc::clone(&started.backend),
        Arc::clone(&started.database),
        Arc::clone(&started.auditor),
    );
    let (name, began) = (config.name.clone(), started.started_at);
    Arc::new(move || {
        tracing::info!(
            backend = %name,
            mode = %database.seal().mode(),
            instance_id = %database.seal().instance_id(),
            server_xkey = %backend.transit_public().unwrap_or_default(),
            audit_key = %auditor.instance_key().unwrap_or("-"),
            sealed = backend.is_sealed(),
            loaded = backend.is_loaded(),
            startup_ms = began.elapsed().as_millis() as u64,
            "piggybank ready"
        );
    })
}

/// Run the backend until `shutdown` completes; then drain and return.
pub async fn run(config: RunConfig, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
    let started = start(&config).await?;
    serve(started, &config, shutdown).await
}

/// How long the binaries wait, once their work is done, for what still runs on the async
/// runtime (a client reconnecting to a NATS server that is gone, a blocking lookup) before
/// they exit anyway.
pub const RUNTIME_SHUTDOWN: Duration = Duration::from_millis(250);

/// Completes on Ctrl-C or SIGTERM.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    // The handlers are installed here, when this is called, not when the future is first
    // polled: a SIGTERM that comes while the backend starts is then a shutdown, not the
    // default action, which kills the process (a `dev` stopped right after it answered
    // exited by the signal, once).
    #[cfg(unix)]
    let handlers = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        )
    };
    async move {
        #[cfg(unix)]
        if let (Ok(mut term), Ok(mut interrupt)) = handlers {
            tokio::select! {
                _ = term.recv() => {},
                _ = interrupt.recv() => {},
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}
