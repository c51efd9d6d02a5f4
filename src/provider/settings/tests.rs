//! The provider's settings from HostData: every key, every refusal.

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

#[test]
fn the_piggy_bank_api_keys_are_read_and_checked() {
    let s = Settings::from_host(
        &map(&[
            (keys::APP_INBOXES, "foo=foo.secrets, bar=bar.in"),
            (keys::SHARE_WITH_API, "shop=shop/db:rw"),
            (keys::READ_ONLY_APPS, "global"),
        ]),
        &HashMap::new(),
        &lattice(),
    )
    .unwrap();
    let inboxes: Vec<_> = s
        .run
        .app_inboxes
        .iter()
        .map(|i| i.prefix.as_str())
        .collect();
    assert_eq!(inboxes, ["foo.secrets.", "bar.in."]);
    assert!(s.run.piggybank_access.is_read_only("global"));
    assert_eq!(s.run.piggybank_access.resolve("shop", "db").key, "shop/db");
    for (key, bad) in [
        (keys::APP_INBOXES, "foo"),
        (keys::SHARE_WITH_API, "shop=_api/x"),
        (keys::READ_ONLY_APPS, "a.b"),
    ] {
        let refused = Settings::from_host(&map(&[(key, bad)]), &HashMap::new(), &lattice());
        assert!(refused.is_err(), "{key}={bad}");
    }
}

/// The backend role's seed that `piggybank nats-config` writes is the provider's NATS
/// identity under the generated layout: a secret only, and one way to authenticate.
#[test]
fn an_nkey_seed_is_taken_from_a_secret_only_and_never_with_creds() {
    let seed = nkeys::KeyPair::new_user().seed().unwrap();
    let mut secrets = seeds();
    secrets.insert(keys::NATS_NKEY.into(), SecretValue::String(seed.clone()));
    let s = Settings::from_host(&map(&[]), &secrets, &lattice()).unwrap();
    assert!(matches!(s.run.nats_credentials, Some(Credentials::Nkey(_))));
    assert!(!format!("{:?}", s.run.nats_credentials).contains(&seed));

    let in_config = Settings::from_host(&map(&[(keys::NATS_NKEY, &seed)]), &seeds(), &lattice());
    assert_eq!(
        in_config.err(),
        Some(SettingsError::KeyInConfig(keys::NATS_NKEY))
    );
    secrets.insert(keys::NATS_CREDS.into(), SecretValue::String("creds".into()));
    assert_eq!(
        Settings::from_host(&map(&[]), &secrets, &lattice()).err(),
        Some(SettingsError::TwoCredentials)
    );
}
