//! The bus is hostile: NATS authorizes the subject a request is published to, never its
//! reply subject, and piggybank's own connection may write its KV buckets and call the
//! JetStream API. So a request whose reply subject is `$KV.<bucket>.<key>`, a `$JS.API`
//! subject, one of piggybank's own subjects, or anything outside the trusted reply prefixes
//! must get no reply and change nothing, on every NATS front door.

mod common;

use std::time::Duration;

use async_nats::HeaderMap;
use common::*;
use futures::StreamExt as _;
use piggybank::server::RunConfig;
use zeroize::Zeroizing;

/// (Status, JSON) of a database operation, asked properly (reply on `_INBOX.`).
async fn db(client: &async_nats::Client, op: &str, body: &str) -> (String, serde_json::Value) {
    let reply = client
        .request(format!("piggybank.database.{op}"), body.to_string().into())
        .await
        .unwrap();
    let status = reply.headers.as_ref().unwrap().get("Status").unwrap();
    (
        status.as_str().to_string(),
        serde_json::from_slice(&reply.payload).unwrap(),
    )
}

fn method(m: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("method", m);
    h
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
    assert_eq!(status, "200", "{body}");
    let key = body["database_key"].as_str().unwrap().to_string();
    let (status, body) = db(&client, "unlock", &format!(r#"{{"database_key":"{key}"}}"#)).await;
    assert_eq!(status, "200", "{body}");
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
    assert_eq!(
        (status.as_str(), body["sealed"].as_bool()),
        ("200", Some(false))
    );
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
