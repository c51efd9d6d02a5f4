//! Attacks on the least-privilege NATS layout (`piggybank nats-config`, run by `dev`), each by
//! an attacker who holds ONE of the users it writes: a host's, an application's, or the
//! admin role's NATS user without the admin signing seed. Each test asserts the secure
//! outcome beside a positive control that shows the attack reached its target (or that the
//! spy could see what it looked for). Four of them failed when they were written (the
//! admin role read secrets through `get`; a raw `initialize` gave the database key to the
//! hosts' shared inbox; a read-only application's reply landed in the admin's inbox; the
//! deny lists did not survive a merged `>`), and pass since their fixes.

use std::time::Duration;

use async_nats::HeaderMap;
use futures::StreamExt;
use piggybank::config::ApiAccess;
use piggybank::config::DEFAULT_SUBJECT_BASE;
use piggybank::nats_layout::admin_inbox_prefix;
use zeroize::Zeroizing;

use crate::common::layout::{api, gather, operator, spy, stream_messages, Layout, RoleClient};
use crate::common::sealed::admin_seed;
use crate::common::*;

const PROTOCOL: &str = "wasmcloud.secrets.v1alpha1.nats-kv";
const DATABASE: &str = "piggybank.database.nats-kv";

/// Attack: a host's user subscribes to the shared `_INBOX.>` (the layout lets every host read
/// it) while another host fetches a secret, to read the value from the other host's reply.
/// Safe: the reply it sees is sealed to the other host's one-time xkey; no byte of the value
/// is in anything it receives. Control: it did see that reply (it carries
/// `Server-Response-Xkey`), and the other host got the value.
#[tokio::test]
async fn a_host_reading_the_shared_inbox_sees_other_hosts_secrets_only_sealed() {
    let layout = Layout::start(&[], vec![]).await;
    let admin = layout.admin().await;
    let operator = operator(&admin, None);
    let value = "v4lue-only-the-victim-may-read";
    operator
        .put_secret("db_password", text(value), None, None)
        .await
        .unwrap();
    let (jwt, entity) = Issuer::new().component();
    operator
        .add_mapping(&entity, &names(&["db_password"]))
        .await
        .unwrap();
    let attacker = layout.host().await;
    let mut inbox = spy(&attacker, "_INBOX.>").await;
    let victim = layout.host().await;
    let secrets = wasmcloud_secrets_client::Client::new(
        "nats-kv",
        DEFAULT_SUBJECT_BASE,
        victim.client.clone(),
    )
    .await
    .unwrap();
    let got = host_get(&secrets, request("db_password", &jwt)).await;
    assert_eq!(
        got.map(|s| s.string_secret),
        Ok(Some(value.to_string())),
        "control: the victim host reads the value"
    );
    let seen = gather(&mut inbox, Duration::from_millis(500)).await;
    let sealed_replies = seen
        .iter()
        .filter(|m| {
            m.headers
                .as_ref()
                .is_some_and(|h| h.get("Server-Response-Xkey").is_some())
        })
        .count();
    assert!(
        sealed_replies >= 1,
        "control: the spy saw the victim's reply"
    );
    for msg in &seen {
        assert!(
            !contains_bytes(&msg.payload, value),
            "the value crossed the shared inbox in clear on {}",
            msg.subject
        );
    }
}

/// Attack: someone holds the admin role's NATS user (the operators' user: `keys.env` points
/// at it) but not the admin signing key. With a component's public JWT and a host JWT of its
/// own making, it sends a host's `get`, which the layout's `<protocol>.>` lets it publish.
/// Safe: the server refuses the publish (reading secrets is the host role's, and an operator
/// reads through the signed, audited `get` of the CLI), and no value reaches it. Control:
/// the host role reads the value, and the admin role's signed administration works.
#[tokio::test]
async fn the_admin_roles_user_without_the_admin_seed_cannot_read_a_components_secret() {
    let (_, signer) = admin_seed();
    let layout = Layout::start(&[], vec![signer.public_key().to_string()]).await;
    let admin = layout.admin().await;
    let signed = operator(&admin, Some(signer));
    signed
        .put_secret("db_password", text("s3cr3t"), None, None)
        .await
        .unwrap();
    let (jwt, entity) = Issuer::new().component();
    signed
        .add_mapping(&entity, &names(&["db_password"]))
        .await
        .expect("control: the signed administration works");
    let host = layout.host().await;
    let secrets =
        wasmcloud_secrets_client::Client::new("nats-kv", DEFAULT_SUBJECT_BASE, host.client.clone())
            .await
            .unwrap();
    assert!(
        host_get(&secrets, request("db_password", &jwt))
            .await
            .is_ok(),
        "control: the host role reads it"
    );
    let attacker = layout.admin().await;
    let stolen = match wasmcloud_secrets_client::Client::new(
        "nats-kv",
        DEFAULT_SUBJECT_BASE,
        attacker.client.clone(),
    )
    .await
    {
        Ok(client) => host_get(&client, request("db_password", &jwt))
            .await
            .ok()
            .and_then(|s| s.string_secret),
        Err(_) => None,
    };
    assert_eq!(
        stolen, None,
        "the admin role's user read a component's secret"
    );
    assert!(
        attacker
            .violation("Publish", &format!("{PROTOCOL}.get"))
            .await,
        "the server did not refuse the admin role's get"
    );
}

/// Attack: the admin role may create consumers on piggybank's streams (to read them). A push
/// consumer names its deliver subject, and the server publishes there itself, not with the
/// creator's permissions. The attacker (the admin user without the admin seed, `--admin-keys`
/// set) makes consumers of the mappings stream that deliver into the secrets bucket
/// (over `db_password`, and as a new secret) and onto an admin subject, to write around
/// signed administration. Safe: nothing lands: the secrets stream holds the same messages,
/// no application is granted, and the component still reads the value. (The server does
/// make the consumers: a push consumer delivers only where something subscribes, and a
/// stream's capture is not such interest.) Control: the same consumer, delivering into the
/// admin's own inbox where it subscribes, delivers the mapping there.
#[tokio::test]
async fn an_admin_consumer_cannot_write_piggybanks_buckets_through_its_deliver_subject() {
    let (_, signer) = admin_seed();
    let layout = Layout::start(&[], vec![signer.public_key().to_string()]).await;
    let admin = layout.admin().await;
    let signed = operator(&admin, Some(signer));
    signed
        .put_secret("db_password", text("s3cr3t"), None, None)
        .await
        .unwrap();
    let (jwt, entity) = Issuer::new().component();
    signed
        .add_mapping(&entity, &names(&["db_password"]))
        .await
        .unwrap();
    let mappings_stream = "KV_SECRETS_nats-kv_state";
    let guarded = ["KV_WASMCLOUD_SECRETS"];
    let mut before = Vec::new();
    for stream in guarded {
        before.push(stream_messages(&admin, stream).await);
    }
    let consumer = |name: &str, deliver: &str| {
        serde_json::json!({
            "stream_name": mappings_stream,
            "config": {
                "name": name,
                "deliver_subject": deliver,
                "deliver_policy": "all",
                "ack_policy": "none",
                "filter_subject": format!("$KV.SECRETS_nats-kv_state.{entity}"),
            }
        })
        .to_string()
    };
    for (name, deliver) in [
        (
            "INTO_SECRETS",
            "$KV.WASMCLOUD_SECRETS.db_password".to_string(),
        ),
        (
            "INTO_NEW_SECRET",
            "$KV.WASMCLOUD_SECRETS.planted".to_string(),
        ),
        ("INTO_ADMIN", format!("{PROTOCOL}.add_app_mapping.attacker")),
    ] {
        let _ = admin
            .client
            .request(
                format!("$JS.API.CONSUMER.CREATE.{mappings_stream}.{name}"),
                consumer(name, &deliver).into(),
            )
            .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut failures = Vec::new();
    for (stream, before) in guarded.iter().zip(before) {
        let after = stream_messages(&admin, stream).await;
        if after != before {
            failures.push(format!("{stream} went from {before} to {after} messages"));
        }
    }
    assert!(
        signed
            .get_app_mappings("attacker")
            .await
            .unwrap()
            .is_empty(),
        "a delivered message granted the application"
    );
    let host = layout.host().await;
    let secrets =
        wasmcloud_secrets_client::Client::new("nats-kv", DEFAULT_SUBJECT_BASE, host.client.clone())
            .await
            .unwrap();
    match host_get(&secrets, request("db_password", &jwt)).await {
        Ok(s) if s.string_secret.as_deref() == Some("s3cr3t") => {}
        Ok(_) => failures.push("the component read another value after the attack".into()),
        Err(e) => failures.push(format!("the component's read after the attack: {e}")),
    }
    // Control: a consumer delivering into the admin's own inbox carries the mapping there.
    let own = format!("{}.own", admin_inbox_prefix("nats-kv"));
    let mut mine = spy(&admin, &own).await;
    let reply = admin
        .client
        .request(
            format!("$JS.API.CONSUMER.CREATE.{mappings_stream}.OWN"),
            consumer("OWN", &own).into(),
        )
        .await
        .expect("the admin creates a consumer of its own");
    let delivered = gather(&mut mine, Duration::from_secs(1)).await;
    assert!(
        delivered
            .iter()
            .any(|m| contains_bytes(&m.payload, "db_password")),
        "control: the admin's own consumer delivered nothing: {}",
        String::from_utf8_lossy(&reply.payload)
    );
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Attack: a sealed store under the layout, without `--admin-keys` (the admin role is the
/// gate). An operator initializes it as Piggy Bank's own documentation shows (`nats req
/// piggybank.database.<name>.initialize ""`), as the admin role but with the client's
/// default inbox `_INBOX.`. A host's user reads `_INBOX.>`, which the layout gives every
/// host. Safe: the database key never reaches the host: the backend answers the operators'
/// operations only in the operators' inbox once one is trusted, so it refuses this request
/// for its reply subject before doing anything (counted in `status` as `refused_reply`, and
/// the store stays uninitialized). Control: the spy hears hosts' replies there, and the same
/// request from the admin's inbox initializes the store, its key unseen by the spy.
#[tokio::test]
async fn the_database_key_never_reaches_the_hosts_shared_inbox() {
    let layout = Layout::start_adjusted(
        &[],
        &[],
        |c| {
            c.encryption_xkey_seed = Zeroizing::default();
        },
        |_| {},
    )
    .await;
    let attacker = layout.host().await;
    let mut inbox = spy(&attacker, "_INBOX.>").await;
    let careless = layout.connect("admin", None).await;
    let asked = careless
        .client
        .request(format!("{DATABASE}.initialize"), "".into());
    let _ = tokio::time::timeout(Duration::from_secs(2), asked).await;
    // Control: the spy hears a host's reply on the shared inbox.
    attacker
        .client
        .request(format!("{PROTOCOL}.server_xkey"), "".into())
        .await
        .expect("control: the host's server_xkey");
    let seen = gather(&mut inbox, Duration::from_millis(500)).await;
    assert!(!seen.is_empty(), "control: the spy heard nothing");
    // The request reached the backend, which refused it for its reply subject.
    let admin = layout.admin().await;
    let status = |admin: &RoleClient| {
        let client = admin.client.clone();
        async move {
            let reply = client
                .request(format!("{DATABASE}.status"), "".into())
                .await
                .expect("the admin role's status");
            serde_json::from_slice::<serde_json::Value>(&reply.payload).unwrap()
        }
    };
    let before = status(&admin).await;
    assert_eq!(before["initialized"], false, "{before}");
    assert_eq!(before["shed"]["refused_reply"], 1, "{before}");
    // Control: from the operators' inbox it is answered, with the key.
    let answered = admin
        .client
        .request(format!("{DATABASE}.initialize"), "".into())
        .await
        .expect("initialize from the admin's inbox");
    assert!(contains_bytes(&answered.payload, "database_key"));
    assert_eq!(status(&admin).await["initialized"], true);
    let seen = [seen, gather(&mut inbox, Duration::from_millis(300)).await].concat();
    for msg in &seen {
        assert!(
            !contains_bytes(&msg.payload, "database_key"),
            "a host read the database key on {} (a reply of {} bytes)",
            msg.subject,
            msg.payload.len()
        );
    }
}

/// Attack: a read-only application's requests were answered in any trusted reply namespace
/// (`--read-only-apps global`). An application's user asks `global` for a name it chose with
/// reply subjects in the admin's inbox, where the layout forbids it to publish: piggybank
/// would publish there with its own rights, carrying the attacker's text in the error.
/// Safe: nothing arrives in the admin's inbox. By design, a request to `global` may be
/// answered in any application's own inbox (every service reads global secrets, each from
/// its own inbox, and NATS does not say which application sent it): what arrives there is
/// an admin-written value or an error. Control: the admin's spy hears the admin's own
/// replies, `global` reads its own secret, and billing reads `global` from its own inbox.
#[tokio::test]
async fn a_read_only_applications_reply_never_lands_in_the_operators_inbox() {
    let layout =
        Layout::start_read_only(&["global", "billing"], &[], &["global"], |_| {}, |_| {}).await;
    let admin = layout.admin().await;
    operator(&admin, None)
        .put_secret("_api/global/ca", text("ca-pem"), None, None)
        .await
        .unwrap();
    let billing = layout.app("billing").await;
    let global = layout.app("global").await;
    let admin_inbox = admin_inbox_prefix("nats-kv");
    let mut admin_spy = spy(&admin, &format!("{admin_inbox}.>")).await;
    let mut billing_spy = spy(&billing, "_INBOX_billing.>").await;
    let mut get = HeaderMap::new();
    get.insert("method", "get");
    for (role, subject) in [
        (&global, "piggybank.global.ca"),
        (&global, "piggybank.global.ATTACKER-CHOSEN-TEXT"),
        (&billing, "piggybank.global.ATTACKER-CHOSEN-TEXT"),
        (&billing, "piggybank.billing.ATTACKER-CHOSEN-TEXT"),
    ] {
        role.client
            .publish_with_reply_and_headers(
                subject,
                format!("{admin_inbox}.forged.1"),
                get.clone(),
                "".into(),
            )
            .await
            .unwrap();
    }
    global.client.flush().await.unwrap();
    billing.client.flush().await.unwrap();
    let mut failures = Vec::new();
    for (who, spy) in [("admin", &mut admin_spy)] {
        for msg in gather(spy, Duration::from_millis(700)).await {
            if msg.subject.contains("forged") {
                failures.push(format!(
                    "{who}'s inbox received {} ({} bytes)",
                    msg.subject,
                    msg.payload.len()
                ));
            }
        }
    }
    // Controls: each spy hears its own role's replies; global reads its secret.
    operator(&admin, None)
        .list_secrets("")
        .await
        .expect("the admin lists");
    assert_eq!(
        api(&billing.client, "piggybank.billing.x", "get", b"").await,
        Ok(404)
    );
    assert!(!gather(&mut admin_spy, Duration::from_millis(300))
        .await
        .is_empty());
    assert!(!gather(&mut billing_spy, Duration::from_millis(300))
        .await
        .is_empty());
    let from_billing = billing
        .client
        .request_with_headers("piggybank.global.ca", get.clone(), "".into())
        .await
        .expect("billing reads global from its own inbox");
    assert_eq!(&from_billing.payload[..], b"ca-pem");
    let reply = global
        .client
        .request_with_headers("piggybank.global.ca", get, "".into())
        .await
        .unwrap();
    assert_eq!(&reply.payload[..], b"ca-pem");
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A host's request for `key` from the entity of `jwt`, naming application `application`.
fn asking_as(key: &str, jwt: &str, application: &str) -> wasmcloud_secrets_types::SecretRequest {
    let mut req = request(key, jwt);
    req.context.application.name = Some(application.to_string());
    req
}

/// Attack: a host's user (who may name any application in `context.application.name`, the
/// host's unsigned claim) names look-alikes of an application that was granted a secret:
/// another case, a trailing dot or token, wildcards, the bucket key `app.<name>`, padding,
/// full-width and zero-width Unicode, a path, the empty name, and a name one character
/// longer than a granted 128-character one. Safe: each is refused as unauthorized; a grant
/// is to exactly one name. Control: the granted names themselves read the secret.
#[tokio::test]
async fn an_application_name_that_only_looks_like_a_granted_one_reads_nothing() {
    let layout = Layout::start(&[], vec![]).await;
    let admin = layout.admin().await;
    let operator = operator(&admin, None);
    operator
        .put_secret("db_password", text("s3cr3t"), None, None)
        .await
        .unwrap();
    let long = "x".repeat(128);
    for app in ["shop", long.as_str()] {
        operator
            .add_app_mapping(app, &names(&["db_password"]))
            .await
            .unwrap();
    }
    let (jwt, _) = Issuer::new().component();
    let host = layout.host().await;
    let secrets =
        wasmcloud_secrets_client::Client::new("nats-kv", DEFAULT_SUBJECT_BASE, host.client.clone())
            .await
            .unwrap();
    for app in ["shop", long.as_str()] {
        assert!(
            host_get(&secrets, asking_as("db_password", &jwt, app))
                .await
                .is_ok(),
            "control: application {app:?} reads its grant"
        );
    }
    let longer = format!("{long}x");
    let mut failures = Vec::new();
    for lookalike in [
        "Shop",
        "SHOP",
        "shop.",
        "shop.x",
        "shop*",
        "*",
        ">",
        "shop.>",
        "app.shop",
        "shop ",
        " shop",
        "",
        "ｓｈｏｐ",
        "shop\u{200b}",
        "shop/",
        "shop\0",
        longer.as_str(),
    ] {
        if host_get(&secrets, asking_as("db_password", &jwt, lookalike))
            .await
            .is_ok()
        {
            failures.push(format!("application {lookalike:?} read shop's grant"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Attack: application `shop`'s user tries to reach what a component reads as
/// `shop/db-password`, and to write the secret `shop/shared` the operator shared with it
/// read-only: through its own subjects, with path traversal, percent-encoding, leading
/// slashes and the API's own prefix in the name, and with the `method` header in other cases,
/// padded, or given twice (`get` first, then `post`; `post` first, then `get`). Safe: the
/// component still reads its value and the shared secret is unchanged; no reply carries the
/// component's value. Control: shop's own post and get work, and it reads the shared
/// secret.
#[tokio::test]
async fn an_application_cannot_reach_a_components_secret_or_write_a_read_only_share() {
    let shares: Vec<piggybank::config::ApiShare> = vec!["shop=shop/shared".parse().unwrap()];
    let layout = Layout::start_adjusted(
        &["shop"],
        &[],
        |c| c.piggybank_access = ApiAccess::new(&shares, &[]).unwrap(),
        |_| {},
    )
    .await;
    let admin = layout.admin().await;
    let operator = operator(&admin, None);
    operator
        .put_secret("shop/db-password", text("component-value"), None, None)
        .await
        .unwrap();
    operator
        .put_secret("shop/shared", text("shared-value"), None, None)
        .await
        .unwrap();
    let (jwt, entity) = Issuer::new().component();
    operator
        .add_mapping(&entity, &names(&["shop/db-password", "shop/shared"]))
        .await
        .unwrap();
    let shop = layout.app("shop").await;
    let mut failures = Vec::new();
    let ask = |methods: Vec<&'static str>, subject: String, body: &'static str| {
        let client = shop.client.clone();
        async move {
            let mut h = HeaderMap::new();
            for m in methods {
                h.append("method", m);
            }
            let asked = client.request_with_headers(subject, h, body.into());
            tokio::time::timeout(Duration::from_secs(2), asked)
                .await
                .ok()
                .and_then(Result::ok)
        }
    };
    for name in [
        "db-password",
        "shop/db-password",
        "/shop/db-password",
        "../shop/db-password",
        "..%2Fshop%2Fdb-password",
        "%2e%2e/shop/db-password",
        "_api/../shop/db-password",
        "shop%2Fdb-password",
        "x/../../shop/db-password",
    ] {
        let subject = format!("piggybank.shop.{name}");
        if let Some(reply) = ask(vec!["get"], subject.clone(), "").await {
            if contains_bytes(&reply.payload, "component-value") {
                failures.push(format!("a get of {subject} returned the component's value"));
            }
        }
        let _ = ask(vec!["post"], subject, "overwritten").await;
    }
    for methods in [
        vec!["post"],
        vec!["POST"],
        vec!["Post"],
        vec![" post"],
        vec!["post "],
        vec!["get", "post"],
        vec!["post", "get"],
        vec!["delete"],
        vec!["DELETE", "get"],
    ] {
        let described = format!("{methods:?}");
        if let Some(reply) = ask(methods, "piggybank.shop.shared".into(), "overwritten").await {
            let status = reply
                .headers
                .as_ref()
                .and_then(|h| h.get("Status"))
                .map(|s| s.to_string());
            if status.as_deref() == Some("200") && !contains_bytes(&reply.payload, "shared-value") {
                failures.push(format!("method {described} on the read-only share: 200"));
            }
        }
    }
    let host = layout.host().await;
    let secrets =
        wasmcloud_secrets_client::Client::new("nats-kv", DEFAULT_SUBJECT_BASE, host.client.clone())
            .await
            .unwrap();
    for (key, value) in [
        ("shop/db-password", "component-value"),
        ("shop/shared", "shared-value"),
    ] {
        match host_get(&secrets, request(key, &jwt)).await {
            Ok(s) if s.string_secret.as_deref() == Some(value) => {}
            Ok(_) => failures.push(format!("the component reads another value of {key}")),
            Err(e) => failures.push(format!("the component cannot read {key}: {e}")),
        }
    }
    // Controls: shop's own name, and the share, through the API.
    assert_eq!(
        api(&shop.client, "piggybank.shop.token", "post", b"t0k3n").await,
        Ok(200)
    );
    let reply = ask(vec!["get"], "piggybank.shop.token".into(), "")
        .await
        .expect("shop reads its own name");
    assert_eq!(&reply.payload[..], b"t0k3n");
    let reply = ask(vec!["get"], "piggybank.shop.shared".into(), "")
        .await
        .expect("shop reads the share");
    assert_eq!(&reply.payload[..], b"shared-value");
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Add `extra` to the publish and subscribe allow lists of the user whose comment line in
/// `auth.conf` is `# <describe>` (an operator merging a lattice's allow list into it).
fn merge_allow(auth: &mut String, describe: &str, extra: &str) {
    let at = auth
        .find(&format!("# {describe}"))
        .unwrap_or_else(|| panic!("no user {describe:?} in auth.conf"));
    let mut rest = auth.split_off(at);
    for direction in ["publish", "subscribe"] {
        let from = format!("{direction}: {{ allow: [");
        rest = rest.replacen(&from, &format!("{from}\"{extra}\", "), 1);
    }
    auth.push_str(&rest);
}

/// A stream's snapshot, taken on a server of the attacker's own (`$JS.API.STREAM.SNAPSHOT`):
/// the stream's config, state and the snapshot's chunks.
async fn snapshot_of(
    client: &async_nats::Client,
    stream: &str,
) -> (serde_json::Value, serde_json::Value, Vec<bytes::Bytes>) {
    let deliver = client.new_inbox();
    let mut chunks_sub = client.subscribe(deliver.clone()).await.unwrap();
    let request = serde_json::json!({"deliver_subject": deliver, "chunk_size": 65536});
    let reply = client
        .request(
            format!("$JS.API.STREAM.SNAPSHOT.{stream}"),
            request.to_string().into(),
        )
        .await
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert!(info.get("error").is_none(), "snapshot: {info}");
    let mut chunks = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(5), chunks_sub.next()).await
    {
        if msg.payload.is_empty() {
            break;
        }
        chunks.push(msg.payload.clone());
        if let Some(ack) = msg.reply {
            client.publish(ack, "".into()).await.unwrap();
        }
    }
    (info["config"].clone(), info["state"].clone(), chunks)
}

/// Restore a snapshot as `stream` (`$JS.API.STREAM.RESTORE`): the final reply's JSON, or the
/// first refusal.
async fn restore(
    client: &async_nats::Client,
    stream: &str,
    config: &serde_json::Value,
    state: &serde_json::Value,
    chunks: &[bytes::Bytes],
) -> Result<serde_json::Value, String> {
    let request = serde_json::json!({"config": config, "state": state});
    let asked = client.request(
        format!("$JS.API.STREAM.RESTORE.{stream}"),
        request.to_string().into(),
    );
    let reply = tokio::time::timeout(Duration::from_secs(2), asked)
        .await
        .map_err(|_| "no answer".to_string())?
        .map_err(|e| e.to_string())?;
    let started: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap_or_default();
    let deliver = started["deliver_subject"]
        .as_str()
        .ok_or_else(|| format!("restore refused: {started}"))?
        .to_string();
    for chunk in chunks {
        client
            .request(deliver.clone(), chunk.clone())
            .await
            .map_err(|e| e.to_string())?;
    }
    let done = client
        .request(deliver, "".into())
        .await
        .map_err(|e| e.to_string())?;
    Ok(serde_json::from_slice(&done.payload).unwrap_or_default())
}

/// Attack: the layout's docs say the host's and applications' deny lists keep holding when an
/// operator merges a lattice's allow list into those users (deny wins). With an allow list
/// as broad as `>` merged into the host user (a host that may do anything on its lattice's
/// account but piggybank's), the host: subscribes to application `shop`'s inbox, to read the
/// values the API returns there; sends an unsigned `add_mapping` to grant a component of its
/// own (the layout's admin role is the only gate without `--admin-keys`); and restores a
/// stream snapshot (made on a server of its own) whose config captures `…add_mapping.>`
/// (`STREAM.RESTORE` creates a stream without `STREAM.CREATE`). And with `>` merged into
/// application `shop`'s user, it subscribes to application `billing`'s inbox. Safe: the
/// server refuses each, nothing of billing's or shop's values reaches the attacker, the
/// component stays unmapped, and no capturing stream exists. Control: the denies that are
/// there hold (`STREAM.CREATE` of the same stream is refused), the host reads its secrets,
/// and each application reads its own values.
#[tokio::test]
async fn the_deny_lists_hold_when_a_broad_lattice_allow_list_is_merged() {
    let layout = Layout::start_adjusted(
        &["shop", "billing"],
        &[],
        |_| {},
        |auth| {
            merge_allow(auth, "wasmCloud hosts", ">");
            merge_allow(auth, "Piggy Bank API application \"shop\"", ">");
        },
    )
    .await;
    let admin = layout.admin().await;
    let operator = operator(&admin, None);
    operator
        .put_secret("db_password", text("s3cr3t"), None, None)
        .await
        .unwrap();
    let host = layout.host().await;
    let shop = layout.app("shop").await;
    let billing = layout.app("billing").await;
    let mut failures = Vec::new();
    // Read other inboxes.
    let mut shop_inbox = host
        .refused_subscription("_INBOX_shop.>", None, &mut failures)
        .await;
    let mut billing_inbox = shop
        .refused_subscription("_INBOX_billing.>", None, &mut failures)
        .await;
    assert_eq!(
        api(&shop.client, "piggybank.shop.token", "post", b"shop-t0k3n").await,
        Ok(200)
    );
    assert_eq!(
        api(&shop.client, "piggybank.shop.token", "get", b"").await,
        Ok(200)
    );
    assert_eq!(
        api(
            &billing.client,
            "piggybank.billing.key",
            "post",
            b"billing-k3y"
        )
        .await,
        Ok(200)
    );
    assert_eq!(
        api(&billing.client, "piggybank.billing.key", "get", b"").await,
        Ok(200)
    );
    for (who, sub, value) in [
        ("the host", &mut shop_inbox, "shop-t0k3n"),
        ("shop", &mut billing_inbox, "billing-k3y"),
    ] {
        if gather(sub, Duration::from_millis(500))
            .await
            .iter()
            .any(|m| contains_bytes(&m.payload, value))
        {
            failures.push(format!("{who} read another application's value"));
        }
    }
    // An unsigned admin operation.
    let (jwt, entity) = Issuer::new().component();
    failures.extend(
        host.refused_request(
            &format!("{PROTOCOL}.add_mapping.{entity}"),
            HeaderMap::new(),
            br#"["db_password"]"#,
        )
        .await,
    );
    if !operator.get_mappings(&entity).await.unwrap().is_empty() {
        failures.push("the host granted its component a secret".into());
    }
    // A capturing stream, restored rather than created.
    let own = NatsServer::start();
    let own_client = own.client().await;
    let capture = serde_json::json!({
        "name": "CAPTURE",
        "subjects": [format!("{PROTOCOL}.add_mapping.>")],
        "no_ack": true,
        "storage": "file",
    });
    let created = own_client
        .request("$JS.API.STREAM.CREATE.CAPTURE", capture.to_string().into())
        .await
        .unwrap();
    assert!(
        !contains_bytes(&created.payload, "\"error\""),
        "the attacker's own server made the stream"
    );
    let (config, state, chunks) = snapshot_of(&own_client, "CAPTURE").await;
    assert!(!chunks.is_empty(), "control: the snapshot has data");
    failures.extend(
        host.refused_request(
            "$JS.API.STREAM.CREATE.CAPTURE",
            HeaderMap::new(),
            capture.to_string().as_bytes(),
        )
        .await,
    );
    if let Ok(done) = restore(&host.client, "CAPTURE", &config, &state, &chunks).await {
        let (_, victim) = Issuer::new().component();
        operator
            .add_mapping(&victim, &names(&["db_password"]))
            .await
            .unwrap();
        let info = host
            .client
            .request("$JS.API.STREAM.INFO.CAPTURE", "".into())
            .await
            .map(|r| serde_json::from_slice::<serde_json::Value>(&r.payload).unwrap_or_default());
        failures.push(format!(
            "the host restored a stream capturing add_mapping ({}), which now holds {} message(s)",
            done["config"]["name"],
            info.map(|i| i["state"]["messages"].clone())
                .unwrap_or_default()
        ));
    }
    // Control: the host's own get.
    operator
        .add_mapping(&entity, &names(&["db_password"]))
        .await
        .unwrap();
    let secrets =
        wasmcloud_secrets_client::Client::new("nats-kv", DEFAULT_SUBJECT_BASE, host.client.clone())
            .await
            .unwrap();
    assert!(host_get(&secrets, request("db_password", &jwt))
        .await
        .is_ok());
    assert!(failures.is_empty(), "{failures:#?}");
}
