//! Piggy Bank's sealed mode: a store run without `ENCRYPTION_XKEY_SEED` starts sealed, is
//! initialized (its key shown once, whole or as Shamir shares), unlocked and locked over
//! NATS on `piggybank.database.*`, and serves nothing while sealed. `rotate` makes a new
//! data key and re-seals every value, losing nothing under load or to a kill, and reaches
//! every instance.

use crate::common::*;
use base64::Engine as _;
use piggybank::server::RunConfig;
use serde_json::{json, Value};
use zeroize::Zeroizing;

fn sealed_config(nats: &NatsServer, name: &str, prefix: &str) -> RunConfig {
    let mut c = RunConfig::new(Zeroizing::default(), Zeroizing::default());
    c.nats_address = nats.url();
    c.name = name.into();
    c.secrets_bucket = format!("{name}_SECRETS");
    c.piggybank_prefix = Some(prefix.into());
    c
}

/// (Status, JSON body) of a database operation.
async fn db(client: &async_nats::Client, prefix: &str, op: &str, body: Value) -> (u16, Value) {
    let payload = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    let reply = client
        .request(format!("{prefix}.database.{op}"), payload.into())
        .await
        .expect("a database reply");
    let status = reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Status"))
        .and_then(|s| s.as_str().parse().ok())
        .expect("a Status header");
    (
        status,
        serde_json::from_slice(&reply.payload).expect("a JSON body"),
    )
}

fn error(body: &Value) -> &str {
    body["error"].as_str().unwrap_or_default()
}

/// A store, initialized with one key; returns the key.
async fn initialized(client: &async_nats::Client, prefix: &str) -> String {
    let (status, body) = db(client, prefix, "initialize", Value::Null).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sealed"], true);
    body["database_key"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn lifecycle_initialize_unlock_use_lock_refused_unlock_use() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let _backend = start_backend(&nats, sealed_config(&nats, "vault", "piggybank")).await;

    let (status, body) = db(&client, "piggybank", "status", Value::Null).await;
    assert_eq!(status, 200);
    assert_eq!(
        (body["initialized"].clone(), body["sealed"].clone()),
        (json!(false), json!(true))
    );
    let (status, body) = db(&client, "piggybank", "unlock", json!({"database_key": "x"})).await;
    assert_eq!((status, error(&body)), (423, "database not initialized"));

    let key = initialized(&client, "piggybank").await;
    let (status, body) = db(&client, "piggybank", "initialize", Value::Null).await;
    assert_eq!(
        (status, error(&body)),
        (409, "database already initialized")
    );

    // Sealed: server_xkey answers (hosts cache it), but nothing is served or written.
    let admin = piggybank::client::AdminClient::new(
        client.clone(),
        "wasmcloud.secrets",
        "v1alpha1",
        "vault",
    );
    let backend_host =
        wasmcloud_secrets_client::Client::new("vault", "wasmcloud.secrets", client.clone())
            .await
            .unwrap();
    let (jwt, entity) = Issuer::new().component();
    let refused = host_refusal(&backend_host, request("db", &jwt)).await;
    assert!(refused.contains("sealed"), "{refused}");
    let put = admin.put_secret("db", text("v"), None, None).await;
    assert!(format!("{:?}", put.unwrap_err()).contains("ealed"));

    // Wrong and short keys are refused; the store stays sealed.
    let short = base64::engine::general_purpose::STANDARD.encode([7u8; 16]);
    let (status, body) = db(
        &client,
        "piggybank",
        "unlock",
        json!({"database_key": short}),
    )
    .await;
    assert_eq!((status, error(&body)), (400, "key is too short"));
    let wrong = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let (status, _) = db(
        &client,
        "piggybank",
        "unlock",
        json!({"database_key": wrong}),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(
        db(&client, "piggybank", "status", Value::Null).await.1["sealed"],
        true
    );

    let (status, body) = db(&client, "piggybank", "unlock", json!({"database_key": key})).await;
    assert_eq!((status, body["sealed"].clone()), (200, json!(false)));
    let (status, body) = db(&client, "piggybank", "unlock", json!({"database_key": key})).await;
    assert_eq!((status, error(&body)), (409, "database already unlocked"));

    admin
        .put_secret("db", text("hunter2"), None, None)
        .await
        .unwrap();
    admin.add_mapping(&entity, &names(&["db"])).await.unwrap();
    let got = host_get(&backend_host, request("db", &jwt)).await.unwrap();
    assert_eq!(got.string_secret.as_deref(), Some("hunter2"));

    let (status, _) = db(&client, "piggybank", "lock", Value::Null).await;
    assert_eq!(status, 200);
    let refused = host_refusal(&backend_host, request("db", &jwt)).await;
    assert!(refused.contains("sealed"), "{refused}");

    db(&client, "piggybank", "unlock", json!({"database_key": key})).await;
    let got = host_get(&backend_host, request("db", &jwt)).await.unwrap();
    assert_eq!(got.string_secret.as_deref(), Some("hunter2"));
}

#[tokio::test]
async fn a_restart_comes_back_sealed_with_the_same_transit_key_and_unlock_restores_all() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let backend = start_backend(&nats, sealed_config(&nats, "vault", "piggybank")).await;
    let key = initialized(&client, "piggybank").await;
    db(&client, "piggybank", "unlock", json!({"database_key": key})).await;
    let admin = piggybank::client::AdminClient::new(
        client.clone(),
        "wasmcloud.secrets",
        "v1alpha1",
        "vault",
    );
    let (jwt, entity) = Issuer::new().component();
    for i in 0..5 {
        admin
            .put_secret(&format!("s{i}"), text(&format!("v{i}")), None, None)
            .await
            .unwrap();
    }
    let all: Vec<String> = (0..5).map(|i| format!("s{i}")).collect();
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    admin.add_mapping(&entity, &names(&refs)).await.unwrap();
    let xkey = admin.server_xkey().await.unwrap();
    backend.stop().await;

    let _backend = start_backend(&nats, sealed_config(&nats, "vault", "piggybank")).await;
    assert_eq!(
        admin.server_xkey().await.unwrap(),
        xkey,
        "hosts cache the transit key"
    );
    let (_, status) = db(&client, "piggybank", "status", Value::Null).await;
    assert_eq!(
        (status["initialized"].clone(), status["sealed"].clone()),
        (json!(true), json!(true))
    );
    let host = wasmcloud_secrets_client::Client::new("vault", "wasmcloud.secrets", client.clone())
        .await
        .unwrap();
    assert!(host_refusal(&host, request("s0", &jwt))
        .await
        .contains("sealed"));

    db(&client, "piggybank", "unlock", json!({"database_key": key})).await;
    for i in 0..5 {
        let got = host_get(&host, request(&format!("s{i}"), &jwt))
            .await
            .unwrap();
        assert_eq!(got.string_secret, Some(format!("v{i}")));
    }
}

#[tokio::test]
async fn threshold_shares_unlock_and_fewer_repeated_or_foreign_ones_do_not() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let _a = start_backend(&nats, sealed_config(&nats, "vault", "piggybank")).await;
    let _b = start_backend(&nats, sealed_config(&nats, "other", "pb2")).await;
    let split = json!({"shares": 5, "threshold": 3});
    let (status, body) = db(&client, "piggybank", "initialize", split.clone()).await;
    assert_eq!(status, 200, "{body}");
    let shares: Vec<String> = serde_json::from_value(body["shares"].clone()).unwrap();
    assert_eq!(shares.len(), 5);
    let (_, other) = db(&client, "pb2", "initialize", split).await;
    let foreign: Vec<String> = serde_json::from_value(other["shares"].clone()).unwrap();

    let unlock = |share: &str| json!({ "share": share });
    let (status, body) = db(&client, "piggybank", "unlock", unlock(&shares[4])).await;
    assert_eq!(
        (status, body["progress"].clone(), body["sealed"].clone()),
        (200, json!(1), json!(true))
    );
    let (status, body) = db(&client, "piggybank", "unlock", unlock(&shares[4])).await;
    assert_eq!((status, error(&body)), (400, "share already given"));
    let (_, body) = db(&client, "piggybank", "unlock", unlock(&shares[1])).await;
    assert_eq!(
        (body["progress"].clone(), body["sealed"].clone()),
        (json!(2), json!(true))
    );
    let (_, status) = db(&client, "piggybank", "status", Value::Null).await;
    assert_eq!(
        (status["sealed"].clone(), status["progress"].clone()),
        (json!(true), json!(2))
    );
    let (status, body) = db(&client, "piggybank", "unlock", unlock(&shares[2])).await;
    assert_eq!(
        (status, body["sealed"].clone()),
        (200, json!(false)),
        "{body}"
    );

    // Shares of another initialization reach the threshold and are refused, all of them.
    db(&client, "piggybank", "lock", Value::Null).await;
    for share in &foreign[..2] {
        db(&client, "piggybank", "unlock", unlock(share)).await;
    }
    let (status, body) = db(&client, "piggybank", "unlock", unlock(&foreign[2])).await;
    assert_eq!(status, 403, "{body}");
    let (_, status) = db(&client, "piggybank", "status", Value::Null).await;
    assert_eq!(
        (status["sealed"].clone(), status["progress"].clone()),
        (json!(true), json!(0))
    );
    // A key where shares are expected is refused too.
    let (status, _) = db(
        &client,
        "piggybank",
        "unlock",
        json!({"database_key": shares[0]}),
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn bad_database_requests_are_refused_and_change_nothing() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let _backend = start_backend(&nats, sealed_config(&nats, "vault", "piggybank")).await;
    for (op, body) in [
        ("initialize", json!({"shares": 3})),
        ("initialize", json!({"shares": 2, "threshold": 3})),
        ("initialize", json!({"shares": 0, "threshold": 0})),
        ("initialize", json!({"bogus": 1})),
        ("frobnicate", Value::Null),
    ] {
        let (status, reply) = db(&client, "piggybank", op, body.clone()).await;
        assert_eq!(status, 400, "{op} {body}: {reply}");
        assert!(!error(&reply).is_empty());
    }
    // Garbage JSON bytes.
    let reply = client
        .request("piggybank.database.unlock", "{not json".into())
        .await
        .unwrap();
    assert_eq!(
        reply.headers.unwrap().get("Status").unwrap().as_str(),
        "400"
    );
    let (_, status) = db(&client, "piggybank", "status", Value::Null).await;
    assert_eq!(
        status["initialized"], false,
        "a refused initialize initialized"
    );
    let key = initialized(&client, "piggybank").await;
    let (status, _) = db(
        &client,
        "piggybank",
        "unlock",
        json!({"database_key": key, "share": "x"}),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = db(
        &client,
        "piggybank",
        "unlock",
        json!({"database_key": "%%%"}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        db(&client, "piggybank", "status", Value::Null).await.1["sealed"],
        true
    );
}

#[tokio::test]
async fn unlock_and_lock_reach_every_instance() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let _a = start_backend(&nats, sealed_config(&nats, "vault", "piggybank")).await;
    let _b = start_backend(&nats, sealed_config(&nats, "vault", "piggybank")).await;
    let key = initialized(&client, "piggybank").await;

    /// Every instance's status (each answers the broadcast; collect for a moment).
    async fn statuses(client: &async_nats::Client) -> Vec<Value> {
        let inbox = client.new_inbox();
        let mut replies = client.subscribe(inbox.clone()).await.unwrap();
        client
            .publish_with_reply("piggybank.database.status", inbox, "".into())
            .await
            .unwrap();
        let mut out = Vec::new();
        while let Ok(Some(msg)) = tokio::time::timeout(
            std::time::Duration::from_millis(300),
            futures::StreamExt::next(&mut replies),
        )
        .await
        {
            out.push(serde_json::from_slice(&msg.payload).unwrap());
        }
        out
    }

    // The second instance answers once it has started (start_backend saw the first).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let before = loop {
        let all = statuses(&client).await;
        if all.len() == 2 || std::time::Instant::now() > deadline {
            break all;
        }
    };
    assert_eq!(before.len(), 2, "two instances answer status");
    assert_ne!(before[0]["instance_id"], before[1]["instance_id"]);
    db(&client, "piggybank", "unlock", json!({"database_key": key})).await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(statuses(&client).await.iter().all(|s| s["sealed"] == false));
    db(&client, "piggybank", "lock", Value::Null).await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(statuses(&client).await.iter().all(|s| s["sealed"] == true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_initializes_unlocks_locks_and_reports_status() {
    let nats = NatsServer::start();
    // Named as the CLI names a backend by default (-n/--name nats-kv), run with a transit
    // key, which `unlock` pins (TRANSIT_XKEY_SEED in its env, as in an operator's shell).
    let mut config = sealed_config(&nats, "nats-kv", "piggybank");
    config.transit_xkey_seed = piggybank::keys::generate_seed();
    let transit = config.transit_xkey_seed.to_string();
    let _backend = start_backend(&nats, config).await;
    let run = |args: &'static [&'static str],
               stdin: Option<Vec<u8>>,
               env: Vec<(&'static str, String)>| {
        let (nats_url, transit) = (nats.url(), transit.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let mut all = env.clone();
                all.push(("NATS_ADDRESS", &nats_url));
                all.push(("TRANSIT_XKEY_SEED", &transit));
                let (ok, out, err) = cli_at(&all, args, stdin.as_deref());
                (ok, String::from_utf8_lossy(&out).into_owned(), err)
            })
            .await
            .unwrap()
        }
    };
    let (ok, out, err) = run(&["init", "--json"], None, vec![]).await;
    assert!(ok, "{err}");
    let key = serde_json::from_str::<Value>(&out).unwrap()["database_key"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(err.contains("shown only once"), "{err}");
    let (ok, _, err) = run(&["init"], None, vec![]).await;
    assert!(!ok && err.contains("database already initialized"), "{err}");

    // `status` exits 2 while sealed, 0 once unlocked (as `vault status`).
    let (ok, out, _) = run(&["status", "--json"], None, vec![]).await;
    assert!(!ok);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["sealed"], true);
    // The key from stdin (never argv).
    let (ok, out, err) = run(&["unlock"], Some(format!("{key}\n").into_bytes()), vec![]).await;
    assert!(ok, "{err}");
    assert!(
        !out.contains(&key) && !err.contains(&key),
        "the key was echoed"
    );
    let (ok, out, _) = run(&["status", "--json"], None, vec![]).await;
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["sealed"],
        false
    );
    let (ok, _, _) = run(&["lock"], None, vec![]).await;
    assert!(ok);
    // ... or from the env.
    let (ok, _, err) = run(
        &["unlock"],
        None,
        vec![("PIGGYBANK_DATABASE_KEY", key.clone())],
    )
    .await;
    assert!(ok, "{err}");
    let (ok, _, err) = run(&["unlock"], None, vec![("PIGGYBANK_DATABASE_KEY", key)]).await;
    assert!(!ok && err.contains("database already unlocked"), "{err}");
}

/// Every secret's key id (metadata only; the store must be unlocked).
async fn key_ids(admin: &piggybank::client::AdminClient) -> Vec<Option<String>> {
    admin
        .list_secrets("")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key_id)
        .collect()
}

/// Every stored value's key id, from the envelopes' clear headers in the bucket itself.
async fn stored_key_ids(client: &async_nats::Client, bucket: &str) -> Vec<Option<String>> {
    kv_state(client)
        .await
        .into_iter()
        .filter(|((b, _), _)| b == bucket)
        .map(|(_, (_, value))| piggybank::store::envelope::parse(&value).unwrap().0.key_id)
        .collect()
}

async fn wait_all_under(admin: &piggybank::client::AdminClient, key_id: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let ids = key_ids(admin).await;
        if ids.iter().all(|k| k.as_deref() == Some(key_id)) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "re-encryption did not finish"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_reads_and_writes_loses_nothing_and_reseals_everything() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let _backend = start_backend(&nats, sealed_config(&nats, "vault", "piggybank")).await;
    let key = initialized(&client, "piggybank").await;
    db(&client, "piggybank", "unlock", json!({"database_key": key})).await;
    let admin = piggybank::client::AdminClient::new(
        client.clone(),
        "wasmcloud.secrets",
        "v1alpha1",
        "vault",
    );
    let (jwt, entity) = Issuer::new().component();
    let all: Vec<String> = (0..200).map(|i| format!("r/{i}")).collect();
    for name in &all {
        admin
            .put_secret(name, text(&format!("v-{name}")), None, None)
            .await
            .unwrap();
    }
    let hot: Vec<String> = (0..4).map(|i| format!("hot/{i}")).collect();
    for name in &hot {
        admin
            .put_secret(name, text("w0"), None, None)
            .await
            .unwrap();
    }
    let every: Vec<&str> = all.iter().chain(&hot).map(String::as_str).collect();
    admin.add_mapping(&entity, &names(&every)).await.unwrap();

    let host = wasmcloud_secrets_client::Client::new("vault", "wasmcloud.secrets", client.clone())
        .await
        .unwrap();
    let expected = all.iter().map(|n| (n.clone(), format!("v-{n}"))).collect();
    let load = ReadWriteLoad::start(host, jwt.clone(), expected, admin.clone(), hot.clone());
    load.flowing().await;

    let (status, rotated) = db(&client, "piggybank", "rotate", Value::Null).await;
    assert_eq!(status, 200, "{rotated}");
    assert_eq!(rotated["key_version"], 2);
    let new_id = rotated["key_id"].as_str().unwrap().to_string();
    wait_all_under(&admin, &new_id).await;
    let (reads, failed, written) = load.stop().await;

    assert!(reads > 0);
    assert_eq!(failed, 0, "reads failed during the rotation");
    let host = wasmcloud_secrets_client::Client::new("vault", "wasmcloud.secrets", client.clone())
        .await
        .unwrap();
    for (name, value) in written {
        let got = host_get(&host, request(&name, &jwt)).await.unwrap();
        assert_eq!(got.string_secret, Some(value), "{name}: a write was lost");
    }
    let (_, status) = db(&client, "piggybank", "status", Value::Null).await;
    assert_eq!(status["key_id"], new_id.as_str());
    assert_eq!(status["reencryption"]["failed"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_reencryption_a_restart_completes_it() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let spawn = || {
        let child = std::process::Command::new(piggybank_bin())
            .args([
                "run",
                "--name",
                "vault",
                "--secrets-bucket",
                "vault_SECRETS",
            ])
            .env("NATS_ADDRESS", nats.url())
            .env_remove("ENCRYPTION_XKEY_SEED")
            .env_remove("TRANSIT_XKEY_SEED")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Proc { child }
    };
    let mut first = spawn();
    wait_for_backend(&nats, "wasmcloud.secrets.v1alpha1.vault").await;
    let key = initialized(&client, "piggybank").await;
    db(&client, "piggybank", "unlock", json!({"database_key": key})).await;
    let admin = piggybank::client::AdminClient::new(
        client.clone(),
        "wasmcloud.secrets",
        "v1alpha1",
        "vault",
    );
    let count = 3000;
    for chunk in (0..count).collect::<Vec<_>>().chunks(100) {
        let puts = chunk.iter().map(|i| {
            let admin = admin.clone();
            async move {
                admin
                    .put_secret(&format!("k/{i}"), text(&format!("v{i}")), None, None)
                    .await
            }
        });
        for put in futures::future::join_all(puts).await {
            put.unwrap();
        }
    }

    let (_, rotated) = db(&client, "piggybank", "rotate", Value::Null).await;
    let new_id = rotated["key_id"].as_str().unwrap().to_string();
    // Kill -9 once re-encryption is under way, not finished.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (_, status) = db(&client, "piggybank", "status", Value::Null).await;
        let done = status["reencryption"]["done"].as_u64().unwrap_or(0);
        if status["reencryption"]["running"] == true && done > 0 {
            first.signal(libc::SIGKILL);
            first.wait_exit(std::time::Duration::from_secs(5));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "re-encryption never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }

    let _second = spawn();
    wait_for_backend(&nats, "wasmcloud.secrets.v1alpha1.vault").await;
    // Sealed again (nothing is listed while sealed: read the bucket's clear headers), and
    // half-done: some values are still under the old key.
    let ids = stored_key_ids(&client, "vault_SECRETS").await;
    let old = ids
        .iter()
        .filter(|k| k.as_deref() != Some(new_id.as_str()))
        .count();
    eprintln!("after kill -9: {old} of {count} values not yet re-sealed");
    assert!(
        old > 0 && old < count,
        "the kill did not land mid-way ({old} of {count} left)"
    );

    let (status, _) = db(&client, "piggybank", "unlock", json!({"database_key": key})).await;
    assert_eq!(status, 200);
    wait_all_under(&admin, &new_id).await;
    let (jwt, entity) = Issuer::new().component();
    let sample: Vec<String> = (0..count).step_by(97).map(|i| format!("k/{i}")).collect();
    let refs: Vec<&str> = sample.iter().map(String::as_str).collect();
    admin.add_mapping(&entity, &names(&refs)).await.unwrap();
    let host = wasmcloud_secrets_client::Client::new("vault", "wasmcloud.secrets", client.clone())
        .await
        .unwrap();
    for name in &sample {
        let got = host_get(&host, request(name, &jwt)).await.unwrap();
        assert_eq!(
            got.string_secret.as_deref(),
            Some(&format!("v{}", &name[2..])[..])
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_on_one_instance_reaches_the_others_with_no_failed_read() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let _a = start_backend(&nats, sealed_config(&nats, "vault", "piggybank")).await;
    let _b = start_backend(&nats, sealed_config(&nats, "vault", "piggybank")).await;
    let key = initialized(&client, "piggybank").await;
    // Both instances must be up and unlocked: unlock until two report unsealed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        db(&client, "piggybank", "unlock", json!({"database_key": key})).await;
        let inbox = client.new_inbox();
        let mut replies = client.subscribe(inbox.clone()).await.unwrap();
        client
            .publish_with_reply("piggybank.database.status", inbox, "".into())
            .await
            .unwrap();
        let mut unsealed = 0;
        while let Ok(Some(msg)) = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            futures::StreamExt::next(&mut replies),
        )
        .await
        {
            let status: Value = serde_json::from_slice(&msg.payload).unwrap();
            unsealed += usize::from(status["sealed"] == false);
        }
        if unsealed == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "two instances never unlocked"
        );
    }
    let admin = piggybank::client::AdminClient::new(
        client.clone(),
        "wasmcloud.secrets",
        "v1alpha1",
        "vault",
    );
    let (jwt, entity) = Issuer::new().component();
    let all: Vec<String> = (0..100).map(|i| format!("m/{i}")).collect();
    for name in &all {
        admin
            .put_secret(name, text(name), None, None)
            .await
            .unwrap();
    }
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    admin.add_mapping(&entity, &names(&refs)).await.unwrap();
    let host = wasmcloud_secrets_client::Client::new("vault", "wasmcloud.secrets", client.clone())
        .await
        .unwrap();

    let (_, rotated) = db(&client, "piggybank", "rotate", Value::Null).await;
    let new_id = rotated["key_id"].as_str().unwrap().to_string();
    // Reads spread over both instances (queue group) through activation and re-encryption.
    let mut failed = Vec::new();
    let until = std::time::Instant::now() + std::time::Duration::from_millis(2500);
    let mut i = 0;
    while std::time::Instant::now() < until {
        let name = &all[i % all.len()];
        if let Err(e) = host_get(&host, request(name, &jwt)).await {
            failed.push(e);
        }
        i += 1;
    }
    assert!(
        failed.is_empty(),
        "{} of {i} reads failed: {:?}",
        failed.len(),
        failed.first()
    );
    wait_all_under(&admin, &new_id).await;
    // Values re-sealed by one instance are read by both.
    for name in &all {
        host_get(&host, request(name, &jwt)).await.unwrap();
    }
}

#[tokio::test]
async fn an_uninitialized_store_does_not_log_its_key_record_watch_ending() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("run.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let _run = Proc {
        child: std::process::Command::new(piggybank_bin())
            .arg("run")
            .env_remove("ENCRYPTION_XKEY_SEED")
            .env_remove("RUST_LOG")
            .env(
                "TRANSIT_XKEY_SEED",
                piggybank::keys::generate_seed().as_str(),
            )
            .env("NATS_ADDRESS", nats.url())
            .env("PIGGYBANK_PREFIX", "piggybank")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    };
    wait_for_backend(&nats, "wasmcloud.secrets.v1alpha1.nats-kv").await;
    // The watch of a store with no record ended at once, and was resubscribed (and logged)
    // every 500 ms.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        text.contains("NATS connected"),
        "the log is captured: {text}"
    );
    let ended = text.matches("the key record watch ended").count();
    assert_eq!(ended, 0, "{text}");
}

/// Run `line` through `sh` as a shell with `piggybank` on its PATH and `env` set.
fn sh(line: &str, env: &[(&str, &str)]) -> (bool, String, String) {
    let bin_dir = piggybank_bin().parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = std::process::Command::new("sh")
        .args(["-c", line])
        .env("PATH", path)
        .env_remove("ENCRYPTION_XKEY_SEED")
        .env_remove("TRANSIT_XKEY_SEED")
        .env_remove("PIGGYBANK_DATABASE_KEY")
        .env_remove("PIGGYBANK_SHARE")
        .env_remove("PIGGYBANK_PREFIX")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The commands a text quotes (between backticks) that start with `piggybank <op>`.
fn quoted(text: &str, op: &str) -> String {
    text.split('`')
        .skip(1)
        .step_by(2)
        .find(|c| c.starts_with(&format!("piggybank {op}")))
        .unwrap_or_else(|| panic!("no `piggybank {op}` hint in: {text}"))
        .to_string()
}

// Multi-threaded: the CLI runs blocking while the backend serves in this process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_init_hints_run_as_printed_and_rotate_prints_rfc3339() {
    let nats = NatsServer::start();
    let mut config = sealed_config(&nats, "sealed1", "piggybank");
    config.transit_xkey_seed = piggybank::keys::generate_seed();
    let _backend = start_backend(&nats, config).await;
    let url = nats.url();
    let env = [("NATS_ADDRESS", url.as_str())];

    // status names the backend (-n) it was asked about, and pins its transit key.
    let (ok, status, err) = cli(&nats, &["status", "-n", "sealed1"], None, &[]);
    assert!(!ok, "sealed: exit 2");
    assert!(err.is_empty(), "{err}");
    let status = String::from_utf8(status).unwrap();
    let init = quoted(&status, "init");
    assert!(
        init.contains("-n sealed1") && init.contains("-t X"),
        "{init}"
    );
    let (ok, out, err) = sh(&init, &env);
    assert!(ok, "`{init}` as printed: {out}\n{err}");
    let key = out
        .lines()
        .find_map(|l| l.strip_prefix("Database key: "))
        .unwrap_or_else(|| panic!("init shows the key: {out}"));

    // init's hint unlocks it, as printed.
    let unlock = quoted(&err, "unlock");
    let (ok, out, err) = sh(&unlock, &[env[0], ("PIGGYBANK_DATABASE_KEY", key)]);
    assert!(ok, "`{unlock}` as printed: {out}\n{err}");
    assert!(out.contains("Unsealed"), "{out}");

    // rotate says when its key becomes current in RFC 3339, not unix milliseconds.
    let (ok, out, err) = cli(&nats, &["rotate", "-n", "sealed1"], None, &[]);
    assert!(ok, "{err}");
    let out = String::from_utf8(out).unwrap();
    let from = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Current from:"))
        .unwrap_or_else(|| panic!("{out}"))
        .trim();
    // YYYY-MM-DDTHH:MM:SS[.fraction]Z
    let shape: String = from
        .chars()
        .map(|c| if c.is_ascii_digit() { 'd' } else { c })
        .collect();
    assert!(
        shape.starts_with("dddd-dd-ddTdd:dd:dd") && shape.ends_with('Z'),
        "{from}"
    );
}
