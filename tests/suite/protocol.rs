//! The wasmCloud secrets protocol, end to end: the real `wasmcloud-secrets-client` (what
//! hosts use) against piggybank on a real nats-server, with wascap-minted JWTs.

use crate::common::*;
use piggybank::client::ClientError;
use piggybank::store::envelope::SecretKind;

#[tokio::test]
async fn server_xkey_is_the_transit_public_key() {
    let Deployed {
        nats: _nats,
        keys,
        backend: _backend,
        admin,
    } = deployed().await;
    assert_eq!(admin.server_xkey().await.unwrap(), keys.transit_public());
}

#[tokio::test]
async fn mapped_component_and_provider_get_their_secrets() {
    let Deployed {
        nats,
        keys: _,
        backend: _backend,
        admin,
    } = deployed().await;
    let issuer = Issuer::new();
    let (component_jwt, component) = issuer.component();
    let (provider_jwt, provider) = issuer.provider();

    let v1 = admin
        .put_secret("db_password", text("hunter2"), None, None)
        .await
        .unwrap();
    admin
        .put_secret("tls_key", bytes(&[0, 159, 146, 150, 255]), None, None)
        .await
        .unwrap();
    admin
        .add_mapping(&component, &names(&["db_password"]))
        .await
        .unwrap();
    admin
        .add_mapping(&provider, &names(&["db_password", "tls_key"]))
        .await
        .unwrap();

    let host = host_client(&nats).await;
    let secret = host_get(&host, request("db_password", &component_jwt))
        .await
        .unwrap();
    assert_eq!(secret.string_secret.as_deref(), Some("hunter2"));
    assert_eq!(secret.binary_secret, None);
    assert_eq!(secret.version, v1.to_string());

    let secret = host_get(&host, request("tls_key", &provider_jwt))
        .await
        .unwrap();
    assert_eq!(
        secret.binary_secret.as_deref(),
        Some(&[0u8, 159, 146, 150, 255][..])
    );
    assert_eq!(secret.string_secret, None);

    // The component is not mapped to tls_key.
    let denied = host_refusal(&host, request("tls_key", &component_jwt)).await;
    assert!(denied.contains("unauthorized"), "{denied}");
}

#[tokio::test]
async fn versions_select_kv_revisions() {
    let Deployed {
        nats,
        keys: _,
        backend: _backend,
        admin,
    } = deployed().await;
    let issuer = Issuer::new();
    let (jwt, subject) = issuer.component();
    let v1 = admin
        .put_secret("api", text("one"), None, None)
        .await
        .unwrap();
    let v2 = admin
        .put_secret("api", text("two"), None, None)
        .await
        .unwrap();
    admin.add_mapping(&subject, &names(&["api"])).await.unwrap();
    let host = host_client(&nats).await;

    let latest = host_get(&host, request("api", &jwt)).await.unwrap();
    assert_eq!(
        (latest.version.as_str(), latest.string_secret.as_deref()),
        (v2.to_string().as_str(), Some("two"))
    );
    let mut old = request("api", &jwt);
    old.version = Some(v1.to_string());
    let old = host_get(&host, old).await.unwrap();
    assert_eq!(
        (old.version, old.string_secret.as_deref()),
        (v1.to_string(), Some("one"))
    );

    for missing in [v2 + 100, 0] {
        let mut req = request("api", &jwt);
        req.version = Some(missing.to_string());
        let err = host_refusal(&host, req).await;
        assert!(err.contains("Secret not found"), "{missing}: {err}");
    }
    // A revision that belongs to another key is not this secret's version.
    let other = admin
        .put_secret("other", text("x"), None, None)
        .await
        .unwrap();
    let mut req = request("api", &jwt);
    req.version = Some(other.to_string());
    assert!(host_refusal(&host, req).await.contains("Secret not found"));
}

#[tokio::test]
async fn field_selects_a_member_of_a_json_secret() {
    let Deployed {
        nats,
        keys: _,
        backend: _backend,
        admin,
    } = deployed().await;
    let (jwt, subject) = Issuer::new().component();
    admin
        .put_secret(
            "db",
            text(r#"{"user":"app","password":"pw","port":5432}"#),
            None,
            None,
        )
        .await
        .unwrap();
    admin
        .put_secret("plain", text("not json"), None, None)
        .await
        .unwrap();
    admin
        .add_mapping(&subject, &names(&["db", "plain"]))
        .await
        .unwrap();
    let host = host_client(&nats).await;

    let get_field = |key: &str, field: &str| {
        let mut r = request(key, &jwt);
        r.field = Some(field.to_string());
        r
    };
    let pw = host_get(&host, get_field("db", "password")).await.unwrap();
    assert_eq!(pw.string_secret.as_deref(), Some("pw"));
    let port = host_get(&host, get_field("db", "port")).await.unwrap();
    assert_eq!(port.string_secret.as_deref(), Some("5432"));
    let missing = host_refusal(&host, get_field("db", "nope")).await;
    assert!(missing.contains("no field \"nope\""), "{missing}");
    let not_object = host_refusal(&host, get_field("plain", "x")).await;
    assert!(not_object.contains("not a JSON object"), "{not_object}");
}

#[tokio::test]
async fn admin_operations_list_delete_and_show_mappings() {
    let Deployed {
        nats: _nats,
        keys: _,
        backend: _backend,
        admin,
    } = deployed().await;
    let (_, subject) = Issuer::new().component();

    admin
        .put_secret("app/a", text("1"), None, None)
        .await
        .unwrap();
    let b2 = {
        admin
            .put_secret("app/b", bytes(b"xyz"), None, None)
            .await
            .unwrap();
        admin
            .put_secret("app/b", bytes(b"xyz2"), None, None)
            .await
            .unwrap()
    };
    admin
        .put_secret("other", text("3"), None, None)
        .await
        .unwrap();

    let listed = admin.list_secrets("app/").await.unwrap();
    assert_eq!(
        listed.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
        ["app/a", "app/b"]
    );
    assert_eq!(listed[1].kind, SecretKind::Binary);
    assert_eq!(listed[1].version, b2);
    assert!(listed[1].created_at.is_some());
    let parse = |t: &str| {
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).unwrap()
    };
    let created = parse(listed[1].created_at.as_deref().unwrap());
    let updated = parse(&listed[1].updated_at);
    assert!(created <= updated, "{created} <= {updated}");
    let json = serde_json::to_string(&listed).unwrap();
    assert!(
        !json.contains("xyz"),
        "list must never carry values: {json}"
    );
    assert_eq!(admin.list_secrets("").await.unwrap().len(), 3);

    admin
        .add_mapping(&subject, &names(&["app/a", "app/b"]))
        .await
        .unwrap();
    assert_eq!(
        admin.get_mappings(&subject).await.unwrap(),
        ["app/a", "app/b"]
    );
    admin
        .remove_mapping(&subject, &names(&["app/a"]))
        .await
        .unwrap();
    assert_eq!(admin.get_mappings(&subject).await.unwrap(), ["app/b"]);

    admin.delete_secret("app/a").await.unwrap();
    assert_eq!(admin.list_secrets("app/").await.unwrap().len(), 1);
    match admin.delete_secret("app/a").await {
        Err(ClientError::Admin { code: 404, .. }) => {}
        other => panic!("deleting twice must be 404, got {other:?}"),
    }
}

#[tokio::test]
async fn put_version_is_a_compare_and_set() {
    let Deployed {
        nats: _nats,
        keys: _,
        backend: _backend,
        admin,
    } = deployed().await;

    let v1 = admin
        .put_secret("cas", text("a"), Some(0), None)
        .await
        .unwrap();
    assert!(matches!(
        admin.put_secret("cas", text("b"), Some(0), None).await,
        Err(ClientError::Put(
            piggybank::protocol::wire::PutSecretError::VersionConflict(_)
        ))
    ));
    let v2 = admin
        .put_secret("cas", text("b"), Some(v1), None)
        .await
        .unwrap();
    assert!(v2 > v1);
    assert!(matches!(
        admin.put_secret("cas", text("c"), Some(v1), None).await,
        Err(ClientError::Put(
            piggybank::protocol::wire::PutSecretError::VersionConflict(_)
        ))
    ));
}

#[tokio::test]
async fn trusted_issuers_refuse_other_signers() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let trusted = Issuer::new();
    let stranger = Issuer::new();
    let mut cfg = config(&nats, &keys);
    cfg.trusted_issuers = vec![trusted.public_key()];
    let _b = start_backend(&nats, cfg).await;
    let admin = admin(nats.client().await);
    let (good_jwt, good) = trusted.component();
    let (bad_jwt, bad) = stranger.component();
    admin.put_secret("s", text("v"), None, None).await.unwrap();
    admin.add_mapping(&good, &names(&["s"])).await.unwrap();
    admin.add_mapping(&bad, &names(&["s"])).await.unwrap();

    let host = host_client(&nats).await;
    assert_eq!(
        host_get(&host, request("s", &good_jwt))
            .await
            .unwrap()
            .string_secret
            .as_deref(),
        Some("v")
    );
    let err = host_refusal(&host, request("s", &bad_jwt)).await;
    assert!(err.contains("unauthorized"), "{err}");
}

#[tokio::test]
async fn unmapped_gets_unauthorized_whether_or_not_the_secret_exists() {
    let Deployed {
        nats,
        keys: _,
        backend: _backend,
        admin,
    } = deployed().await;
    let (jwt, _) = Issuer::new().component();
    admin
        .put_secret("exists", text("v"), None, None)
        .await
        .unwrap();
    let host = host_client(&nats).await;
    let a = host_refusal(&host, request("exists", &jwt)).await;
    let b = host_refusal(&host, request("does-not-exist", &jwt)).await;
    assert_eq!(a, b);
    assert!(a.contains("unauthorized"));
}

/// Binary secrets come back as they were put, byte for byte (the sample backend returned
/// them still encrypted).
#[tokio::test]
async fn binary_secrets_come_back_byte_exact() {
    let Deployed {
        nats,
        keys: _,
        backend: _backend,
        admin,
    } = deployed().await;
    let (jwt, subject) = Issuer::new().provider();
    let all_bytes: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    admin
        .put_secret("blob", bytes(&all_bytes), None, None)
        .await
        .unwrap();
    admin
        .put_secret("empty", bytes(&[]), None, None)
        .await
        .unwrap();
    admin
        .add_mapping(&subject, &names(&["blob", "empty"]))
        .await
        .unwrap();
    let host = host_client(&nats).await;
    let got = host_get(&host, request("blob", &jwt)).await.unwrap();
    assert_eq!(got.binary_secret.as_deref(), Some(&all_bytes[..]));
    let got = host_get(&host, request("empty", &jwt)).await.unwrap();
    assert_eq!(got.binary_secret.as_deref(), Some(&[][..]));
}

/// A secret comes back as the kind it was put as: UTF-8 bytes stay binary (the sample backend
/// stored no kind, and guessed).
#[tokio::test]
async fn the_kind_is_recorded_never_guessed() {
    let Deployed {
        nats,
        keys: _,
        backend: _backend,
        admin,
    } = deployed().await;
    let (jwt, subject) = Issuer::new().component();
    admin
        .put_secret("utf8-bytes", bytes(b"looks like text"), None, None)
        .await
        .unwrap();
    admin
        .put_secret("text", text("is text"), None, None)
        .await
        .unwrap();
    admin
        .add_mapping(&subject, &names(&["utf8-bytes", "text"]))
        .await
        .unwrap();
    let host = host_client(&nats).await;
    let b = host_get(&host, request("utf8-bytes", &jwt)).await.unwrap();
    assert_eq!(b.binary_secret.as_deref(), Some(&b"looks like text"[..]));
    assert_eq!(b.string_secret, None);
    let s = host_get(&host, request("text", &jwt)).await.unwrap();
    assert_eq!(s.string_secret.as_deref(), Some("is text"));
    assert_eq!(s.binary_secret, None);
}

/// A deleted secret is "not found", in its latest version and every older one (the sample
/// backend answered a decryption error).
#[tokio::test]
async fn a_deleted_secret_is_not_found_in_every_version() {
    let Deployed {
        nats,
        keys: _,
        backend: _backend,
        admin,
    } = deployed().await;
    let (jwt, subject) = Issuer::new().component();
    let v1 = admin
        .put_secret("gone", text("v1"), None, None)
        .await
        .unwrap();
    admin
        .put_secret("gone", text("v2"), None, None)
        .await
        .unwrap();
    admin
        .add_mapping(&subject, &names(&["gone"]))
        .await
        .unwrap();
    admin.delete_secret("gone").await.unwrap();
    let host = host_client(&nats).await;
    let err = host_refusal(&host, request("gone", &jwt)).await;
    assert!(err.contains("Secret not found"), "{err}");
    let mut old = request("gone", &jwt);
    old.version = Some(v1.to_string());
    let err = host_refusal(&host, old).await;
    assert!(err.contains("Secret not found"), "{err}");
    // Putting it again starts a new life.
    admin
        .put_secret("gone", text("back"), None, None)
        .await
        .unwrap();
    let back = host_get(&host, request("gone", &jwt)).await.unwrap();
    assert_eq!(back.string_secret.as_deref(), Some("back"));
}

/// A malformed `policy` is refused with a policy error (the sample backend ignored it).
#[tokio::test]
async fn a_malformed_policy_is_a_policy_error() {
    let Deployed {
        nats,
        keys: _,
        backend: _backend,
        admin,
    } = deployed().await;
    let (jwt, subject) = Issuer::new().component();
    admin.put_secret("s", text("v"), None, None).await.unwrap();
    admin.add_mapping(&subject, &names(&["s"])).await.unwrap();
    let host = host_client(&nats).await;
    let mut req = request("s", &jwt);
    req.context.application.policy = "{broken".into();
    let err = host_refusal(&host, req).await;
    assert!(err.contains("Error processing policies"), "{err}");
}
