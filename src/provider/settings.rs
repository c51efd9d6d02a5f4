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

pub const DEFAULT_WRPC_CALL_TIMEOUT: Duration = Duration::from_secs(5);
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
}

/// The lattice connection the host gave the provider (HostData), used as the default for
/// the secrets connection.
#[derive(Default)]
pub struct Lattice<'a> {
    /// The lattice's name (HostData `lattice_rpc_prefix`): wRPC subjects start with it.
    pub name: &'a str,
    pub url: &'a str,
    pub user_jwt: &'a str,
    pub user_seed: &'a str,
}

/// What the settings decided, beyond the [`RunConfig`]: things to warn about at start.
pub struct Settings {
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
    pub fn from_host(
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
        run.nats_credentials = match (creds, &explicit_url) {
            (Some(contents), _) => Some(Credentials::Contents(contents)),
            // On the lattice's own server, use the lattice's credentials too.
            (None, None) if !lattice.user_jwt.trim().is_empty() => Some(Credentials::UserJwt {
                jwt: lattice.user_jwt.trim().to_string(),
                seed: Zeroizing::new(lattice.user_seed.trim().to_string()),
            }),
            (None, _) => None,
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
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn seeds() -> HashMap<String, SecretValue> {
        [
            (keys::TRANSIT_XKEY_SEED, "SXTRANSIT"),
            (keys::ENCRYPTION_XKEY_SEED, "SXDATA"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), SecretValue::String(v.to_string())))
        .collect()
    }

    fn lattice() -> Lattice<'static> {
        Lattice {
            name: "default",
            url: "nats://127.0.0.1:4222",
            ..Default::default()
        }
    }

    fn account_key() -> String {
        nkeys::KeyPair::new_account().public_key()
    }

    #[test]
    fn defaults_follow_the_sample_and_the_lattice() {
        let s = Settings::from_host(&map(&[]), &seeds(), &lattice()).unwrap();
        assert_eq!(s.run.name, "nats-kv");
        assert_eq!(s.run.subject_base, "wasmcloud.secrets");
        assert_eq!(s.run.secrets_bucket, "WASMCLOUD_SECRETS");
        assert_eq!(s.run.nats_address, "nats://127.0.0.1:4222");
        assert_eq!(s.run.transit_xkey_seed.as_str(), "SXTRANSIT");
        assert_eq!(s.run.encryption_xkey_seed.as_str(), "SXDATA");
        assert!(s.run.nats_credentials.is_none());
        assert!(!s.insecure_keys && s.unknown_keys.is_empty());
        assert_eq!(s.wrpc_call_timeout, DEFAULT_WRPC_CALL_TIMEOUT);
        assert_eq!(s.run.max_in_flight, crate::config::DEFAULT_MAX_IN_FLIGHT);
        assert_eq!(
            s.run.max_request_bytes,
            crate::config::DEFAULT_MAX_REQUEST_BYTES
        );
        assert!(s.run.reply_prefixes.is_empty());
    }

    #[test]
    fn wrpc_replies_go_only_to_trusted_prefixes_outside_served_trees() {
        let s = Settings::from_host(&map(&[]), &seeds(), &lattice()).unwrap();
        let admitted = |reply: &str| {
            s.wrpc_reply_policy
                .check(Some(&async_nats::Subject::from(reply)))
                .is_ok()
        };
        assert!(admitted("_INBOX.abc.def"));
        for refused in [
            "$KV.WASMCLOUD_SECRETS.x",
            "$KV.SECRETS_nats-kv_state.MABC",
            "$JS.API.STREAM.PURGE.KV_WASMCLOUD_SECRETS",
            "wasmbus.rpc.default.VPROVIDER.linkdefs.put",
            "default.VPROVIDER.wrpc.0.0.1.piggybank:secrets/admin@0.2.0.status",
            "wasmcloud.secrets.v1alpha1.nats-kv.add_mapping.MABC",
            "piggybank.database.lock",
            "orders.created",
        ] {
            assert!(!admitted(refused), "{refused}");
        }
    }

    #[test]
    fn a_bad_trusted_issuer_is_a_startup_error_not_a_warning() {
        let good = account_key();
        for bad in [
            "not-a-key".to_string(),
            format!("{good},AAUUZ7T7WI4Y2WXCIP3OG4SOEOVFZB7RRI72Z2LTBVD7UDJYD5MCALDQ"),
            // A valid key of the wrong kind (an operator's, a component's).
            nkeys::KeyPair::new_operator().public_key(),
            nkeys::KeyPair::new_module().public_key(),
        ] {
            let err = Settings::from_host(
                &map(&[(keys::TRUSTED_ISSUERS, bad.as_str())]),
                &seeds(),
                &lattice(),
            )
            .err()
            .unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(err.to_string().contains("trusted_issuers"), "{err}");
        }
    }

    #[test]
    fn every_documented_key_is_read() {
        let (a, b) = (account_key(), account_key());
        let issuers = format!(" {a} , {b},");
        let config = map(&[
            (keys::WRPC_CALL_TIMEOUT_MS, "750"),
            (keys::MAX_IN_FLIGHT, "8"),
            (keys::MAX_REQUEST_BYTES, "131072"),
            (keys::REPLY_PREFIXES, "_INBOX_ops, _R_."),
            (keys::NATS_URL, "nats://10.0.0.1:4222"),
            (keys::BACKEND_NAME, "vault-1"),
            (keys::SUBJECT_BASE, "acme.secrets"),
            (keys::SECRETS_BUCKET, "ACME_SECRETS"),
            (keys::REPLICAS, "3"),
            (keys::TRUSTED_ISSUERS, issuers.as_str()),
            (keys::PIGGYBANK_PREFIX, "acme.pb"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4318"),
            ("trusted_issuer", "typo"),
        ]);
        let mut secrets = seeds();
        secrets.insert(keys::NATS_CREDS.into(), SecretValue::String("creds".into()));
        let s = Settings::from_host(&config, &secrets, &lattice()).unwrap();
        assert_eq!(s.run.nats_address, "nats://10.0.0.1:4222");
        assert_eq!(s.run.name, "vault-1");
        assert_eq!(s.run.subject_prefix(), "acme.secrets.v1alpha1.vault-1");
        assert_eq!(s.run.secrets_bucket, "ACME_SECRETS");
        assert_eq!(s.run.replicas, 3);
        assert_eq!(s.run.trusted_issuers, vec![a, b]);
        assert_eq!(s.wrpc_call_timeout, Duration::from_millis(750));
        assert_eq!(s.run.max_in_flight, 8);
        assert_eq!(s.run.max_request_bytes, 131_072);
        assert_eq!(s.run.reply_prefixes, ["_INBOX_ops", "_R_."]);
        let admitted = |reply: &str| {
            s.wrpc_reply_policy
                .check(Some(&async_nats::Subject::from(reply)))
                .is_ok()
        };
        // Besides the default `_INBOX.`, which stays trusted.
        assert!(admitted("_INBOX_ops.1") && admitted("_R_.2") && admitted("_INBOX.3"));
        assert!(!admitted("_INBOX_other.4"));
        assert_eq!(s.run.piggybank_prefix.as_deref(), Some("acme.pb"));
        assert!(matches!(
            s.run.nats_credentials,
            Some(Credentials::Contents(_))
        ));
        assert_eq!(s.unknown_keys, vec!["trusted_issuer".to_string()]);
    }

    #[test]
    fn the_database_key_for_auto_unlock_comes_from_a_secret_only() {
        let secret: HashMap<String, SecretValue> = [(
            keys::DATABASE_KEY.to_string(),
            SecretValue::String("KEY".into()),
        )]
        .into();
        let s = Settings::from_host(&HashMap::new(), &secret, &lattice()).unwrap();
        assert_eq!(
            s.run.database_key.as_deref().map(|k| k.as_str()),
            Some("KEY")
        );
        let s = Settings::from_host(&HashMap::new(), &HashMap::new(), &lattice()).unwrap();
        assert!(s.run.database_key.is_none());
        // Never from plain config, even with insecure_config_keys.
        let config = map(&[
            (keys::DATABASE_KEY, "KEY"),
            (keys::INSECURE_CONFIG_KEYS, "true"),
        ]);
        assert_eq!(
            Settings::from_host(&config, &HashMap::new(), &lattice()).err(),
            Some(SettingsError::KeyInConfig(keys::DATABASE_KEY))
        );
    }

    #[test]
    fn drain_timeout_is_bounded() {
        let s = Settings::from_host(
            &map(&[(keys::DRAIN_TIMEOUT_MS, "1500")]),
            &HashMap::new(),
            &lattice(),
        )
        .unwrap();
        assert_eq!(s.run.drain_timeout, Duration::from_millis(1500));
        for bad in ["-1", "lots", "600001"] {
            let refused = Settings::from_host(
                &map(&[(keys::DRAIN_TIMEOUT_MS, bad)]),
                &HashMap::new(),
                &lattice(),
            );
            assert!(refused.is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_in_plain_config_need_the_insecure_flag() {
        let config = map(&[
            (keys::TRANSIT_XKEY_SEED, "SXT"),
            (keys::ENCRYPTION_XKEY_SEED, "SXE"),
        ]);
        let refused = Settings::from_host(&config, &HashMap::new(), &lattice());
        assert_eq!(
            refused.err(),
            Some(SettingsError::KeyInConfig(keys::ENCRYPTION_XKEY_SEED))
        );
        let mut insecure = config.clone();
        insecure.insert(keys::INSECURE_CONFIG_KEYS.into(), "TRUE".into());
        let s = Settings::from_host(&insecure, &HashMap::new(), &lattice()).unwrap();
        assert!(s.insecure_keys);
        assert_eq!(s.run.transit_xkey_seed.as_str(), "SXT");
        // A secret wins over config, and then nothing was insecure.
        let s = Settings::from_host(&insecure, &seeds(), &lattice()).unwrap();
        assert_eq!(s.run.transit_xkey_seed.as_str(), "SXTRANSIT");
        assert!(!s.insecure_keys);
    }

    #[test]
    fn previous_keys_are_optional_secrets() {
        assert!(Settings::from_host(&map(&[]), &seeds(), &lattice())
            .unwrap()
            .run
            .previous_encryption_xkey_seeds
            .is_empty());
        let mut secrets = seeds();
        secrets.insert(
            keys::PREVIOUS_ENCRYPTION_XKEY_SEEDS.into(),
            SecretValue::String("SXOLD1, SXOLD2,".into()),
        );
        let s = Settings::from_host(&map(&[]), &secrets, &lattice()).unwrap();
        let previous: Vec<&str> = s
            .run
            .previous_encryption_xkey_seeds
            .iter()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(previous, ["SXOLD1", "SXOLD2"]);
        let in_config = map(&[(keys::PREVIOUS_ENCRYPTION_XKEY_SEEDS, "SXOLD")]);
        assert_eq!(
            Settings::from_host(&in_config, &seeds(), &lattice()).err(),
            Some(SettingsError::KeyInConfig(
                keys::PREVIOUS_ENCRYPTION_XKEY_SEEDS
            ))
        );
    }

    #[test]
    fn missing_or_binary_keys_are_refused() {
        let only_encryption: HashMap<_, _> = seeds()
            .into_iter()
            .filter(|(k, _)| k == keys::ENCRYPTION_XKEY_SEED)
            .collect();
        assert_eq!(
            Settings::from_host(&map(&[]), &only_encryption, &lattice()).err(),
            Some(SettingsError::MissingKey(keys::TRANSIT_XKEY_SEED))
        );
        // No encryption key at all is sealed mode, with or without a transit key.
        for secrets in [HashMap::new(), {
            let mut t = seeds();
            t.remove(keys::ENCRYPTION_XKEY_SEED);
            t
        }] {
            let s = Settings::from_host(&map(&[]), &secrets, &lattice()).unwrap();
            assert!(s.run.is_sealed_mode());
        }
        let mut binary = seeds();
        binary.insert(
            keys::TRANSIT_XKEY_SEED.into(),
            SecretValue::Bytes(vec![1, 2]),
        );
        assert_eq!(
            Settings::from_host(&map(&[]), &binary, &lattice()).err(),
            Some(SettingsError::NotText(keys::TRANSIT_XKEY_SEED))
        );
    }

    #[test]
    fn bad_values_are_refused_with_the_key_named() {
        for (key, value) in [
            (keys::REPLICAS, "0"),
            (keys::REPLICAS, "three"),
            (keys::BACKEND_NAME, "a.b"),
            (keys::BACKEND_NAME, "*"),
            (keys::SUBJECT_BASE, "a..b"),
            (keys::SUBJECT_BASE, "a.>"),
            (keys::SECRETS_BUCKET, ""),
            (keys::INSECURE_CONFIG_KEYS, "yes"),
            (keys::MAX_IN_FLIGHT, "0"),
            (keys::MAX_IN_FLIGHT, "lots"),
            (keys::MAX_REQUEST_BYTES, "1023"),
            (keys::MAX_REQUEST_BYTES, "67108865"),
            (keys::MAX_REQUEST_BYTES, "64k"),
            (keys::WRPC_CALL_TIMEOUT_MS, "0"),
            (keys::WRPC_CALL_TIMEOUT_MS, "5s"),
            (keys::WRPC_CALL_TIMEOUT_MS, "600001"),
            (keys::REPLY_PREFIXES, "$KV"),
            (keys::REPLY_PREFIXES, "_INBOX,wasmbus"),
            (keys::REPLY_PREFIXES, "default"),
            (keys::REPLY_PREFIXES, "piggybank"),
            (keys::REPLY_PREFIXES, "a.>"),
        ] {
            let err = Settings::from_host(&map(&[(key, value)]), &seeds(), &lattice())
                .err()
                .unwrap_or_else(|| panic!("{key}={value} was accepted"));
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn secrets_connection_reuses_lattice_credentials_only_on_the_lattice_server() {
        let lattice = Lattice {
            name: "default",
            url: "nats://lattice:4222",
            user_jwt: "eyJ.jwt",
            user_seed: "SUSEED",
        };
        let s = Settings::from_host(&map(&[]), &seeds(), &lattice).unwrap();
        assert_eq!(s.run.nats_address, "nats://lattice:4222");
        assert!(matches!(
            s.run.nats_credentials,
            Some(Credentials::UserJwt { .. })
        ));
        let elsewhere = map(&[(keys::NATS_URL, "nats://other:4222")]);
        let s = Settings::from_host(&elsewhere, &seeds(), &lattice).unwrap();
        assert!(s.run.nats_credentials.is_none());
        let no_lattice = Settings::from_host(&map(&[]), &seeds(), &Lattice::default()).unwrap();
        assert_eq!(no_lattice.run.nats_address, keys::DEFAULT_NATS_URL);
    }

    #[test]
    fn tls_and_the_jetstream_domain_come_from_config() {
        let s = Settings::from_host(&map(&[]), &seeds(), &lattice()).unwrap();
        assert_eq!(s.run.nats_tls, NatsTls::default());
        assert_eq!(s.run.js_domain, None);
        let config = map(&[
            (keys::TLS_CA_FILE, "/etc/nats/ca.pem"),
            (keys::TLS_CERT_FILE, "/etc/nats/cert.pem"),
            (keys::TLS_KEY_FILE, "/etc/nats/key.pem"),
            (keys::TLS_FIRST, "true"),
            (keys::JS_DOMAIN, "hub"),
        ]);
        let s = Settings::from_host(&config, &seeds(), &lattice()).unwrap();
        assert_eq!(
            s.run.nats_tls,
            NatsTls {
                ca_file: Some("/etc/nats/ca.pem".into()),
                cert_file: Some("/etc/nats/cert.pem".into()),
                key_file: Some("/etc/nats/key.pem".into()),
                handshake_first: true,
            }
        );
        assert_eq!(s.run.js_domain.as_deref(), Some("hub"));
        assert!(s.unknown_keys.is_empty(), "{:?}", s.unknown_keys);
        for (key, value) in [
            (keys::TLS_CERT_FILE, "/c.pem"),
            (keys::TLS_KEY_FILE, "/k.pem"),
            (keys::TLS_FIRST, "yes"),
            (keys::JS_DOMAIN, "a.b"),
        ] {
            let err = Settings::from_host(&map(&[(key, value)]), &seeds(), &lattice())
                .err()
                .unwrap_or_else(|| panic!("{key}={value} was accepted"));
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn creds_in_config_are_accepted_and_flagged() {
        let config = map(&[(keys::NATS_CREDS, "contents")]);
        let s = Settings::from_host(&config, &seeds(), &lattice()).unwrap();
        assert!(s.creds_in_config);
        assert!(matches!(
            s.run.nats_credentials,
            Some(Credentials::Contents(_))
        ));
    }
}
