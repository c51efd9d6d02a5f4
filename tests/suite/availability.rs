//! Persistence across restarts, several instances sharing one queue group, and requests
//! served concurrently: a slow one holds up no other.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use piggybank::serve::{serve, Class, Endpoint, Reply, ServeConfig};

const PREFIX: &str = "wasmcloud.secrets.v1alpha1.nats-kv";

#[tokio::test]
async fn secrets_and_mappings_survive_backend_and_nats_restarts() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let (jwt, subject) = Issuer::new().component();
    let backend = start_backend(&nats, config(&nats, &keys)).await;
    let admin_client = admin(nats.client().await);
    let v = admin_client
        .put_secret("kept", text("value"), None, None)
        .await
        .unwrap();
    admin_client
        .add_mapping(&subject, &names(&["kept"]))
        .await
        .unwrap();
    backend.stop().await;

    // Restart the backend alone, then NATS too (same data dir).
    let backend = start_backend(&nats, config(&nats, &keys)).await;
    let host = host_client(&nats).await;
    let got = host_get(&host, request("kept", &jwt)).await.unwrap();
    assert_eq!(
        (got.string_secret.as_deref(), got.version),
        (Some("value"), v.to_string())
    );
    backend.stop().await;
    drop((host, admin_client));

    let nats = NatsServer::start_in(nats.stop());
    let _backend = start_backend(&nats, config(&nats, &keys)).await;
    let host = host_client(&nats).await;
    let got = host_get(&host, request("kept", &jwt)).await.unwrap();
    assert_eq!(got.string_secret.as_deref(), Some("value"));
    // Same transit key after restart: hosts that cached it keep working.
    assert_eq!(
        admin(nats.client().await).server_xkey().await.unwrap(),
        keys.transit_public()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_load_and_one_survives_the_other_being_killed() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let mut a = spawn_run(&nats, &keys, &[]);
    let _b = spawn_run(&nats, &keys, &[]);
    wait_for_backend(&nats, PREFIX).await;
    let (jwt, subject) = Issuer::new().component();
    let admin = admin(nats.client().await);
    admin
        .put_secret("shared", text("v"), None, None)
        .await
        .unwrap();
    admin
        .add_mapping(&subject, &names(&["shared"]))
        .await
        .unwrap();
    // Both instances must be subscribed (and loaded) before we rely on either.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let host = Arc::new(host_client(&nats).await);
    let burst = |n: usize| {
        let (host, jwt) = (host.clone(), jwt.clone());
        async move {
            let gets = (0..n).map(|_| host_get(&host, request("shared", &jwt)));
            futures::future::join_all(gets)
                .await
                .into_iter()
                .filter(|r| r.is_ok())
                .count()
        }
    };
    // Writes made through one instance are seen by both (the queue group spreads requests).
    assert_eq!(burst(40).await, 40);

    // Revocation reaches every instance quickly.
    admin
        .remove_mapping(&subject, &names(&["shared"]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        burst(40).await,
        0,
        "a revoked mapping must be refused by every instance"
    );
    admin
        .add_mapping(&subject, &names(&["shared"]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;

    a.signal(libc::SIGKILL);
    a.wait_exit(Duration::from_secs(5)).expect("killed");
    // NATS stops routing to the dead member once its connection drops.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        burst(40).await,
        40,
        "the surviving instance serves everything"
    );
}

#[tokio::test]
async fn sigterm_drains_and_exits_cleanly() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let mut p = spawn_run(&nats, &keys, &["--log-format", "json"]);
    wait_for_backend(&nats, PREFIX).await;
    p.signal(libc::SIGTERM);
    let status = p
        .wait_exit(Duration::from_secs(10))
        .expect("exits on SIGTERM");
    assert!(status.success(), "{status:?}");
}

/// Requests are served concurrently (the sample backend handled them one at a time). The
/// serve loop is shared by every front door; here a handler that takes 2 s on one subject
/// must not delay the others.
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

/// Against the real backend: many gets in flight at once all succeed.
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
