//! Regression tests for the sample backend's known defects (SPEC.md, "Known defects"):
//! each would fail against `secrets-nats-kv` 0.2.

mod common;

use std::sync::Arc;

use common::*;

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
