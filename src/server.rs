//! `run`: connect, open the stores, build the core, serve the protocol until shutdown.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use crate::admin_auth::{self, AdminVerifier};
use crate::audit::{AuditConfig, Auditor};
use crate::authz::{Authorizer, AuthzError};
use crate::backend::seal::Seal;
use crate::backend::Backend;
use crate::config;
use crate::keys::{DataKey, KeyError, Keyring, TransitKey};
use crate::piggybank_api;
use crate::piggybank_api::database::{self, DatabaseApi};
use crate::protocol;
use crate::serve::{Endpoint, ServeConfig, ServeConnection, ServeError};
use crate::store::record::RecordStore;
use crate::store::{Bucket, BucketSpec, MappingTable, SecretStore, StoreError};

/// Everything `piggybank run` is configured with. `Debug` never prints the seeds.
#[derive(Clone)]
pub struct RunConfig {
    pub encryption_xkey_seed: Zeroizing<String>,
    /// Earlier data keys, to read what they sealed until `piggybank rekey` re-seals it.
    pub previous_encryption_xkey_seeds: Vec<Zeroizing<String>>,
    pub transit_xkey_seed: Zeroizing<String>,
    pub subject_base: String,
    pub name: String,
    pub secrets_bucket: String,
    pub max_secret_history: u8,
    pub nats_queue_base: String,
    pub nats_address: String,
    pub api_version: String,
    pub nats_credentials: Option<Credentials>,
    /// TLS on the NATS connection (`--tls-ca`, `--tls-cert`/`--tls-key`, `--tls-first`).
    pub nats_tls: NatsTls,
    /// The JetStream domain every bucket is in (`--js-domain`; a leaf node reaching a hub's
    /// JetStream); `None`: the account's own JetStream.
    pub js_domain: Option<String>,
    pub replicas: usize,
    pub trusted_issuers: Vec<String>,
    /// nkey user public keys (`U...`) whose signature admin operations must carry
    /// (`crate::admin_auth`); empty: admin operations are unauthenticated, as in the sample.
    pub admin_keys: Vec<String>,
    /// Refuse a database key or share sent in clear (only the sealed forms of
    /// `crate::key_transfer`).
    pub sealed_keys_only: bool,
    /// Sealed mode: the database key, to unlock at start (`--unlock-key-file`,
    /// `PIGGYBANK_DATABASE_KEY`, or the provider's `database_key` secret).
    pub database_key: Option<Zeroizing<String>>,
    /// Requests handled at once; also what each subscription of the serving connection
    /// buffers before the client drops what comes next (`crate::serve::ServeConnection`).
    pub max_in_flight: usize,
    /// Largest request of an operation that carries no value (all but `put_secret`,
    /// `add_mapping`, `remove_mapping` and the API's `post`); a larger one is dropped.
    pub max_request_bytes: usize,
    /// Bound on the drain at shutdown.
    pub drain_timeout: Duration,
    /// Write values in the sample's format (rolling migration from the sample).
    pub write_legacy_format: bool,
    /// The audit trail: retention, and whether requests need their record written.
    pub audit: AuditConfig,
    /// Trusted reply prefixes besides `_INBOX.`: replies go only to subjects under them
    /// (see `crate::reply_policy`).
    pub reply_prefixes: Vec<String>,
    /// Serve the Piggy Bank API under this prefix (`piggybank`); `None`: not served.
    pub piggybank_prefix: Option<String>,
}

impl std::fmt::Debug for RunConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunConfig")
            .field("encryption_xkey_seed", &"<redacted>")
            .field("transit_xkey_seed", &"<redacted>")
            .field("subject_base", &self.subject_base)
            .field("name", &self.name)
            .field("secrets_bucket", &self.secrets_bucket)
            .field("nats_address", &self.nats_address)
            .field("nats_tls", &self.nats_tls)
            .field("js_domain", &self.js_domain)
            .field("replicas", &self.replicas)
            .finish_non_exhaustive()
    }
}

impl RunConfig {
    /// A config with the sample's defaults and the given seeds.
    pub fn new(
        encryption_xkey_seed: Zeroizing<String>,
        transit_xkey_seed: Zeroizing<String>,
    ) -> Self {
        Self {
            encryption_xkey_seed,
            previous_encryption_xkey_seeds: Vec::new(),
            transit_xkey_seed,
            subject_base: config::DEFAULT_SUBJECT_BASE.into(),
            name: config::DEFAULT_BACKEND_NAME.into(),
            secrets_bucket: config::DEFAULT_SECRETS_BUCKET.into(),
            max_secret_history: config::DEFAULT_MAX_SECRET_HISTORY,
            nats_queue_base: config::DEFAULT_QUEUE_BASE.into(),
            nats_address: config::DEFAULT_NATS_ADDRESS.into(),
            api_version: config::DEFAULT_API_VERSION.into(),
            nats_credentials: None,
            nats_tls: NatsTls::default(),
            js_domain: None,
            replicas: 1,
            trusted_issuers: Vec::new(),
            admin_keys: Vec::new(),
            sealed_keys_only: false,
            database_key: None,
            max_in_flight: config::DEFAULT_MAX_IN_FLIGHT,
            max_request_bytes: config::DEFAULT_MAX_REQUEST_BYTES,
            drain_timeout: Duration::from_millis(config::DEFAULT_DRAIN_TIMEOUT_MS),
            write_legacy_format: false,
            audit: AuditConfig::default(),
            reply_prefixes: Vec::new(),
            piggybank_prefix: None,
        }
    }

    /// Run without ENCRYPTION_XKEY_SEED: Piggy Bank's sealed mode.
    pub fn is_sealed_mode(&self) -> bool {
        self.encryption_xkey_seed.trim().is_empty()
    }

    /// Prefix of the Piggy Bank API and of the database operations.
    pub fn database_prefix(&self) -> &str {
        self.piggybank_prefix
            .as_deref()
            .unwrap_or(crate::piggybank_api::DEFAULT_PREFIX)
    }

    pub fn subject_prefix(&self) -> String {
        config::subject_prefix(&self.subject_base, &self.api_version, &self.name)
    }

    /// The configured JetStream domain, if any.
    pub fn js_domain(&self) -> Option<&str> {
        self.js_domain.as_deref()
    }
}

/// TLS on a NATS connection. Paths only: async-nats reads the files when it connects. Any of
/// them makes TLS required: a server that does not offer TLS is refused, never used in clear.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatsTls {
    /// CA certificates (PEM) the server's certificate must chain to; `None`: the system's.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM), for servers that verify clients (`verify: true`); only with
    /// `key_file`.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// Start TLS before the server's greeting, for servers with `handshake_first: true`.
    pub handshake_first: bool,
}

impl NatsTls {
    /// Each setting `self` leaves unset, taken from `fallback`: explicit flags over a NATS
    /// context.
    pub fn or(self, fallback: NatsTls) -> NatsTls {
        NatsTls {
            ca_file: self.ca_file.or(fallback.ca_file),
            cert_file: self.cert_file.or(fallback.cert_file),
            key_file: self.key_file.or(fallback.key_file),
            handshake_first: self.handshake_first || fallback.handshake_first,
        }
    }

    /// Set up `options` for TLS: the files must be readable, and a certificate comes with
    /// its key. Never reads a key into a message.
    async fn apply(
        &self,
        mut options: async_nats::ConnectOptions,
    ) -> Result<async_nats::ConnectOptions, String> {
        for (what, path) in [
            ("TLS CA file", &self.ca_file),
            ("TLS client certificate", &self.cert_file),
            ("TLS client key", &self.key_file),
        ] {
            if let Some(path) = path {
                tokio::fs::File::open(path)
                    .await
                    .map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
            }
        }
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                options = options.add_client_certificate(cert.clone(), key.clone());
            }
            (Some(_), None) => {
                return Err("a TLS client certificate was given without its key".into())
            }
            (None, Some(_)) => {
                return Err("a TLS client key was given without its certificate".into())
            }
            (None, None) => {}
        }
        if let Some(ca) = &self.ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        if self.ca_file.is_some() || self.cert_file.is_some() {
            options = options.require_tls(true);
        }
        if self.handshake_first {
            options = options.tls_first();
        }
        Ok(options)
    }
}

/// How to authenticate to NATS. `Debug` never prints a seed or a credentials file's contents.
#[derive(Clone)]
pub enum Credentials {
    /// A `.creds` file on disk (`--nats-creds-file`).
    File(PathBuf),
    /// The contents of a `.creds` file (the provider receives them as a secret).
    Contents(Zeroizing<String>),
    /// A user name and password (servers configured with `authorization { users = [...] }`).
    UserPassword {
        user: String,
        password: Zeroizing<String>,
    },
    /// A user JWT and its nkey seed (the provider reuses the lattice's, from HostData).
    UserJwt {
        jwt: String,
        seed: Zeroizing<String>,
    },
    /// A file holding a user nkey seed (a NATS context's `nkey`), for servers configured
    /// with `nkey` users.
    NkeyFile(PathBuf),
    /// A token (a NATS context's `token`), for servers configured with one.
    Token(Zeroizing<String>),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::File(path) => f.debug_tuple("File").field(path).finish(),
            Credentials::Contents(_) => f.write_str("Contents(<redacted>)"),
            Credentials::UserPassword { user, .. } => {
                write!(f, "UserPassword({user}, <redacted>)")
            }
            Credentials::UserJwt { .. } => f.write_str("UserJwt(<redacted>)"),
            Credentials::NkeyFile(path) => f.debug_tuple("NkeyFile").field(path).finish(),
            Credentials::Token(_) => f.write_str("Token(<redacted>)"),
        }
    }
}

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
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    AdminKeys(#[from] crate::admin_auth::AdminKeyError),
}

#[derive(Debug, thiserror::Error)]
#[error("failed to connect to NATS at {address}: {reason}")]
pub struct ConnectError {
    pub address: String,
    pub reason: String,
}

/// Connect to NATS, with credentials and TLS if given. Fails fast (5 s) at start.
pub async fn connect(
    address: &str,
    credentials: Option<&Credentials>,
    tls: &NatsTls,
    client_name: &str,
) -> Result<async_nats::Client, ConnectError> {
    connect_with(address, credentials, tls, client_name, None).await
}

/// The connection a backend's stores use (KV watches, JetStream, the audit stream): its
/// inboxes under [`SERVER_INBOX_PREFIX`](crate::reply_policy::SERVER_INBOX_PREFIX), which
/// the reply policy never answers into, rather than the shared `_INBOX.`.
pub async fn connect_server(
    address: &str,
    credentials: Option<&Credentials>,
    tls: &NatsTls,
    client_name: &str,
) -> Result<async_nats::Client, ConnectError> {
    let prefix = crate::reply_policy::SERVER_INBOX_PREFIX;
    let options = options(address, credentials, tls, client_name, Some(prefix)).await?;
    let options = crate::serve::log_events(options, "stores", None);
    options
        .connect(address)
        .await
        .map_err(|e| connect_error(address, tls, e))
}

/// A connection front doors subscribe and reply on ([`ServeConnection`]), each subscription
/// buffering at most `capacity` messages; its events are logged as `role`'s. A backend's is
/// on the same server, with the same credentials, TLS and inbox prefix
/// ([`SERVER_INBOX_PREFIX`](crate::reply_policy::SERVER_INBOX_PREFIX)) as
/// [`connect_server`]'s.
pub async fn connect_serving(
    address: &str,
    credentials: Option<&Credentials>,
    tls: &NatsTls,
    client_name: &str,
    inbox_prefix: Option<&str>,
    capacity: usize,
    role: &'static str,
) -> Result<ServeConnection, ConnectError> {
    let options = options(address, credentials, tls, client_name, inbox_prefix).await?;
    ServeConnection::connect(address, options, capacity, role)
        .await
        .map_err(|e| connect_error(address, tls, e))
}

/// Every NATS connection piggybank makes is made here: credentials, TLS, and the inbox
/// prefix (`None`: `_INBOX`). An unreadable file, a certificate without its key or a bad
/// seed fails before connecting, with a message that never holds a secret.
pub async fn connect_with(
    address: &str,
    credentials: Option<&Credentials>,
    tls: &NatsTls,
    client_name: &str,
    inbox_prefix: Option<&str>,
) -> Result<async_nats::Client, ConnectError> {
    options(address, credentials, tls, client_name, inbox_prefix)
        .await?
        .connect(address)
        .await
        .map_err(|e| connect_error(address, tls, e))
}

/// The options of every connection: credentials, TLS, the inbox prefix, the name, and a
/// 5 s connection timeout (fail fast at start).
async fn options(
    address: &str,
    credentials: Option<&Credentials>,
    tls: &NatsTls,
    client_name: &str,
    inbox_prefix: Option<&str>,
) -> Result<async_nats::ConnectOptions, ConnectError> {
    let err = |reason: String| ConnectError {
        address: without_userinfo(address),
        reason,
    };
    let mut options = async_nats::ConnectOptions::new();
    match credentials {
        None => {}
        Some(Credentials::File(path)) => {
            options = options.credentials_file(path).await.map_err(|e| {
                err(format!(
                    "cannot read credentials file {}: {e}",
                    path.display()
                ))
            })?;
        }
        Some(Credentials::Contents(contents)) => {
            options = async_nats::ConnectOptions::with_credentials(contents)
                .map_err(|_| err("the credentials are not a valid NATS .creds file".into()))?;
        }
        Some(Credentials::UserPassword { user, password }) => {
            options = async_nats::ConnectOptions::with_user_and_password(
                user.clone(),
                password.to_string(),
            );
        }
        Some(Credentials::UserJwt { jwt, seed }) => {
            let key = nkeys::KeyPair::from_seed(seed)
                .map_err(|_| err("the user nkey seed is not valid".into()))?;
            let key = Arc::new(key);
            options = async_nats::ConnectOptions::with_jwt(jwt.clone(), move |nonce| {
                let key = Arc::clone(&key);
                async move { key.sign(&nonce).map_err(async_nats::AuthError::new) }
            });
        }
        Some(Credentials::NkeyFile(path)) => {
            let seed = read_nkey_seed(path).map_err(err)?;
            options = async_nats::ConnectOptions::with_nkey(seed.to_string());
        }
        Some(Credentials::Token(token)) => {
            options = async_nats::ConnectOptions::with_token(token.to_string());
        }
    }
    options = tls.apply(options).await.map_err(err)?;
    if let Some(prefix) = inbox_prefix {
        options = options.custom_inbox_prefix(prefix);
    }
    Ok(options
        .name(client_name)
        .connection_timeout(Duration::from_secs(5)))
}

/// A failed connect, with a hint for TLS failures; never the password of the URL.
fn connect_error(address: &str, tls: &NatsTls, e: async_nats::ConnectError) -> ConnectError {
    let reason = e.to_string();
    let hint = tls_hint(&reason, tls);
    ConnectError {
        address: without_userinfo(address),
        reason: format!("{reason}{hint}"),
    }
}

/// What to do about a TLS failure whose cause the TLS library names only in its own terms.
fn tls_hint(reason: &str, tls: &NatsTls) -> &'static str {
    if reason.contains("CertificateRequired") {
        " (the server verifies clients: give a client certificate and its key)"
    } else if reason.contains("UnknownIssuer") {
        " (the server's certificate is not signed by a CA this client trusts: give its CA file)"
    } else if reason.contains("expected INFO, got nothing") && !tls.handshake_first {
        " (a server configured with handshake_first needs TLS first)"
    } else if reason.contains("InvalidContentType") && tls.handshake_first {
        " (this server does not start with TLS: connect without TLS first)"
    } else {
        ""
    }
}

/// The user nkey seed in `path`: its first line that is not empty or a `#` comment. Checked
/// here, so that a bad file is named; its contents never are.
fn read_nkey_seed(path: &Path) -> Result<Zeroizing<String>, String> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read nkey seed file {}: {e}", path.display()))?,
    );
    let seed = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| Zeroizing::new(l.to_string()));
    match seed {
        Some(seed) if nkeys::KeyPair::from_seed(&seed).is_ok() => Ok(seed),
        _ => Err(format!(
            "nkey seed file {} holds no valid nkey seed",
            path.display()
        )),
    }
}

/// `address` with any `user:password@` replaced, for messages: a URL may carry a password.
fn without_userinfo(address: &str) -> String {
    let (scheme, rest) = match address.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), address),
    };
    match rest.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}***@{host}"),
        None => address.to_string(),
    }
}

/// A credentials file path, as the CLI takes it.
pub fn credentials_file(path: Option<&Path>) -> Option<Credentials> {
    path.map(|p| Credentials::File(p.to_path_buf()))
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
    if config.replicas == 0 {
        return Err(ServerError::Config("--replicas must be at least 1".into()));
    }
    if !(1..=64).contains(&config.max_secret_history) {
        return Err(ServerError::Config(
            "--max-secret-history must be between 1 and 64".into(),
        ));
    }
    let authorizer = Authorizer::new(&config.trusted_issuers)?;
    let secrets = SecretStore::open(
        client,
        config.js_domain(),
        Bucket::CreateIfMissing(&BucketSpec {
            name: config.secrets_bucket.clone(),
            description: "piggybank secrets (sealed values)",
            history: i64::from(config.max_secret_history),
            replicas: config.replicas,
        }),
    )
    .await?;
    let mappings = MappingTable::open(
        client,
        config.js_domain(),
        Bucket::CreateIfMissing(&BucketSpec {
            name: config::mappings_bucket(&config.name),
            description: "piggybank entity-to-secret mappings",
            history: 1,
            replicas: config.replicas,
        }),
    )
    .await?;
    if config.is_sealed_mode() {
        if config.write_legacy_format {
            return Err(ServerError::Config(
                "--write-legacy-format needs ENCRYPTION_XKEY_SEED: the sample has no sealed mode"
                    .into(),
            ));
        }
        let backend = Backend::sealed(secrets, mappings, authorizer);
        return Ok(match configured_transit(config)? {
            Some(transit) => backend.with_configured_transit(transit),
            None => backend,
        });
    }
    let transit = TransitKey::from_seed(&config.transit_xkey_seed)?;
    let keys = keyring(
        &config.encryption_xkey_seed,
        &config.previous_encryption_xkey_seeds,
    )?;
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
    let kv = Bucket::CreateIfMissing(&BucketSpec {
        name: config::vault_bucket(&config.name),
        description: "piggybank sealed key record (wrapped keys only)",
        history: 1,
        replicas: config.replicas,
    })
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
        Err(e) => Err(ServerError::Config(format!(
            "cannot unlock with the configured database key: {e}"
        ))),
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

/// Connect, open both buckets and build the core. Logs "piggybank ready" with the startup
/// time: from then on every request is answered, gets from the buckets themselves until the
/// mirrors hold them whole ("piggybank loaded"), listings once they do.
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
    let serving = connect_serving(
        &config.nats_address,
        config.nats_credentials.as_ref(),
        &config.nats_tls,
        &format!("piggybank {} (serving)", config.name),
        Some(crate::reply_policy::SERVER_INBOX_PREFIX),
        config.max_in_flight,
        "serving",
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
    let auditor = Arc::new(
        Auditor::start(
            &crate::store::jetstream(&client, config.js_domain()),
            &config.name,
            seal.instance_id(),
            &config.audit,
        )
        .await?,
    );
    let database = Arc::new(DatabaseApi::new(seal, admin_mode, Arc::clone(&auditor)));
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
    // Ready: gets are answered from here on, from the buckets until the mirrors are loaded.
    tracing::info!(
        backend = %config.name,
        mode = %database.seal().mode(),
        instance_id = %database.seal().instance_id(),
        server_xkey = %backend.transit_public().unwrap_or_default(),
        sealed = backend.is_sealed(),
        loaded = backend.is_loaded(),
        startup_ms = started.elapsed().as_millis() as u64,
        "piggybank ready"
    );
    log_when_loaded(Arc::downgrade(&backend), started);
    Ok(Started {
        client,
        serving,
        backend,
        database,
        admin,
        auditor,
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
    endpoints.extend(database::endpoints(
        Arc::clone(&started.database),
        config.database_prefix(),
        &config.name,
        &queue_group,
    ));
    if let Some(prefix) = &config.piggybank_prefix {
        endpoints.push(piggybank_api::endpoint(
            Arc::clone(&started.backend),
            prefix,
            &queue_group,
        ));
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
        admin: started.admin.clone(),
        instance_id: started.database.seal().instance_id().to_string(),
        drain_timeout: config.drain_timeout,
        auditor: Arc::clone(&started.auditor),
    };
    crate::serve::serve(started.serving.clone(), endpoints, serve_config, shutdown).await?;
    tracing::info!("piggybank stopped");
    Ok(())
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
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_errors_never_show_a_password_from_the_url() {
        assert_eq!(
            without_userinfo("nats://u:secret@h:4222"),
            "nats://***@h:4222"
        );
        assert_eq!(without_userinfo("u:secret@h:4222"), "***@h:4222");
        assert_eq!(without_userinfo("nats://h:4222"), "nats://h:4222");
        assert_eq!(without_userinfo("127.0.0.1:4222"), "127.0.0.1:4222");
    }

    #[tokio::test]
    async fn a_failed_connect_names_the_server_without_its_password() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address = format!("nats://u:hunter2@127.0.0.1:{port}");
        let err = connect(&address, None, &NatsTls::default(), "test")
            .await
            .expect_err("nothing listens there");
        let text = err.to_string();
        assert!(
            !text.contains("hunter2") && text.contains(&port.to_string()),
            "{text}"
        );
    }
}
