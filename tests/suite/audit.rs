//! The audit trail: every access decision is one record on `PIGGYBANK_AUDIT_<name>`, with
//! who, what and the outcome, and never a value; `--audit-required` fails closed; dropped
//! records are counted; `piggybank audit` lists and filters the trail.

use std::time::Duration;

use crate::common::*;
use base64::Engine as _;
use futures::StreamExt as _;
use piggybank::audit::{AuditRecord, Outcome};
use serde_json::Value;

const STREAM: &str = "PIGGYBANK_AUDIT_nats-kv";
const REFUSALS: &str = "PIGGYBANK_AUDIT_REFUSALS_nats-kv";

/// Every record on both trails, with its raw bytes.
pub(crate) async fn trail(nats: &NatsServer) -> Vec<(AuditRecord, Vec<u8>)> {
    let mut out = stream_records(nats, STREAM).await;
    out.extend(stream_records(nats, REFUSALS).await);
    out
}

/// Every record on one stream, with its raw bytes.
pub(crate) async fn stream_records(nats: &NatsServer, name: &str) -> Vec<(AuditRecord, Vec<u8>)> {
    use async_nats::jetstream::consumer::pull::OrderedConfig;
    let js = async_nats::jetstream::new(nats.client().await);
    let mut stream = js.get_stream(name).await.expect("the audit stream exists");
    let count = stream.info().await.unwrap().state.messages;
    let consumer = stream
        .create_consumer(OrderedConfig::default())
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut out = Vec::new();
    for _ in 0..count {
        let msg = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .expect("records arrive")
            .unwrap()
            .unwrap();
        for line in msg.payload.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let record: AuditRecord = serde_json::from_slice(line).expect("a record");
            out.push((record, line.to_vec()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_decision_is_one_record_and_no_record_holds_a_value() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let mut config = config(&nats, &keys);
    config.piggybank_prefix = Some("piggybank".into());
    let _backend = start_backend(&nats, config).await;
    let admin = admin(nats.client().await);
    let string_value = "hunter2-correct-horse-battery";
    let binary_value: Vec<u8> = b"\x00\x01binary-staple-\xff".to_vec();
    admin
        .put_secret("db", text(string_value), None, None)
        .await
        .unwrap();
    admin
        .put_secret("cert", bytes(&binary_value), None, None)
        .await
        .unwrap();
    let issuer = Issuer::new();
    let (jwt, component) = issuer.component();
    let (stranger_jwt, stranger) = issuer.component();
    admin
        .add_mapping(&component, &names(&["db", "cert"]))
        .await
        .unwrap();
    let host = host_client(&nats).await;
    let got = host_get(&host, request("db", &jwt)).await.unwrap();
    assert_eq!(got.string_secret.as_deref(), Some(string_value));
    host_get(&host, request("cert", &jwt)).await.unwrap();
    assert!(host_get(&host, request("db", &stranger_jwt)).await.is_err());
    admin.list_secrets("").await.unwrap();
    // The Piggy Bank API, and a database operation.
    let client = nats.client().await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("method", "post");
    client
        .request_with_headers(
            "piggybank.billing.token",
            headers,
            "api-token-value-42".into(),
        )
        .await
        .unwrap();
    let status = database_statuses(&client, "piggybank").await;
    assert_eq!(status.len(), 1);
    admin.delete_secret("cert").await.unwrap();
    // Records are written in the background: wait for the last one (the delete).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let records = loop {
        let records = trail(&nats).await;
        if records.iter().any(|(r, _)| r.operation == "delete_secret") {
            break records;
        }
        assert!(std::time::Instant::now() < deadline, "no delete record");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let find = |op: &str, outcome: Outcome, secret: Option<&str>| {
        records
            .iter()
            .map(|(r, _)| r)
            .find(|r| r.operation == op && r.outcome == outcome && r.secret.as_deref() == secret)
            .unwrap_or_else(|| panic!("no {op} {outcome:?} {secret:?} record in {records:#?}"))
            .clone()
    };
    let allowed = find("get", Outcome::Allowed, Some("db"));
    assert_eq!(allowed.front_door, "protocol");
    assert_eq!(allowed.entity.as_deref(), Some(component.as_str()));
    assert!(allowed.host.as_deref().is_some_and(|h| h.starts_with('N')));
    assert!(allowed.version.is_some());
    assert!(!allowed.request_id.is_empty() && !allowed.instance_id.is_empty());
    let denied = find("get", Outcome::Denied, Some("db"));
    assert_eq!(denied.entity.as_deref(), Some(stranger.as_str()));
    assert_eq!(denied.reason.as_deref(), Some("not_mapped"));
    let put = find("put_secret", Outcome::Allowed, Some("db"));
    assert!(put.version.is_some());
    let mapped = find("add_mapping", Outcome::Allowed, None);
    assert_eq!(mapped.entity.as_deref(), Some(component.as_str()));
    find("list_secrets", Outcome::Allowed, None);
    find("delete_secret", Outcome::Allowed, Some("cert"));
    let api = find("post", Outcome::Allowed, Some("_api/billing/token"));
    assert_eq!(
        (api.front_door.as_str(), api.application.as_deref()),
        ("api", Some("billing"))
    );
    assert_eq!(
        find("status", Outcome::Allowed, None).front_door,
        "database"
    );

    // No record holds a value, in any encoding; the search does find what records hold.
    assert!(records.iter().any(|(_, raw)| raw
        .windows(component.len())
        .any(|w| w == component.as_bytes())));
    let b64 = base64::engine::general_purpose::STANDARD;
    let needles: Vec<Vec<u8>> = [
        string_value.as_bytes(),
        &binary_value,
        b"api-token-value-42",
    ]
    .iter()
    .flat_map(|v| {
        [
            v.to_vec(),
            b64.encode(v).into_bytes(),
            data_encoding::HEXLOWER.encode(v).into_bytes(),
            format!("{:?}", v).into_bytes(),
        ]
    })
    .collect();
    for (_, raw) in &records {
        for needle in &needles {
            assert!(
                !raw.windows(needle.len()).any(|w| w == needle.as_slice()),
                "a record holds a value: {}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    // `piggybank audit` lists and filters the trail.
    let (ok, out, err) = cli(
        &nats,
        &["audit", "--json", "--outcome", "denied"],
        None,
        &[],
    );
    assert!(ok, "{err}");
    let denied: Vec<Value> = String::from_utf8_lossy(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!denied.is_empty());
    assert!(
        denied.iter().all(|r| r["outcome"] == "denied"),
        "{denied:?}"
    );
    let (ok, out, _) = cli(
        &nats,
        &["audit", "--secret", "db", "--since", "1h"],
        None,
        &[],
    );
    assert!(ok);
    let text = String::from_utf8_lossy(&out);
    assert!(text.lines().count() >= 3, "{text}");
    assert!(text.lines().all(|l| l.contains("secret=db")), "{text}");
    let (ok, out, _) = cli(&nats, &["audit", "--entity", &stranger], None, &[]);
    assert!(ok);
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.contains("denied") && text.contains("reason=not_mapped"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_stream_records_are_dropped_and_counted_or_with_audit_required_refused() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let _backend = start_backend(&nats, config(&nats, &keys)).await;
    let admin_client = admin(nats.client().await);
    admin_client
        .put_secret("db", text("v"), None, None)
        .await
        .unwrap();
    let js = async_nats::jetstream::new(nats.client().await);
    js.delete_stream(STREAM).await.unwrap();
    // Served anyway; the lost records are counted in `status`.
    for _ in 0..3 {
        admin_client.list_secrets("").await.unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = database_statuses(&nats.client().await, "piggybank").await;
        let dropped = status[0]["audit_dropped"].as_u64().unwrap_or(0);
        if dropped >= 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "drops not counted: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A second backend that requires its trail: served while the stream is there, refused
    // once it is gone, and served again when it is back (a restart recreates it).
    let nats = NatsServer::start();
    let mut required = config(&nats, &keys);
    required.audit.required = true;
    let backend = start_backend(&nats, required.clone()).await;
    let admin_client = admin(nats.client().await);
    admin_client
        .put_secret("db", text("v"), None, None)
        .await
        .unwrap();
    let issuer = Issuer::new();
    let (jwt, component) = issuer.component();
    admin_client
        .add_mapping(&component, &names(&["db"]))
        .await
        .unwrap();
    let host = host_client(&nats).await;
    assert!(host_get(&host, request("db", &jwt)).await.is_ok());
    let js = async_nats::jetstream::new(nats.client().await);
    js.delete_stream(STREAM).await.unwrap();
    let refused = host_get(&host, request("db", &jwt)).await;
    assert!(refused.is_err(), "a get was served unaudited");
    assert!(admin_client.list_secrets("").await.is_err());
    backend.stop().await;
    let _backend = start_backend(&nats, required).await;
    assert!(host_get(&host, request("db", &jwt)).await.is_ok());
}

/// Stopping does not lose the last requests' records (they gather in the writer for a
/// moment before they are written).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_records_of_the_last_requests_before_a_stop_are_written() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    // A process of its own: records left in its writer would die with it.
    let mut run = spawn_run(&nats, &keys, &[]);
    wait_for_backend(&nats, "wasmcloud.secrets.v1alpha1.nats-kv").await;
    let admin = admin(nats.client().await);
    admin
        .put_secret("last", text("v"), None, None)
        .await
        .unwrap();
    run.signal(libc::SIGTERM);
    let status = run.wait_exit(Duration::from_secs(10)).expect("stopped");
    assert_eq!(status.code(), Some(0));
    let records = trail(&nats).await;
    assert!(
        records
            .iter()
            .any(|(r, _)| r.operation == "put_secret" && r.secret.as_deref() == Some("last")),
        "the last put's record was lost: {records:#?}"
    );
}
