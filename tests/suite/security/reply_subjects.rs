//! Replies go only where they may: NATS authorizes the subject a request is published to,
//! never its reply subject, and piggybank's own connection may write its KV buckets and call
//! the JetStream API. So a reply goes only to a literal subject under a trusted inbox prefix
//! (an application's replies only to its own), never into one of the backend's own
//! subscriptions, a bucket, the JetStream API or a served subject, on every front door; and
//! `run` refuses a configuration where a served tree and a reply namespace overlap.

use std::time::{Duration, Instant};

use async_nats::{HeaderMap, Subject};
use futures::StreamExt as _;
use piggybank::admin_auth::REFUSED;
use piggybank::serve::ReplyPolicy;
use piggybank::server::RunConfig;
use zeroize::Zeroizing;

use crate::common::sealed::*;
use crate::common::*;

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

#[test]
fn run_refuses_a_reply_prefix_inside_what_it_serves() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    for bad in ["wasmcloud.secrets", "$KV", "_INBOX_x.*"] {
        let (ok, _, err) = cli(
            &nats,
            &["run", "--reply-prefixes", bad],
            None,
            &[
                ("ENCRYPTION_XKEY_SEED", keys.encryption.as_str()),
                ("TRANSIT_XKEY_SEED", keys.transit.as_str()),
            ],
        );
        assert!(!ok && err.contains("reply prefix"), "{bad}: {err}");
    }
}

#[tokio::test]
async fn a_custom_inbox_prefix_is_answered_only_once_configured() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let _backend = start_backend(&nats, config(&nats, &keys)).await;
    let custom = async_nats::ConnectOptions::new()
        .custom_inbox_prefix("_INBOX_billing")
        .request_timeout(Some(Duration::from_millis(500)))
        .connect(nats.url())
        .await
        .unwrap();
    let subject = "wasmcloud.secrets.v1alpha1.nats-kv.server_xkey";
    let refused = custom.request(subject, "".into()).await;
    assert!(refused.is_err(), "answered on an untrusted prefix");

    let nats2 = NatsServer::start();
    let mut c = config(&nats2, &keys);
    c.reply_prefixes = vec!["_INBOX_billing".into()];
    let _backend2 = start_backend(&nats2, c).await;
    let custom = async_nats::ConnectOptions::new()
        .custom_inbox_prefix("_INBOX_billing")
        .connect(nats2.url())
        .await
        .unwrap();
    let reply = custom.request(subject, "".into()).await.unwrap();
    assert_eq!(
        std::str::from_utf8(&reply.payload).unwrap(),
        keys.transit_public()
    );
}

#[tokio::test]
async fn requests_with_hostile_reply_subjects_publish_nothing_and_change_nothing() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    // A sealed-mode store, so the key record's bucket exists too, with the Piggy Bank API.
    let mut config = RunConfig::new(Zeroizing::default(), Zeroizing::default());
    config.nats_address = nats.url();
    config.piggybank_prefix = Some("piggybank".into());
    let _backend = {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(piggybank::server::run(config, async {
            let _ = rx.await;
        }));
        // Wait for the database operations to answer.
        loop {
            let asked = client.request("piggybank.database.status", "".into());
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), asked).await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (tx, task)
    };
    let (status, body) = db(&client, "initialize", "").await;
    assert_eq!(status, 200, "{body}");
    let key = body["database_key"].as_str().unwrap().to_string();
    let (status, body) = db(&client, "unlock", &format!(r#"{{"database_key":"{key}"}}"#)).await;
    assert_eq!(status, 200, "{body}");
    let admin = admin(client.clone());
    admin
        .put_secret("db", text("v1"), None, None)
        .await
        .unwrap();
    let (_, entity) = Issuer::new().component();
    let (_, intruder) = Issuer::new().component();
    admin.add_mapping(&entity, &names(&["db"])).await.unwrap();
    let (status, _) = {
        let reply = client
            .request_with_headers(
                "piggybank.app.token".to_string(),
                method("post"),
                "t".into(),
            )
            .await
            .unwrap();
        (
            reply.headers.unwrap().get("Status").unwrap().to_string(),
            (),
        )
    };
    assert_eq!(status, "200");

    let before = kv_state(&client).await;
    let buckets: Vec<String> = before.keys().map(|(b, _)| b.clone()).collect();
    for expected in [
        "WASMCLOUD_SECRETS",
        "SECRETS_nats-kv_state",
        "SECRETS_nats-kv_vault",
    ] {
        assert!(
            buckets.iter().any(|b| b == expected),
            "{expected} in {buckets:?}"
        );
    }

    // Where an attacker would like piggybank's replies to land.
    let mut hostile: Vec<String> = Vec::new();
    for (bucket, key) in before.keys() {
        hostile.push(format!("$KV.{bucket}.{key}"));
    }
    hostile.push(format!("$KV.SECRETS_nats-kv_state.{intruder}"));
    hostile.push("$KV.WASMCLOUD_SECRETS.planted".into());
    hostile.push("$JS.API.STREAM.PURGE.KV_WASMCLOUD_SECRETS".into());
    hostile.push("$JS.API.STREAM.DELETE.KV_SECRETS_nats-kv_vault".into());
    hostile.push(format!(
        "wasmcloud.secrets.v1alpha1.nats-kv.add_mapping.{intruder}"
    ));
    hostile.push("wasmcloud.secrets.v1alpha1.nats-kv.delete_secret".into());
    hostile.push("piggybank.database.lock".into());
    hostile.push("piggybank.app.token".into());
    hostile.push("orders.created".into());

    // Everything published on the server, from now on.
    let spy = nats.client().await;
    let mut all = spy.subscribe(">").await.unwrap();
    spy.flush().await.unwrap();

    // Every front door, reading and writing operations alike.
    let protocol = "wasmcloud.secrets.v1alpha1.nats-kv";
    let requests: Vec<(String, Option<HeaderMap>, Vec<u8>)> = vec![
        (format!("{protocol}.server_xkey"), None, vec![]),
        (format!("{protocol}.get"), None, b"garbage".to_vec()),
        (format!("{protocol}.list_secrets"), None, vec![]),
        (format!("{protocol}.get_mappings.{entity}"), None, vec![]),
        (
            format!("{protocol}.add_mapping.{intruder}"),
            None,
            br#"["db"]"#.to_vec(),
        ),
        (
            format!("{protocol}.remove_mapping.{entity}"),
            None,
            br#"["db"]"#.to_vec(),
        ),
        (
            format!("{protocol}.delete_secret"),
            None,
            br#"{"key":"db"}"#.to_vec(),
        ),
        ("piggybank.database.status".into(), None, vec![]),
        ("piggybank.database.lock".into(), None, vec![]),
        ("piggybank.database.rotate".into(), None, vec![]),
        ("piggybank.database.initialize".into(), None, vec![]),
        ("piggybank.app.token".into(), Some(method("get")), vec![]),
        (
            "piggybank.app.token".into(),
            Some(method("post")),
            b"x".to_vec(),
        ),
        ("piggybank.app.token".into(), Some(method("delete")), vec![]),
    ];
    let attacker = nats.client().await;
    for reply in &hostile {
        for (subject, headers, body) in &requests {
            let sent = match headers {
                Some(h) => {
                    attacker
                        .publish_with_reply_and_headers(
                            subject.clone(),
                            reply.clone(),
                            h.clone(),
                            body.clone().into(),
                        )
                        .await
                }
                None => {
                    attacker
                        .publish_with_reply(subject.clone(), reply.clone(), body.clone().into())
                        .await
                }
            };
            sent.unwrap();
        }
    }
    attacker.flush().await.unwrap();
    // A positive control: the spy does see what is published on these subjects.
    spy.publish("$KV.CONTROL.seen", "control".into())
        .await
        .unwrap();
    spy.flush().await.unwrap();

    // A proper request still works, and comes after every hostile one in the loop.
    let (status, body) = db(&client, "status", "").await;
    assert_eq!((status, body["sealed"].as_bool()), (200, Some(false)));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut control_seen = false;
    let mut leaked = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(200), all.next()).await {
        let subject = msg.subject.as_str();
        if subject == "$KV.CONTROL.seen" {
            control_seen = true;
            continue;
        }
        // The attacker's own requests go to served subjects; what matters is a message on a
        // hostile subject that the attacker did not publish: one with no reply subject, or
        // on a $ subject, or the foreign one.
        // JetStream delivering a stored message to a consumer (a KV watch) shows its
        // original subject, with an ack reply: that is not a publish by anyone.
        if msg
            .reply
            .as_ref()
            .is_some_and(|r| r.starts_with("$JS.ACK."))
        {
            continue;
        }
        let ours = msg
            .reply
            .as_ref()
            .is_some_and(|r| hostile.iter().any(|h| h == r.as_str()));
        if ours {
            continue;
        }
        if hostile
            .iter()
            .any(|h| subject == h || subject.starts_with(&format!("{h}.")))
        {
            leaked.push(subject.to_string());
        }
    }
    assert!(
        control_seen,
        "the spy on > must see $KV publishes (positive control)"
    );
    assert!(
        leaked.is_empty(),
        "piggybank published to hostile subjects: {leaked:?}"
    );

    // Nothing changed: every bucket, every key, every revision.
    let after = kv_state(&client).await;
    assert_eq!(before, after, "KV state changed");
    assert_eq!(
        admin.get_mappings(&intruder).await.unwrap(),
        Vec::<String>::new()
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
    let admin_key = admin_seed().1;
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
    // For 2 s after the last publish: the bus is never quiet (the audit checks its streams
    // every second), so waiting for a second of silence could wait for ever.
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    while let Ok(Some(msg)) = tokio::time::timeout_at(until, seen.next()).await {
        // The attacker's own requests carry a reply subject; a reply carries none.
        if msg.reply.is_none() && hostile.iter().any(|h| msg.subject.as_str() == h) {
            landed.push(msg.subject.to_string());
        }
    }
    assert!(landed.is_empty(), "published on {landed:?}");
    assert_eq!(kv_state(&attacker).await, before);
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
