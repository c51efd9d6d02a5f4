//! The audit trail's integrity, attacked as an account user would: through the real
//! binary (`piggybank run`, `piggybank audit`), with floods on the served subjects and the
//! JetStream API on the audit streams (an async-nats JetStream context of the test's own).
//!
//! - A refusal flood of any size cannot evict the record of an allowed access.
//! - Every kind of tampering the hostile review found is reported by `audit --verify`, and
//!   the config ones refuse to serve under `--audit-required`.
//! - On a server with a small `max_payload`, every served get is recorded and signed puts
//!   keep working (the writer's batches fit, on a connection of its own).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use futures::StreamExt as _;

use crate::common::sealed::admin_seed;
use crate::common::*;

const DECISIONS: &str = "PIGGYBANK_AUDIT_nats-kv";
const REFUSALS: &str = "PIGGYBANK_AUDIT_REFUSALS_nats-kv";
const GET: &str = "wasmcloud.secrets.v1alpha1.nats-kv.get";

/// The allowed gets of `entity` in the decisions trail.
fn allowed_gets(nats: &NatsServer, entity: &str) -> usize {
    audit_json(nats, &["--trail", "decisions"])
        .iter()
        .filter(|r| r["operation"] == "get" && r["outcome"] == "allowed" && r["entity"] == entity)
        .count()
}

/// Poll `until` every 100 ms for up to `limit`.
async fn eventually(limit: Duration, mut until: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if until() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    until()
}

/// A backend run with `extra` flags, a secret `db` mapped to a component: (run, jwt, key).
async fn serving(nats: &NatsServer, keys: &Keys, extra: &[&str]) -> (Proc, String, String) {
    let run = spawn_run(nats, keys, extra);
    wait_for_backend(nats, "wasmcloud.secrets.v1alpha1.nats-kv").await;
    let admin = admin(nats.client().await);
    admin.put_secret("db", text("v"), None, None).await.unwrap();
    let (jwt, component) = Issuer::new().component();
    admin
        .add_mapping(&component, &names(&["db"]))
        .await
        .unwrap();
    (run, jwt, component)
}

/// Every message of a stream, in order: (subject, payload).
async fn messages_of(js: &jetstream::Context, name: &str) -> Vec<(String, bytes::Bytes)> {
    use jetstream::consumer::pull::OrderedConfig;
    let mut stream = js.get_stream(name).await.unwrap();
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
            .unwrap()
            .unwrap()
            .unwrap();
        out.push((msg.subject.to_string(), msg.payload.clone()));
    }
    out
}

/// Wait until the writer has written the decisions trail's records of what was done.
async fn settled(nats: &NatsServer, entity: &str, gets: usize) {
    assert!(
        eventually(Duration::from_secs(10), || allowed_gets(nats, entity)
            >= gets)
        .await,
        "the allowed gets were not recorded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_flood_cannot_evict_the_records_of_allowed_gets() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    // A deliberately small trail: 256 KiB of decisions, 256 KiB of refusals. (On one trail
    // of 256 KiB, as before the two, the flood below evicts the first allowed gets' records.)
    let (_run, jwt, component) = serving(
        &nats,
        &keys,
        &[
            "--audit-required",
            "--audit-max-bytes",
            "262144",
            "--audit-refusals-max-bytes",
            "262144",
        ],
    )
    .await;
    let host = host_client(&nats).await;
    for _ in 0..5 {
        host_get(&host, request("db", &jwt)).await.unwrap();
    }
    // The flood: sealed gets naming a 60,000-byte key, and invalid gets (no body), far more
    // than the refusal trail holds, from clients that never read the replies.
    let huge = "k".repeat(60_000);
    let mut refused = 0;
    for _ in 0..100 {
        if host_get(&host, request(&huge, &jwt)).await.is_err() {
            refused += 1;
        }
    }
    assert_eq!(refused, 100, "the huge-key gets were not all refused");
    // In rounds the backend can take (a flood it sheds unread records nothing): each refused
    // request is a record of a few hundred bytes, 20,000 of them far more than a trail holds.
    let flooder = nats.client().await;
    let inbox = flooder.new_inbox();
    for _ in 0..40 {
        for _ in 0..500 {
            flooder
                .publish_with_reply(GET, inbox.clone(), bytes::Bytes::new())
                .await
                .unwrap();
        }
        flooder.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Served after the flood too (once the backlog is answered): the decisions trail still
    // takes records.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut after = 0;
    while after < 5 {
        assert!(Instant::now() < deadline, "no get served after the flood");
        if host_get(&host, request("db", &jwt)).await.is_ok() {
            after += 1;
        }
    }
    settled(&nats, &component, 10).await;
    assert_eq!(allowed_gets(&nats, &component), 10);

    // Positive control: the flood really was refused and recorded, as refusals: counted in
    // summaries on the refusal trail.
    let status = database_statuses(&nats.client().await, "piggybank").await;
    let summarised = status[0]["audit"]["summarised"].as_u64().unwrap_or(0);
    // How many of the 20,000 the backend took before shedding the rest depends on the
    // machine's load; beyond the first 100 a second, each taken one is summarised.
    assert!(
        summarised >= 100,
        "the flood was not summarised: {status:?}"
    );
    // Summaries are written when their window closes (each second).
    let summary_written = eventually(Duration::from_secs(10), || {
        audit_json(&nats, &["--trail", "refusals"])
            .iter()
            .any(|r| r["count"].as_u64().is_some() && r["reason"] == "invalid_payload")
    })
    .await;
    assert!(
        summary_written,
        "no summary of the flood on the refusal trail"
    );
    let refusals = audit_json(&nats, &["--trail", "refusals"]);
    assert!(refusals.iter().all(|r| r["outcome"] != "allowed"
        || ["server_xkey", "status"].contains(&r["operation"].as_str().unwrap_or(""))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untampered_trail_verifies_clean() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let (_run, jwt, component) = serving(&nats, &keys, &["--audit-required"]).await;
    let host = host_client(&nats).await;
    for _ in 0..3 {
        host_get(&host, request("db", &jwt)).await.unwrap();
    }
    let (stranger, _) = Issuer::new().component();
    assert!(host_get(&host, request("db", &stranger)).await.is_err());
    settled(&nats, &component, 3).await;
    let (ok, out) = audit_verify(&nats);
    assert!(ok, "{out}");
    assert!(out.contains("verified"), "{out}");
}

/// Attack: purge the allowed records (refused: the stream denies purges), then do what a
/// purge would have done by hand: copy the stream without them, delete it and make it
/// again with the same config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_allowed_records_are_found_by_verify_and_the_replaced_stream_refuses() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let (_run, jwt, component) = serving(&nats, &keys, &["--audit-required"]).await;
    let host = host_client(&nats).await;
    let (stranger, _) = Issuer::new().component();
    for _ in 0..3 {
        host_get(&host, request("db", &jwt)).await.unwrap();
        assert!(host_get(&host, request("db", &stranger)).await.is_err());
    }
    settled(&nats, &component, 3).await;
    let js = jetstream::new(nats.client().await);
    let stream = js.get_stream(DECISIONS).await.unwrap();
    let purge = stream
        .purge()
        .filter("$PIGGYBANK.AUDIT.nats-kv.allowed.>")
        .await;
    assert!(purge.is_err(), "a purge of the decisions went through");
    assert_eq!(allowed_gets(&nats, &component), 3);
    assert!(audit_verify(&nats).0, "{}", audit_verify(&nats).1);

    let config = js
        .get_stream(DECISIONS)
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    let kept: Vec<_> = messages_of(&js, DECISIONS)
        .await
        .into_iter()
        .map(|(subject, payload)| {
            let lines: Vec<&[u8]> = payload
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .filter(|l| !String::from_utf8_lossy(l).contains("\"operation\":\"get\""))
                .collect();
            (subject, lines.join(&b'\n'))
        })
        .filter(|(_, body)| !body.is_empty())
        .collect();
    js.delete_stream(DECISIONS).await.unwrap();
    js.create_stream(config).await.unwrap();
    for (subject, body) in kept {
        js.publish(subject, body.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    assert_eq!(
        allowed_gets(&nats, &component),
        0,
        "the copy still holds the gets"
    );
    // The instance sees the stream replaced, and refuses to serve on it.
    let refused = tokio::time::timeout(Duration::from_secs(5), async {
        while host_get(&host, request("db", &jwt)).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(
        refused.is_ok(),
        "gets were still served on a replaced stream"
    );
    let (ok, out) = audit_verify(&nats);
    assert!(!ok, "verify missed the removed records: {out}");
    assert!(out.contains("missing"), "{out}");
    assert!(out.contains("replaced"), "{out}");
}

/// Attack: a forged record (`add_mapping` by the operator's admin key) through a `sources`
/// entry on the decisions stream, and another published straight on its subject.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_forged_through_a_source_or_a_direct_publish_are_found_and_the_source_refuses() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let (_run, jwt, component) = serving(&nats, &keys, &["--audit-required"]).await;
    let host = host_client(&nats).await;
    host_get(&host, request("db", &jwt)).await.unwrap();
    settled(&nats, &component, 1).await;
    assert!(audit_verify(&nats).0, "{}", audit_verify(&nats).1);

    let js = jetstream::new(nats.client().await);
    let forged = serde_json::json!({
        "time_ms": 1, "request_id": "x-1", "instance_id": "x", "front_door": "protocol",
        "operation": "add_mapping", "entity": component, "admin_key": "UOPERATOR",
        "outcome": "allowed", "trail": "decisions", "seq": 1,
    })
    .to_string();
    // Straight on the subject.
    js.publish(
        "$PIGGYBANK.AUDIT.nats-kv.allowed.protocol",
        forged.clone().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let (ok, out) = audit_verify(&nats);
    assert!(!ok && out.contains("forged"), "{out}");

    // Through a source.
    js.create_stream(stream::Config {
        name: "FORGERY".into(),
        subjects: vec!["forgery.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    js.publish("forgery.x", forged.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let mut config = js
        .get_stream(DECISIONS)
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    config.sources = Some(vec![stream::Source {
        name: "FORGERY".into(),
        ..Default::default()
    }]);
    js.update_stream(config).await.unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(5), async {
        while host_get(&host, request("db", &jwt)).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(
        refused.is_ok(),
        "gets were still served with a source on the trail"
    );
    let (ok, out) = audit_verify(&nats);
    assert!(!ok, "{out}");
    assert!(out.contains("sources is FORGERY"), "{out}");
}

/// Attack: `max_msgs` shrunk to 1 while gets are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shrunk_limit_while_serving_is_found_and_refuses() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let (_run, jwt, component) = serving(&nats, &keys, &["--audit-required"]).await;
    let host = host_client(&nats).await;
    for _ in 0..3 {
        host_get(&host, request("db", &jwt)).await.unwrap();
    }
    settled(&nats, &component, 3).await;
    let js = jetstream::new(nats.client().await);
    let mut config = js
        .get_stream(DECISIONS)
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    config.max_messages = 1;
    js.update_stream(config).await.unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(5), async {
        while host_get(&host, request("db", &jwt)).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(refused.is_ok(), "gets were still served on a shrunk trail");
    let client = nats.client().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = database_statuses(&client, "piggybank").await;
        if status[0]["audit"]["problems"]
            .to_string()
            .contains("max_msgs is 1")
        {
            break;
        }
        assert!(Instant::now() < deadline, "status does not say: {status:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (ok, out) = audit_verify(&nats);
    assert!(!ok, "{out}");
    assert!(
        out.contains("foreign stream") && out.contains("max_msgs is 1"),
        "{out}"
    );
}

/// Attack: the stream replaced by a decoy that keeps one message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decoy_stream_is_found_and_refuses() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let (_run, jwt, component) = serving(&nats, &keys, &["--audit-required"]).await;
    let host = host_client(&nats).await;
    host_get(&host, request("db", &jwt)).await.unwrap();
    settled(&nats, &component, 1).await;
    let js = jetstream::new(nats.client().await);
    js.delete_stream(DECISIONS).await.unwrap();
    js.create_stream(stream::Config {
        name: DECISIONS.into(),
        subjects: vec!["$PIGGYBANK.AUDIT.nats-kv.allowed.>".into()],
        max_messages: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(5), async {
        while host_get(&host, request("db", &jwt)).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(refused.is_ok(), "gets were still served on a decoy");
    let status = database_statuses(&nats.client().await, "piggybank").await;
    assert!(
        status[0]["audit"]["problems"]
            .as_array()
            .is_some_and(|p| !p.is_empty()),
        "{status:?}"
    );
    let (ok, out) = audit_verify(&nats);
    assert!(!ok && out.contains("foreign stream"), "{out}");
}

/// On a server whose max payload is 16 KiB, four hosts' gets for 3 s: every served get is
/// recorded, the stores' connection is never closed (signed puts keep working).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_small_max_payload_every_served_get_is_recorded_and_signed_puts_work() {
    let nats = nats_with_max_payload(16 * 1024);
    let keys = Keys::generate();
    let (seed, signer) = admin_seed();
    let public = signer.public_key().to_string();
    let run = spawn_run(&nats, &keys, &["--admin-keys", &public]);
    wait_for_backend(&nats, "wasmcloud.secrets.v1alpha1.nats-kv").await;
    let admin = admin(nats.client().await).with_signer(Some(signer));
    // A long name makes each record large: what is buffered at once outgrows 16 KiB.
    let name = format!("apps/{}", "n".repeat(240));
    admin
        .put_secret(&name, text("v"), None, None)
        .await
        .unwrap();
    let (jwt, component) = Issuer::new().component();
    admin
        .add_mapping(&component, &names(&[name.as_str()]))
        .await
        .unwrap();
    let until = Instant::now() + Duration::from_secs(3);
    let mut hosts = Vec::new();
    for _ in 0..4 {
        let host = Arc::new(host_client(&nats).await);
        for _ in 0..4 {
            let (host, jwt, name) = (Arc::clone(&host), jwt.clone(), name.clone());
            hosts.push(tokio::spawn(async move {
                let mut served = 0usize;
                while Instant::now() < until {
                    if host_get(&host, request(&name, &jwt)).await.is_ok() {
                        served += 1;
                    }
                }
                served
            }));
        }
    }
    let mut served = 0;
    for host in hosts {
        served += host.await.unwrap();
    }
    assert!(served > 100, "only {served} gets served");
    // Signed puts still work: the replay store's connection is up.
    for i in 0..5 {
        admin
            .put_secret(&format!("after-{i}"), text("v"), None, None)
            .await
            .unwrap();
    }
    let recorded = eventually(Duration::from_secs(15), || {
        allowed_gets(&nats, &component) >= served
    })
    .await;
    assert!(
        recorded,
        "{} of {served} served gets recorded",
        allowed_gets(&nats, &component)
    );
    drop((run, seed));
}

/// The instance keys `piggybank audit --verify` trusts are those the instances announce.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_announces_the_key_every_record_is_signed_with() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let (_run, jwt, component) = serving(&nats, &keys, &[]).await;
    let host = host_client(&nats).await;
    host_get(&host, request("db", &jwt)).await.unwrap();
    settled(&nats, &component, 1).await;
    let status = database_statuses(&nats.client().await, "piggybank").await;
    let key = status[0]["audit"]["instance_key"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(key.starts_with('N'), "{key}");
    let js = jetstream::new(nats.client().await);
    let mut signers = HashSet::new();
    for name in [DECISIONS, REFUSALS] {
        for (_, payload) in messages_of(&js, name).await {
            // One signature per message, on its last record, covering the ones before it.
            let records: Vec<_> = piggybank::audit::records(&payload)
                .map(|r| r.unwrap())
                .collect();
            let last = records.last().expect("a message holds records");
            assert_eq!(piggybank::audit::chain::check_signature(last), Ok(()));
            for record in records {
                signers.insert(record.instance_key.unwrap());
            }
        }
    }
    assert_eq!(signers, HashSet::from([key.clone()]));
    // Positive control: a key the instance did not announce is refused by --verify.
    let (ok, out, _) = cli(
        &nats,
        &[
            "audit",
            "--verify",
            "--instance-key",
            &nkeys::KeyPair::new_server().public_key(),
        ],
        None,
        &[],
    );
    assert!(!ok, "{}", String::from_utf8_lossy(&out));
    assert!(String::from_utf8_lossy(&out).contains("not a known instance key"));
}
