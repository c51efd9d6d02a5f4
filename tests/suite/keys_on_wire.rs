//! No key material in clear on the wire: a subscriber on `>` records every message while the
//! CLI initializes a store and unlocks it by key, and initializes another and unlocks it by
//! shares, each with two instances; no byte string of the key or of any share appears in
//! any message (subject, headers or payload), raw, base64 (standard or URL-safe, with or
//! without padding) or hex (either case). A control message carrying a key in clear proves
//! the search finds one. No reply of the seal carries key material either: not `status`,
//! `unlock`, nor any of their errors, whatever a request sent.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::sealed::*;
use crate::common::*;
use async_nats::HeaderMap;
use base64::Engine as _;
use futures::StreamExt as _;
use nkeys::XKey;
use piggybank::seal::transfer::{Sealed, SealedUnlock};
use serde_json::{json, Value};

/// Every message seen on `>`: (subject, headers as text, payload).
type Log = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

async fn spy(nats: &NatsServer) -> (Log, async_nats::Client) {
    let client = nats.client().await;
    let mut all = client.subscribe(">").await.unwrap();
    client.flush().await.unwrap();
    let log: Log = Arc::default();
    let sink = Arc::clone(&log);
    tokio::spawn(async move {
        while let Some(msg) = all.next().await {
            let headers = msg
                .headers
                .as_ref()
                .map(|h| {
                    h.iter()
                        .flat_map(|(name, values)| {
                            let name = String::from_utf8_lossy(name.as_ref()).into_owned();
                            values
                                .iter()
                                .map(move |v| format!("{name}: {}\n", v.as_str()))
                        })
                        .collect::<String>()
                })
                .unwrap_or_default();
            sink.lock()
                .unwrap()
                .push((msg.subject.to_string(), headers, msg.payload.to_vec()));
        }
    });
    (log, client)
}

/// Every way a key's bytes could be written: raw, base64 (standard and URL-safe, padded or
/// not) and hex (lower and upper case).
fn encodings(secret_base64: &str) -> Vec<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let raw = STANDARD
        .decode(secret_base64)
        .expect("the CLI prints base64");
    assert!(raw.len() >= 32, "a key is 32 bytes, a share 33");
    vec![
        raw.clone(),
        STANDARD.encode(&raw).into_bytes(),
        STANDARD_NO_PAD.encode(&raw).into_bytes(),
        URL_SAFE.encode(&raw).into_bytes(),
        URL_SAFE_NO_PAD.encode(&raw).into_bytes(),
        data_encoding::HEXLOWER.encode(&raw).into_bytes(),
        data_encoding::HEXUPPER.encode(&raw).into_bytes(),
    ]
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Subjects of the messages in which any encoding of any of `secrets` appears.
fn leaks(log: &Log, secrets: &[String]) -> Vec<String> {
    let needles: Vec<Vec<u8>> = secrets.iter().flat_map(|s| encodings(s)).collect();
    let log = log.lock().unwrap();
    log.iter()
        .filter(|(subject, headers, payload)| {
            needles.iter().any(|n| {
                contains(subject.as_bytes(), n)
                    || contains(headers.as_bytes(), n)
                    || contains(payload, n)
            })
        })
        .map(|(subject, _, _)| subject.clone())
        .collect()
}

/// Run the CLI off the runtime's threads (the spy keeps recording meanwhile).
async fn cli_async(
    nats: &NatsServer,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Option<i32>, String, String) {
    let url = nats.url();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut all: Vec<(&str, &str)> = vec![("NATS_ADDRESS", url.as_str())];
        all.extend(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let (ok, out, err) = cli_at(&all, &args, None);
        (
            Some(if ok { 0 } else { 1 }),
            String::from_utf8_lossy(&out).into_owned(),
            err,
        )
    })
    .await
    .unwrap()
}

/// The status of every instance of backend `name` (named subject).
async fn statuses(client: &async_nats::Client, name: &str) -> Vec<Value> {
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.unwrap();
    client
        .publish_with_reply(
            format!("piggybank.database.{name}.status"),
            inbox,
            "".into(),
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(500), replies.next()).await
    {
        // NATS's "no responders" (before the backends subscribe) has no JSON body.
        if let Ok(status) = serde_json::from_slice(&msg.payload) {
            out.push(status);
        }
    }
    out
}

async fn wait_instances(client: &async_nats::Client, name: &str, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while statuses(client, name).await.len() < n {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            std::time::Instant::now() < deadline,
            "{n} instances of {name} never answered"
        );
    }
}

/// The transit key backend `name` runs with (one per name, so its instances share it).
fn transit(name: &str) -> nkeys::XKey {
    let mut raw = [7u8; 32];
    for (b, n) in raw.iter_mut().zip(name.bytes()) {
        *b = n;
    }
    nkeys::XKey::new_from_raw(raw)
}

/// `piggybank unlock` for backend `name`, pinning its transit key.
fn unlock_args(name: &str) -> [String; 5] {
    let public = transit(name).public_key();
    ["unlock", "-n", name, "-t", &public].map(str::to_string)
}

fn sealed_run(nats: &NatsServer, name: &str, extra: &[&str]) -> Proc {
    let bucket = format!("{name}_SECRETS");
    let seed = transit(name).seed().unwrap();
    let mut args = vec!["--name", name, "-b", &bucket, "-t", &seed];
    args.extend_from_slice(extra);
    spawn_sealed_run(nats, &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_or_share_crosses_the_bus_in_any_encoding() {
    let nats = NatsServer::start();
    let (log, client) = spy(&nats).await;
    let _whole = [
        sealed_run(&nats, "whole", &[]),
        sealed_run(&nats, "whole", &[]),
    ];
    let _split = [
        sealed_run(&nats, "split", &[]),
        sealed_run(&nats, "split", &[]),
    ];
    wait_instances(&client, "whole", 2).await;
    wait_instances(&client, "split", 2).await;

    // One key: init, unlock (both instances), lock, unlock from stdin-less env again.
    let (code, out, err) = cli_async(
        &nats,
        &["init", "-n", "whole", "--json", "--unverified-instances"],
        &[],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    let key = serde_json::from_str::<Value>(&out).unwrap()["database_key"]
        .as_str()
        .unwrap()
        .to_string();
    let with_key = [("PIGGYBANK_DATABASE_KEY", key.as_str())];
    let (code, out, err) = cli_async(
        &nats,
        &unlock_args("whole").each_ref().map(String::as_str),
        &with_key,
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.matches("Unsealed").count(), 2, "both instances: {out}");
    for s in statuses(&client, "whole").await {
        assert_eq!(s["sealed"], false, "{s}");
    }

    // Shares: init, then two shares, each to both instances.
    let (code, out, err) = cli_async(
        &nats,
        &[
            "init",
            "-n",
            "split",
            "--shares",
            "3",
            "--threshold",
            "2",
            "--unverified-instances",
        ],
        &[],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    let shares: Vec<String> = out
        .lines()
        .filter_map(|l| l.strip_prefix("Share "))
        .map(|l| l.split_once(": ").unwrap().1.to_string())
        .collect();
    assert_eq!(shares.len(), 3, "{out}");
    for share in &shares[..2] {
        let (code, _, err) = cli_async(
            &nats,
            &unlock_args("split").each_ref().map(String::as_str),
            &[("PIGGYBANK_SHARE", share)],
        )
        .await;
        assert_eq!(code, Some(0), "{err}");
    }
    for s in statuses(&client, "split").await {
        assert_eq!(s["sealed"], false, "{s}");
    }
    client.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut secrets = shares.clone();
    secrets.push(key.clone());
    let seen: Vec<String> = log.lock().unwrap().iter().map(|m| m.0.clone()).collect();
    for op in [
        "whole.initialize",
        "whole.unlock",
        "split.initialize",
        "split.unlock",
    ] {
        assert!(
            seen.iter()
                .any(|s| s == &format!("piggybank.database.{op}")),
            "the spy saw no {op}"
        );
    }
    let leaked = leaks(&log, &secrets);
    assert!(leaked.is_empty(), "key material in clear on: {leaked:?}");

    // Control: the same search finds a key sent in clear.
    client
        .publish(
            "control.clear",
            json!({"database_key": key}).to_string().into(),
        )
        .await
        .unwrap();
    let mut share_hex = HeaderMap::new();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&shares[2])
        .unwrap();
    share_hex.insert("X-Share", data_encoding::HEXUPPER.encode(&raw).as_str());
    client
        .publish_with_headers("control.header", share_hex, "".into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(leaks(&log, &secrets), ["control.clear", "control.header"]);
}

/// A raw request on the named database subject; (Status, JSON body).
async fn db_at(
    client: &async_nats::Client,
    subject: &str,
    headers: Option<HeaderMap>,
    body: Value,
) -> (u16, Value) {
    let payload = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    let reply = match headers {
        Some(h) => client
            .request_with_headers(subject.to_string(), h, payload.into())
            .await
            .unwrap(),
        None => client
            .request(subject.to_string(), payload.into())
            .await
            .unwrap(),
    };
    let status = reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Status"))
        .and_then(|s| s.as_str().parse().ok())
        .unwrap_or_default();
    (status, serde_json::from_slice(&reply.payload).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_keys_only_refuses_clear_keys_and_names_keep_backends_apart() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let _strict = sealed_run(&nats, "strict", &["--sealed-keys-only"]);
    let _other = sealed_run(&nats, "other", &[]);
    wait_instances(&client, "strict", 1).await;
    wait_instances(&client, "other", 1).await;

    // A clear initialize is refused before anything is created.
    let (status, body) = db_at(
        &client,
        "piggybank.database.strict.initialize",
        None,
        Value::Null,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("--sealed-keys-only"));
    assert_eq!(statuses(&client, "strict").await[0]["initialized"], false);

    // The CLI's sealed form works, and reaches only the backend it names.
    let (code, out, err) = cli_async(
        &nats,
        &["init", "-n", "strict", "--json", "--unverified-instances"],
        &[],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    let key = serde_json::from_str::<Value>(&out).unwrap()["database_key"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(statuses(&client, "other").await[0]["initialized"], false);

    // A clear unlock is refused, and the store stays sealed.
    let (status, body) = db_at(
        &client,
        "piggybank.database.strict.unlock",
        None,
        json!({ "database_key": key }),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(statuses(&client, "strict").await[0]["sealed"], true);
    // An unlock sealed to another instance's xkey gets no answer from this one.
    let foreign = piggybank::seal::transfer::SealedUnlock::new(
        "NSOMEONEELSE",
        piggybank::seal::transfer::Sealed::seal(
            json!({ "database_key": key }).to_string().as_bytes(),
            &nkeys::XKey::new().public_key(),
        )
        .unwrap(),
    );
    let asked = client.request(
        "piggybank.database.strict.unlock",
        serde_json::to_vec(&foreign).unwrap().into(),
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), asked)
            .await
            .map_or(true, |r| r.is_err()),
        "an unlock for another instance was answered"
    );
    let (code, _, err) = cli_async(
        &nats,
        &unlock_args("strict").each_ref().map(String::as_str),
        &[("PIGGYBANK_DATABASE_KEY", key.as_str())],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(statuses(&client, "strict").await[0]["sealed"], false);

    // The old subject without the name still answers (deprecated): here both backends do.
    let all = database_statuses(&client, "piggybank").await;
    assert_eq!(all.len(), 2, "{all:?}");
    // Each instance announces its own unseal xkey.
    let strict = &statuses(&client, "strict").await[0];
    let other = &statuses(&client, "other").await[0];
    assert!(strict["unseal_xkey"].as_str().unwrap().starts_with('X'));
    assert_ne!(strict["unseal_xkey"], other["unseal_xkey"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_keys_still_work_for_piggy_bank_clients_without_the_flag() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let _run = sealed_run(&nats, "legacy", &[]);
    wait_instances(&client, "legacy", 1).await;
    // Piggy Bank's own clients: no requester xkey, key in clear, on the old subject too.
    let (status, body) = db_at(&client, "piggybank.database.initialize", None, Value::Null).await;
    assert_eq!(status, 200, "{body}");
    let key = body["database_key"].as_str().unwrap().to_string();
    let (status, body) = db_at(
        &client,
        "piggybank.database.legacy.unlock",
        None,
        json!({ "database_key": key }),
    )
    .await;
    assert_eq!((status, body["sealed"].clone()), (200, json!(false)));
    // A bad requester xkey is refused before anything is created.
    let _fresh = sealed_run(&nats, "fresh", &[]);
    wait_instances(&client, "fresh", 1).await;
    let mut bad = HeaderMap::new();
    bad.insert("Piggybank-Requester-Xkey", "XNOTAKEY");
    let (status, _) = db_at(
        &client,
        "piggybank.database.fresh.initialize",
        Some(bad),
        Value::Null,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(statuses(&client, "fresh").await[0]["initialized"], false);
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

/// Attack: read key material out of the seal's error and status replies: a wrong, short or
/// malformed key, an unknown share, a sealed unlock that does not open, one for another
/// instance, the clear forms under `--sealed-keys-only`, `initialize` again, and `status`
/// before and after. Safe: no reply carries the database key (any encoding) or any xkey
/// seed (`SX...`), and `status` shows only the unseal xkey's public half.
#[tokio::test]
async fn seal_errors_and_status_carry_no_key_material() {
    let nats = NatsServer::start();
    let admin = admin_seed().1;
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
        if let Some((_, reply)) = ask_signed(&client, &admin, &unlock, body).await {
            replies.push(reply.to_string());
        }
    }
    let init = format!("{DB}.initialize");
    if let Some((_, reply)) = ask_signed(&client, &admin, &init, b"").await {
        replies.push(reply.to_string());
    }
    // Unlock properly (sealed), then status again.
    let body = sealed_unlock_for(&status, &key);
    let (code, _) = ask_signed(&client, &admin, &unlock, &body).await.unwrap();
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
