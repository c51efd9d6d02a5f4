//! [`RunConfig`]: everything a backend runs with, whichever binary starts it (`piggybank
//! run`, `piggybank dev`, the provider), and its one [`RunConfig::validate`], which
//! [`crate::server::start`] calls for all of them: a limit the CLI takes is the limit the
//! provider takes.

use std::time::Duration;

use zeroize::Zeroizing;

use crate::audit::AuditConfig;
use crate::config;
use crate::connect::{Credentials, NatsTls};

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
    /// `crate::seal::transfer`).
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
    /// Inboxes bound to a Piggy Bank API application (`--app-inbox foo=foo.secrets`): that
    /// application's requests are answered there, and no other's.
    pub app_inboxes: Vec<crate::reply_policy::AppInbox>,
    /// Serve the Piggy Bank API under this prefix (`piggybank`); `None`: not served.
    pub piggybank_prefix: Option<String>,
    /// What the API's applications may reach beyond their own names: protocol secrets the
    /// operator shared (`--share-with-api`), and applications that may only read
    /// (`--read-only-apps`).
    pub piggybank_access: crate::piggybank_api::access::ApiAccess,
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
            app_inboxes: Vec::new(),
            piggybank_prefix: None,
            piggybank_access: Default::default(),
        }
    }

    /// Run without ENCRYPTION_XKEY_SEED: Piggy Bank's sealed mode.
    pub(crate) fn is_sealed_mode(&self) -> bool {
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
    pub(crate) fn js_domain(&self) -> Option<&str> {
        self.js_domain.as_deref()
    }
}

/// A configuration the backend cannot run with; the message names the setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl RunConfig {
    /// Check every setting the backend's limits depend on. Called once at start, for the
    /// CLI and the provider alike: nothing is clamped silently.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |what: String| Err(ConfigError(what));
        if self.replicas == 0 {
            return fail("--replicas (replicas) must be at least 1".into());
        }
        if !(1..=64).contains(&self.max_secret_history) {
            return fail(
                "--max-secret-history (max_secret_history) must be between 1 and 64".into(),
            );
        }
        let in_flight = config::MAX_IN_FLIGHT_RANGE;
        if !in_flight.contains(&self.max_in_flight) {
            return fail(format!(
                "--max-in-flight (max_in_flight) must be {} to {}, not {}",
                in_flight.start(),
                in_flight.end(),
                self.max_in_flight
            ));
        }
        let request = config::MAX_REQUEST_BYTES_RANGE;
        if !request.contains(&self.max_request_bytes) {
            return fail(format!(
                "--max-request-bytes (max_request_bytes) must be {} to {}, not {}",
                request.start(),
                request.end(),
                self.max_request_bytes
            ));
        }
        if self.is_sealed_mode() && self.write_legacy_format {
            return fail(
                "--write-legacy-format (write_legacy_format) needs ENCRYPTION_XKEY_SEED: the \
                 sample has no sealed mode"
                    .into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyed() -> RunConfig {
        RunConfig::new(crate::keys::generate_seed(), crate::keys::generate_seed())
    }

    #[test]
    fn the_defaults_are_valid_and_every_limit_is_checked() {
        assert_eq!(keyed().validate(), Ok(()));
        type Spoil = fn(&mut RunConfig);
        let bad: [(&str, Spoil); 6] = [
            ("replicas", |c| c.replicas = 0),
            ("max_secret_history", |c| c.max_secret_history = 65),
            ("max_in_flight", |c| c.max_in_flight = 0),
            ("max_in_flight", |c| c.max_in_flight = 65_537),
            ("max_request_bytes", |c| c.max_request_bytes = 10),
            ("write_legacy_format", |c| {
                c.encryption_xkey_seed = Zeroizing::new(String::new());
                c.write_legacy_format = true;
            }),
        ];
        for (setting, spoil) in bad {
            let mut config = keyed();
            spoil(&mut config);
            let err = config.validate().expect_err(setting);
            assert!(err.to_string().contains(setting), "{setting}: {err}");
        }
    }
}
