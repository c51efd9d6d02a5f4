//! `piggybank run`'s flags, a superset of the sample's, and the [`RunConfig`] they make with
//! the global connection flags (`Conn`: `--nats-address`, `--nats-creds-file`, ...).

use std::path::PathBuf;

use clap::Args;
use zeroize::Zeroizing;

use crate::config::{self, env};
use crate::server::RunConfig;

use super::{files, zeroized, Conn};

#[derive(Args)]
pub struct RunArgs {
    /// The data key seed (SX...): values are sealed with it at rest
    #[arg(short = 'e', long, env = env::ENCRYPTION_XKEY_SEED, hide_env_values = true)]
    pub encryption_xkey_seed: Option<String>,
    /// Seeds of earlier data keys (comma-separated), to read what they sealed
    #[arg(long, env = env::PREVIOUS_ENCRYPTION_XKEY_SEEDS, value_delimiter = ',', hide_env_values = true)]
    pub previous_encryption_xkey_seeds: Vec<String>,
    /// The transit key seed (SX...): hosts seal requests to its public key
    #[arg(short = 't', long, env = env::TRANSIT_XKEY_SEED, hide_env_values = true)]
    pub transit_xkey_seed: Option<String>,
    /// The subject prefix for all requests to the backend
    #[arg(short = 's', long, default_value = config::DEFAULT_SUBJECT_BASE)]
    pub subject_base: String,
    /// The name of the backend (a wadm policy's `backend`)
    #[arg(short = 'n', long, default_value = config::DEFAULT_BACKEND_NAME)]
    pub name: String,
    /// The KV bucket secrets are stored in
    #[arg(short = 'b', long, default_value = config::DEFAULT_SECRETS_BUCKET)]
    pub secrets_bucket: String,
    /// Versions kept per secret (1-64)
    #[arg(long, default_value_t = config::DEFAULT_MAX_SECRET_HISTORY)]
    pub max_secret_history: u8,
    /// Queue group prefix shared by instances of this backend
    #[arg(long, default_value = config::DEFAULT_QUEUE_BASE)]
    pub nats_queue_base: String,
    /// The secrets API version
    #[arg(long, default_value = config::DEFAULT_API_VERSION)]
    pub secrets_api_version: String,
    /// Replicas of the buckets piggybank creates (on a NATS cluster)
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,
    /// Account public keys allowed to issue entity JWTs (comma-separated)
    #[arg(long, env = env::TRUSTED_ISSUERS, value_delimiter = ',')]
    pub trusted_issuers: Vec<String>,
    /// nkey user public keys (U..., comma-separated) whose signature every admin request
    /// must carry; without it admin operations are unauthenticated (as in the sample)
    #[arg(long, env = env::ADMIN_KEYS, value_delimiter = ',')]
    pub admin_keys: Vec<String>,
    /// Refuse a database key or share sent in clear: accept only the sealed forms (which
    /// `piggybank init` and `unlock` use)
    #[arg(long, env = env::PIGGYBANK_SEALED_KEYS_ONLY)]
    pub sealed_keys_only: bool,
    /// Sealed mode: unlock at start with the database key in this file, which only its owner
    /// may read (mode 0600): restarts then need no operator; `lock` still locks
    #[arg(long, env = env::PIGGYBANK_UNLOCK_KEY_FILE, conflicts_with = "database_key")]
    pub unlock_key_file: Option<PathBuf>,
    /// Sealed mode: unlock at start with this database key (prefer the env var or
    /// --unlock-key-file: argv is visible to other users)
    #[arg(long, env = env::PIGGYBANK_DATABASE_KEY, hide_env_values = true)]
    pub database_key: Option<String>,
    /// Requests handled at once by this instance; more wait (backpressure), up to this many
    /// per subscription: beyond that the NATS client drops them (counted, logged)
    #[arg(long, default_value_t = config::DEFAULT_MAX_IN_FLIGHT)]
    pub max_in_flight: usize,
    /// Largest request (bytes: subject, headers and body) of an operation that carries no
    /// value (all but put_secret, add_mapping, remove_mapping and the API's post); a larger
    /// one is refused (413) before it is handled. 1024 to 67108864
    #[arg(long, default_value_t = config::DEFAULT_MAX_REQUEST_BYTES, value_parser = max_request_bytes)]
    pub max_request_bytes: usize,
    /// Longest the drain at shutdown may take (ms); requests not answered by then are
    /// abandoned, and the process exits whether or not NATS is still there
    #[arg(long, env = env::DRAIN_TIMEOUT_MS, default_value_t = config::DEFAULT_DRAIN_TIMEOUT_MS)]
    pub drain_timeout_ms: u64,
    /// Write values in the sample's format, so that sample instances sharing the buckets
    /// can read them during a rolling migration; switch it off once none remains
    #[arg(long, env = env::PIGGYBANK_WRITE_LEGACY_FORMAT)]
    pub write_legacy_format: bool,
    /// Keep no audit trail (by default every access decision is recorded on the stream
    /// PIGGYBANK_AUDIT_<NAME>)
    #[arg(long, env = env::PIGGYBANK_NO_AUDIT)]
    pub no_audit: bool,
    /// Refuse requests whose audit record cannot be written, rather than serve them
    /// unaudited
    #[arg(long, env = env::PIGGYBANK_AUDIT_REQUIRED, conflicts_with = "no_audit")]
    pub audit_required: bool,
    /// Audit records (both trails) are kept at most this many seconds (default 7 days)
    #[arg(long, default_value_t = config::DEFAULT_AUDIT_MAX_AGE_SECS)]
    pub audit_max_age_secs: u64,
    /// Size of the decisions trail (allowed accesses, admin changes); once full, new records
    /// are refused and never an old one evicted, so --audit-required refuses requests
    /// (default 256 MiB)
    #[arg(long, default_value_t = config::DEFAULT_AUDIT_MAX_BYTES)]
    pub audit_max_bytes: i64,
    /// Size of the refusal trail (refused requests and open reads, summarised beyond 100 a
    /// second); once full, its oldest records go (default 64 MiB)
    #[arg(long, default_value_t = config::DEFAULT_AUDIT_REFUSALS_MAX_BYTES)]
    pub audit_refusals_max_bytes: i64,
    /// Replicas of the audit stream (default: --replicas)
    #[arg(long)]
    pub audit_replicas: Option<usize>,
    /// More subject prefixes replies may go to, besides `_INBOX.` (comma-separated): for
    /// clients with a custom inbox prefix. Nothing is answered on any other reply subject.
    #[arg(long, env = env::REPLY_PREFIXES, value_delimiter = ',')]
    pub reply_prefixes: Vec<String>,
    /// Also serve the Piggy Bank API for plain NATS services under this prefix (`piggybank`)
    #[arg(long, env = env::PIGGYBANK_PREFIX)]
    pub piggybank_prefix: Option<String>,
    /// Share a protocol secret with a Piggy Bank API application, read-only unless `:rw`
    /// (repeatable): `shop=shop/db-password` is `piggybank.shop.db-password`. Without it the
    /// API reaches only its own names (`_api/<APP>/<NAME>`), never what components read
    #[arg(long = "share-with-api", value_name = "APP=SECRET[:rw]")]
    pub share_with_api: Vec<crate::config::ApiShare>,
    /// Piggy Bank API applications that may only `get` (comma-separated): their secrets are
    /// written by signed admin commands only (`put _api/<APP>/<NAME>`)
    #[arg(long, env = env::PIGGYBANK_READ_ONLY_APPS, value_delimiter = ',')]
    pub read_only_apps: Vec<String>,
    /// Bind an inbox prefix to a Piggy Bank API application (repeatable, or comma-separated
    /// in the env var): `foo=foo.secrets` answers `foo`'s requests under `foo.secrets.`, and
    /// no other application's there
    #[arg(long = "app-inbox", env = env::PIGGYBANK_APP_INBOXES, value_delimiter = ',', value_name = "APP=PREFIX")]
    pub app_inboxes: Vec<crate::config::AppInbox>,
}

/// `--max-request-bytes`: a number of bytes in [`config::MAX_REQUEST_BYTES_RANGE`].
fn max_request_bytes(value: &str) -> Result<usize, String> {
    let range = config::MAX_REQUEST_BYTES_RANGE;
    match value.parse::<usize>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(format!(
            "expected bytes, {} to {}",
            range.start(),
            range.end()
        )),
    }
}

impl RunArgs {
    /// The backend's config: these flags, and the global connection flags (`conn`).
    pub(crate) fn into_config(self, conn: &Conn) -> anyhow::Result<RunConfig> {
        let database_key = match (&self.unlock_key_file, &self.database_key) {
            (Some(path), _) => Some(files::read_private_line(path, "unlock key file")?),
            (None, Some(key)) => Some(Zeroizing::new(key.clone())),
            (None, None) => None,
        };
        let mut c = RunConfig::new(
            Zeroizing::new(self.encryption_xkey_seed.unwrap_or_default()),
            Zeroizing::new(self.transit_xkey_seed.unwrap_or_default()),
        );
        c.previous_encryption_xkey_seeds = zeroized(self.previous_encryption_xkey_seeds);
        c.subject_base = self.subject_base;
        c.name = self.name;
        c.secrets_bucket = self.secrets_bucket;
        c.max_secret_history = self.max_secret_history;
        c.nats_queue_base = self.nats_queue_base;
        c.api_version = self.secrets_api_version;
        let nats = conn.resolve()?;
        if nats.inbox_prefix.is_some() {
            tracing::info!(
                "the inbox prefix (--nats-inbox-prefix, or the context's) is for client connections: the backend's own \
                 connection keeps {}",
                crate::reply_policy::SERVER_INBOX_PREFIX
            );
        }
        c.nats_address = nats.address;
        c.nats_credentials = nats.credentials;
        c.nats_tls = nats.tls;
        c.js_domain = nats.js_domain;
        c.replicas = self.replicas;
        c.trusted_issuers = self.trusted_issuers;
        c.admin_keys = self.admin_keys;
        c.sealed_keys_only = self.sealed_keys_only;
        c.max_in_flight = self.max_in_flight;
        c.max_request_bytes = self.max_request_bytes;
        c.drain_timeout = std::time::Duration::from_millis(self.drain_timeout_ms);
        c.write_legacy_format = self.write_legacy_format;
        c.audit = crate::audit::AuditConfig {
            enabled: !self.no_audit,
            required: self.audit_required,
            max_age: std::time::Duration::from_secs(self.audit_max_age_secs),
            max_bytes: self.audit_max_bytes,
            refusals_max_bytes: self.audit_refusals_max_bytes,
            replicas: self.audit_replicas.unwrap_or(self.replicas),
            ..Default::default()
        };
        c.reply_prefixes = self.reply_prefixes;
        c.app_inboxes = self.app_inboxes;
        c.piggybank_prefix = self.piggybank_prefix.filter(|p| !p.trim().is_empty());
        c.piggybank_access =
            crate::config::ApiAccess::new(&self.share_with_api, &self.read_only_apps)
                .map_err(anyhow::Error::msg)?;
        c.database_key = database_key;
        Ok(c)
    }
}
