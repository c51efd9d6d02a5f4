//! Regression tests for the sample backend's known defects (SPEC.md, "Known defects"):
//! each would fail against `secrets-nats-kv` 0.2.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use piggybank::serve::{serve, Access, Class, Endpoint, Reply, ServeConfig};

/// Defect 1: remove_mapping was a no-op, so access could never be revoked.
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

/// Defect 2: binary secrets were returned still encrypted.
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

/// Defect 3: the kind was not stored, so UTF-8 binary data came back as a string.
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

/// Defect 4: a malformed `WasmCloud-Host-Xkey` header panicked the only request loop.
#[tokio::test]
async fn malformed_xkey_header_gets_an_error_and_the_service_keeps_serving() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let _b = start_backend(&nats, config(&nats, &keys)).await;
    let client = nats.client().await;
    for op in ["get", "put_secret"] {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("WasmCloud-Host-Xkey", "not-an-xkey");
        let reply = client
            .request_with_headers(
                format!("wasmcloud.secrets.v1alpha1.nats-kv.{op}"),
                headers,
                "x".into(),
            )
            .await
            .unwrap();
        let body = String::from_utf8_lossy(&reply.payload);
        assert!(body.contains("InvalidXKey"), "{op}: {body}");
    }
    assert_eq!(
        admin(client).server_xkey().await.unwrap(),
        keys.transit_public()
    );
}

/// Defect 5: requests were handled one at a time. The serve loop is shared by every front
/// door; here a handler that takes 2 s on one subject must not delay the others.
#[tokio::test]
async fn one_slow_request_does_not_hold_up_others() {
    let nats = NatsServer::start();
    let server = serve_connection(&nats, 64).await;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let config = ServeConfig {
        max_in_flight: 64,
        max_request_bytes: piggybank::config::DEFAULT_MAX_REQUEST_BYTES,
        reply_prefixes: Vec::new(),
        admin: None,
        instance_id: "test".into(),
        drain_timeout: Duration::from_secs(5),
        auditor: Arc::new(piggybank::audit::Auditor::disabled("test")),
    };
    let endpoint = Endpoint {
        name: "test",
        subject: "concurrency.test.>".into(),
        queue_group: Some("q".into()),
        classify: Arc::new(|_| Some(Class::open())),
        handler: Arc::new(|msg: async_nats::Message| {
            Box::pin(async move {
                if msg.subject.as_str().ends_with(".slow") {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                Some(Reply::plain("ok"))
            })
        }),
        refusal: Arc::new(|_, refused| Reply::plain(refused.to_string())),
        too_large: |_, why| Reply::plain(why),
    };
    let serving = tokio::spawn(serve(server, vec![endpoint], config, async {
        let _ = rx.await;
    }));
    let client = nats.client().await;
    // Wait for the subscription.
    while client
        .request("concurrency.test.fast", "".into())
        .await
        .is_err()
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let slow_client = client.clone();
    let slow = tokio::spawn(async move {
        slow_client
            .request("concurrency.test.slow", "".into())
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let fast: Vec<_> = (0..20)
        .map(|_| client.request("concurrency.test.fast", "".into()))
        .collect();
    for r in futures::future::join_all(fast).await {
        assert_eq!(r.unwrap().payload.as_ref(), b"ok");
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1000),
        "fast requests waited {took:?} behind a slow one"
    );
    assert!(
        !slow.is_finished(),
        "the slow request should still be in flight"
    );
    // Shutdown drains: the in-flight slow request still gets its reply.
    tx.send(()).unwrap();
    assert_eq!(slow.await.unwrap().unwrap().payload.as_ref(), b"ok");
    serving.await.unwrap().unwrap();
}

/// Defect 5, against the real backend: many gets in flight at once all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_gets_are_all_served() {
    let Deployed {
        nats,
        keys: _,
        backend: _backend,
        admin,
    } = deployed().await;
    let (jwt, subject) = Issuer::new().component();
    admin.put_secret("s", text("v"), None, None).await.unwrap();
    admin.add_mapping(&subject, &names(&["s"])).await.unwrap();
    let host = Arc::new(host_client(&nats).await);
    let gets: Vec<_> = (0..200)
        .map(|_| {
            let (host, jwt) = (host.clone(), jwt.clone());
            tokio::spawn(async move {
                host_get(&host, request("s", &jwt))
                    .await
                    .map(|s| s.string_secret)
            })
        })
        .collect();
    for g in gets {
        assert_eq!(g.await.unwrap().unwrap().as_deref(), Some("v"));
    }
}

/// Defect 8: a deleted secret gave a decryption error instead of "not found".
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

/// Defect 9: `policy` was ignored; a malformed policy is now refused.
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

/// Signed administration lives in the serve loop: an endpoint that classifies an operation
/// as admin never has its handler called for an unsigned request (the endpoint's refusal is
/// answered instead), whatever the handler itself checks; a signed one reaches it.
#[tokio::test]
async fn the_serve_loop_checks_admin_signatures_before_any_handler() {
    use piggybank::admin_auth::{AdminSigner, AdminVerifier, MemoryNonces, Signed};
    use std::sync::atomic::{AtomicUsize, Ordering};

    let nats = NatsServer::start();
    let seed = AdminSigner::generate_seed();
    let signer = AdminSigner::from_seed(&seed).unwrap();
    let verifier =
        AdminVerifier::with_nonce_store(&[signer.public_key()], Arc::new(MemoryNonces::default()))
            .unwrap();
    let handled = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&handled);
    let endpoint = Endpoint {
        name: "test",
        subject: "gate.test.>".into(),
        queue_group: None,
        classify: Arc::new(|msg| {
            Some(Class::from(match msg.subject.as_str() {
                "gate.test.admin" => Access::Admin(Signed::Once),
                _ => Access::Open,
            }))
        }),
        handler: Arc::new(move |_| {
            let counter = Arc::clone(&counter);
            Box::pin(async move {
                counter.fetch_add(1, Ordering::SeqCst);
                Some(Reply::plain("handled"))
            })
        }),
        refusal: Arc::new(|_, refused| Reply::plain(format!("refused {}", refused.code()))),
        too_large: |_, why| Reply::plain(why),
    };
    let config = ServeConfig {
        max_in_flight: 8,
        max_request_bytes: piggybank::config::DEFAULT_MAX_REQUEST_BYTES,
        reply_prefixes: Vec::new(),
        admin: Some(Arc::new(verifier)),
        instance_id: "test".into(),
        drain_timeout: Duration::from_secs(5),
        auditor: Arc::new(piggybank::audit::Auditor::disabled("test")),
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let connection = serve_connection(&nats, 8).await;
    let serving = tokio::spawn(serve(connection, vec![endpoint], config, async {
        let _ = rx.await;
    }));
    let client = nats.client().await;
    while client.request("gate.test.open", "".into()).await.is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let opened = handled.load(Ordering::SeqCst);
    let unsigned = client.request("gate.test.admin", "x".into()).await.unwrap();
    assert_eq!(unsigned.payload.as_ref(), b"refused 403");
    assert_eq!(
        handled.load(Ordering::SeqCst),
        opened,
        "an unsigned admin request was handled"
    );

    let headers = signer.sign("gate.test.admin", b"x");
    let signed = client
        .request_with_headers("gate.test.admin", headers.clone(), "x".into())
        .await
        .unwrap();
    assert_eq!(signed.payload.as_ref(), b"handled");
    // The same signed request again is a replay.
    let replay = client
        .request_with_headers("gate.test.admin", headers, "x".into())
        .await
        .unwrap();
    assert_eq!(replay.payload.as_ref(), b"refused 403");
    assert_eq!(handled.load(Ordering::SeqCst), opened + 1);
    tx.send(()).unwrap();
    serving.await.unwrap().unwrap();
}
