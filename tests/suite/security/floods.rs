//! Floods do not exhaust an instance: a flood of large requests leaves its memory bounded, a
//! front door buffers no more than its capacity while its permits are taken, and a request
//! whose operation carries no value is refused at once when it is large.

use std::time::{Duration, Instant};

use crate::common::sealed::*;
use crate::common::*;

/// The resident memory of a process, in MiB (Linux).
fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

/// Attack: flood every instance with large requests it must answer (`status` reaches every
/// instance, needs no signature, and reads the key record from JetStream each time), from
/// several connections at once, to make the serve loop fall behind: beyond `max_in_flight`
/// the loop waits and messages queue in the subscriptions, whose client-side buffers hold
/// up to 65,536 messages each (async-nats' default), up to 1 MiB each: 64 GiB per
/// subscription, and one `status` is delivered to three of them (the database operations'
/// two subscriptions on the subject, and the API's `piggybank.>`). Measured here: 23 MiB
/// idle, over 1 GiB after 15-20 s of three publishers (about 50-130 MiB/s while it lasts).
/// Safe: the backend's memory stays bounded (here: under 768 MiB, three times what
/// `max_in_flight` requests of 1 MiB hold) and it still answers afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_large_requests_does_not_grow_memory_without_bound() {
    let nats = NatsServer::start();
    let run = spawn_sealed_run(&nats, &["--piggybank-prefix", "piggybank"]);
    let client = nats.client().await;
    wait_database_instances(&client, "piggybank", 1).await;
    let pid = run.child.id();
    let idle = rss_mib(pid);
    let body = bytes::Bytes::from(vec![b'x'; 1_000_000]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut floods = Vec::new();
    for _ in 0..3 {
        let (flooder, body, stop) = (nats.client().await, body.clone(), stop.clone());
        floods.push(tokio::spawn(async move {
            let inbox = flooder.new_inbox();
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = flooder
                    .publish_with_reply(format!("{DB}.status"), inbox.clone(), body.clone())
                    .await;
                sent += 1;
            }
            sent
        }));
    }
    let mut peak = idle;
    let until = Instant::now() + Duration::from_secs(20);
    let started = Instant::now();
    while Instant::now() < until {
        peak = peak.max(rss_mib(pid));
        if peak > 768 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut sent = 0;
    for f in floods {
        sent += f.await.unwrap();
    }
    let answers = tokio::time::timeout(
        Duration::from_secs(30),
        wait_database_instances(&client, "piggybank", 1),
    )
    .await;
    run.signal(libc::SIGKILL);
    eprintln!(
        "flood: {sent} requests of 1 MB in {:?}; RSS idle {idle} MiB, peak {peak} MiB",
        started.elapsed()
    );
    assert!(
        peak <= 768,
        "RSS grew from {idle} MiB to {peak} MiB under {sent} requests"
    );
    assert!(
        answers.is_ok(),
        "the backend still answers status after the flood"
    );
}

/// Attack: requests of operations that carry no value (`status`, a protocol `get`, an API
/// `get`) with large bodies, which a handler would hold while it waits for the store.
/// Safe: they are refused at once, in each front door's own format (413; a `get` error for
/// hosts), without reaching a handler; a value up to the NATS max payload is still stored.
#[tokio::test]
async fn large_requests_are_refused_unless_their_operation_carries_a_value() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let mut c = config(&nats, &keys);
    c.piggybank_prefix = Some("piggybank".into());
    let _backend = start_backend(&nats, c).await;
    let client = nats.client().await;
    let big = vec![b'x'; 100_000];
    let limit = piggybank::config::DEFAULT_MAX_REQUEST_BYTES;
    assert!(big.len() > limit);

    let reply = client
        .request(format!("{DB}.status"), big.clone().into())
        .await
        .unwrap();
    let status = reply.headers.as_ref().and_then(|h| h.get("Status"));
    assert_eq!(status.map(|s| s.as_str()), Some("413"));
    let (status, body) = api(&client, "piggybank.shop.db", "get", &big).await;
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    let reply = client
        .request(format!("{PROTOCOL}.get"), big.clone().into())
        .await
        .unwrap();
    let response: wasmcloud_secrets_types::SecretResponse =
        serde_json::from_slice(&reply.payload).unwrap();
    match response.error {
        Some(wasmcloud_secrets_types::GetSecretError::Other(m)) => {
            assert!(m.contains("too large"), "{m}")
        }
        other => panic!("a get too large for its operation: {other:?}"),
    }
    let reply = client
        .request(format!("{PROTOCOL}.list_secrets"), big.clone().into())
        .await
        .unwrap();
    let code = reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Service-Error-Code"));
    assert_eq!(code.map(|c| c.as_str()), Some("413"));

    // A value as large as a NATS message allows is stored, on the API and the protocol.
    let value = vec![b'v'; 900_000];
    let (status, body) = api(&client, "piggybank.shop.db", "post", &value).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let (status, stored) = api(&client, "piggybank.shop.db", "get", b"").await;
    assert_eq!((status, stored.len()), (200, value.len()));
    // (A protocol request carries a value as JSON: a string of 600 KB stays under 1 MiB.)
    let long = "v".repeat(600_000);
    admin(client.clone())
        .put_secret("big", text(&long), None, None)
        .await
        .unwrap();
    // Small requests of the same operations are still served.
    let (status, _) = db(&client, "status", "").await;
    assert_eq!(status, 200);
}
