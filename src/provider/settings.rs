//! The provider's configuration: HostData `config` and `secrets` -> a [`RunConfig`].
//!
//! A pure function, so every rule is unit-tested: keys come from secrets (plain config only with
//! `insecure_config_keys = true`), the secrets connection defaults to the lattice's URL and
//! credentials, and every value is checked before anything connects.

use std::collections::HashMap;
use std::time::Duration;

use wasmcloud_provider_sdk::core::secrets::SecretValue;
use zeroize::Zeroizing;

use crate::config::provider as keys;
use crate::config::RunConfig;
use crate::connect::{Credentials, NatsTls};
use crate::reply_policy::ReplyPolicy;

pub(crate) const DEFAULT_WRPC_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Bounds of `wrpc_call_timeout_ms`: a host's own default `max_execution_time` is 10 min.
const WRPC_CALL_TIMEOUT_RANGE_MS: std::ops::RangeInclusive<u64> = 1..=600_000;
/// Most `drain_timeout_ms` may be.
const DRAIN_TIMEOUT_MAX_MS: u64 = 600_000;
/// Subject trees of the lattice the provider never replies into, whatever the reply
/// prefixes: the hosts' control and RPC subjects.
const LATTICE_CONTROL_TREE: &str = "wasmbus";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error(
        "missing secret {0:?}: give the provider its keys through a secrets policy \
         (or, for development only, as config with insecure_config_keys = true)"
    )]
    MissingKey(&'static str),
    #[error(
        "{0:?} was given as plain config, which anyone who can read the lattice's config can \
         read; pass it as a secret, or set insecure_config_keys = true"
    )]
    KeyInConfig(&'static str),
    #[error("give one of the secrets \"nats_creds\" and \"nats_nkey\", not both")]
    TwoCredentials,
    #[error("secret {0:?} must be text, not bytes")]
    NotText(&'static str),
    #[error("config {key:?} = {value:?} is invalid: {why}")]
    Invalid {
        key: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("config \"reply_prefixes\" is invalid: {0}")]
    ReplyPrefixes(String),
    #[error("config {0:?} is invalid: {1}")]
    Api(&'static str, String),
}

/// The lattice connection the host gave the provider (HostData), used as the default for
/// the secrets connection.
#[derive(Default)]
pub(crate) struct Lattice<'a> {
    /// The lattice's name (HostData `lattice_rpc_prefix`): wRPC subjects start with it.
    pub name: &'a str,
    pub url: &'a str,
    pub user_jwt: &'a str,
    pub user_seed: &'a str,
}

/// What the settings decided, beyond the [`RunConfig`]: things to warn about at start.
pub(crate) struct Settings {
    pub run: RunConfig,
    /// Config keys that are not piggybank's (a typo is worth a warning).
    pub unknown_keys: Vec<String>,
    /// The seeds were taken from plain config (`insecure_config_keys = true`).
    pub insecure_keys: bool,
    /// `nats_creds` was taken from plain config.
    pub creds_in_config: bool,
    /// The time limit of one wRPC invocation.
    pub wrpc_call_timeout: Duration,
    /// Where wRPC results may go: `run.reply_prefixes`, and never into a tree the provider
    /// serves or the lattice's control and RPC subjects.
    pub wrpc_reply_policy: ReplyPolicy,
}

impl Settings {
    pub(crate) fn from_host(
        config: &HashMap<String, String>,
        secrets: &HashMap<String, SecretValue>,
        lattice: &Lattice<'_>,
    ) -> Result<Self, SettingsError> {
        let insecure = parse_bool(config, keys::INSECURE_CONFIG_KEYS)?.unwrap_or(false);
        let key = |name: &'static str| -> Result<Zeroizing<String>, SettingsError> {
            if let Some(value) = secret_text(secrets, name)? {
                return Ok(value);
            }
            match config.get(name) {
                Some(value) if insecure => Ok(Zeroizing::new(value.trim().to_string())),
                Some(_) => Err(SettingsError::KeyInConfig(name)),
                None => Err(SettingsError::MissingKey(name)),
            }
        };
        // No encryption key: Piggy Bank's sealed mode, where the transit key is optional too.
        let optional = |name| match key(name) {
            Err(SettingsError::MissingKey(_)) => Ok(Zeroizing::new(String::new())),
            other => other,
        };
        let encryption = optional(keys::ENCRYPTION_XKEY_SEED)?;
        let transit = if encryption.is_empty() {
            optional(keys::TRANSIT_XKEY_SEED)?
        } else {
            key(keys::TRANSIT_XKEY_SEED)?
        };
        let insecure_keys = insecure
            && (!secrets.contains_key(keys::TRANSIT_XKEY_SEED)
                || !secrets.contains_key(keys::ENCRYPTION_XKEY_SEED));

        let mut run = RunConfig::new(encryption, transit);
        // Optional, during a data key change; the same secrets-first rule as the keys.
        let previous = match key(keys::PREVIOUS_ENCRYPTION_XKEY_SEEDS) {
            Ok(seeds) => Some(seeds),
            Err(SettingsError::MissingKey(_)) => None,
            Err(e) => return Err(e),
        };
        run.previous_encryption_xkey_seeds = previous
            .iter()
            .flat_map(|seeds| seeds.split(','))
            .map(|s| Zeroizing::new(s.trim().to_string()))
            .filter(|s| !s.is_empty())
            .collect();
        // Sealed mode's auto-unlock: the database key, from a secret only (never config).
        run.database_key = match secret_text(secrets, keys::DATABASE_KEY)? {
            Some(key) if !key.is_empty() => Some(key),
            _ if config.contains_key(keys::DATABASE_KEY) => {
                return Err(SettingsError::KeyInConfig(keys::DATABASE_KEY))
            }
            _ => None,
        };
        let text = |name: &'static str| config.get(name).map(|v| v.trim().to_string());
        if let Some(v) = text(keys::BACKEND_NAME) {
            run.name = token(keys::BACKEND_NAME, v)?;
        }
        if let Some(v) = text(keys::SUBJECT_BASE) {
            run.subject_base = subject(keys::SUBJECT_BASE, v)?;
        }
        if let Some(v) = text(keys::SECRETS_BUCKET) {
            run.secrets_bucket = token(keys::SECRETS_BUCKET, v)?;
        }
        if let Some(v) = text(keys::REPLICAS) {
            run.replicas = match v.parse::<usize>() {
                Ok(n) if (1..=5).contains(&n) => n,
                _ => return Err(invalid(keys::REPLICAS, v, "expected 1 to 5")),
            };
        }
        run.audit.enabled = !parse_bool(config, keys::NO_AUDIT)?.unwrap_or(false);
        run.audit.required = parse_bool(config, keys::AUDIT_REQUIRED)?.unwrap_or(false);
        if run.audit.required && !run.audit.enabled {
            return Err(invalid(
                keys::AUDIT_REQUIRED,
                "true".into(),
                "audit_required needs the audit trail (no_audit is true)",
            ));
        }
        let positive = |key: &'static str| -> Result<Option<u64>, SettingsError> {
            text(key)
                .map(|v| match v.parse::<u64>() {
                    Ok(n) if n > 0 => Ok(n),
                    _ => Err(invalid(key, v, "expected a positive whole number")),
                })
                .transpose()
        };
        if let Some(secs) = positive(keys::AUDIT_MAX_AGE_SECS)? {
            run.audit.max_age = Duration::from_secs(secs);
        }
        let bytes = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        if let Some(n) = positive(keys::AUDIT_MAX_BYTES)? {
            run.audit.max_bytes = bytes(n);
        }
        if let Some(n) = positive(keys::AUDIT_REFUSALS_MAX_BYTES)? {
            run.audit.refusals_max_bytes = bytes(n);
        }
        run.audit.replicas = match text(keys::AUDIT_REPLICAS) {
            None => run.replicas,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=5).contains(&n) => n,
                _ => return Err(invalid(keys::AUDIT_REPLICAS, v, "expected 1 to 5")),
            },
        };
        if let Some(v) = text(keys::PIGGYBANK_PREFIX).filter(|v| !v.is_empty()) {
            run.piggybank_prefix = Some(subject(keys::PIGGYBANK_PREFIX, v)?);
        }
        if let Some(v) = text(keys::TRUSTED_ISSUERS) {
            run.trusted_issuers = list(&v);
            // A key that is not an account key must not silently turn the check off.
            if let Some(bad) = run.trusted_issuers.iter().find(|k| !is_account_key(k)) {
                return Err(invalid(
                    keys::TRUSTED_ISSUERS,
                    bad.clone(),
                    "expected comma-separated account public keys (A...)",
                ));
            }
        }
        run.sealed_keys_only = parse_bool(config, keys::SEALED_KEYS_ONLY)?.unwrap_or(false);
        if let Some(v) = text(keys::ADMIN_KEYS) {
            // A malformed key is an error, never a silently unauthenticated admin API.
            use crate::admin_auth::{parse_admin_keys, AdminKeyError};
            run.admin_keys = parse_admin_keys(&list(&v)).map_err(|e| {
                let shown = match e {
                    AdminKeyError::Invalid { key, .. } => key,
                    // Never echo a seed.
                    AdminKeyError::SeedGiven | AdminKeyError::BadSeed => "<a seed>".into(),
                };
                invalid(
                    keys::ADMIN_KEYS,
                    shown,
                    "expected comma-separated nkey user public keys (U...), never a seed",
                )
            })?;
        }
        if let Some(v) = text(keys::MAX_IN_FLIGHT) {
            run.max_in_flight = match v.parse::<usize>() {
                Ok(n) if crate::config::MAX_IN_FLIGHT_RANGE.contains(&n) => n,
                _ => return Err(invalid(keys::MAX_IN_FLIGHT, v, "expected 1 to 65536")),
            };
        }
        if let Some(v) = text(keys::MAX_REQUEST_BYTES) {
            run.max_request_bytes = match v.parse::<usize>() {
                Ok(n) if crate::config::MAX_REQUEST_BYTES_RANGE.contains(&n) => n,
                _ => {
                    return Err(invalid(
                        keys::MAX_REQUEST_BYTES,
                        v,
                        "expected bytes, 1024 to 67108864",
                    ))
                }
            };
        }
        let wrpc_call_timeout = match text(keys::WRPC_CALL_TIMEOUT_MS) {
            None => DEFAULT_WRPC_CALL_TIMEOUT,
            Some(v) => match v.parse::<u64>() {
                Ok(ms) if WRPC_CALL_TIMEOUT_RANGE_MS.contains(&ms) => Duration::from_millis(ms),
                _ => {
                    return Err(invalid(
                        keys::WRPC_CALL_TIMEOUT_MS,
                        v,
                        "expected milliseconds, 1 to 600000",
                    ))
                }
            },
        };
        if let Some(v) = text(keys::REPLY_PREFIXES) {
            run.reply_prefixes = list(&v);
        }
        if let Some(v) = text(keys::APP_INBOXES) {
            run.app_inboxes = list(&v)
                .iter()
                .map(|i| i.parse())
                .collect::<Result<_, String>>()
                .map_err(|why| SettingsError::Api(keys::APP_INBOXES, why))?;
        }
        let shares = match text(keys::SHARE_WITH_API) {
            Some(v) => list(&v)
                .iter()
                .map(|s| s.parse())
                .collect::<Result<Vec<_>, String>>()
                .map_err(|why| SettingsError::Api(keys::SHARE_WITH_API, why))?,
            None => Vec::new(),
        };
        let read_only = text(keys::READ_ONLY_APPS)
            .map(|v| list(&v))
            .unwrap_or_default();
        run.piggybank_access = crate::config::ApiAccess::new(&shares, &read_only)
            .map_err(|why| SettingsError::Api(keys::SHARE_WITH_API, why))?;
        if let Some(v) = text(keys::DRAIN_TIMEOUT_MS) {
            run.drain_timeout = match v.parse::<u64>() {
                Ok(ms) if ms <= DRAIN_TIMEOUT_MAX_MS => Duration::from_millis(ms),
                _ => {
                    return Err(invalid(
                        keys::DRAIN_TIMEOUT_MS,
                        v,
                        "expected milliseconds, 0 to 600000",
                    ))
                }
            };
        }
        let mut served = vec![run.subject_prefix(), run.database_prefix().to_string()];
        served.extend(run.piggybank_prefix.clone());
        served.push(LATTICE_CONTROL_TREE.to_string());
        // `{lattice}.{target}.wrpc...`: every component's and provider's wRPC subjects.
        served.extend(
            Some(lattice.name.trim())
                .filter(|n| !n.is_empty())
                .map(str::to_string),
        );
        let wrpc_reply_policy =
            ReplyPolicy::new(&run.reply_prefixes, &served).map_err(SettingsError::ReplyPrefixes)?;

        let explicit_url = text(keys::NATS_URL).filter(|u| !u.is_empty());
        let creds_secret = secret_text(secrets, keys::NATS_CREDS)?;
        let creds_in_config = creds_secret.is_none() && config.contains_key(keys::NATS_CREDS);
        let creds = creds_secret.or_else(|| {
            config
                .get(keys::NATS_CREDS)
                .map(|c| Zeroizing::new(c.clone()))
        });
        let nkey = secret_text(secrets, keys::NATS_NKEY)?;
        if nkey.is_none() && config.contains_key(keys::NATS_NKEY) {
            return Err(SettingsError::KeyInConfig(keys::NATS_NKEY));
        }
        run.nats_credentials = match (creds, nkey, &explicit_url) {
            (Some(_), Some(_), _) => return Err(SettingsError::TwoCredentials),
            (None, Some(seed), _) => Some(Credentials::Nkey(seed)),
            (Some(contents), None, _) => Some(Credentials::Contents(contents)),
            // On the lattice's own server, use the lattice's credentials too.
            (None, None, None) if !lattice.user_jwt.trim().is_empty() => {
                Some(Credentials::UserJwt {
                    jwt: lattice.user_jwt.trim().to_string(),
                    seed: Zeroizing::new(lattice.user_seed.trim().to_string()),
                })
            }
            (None, None, _) => None,
        };
        run.nats_address = match explicit_url {
            Some(url) => url,
            None if !lattice.url.trim().is_empty() => lattice.url.trim().to_string(),
            None => keys::DEFAULT_NATS_URL.to_string(),
        };
        // HostData carries no TLS files and no JetStream domain (a `tls://` lattice URL
        // still turns TLS on, with the system's roots): these come from config.
        let file = |key| text(key).filter(|v| !v.is_empty()).map(Into::into);
        run.nats_tls = NatsTls {
            ca_file: file(keys::TLS_CA_FILE),
            cert_file: file(keys::TLS_CERT_FILE),
            key_file: file(keys::TLS_KEY_FILE),
            handshake_first: parse_bool(config, keys::TLS_FIRST)?.unwrap_or(false),
        };
        match (&run.nats_tls.cert_file, &run.nats_tls.key_file) {
            (Some(cert), None) => {
                return Err(invalid(
                    keys::TLS_CERT_FILE,
                    cert.display().to_string(),
                    "a client certificate needs its key: set tls_key_file too",
                ))
            }
            (None, Some(key)) => {
                return Err(invalid(
                    keys::TLS_KEY_FILE,
                    key.display().to_string(),
                    "a client key needs its certificate: set tls_cert_file too",
                ))
            }
            _ => {}
        }
        if let Some(v) = text(keys::JS_DOMAIN).filter(|v| !v.is_empty()) {
            run.js_domain = Some(token(keys::JS_DOMAIN, v)?);
        }

        let unknown_keys = config
            .keys()
            .filter(|k| !keys::CONFIG_KEYS.contains(&k.as_str()))
            // The SDK reads OpenTelemetry overrides from the same config.
            .filter(|k| !k.to_ascii_lowercase().starts_with("otel_"))
            .cloned()
            .collect();
        Ok(Settings {
            run,
            unknown_keys,
            insecure_keys,
            creds_in_config,
            wrpc_call_timeout,
            wrpc_reply_policy,
        })
    }
}

/// Comma-separated values, trimmed, empty ones dropped.
fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_string)
        .collect()
}

fn is_account_key(key: &str) -> bool {
    nkeys::KeyPair::from_public_key(key)
        .is_ok_and(|kp| kp.key_pair_type() == nkeys::KeyPairType::Account)
}

fn secret_text(
    secrets: &HashMap<String, SecretValue>,
    name: &'static str,
) -> Result<Option<Zeroizing<String>>, SettingsError> {
    match secrets.get(name) {
        None => Ok(None),
        Some(SecretValue::String(s)) => Ok(Some(Zeroizing::new(s.trim().to_string()))),
        Some(SecretValue::Bytes(_)) => Err(SettingsError::NotText(name)),
    }
}

fn invalid(key: &'static str, value: String, why: &'static str) -> SettingsError {
    SettingsError::Invalid { key, value, why }
}

/// `true` or `false` (any case); absent is `None`.
pub(crate) fn parse_bool(
    config: &HashMap<String, String>,
    key: &'static str,
) -> Result<Option<bool>, SettingsError> {
    let Some(value) = config.get(key) else {
        return Ok(None);
    };
    match value.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(Some(true)),
        "false" => Ok(Some(false)),
        _ => Err(invalid(key, value.clone(), "expected true or false")),
    }
}

/// One subject token (also a valid bucket name): `[A-Za-z0-9_-]+`.
fn token(key: &'static str, value: String) -> Result<String, SettingsError> {
    let ok = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(value)
    } else {
        Err(invalid(key, value, "use letters, digits, '-' and '_'"))
    }
}

/// Dot-separated tokens, no wildcards.
fn subject(key: &'static str, value: String) -> Result<String, SettingsError> {
    let ok = value.split('.').all(|t| {
        !t.is_empty()
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    });
    if ok {
        Ok(value)
    } else {
        Err(invalid(
            key,
            value,
            "expected dot-separated tokens of letters, digits, '-' and '_'",
        ))
    }
}

#[cfg(test)]
mod tests;
