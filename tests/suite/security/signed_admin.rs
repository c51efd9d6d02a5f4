//! Signed administration holds: with `--admin-keys`, no spelling of a subject gets an
//! unsigned admin or seal operation handled; the serve loop checks the signature before any
//! handler runs; the signature covers every header (so a signed `initialize` cannot be
//! redirected to another requester xkey); and a recorded request cannot be replayed,
//! relayed to another subject, retargeted to another body, or obeyed by an instance that
//! started after it was signed.

use std::time::Duration;

use async_nats::HeaderMap;
use futures::StreamExt as _;
use nkeys::XKey;
use piggybank::admin_auth::AdminSigner;
use piggybank::config::headers::{
    ADMIN_KEY, ADMIN_NONCE, ADMIN_SIGNATURE, ADMIN_TIME, REQUESTER_XKEY,
};
use piggybank::keys::TransitKey;
use piggybank::seal::transfer::SealedInitialize;
use serde_json::json;
use zeroize::Zeroizing;

use crate::common::sealed::*;
use crate::common::*;

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
    let admin = admin_seed().1;
    let _backend = start_backend(&nats, sealed_signed_config(&nats, &admin)).await;
    let operator = nats.client().await;
    let key = signed_initialize(&operator, &admin).await;
    let clear = json!({ "database_key": key }).to_string();
    let unlock = format!("{DB}.unlock");
    let (code, _) = ask_signed(&operator, &admin, &unlock, clear.as_bytes())
        .await
        .unwrap();
    assert_eq!(code, 200);
    let attacker = nats.client().await;
    let stranger = admin_seed().1;

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
    let admin_key = admin_seed().1;
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
    let admin = admin_seed().1;
    let _backend = start_backend(&nats, sealed_signed_config(&nats, &admin)).await;
    let operator = nats.client().await;
    let key = signed_initialize(&operator, &admin).await;

    let attacker = nats.client().await;
    let mut spy = attacker.subscribe("piggybank.>").await.unwrap();
    attacker.flush().await.unwrap();

    let status = one_status(&operator).await;
    let unlock = format!("{DB}.unlock");
    let body = sealed_unlock_for(&status, &key);
    let (code, reply) = ask_signed(&operator, &admin, &unlock, &body).await.unwrap();
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
    let (code, _) = ask_signed(&operator, &admin, &lock, b"").await.unwrap();
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
    let admin = admin_seed().1;
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

/// Attack: capture the operators' signed `unlock` (subscribed to `{DB}.unlock`), then
/// (a) republish it on the deprecated alias `piggybank.database.unlock`, which every
/// instance also serves; (b) after a signed `lock`, republish it as is (its nonce was
/// recorded for this instance; its key is sealed to an unseal xkey replaced since); (c)
/// re-target it: the same signed headers with the body of another (attacker-sealed) unlock.
/// Safe: each is refused with 403 and the instance stays sealed. Positive control: the
/// captured unlock itself unsealed the instance.
#[tokio::test(flavor = "multi_thread")]
async fn a_captured_signed_unlock_cannot_be_replayed_relayed_or_retargeted() {
    let nats = NatsServer::start();
    let (_, admin) = admin_seed();
    let _backend = start_backend(&nats, sealed_signed_config(&nats, &admin)).await;
    let operator = nats.client().await;
    let key = signed_initialize(&operator, &admin).await;
    let attacker = nats.client().await;
    let mut spy = attacker.subscribe(format!("{DB}.unlock")).await.unwrap();
    attacker.flush().await.unwrap();
    assert_eq!(
        unlock_with(&nats, &admin, &key).await.map(|(s, _)| s),
        Some(200),
        "positive control: the operators' unlock"
    );
    let captured = tokio::time::timeout(Duration::from_secs(5), spy.next())
        .await
        .unwrap()
        .unwrap();
    let headers = captured.headers.clone().unwrap();
    // (a) The alias: every instance serves it, and it is another subject.
    let (code, body) = signed(&operator, &admin, "lock").await;
    assert_eq!(code, 200, "{body}");
    let alias = ask(
        &attacker,
        "piggybank.database.unlock",
        headers.clone(),
        &captured.payload,
        Duration::from_secs(5),
    )
    .await;
    // (b) As is, after the lock.
    let again = ask(
        &attacker,
        &captured.subject,
        headers.clone(),
        &captured.payload,
        Duration::from_secs(5),
    )
    .await;
    // (c) The signed headers with another body, for the same instance.
    let status = wait_database_instances(&attacker, "piggybank", 1).await;
    let other = sealed_unlock_for(&status[0], &key);
    let retargeted = ask(
        &attacker,
        &captured.subject,
        headers,
        &other,
        Duration::from_secs(5),
    )
    .await;
    let codes: Vec<Option<u16>> = [alias, again, retargeted]
        .iter()
        .map(|r| r.as_ref().map(|(s, _)| *s))
        .collect();
    assert_eq!(codes, vec![Some(403); 3]);
    let after = wait_database_instances(&attacker, "piggybank", 1).await;
    assert_eq!(after[0]["sealed"], json!(true));
}

/// The queue group of the backend's `initialize` and `rotate` subscription, as every
/// deployment with the default `--nats-queue-base` and name has it (nothing protects a
/// queue group's name: any subscriber may join it).
const DATABASE_QUEUE: &str = "wasmcloud_secrets.nats-kv.database";

/// What the attacker of [`hijacked_init`] got.
#[derive(Debug, Default)]
struct Hijack {
    /// The operator's request reached the attacker (not the backend).
    intercepted: bool,
    /// The backend's answer to the replay with the attacker's xkey.
    replay_status: Option<u16>,
    /// The database key the attacker opened from that answer.
    stolen: Option<String>,
}

/// Attack: `Piggybank-Requester-Xkey`, the key `initialize` seals the new database key to,
/// is a header, and the admin signature covers the subject, time, nonce and body only, not
/// the headers. (1) The attacker joins the backend's queue group for `initialize`
/// (`wasmcloud_secrets.nats-kv.database`: its default name; NATS lets anyone join a queue
/// group) with 100 subscriptions, so NATS hands the operator's `piggybank init` request to
/// the attacker instead of the backend (100 times in 101). The backend never sees it, so its
/// nonce is never recorded. (2) The attacker leaves the group and republishes the request
/// unchanged (same subject, body, time, nonce and signature: valid for 30 s) but with ITS
/// OWN requester xkey and its own reply inbox. (3) The backend creates the key record and
/// seals the new master key to the attacker, who opens it. (4) Without a pin (`init
/// --unverified-instances`, the only way for a store run without TRANSIT_XKEY_SEED, the
/// README's default), the attacker seals that same real key to the operator's one-time
/// xkey (with the purpose label) and answers the operator's inbox: `piggybank init` prints
/// the real key, one answer, exit 0. Nobody can tell anything happened.
///
/// Impact: the attacker holds the master key of the store. Once the operators unlock it and write
/// secrets, the attacker reads the record (`keyring`, not secret) and the values off the KV (a
/// JetStream subscriber on the account), unwraps every data key, and reads every secret, now and
/// later (rotation wraps new keys under the same master key). With a pin (`init -t`), the
/// operator's init times out instead (the attacker cannot seal from the transit key), but the store
/// is initialized with a key only the attacker holds: the operators must delete the record by hand,
/// and the attacker does it again.
///
/// Safe: the admin signature covers every header but its own four (`admin-v2`), so the replay with
/// another requester xkey is refused (403). Left: the hijacked request can still be withheld or
/// replayed unchanged (the key then reaches only the operator's one-time key), a denial of service
/// that NATS permissions on queue groups prevent.
async fn hijacked_init(pin: bool) -> (Hijack, (bool, String, String), bool) {
    let nats = NatsServer::start();
    let (seed, admin) = admin_seed();
    let (config, transit) = if pin {
        sealed_signed_transit_config(&nats, &admin)
    } else {
        (sealed_signed_config(&nats, &admin), String::new())
    };
    let _backend = start_backend(&nats, config).await;
    let attacker = nats.client().await;
    let subject = format!("{DB}.initialize");
    let mut members = Vec::new();
    for _ in 0..100 {
        members.push(
            attacker
                .queue_subscribe(subject.clone(), DATABASE_QUEUE.into())
                .await
                .unwrap(),
        );
    }
    attacker.flush().await.unwrap();
    let (relay, subject_) = (attacker.clone(), subject.clone());
    let attack = tokio::spawn(async move {
        let mut hijack = Hijack::default();
        let mut merged = futures::stream::select_all(members);
        let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(15), merged.next()).await
        else {
            return hijack;
        };
        hijack.intercepted = true;
        // Leave the queue group: the backend is its only member again.
        for member in merged.iter_mut() {
            let _ = member.unsubscribe().await;
        }
        drop(merged);
        relay.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut headers = msg.headers.clone().unwrap_or_default();
        let operator_xkey = headers
            .get(REQUESTER_XKEY)
            .map(|x| x.as_str().to_string())
            .unwrap_or_default();
        let own = XKey::new();
        headers.insert(REQUESTER_XKEY, own.public_key().as_str());
        let answer = ask(
            &relay,
            &subject_,
            headers,
            &msg.payload,
            Duration::from_secs(5),
        )
        .await;
        hijack.replay_status = answer.as_ref().map(|(status, _)| *status);
        let Some((200, body)) = answer else {
            return hijack;
        };
        let Ok(sealed) = serde_json::from_value::<SealedInitialize>(body) else {
            return hijack;
        };
        let Ok(material) = sealed.open(&own, None) else {
            return hijack;
        };
        hijack.stolen = material["database_key"].as_str().map(str::to_string);
        // Hand the operator the same, real key: nothing looks wrong to it.
        if let (Some(reply), false) = (msg.reply, pin) {
            let impostor = TransitKey::from_xkey(XKey::new());
            let forged =
                SealedInitialize::vouched(&material, None, &impostor, &operator_xkey).unwrap();
            let mut h = HeaderMap::new();
            h.insert("Status", "200");
            let _ = relay
                .publish_with_headers(reply, h, serde_json::to_vec(&forged).unwrap().into())
                .await;
            let _ = relay.flush().await;
        }
        hijack
    });

    let env = [("PIGGYBANK_ADMIN_SEED", seed.as_str())];
    let args: Vec<&str> = match pin {
        true => vec!["init", "-t", &transit],
        false => vec!["init", "--unverified-instances"],
    };
    let cli = run_cli(&nats, &env, &args).await;
    let hijack = attack.await.unwrap();
    let stolen_unlocks = match &hijack.stolen {
        Some(stolen) => unlocks(&nats, &admin, stolen).await,
        None => false,
    };
    (hijack, cli, stolen_unlocks)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_initialize_cannot_be_redirected_to_the_attackers_xkey() {
    let (hijack, (ok, stdout, stderr), stolen_unlocks) = hijacked_init(false).await;
    // Positive control: the operator's request reached the attacker.
    assert!(hijack.intercepted, "{hijack:?}; {stderr}");
    let printed = printed_keys(&stdout);
    assert!(
        !stolen_unlocks,
        "the attacker holds the store's database key (its replay was answered {:?}); the \
         operator's `piggybank init --unverified-instances` exited ok={ok} and printed \
         {} key(s), the same one: {}",
        hijack.replay_status,
        printed.len(),
        printed.first() == hijack.stolen.as_ref(),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pinned_init_cannot_be_redirected_to_the_attackers_xkey() {
    let (hijack, (ok, _, stderr), stolen_unlocks) = hijacked_init(true).await;
    assert!(hijack.intercepted, "{hijack:?}; {stderr}");
    assert!(
        !stolen_unlocks,
        "the attacker holds the store's database key (its replay was answered {:?}); the \
         operator's `piggybank init -t` exited ok={ok}: {}",
        hijack.replay_status,
        stderr.trim()
    );
}

/// The headers of a signed `initialize` whose key is sealed to `requester`.
fn signed_initialize_headers(admin: &AdminSigner, requester: &XKey) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(REQUESTER_XKEY, requester.public_key().as_str());
    admin.sign_into(&format!("{DB}.initialize"), b"", &mut h);
    h
}

/// Attack: the attacker holds the operator's signed `initialize` (from the queue group, as in
/// `security::signed_admin`) and sends it on with its requester xkey added in a way the signed
/// bytes might not see: (a) a second `Piggybank-Requester-Xkey` value, the attacker's first (the
/// backend reads the first value); (b) the header name in another case, `piggybank-requester-xkey`
/// (async-nats header names are case-sensitive); (c) the attacker's value under a signature
/// header's name in another case, and its own value in place. Safe: each is refused (403) and the
/// store stays uninitialized. Positive control: the request as signed is accepted, and its key
/// opens for the operator only.
#[tokio::test(flavor = "multi_thread")]
async fn a_signed_initialize_cannot_take_a_second_requester_xkey() {
    let nats = NatsServer::start();
    let (_, admin) = admin_seed();
    let _backend = start_backend(&nats, sealed_signed_config(&nats, &admin)).await;
    let attacker = nats.client().await;
    let subject = format!("{DB}.initialize");
    let operator_xkey = XKey::new();
    let own = XKey::new();
    let signed_headers = signed_initialize_headers(&admin, &operator_xkey);
    let signature_of = |h: &HeaderMap, into: &mut HeaderMap| {
        for name in [ADMIN_KEY, ADMIN_TIME, ADMIN_NONCE, ADMIN_SIGNATURE] {
            into.insert(name, h.get(name).unwrap().as_str());
        }
    };
    // (a) Two values, the attacker's first.
    let mut two = HeaderMap::new();
    two.insert(REQUESTER_XKEY, own.public_key().as_str());
    two.append(REQUESTER_XKEY, operator_xkey.public_key().as_str());
    signature_of(&signed_headers, &mut two);
    assert_eq!(
        two.get(REQUESTER_XKEY).unwrap().as_str(),
        own.public_key(),
        "the backend would read the attacker's value"
    );
    // (b) The operator's header in another case, the attacker's under the real name.
    let mut cased = HeaderMap::new();
    cased.insert(
        "piggybank-requester-xkey",
        operator_xkey.public_key().as_str(),
    );
    cased.insert(REQUESTER_XKEY, own.public_key().as_str());
    signature_of(&signed_headers, &mut cased);
    // (c) The operator's value moved under a signature header's name in another case.
    let mut hidden = HeaderMap::new();
    hidden.insert("piggybank-admin-key", operator_xkey.public_key().as_str());
    hidden.insert(REQUESTER_XKEY, own.public_key().as_str());
    signature_of(&signed_headers, &mut hidden);
    let mut codes = Vec::new();
    for h in [two, cased, hidden] {
        let answer = ask(&attacker, &subject, h, b"", Duration::from_secs(5)).await;
        codes.push(answer.map(|(s, _)| s));
    }
    assert_eq!(codes, vec![Some(403); 3]);
    // Positive control: the request as signed is taken, and sealed to the operator.
    let (status, body) = ask(
        &attacker,
        &subject,
        signed_headers,
        b"",
        Duration::from_secs(5),
    )
    .await
    .expect("initialize answered");
    assert_eq!(status, 200, "{body}");
    let sealed: SealedInitialize = serde_json::from_value(body).unwrap();
    assert!(sealed.open(&own, None).is_err());
    assert!(sealed.open(&operator_xkey, None).is_ok());
}
