//! A seal that means sealed: while locked, no front door reads or changes anything; `lock`
//! stops the background work that holds keys; a lock racing an unlock wins; and the key
//! record watch outlives a NATS outage.

use std::time::{Duration, Instant};

use crate::common::sealed::{self, db};
use crate::common::*;
use async_nats::HeaderMap;
use futures::StreamExt as _;

/// Initialize and unlock; returns the key.
async fn unlocked(client: &async_nats::Client) -> String {
    let (status, body) = db(client, "initialize", "").await;
    assert_eq!(status, 200, "{body}");
    let key = body["database_key"].as_str().unwrap().to_string();
    unlock(client, &key).await;
    key
}

async fn unlock(client: &async_nats::Client, key: &str) {
    let (status, body) = db(client, "unlock", &format!(r#"{{"database_key":"{key}"}}"#)).await;
    assert_eq!(status, 200, "{body}");
}

/// Status of a Piggy Bank API request.
async fn api(client: &async_nats::Client, method: &str, body: &str) -> u16 {
    let mut h = HeaderMap::new();
    h.insert("method", method);
    let reply = client
        .request_with_headers(
            "piggybank.app.token".to_string(),
            h,
            body.to_string().into(),
        )
        .await
        .unwrap();
    let status = reply.headers.unwrap().get("Status").unwrap().to_string();
    status.parse().unwrap()
}

/// An admin error's code, or 0 for success.
fn code<T>(result: Result<T, piggybank::client::ClientError>) -> String {
    match result {
        Ok(_) => "ok".into(),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn every_operation_of_every_front_door_is_refused_while_sealed_and_changes_nothing() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let _backend = start_sealed_backend(&nats).await;
    let key = unlocked(&client).await;
    let admin = admin(client.clone());
    admin
        .put_secret("db", text("v1"), None, None)
        .await
        .unwrap();
    let (jwt, entity) = Issuer::new().component();
    let (_, other) = Issuer::new().component();
    admin.add_mapping(&entity, &names(&["db"])).await.unwrap();
    assert_eq!(api(&client, "post", "t1").await, 200);
    let host = host_client(&nats).await;
    assert!(host_get(&host, request("db", &jwt)).await.is_ok());

    let (status, body) = db(&client, "lock", "").await;
    assert_eq!((status, body["sealed"].as_bool()), (200, Some(true)));
    let before = kv_state(&client).await;

    // The wasmCloud protocol: every operation but server_xkey.
    let refusals: Vec<(&str, String)> = vec![
        ("get", host_refusal(&host, request("db", &jwt)).await),
        (
            "put_secret",
            code(admin.put_secret("db", text("v2"), None, None).await),
        ),
        ("delete_secret", code(admin.delete_secret("db").await)),
        ("list_secrets", code(admin.list_secrets("").await)),
        (
            "add_mapping",
            code(admin.add_mapping(&other, &names(&["db"])).await),
        ),
        (
            "remove_mapping",
            code(admin.remove_mapping(&entity, &names(&["db"])).await),
        ),
        ("get_mappings", code(admin.get_mappings(&entity).await)),
        (
            "read_secret",
            code(admin.read_secret("db", None, None).await),
        ),
    ];
    for (op, answer) in &refusals {
        assert!(
            answer.to_lowercase().contains("sealed"),
            "{op} answered {answer}"
        );
    }
    for (op, answer) in &refusals[2..] {
        assert!(answer.contains("423"), "{op} answered {answer}");
    }
    // The Piggy Bank API: every method.
    for method in ["get", "post", "delete"] {
        assert_eq!(api(&client, method, "t2").await, 423, "API {method}");
    }
    // The database operations that need the keys.
    let (status, body) = db(&client, "rotate", "").await;
    assert_eq!(status, 423, "rotate: {body}");
    let (status, _) = db(&client, "initialize", "").await;
    assert_eq!(status, 409, "initialize on an initialized store");
    // What is allowed while sealed, and says so.
    assert!(!admin.server_xkey().await.unwrap().is_empty());
    let (status, body) = db(&client, "status", "").await;
    assert_eq!((status, body["sealed"].as_bool()), (200, Some(true)));

    assert_eq!(kv_state(&client).await, before, "a sealed store changed");
    unlock(&client, &key).await;
    let served = host_get(&host, request("db", &jwt)).await.unwrap();
    assert_eq!(served.string_secret.as_deref(), Some("v1"));
    assert_eq!(
        admin.get_mappings(&other).await.unwrap(),
        Vec::<String>::new()
    );
}

/// The revisions of every secret (what a re-encryption changes).
async fn secret_revisions(client: &async_nats::Client) -> Vec<(String, u64)> {
    kv_state(client)
        .await
        .into_iter()
        .filter(|((bucket, _), _)| bucket == "WASMCLOUD_SECRETS")
        .map(|((_, key), (revision, _))| (key, revision))
        .collect()
}

#[tokio::test]
async fn lock_stops_the_reencryption_and_nothing_is_written_once_it_answers() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let _backend = start_sealed_backend(&nats).await;
    let key = unlocked(&client).await;
    let admin = admin(client.clone());
    futures::stream::iter(0..3000)
        .map(|i| {
            let admin = admin.clone();
            async move {
                admin
                    .put_secret(&format!("s/{i:04}"), text("v"), None, None)
                    .await
            }
        })
        .buffer_unordered(64)
        .for_each(|r| {
            r.unwrap();
            futures::future::ready(())
        })
        .await;

    let (status, body) = db(&client, "rotate", "").await;
    assert_eq!(status, 200, "{body}");
    // Wait until the re-encryption is under way (the new key is current after 1 s).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = db(&client, "status", "").await;
        let running = &body["reencryption"];
        if running["running"] == true && running["done"].as_u64() > Some(0) {
            break;
        }
        assert!(Instant::now() < deadline, "re-encryption never ran: {body}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (status, _) = db(&client, "lock", "").await;
    assert_eq!(status, 200);
    let at_lock = secret_revisions(&client).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        secret_revisions(&client).await,
        at_lock,
        "values were re-sealed after lock answered"
    );
    let (_, body) = db(&client, "status", "").await;
    assert_eq!(body["reencryption"]["running"], false, "{body}");
    assert!(
        body["reencryption"]["done"].as_u64() < Some(3000),
        "the run finished before the lock: the test proves nothing ({body})"
    );

    // Unlocked again, the run resumes and completes.
    unlock(&client, &key).await;
    let (_, body) = db(&client, "status", "").await;
    let newest = body["key_id"].as_str().map(str::to_string);
    assert!(newest.is_some(), "{body}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = admin.list_secrets("s/").await.unwrap();
        if list.iter().all(|m| m.key_id == newest) {
            break;
        }
        assert!(Instant::now() < deadline, "re-encryption did not resume");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_lock_racing_an_unlock_wins_and_stops_background_work() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let config = sealed_api_config(&nats);
    let backend = piggybank::server::open_backend(&client, &config)
        .await
        .unwrap();
    let keys = || {
        let data = piggybank::keys::DataKey::from_seed(&piggybank::keys::generate_seed()).unwrap();
        piggybank::keys::Keyring::new(data, Vec::new())
    };
    let transit =
        || piggybank::keys::TransitKey::from_seed(&piggybank::keys::generate_seed()).unwrap();

    // An unlock that read the epoch before a lock installs nothing after it.
    let epoch = backend.seal_epoch();
    backend.lock().await;
    assert!(backend.install(epoch, keys(), transit()).is_err());
    assert!(backend.is_sealed() && backend.unsealed().is_err());

    // A proper unlock; background work under it; then a lock stops that work before it
    // returns, and nothing prepared under the old epoch can unseal again.
    let epoch = backend.seal_epoch();
    backend.install(epoch, keys(), transit()).unwrap();
    assert!(!backend.is_sealed());
    let (alive, stopped) = tokio::sync::oneshot::channel::<()>();
    assert!(backend.spawn_while_unsealed(epoch, async move {
        let _alive = alive;
        std::future::pending::<()>().await;
    }));
    backend.lock().await;
    assert!(
        stopped.await.is_err(),
        "the background task was stopped (its sender dropped)"
    );
    assert!(!backend.replace_keys(epoch, keys()));
    assert!(!backend.spawn_while_unsealed(epoch, async {}));
    assert!(backend.is_sealed());
}

#[tokio::test]
async fn concurrent_unlocks_and_locks_never_leave_keys_after_the_last_lock() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let _backend = start_sealed_backend(&nats).await;
    let key = unlocked(&client).await;
    let body = format!(r#"{{"database_key":"{key}"}}"#);
    for _ in 0..30 {
        let (_, _) = tokio::join!(db(&client, "unlock", &body), db(&client, "lock", ""));
        // Whatever the interleaving, a lock that answered last leaves the store sealed.
        let (status, _) = db(&client, "lock", "").await;
        assert_eq!(status, 200);
        let (_, status) = db(&client, "status", "").await;
        assert_eq!(status["sealed"], true, "keys outlived a lock: {status}");
    }
}

#[tokio::test]
async fn the_key_record_watch_outlives_a_nats_outage_of_more_than_10_s() {
    let nats = NatsServer::start();
    let port = nats.port;
    let client = nats.client().await;
    let _a = start_sealed_backend(&nats).await;
    let _b = start_sealed_backend(&nats).await;
    wait_database_instances(&client, "piggybank", 2).await;
    let key = unlocked(&client).await;
    // Both instances unlocked (unlock reaches every instance; each answers on its own time).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let statuses = wait_database_instances(&client, "piggybank", 2).await;
        if statuses.iter().all(|s| s["sealed"] == false) {
            break;
        }
        assert!(Instant::now() < deadline, "{statuses:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let admin_client = admin(client.clone());
    for i in 0..50 {
        admin_client
            .put_secret(&format!("w/{i}"), text("v"), None, None)
            .await
            .unwrap();
    }
    let (jwt, entity) = Issuer::new().component();
    let all: Vec<String> = (0..50).map(|i| format!("w/{i}")).collect();
    let all_refs: Vec<&str> = all.iter().map(String::as_str).collect();
    admin_client
        .add_mapping(&entity, &names(&all_refs))
        .await
        .unwrap();
    drop(key);

    let dir = nats.stop();
    tokio::time::sleep(Duration::from_secs(11)).await;
    let nats = NatsServer::restart_on(port, dir);
    // Both instances back: the protocol answers, and both report status.
    wait_for_backend(&nats, "wasmcloud.secrets.v1alpha1.nats-kv").await;
    let client = nats.client().await;
    wait_database_instances(&client, "piggybank", 2).await;

    let (status, body) = db(&client, "rotate", "").await;
    assert_eq!(status, 200, "{body}");
    let new_key = body["key_id"].as_str().unwrap().to_string();
    let admin_client = admin(client.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = admin_client.list_secrets("w/").await.unwrap();
        if list.iter().all(|m| m.key_id.as_deref() == Some(&new_key)) {
            break;
        }
        assert!(Instant::now() < deadline, "re-encryption did not complete");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every get, on whichever instance the queue group picks, opens the re-sealed values:
    // both loaded the rotated key through their watch.
    let host = host_client(&nats).await;
    let mut failed = 0;
    for i in 0..200 {
        if host_get(&host, request(&format!("w/{}", i % 50), &jwt))
            .await
            .is_err()
        {
            failed += 1;
        }
    }
    assert_eq!(failed, 0, "gets failed after the outage and a rotation");
}

/// Attack: while locked, read or change the store through the Piggy Bank API, including
/// names that look like other applications' keys; then race unlocks against a lock. Safe:
/// everything answers 423 while locked, and once a lock has answered after the last
/// unlock, the store stays sealed.
#[tokio::test]
async fn a_lock_answered_after_every_unlock_leaves_the_store_sealed() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let _backend = start_sealed_backend(&nats).await;
    let (_, body) = db(&client, "initialize", "").await;
    let key = body["database_key"].as_str().unwrap().to_string();
    let unlock = format!(r#"{{"database_key":"{key}"}}"#);
    assert_eq!(db(&client, "unlock", &unlock).await.0, 200);
    assert_eq!(
        sealed::api(&client, "piggybank.app.x", "post", b"v1")
            .await
            .0,
        200
    );
    for round in 0..15 {
        let racing: Vec<_> = (0..4)
            .map(|_| {
                let (client, unlock) = (client.clone(), unlock.clone());
                tokio::spawn(async move { db(&client, "unlock", &unlock).await })
            })
            .collect();
        for r in racing {
            let _ = r.await.unwrap();
        }
        let (status, body) = db(&client, "lock", "").await;
        assert_eq!(status, 200, "{body}");
        for m in ["get", "post", "delete"] {
            let (status, _) = sealed::api(&client, "piggybank.app.x", m, b"v2").await;
            assert_eq!(status, 423, "round {round}: {m} while locked");
        }
        let (_, report) = db(&client, "status", "").await;
        assert_eq!(report["sealed"].as_bool(), Some(true), "round {round}");
    }
    assert_eq!(db(&client, "unlock", &unlock).await.0, 200);
    let (status, value) = sealed::api(&client, "piggybank.app.x", "get", b"").await;
    assert_eq!((status, value.as_slice()), (200, b"v1".as_slice()));
}
