//! Access is by mapping only, and is no oracle: an entity reads only what it is mapped to,
//! a removed mapping revokes at once, an unmapped entity gets the same refusal whether or not
//! a secret exists, and a Piggy Bank API application reaches no key outside its own name.

use crate::common::sealed::*;
use crate::common::*;
use std::time::{Duration, Instant};

/// A removed mapping revokes access at once (the sample backend's `remove_mapping` was a
/// no-op).
#[tokio::test]
async fn remove_mapping_revokes_access_at_once() {
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
    assert!(host_get(&host, request("s", &jwt)).await.is_ok());

    admin
        .remove_mapping(&subject, &names(&["s"]))
        .await
        .unwrap();
    // No sleep: the instance that handled the removal honours it immediately.
    let err = host_refusal(&host, request("s", &jwt)).await;
    assert!(err.contains("unauthorized"), "{err}");
}

/// Attack: an unmapped entity (a valid JWT of an untrusted-but-unchecked issuer) probes
/// which secret names exist, varying `version` and `field` to reach a later error first.
/// Safe: the same `Unauthorized` answer whether the secret exists or not.
#[tokio::test]
async fn an_unmapped_entity_cannot_tell_whether_a_secret_exists() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let _backend = start_backend(&nats, config(&nats, &keys)).await;
    let admin = admin(nats.client().await);
    admin
        .put_secret("exists", text(r#"{"a":"b"}"#), None, None)
        .await
        .unwrap();
    let (_, mapped) = Issuer::new().component();
    admin
        .add_mapping(&mapped, &names(&["exists", "ghost"]))
        .await
        .unwrap();
    let (jwt, _) = Issuer::new().component();
    let host = host_client(&nats).await;
    let probe = |name: &str, version: Option<&str>, field: Option<&str>| {
        let mut r = request(name, &jwt);
        r.version = version.map(str::to_string);
        r.field = field.map(str::to_string);
        r
    };
    for (version, field) in [
        (None, None),
        (Some("1"), None),
        (Some("999"), None),
        (Some("not-a-number"), None),
        (None, Some("a")),
        (None, Some("missing")),
    ] {
        let existing = host_refusal(&host, probe("exists", version, field)).await;
        let absent = host_refusal(&host, probe("ghost", version, field)).await;
        let never = host_refusal(&host, probe("never-mentioned", version, field)).await;
        assert_eq!(existing, absent, "{version:?} {field:?}");
        assert_eq!(existing, never, "{version:?} {field:?}");
        assert!(
            existing.to_lowercase().contains("unauthorized"),
            "{existing}"
        );
        assert!(!existing.contains("exists") && !existing.contains(r#""b""#));
    }
}

/// Attack (Piggy Bank API): application `shop` reaches `billing`'s key through the name part
/// of its subject: `/`, `..`, leading `/`, encoded forms, a second application token, the
/// reserved `database` application in another case. Safe: whatever `shop` sends, it can
/// only create or read keys under `shop/`, and `billing/db` is untouched.
#[tokio::test]
async fn an_application_cannot_reach_another_applications_key() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let mut c = config(&nats, &keys);
    c.piggybank_prefix = Some("piggybank".into());
    let _backend = start_backend(&nats, c).await;
    let client = nats.client().await;
    assert_eq!(
        api(&client, "piggybank.billing.db", "post", b"billing-secret")
            .await
            .0,
        200
    );
    let names = [
        "piggybank.shop.../billing/db",
        "piggybank.shop.x/../../billing/db",
        "piggybank.shop./billing/db",
        "piggybank.shop.%2e%2e/billing/db",
        "piggybank.shop.billing.db",
        "piggybank.shop.billing/db",
        "piggybank.shop./../billing/db",
        "piggybank.shop.=/billing/db",
        "piggybank.shop/billing.db",
        "piggybank.shop/../billing.db",
        "piggybank.DATABASE.x",
        "piggybank.shop.ü",
    ];
    for subject in names {
        for m in ["post", "delete", "get"] {
            // A subject NATS refuses (empty tokens) gets "no responders": nothing to check.
            let Ok(reply) = client
                .request_with_headers(subject.to_string(), method(m), "shop-was-here".into())
                .await
            else {
                continue;
            };
            let status = reply
                .headers
                .and_then(|h| h.get("Status").map(|v| v.to_string()));
            let payload = reply.payload.to_vec();
            assert_ne!(
                payload.as_slice(),
                b"billing-secret",
                "{subject} {m}: {status:?}"
            );
        }
    }
    let (status, value) = api(&client, "piggybank.billing.db", "get", b"").await;
    assert_eq!(
        (status, value.as_slice()),
        (200, b"billing-secret".as_slice())
    );
    let admin = admin(client.clone());
    for meta in admin.list_secrets("").await.unwrap() {
        assert!(
            meta.name == "_api/billing/db"
                || meta.name.starts_with("_api/shop/")
                || meta.name.starts_with("_api/DATABASE/"),
            "a key outside _api/shop/: {}",
            meta.name
        );
    }
}

/// What an attacker who holds any account key can sign: component JWTs whose subject is not a
/// component or provider key. Each would name a KV subject other than one entity's.
fn forged_subjects() -> Vec<String> {
    let victim_like = nkeys::KeyPair::new_module().public_key();
    vec![
        ">".into(),
        "*".into(),
        "M.>".into(),
        format!("{victim_like}.x"),
        format!("{}.{}", &victim_like[..10], &victim_like[10..]),
        nkeys::KeyPair::new_account().public_key(),
    ]
}

/// Attack: a component JWT whose subject is a wildcard (`>`, `*`), a key with dots, or a key
/// of another kind. Safe: the subject is checked as a component or provider key before any
/// lookup, so each is refused as an invalid entity JWT, never looked up; the real entity
/// (positive control) reads its secret.
#[tokio::test]
async fn an_entity_jwt_whose_subject_is_not_an_entity_key_is_refused_before_any_lookup() {
    let Deployed {
        nats,
        keys: _,
        backend: _backend,
        admin,
    } = deployed().await;
    let issuer = Issuer::new();
    let (victim_jwt, victim) = issuer.component();
    admin
        .put_secret("s", text("VICTIM"), None, None)
        .await
        .unwrap();
    admin.add_mapping(&victim, &names(&["s"])).await.unwrap();
    let host = host_client(&nats).await;
    let served = host_get(&host, request("s", &victim_jwt)).await.unwrap();
    assert_eq!(served.string_secret.as_deref(), Some("VICTIM"));

    for subject in forged_subjects() {
        let forged = issuer.component_with_subject(&subject);
        let err = host_refusal(&host, request("s", &forged)).await;
        assert!(
            err.to_lowercase().contains("invalid entity jwt")
                && err.contains("not a component or provider key"),
            "subject {subject:?}: {err}"
        );
        assert!(!err.contains("VICTIM"), "{err}");
    }
}

/// Attack (reproduced on an earlier build): right after a restart, while the mappings mirror
/// loads and a mapping is read from the bucket, a component JWT whose subject is `>` was
/// served the secret of the entity whose mapping was written last. Safe: such a subject never
/// reaches a KV subject. The attacker hammers gets from the moment the instance starts.
#[tokio::test]
async fn a_wildcard_entity_reads_nothing_while_the_mappings_mirror_loads() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let first = start_backend(&nats, config(&nats, &keys)).await;
    let admin = admin(nats.client().await);
    admin
        .put_secret("s", text("VICTIM"), None, None)
        .await
        .unwrap();
    // Enough mappings that the mirror's load takes a while; the victim's is written last.
    let client = nats.client().await;
    let kv = async_nats::jetstream::new(client)
        .get_key_value("SECRETS_nats-kv_state")
        .await
        .unwrap();
    let puts = (0..3000).map(|_| {
        let kv = kv.clone();
        async move {
            let entity = nkeys::KeyPair::new_module().public_key();
            kv.put(entity, r#"["other"]"#.into()).await.unwrap();
        }
    });
    futures::future::join_all(puts).await;
    let issuer = Issuer::new();
    let (victim_jwt, victim) = issuer.component();
    admin.add_mapping(&victim, &names(&["s"])).await.unwrap();
    let host = std::sync::Arc::new(host_client(&nats).await);
    assert!(host_get(&host, request("s", &victim_jwt)).await.is_ok());
    let forged = issuer.component_with_subject(">");

    let mut stopped = Some(first);
    for attempt in 0..3 {
        if let Some(backend) = stopped.take() {
            backend.stop().await;
        }
        let hammer = (0..8).map(|_| {
            let (host, forged) = (host.clone(), forged.clone());
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(3);
                let mut answered = 0;
                while Instant::now() < deadline && answered < 50 {
                    match host_get(&host, request("s", &forged)).await {
                        Ok(secret) => return Some(secret.string_secret),
                        Err(e) if e.contains("no responders") || e.contains("timed out") => {
                            tokio::time::sleep(Duration::from_millis(1)).await
                        }
                        Err(_) => answered += 1,
                    }
                }
                None
            })
        });
        let hammer: Vec<_> = hammer.collect();
        let backend = start_backend(&nats, config(&nats, &keys)).await;
        for task in hammer {
            let leaked = task.await.unwrap();
            assert!(leaked.is_none(), "attempt {attempt}: served {leaked:?}");
        }
        // Positive control: the mapped entity reads its secret on this instance.
        assert!(host_get(&host, request("s", &victim_jwt)).await.is_ok());
        stopped = Some(backend);
    }
}
