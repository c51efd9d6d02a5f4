//! Persistence across restarts, several instances sharing one queue group, and requests
//! served concurrently (that a slow one holds up no other is `src/serve/tests.rs`'s).

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;

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
