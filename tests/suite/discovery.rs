//! Service discovery: every instance answers `$SRV.PING|INFO|STATS` as service `piggybank`,
//! with its endpoints and per-endpoint request and error counts (`nats micro` reads these).

use std::time::Duration;

use crate::common::*;
use futures::StreamExt as _;
use serde_json::Value;

/// Every answer to `subject` within 500 ms.
async fn ask_all(client: &async_nats::Client, subject: &str) -> Vec<Value> {
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.unwrap();
    client
        .publish_with_reply(subject.to_string(), inbox, "".into())
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(500), replies.next()).await
    {
        out.push(serde_json::from_slice(&msg.payload).unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_instance_answers_srv_ping_info_and_stats_with_counts() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let _a = start_backend(&nats, config(&nats, &keys)).await;
    let _b = start_backend(&nats, config(&nats, &keys)).await;
    let admin = admin(nats.client().await);
    admin.put_secret("db", text("v"), None, None).await.unwrap();
    let issuer = Issuer::new();
    let (jwt, component) = issuer.component();
    let (stranger_jwt, _) = issuer.component();
    admin
        .add_mapping(&component, &names(&["db"]))
        .await
        .unwrap();
    let host = host_client(&nats).await;
    for _ in 0..5 {
        host_get(&host, request("db", &jwt)).await.unwrap();
        assert!(host_get(&host, request("db", &stranger_jwt)).await.is_err());
    }
    let client = nats.client().await;

    let pings = ask_all(&client, "$SRV.PING").await;
    assert_eq!(pings.len(), 2, "{pings:?}");
    assert!(pings.iter().all(|p| p["name"] == "piggybank"));
    assert_ne!(pings[0]["id"], pings[1]["id"]);

    let infos = ask_all(&client, "$SRV.INFO.piggybank").await;
    assert_eq!(infos.len(), 2);
    let endpoints = infos[0]["endpoints"].as_array().unwrap();
    let protocol = endpoints.iter().find(|e| e["name"] == "protocol").unwrap();
    assert_eq!(protocol["subject"], "wasmcloud.secrets.v1alpha1.nats-kv.>");
    assert_eq!(protocol["queue_group"], "wasmcloud_secrets.nats-kv");

    // One instance by id; the two instances' counts add up to what was sent.
    let id = pings[0]["id"].as_str().unwrap();
    let one = ask_all(&client, &format!("$SRV.STATS.piggybank.{id}")).await;
    assert_eq!(one.len(), 1);
    assert_eq!(one[0]["id"], id);
    let stats = ask_all(&client, "$SRV.STATS.piggybank").await;
    let protocol_counts = |field: &str| -> u64 {
        stats
            .iter()
            .flat_map(|s| s["endpoints"].as_array().unwrap().clone())
            .filter(|e| e["name"] == "protocol")
            .map(|e| e[field].as_u64().unwrap())
            .sum()
    };
    // 10 gets, 1 put, 1 add_mapping, and a server_xkey per client.
    assert!(protocol_counts("num_requests") >= 12, "{stats:?}");
    assert!(protocol_counts("num_errors") >= 5, "{stats:?}");
    assert!(protocol_counts("processing_time") > 0);
}
