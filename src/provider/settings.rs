//! The provider's configuration: HostData `config` and `secrets` -> a [`RunConfig`].
//!
//! A pure function, so every rule is unit-tested: keys come from secrets (plain config only with
//! `insecure_config_keys = true`), the secrets connection defaults to the lattice's URL and
//! credentials, and every value is checked before anything connects.

use std::collections::HashMap;

use wasmcloud_provider_sdk::core::secrets::SecretValue;
use zeroize::Zeroizing;

use crate::config::provider as keys;
use crate::server::{Credentials, RunConfig};

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
}

/// The lattice connection the host gave the provider (HostData), used as the default for
/// the secrets connection.
#[derive(Default)]
pub struct Lattice<'a> {
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
            run.trusted_issuers = v
                .split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(str::to_string)
                .collect();
        }

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
        })
    }
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
            url: "nats://127.0.0.1:4222",
            ..Default::default()
        }
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
    }

    #[test]
    fn every_documented_key_is_read() {
        let config = map(&[
            (keys::NATS_URL, "nats://10.0.0.1:4222"),
            (keys::BACKEND_NAME, "vault-1"),
            (keys::SUBJECT_BASE, "acme.secrets"),
            (keys::SECRETS_BUCKET, "ACME_SECRETS"),
            (keys::REPLICAS, "3"),
            (keys::TRUSTED_ISSUERS, " AAA , BBB,"),
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
        assert_eq!(s.run.trusted_issuers, vec!["AAA", "BBB"]);
        assert_eq!(s.run.piggybank_prefix.as_deref(), Some("acme.pb"));
        assert!(matches!(
            s.run.nats_credentials,
            Some(Credentials::Contents(_))
        ));
        assert_eq!(s.unknown_keys, vec!["trusted_issuer".to_string()]);
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
