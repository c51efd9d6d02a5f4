//! Metrics over OTLP: `piggybank run` with the standard `OTEL_*` environment exports its
//! instruments to an OTLP/HTTP collector (here a stand-in that keeps what it receives).

mod common;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// What the collector received: (path, body) of each POST.
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A collector on a free loopback port: answers 200 to every POST and keeps the bodies.
fn collector() -> (u16, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let received: Received = Arc::default();
    let keep = Arc::clone(&received);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let keep = Arc::clone(&keep);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut length = 0usize;
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).unwrap_or(0) == 0 {
                            return;
                        }
                        let header = header.trim_end();
                        if header.is_empty() {
                            break;
                        }
                        if let Some((name, value)) = header.split_once(':') {
                            if name.eq_ignore_ascii_case("content-length") {
                                length = value.trim().parse().unwrap_or(0);
                            }
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let path = request_line.split(' ').nth(1).unwrap_or("").to_string();
                    keep.lock().unwrap().push((path, body));
                    let stream = reader.get_mut();
                    let _ = stream.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
                    );
                }
            });
        }
    });
    (port, received)
}

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

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_exports_request_counts_latency_and_state_over_otlp() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let (port, received) = collector();
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
    let deadline = Instant::now() + Duration::from_secs(15);
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
    loop {
        let all = received.lock().unwrap().clone();
        let missing: Vec<&str> = wanted
            .iter()
            .copied()
            .filter(|w| !all.iter().any(|(_, body)| contains(body, w)))
            .collect();
        if missing.is_empty() {
            assert!(
                all.iter().all(|(path, _)| path == "/v1/metrics"),
                "{:?}",
                all.iter().map(|(p, _)| p).collect::<Vec<_>>()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not exported: {missing:?} ({} exports received)",
            all.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
