//! The front doors parse a request once: the class the serve loop checks (admin or open,
//! small or carrying a value, who asks) is the operation the handler runs; and the audit
//! trail records the core's decision, with no more of a requester's text than a valid name.
//! A sealed `get` answers alike whatever it asks for.

use std::time::Duration;

use crate::common::sealed::{ask, pinned_store, signed, unlocks};
use crate::common::*;
use async_nats::HeaderMap;
use futures::StreamExt as _;
use nkeys::{KeyPair, XKey};
use piggybank::admin_auth::AdminSigner;
use piggybank::config::headers::WASMCLOUD_HOST_XKEY;
use serde_json::Value;
use wascap::jwt::{Claims, Host};

const P: &str = "wasmcloud.secrets.v1alpha1.nats-kv";
const WAIT: Duration = Duration::from_secs(3);

fn signer() -> AdminSigner {
    AdminSigner::from_seed(&AdminSigner::generate_seed()).unwrap()
}

/// A keyed backend that requires signed administration by `admin`.
fn signed_config(
    nats: &NatsServer,
    keys: &Keys,
    admin: &AdminSigner,
) -> piggybank::server::RunConfig {
    let mut c = config(nats, keys);
    c.admin_keys = vec![admin.public_key().to_string()];
    c
}

fn method(values: &[&str]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for v in values {
        h.append("method", *v);
    }
    h
}

/// Every audit record published from now on, as a `>` subscriber sees them.
async fn spy_records(client: &async_nats::Client) -> async_nats::Subscriber {
    let sub = client.subscribe("$PIGGYBANK.AUDIT.>").await.unwrap();
    client.flush().await.unwrap();
    sub
}

/// The records seen by `spy` until `wanted` finds one (or 5 s pass).
async fn records_until(
    spy: &mut async_nats::Subscriber,
    seen: &mut Vec<Value>,
    wanted: impl Fn(&Value) -> bool,
) -> Option<Value> {
    if let Some(found) = seen.iter().find(|r| wanted(r)) {
        return Some(found.clone());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, spy.next()).await {
        for line in msg.payload.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            seen.push(serde_json::from_slice(line).expect("a JSON record"));
        }
        if let Some(found) = seen.iter().find(|r| wanted(r)) {
            return Some(found.clone());
        }
    }
    None
}

/// A wasmCloud `get` as a host sends it: the `SecretRequest` sealed to `transit` from a
/// one-time key named in `WasmCloud-Host-Xkey`.
fn sealed_get(
    transit: &str,
    request: &wasmcloud_secrets_types::SecretRequest,
) -> (HeaderMap, Vec<u8>) {
    let recipient = XKey::from_public_key(transit).unwrap();
    let body = serde_json::to_vec(request).unwrap();
    let (sealed, sender) = piggybank::keys::seal_to(&body, &recipient).unwrap();
    let mut h = HeaderMap::new();
    h.insert(WASMCLOUD_HOST_XKEY, sender.as_str());
    (h, sealed)
}

/// The raw reply (headers and payload) to one request, or `None` within `WAIT`.
async fn raw(
    client: &async_nats::Client,
    subject: &str,
    headers: HeaderMap,
    body: Vec<u8>,
) -> Option<async_nats::Message> {
    let sent = client.request_with_headers(subject.to_string(), headers, body.into());
    tokio::time::timeout(WAIT, sent).await.ok()?.ok()
}

/// Send an attack and give it a moment to be answered (most are, some are not).
async fn fire(client: &async_nats::Client, subject: &str, headers: HeaderMap, body: Vec<u8>) {
    let sent = client.request_with_headers(subject.to_string(), headers, body.into());
    let _ = tokio::time::timeout(Duration::from_millis(700), sent).await;
}

// ---------------------------------------------------------------------------------------
// Door classification: no admin operation is classified `Open`.

/// Attack: unsigned protocol admin operations in odd spellings (case, trailing tokens,
/// wildcard entity tokens, an extra `method: get` header pretending to be a read) against a
/// backend run with `--admin-keys`. Safe: none of them changes the store. Control: the same
/// operations signed do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_protocol_admin_subjects_in_odd_forms_change_nothing() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let admin_key = signer();
    let _backend = start_backend(&nats, signed_config(&nats, &keys, &admin_key)).await;
    let operator = admin(nats.client().await).with_signer(Some(admin_key.clone()));
    operator
        .put_secret("db", text("v"), None, None)
        .await
        .unwrap();
    let (_, component) = Issuer::new().component();

    let attacker = nats.client().await;
    let delete = br#"{"key":"db"}"#.to_vec();
    let mapping = br#"["db"]"#.to_vec();
    let attempts: Vec<(String, Vec<u8>)> = vec![
        (format!("{P}.delete_secret"), delete.clone()),
        (format!("{P}.DELETE_SECRET"), delete.clone()),
        (format!("{P}.Delete_Secret"), delete.clone()),
        (format!("{P}.delete_secret.x"), delete.clone()),
        (format!("{P}.delete_secret.*"), delete.clone()),
        (format!("{P}.add_mapping.{component}"), mapping.clone()),
        (format!("{P}.ADD_MAPPING.{component}"), mapping.clone()),
        (format!("{P}.add_mapping.*"), mapping.clone()),
        (format!("{P}.add_mapping.{component}.x"), mapping.clone()),
        (format!("{P}.remove_mapping.{component}"), mapping.clone()),
        (format!("{P}.get.delete_secret"), delete.clone()),
        (format!("{P}.server_xkey.delete_secret"), delete.clone()),
    ];
    for (subject, body) in &attempts {
        for headers in [HeaderMap::new(), method(&["get"]), method(&["get", "post"])] {
            // Answered or not, nothing may change.
            fire(&attacker, subject, headers, body.clone()).await;
        }
    }
    let listed = operator.list_secrets("").await.unwrap();
    assert!(
        listed.iter().any(|m| m.name == "db"),
        "an unsigned delete_secret in an odd form deleted the secret: {listed:?}"
    );
    let mapped = operator.get_mappings(&component).await.unwrap();
    assert!(
        mapped.is_empty(),
        "an unsigned add_mapping in an odd form mapped the secret: {mapped:?}"
    );

    // Control: the unsigned plain form is refused as unsigned, and signed it works.
    let unsigned = admin(nats.client().await);
    let refused = unsigned.delete_secret("db").await.unwrap_err();
    assert!(refused.is_admin_refusal(), "{refused}");
    operator
        .add_mapping(&component, &names(&["db"]))
        .await
        .unwrap();
    assert_eq!(
        operator.get_mappings(&component).await.unwrap(),
        vec!["db".to_string()]
    );
    operator.delete_secret("db").await.unwrap();
    assert!(operator.list_secrets("").await.unwrap().is_empty());
}

/// Attack: an unsigned `lock` of a signed sealed-mode backend on every subject that reaches
/// the database door: the named subject, the deprecated alias, odd case, a `>`-like extra
/// token, the API's `piggybank.database...` tree with a `method` header. Safe: the store
/// stays unsealed. Control: the same `lock`, signed, seals it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_lock_on_every_database_subject_leaves_the_store_unsealed() {
    let store = pinned_store().await;
    assert!(
        unlocks(&store.nats, &store.admin, &store.key).await,
        "control: unlock"
    );
    let attacker = store.nats.client().await;
    let sealed = |statuses: &[Value]| statuses.iter().any(|s| s["sealed"] == Value::Bool(true));
    assert!(!sealed(&database_statuses(&attacker, "piggybank").await));
    for subject in [
        "piggybank.database.nats-kv.lock",
        "piggybank.database.lock",
        "piggybank.database.nats-kv.LOCK",
        "piggybank.database.Lock",
        "piggybank.database.nats-kv.lock.now",
        "piggybank.database.*.lock",
        "piggybank.database.nats-kv.*",
        "piggybank.database.*",
    ] {
        for headers in [HeaderMap::new(), method(&["get"]), method(&["post"])] {
            fire(&attacker, subject, headers, Vec::new()).await;
        }
        assert!(
            !sealed(&database_statuses(&attacker, "piggybank").await),
            "an unsigned request on {subject} locked the store"
        );
    }
    // Control: signed, it locks.
    let (status, body) = signed(&store.operator, &store.admin, "lock").await;
    assert_eq!(status, 200, "{body}");
    assert!(sealed(&database_statuses(&attacker, "piggybank").await));
}

/// Attack: a Piggy Bank API request whose `method` header is given twice (`get`, then
/// `post`), or in odd case, so that the size check sees a `get` (no value) and the handler a
/// `post` (which stores its value). Safe: one reading for both: a request classified as a
/// read over `--max-request-bytes` stores nothing. Control: one `post` of the same value is
/// stored (a value may be larger than `--max-request-bytes`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_header_given_twice_is_one_method_for_the_size_check_and_the_handler() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let mut c = config(&nats, &keys);
    c.piggybank_prefix = Some("piggybank".into());
    c.max_request_bytes = 1024;
    let _backend = start_backend(&nats, c).await;
    let attacker = nats.client().await;
    let value = vec![b'v'; 4096];
    let stored = |status: u16| status == 200;

    for (name, headers) in [
        ("twice", method(&["get", "post"])),
        ("twice-upper", method(&["GET", "POST"])),
        ("get-then-delete", method(&["get", "delete"])),
    ] {
        let subject = format!("piggybank.shop.{name}");
        let answered = ask(&attacker, &subject, headers, &value, WAIT).await;
        let (status, body) = answered.expect("answered");
        assert!(
            !stored(status) || body.get("version").is_none(),
            "{name}: {status} {body}"
        );
        let read = ask(&attacker, &subject, method(&["get"]), b"", WAIT).await;
        assert_eq!(
            read.map(|(s, _)| s),
            Some(404),
            "{name}: a request read as a get by the size check stored its value"
        );
    }
    // Header names in another case: one reading for both, whichever it is.
    let mut h = HeaderMap::new();
    h.insert("Method", "get");
    h.insert("method", "post");
    let answered = ask(&attacker, "piggybank.shop.cased", h, &value, WAIT).await;
    let (status, _) = answered.expect("answered");
    let read = ask(
        &attacker,
        "piggybank.shop.cased",
        method(&["get"]),
        b"",
        WAIT,
    )
    .await;
    let kept = matches!(read, Some((200, _)));
    assert!(!(kept && status == 413), "refused as too large, yet stored");

    // Control: one post of the same value, over --max-request-bytes, is stored.
    let (status, body) = ask(
        &attacker,
        "piggybank.shop.one",
        method(&["post"]),
        &value,
        WAIT,
    )
    .await
    .expect("answered");
    assert_eq!(status, 200, "{body}");
    let read = attacker
        .request_with_headers("piggybank.shop.one", method(&["get"]), "".into())
        .await
        .unwrap();
    assert_eq!(read.payload.len(), value.len());
}

/// Attack: an unsigned-mode admin operation without a value (`delete_secret`), padded over
/// `--max-request-bytes`. Safe: refused (413) before its handler, the secret is still there.
/// Control: the same body unpadded deletes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_without_a_value_never_reaches_its_handler() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let mut c = config(&nats, &keys);
    c.max_request_bytes = 1024;
    let _backend = start_backend(&nats, c).await;
    let operator = admin(nats.client().await);
    operator
        .put_secret("db", text("v"), None, None)
        .await
        .unwrap();
    let attacker = nats.client().await;
    let mut body = br#"{"key":"db"}"#.to_vec();
    body.extend(std::iter::repeat_n(b' ', 4096));
    let reply = raw(
        &attacker,
        &format!("{P}.delete_secret"),
        HeaderMap::new(),
        body,
    )
    .await
    .expect("answered");
    let code = reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Service-Error-Code"))
        .map(|v| v.as_str().to_string());
    assert_eq!(code.as_deref(), Some("413"));
    assert!(operator
        .list_secrets("")
        .await
        .unwrap()
        .iter()
        .any(|m| m.name == "db"));
    // Control.
    let reply = raw(
        &attacker,
        &format!("{P}.delete_secret"),
        HeaderMap::new(),
        br#"{"key":"db"}"#.to_vec(),
    )
    .await
    .expect("answered");
    assert_eq!(&reply.payload[..], b"ok");
    assert!(operator.list_secrets("").await.unwrap().is_empty());
}

/// Attack: an admin operation (unauthenticated mode) whose reply subject is one the policy
/// refuses: a system subject, a served tree (the protocol's, the database's, the server's own
/// inbox), or a wildcard. Safe: not handled, so nothing changes. Control: the same request
/// with an `_INBOX.` reply deletes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_a_refused_reply_subject_is_never_handled() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let _backend = start_backend(&nats, config(&nats, &keys)).await;
    let operator = admin(nats.client().await);
    operator
        .put_secret("db", text("v"), None, None)
        .await
        .unwrap();
    let attacker = nats.client().await;
    for reply in [
        "$KV.SECRETS_nats-kv.db",
        "$JS.API.STREAM.LIST",
        "piggybank.database.nats-kv.lock",
        "piggybank.database.lock",
        "wasmcloud.secrets.v1alpha1.nats-kv.get",
        "_PIGGYBANK_INBOX.x",
        "_INBOX.*",
        "_INBOX.>",
        "_INBOX",
        "_INBOX.",
    ] {
        let _ = attacker
            .publish_with_reply(
                format!("{P}.delete_secret"),
                reply.to_string(),
                br#"{"key":"db"}"#.to_vec().into(),
            )
            .await;
    }
    attacker.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        operator
            .list_secrets("")
            .await
            .unwrap()
            .iter()
            .any(|m| m.name == "db"),
        "a request whose reply subject the policy refuses was handled"
    );
    // Control.
    let reply = raw(
        &attacker,
        &format!("{P}.delete_secret"),
        HeaderMap::new(),
        br#"{"key":"db"}"#.to_vec(),
    )
    .await
    .expect("answered");
    assert_eq!(&reply.payload[..], b"ok");
}

// ---------------------------------------------------------------------------------------
// Decisions and the sealed `get`.

/// Attack: while sealed (with a configured transit key), ask for a secret that exists, one
/// that does not, and one sealed to another transit key: an oracle would answer them
/// differently. Safe: byte-identical answers, each recorded `denied`/`sealed`, with no
/// version or entity. Control: unsealed, the same requests are told apart (`not_mapped` for
/// an unmapped entity both, but the request sealed to another key is a decryption error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_get_answers_alike_for_existing_missing_and_unopenable_secrets() {
    let store = pinned_store().await;
    assert!(
        unlocks(&store.nats, &store.admin, &store.key).await,
        "control: unlock"
    );
    let operator = admin(store.operator.clone()).with_signer(Some(store.admin.clone()));
    operator
        .put_secret("exists", text("v"), None, None)
        .await
        .unwrap();
    let (status, body) = signed(&store.operator, &store.admin, "lock").await;
    assert_eq!(status, 200, "{body}");

    let attacker = store.nats.client().await;
    let mut spy = spy_records(&attacker).await;
    let mut seen = Vec::new();
    let (jwt, _) = Issuer::new().component();
    let other_transit = XKey::new().public_key();
    let mut answers = Vec::new();
    for (key, transit) in [
        ("exists", store.transit.as_str()),
        ("missing", store.transit.as_str()),
        ("unopenable", other_transit.as_str()),
    ] {
        let (h, body) = sealed_get(transit, &request(key, &jwt));
        let reply = raw(&attacker, &format!("{P}.get"), h, body)
            .await
            .expect("answered");
        answers.push((key, reply.payload.clone(), reply.headers.is_some()));
    }
    assert_eq!(
        answers[0].1, answers[1].1,
        "existing vs missing differ while sealed"
    );
    assert_eq!(
        answers[0].1, answers[2].1,
        "opened vs unopenable differ while sealed"
    );
    assert!(answers.iter().all(|a| !a.2), "{answers:?}");
    for key in ["exists", "missing"] {
        let record = records_until(&mut spy, &mut seen, |r| {
            r["operation"] == "get" && r["secret"] == key
        })
        .await
        .unwrap_or_else(|| panic!("no record names {key}: {seen:#?}"));
        assert_eq!(record["outcome"], "denied", "{record}");
        assert_eq!(record["reason"], "sealed", "{record}");
        assert!(
            record.get("version").is_none() && record.get("entity").is_none(),
            "{record}"
        );
    }

    // Control: unsealed, the unopenable request is a decryption error, not the seal's.
    assert!(unlocks(&store.nats, &store.admin, &store.key).await);
    let (h, body) = sealed_get(&other_transit, &request("exists", &jwt));
    let reply = raw(&attacker, &format!("{P}.get"), h, body)
        .await
        .expect("answered");
    assert_ne!(
        reply.payload, answers[2].1,
        "the path is live: unsealed answers differ"
    );
}

/// Attack: a `get` whose secret name is no valid name at all: 30,000 bytes of text of the
/// attacker's choosing with terminal escapes. The record is written before the core checks
/// the name (`note.secret = request.key`, `src/protocol/get.rs`). Safe: what a record says
/// the secret was is bounded (a name is at most 255 bytes) and carries no control
/// characters. Control: a valid name is recorded as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_records_secret_name_is_bounded_and_not_the_attackers_arbitrary_text() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let _backend = start_backend(&nats, config(&nats, &keys)).await;
    let attacker = nats.client().await;
    let mut spy = spy_records(&attacker).await;
    let mut seen = Vec::new();
    let (jwt, _) = Issuer::new().component();
    let transit = keys.transit_public();

    // Control: a valid name is recorded.
    let (h, body) = sealed_get(&transit, &request("valid-name", &jwt));
    raw(&attacker, &format!("{P}.get"), h, body)
        .await
        .expect("answered");
    let record = records_until(&mut spy, &mut seen, |r| r["secret"] == "valid-name").await;
    assert!(
        record.is_some(),
        "control: the valid name is recorded: {seen:#?}"
    );

    let forged = format!("QUIET\u{1b}[2J\u{1b}[31m{}\n", "A".repeat(30_000));
    let (h, body) = sealed_get(&transit, &request(&forged, &jwt));
    let reply = raw(&attacker, &format!("{P}.get"), h, body).await;
    assert!(reply.is_some(), "the get was answered");
    let record = records_until(&mut spy, &mut seen, |r| {
        r["operation"] == "get" && r["secret"] != "valid-name"
    })
    .await
    .expect("the invalid get is recorded");
    let secret = record["secret"].as_str().unwrap_or("");
    assert!(
        secret.len() <= 255 && !secret.chars().any(char::is_control),
        "a record carries {} bytes of the attacker's text as its secret name (control \
         characters: {})",
        secret.len(),
        secret.chars().any(char::is_control)
    );
}

/// Attack: a record attributed to another host. A wasmCloud 1.x host signs its own JWT with
/// an account key it makes at start, so no host JWT can be checked against a trust anchor:
/// anyone can mint one naming another host's key. What holds: the record's `host` is what a
/// host JWT with a valid signature claims (documented as a claim, never as verified), and a
/// host JWT whose signature does not verify is refused and names no host on the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_records_host_is_only_what_a_validly_signed_host_jwt_claims() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let issuer = Issuer::new();
    let mut c = config(&nats, &keys);
    c.trusted_issuers = vec![issuer.public_key()];
    let _backend = start_backend(&nats, c).await;
    let attacker = nats.client().await;
    let mut spy = spy_records(&attacker).await;
    let mut seen = Vec::new();

    // The victim host's public key (known to every lattice member), and a JWT the attacker
    // signs with an account key of its own, naming it.
    let victim = KeyPair::new_server().public_key();
    let mine = KeyPair::new_account();
    let claimed = Claims::<Host>::with_dates(
        "victim".into(),
        mine.public_key(),
        victim.clone(),
        None,
        None,
        None,
    )
    .encode(&mine)
    .unwrap();
    // The same claim with its signature spoiled.
    let mut parts: Vec<String> = claimed.split('.').map(str::to_string).collect();
    parts[2] = parts[2].chars().rev().collect();
    let spoiled = parts.join(".");
    let (jwt, _) = issuer.component();
    for (secret, host_jwt) in [("claimed-host", &claimed), ("spoiled-host", &spoiled)] {
        let mut req = request(secret, &jwt);
        req.context.host_jwt = host_jwt.clone();
        let (h, body) = sealed_get(&keys.transit_public(), &req);
        raw(&attacker, &format!("{P}.get"), h, body)
            .await
            .expect("answered");
    }
    let record = records_until(&mut spy, &mut seen, |r| r["secret"] == "claimed-host")
        .await
        .expect("recorded");
    // A claim, recorded as the claim it is (docs/operations.md: "the host key its JWT names").
    assert_eq!(record["host"].as_str(), Some(victim.as_str()), "{record}");
    let record = records_until(&mut spy, &mut seen, |r| r["secret"] == "spoiled-host")
        .await
        .expect("recorded");
    assert_eq!(record["reason"], "invalid_host_jwt", "{record}");
    assert!(
        record.get("host").is_none(),
        "a host JWT that does not verify names no host: {record}"
    );
}
