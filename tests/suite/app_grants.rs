//! Grants by wadm application: a 1.x host names the application in every `get`
//! (`context.application.name`); an operator grants secrets to it, and every entity the host
//! says is part of it may read them. Through the real `wasmcloud-secrets-client`, the CLI,
//! and with the entity and application key spaces kept apart.

use std::time::Duration;

use crate::common::*;
use piggybank::audit::Outcome;
use wasmcloud_secrets_types::SecretRequest;

/// A request for `key` from the entity of `jwt`, naming `application`, under `policy`.
fn asking(key: &str, jwt: &str, application: Option<&str>, properties: &str) -> SecretRequest {
    let mut req = request(key, jwt);
    req.context.application.name = application.map(str::to_string);
    req.context.application.policy = format!(
        r#"{{"type":"properties.secret.wasmcloud.dev/v1alpha1","properties":{properties}}}"#
    );
    req
}

/// The CLI, off the test's runtime (the backend runs on it, in-process).
async fn cli_async(nats: &NatsServer, args: &[&str]) -> (bool, Vec<u8>, String) {
    let url = nats.url();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cli_at(&[("NATS_ADDRESS", url.as_str())], &args, None)
    })
    .await
    .unwrap()
}

async fn reads(host: &wasmcloud_secrets_client::Client, req: SecretRequest) -> Option<String> {
    host_get(host, req).await.ok().and_then(|s| s.string_secret)
}

#[tokio::test]
async fn a_grant_to_an_application_serves_its_entities_and_removing_it_revokes() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let _backend = start_backend(&nats, config(&nats, &keys)).await;
    let admin = admin(nats.client().await);
    let host = host_client(&nats).await;
    admin
        .put_secret("shop/db", text("pw"), None, None)
        .await
        .unwrap();
    // A component rebuilt with new keys: no mapping of its key at all.
    let (jwt, _) = Issuer::new().component();
    assert_eq!(
        reads(&host, asking("shop/db", &jwt, Some("shop"), "{}")).await,
        None
    );

    let (ok, _, err) = cli_async(
        &nats,
        &[
            "add-mapping",
            "--application",
            "shop",
            "--secret",
            "shop/db",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let (ok, out, err) = cli_async(&nats, &["mappings", "--application", "shop"]).await;
    assert!(ok, "{err}");
    assert_eq!(String::from_utf8_lossy(&out).trim(), "shop/db");
    assert_eq!(
        reads(&host, asking("shop/db", &jwt, Some("shop"), "{}"))
            .await
            .as_deref(),
        Some("pw")
    );
    // Another application's name, or none, does not get it.
    for other in [Some("shop2"), Some("sho"), None] {
        let refusal = host_refusal(&host, asking("shop/db", &jwt, other, "{}")).await;
        assert!(
            refusal.to_lowercase().contains("unauthorized"),
            "{other:?}: {refusal}"
        );
    }
    let (ok, _, err) = cli_async(
        &nats,
        &[
            "remove-mapping",
            "--application",
            "shop",
            "--secret",
            "shop/db",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(
        reads(&host, asking("shop/db", &jwt, Some("shop"), "{}")).await,
        None
    );
    assert!(admin.get_app_mappings("shop").await.unwrap().is_empty());

    // The audit trail names the application and what granted the get.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let records = crate::audit::trail(&nats).await;
        let allowed = records.iter().map(|(r, _)| r).find(|r| {
            r.operation == "get"
                && r.outcome == Outcome::Allowed
                && r.secret.as_deref() == Some("shop/db")
        });
        if let Some(record) = allowed {
            assert_eq!(record.application.as_deref(), Some("shop"));
            assert_eq!(record.granted_by.as_deref(), Some("application"));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no allowed get record"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An application named exactly like an entity key, and that entity: each reads what was
/// granted to it, never the other's. In the bucket they are two keys (`app.<name>` and the
/// nkey), and neither is ever read as the other.
#[tokio::test]
async fn grants_by_key_and_by_application_never_collide() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let _backend = start_backend(&nats, config(&nats, &keys)).await;
    let admin = admin(nats.client().await);
    let host = host_client(&nats).await;
    for name in ["for-the-entity", "for-the-application"] {
        admin
            .put_secret(name, text(name), None, None)
            .await
            .unwrap();
    }
    let (jwt, entity) = Issuer::new().component();
    let (stranger_jwt, _) = Issuer::new().component();
    admin
        .add_mapping(&entity, &names(&["for-the-entity"]))
        .await
        .unwrap();
    // The application's name is the entity's key: a valid application name.
    admin
        .add_app_mapping(&entity, &names(&["for-the-application"]))
        .await
        .unwrap();
    // The entity, naming another application: only its own mapping.
    let other_app = asking("for-the-application", &jwt, Some("unrelated"), "{}");
    assert_eq!(reads(&host, other_app).await, None);
    let own = asking("for-the-entity", &jwt, Some("unrelated"), "{}");
    assert_eq!(reads(&host, own).await.as_deref(), Some("for-the-entity"));
    // Another entity naming the application: only the application's grant.
    let by_app = asking("for-the-application", &stranger_jwt, Some(&entity), "{}");
    assert_eq!(
        reads(&host, by_app).await.as_deref(),
        Some("for-the-application")
    );
    let entitys = asking("for-the-entity", &stranger_jwt, Some(&entity), "{}");
    assert_eq!(reads(&host, entitys).await, None);
    // Each listing holds only its own.
    assert_eq!(
        admin.get_mappings(&entity).await.unwrap(),
        ["for-the-entity"]
    );
    assert_eq!(
        admin.get_app_mappings(&entity).await.unwrap(),
        ["for-the-application"]
    );
    // An application name that cannot be a KV key token is refused, never mangled.
    for bad in ["a.b", ">", "app.x", "café"] {
        assert!(
            admin
                .add_app_mapping(bad, &names(&["for-the-entity"]))
                .await
                .is_err(),
            "{bad}"
        );
    }
}

/// The manifest's policy properties may narrow a grant (`application`, `grant`), never
/// widen one: an unmapped entity gets nothing whatever its policy says.
#[tokio::test]
async fn a_manifest_policy_narrows_a_grant_but_never_widens_it() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let _backend = start_backend(&nats, config(&nats, &keys)).await;
    let admin = admin(nats.client().await);
    let host = host_client(&nats).await;
    admin
        .put_secret("db", text("pw"), None, None)
        .await
        .unwrap();
    admin
        .add_app_mapping("shop", &names(&["db"]))
        .await
        .unwrap();
    let (jwt, entity) = Issuer::new().component();
    let cases = [
        (r#"{"application":"shop"}"#, true),
        (r#"{"grant":"application"}"#, true),
        (r#"{"grant":"any"}"#, true),
        (r#"{"grant":"entity"}"#, false),
        (r#"{"application":"billing"}"#, false),
    ];
    for (properties, allowed) in cases {
        let got = reads(&host, asking("db", &jwt, Some("shop"), properties)).await;
        assert_eq!(got.is_some(), allowed, "{properties}");
    }
    // Never widens: another application, whatever the policy names.
    let widen = asking(
        "db",
        &jwt,
        Some("billing"),
        r#"{"application":"shop","grant":"any"}"#,
    );
    assert_eq!(reads(&host, widen).await, None);
    // A mapping of the key still serves under `grant: entity`.
    admin.add_mapping(&entity, &names(&["db"])).await.unwrap();
    let by_key = asking("db", &jwt, Some("billing"), r#"{"grant":"entity"}"#);
    assert_eq!(reads(&host, by_key).await.as_deref(), Some("pw"));
    let malformed = host_refusal(&host, asking("db", &jwt, Some("shop"), r#"{"grant":7}"#)).await;
    assert!(malformed.to_lowercase().contains("polic"), "{malformed}");
}
