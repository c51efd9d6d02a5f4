//! The least-privilege NATS layout (`piggybank nats-config`), enforced by a real nats-server:
//! what the README used to leave to "NATS permissions" is refused to the host role and to
//! an application's role, each attempt shown refused by the server itself (its
//! "Permissions Violation" error, and no answer), beside a positive control: the role's own
//! allowed action works on the same server.
//!
//! Each test writes the layout with the real `piggybank nats-config`, runs nats-server with
//! the config it wrote, and the backend as the backend role.

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use futures::StreamExt;
use piggybank::client::AdminClient;
use piggybank::config::DEFAULT_SUBJECT_BASE;

use crate::common::layout::{api, nothing_received, stream_messages, Layout, RoleClient};
use crate::common::sealed::admin_seed;
use crate::common::*;

const PROTOCOL: &str = "wasmcloud.secrets.v1alpha1.nats-kv";
const SECRETS_STREAM: &str = "KV_WASMCLOUD_SECRETS";
const AUDIT_STREAM: &str = "PIGGYBANK_AUDIT_nats-kv";

/// How many messages `stream` holds, read by the admin role.
/// Messages on every audit trail's stream (a refused request goes to the refusal trail).
async fn audit_messages(admin: &RoleClient) -> u64 {
    let mut total = 0;
    for trail in piggybank::audit::Trail::ALL {
        total += stream_messages(admin, &trail.stream_name("nats-kv")).await;
    }
    total
}

/// Attack: a host's or an application's user joins the backend's queue groups (or simply
/// subscribes) on the protocol's and the API's subjects, to receive requests meant for the
/// backend. Safe: the server refuses each subscription, and every one of 20 hosts' requests
/// is answered by the backend while the refused subscriptions receive nothing. Control: the
/// host's own `server_xkey` requests are answered.
#[tokio::test]
async fn hosts_and_applications_cannot_join_the_backends_queue_groups() {
    let layout = Layout::start(&["shop"], vec![]).await;
    let host = layout.host().await;
    let shop = layout.app("shop").await;
    let mut failures = Vec::new();
    let mut subs = Vec::new();
    for role in [&host, &shop] {
        for (subject, queue) in [
            (format!("{PROTOCOL}.>"), Some("wasmcloud_secrets.nats-kv")),
            (format!("{PROTOCOL}.get"), Some("wasmcloud_secrets.nats-kv")),
            (format!("{PROTOCOL}.>"), None),
            (
                "piggybank.>".to_string(),
                Some("wasmcloud_secrets.nats-kv.piggybank"),
            ),
            ("piggybank.database.>".to_string(), None),
        ] {
            subs.push(
                role.refused_subscription(&subject, queue, &mut failures)
                    .await,
            );
        }
    }
    for _ in 0..20 {
        let answered = host
            .client
            .request(format!("{PROTOCOL}.server_xkey"), "".into())
            .await;
        if answered.is_err() {
            failures.push(format!(
                "a host's server_xkey was not answered: {answered:?}"
            ));
        }
    }
    nothing_received(&mut subs, &mut failures).await;
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Attack: a host's or an application's user writes piggybank's buckets directly (a put on
/// `$KV.<bucket>.<key>`: a secret, a mapping, a nonce, the key record) or through the
/// JetStream API of their streams (a message delete, a read). Safe: every publish is refused
/// by the server and the secret and its mapping are as the admin left them: a component
/// still reads the value. Control: that read (the host's `get`) and the application's own
/// `post` and `get` work.
#[tokio::test]
async fn hosts_and_applications_cannot_write_piggybanks_buckets_or_call_their_streams_api() {
    let layout = Layout::start(&["shop"], vec![]).await;
    let admin = layout.admin().await;
    let operator = AdminClient::new(
        admin.client.clone(),
        DEFAULT_SUBJECT_BASE,
        "v1alpha1",
        "nats-kv",
    );
    operator
        .put_secret("db_password", text("s3cr3t"), None, None)
        .await
        .expect("the admin role puts a secret");
    let issuer = Issuer::new();
    let (jwt, entity) = issuer.component();
    operator
        .add_mapping(&entity, &names(&["db_password"]))
        .await
        .expect("the admin role maps it");
    let host = layout.host().await;
    let shop = layout.app("shop").await;
    let mut failures = Vec::new();
    for role in [&host, &shop] {
        for subject in [
            "$KV.WASMCLOUD_SECRETS.db_password".to_string(),
            format!("$KV.SECRETS_nats-kv_state.{entity}"),
            "$KV.SECRETS_nats-kv_nonces.0123456789abcdef0123456789abcdef".to_string(),
            "$KV.SECRETS_nats-kv_vault.keyring".to_string(),
            format!("$JS.API.STREAM.MSG.DELETE.{SECRETS_STREAM}"),
            format!("$JS.API.STREAM.INFO.{SECRETS_STREAM}"),
            format!("$JS.API.DIRECT.GET.{SECRETS_STREAM}.$KV.WASMCLOUD_SECRETS.db_password"),
            "$JS.API.STREAM.PURGE.KV_SECRETS_nats-kv_state".to_string(),
            "$JS.API.STREAM.PURGE.KV_SECRETS_nats-kv_nonces".to_string(),
        ] {
            failures.extend(
                role.refused_request(&subject, HeaderMap::new(), b"forged")
                    .await,
            );
        }
    }
    let secrets =
        wasmcloud_secrets_client::Client::new("nats-kv", DEFAULT_SUBJECT_BASE, host.client.clone())
            .await
            .expect("the host role fetches server_xkey");
    match host_get(&secrets, request("db_password", &jwt)).await {
        Ok(secret) => assert_eq!(secret.string_secret.as_deref(), Some("s3cr3t")),
        Err(e) => failures.push(format!("the host's own get failed: {e}")),
    }
    assert_eq!(
        api(&shop.client, "piggybank.shop.token", "post", b"t0k3n").await,
        Ok(200),
        "the application's own post"
    );
    assert_eq!(
        api(&shop.client, "piggybank.shop.token", "get", b"").await,
        Ok(200)
    );
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Attack: someone holding the admin role's NATS user but no admin signing key, with
/// `--admin-keys` set, writes a mapping straight into the mappings bucket (or the key record,
/// or purges a bucket's stream) instead of sending a signed `add_mapping`. Safe: the server
/// refuses every write, and the entity maps to nothing. Control: the admin role's reads
/// work (the secrets stream's info), and a signed `add_mapping` through it grants access.
#[tokio::test]
async fn the_admin_role_cannot_write_the_buckets_around_signed_administration() {
    let (_, signer) = admin_seed();
    let layout = Layout::start(&[], vec![signer.public_key().to_string()]).await;
    let admin = layout.admin().await;
    let operator = AdminClient::new(
        admin.client.clone(),
        DEFAULT_SUBJECT_BASE,
        "v1alpha1",
        "nats-kv",
    )
    .with_signer(Some(signer));
    operator
        .put_secret("db_password", text("s3cr3t"), None, None)
        .await
        .unwrap();
    let (_, entity) = Issuer::new().component();
    let mut failures = Vec::new();
    for subject in [
        format!("$KV.SECRETS_nats-kv_state.{entity}"),
        "$KV.SECRETS_nats-kv_vault.keyring".to_string(),
        "$KV.WASMCLOUD_SECRETS.db_password".to_string(),
        format!("$JS.API.STREAM.PURGE.{SECRETS_STREAM}"),
        "$JS.API.STREAM.PURGE.KV_SECRETS_nats-kv_nonces".to_string(),
        format!("$JS.API.STREAM.MSG.DELETE.{SECRETS_STREAM}"),
    ] {
        failures.extend(
            admin
                .refused_request(&subject, HeaderMap::new(), br#"["db_password"]"#)
                .await,
        );
    }
    assert!(
        operator.get_mappings(&entity).await.unwrap().is_empty(),
        "a bucket write granted access"
    );
    assert!(stream_messages(&admin, SECRETS_STREAM).await > 0);
    operator
        .add_mapping(&entity, &names(&["db_password"]))
        .await
        .unwrap();
    assert_eq!(
        operator.get_mappings(&entity).await.unwrap(),
        vec!["db_password"]
    );
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Attack: a host's or an application's user publishes into the backend's own inbox (a
/// forged JetStream acknowledgement) or into the audit trail (a forged record). Safe: the
/// server refuses both; a spy connected as the backend role on `_PIGGYBANK_INBOX.>` sees
/// nothing arrive, and the audit stream gains no message. Control: the spy does see a
/// JetStream reply to the backend role arrive there, and an application's request adds a
/// record.
#[tokio::test]
async fn hosts_and_applications_cannot_publish_into_the_backends_inbox_or_the_audit_trail() {
    let layout = Layout::start(&["shop"], vec![]).await;
    let spy = layout
        .connect("backend", Some("_PIGGYBANK_INBOX.spy".into()))
        .await;
    let mut inbox = spy
        .client
        .subscribe("_PIGGYBANK_INBOX.spy.>")
        .await
        .unwrap();
    spy.client.flush().await.unwrap();
    let admin = layout.admin().await;
    let host = layout.host().await;
    let shop = layout.app("shop").await;
    // Let the backend's own records of its start settle before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let records = audit_messages(&admin).await;
    let mut failures = Vec::new();
    for role in [&host, &shop] {
        for subject in [
            "_PIGGYBANK_INBOX.spy.forged",
            "$PIGGYBANK.AUDIT.nats-kv.allowed.protocol",
        ] {
            role.client
                .publish(subject, r#"{"forged":true}"#.into())
                .await
                .unwrap();
            role.client.flush().await.unwrap();
            if !role.violation("Publish", subject).await {
                failures.push(format!("no permissions violation for publish to {subject}"));
            }
        }
    }
    if let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(300), inbox.next()).await {
        failures.push(format!("the backend's inbox received {}", msg.subject));
    }
    assert_eq!(
        audit_messages(&admin).await,
        records,
        "a forged record reached the audit stream"
    );
    // Controls: the spy hears the backend role, and a real request is recorded.
    // (a JetStream reply to the backend role, which comes into its inbox)
    spy.client
        .request(format!("$JS.API.STREAM.INFO.{SECRETS_STREAM}"), "".into())
        .await
        .expect("the backend role reads its stream's info");
    let heard = tokio::time::timeout(Duration::from_secs(2), inbox.next()).await;
    assert!(matches!(heard, Ok(Some(_))), "the spy hears its own role");
    assert_eq!(
        api(&shop.client, "piggybank.shop.x", "get", b"").await,
        Ok(404)
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while audit_messages(&admin).await == records {
        assert!(
            Instant::now() < deadline,
            "a real request was never recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Attack: a host's or an application's user calls the admin operations (which, without
/// `--admin-keys`, the backend itself does not authenticate; `read_secret` among them), the
/// database operations and `$SRV.STATS`. Safe: the server refuses each, and the admin's list
/// is unchanged. Control: the admin role's own `add_mapping`, `list` and `read_secret` work.
#[tokio::test]
async fn hosts_and_applications_cannot_call_admin_or_database_operations() {
    let layout = Layout::start(&["shop"], vec![]).await;
    let admin = layout.admin().await;
    let operator = AdminClient::new(
        admin.client.clone(),
        DEFAULT_SUBJECT_BASE,
        "v1alpha1",
        "nats-kv",
    );
    operator
        .put_secret("db_password", text("s3cr3t"), None, None)
        .await
        .unwrap();
    let (_, mine) = Issuer::new().component();
    let grant = serde_json::to_vec(&["db_password"]).unwrap();
    let host = layout.host().await;
    let shop = layout.app("shop").await;
    let mut failures = Vec::new();
    for role in [&host, &shop] {
        for (subject, body) in [
            (format!("{PROTOCOL}.add_mapping.{mine}"), grant.clone()),
            (format!("{PROTOCOL}.put_secret"), b"{}".to_vec()),
            (
                format!("{PROTOCOL}.delete_secret"),
                br#"{"key":"db_password"}"#.to_vec(),
            ),
            (format!("{PROTOCOL}.list_secrets"), vec![]),
            (
                format!("{PROTOCOL}.read_secret"),
                br#"{"key":"db_password"}"#.to_vec(),
            ),
            ("piggybank.database.nats-kv.lock".to_string(), vec![]),
            ("piggybank.database.nats-kv.status".to_string(), vec![]),
            ("$SRV.STATS".to_string(), vec![]),
        ] {
            failures.extend(
                role.refused_request(&subject, HeaderMap::new(), &body)
                    .await,
            );
        }
    }
    assert!(
        operator.get_mappings(&mine).await.unwrap().is_empty(),
        "a refused add_mapping granted access"
    );
    let listed = operator.list_secrets("").await.unwrap();
    assert_eq!(listed.len(), 1, "a refused delete removed the secret");
    // Control: the admin's own mapping works.
    operator
        .add_mapping(&mine, &names(&["db_password"]))
        .await
        .unwrap();
    assert_eq!(
        operator.get_mappings(&mine).await.unwrap(),
        vec!["db_password"]
    );
    // Control: the admin role reads a value through the backend.
    let (_, value) = operator
        .read_secret("db_password", None, None)
        .await
        .unwrap();
    assert_eq!(value.as_bytes(), b"s3cr3t");
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Attack: application `shop` publishes on `billing`'s subjects (reads or overwrites its
/// secrets), and subscribes to `billing`'s inbox and to the hosts' shared `_INBOX.>` (to read
/// replies meant for others). Safe: the server refuses each, and `billing`'s value is
/// unchanged. Control: `billing` posts and reads its own secret while `shop`'s refused
/// subscriptions receive nothing.
#[tokio::test]
async fn an_application_reaches_neither_another_applications_subjects_nor_its_inbox() {
    let layout = Layout::start(&["shop", "billing"], vec![]).await;
    let shop = layout.app("shop").await;
    let billing = layout.app("billing").await;
    assert_eq!(
        api(&billing.client, "piggybank.billing.key", "post", b"mine").await,
        Ok(200)
    );
    let mut failures = Vec::new();
    let mut subs = vec![
        shop.refused_subscription("_INBOX_billing.>", None, &mut failures)
            .await,
        shop.refused_subscription("_INBOX.>", None, &mut failures)
            .await,
    ];
    let mut post = HeaderMap::new();
    post.insert("method", "post");
    failures.extend(
        shop.refused_request("piggybank.billing.key", post, b"theirs")
            .await,
    );
    let mut get = HeaderMap::new();
    get.insert("method", "get");
    failures.extend(
        shop.refused_request("piggybank.billing.key", get.clone(), b"")
            .await,
    );
    // Control: billing's own get works and returns its value; shop heard nothing of it.
    let reply = billing
        .client
        .request_with_headers("piggybank.billing.key", get, "".into())
        .await
        .expect("billing reads its own secret");
    assert_eq!(&reply.payload[..], b"mine");
    nothing_received(&mut subs, &mut failures).await;
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Piggy Bank's own inbox layout under the generated permissions: `nats-config --app-inbox
/// foo=foo.secrets` lets `foo` receive on `foo.secrets.>`, and nobody else. Attack:
/// application `bar` subscribes to foo's inbox, and aims a request's reply at it. Safe: the
/// server refuses bar's subscription, and the backend answers nothing into foo's inbox for
/// bar. Control: foo, connected with its seed and `foo.secrets` as inbox prefix, posts and
/// reads its secret.
#[tokio::test]
async fn an_inbox_bound_to_an_application_is_its_own_under_the_layout() {
    let layout = Layout::start_with(&["foo", "bar"], &["foo=foo.secrets"], vec![]).await;
    let foo = layout.connect("app-foo", Some("foo.secrets".into())).await;
    let bar = layout.app("bar").await;
    assert_eq!(
        api(&foo.client, "piggybank.foo.token", "post", b"foo-value").await,
        Ok(200),
        "foo is answered in its bound inbox"
    );
    let mut get = HeaderMap::new();
    get.insert("method", "get");
    let reply = foo
        .client
        .request_with_headers("piggybank.foo.token", get.clone(), "".into())
        .await
        .expect("foo reads its own secret");
    assert_eq!(&reply.payload[..], b"foo-value");
    assert!(foo.errors.lock().unwrap().is_empty());

    let mut failures = Vec::new();
    let mut subs = vec![
        bar.refused_subscription("foo.secrets.>", None, &mut failures)
            .await,
    ];
    let mut foo_inbox = foo.client.subscribe("foo.secrets.pending").await.unwrap();
    foo.client.flush().await.unwrap();
    bar.client
        .publish_with_reply_and_headers("piggybank.bar.k", "foo.secrets.pending", get, "".into())
        .await
        .unwrap();
    bar.client.flush().await.unwrap();
    if let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(500), foo_inbox.next()).await
    {
        failures.push(format!(
            "bar's request was answered in foo's inbox: {msg:?}"
        ));
    }
    nothing_received(&mut subs, &mut failures).await;
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Attack (the review's): through the JetStream API, purge the audit trail (also by subject
/// filter), shrink or replace it, delete it, add a stream sourcing it (forged records), add
/// a `no_ack` stream capturing `…add_mapping.>` (to record an operator's signed request
/// without any subscribe permission), or capture the audit subjects. Safe: the server
/// refuses every call to the host, to an application, and (for all but reads) to the
/// admin; the audit stream keeps its records. Control: the admin reads the stream's info.
#[tokio::test]
async fn no_role_but_the_backend_can_purge_change_delete_source_or_capture_piggybanks_streams() {
    let layout = Layout::start(&["shop"], vec![]).await;
    let admin = layout.admin().await;
    let host = layout.host().await;
    let shop = layout.app("shop").await;
    assert_eq!(
        api(&shop.client, "piggybank.shop.x", "get", b"").await,
        Ok(404)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let records = audit_messages(&admin).await;
    assert!(records > 0, "the control request was recorded");
    let capture = serde_json::json!({
        "name": "CAPTURE", "subjects": [format!("{PROTOCOL}.add_mapping.>")], "no_ack": true
    });
    let source = serde_json::json!({"name": "COPY", "sources": [{"name": AUDIT_STREAM}]});
    let audit_capture = serde_json::json!({"name": "AUDIT2", "subjects": ["$PIGGYBANK.AUDIT.>"]});
    let shrink = serde_json::json!({"name": AUDIT_STREAM, "subjects": ["$PIGGYBANK.AUDIT.nats-kv.>"], "max_msgs": 1});
    let calls: Vec<(String, Vec<u8>)> = vec![
        (
            format!("$JS.API.STREAM.PURGE.{AUDIT_STREAM}"),
            b"{}".to_vec(),
        ),
        (
            format!("$JS.API.STREAM.PURGE.{AUDIT_STREAM}"),
            br#"{"filter":"$PIGGYBANK.AUDIT.nats-kv.denied.>"}"#.to_vec(),
        ),
        (
            format!("$JS.API.STREAM.UPDATE.{AUDIT_STREAM}"),
            shrink.to_string().into_bytes(),
        ),
        (format!("$JS.API.STREAM.DELETE.{AUDIT_STREAM}"), vec![]),
        (format!("$JS.API.STREAM.DELETE.{SECRETS_STREAM}"), vec![]),
        (
            format!("$JS.API.STREAM.PURGE.{SECRETS_STREAM}"),
            b"{}".to_vec(),
        ),
        (
            "$JS.API.STREAM.CREATE.COPY".to_string(),
            source.to_string().into_bytes(),
        ),
        (
            "$JS.API.STREAM.CREATE.CAPTURE".to_string(),
            capture.to_string().into_bytes(),
        ),
        (
            "$JS.API.STREAM.CREATE.AUDIT2".to_string(),
            audit_capture.to_string().into_bytes(),
        ),
    ];
    let mut failures = Vec::new();
    for role in [&host, &shop, &admin] {
        for (subject, body) in &calls {
            failures.extend(role.refused_request(subject, HeaderMap::new(), body).await);
        }
    }
    assert_eq!(
        audit_messages(&admin).await,
        records,
        "the audit stream lost or gained records"
    );
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Attack (the review's capture-purge-replay): the attacker holds an operator's signed
/// `add_mapping` (here recorded by a spy with the backend's own rights, the only role that
/// may see it), the operator revokes the mapping, and the attacker, as a host or an
/// application, purges the nonce bucket and publishes the recorded request again. Safe:
/// the server refuses the purge and the publish, and the revoked component stays refused.
/// Control: the component read the secret while it was mapped.
#[tokio::test]
async fn a_captured_signed_add_mapping_cannot_be_replayed_by_a_host_or_an_application() {
    let (_, signer) = admin_seed();
    let layout = Layout::start(&["shop"], vec![signer.public_key().to_string()]).await;
    let spy = layout.connect("backend", None).await;
    let mut recorder = spy
        .client
        .subscribe(format!("{PROTOCOL}.add_mapping.>"))
        .await
        .unwrap();
    spy.client.flush().await.unwrap();
    let admin = layout.admin().await;
    let operator = AdminClient::new(
        admin.client.clone(),
        DEFAULT_SUBJECT_BASE,
        "v1alpha1",
        "nats-kv",
    )
    .with_signer(Some(signer));
    operator
        .put_secret("db_password", text("s3cr3t"), None, None)
        .await
        .unwrap();
    let (jwt, entity) = Issuer::new().component();
    operator
        .add_mapping(&entity, &names(&["db_password"]))
        .await
        .unwrap();
    let recorded = tokio::time::timeout(Duration::from_secs(2), recorder.next())
        .await
        .expect("the spy recorded the signed add_mapping")
        .unwrap();
    let host = layout.host().await;
    let secrets =
        wasmcloud_secrets_client::Client::new("nats-kv", DEFAULT_SUBJECT_BASE, host.client.clone())
            .await
            .unwrap();
    assert!(
        host_get(&secrets, request("db_password", &jwt))
            .await
            .is_ok(),
        "control: the mapped component reads the secret"
    );
    operator
        .remove_mapping(&entity, &names(&["db_password"]))
        .await
        .unwrap();
    let shop = layout.app("shop").await;
    let mut failures = Vec::new();
    for role in [&host, &shop] {
        failures.extend(
            role.refused_request(
                "$JS.API.STREAM.PURGE.KV_SECRETS_nats-kv_nonces",
                HeaderMap::new(),
                b"{}",
            )
            .await,
        );
        failures.extend(
            role.refused_request(
                recorded.subject.as_str(),
                recorded.headers.clone().unwrap_or_default(),
                &recorded.payload,
            )
            .await,
        );
    }
    let refusal = host_refusal(&secrets, request("db_password", &jwt)).await;
    assert!(refusal.to_lowercase().contains("unauthorized"), "{refusal}");
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The cost of `jetstream { sync_interval: always }` (the generated server config) to
/// piggybank's writes: `put_secret` latency one at a time, and throughput from 8 writers at
/// once, on a server with it and one with nats-server's default (sync every 2 minutes).
/// A measurement, not a check: `cargo test --release --test suite
/// security::nats_layout::put_secret_cost_of_syncing_every_write -- --ignored --nocapture`;
/// the figures are in docs/nats-layout.md.
#[tokio::test]
#[ignore = "a measurement (docs/nats-layout.md), not a check"]
async fn put_secret_cost_of_syncing_every_write() {
    const SEQUENTIAL: usize = 300;
    const WRITERS: usize = 8;
    const EACH: usize = 100;
    for (label, jetstream) in [
        ("default (sync every 2 min)", ""),
        (
            "sync_interval: always",
            "jetstream { sync_interval: always }\n",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("nats-server.conf");
        std::fs::write(&conf, jetstream).unwrap();
        let nats = NatsServer::start_with_config(&conf);
        let keys = Keys::generate();
        let _backend = start_backend(&nats, config(&nats, &keys)).await;
        let client = admin(nats.client().await);
        let transit = nkeys::XKey::from_public_key(&keys.transit_public()).unwrap();
        let mut latencies = Vec::with_capacity(SEQUENTIAL);
        for i in 0..SEQUENTIAL {
            let started = Instant::now();
            client
                .put_secret(&format!("s{i}"), text("value"), None, Some(&transit))
                .await
                .unwrap();
            latencies.push(started.elapsed());
        }
        latencies.sort();
        let started = Instant::now();
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let client = admin(nats.client().await);
            let transit = nkeys::XKey::from_public_key(&keys.transit_public()).unwrap();
            writers.push(tokio::spawn(async move {
                for i in 0..EACH {
                    client
                        .put_secret(&format!("w{w}-{i}"), text("value"), None, Some(&transit))
                        .await
                        .unwrap();
                }
            }));
        }
        for w in writers {
            w.await.unwrap();
        }
        let elapsed = started.elapsed();
        let at =
            |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
        println!(
            "{label}: put_secret one at a time p50 {:?} p99 {:?}; {} writers: {:.0} puts/s",
            at(0.5),
            at(0.99),
            WRITERS,
            (WRITERS * EACH) as f64 / elapsed.as_secs_f64()
        );
    }
}
