//! A hostile review: an attacker holds a NATS user on the backend's account. It can publish
//! any request, with any headers, body and reply subject, on the subjects piggybank serves,
//! and it can subscribe to `>` (the shared `_INBOX.>` included) and replay what it saw.
//!
//! Each test names an attack and asserts the SAFE behaviour: a failing test is a finding.
//! Every finding of this review is fixed; each test is now a regression test.

mod common;

use std::time::{Duration, Instant};

use async_nats::{HeaderMap, Subject};
use base64::Engine as _;
use common::sealed::*;
use common::*;
use futures::StreamExt as _;
use piggybank::serve::ReplyPolicy;
use serde_json::Value;

const PROTOCOL: &str = "wasmcloud.secrets.v1alpha1.nats-kv";

fn method(m: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("method", m);
    h
}

/// (Status, JSON) of a database operation, on the subject every version serves.
async fn db(client: &async_nats::Client, op: &str, body: &str) -> (u16, Value) {
    let reply = client
        .request(format!("piggybank.database.{op}"), body.to_string().into())
        .await
        .unwrap();
    let status = reply.headers.as_ref().unwrap().get("Status").unwrap();
    (
        status.as_str().parse().unwrap(),
        serde_json::from_slice(&reply.payload).unwrap_or(Value::Null),
    )
}

/// (Status, payload) of a Piggy Bank API request.
async fn api(client: &async_nats::Client, subject: &str, m: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let reply = client
        .request_with_headers(subject.to_string(), method(m), body.to_vec().into())
        .await
        .unwrap();
    let status = reply.headers.unwrap().get("Status").unwrap().to_string();
    (status.parse().unwrap(), reply.payload.to_vec())
}

// ---------------------------------------------------------------------------------------
// 1. Reply subjects
// ---------------------------------------------------------------------------------------

/// Attack: odd reply subjects (unicode and ASCII whitespace, control bytes, CRLF that would
/// inject a second protocol line, wildcards, `$` and look-alikes, empty tokens, very long
/// ones). Safe: the policy admits a subject only if it is a literal subject under `_INBOX.`
/// with no whitespace, wildcard or empty token.
#[test]
fn the_reply_policy_admits_only_literal_inbox_subjects() {
    let served = [PROTOCOL.to_string(), "piggybank".to_string()];
    let policy = ReplyPolicy::new(&[], &served).unwrap();
    let long = format!("_INBOX.{}", "a".repeat(100_000));
    let odd = [
        "_INBOX.a b",
        "_INBOX.a\tb",
        "_INBOX.a\r\nPUB $KV.WASMCLOUD_SECRETS.x 1\r\nx",
        "_INBOX.a\nb",
        "_INBOX.\u{3000}",
        "_INBOX.a\u{2028}b",
        "_INBOX.a\u{85}b",
        "_INBOX.>",
        "_INBOX.*",
        "_INBOX.a.>",
        "_INBOX.a.*.b",
        "_INBOX..a",
        "_INBOX.a.",
        "_INBOX.",
        "_INBOX",
        "_inbox.a",
        "\u{FF04}KV.x",
        "$KV.WASMCLOUD_SECRETS.x",
        " $KV.WASMCLOUD_SECRETS.x",
        "$JS.API.STREAM.PURGE.KV_WASMCLOUD_SECRETS",
        "piggybank.database.lock",
        "piggybank.app.x",
        "wasmcloud.secrets.v1alpha1.nats-kv.add_mapping.MABC",
        "wasmcloud.secrets.v1alpha1.other-kv.add_mapping.MABC",
        "wasmbus.ctl.v1.default.host.ping",
        "",
        long.as_str(),
    ];
    for s in odd {
        let admitted = policy.check(Some(&Subject::from(s))).is_ok();
        let literal_inbox = s.starts_with("_INBOX.")
            && s.split('.').all(|t| {
                !t.is_empty() && t != "*" && t != ">" && !t.chars().any(char::is_whitespace)
            });
        assert!(
            !admitted || literal_inbox,
            "admitted {:?}",
            s.chars().take(60).collect::<String>()
        );
    }
    // `_INBOX.` followed by tokens NATS gives a meaning elsewhere is still just an inbox.
    for s in ["_INBOX.$JS.API.x", "_INBOX.$KV.B.k", "_INBOX._R_.x"] {
        assert!(policy.check(Some(&Subject::from(s))).is_ok(), "{s}");
    }
}

/// Attack: make a served tree and a trusted reply namespace overlap, so that a reply lands
/// on a subject piggybank serves: the Piggy Bank API prefix set to `_INBOX` (then every
/// `_INBOX.` reply is a request to the API), a reply prefix equal to, inside, or around the
/// API or database trees. Safe: `run` refuses to start.
#[tokio::test]
async fn run_refuses_a_served_tree_that_overlaps_a_reply_namespace() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let cases: Vec<(Option<&str>, Vec<&str>)> = vec![
        (Some("_INBOX"), vec![]),
        (Some("_INBOX.api"), vec![]),
        (Some("_INBOX_billing"), vec!["_INBOX_billing"]),
        (Some("piggybank"), vec!["piggybank.billing"]),
        (Some("acme.pb"), vec!["acme"]),
        (None, vec!["piggybank"]),
        (None, vec!["piggybank.database"]),
        (None, vec!["wasmcloud"]),
    ];
    for (api_prefix, prefixes) in cases {
        let mut c = config(&nats, &keys);
        c.piggybank_prefix = api_prefix.map(str::to_string);
        c.reply_prefixes = prefixes.iter().map(|s| s.to_string()).collect();
        let ran =
            tokio::time::timeout(Duration::from_secs(20), piggybank::server::run(c, async {}))
                .await
                .expect("run returns");
        assert!(
            ran.is_err(),
            "started with API prefix {api_prefix:?} and reply prefixes {prefixes:?}"
        );
    }
}

/// Attack: the backend's own connection subscribes under `_INBOX.` too: the deliver subjects
/// of its KV mirrors (ordered push consumers) and of its key record watch, and the request
/// multiplexer `_INBOX.<nuid>.*` that receives JetStream API replies and publish acks. A
/// subscriber on `_INBOX.>` learns a deliver subject from the first change delivered (reply
/// `$JS.ACK.KV_...`) or from an idle heartbeat, then sends `server_xkey` (or a Piggy Bank
/// API `get`, whose reply is the stored bytes verbatim) with that reply subject. Piggybank
/// then publishes into its own consumer: the mirror fails (`message.info()`), drops its
/// consumer and replays the whole bucket, once per forged message (a cheap amplification,
/// and a window of stale cache). Aimed at the multiplexer with a stored body like
/// `{"stream":"KV_WASMCLOUD_SECRETS","seq":18446744073709551000}`, a forged publish ack
/// that won the race would make read-your-writes cache a write at that revision, after
/// which `insert_if_newer` ignores every later change of that key (a purge included).
/// Safe: piggybank never replies to a subject one of its own subscriptions listens on.
#[tokio::test]
async fn a_reply_never_lands_in_one_of_the_backends_own_subscriptions() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let _backend = start_backend(&nats, config(&nats, &keys)).await;
    let spy = nats.client().await;
    // Wherever the backend's inboxes are: the spy listens to everything.
    let mut inbox = spy.subscribe(">").await.unwrap();
    spy.flush().await.unwrap();
    let admin = admin(nats.client().await);
    admin
        .put_secret("bait", text("v"), None, None)
        .await
        .unwrap();

    // A push consumer's deliveries show the stored subject (`$KV...`), but its idle
    // heartbeats (every 5 s) come on the deliver subject itself.
    let deadline = Instant::now() + Duration::from_secs(15);
    let deliver = loop {
        let msg = tokio::time::timeout_at(deadline.into(), inbox.next())
            .await
            .expect("an idle heartbeat of the backend's mirror")
            .unwrap();
        if msg.status == Some(async_nats::StatusCode::IDLE_HEARTBEAT) {
            break msg.subject.to_string();
        }
    };
    let attacker = nats.client().await;
    attacker
        .publish_with_reply(
            format!("{PROTOCOL}.server_xkey"),
            deliver.clone(),
            "".into(),
        )
        .await
        .unwrap();
    attacker.flush().await.unwrap();

    let transit = keys.transit_public();
    let mut forged = 0;
    let mut replays = 0;
    let until = Instant::now() + Duration::from_secs(2);
    while let Ok(Some(msg)) = tokio::time::timeout_at(until.into(), inbox.next()).await {
        if msg.subject.as_str() == deliver && msg.payload.as_ref() == transit.as_bytes() {
            forged += 1;
        }
        // The backend's mirror makes a new consumer (its create response shows the next
        // deliver subject to the same spy).
        if msg
            .payload
            .starts_with(b"{\"type\":\"io.nats.jetstream.api.v1.consumer_create_response\"")
        {
            replays += 1;
        }
    }
    assert_eq!(
        forged, 0,
        "piggybank published its reply into its own mirror's deliver subject {deliver}; \
         then made {replays} new consumer(s) and replayed its bucket"
    );
}

/// Attack (Piggy Bank API, the README's recommended layout): each application has its own
/// inbox prefix, all of them in `--reply-prefixes`. Application `shop` stores a forged value
/// under its own name, then asks for it with a reply subject in `billing`'s inbox prefix, so
/// piggybank delivers `shop`'s bytes (Status 200) into `billing`'s inbox, where NATS
/// permissions forbid `shop` to publish: a forged answer to a pending request of `billing`.
/// Safe: an application's replies go only to its own inbox prefix (or the default one).
#[tokio::test]
async fn an_application_cannot_aim_its_replies_at_another_applications_inbox() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let mut c = config(&nats, &keys);
    c.piggybank_prefix = Some("piggybank".into());
    c.reply_prefixes = vec!["_INBOX_billing".into(), "_INBOX_shop".into()];
    let _backend = start_backend(&nats, c).await;
    let shop = async_nats::ConnectOptions::new()
        .custom_inbox_prefix("_INBOX_shop")
        .connect(nats.url())
        .await
        .unwrap();
    let (status, _) = api(&shop, "piggybank.shop.db", "post", b"postgres://evil").await;
    assert_eq!(status, 200);

    let billing = nats.client().await;
    let mut billing_inbox = billing.subscribe("_INBOX_billing.>").await.unwrap();
    billing.flush().await.unwrap();
    shop.publish_with_reply_and_headers(
        "piggybank.shop.db".to_string(),
        "_INBOX_billing.pending.1".to_string(),
        method("get"),
        "".into(),
    )
    .await
    .unwrap();
    shop.flush().await.unwrap();
    let landed = tokio::time::timeout(Duration::from_secs(1), billing_inbox.next()).await;
    assert!(
        landed.is_err(),
        "shop's secret was delivered into billing's inbox: {:?}",
        landed.ok().flatten().map(|m| m.payload)
    );
    // The control: shop is answered in its own prefix and in the shared one.
    let (status, value) = api(&shop, "piggybank.shop.db", "get", b"").await;
    assert_eq!((status, value.as_slice()), (200, &b"postgres://evil"[..]));
    let shared = nats.client().await;
    let (status, _) = api(&shared, "piggybank.shop.db", "get", b"").await;
    assert_eq!(status, 200);
}

// ---------------------------------------------------------------------------------------
// 2. The seal, and the unlock shares
// ---------------------------------------------------------------------------------------

/// Attack: before (or while) the operators unlock a store split into shares, submit a bogus
/// share (right length, any x coordinate, here the one of the operators' first share) to
/// `unlock` (unauthenticated without `--admin-keys`; this store runs without), which takes
/// a share sealed to the public `unseal_xkey` from `status` just as well. The bogus share
/// takes the slot of that x, so the real one is refused as "already given", and the next
/// real share combines with the bogus one, fails, and discards every pending share.
/// Repeated, the store can never be unlocked. Safe: the operators' real shares unlock the store whatever an
/// attacker submitted before.
#[tokio::test]
async fn a_bogus_share_cannot_block_the_operators_unlock() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let _backend = start_sealed_backend(&nats).await;
    let (status, body) = db(&client, "initialize", r#"{"shares":3,"threshold":2}"#).await;
    assert_eq!(status, 200, "{body}");
    let shares: Vec<String> = body["shares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut bogus = b64.decode(&shares[0]).unwrap();
    for b in bogus.iter_mut().skip(1) {
        *b = 0x42;
    }
    let bogus = b64.encode(&bogus);

    let (status, body) = db(&client, "unlock", &format!(r#"{{"share":"{bogus}"}}"#)).await;
    let attacker_answer = format!("{status} {body}");
    let mut answers = Vec::new();
    for share in &shares[..2] {
        let (status, body) = db(&client, "unlock", &format!(r#"{{"share":"{share}"}}"#)).await;
        answers.push(format!("{status} {body}"));
    }
    let (_, status) = db(&client, "status", "").await;
    assert_eq!(
        status["sealed"].as_bool(),
        Some(false),
        "two real shares did not unlock the store after one bogus share \
         (attacker: {attacker_answer}; operators: {answers:?})"
    );
}

/// Attack: read the database key, or a share, back from `status` after an unlock, or from
/// any message on the bus other than `initialize`'s reply. Safe: `status` never carries
/// key material, and neither do the replies to `unlock`.
#[tokio::test]
async fn status_and_unlock_replies_carry_no_key_material() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let _backend = start_sealed_backend(&nats).await;
    let (status, body) = db(&client, "initialize", "").await;
    assert_eq!(status, 200, "{body}");
    let key = body["database_key"].as_str().unwrap().to_string();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&key)
        .unwrap();
    let forms = [
        key.clone(),
        raw.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw),
    ];
    let spy = nats.client().await;
    let mut all = spy.subscribe(">").await.unwrap();
    spy.flush().await.unwrap();
    let (status, unlocked) = db(&client, "unlock", &format!(r#"{{"database_key":"{key}"}}"#)).await;
    assert_eq!(status, 200, "{unlocked}");
    let (_, report) = db(&client, "status", "").await;
    for text in [unlocked.to_string(), report.to_string()] {
        for form in &forms {
            assert!(!text.contains(form.as_str()), "key material in {text}");
        }
    }
    // Every message since, except the unlock request itself (the key's clear form, which
    // this backend still accepts with a warning), carries none of it.
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(300), all.next()).await {
        let payload = String::from_utf8_lossy(&msg.payload);
        if msg.subject.as_str() == "piggybank.database.unlock" {
            continue;
        }
        for form in &forms {
            assert!(
                !payload.contains(form.as_str()),
                "key material on {}",
                msg.subject
            );
        }
    }
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
    assert_eq!(api(&client, "piggybank.app.x", "post", b"v1").await.0, 200);
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
            let (status, _) = api(&client, "piggybank.app.x", m, b"v2").await;
            assert_eq!(status, 423, "round {round}: {m} while locked");
        }
        let (_, report) = db(&client, "status", "").await;
        assert_eq!(report["sealed"].as_bool(), Some(true), "round {round}");
    }
    assert_eq!(db(&client, "unlock", &unlock).await.0, 200);
    let (status, value) = api(&client, "piggybank.app.x", "get", b"").await;
    assert_eq!((status, value.as_slice()), (200, b"v1".as_slice()));
}

// ---------------------------------------------------------------------------------------
// 3. Oracles, echoes, crashes, memory
// ---------------------------------------------------------------------------------------

/// Attack: an unmapped entity (a valid JWT of an untrusted-but-unchecked issuer) probes
/// which secret names exist, varying `version` and `field` to reach a later error first.
/// Safe: the same `Unauthorized` answer whether the secret exists or not.
#[tokio::test]
async fn an_unmapped_entity_cannot_tell_whether_a_secret_exists() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let _backend = start_backend(&nats, config(&nats, &keys)).await;
    let admin = admin(nats.client().await);
    admin
        .put_secret("exists", text(r#"{"a":"b"}"#), None, None)
        .await
        .unwrap();
    let (_, mapped) = Issuer::new().component();
    admin
        .add_mapping(&mapped, &names(&["exists", "ghost"]))
        .await
        .unwrap();
    let (jwt, _) = Issuer::new().component();
    let host = host_client(&nats).await;
    let probe = |name: &str, version: Option<&str>, field: Option<&str>| {
        let mut r = request(name, &jwt);
        r.version = version.map(str::to_string);
        r.field = field.map(str::to_string);
        r
    };
    for (version, field) in [
        (None, None),
        (Some("1"), None),
        (Some("999"), None),
        (Some("not-a-number"), None),
        (None, Some("a")),
        (None, Some("missing")),
    ] {
        let existing = host_refusal(&host, probe("exists", version, field)).await;
        let absent = host_refusal(&host, probe("ghost", version, field)).await;
        let never = host_refusal(&host, probe("never-mentioned", version, field)).await;
        assert_eq!(existing, absent, "{version:?} {field:?}");
        assert_eq!(existing, never, "{version:?} {field:?}");
        assert!(
            existing.to_lowercase().contains("unauthorized"),
            "{existing}"
        );
        assert!(!existing.contains("exists") && !existing.contains(r#""b""#));
    }
}

/// Attack (Piggy Bank API): application `shop` reaches `billing`'s key through the name part
/// of its subject: `/`, `..`, leading `/`, encoded forms, a second application token, the
/// reserved `database` application in another case. Safe: whatever `shop` sends, it can
/// only create or read keys under `shop/`, and `billing/db` is untouched.
#[tokio::test]
async fn an_application_cannot_reach_another_applications_key() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let mut c = config(&nats, &keys);
    c.piggybank_prefix = Some("piggybank".into());
    let _backend = start_backend(&nats, c).await;
    let client = nats.client().await;
    assert_eq!(
        api(&client, "piggybank.billing.db", "post", b"billing-secret")
            .await
            .0,
        200
    );
    let names = [
        "piggybank.shop.../billing/db",
        "piggybank.shop.x/../../billing/db",
        "piggybank.shop./billing/db",
        "piggybank.shop.%2e%2e/billing/db",
        "piggybank.shop.billing.db",
        "piggybank.shop.billing/db",
        "piggybank.shop./../billing/db",
        "piggybank.shop.=/billing/db",
        "piggybank.shop/billing.db",
        "piggybank.shop/../billing.db",
        "piggybank.DATABASE.x",
        "piggybank.shop.ü",
    ];
    for subject in names {
        for m in ["post", "delete", "get"] {
            // A subject NATS refuses (empty tokens) gets "no responders": nothing to check.
            let Ok(reply) = client
                .request_with_headers(subject.to_string(), method(m), "shop-was-here".into())
                .await
            else {
                continue;
            };
            let status = reply
                .headers
                .and_then(|h| h.get("Status").map(|v| v.to_string()));
            let payload = reply.payload.to_vec();
            assert_ne!(
                payload.as_slice(),
                b"billing-secret",
                "{subject} {m}: {status:?}"
            );
        }
    }
    let (status, value) = api(&client, "piggybank.billing.db", "get", b"").await;
    assert_eq!(
        (status, value.as_slice()),
        (200, b"billing-secret".as_slice())
    );
    let admin = admin(client.clone());
    for meta in admin.list_secrets("").await.unwrap() {
        assert!(
            meta.name == "billing/db"
                || meta.name.starts_with("shop/")
                || meta.name.starts_with("DATABASE/"),
            "a key outside shop/: {}",
            meta.name
        );
    }
}

/// Attack: malformed input on every front door, each sent as a request with a proper reply
/// subject: huge and deeply nested JSON, non-UTF-8 bodies and headers, absurd limits, shares
/// with x = 0 or the wrong length, unknown operations, unicode subjects. A handler that
/// panics answers nothing (its task dies), and one that panics in the serve loop stops the
/// backend. Safe: every request gets an answer, and the backend still serves afterwards.
#[tokio::test]
async fn malformed_requests_all_get_an_answer() {
    // The protocol and the API on a keyed backend (unsealed: requests reach the core)...
    let keyed_nats = NatsServer::start();
    let keys = Keys::generate();
    let mut c = config(&keyed_nats, &keys);
    c.piggybank_prefix = Some("piggybank".into());
    let _keyed = start_backend(&keyed_nats, c).await;
    let keyed = keyed_nats.client().await;
    // ...and the database operations on a sealed one, split into shares.
    let nats = NatsServer::start();
    let client = nats.client().await;
    let _backend = start_sealed_backend(&nats).await;
    let (_, body) = db(&client, "initialize", r#"{"shares":2,"threshold":2}"#).await;
    assert!(body["shares"].is_array(), "{body}");

    let nested = format!("{}{}", "[".repeat(200_000), "]".repeat(200_000));
    let many_names = serde_json::to_vec(
        &(0..60_000)
            .map(|i| format!("n{i}"))
            .collect::<Vec<String>>(),
    )
    .unwrap();
    let zero_share = base64::engine::general_purpose::STANDARD.encode([0u8; 33]);
    let short_share = base64::engine::general_purpose::STANDARD.encode([1u8; 5]);
    let long_share = base64::engine::general_purpose::STANDARD.encode([1u8; 5000]);
    let (_, entity) = Issuer::new().component();
    let mut weird = HeaderMap::new();
    weird.insert("WasmCloud-Host-Xkey", "X\u{0}\u{7f}é");
    weird.insert("method", "gEt\u{2028}");
    let mut xkey = HeaderMap::new();
    xkey.insert(
        "WasmCloud-Host-Xkey",
        nkeys::XKey::new().public_key().as_str(),
    );
    let p = PROTOCOL;
    let requests: Vec<(String, Option<HeaderMap>, Vec<u8>)> = vec![
        (format!("{p}.get"), None, vec![0xff; 900_000]),
        (
            format!("{p}.get"),
            Some(weird.clone()),
            nested.clone().into(),
        ),
        (format!("{p}.get"), Some(xkey.clone()), vec![0x00; 64]),
        (format!("{p}.put_secret"), Some(xkey), vec![0xfe; 1000]),
        (format!("{p}.list_secrets"), None, nested.clone().into()),
        (
            format!("{p}.list_secrets"),
            None,
            br#"{"limit":18446744073709551615,"after":"\u0000"}"#.to_vec(),
        ),
        (
            format!("{p}.list_secrets"),
            None,
            br#"{"limit":-1}"#.to_vec(),
        ),
        (format!("{p}.add_mapping.{entity}"), None, many_names),
        (
            format!("{p}.add_mapping.{entity}"),
            None,
            nested.clone().into(),
        ),
        (format!("{p}.add_mapping.Mé"), None, br#"["x"]"#.to_vec()),
        (format!("{p}.get_mappings.{entity}"), None, vec![0xff; 10]),
        (
            format!("{p}.delete_secret"),
            None,
            br#"{"key":null}"#.to_vec(),
        ),
        (format!("{p}.nope"), None, vec![]),
        (format!("{p}.get.extra.tokens"), None, vec![]),
        (
            "piggybank.database.unlock".into(),
            None,
            format!(r#"{{"share":"{zero_share}"}}"#).into(),
        ),
        (
            "piggybank.database.unlock".into(),
            None,
            format!(r#"{{"share":"{short_share}"}}"#).into(),
        ),
        (
            "piggybank.database.unlock".into(),
            None,
            format!(r#"{{"share":"{long_share}"}}"#).into(),
        ),
        (
            "piggybank.database.unlock".into(),
            None,
            br#"{"share":"AQ==","database_key":"AQ=="}"#.to_vec(),
        ),
        (
            "piggybank.database.unlock".into(),
            None,
            nested.clone().into(),
        ),
        (
            "piggybank.database.initialize".into(),
            None,
            br#"{"shares":255,"threshold":255}"#.to_vec(),
        ),
        ("piggybank.database.rotate".into(), None, vec![0xff; 100]),
        ("piggybank.database.nope".into(), None, vec![]),
        ("piggybank.shop.x".into(), Some(weird), vec![0xff; 100]),
        ("piggybank.shop.ü.ß".into(), Some(method("get")), vec![]),
        ("piggybank.shop.x".into(), Some(method("post")), vec![]),
    ];
    let mut silent = Vec::new();
    for (subject, headers, body) in requests {
        let to = if subject.starts_with("piggybank.database.") {
            &client
        } else {
            &keyed
        };
        let h = headers.unwrap_or_default();
        let sent = to.request_with_headers(subject.clone(), h, body.into());
        let answered = tokio::time::timeout(Duration::from_secs(10), sent).await;
        if !matches!(answered, Ok(Ok(_))) {
            silent.push(subject);
        }
    }
    assert!(silent.is_empty(), "no answer (panic?) to {silent:?}");
    let (status, report) = db(&client, "status", "").await;
    assert_eq!(status, 200);
    assert_eq!(report["progress"].as_u64(), Some(0), "{report}");
    let xkey = keyed
        .request(format!("{PROTOCOL}.server_xkey"), "".into())
        .await
        .unwrap();
    assert_eq!(xkey.payload.as_ref(), keys.transit_public().as_bytes());
}

// ---------------------------------------------------------------------------------------
// 4. Signed administration in the serve loop, the seal's front door, auto-unlock, shutdown
//    (review of the restructure: `serve::Access`, `Endpoint.refusal`, `UnlockInput`, the
//    bounded drain)
// ---------------------------------------------------------------------------------------

use nkeys::XKey;
use piggybank::admin_auth::{AdminSigner, REFUSED};
use piggybank::seal::transfer::{Sealed, SealedUnlock};
use serde_json::json;
use zeroize::Zeroizing;

fn admin_signer() -> AdminSigner {
    admin_seed().1
}

/// Every reply to one request, until none has come for 500 ms.
async fn gather_all(
    client: &async_nats::Client,
    subject: &str,
    headers: HeaderMap,
    body: &[u8],
) -> Vec<(u16, Value)> {
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.unwrap();
    client
        .publish_with_reply_and_headers(subject.to_string(), inbox, headers, body.to_vec().into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let mut out = Vec::new();
    let mut wait = Duration::from_secs(3);
    while let Ok(Some(msg)) = tokio::time::timeout(wait, replies.next()).await {
        let status = msg
            .headers
            .as_ref()
            .and_then(|h| h.get("Status"))
            .and_then(|s| s.as_str().parse().ok())
            .unwrap_or(0);
        out.push((
            status,
            serde_json::from_slice(&msg.payload).unwrap_or(Value::Null),
        ));
        wait = Duration::from_millis(500);
    }
    out
}

async fn one_status(client: &async_nats::Client) -> Value {
    let (status, body) = ask(
        client,
        &format!("{DB}.status"),
        HeaderMap::new(),
        b"",
        Duration::from_secs(5),
    )
    .await
    .expect("status answered");
    assert_eq!(status, 200, "{body}");
    body
}

/// Attack: the spy on `piggybank.>` records the operator's `piggybank unlock` message (the
/// key sealed to the instance's unseal xkey: the attacker cannot open it). Later the
/// operator locks the store (signed, e.g. in an incident). The attacker publishes the
/// recorded unlock again, byte for byte: `unlock` needed no signature, the unseal xkey was
/// made once per process and never changed, and the sealed body carries no nonce, time or
/// challenge, so it opened again and unsealed the store. Safe: once locked, only someone who
/// holds the key (or shares) can unlock; a recorded unlock is worthless (its unseal xkey is
/// gone, and now its signature's nonce is spent too).
#[tokio::test]
async fn a_recorded_sealed_unlock_cannot_undo_a_lock() {
    let nats = NatsServer::start();
    let admin = admin_signer();
    let _backend = start_backend(&nats, sealed_signed_config(&nats, &admin)).await;
    let operator = nats.client().await;
    let key = signed_initialize(&operator, &admin).await;

    let attacker = nats.client().await;
    let mut spy = attacker.subscribe("piggybank.>").await.unwrap();
    attacker.flush().await.unwrap();

    let status = one_status(&operator).await;
    let unlock = format!("{DB}.unlock");
    let body = sealed_unlock_for(&status, &key);
    let (code, reply) = ask(
        &operator,
        &unlock,
        admin.sign(&unlock, &body),
        &body,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!((code, reply["sealed"].clone()), (200, json!(false)));
    assert_eq!(api(&operator, "piggybank.app.x", "post", b"v").await.0, 200);

    // What the spy recorded: the unlock as it crossed the bus.
    let recorded = loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), spy.next())
            .await
            .expect("the spy saw the unlock")
            .unwrap();
        if msg.subject.as_str() == unlock {
            break (msg.headers.unwrap_or_default(), msg.payload.to_vec());
        }
    };
    assert!(
        !String::from_utf8_lossy(&recorded.1).contains(&key),
        "the key itself never crossed the bus"
    );

    let lock = format!("{DB}.lock");
    let (code, _) = ask(
        &operator,
        &lock,
        admin.sign(&lock, b""),
        b"",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(code, 200);
    assert_eq!(one_status(&operator).await["sealed"], json!(true));

    // Headers and body, byte for byte (the signature is the operator's).
    let replayed = ask(
        &attacker,
        &unlock,
        recorded.0,
        &recorded.1,
        Duration::from_secs(5),
    )
    .await;
    let after = one_status(&operator).await;
    let read = api(&attacker, "piggybank.app.x", "get", b"").await;
    assert_eq!(
        after["sealed"],
        json!(true),
        "a replayed unlock ({replayed:?}) undid the operator's lock; the API now answers {read:?}"
    );
}

/// Attack: record a signed `lock` (every instance obeys it once: its nonce is recorded per
/// instance id) and replay it, within its 30 s, to an instance that was not running when it
/// was signed: one that started later, or restarted (a new id), and auto-unlocked with
/// `--unlock-key-file`. Its nonce scope is new, so it obeys the replay. Safe: a signed
/// lock is obeyed only by the instances that received it when it was sent.
#[tokio::test]
async fn a_recorded_lock_cannot_lock_an_instance_started_after_it() {
    let nats = NatsServer::start();
    let admin = admin_signer();
    let first = start_backend(&nats, sealed_signed_config(&nats, &admin)).await;
    let operator = nats.client().await;
    let key = signed_initialize(&operator, &admin).await;
    let clear = json!({ "database_key": key }).to_string();
    let unlock = format!("{DB}.unlock");
    let unlocked = gather_all(
        &operator,
        &unlock,
        admin.sign(&unlock, clear.as_bytes()),
        clear.as_bytes(),
    )
    .await;
    assert!(unlocked.iter().all(|(s, _)| *s == 200), "{unlocked:?}");

    // The operator locks (signed); the attacker records the request.
    let lock = format!("{DB}.lock");
    let signed = admin.sign(&lock, b"");
    let locked = gather_all(&operator, &lock, signed.clone(), b"").await;
    assert_eq!(locked.len(), 1);
    assert_eq!(locked[0].0, 200);
    first.stop().await;

    // A new instance (a restart, or a scale-up) auto-unlocks at start with its key file.
    let mut c = sealed_signed_config(&nats, &admin);
    c.database_key = Some(Zeroizing::new(key.clone()));
    let _second = start_backend(&nats, c).await;
    let before = wait_database_instances(&operator, "piggybank", 1).await;
    assert_eq!(before[0]["sealed"], json!(false), "auto-unlocked at start");

    let replayed = gather_all(&operator, &lock, signed, b"").await;
    let after = database_statuses(&operator, "piggybank").await;
    assert_eq!(
        after[0]["sealed"],
        json!(false),
        "the recorded lock was obeyed by an instance started after it: {replayed:?}"
    );
}

/// Attack: get an unsigned `initialize`, `rotate` or `lock` handled. Every spelling of the
/// subject (the named one, the deprecated alias, another backend's name, another case,
/// extra or missing tokens), the API's `method` header on the database subjects (the API
/// serves `piggybank.>` and classifies every message as open), forged and partial signature
/// headers, a signature for the alias used on the named subject and the other way round,
/// one for another backend's name, and a replay on either subject. Safe: no 200 to any of
/// them, and the seal is as it was (unsealed, one data key).
#[tokio::test]
async fn no_subject_form_gets_an_unsigned_seal_operation_handled() {
    let nats = NatsServer::start();
    let admin = admin_signer();
    let _backend = start_backend(&nats, sealed_signed_config(&nats, &admin)).await;
    let operator = nats.client().await;
    let key = signed_initialize(&operator, &admin).await;
    let clear = json!({ "database_key": key }).to_string();
    let unlock = format!("{DB}.unlock");
    let (code, _) = ask(
        &operator,
        &unlock,
        admin.sign(&unlock, clear.as_bytes()),
        clear.as_bytes(),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(code, 200);
    let attacker = nats.client().await;
    let stranger = admin_signer();

    let mut served = Vec::new();
    let mut pending = Vec::new();
    for op in ["initialize", "rotate", "lock"] {
        let named = format!("{DB}.{op}");
        let alias = format!("piggybank.database.{op}");
        let subjects = [
            named.clone(),
            alias.clone(),
            format!("piggybank.database.other-kv.{op}"),
            format!("piggybank.database.NATS-KV.{op}"),
            format!("piggybank.database.nats-kv.{}", op.to_uppercase()),
            format!("piggybank.DATABASE.nats-kv.{op}"),
            format!("piggybank.database.nats-kv.{op}.extra"),
            format!("piggybank.database.nats-kv.x.{op}"),
            format!("piggybank.database.{op}.nats-kv"),
            format!("piggybank.database.nats-kv.{op}\u{200b}"),
        ];
        let replayed = admin.sign(&named, b"");
        let replayed_alias = admin.sign(&alias, b"");
        // The genuine requests, once each (they are served), so the copies below are replays.
        for (subject, h) in [(&named, &replayed), (&alias, &replayed_alias)] {
            if op == "lock" {
                // Keep the store unlocked for the rest: sign, send, then unlock again.
                let _ = gather_all(&operator, subject, h.clone(), b"").await;
                let _ = gather_all(
                    &operator,
                    &unlock,
                    admin.sign(&unlock, clear.as_bytes()),
                    clear.as_bytes(),
                )
                .await;
            } else if op == "rotate" {
                let _ = gather_all(&operator, subject, h.clone(), b"").await;
            }
        }
        for subject in &subjects {
            let mut forms: Vec<(&str, HeaderMap)> = vec![
                ("unsigned", HeaderMap::new()),
                ("api method", method("delete")),
                ("another key", stranger.sign(subject, b"")),
                ("replay of the named", replayed.clone()),
                ("replay of the alias", replayed_alias.clone()),
                (
                    "for another backend",
                    admin.sign(&format!("piggybank.database.other-kv.{op}"), b""),
                ),
                ("for another body", admin.sign(subject, b"{}")),
            ];
            let mut partial = admin.sign(subject, b"");
            partial.insert("Piggybank-Admin-Signature", "");
            forms.push(("empty signature", partial));
            let mut doubled = admin.sign(subject, b"");
            doubled.append("Piggybank-Admin-Key", stranger.public_key());
            forms.push(("two keys", doubled));
            if subject != &named && subject != &alias {
                // A valid, fresh signature, but for a subject nobody may serve.
                forms.push(("signed for this subject", admin.sign(subject, b"")));
            }
            for (what, h) in forms {
                let inbox = attacker.new_inbox();
                let replies = attacker.subscribe(inbox.clone()).await.unwrap();
                attacker
                    .publish_with_reply_and_headers(subject.clone(), inbox, h, "".into())
                    .await
                    .unwrap();
                pending.push((format!("{subject} ({what})"), replies));
            }
        }
    }
    attacker.flush().await.unwrap();
    // Every reply to every attempt, sent at once, gathered for 3 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut answered = 0;
    for (what, mut replies) in pending {
        while let Ok(Some(msg)) =
            tokio::time::timeout(Duration::from_millis(10), replies.next()).await
        {
            let status = msg
                .headers
                .as_ref()
                .and_then(|h| h.get("Status"))
                .map(|s| s.to_string());
            answered += usize::from(status.is_some());
            if status.as_deref() == Some("200") {
                served.push(format!("{what}: {}", String::from_utf8_lossy(&msg.payload)));
            }
        }
    }
    assert!(answered > 0, "positive control: the refusals were answered");
    assert!(
        served.is_empty(),
        "served without a valid, fresh signature: {served:#?}"
    );
    let status = one_status(&operator).await;
    // Two genuine rotations ran (named and alias) and nothing else changed the seal.
    assert_eq!(
        (status["sealed"].clone(), status["key_version"].clone()),
        (json!(false), json!(3)),
        "{status}"
    );
}

/// Attack: the protocol's admin operations through subject tricks (extra tokens, another
/// case, an entity with a dot, another backend's name), unsigned or signed for another
/// subject, with `--admin-keys` set. Safe: nothing is written or read; every KV entry keeps
/// its revision.
#[tokio::test]
async fn no_protocol_subject_form_gets_an_unsigned_admin_operation_handled() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let admin_key = admin_signer();
    let mut c = config(&nats, &keys);
    c.admin_keys = vec![admin_key.public_key().to_string()];
    let _backend = start_backend(&nats, c).await;
    let signed_admin = admin(nats.client().await).with_signer(Some(admin_key.clone()));
    signed_admin
        .put_secret("target", text("v"), None, None)
        .await
        .unwrap();
    let (_, entity) = Issuer::new().component();
    signed_admin
        .add_mapping(&entity, &names(&["target"]))
        .await
        .unwrap();
    let attacker = nats.client().await;
    let before = kv_state(&attacker).await;
    let p = PROTOCOL;
    let (_, mine) = Issuer::new().component();
    let grant = serde_json::to_vec(&["target"]).unwrap();
    let delete = br#"{"key":"target"}"#.to_vec();
    let cases: Vec<(String, Vec<u8>)> = vec![
        (format!("{p}.delete_secret"), delete.clone()),
        (format!("{p}.delete_secret.x"), delete.clone()),
        (format!("{p}.DELETE_SECRET"), delete.clone()),
        (format!("{p}.add_mapping.{mine}"), grant.clone()),
        (format!("{p}.add_mapping.{mine}.x"), grant.clone()),
        (format!("{p}.remove_mapping.{entity}"), grant.clone()),
        (format!("{p}.list_secrets"), vec![]),
        (format!("{p}.list_secrets.x"), vec![]),
        (format!("{p}.get_mappings.{entity}"), vec![]),
        (
            format!("wasmcloud.secrets.v1alpha1.other-kv.add_mapping.{mine}"),
            grant.clone(),
        ),
    ];
    let mut answered = Vec::new();
    for (subject, body) in &cases {
        let signed_elsewhere = admin_key.sign(&format!("{p}.server_xkey"), body);
        for h in [HeaderMap::new(), signed_elsewhere] {
            let sent = attacker.request_with_headers(subject.clone(), h, body.clone().into());
            if let Ok(Ok(reply)) = tokio::time::timeout(Duration::from_secs(3), sent).await {
                let text = String::from_utf8_lossy(&reply.payload).to_string();
                if text.contains("target") || text == "ok" {
                    answered.push(format!("{subject}: {text}"));
                }
            }
        }
    }
    assert!(answered.is_empty(), "{answered:#?}");
    assert_eq!(
        kv_state(&attacker).await,
        before,
        "a refused request changed the store"
    );
}

/// Attack: the new refusal replies (an unsigned admin request answered 403 by the serve
/// loop, in each front door's format) aimed at hostile reply subjects: piggybank's own
/// buckets, the JetStream API, its own `lock` and `add_mapping` subjects, its server inbox,
/// another application's inbox. Safe: nothing is published on any of them (the same
/// requests with an `_INBOX.` reply get their 403: the positive control).
#[tokio::test]
async fn refusals_are_never_published_to_a_hostile_reply_subject() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let admin_key = admin_signer();
    let mut c = config(&nats, &keys);
    c.admin_keys = vec![admin_key.public_key().to_string()];
    c.piggybank_prefix = Some("piggybank".into());
    let _backend = start_backend(&nats, c).await;
    let attacker = nats.client().await;
    let (_, entity) = Issuer::new().component();
    let hostile = [
        "$KV.WASMCLOUD_SECRETS.target".to_string(),
        "$KV.SECRETS_nats-kv_mappings.x".to_string(),
        "$KV.SECRETS_nats-kv_nonces.00000000000000000000000000000000".to_string(),
        "$JS.API.STREAM.PURGE.KV_WASMCLOUD_SECRETS".to_string(),
        format!("{DB}.lock"),
        "piggybank.database.lock".to_string(),
        format!("{PROTOCOL}.add_mapping.{entity}"),
        "_PIGGYBANK_INBOX.x.y".to_string(),
        "orders.created".to_string(),
    ];
    let requests = [
        format!("{PROTOCOL}.delete_secret"),
        format!("{PROTOCOL}.put_secret"),
        format!("{PROTOCOL}.list_secrets"),
        format!("{DB}.lock"),
        format!("{DB}.rotate"),
        format!("{DB}.initialize"),
        "piggybank.database.lock".to_string(),
    ];
    // Positive control: each is refused, on an inbox.
    for subject in &requests {
        let reply = attacker
            .request(subject.clone(), "{}".into())
            .await
            .unwrap_or_else(|e| panic!("{subject}: {e}"));
        let text = String::from_utf8_lossy(&reply.payload).to_string();
        assert!(
            text.contains(REFUSED) || text.contains("InvalidHeaders") || text.contains("no seal"),
            "{subject}: {text}"
        );
    }
    let spy = nats.client().await;
    let mut seen = spy.subscribe(">").await.unwrap();
    spy.flush().await.unwrap();
    let before = kv_state(&attacker).await;
    for subject in &requests {
        for reply in &hostile {
            attacker
                .publish_with_reply(subject.clone(), reply.clone(), "{}".into())
                .await
                .unwrap();
        }
    }
    attacker.flush().await.unwrap();
    let mut landed = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(1), seen.next()).await {
        // The attacker's own requests carry a reply subject; a reply carries none.
        if msg.reply.is_none() && hostile.iter().any(|h| msg.subject.as_str() == h) {
            landed.push(msg.subject.to_string());
        }
    }
    assert!(landed.is_empty(), "published on {landed:?}");
    assert_eq!(kv_state(&attacker).await, before);
}

/// Attack: read key material out of the seal's error and status replies: a wrong, short or
/// malformed key, an unknown share, a sealed unlock that does not open, one for another
/// instance, the clear forms under `--sealed-keys-only`, `initialize` again, and `status`
/// before and after. Safe: no reply carries the database key (any encoding) or any xkey
/// seed (`SX...`), and `status` shows only the unseal xkey's public half.
#[tokio::test]
async fn seal_errors_and_status_carry_no_key_material() {
    let nats = NatsServer::start();
    let admin = admin_signer();
    let mut c = sealed_signed_config(&nats, &admin);
    c.sealed_keys_only = true;
    let _backend = start_backend(&nats, c).await;
    let client = nats.client().await;
    let mut replies: Vec<String> = vec![one_status(&client).await.to_string()];
    let key = signed_initialize(&client, &admin).await;
    let status = one_status(&client).await;
    replies.push(status.to_string());
    let unseal = status["unseal_xkey"].as_str().unwrap().to_string();
    assert!(unseal.starts_with('X'), "{unseal}");
    let b64 = base64::engine::general_purpose::STANDARD;
    let raw = b64.decode(&key).unwrap();
    let mut wrong = raw.clone();
    wrong[0] ^= 1;
    let wrong = b64.encode(&wrong);
    let unlock = format!("{DB}.unlock");
    let sealed_for = |plaintext: String, to: &str, instance: &str| {
        let sealed = Sealed::seal(plaintext.as_bytes(), to).unwrap();
        serde_json::to_vec(&SealedUnlock::new(instance, sealed)).unwrap()
    };
    let id = status["instance_id"].as_str().unwrap().to_string();
    let other = XKey::new().public_key();
    let bodies: Vec<Vec<u8>> = vec![
        json!({ "database_key": key }).to_string().into(),
        json!({ "database_key": wrong }).to_string().into(),
        sealed_for(json!({ "database_key": wrong }).to_string(), &unseal, &id),
        sealed_for(
            json!({ "database_key": "c2hvcnQ=" }).to_string(),
            &unseal,
            &id,
        ),
        sealed_for(json!({ "share": key }).to_string(), &unseal, &id),
        sealed_for(format!("not json {key}"), &unseal, &id),
        sealed_for(json!({ "database_key": key }).to_string(), &other, &id),
        json!({ "instance_id": id, "sender_xkey": unseal, "secret": key })
            .to_string()
            .into(),
        format!("{{\"database_key\": \"{key}\", \"x\": 1}}").into(),
    ];
    // Signed, so that each reaches the seal (unsigned, each is refused before it).
    for body in &bodies {
        if let Some((_, reply)) = ask(
            &client,
            &unlock,
            admin.sign(&unlock, body),
            body,
            Duration::from_secs(5),
        )
        .await
        {
            replies.push(reply.to_string());
        }
    }
    let init = format!("{DB}.initialize");
    if let Some((_, reply)) = ask(
        &client,
        &init,
        admin.sign(&init, b""),
        b"",
        Duration::from_secs(5),
    )
    .await
    {
        replies.push(reply.to_string());
    }
    // Unlock properly (sealed), then status again.
    let body = sealed_unlock_for(&status, &key);
    let (code, _) = ask(
        &client,
        &unlock,
        admin.sign(&unlock, &body),
        &body,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(code, 200);
    replies.push(one_status(&client).await.to_string());
    let forms = [
        key.clone(),
        b64.encode(&raw).trim_end_matches('=').to_string(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw),
        raw.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        raw.iter().map(|b| format!("{b:02X}")).collect::<String>(),
    ];
    for reply in &replies {
        for form in &forms {
            assert!(!reply.contains(form.as_str()), "key material in {reply}");
        }
        // An nkeys seed of any type starts with 'S' and its type letter (SX for xkeys),
        // followed by base32.
        let seedish = reply
            .split(|c: char| !c.is_ascii_alphanumeric())
            .any(|w| w.len() >= 56 && w.starts_with('S'));
        assert!(!seedish, "a seed in {reply}");
    }
}

/// SIGTERM to an idle `piggybank run` (drain timeout 4 s), with or without a subscriber on
/// `>`; returns how long it took to exit.
async fn idle_stop_time(with_spy: bool) -> Duration {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let mut run = spawn_run(&nats, &keys, &["--drain-timeout-ms", "4000"]);
    wait_for_backend(&nats, PROTOCOL).await;
    let spy = nats.client().await;
    let _everything = match with_spy {
        true => Some(spy.subscribe(">").await.unwrap()),
        false => None,
    };
    spy.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let asked = Instant::now();
    run.signal(libc::SIGTERM);
    let status = run
        .wait_exit(Duration::from_secs(15))
        .expect("exits within its bound");
    assert!(status.success());
    asked.elapsed()
}

/// Attack: slow the bounded drain down. The loop finishes its drain by sending a request
/// nobody answers to its own inbox, expecting NATS's "no responders"; a subscriber on `>`
/// (the threat model's spy) is a responder, so no answer comes, and when the drain and the
/// nudge are handled in one pass of the connection, the drain waits for the connection's
/// next message from the server (an idle heartbeat, seconds away) or the drain timeout.
/// Measured: about one stop in three takes 1.8-2 s with the spy, against 20 ms without.
/// Safe: an idle instance stops in well under a second with a spy on `>`, every time.
#[tokio::test]
async fn a_subscriber_on_everything_does_not_slow_the_drain() {
    let mut took = Vec::new();
    for _ in 0..8 {
        took.push(idle_stop_time(true).await);
    }
    assert!(
        took.iter().all(|t| *t < Duration::from_millis(1_000)),
        "idle stops with a spy on `>` (drain timeout 4 s): {took:?}"
    );
}

/// Attack: the key record is read with a JetStream direct get (`$JS.API.DIRECT.GET.KV_
/// SECRETS_<name>_vault.$KV...keyring`), a request whose reply goes to piggybank's inbox. The
/// spy on `>` sees that request with its reply subject, and answers it first with a record
/// of its own (its own data and transit keys, wrapped by a master key it made), then sends
/// `unlock` (open to anyone before unlock was signed) with that master key, again and
/// again while the store is sealed (after a lock or a restart without auto-unlock): each
/// `unlock` reads the record once. When the forged reply wins the race (in this test, after
/// about 100 tries, well under a second), the instance installs the attacker's keys:
/// `server_xkey` then announces the attacker's transit key (hosts and the CLI seal
/// `put_secret` values to it), and every value written from then on is sealed with the
/// attacker's data key, which the spy reads off `$KV.WASMCLOUD_SECRETS.>` and opens. The
/// winning `unlock` itself answers 403 (its `reload` read the real record), yet the store
/// stays unsealed. Safe: the store is never unsealed with keys the operators did not make.
#[tokio::test]
async fn a_forged_key_record_cannot_unseal_the_store_with_an_attackers_keys() {
    use std::sync::atomic::Ordering;
    let nats = NatsServer::start();
    let admin = admin_signer();
    let _backend = start_backend(&nats, sealed_signed_config(&nats, &admin)).await;
    let operator = nats.client().await;
    let _real_key = signed_initialize(&operator, &admin).await;
    assert_eq!(one_status(&operator).await["sealed"], json!(true));

    // The attacker's own record and master key.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let (record, master) = piggybank::seal::key_record::initialize(None, None, now).unwrap();
    let (attacker_keys, _) = piggybank::seal::key_record::open(&record, &master, now).unwrap();
    let forged = serde_json::to_vec(&record).unwrap();
    let attacker_transit = record.transit_public.clone();
    let attacker = nats.client().await;
    let mut stored = attacker.subscribe("$KV.WASMCLOUD_SECRETS.>").await.unwrap();
    let (forger, answered) = forge_record_reads(&attacker, forged).await;

    let unlock = json!({ "database_key": master.to_base64().as_str() }).to_string();
    let mut answers = Vec::new();
    for _ in 0..1_000 {
        let r = ask(
            &attacker,
            &format!("{DB}.unlock"),
            HeaderMap::new(),
            unlock.as_bytes(),
            Duration::from_secs(5),
        )
        .await;
        // The winning try answers 403 (its reload read the real record); the next one
        // says "already unlocked".
        let done = matches!(&r, Some((200, _)) | Some((409, _)));
        answers.push(r);
        if done {
            break;
        }
    }
    forger.abort();
    let after = one_status(&operator).await;
    let xkey = operator
        .request(format!("{PROTOCOL}.server_xkey"), "".into())
        .await
        .unwrap();
    let served_transit = String::from_utf8_lossy(&xkey.payload).to_string();

    // A service writes a secret now; the spy opens what piggybank stored.
    let posted = api(&operator, "piggybank.billing.db", "post", b"hunter2").await;
    let mut read_back = None;
    if posted.0 == 200 {
        while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(2), stored.next()).await
        {
            if let Ok(value) = piggybank::store::envelope::open(&msg.payload, &attacker_keys) {
                read_back = Some(String::from_utf8_lossy(value.as_bytes()).to_string());
                break;
            }
        }
    }
    assert!(
        after["sealed"] == json!(true) && served_transit != attacker_transit && read_back.is_none(),
        "after {} tries ({} forged record reads) the store is unsealed={} with the attacker's \
         keys: server_xkey is the attacker's transit key: {}; a secret posted since \
         ({posted:?}) was opened by the attacker: {read_back:?}; last unlock answers: {:?}",
        answers.len(),
        answered.load(Ordering::Relaxed),
        after["sealed"] == json!(false),
        served_transit == attacker_transit,
        answers.iter().rev().take(2).collect::<Vec<_>>()
    );
}

/// The fake instance an attacker slips into `piggybank unlock`'s `status` gathering: its
/// `unseal_xkey` is the attacker's.
fn impostor_status(unseal: &XKey) -> Vec<u8> {
    json!({
        "mode": "sealed",
        "version": "0.1.0",
        "instance_id": "NIMPOSTOR000",
        "initialized": true,
        "sealed": true,
        "progress": 0,
        "threshold": null,
        "shares": null,
        "key_version": 1,
        "key_id": null,
        "server_xkey": null,
        "secrets": 0,
        "mapped_entities": 0,
        "reencryption": null,
        "admin": "signed",
        "unseal_xkey": unseal.public_key(),
    })
    .to_string()
    .into_bytes()
}

/// `piggybank unlock ARGS` with `key` in `PIGGYBANK_DATABASE_KEY`, signed with
/// `admin_seed`, started at once on a blocking thread.
fn spawn_unlock(
    nats: &NatsServer,
    key: &str,
    admin_seed: &str,
    args: &[&str],
) -> tokio::task::JoinHandle<(bool, String, String)> {
    let env = [
        ("PIGGYBANK_DATABASE_KEY", key),
        ("PIGGYBANK_ADMIN_SEED", admin_seed),
    ];
    spawn_cli(nats, &env, args)
}

/// Opens the key `piggybank unlock` sealed to the impostor, from the unlock requests seen.
async fn key_sealed_to_impostor(
    unlocks: &mut async_nats::Subscriber,
    unseal: &XKey,
) -> Option<String> {
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(15), unlocks.next()).await {
        let Ok(body) = serde_json::from_slice::<SealedUnlock>(&msg.payload) else {
            continue;
        };
        if body.instance_id != "NIMPOSTOR000" {
            continue;
        }
        let plaintext = body.key_material().open(unseal).ok()?;
        let value: Value = serde_json::from_slice(&plaintext).ok()?;
        return value["database_key"].as_str().map(str::to_string);
    }
    None
}

/// Attack: `piggybank unlock` asks `status` who the instances are and seals the key to each
/// one's `unseal_xkey`, trusting every reply it gathers (for 300 ms after the last). The
/// spy sees the status request and answers it too, into the CLI's inbox, as an instance
/// whose unseal xkey is the attacker's. The CLI seals the database key to the attacker and
/// publishes it on `unlock`, where the spy reads it and opens it. (A responder of any
/// service on the account may publish to `_INBOX.>`; the next test does the same through
/// piggybank itself, for a user who may publish only on its own API subjects.) Safe: the
/// CLI never seals the key to an xkey that is not a real instance's.
#[tokio::test(flavor = "multi_thread")]
async fn the_cli_unlock_never_hands_the_key_to_an_impostor_instance() {
    let PinnedStore {
        nats,
        seed,
        transit,
        backend: _backend,
        operator,
        key,
        ..
    } = pinned_store().await;

    let attacker = nats.client().await;
    let unseal = XKey::new();
    let mut statuses = attacker.subscribe(format!("{DB}.status")).await.unwrap();
    let mut unlocks = attacker.subscribe(format!("{DB}.unlock")).await.unwrap();
    attacker.flush().await.unwrap();
    let impostor = attacker.clone();
    let fake = impostor_status(&unseal);
    let answering = tokio::spawn(async move {
        while let Some(msg) = statuses.next().await {
            if let Some(reply) = msg.reply {
                let mut h = HeaderMap::new();
                h.insert("Status", "200");
                let _ = impostor
                    .publish_with_headers(reply, h, fake.clone().into())
                    .await;
                let _ = impostor.flush().await;
            }
        }
    });
    let cli = spawn_unlock(&nats, &key, &seed, &["unlock", "-t", &transit]);
    let stolen = key_sealed_to_impostor(&mut unlocks, &unseal).await;
    let (ok, _, stderr) = cli.await.unwrap();
    answering.abort();
    assert!(
        stolen.is_none(),
        "the attacker opened a database key (the real one: {}); the CLI said: {stderr}",
        stolen.as_deref() == Some(key.as_str())
    );
    // The real instance proved itself and was unlocked; the impostor is named.
    let statuses = wait_database_instances(&operator, "piggybank", 1).await;
    assert_eq!(statuses[0]["sealed"], false, "{statuses:?}: {stderr}");
    assert!(
        !ok && stderr.contains("NIMPOSTOR000") && stderr.contains("no proof"),
        "{stderr}"
    );
}

/// Without a pinned transit key, `piggybank unlock` sends nothing (unless told
/// `--unverified-instances`): it cannot tell an instance from an impostor.
#[tokio::test(flavor = "multi_thread")]
async fn the_cli_unlock_refuses_to_guess_which_instances_are_real() {
    let PinnedStore {
        nats,
        seed,
        backend: _backend,
        operator,
        key,
        ..
    } = pinned_store().await;
    let spy = nats.client().await;
    let mut seen = spy.subscribe(format!("{DB}.>")).await.unwrap();
    spy.flush().await.unwrap();
    let (ok, _, stderr) = spawn_unlock(&nats, &key, &seed, &["unlock"]).await.unwrap();
    assert!(!ok && stderr.contains("--transit-xkey"), "{stderr}");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), seen.next())
            .await
            .is_err(),
        "nothing is published, not even status"
    );
    // A wrong pin (another backend's transit key) unlocks nothing either.
    let other = nkeys::XKey::new().public_key();
    let (ok, _, stderr) = spawn_unlock(&nats, &key, &seed, &["unlock", "-t", &other])
        .await
        .unwrap();
    assert!(!ok && stderr.contains("pinned transit key"), "{stderr}");
    let statuses = wait_database_instances(&operator, "piggybank", 1).await;
    assert_eq!(statuses[0]["sealed"], true);
}

/// Attack: as above, for a user who may publish only on its own Piggy Bank API subjects
/// (`piggybank.shop.>`, the README's layout) and never on `_INBOX.>`. While one instance
/// is unsealed (auto-unlocked) and a new one waits for `piggybank unlock`, `shop` stores
/// the impostor's status as its own secret, then asks for it with the CLI's status inbox as
/// the reply subject: piggybank delivers it (Status 200) into the CLI's gathering, which
/// seals the key to the attacker. Safe: as above.
#[tokio::test(flavor = "multi_thread")]
async fn the_cli_unlock_never_hands_the_key_to_an_instance_reflected_through_the_api() {
    let PinnedStore {
        nats,
        seed,
        admin,
        transit,
        config,
        backend: _one,
        operator,
        key,
        ..
    } = pinned_store().await;
    let clear = json!({ "database_key": key }).to_string();
    let unlock = format!("{DB}.unlock");
    let unlocked = gather_all(
        &operator,
        &unlock,
        admin.sign(&unlock, clear.as_bytes()),
        clear.as_bytes(),
    )
    .await;
    assert!(unlocked.iter().any(|(s, _)| *s == 200), "{unlocked:?}");

    // The attacker, as application `shop`, stores the impostor's status while unsealed.
    let attacker = nats.client().await;
    let unseal = XKey::new();
    let fake = impostor_status(&unseal);
    let (status, _) = api(&attacker, "piggybank.shop.status", "post", &fake).await;
    assert_eq!(status, 200);

    // A second instance starts, sealed; the operator runs `piggybank unlock` for it.
    let _two = start_backend(&nats, config).await;
    wait_database_instances(&operator, "piggybank", 2).await;
    let mut statuses = attacker.subscribe(format!("{DB}.status")).await.unwrap();
    let mut unlocks = attacker.subscribe(format!("{DB}.unlock")).await.unwrap();
    attacker.flush().await.unwrap();
    let reflector = attacker.clone();
    let answering = tokio::spawn(async move {
        while let Some(msg) = statuses.next().await {
            let Some(reply) = msg.reply else { continue };
            // The API's queue group picks an instance; the sealed one answers 423, which
            // the CLI ignores, so ask a few times.
            for _ in 0..6 {
                let _ = reflector
                    .publish_with_reply_and_headers(
                        "piggybank.shop.status".to_string(),
                        reply.to_string(),
                        method("get"),
                        "".into(),
                    )
                    .await;
            }
            let _ = reflector.flush().await;
        }
    });
    let cli = spawn_unlock(&nats, &key, &seed, &["unlock", "-t", &transit]);
    let stolen = key_sealed_to_impostor(&mut unlocks, &unseal).await;
    let (_, _, stderr) = cli.await.unwrap();
    answering.abort();
    assert!(
        stolen.is_none(),
        "the attacker opened a database key (the real one: {}); the CLI said: {stderr}",
        stolen.as_deref() == Some(key.as_str())
    );
    let statuses = wait_database_instances(&operator, "piggybank", 2).await;
    assert!(
        statuses.iter().all(|s| s["sealed"] == false),
        "both real instances are unlocked: {statuses:?}; the CLI said: {stderr}"
    );
}

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
