//! Metrics over OTLP: `piggybank run` with the standard `OTEL_*` environment exports its
//! instruments to an OTLP/HTTP collector (here a stand-in that keeps what it receives).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// Wait until the instance's status says its mirrors hold both buckets.
async fn wait_loaded(client: &async_nats::Client) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let reply = client
            .request("piggybank.database.nats-kv.status", "".into())
            .await
            .unwrap();
        let status: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
        if status["loaded"] == true {
            return;
        }
        assert!(Instant::now() < deadline, "not loaded: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_exports_request_counts_latency_and_state_over_otlp() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let (port, received) = otlp_collector();
    let child = Command::new(piggybank_bin())
        .arg("run")
        .env("ENCRYPTION_XKEY_SEED", keys.encryption.as_str())
        .env("TRANSIT_XKEY_SEED", keys.transit.as_str())
        .env("NATS_ADDRESS", nats.url())
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{port}"),
        )
        .env("OTEL_METRIC_EXPORT_INTERVAL", "300")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _run = Proc { child };
    wait_for_backend(&nats, "wasmcloud.secrets.v1alpha1.nats-kv").await;
    // The mirror lag is recorded for changes that reach a loaded mirror: write once loaded.
    wait_loaded(&nats.client().await).await;
    let admin = admin(nats.client().await);
    admin.put_secret("db", text("v"), None, None).await.unwrap();
    let issuer = Issuer::new();
    let (jwt, component) = issuer.component();
    admin
        .add_mapping(&component, &names(&["db"]))
        .await
        .unwrap();
    let host = host_client(&nats).await;
    for _ in 0..3 {
        host_get(&host, request("db", &jwt)).await.unwrap();
    }
    let wanted = [
        "piggybank.requests",
        "piggybank.request.duration",
        "piggybank.sealed",
        "piggybank.audit.dropped",
        "piggybank.jwt_cache.hits",
        "piggybank.mirror.pending",
        "piggybank.mirror.loaded",
        "piggybank.mirror.lag",
        "store",
        "mappings",
        "front_door",
        "protocol",
        "allowed",
    ];
    wait_for_export(&received, &wanted, Duration::from_secs(15)).await;
}
