//! A third hostile review of sealed mode, after signed unlock, the authenticated
//! `initialize` answer and escaped CLI output (dd122e3). The attacker holds a NATS user on
//! the backend's account: it publishes anything, on any subject, with any headers and reply
//! subject, and subscribes to anything, `>` and `_INBOX.>` included, in any queue group.
//! The operator runs with `--admin-keys`.
//!
//! Each test names an attack and asserts the SAFE behaviour: a failing test is a finding.
//! Every finding is fixed now (each test says how, and how it was exploited before); the
//! attacks that held are regression tests, each with a positive control showing that the
//! attack reached its target.

mod common;

use std::time::Duration;

use async_nats::HeaderMap;
use common::sealed::*;
use common::*;
use futures::StreamExt as _;
use nkeys::XKey;
use piggybank::config::headers::REQUESTER_XKEY;
use piggybank::keys::TransitKey;
use piggybank::seal::key_record::KeyRecord as VaultRecord;
use piggybank::seal::transfer::SealedInitialize;
use serde_json::json;

/// The queue group of the backend's `initialize` and `rotate` subscription, as every
/// deployment with the default `--nats-queue-base` and name has it (nothing protects a
/// queue group's name: any subscriber may join it).
const DATABASE_QUEUE: &str = "wasmcloud_secrets.nats-kv.database";

// ---------------------------------------------------------------------------------------
// Finding 1: the operator's signed `initialize` can be taken from the backend and replayed
// with the attacker's requester xkey: the signature does not cover that header.
// ---------------------------------------------------------------------------------------

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
/// Impact: the attacker holds the master key of the store. Once the operators unlock it and
/// write secrets, the attacker reads the record (`keyring`, not secret) and the values off
/// the KV (a JetStream subscriber on the account), unwraps every data key, and reads every
/// secret, now and later (rotation wraps new keys under the same master key). With a pin
/// (`init -t`), the operator's init times out instead (the attacker cannot seal from the
/// transit key), but the store is initialized with a key only the attacker holds: the
/// operators must delete the record by hand, and the attacker does it again. Severity:
/// critical without a pin (silent, total loss of confidentiality), high with one.
///
/// Fix: make the signature cover the requester xkey (put it in the body, or sign a list of
/// headers); bind the reply subject too if its secrecy matters. Queue groups cannot be
/// protected by the backend: never rely on the operator's request reaching it first.
///
/// Fixed: the admin signature covers every header but its own four (`admin-v2`), so the
/// replay with another requester xkey is refused (403). Left: the hijacked request can
/// still be withheld or replayed unchanged (the key then reaches only the operator's
/// one-time key), a denial of service that NATS permissions on queue groups prevent.
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

// ---------------------------------------------------------------------------------------
// Finding 2: a forged key record made of the real one rolls a legit, signed unlock back to
// an old data key.
// ---------------------------------------------------------------------------------------

/// The key id of the value stored under `key` in the secrets bucket.
async fn sealed_by(js: &async_nats::jetstream::Context, key: &str) -> Option<String> {
    let kv = js
        .get_key_value(piggybank::config::DEFAULT_SECRETS_BUCKET)
        .await
        .ok()?;
    let entry = kv.entry(key).await.ok()??;
    let (header, _) = piggybank::store::envelope::parse(&entry.value).ok()?;
    header.key_id
}

/// Attack: the key record's metadata is not authenticated: which wrapped key is current is
/// only its place in `data_keys` and its `active_from_ms`, and neither is under the master
/// key. The record is public (anyone on the account reads `$KV.<vault>.keyring`). After a
/// `rotate` (K1 -> K2, every value re-sealed under K2), the attacker takes the real record,
/// reverses `data_keys` and zeroes `active_from_ms`, and answers the instance's reads of
/// the record with it. It joins JetStream's own queue group for direct gets (`_sys_`), so
/// the server hands it the reads instead of answering them; nothing to race. Every wrapped
/// key in that record is genuine, so the operators' own signed unlock opens it with the
/// real key, the transit key matches, and the instance installs K1 as current. The reload
/// that follows (same forged record) starts the re-encryption towards K1.
///
/// Impact: a legit unlock installs a key schedule the operators did not choose: every new
/// value is sealed with K1, and every value already re-sealed under K2 is re-sealed back
/// under K1 (persistent in the KV). A rotation made because K1 (or a host that held it)
/// leaked is silently undone, store-wide. The same forged record can drop keys instead
/// (values under them stop opening) or swap `share_checks` (every real share refused). The
/// README says "a forged record can only make the operators' unlock fail". Severity:
/// medium (integrity of the key schedule; confidentiality only with an old key leaked,
/// which is what rotation is for).
///
/// Fix: authenticate the whole record under the master key (a MAC over its canonical
/// bytes, checked in `vault::open`), with a monotonic version the instance remembers
/// (refuse a record older than the last one it opened) so an old real record cannot be
/// replayed either.
///
/// Fixed: the record carries its digest wrapped by the master key (`binding`), checked
/// first in `vault::open`: the altered record is refused (403), nothing is installed.
/// Left: a replay of an older real record (before the rotation) is still bound; see
/// docs/security.md, "Known and left".
#[tokio::test(flavor = "multi_thread")]
async fn a_forged_record_cannot_roll_a_signed_unlock_back_to_an_old_data_key() {
    let nats = NatsServer::start();
    let (_, admin) = admin_seed();
    let _backend = start_backend(&nats, sealed_signed_config(&nats, &admin)).await;
    let operator = nats.client().await;
    let js = async_nats::jetstream::new(operator.clone());
    let key = signed_initialize(&operator, &admin).await;
    assert!(unlocks(&nats, &admin, &key).await);
    assert!(post(&operator, "db", b"hunter2").await);
    let (code, rotated) = signed(&operator, &admin, "rotate").await;
    assert_eq!(code, 200, "{rotated}");
    let newest = rotated["key_id"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while sealed_by(&js, "billing/db").await.as_deref() != Some(newest.as_str()) {
        assert!(
            std::time::Instant::now() < deadline,
            "never re-sealed under the new key"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let vault = piggybank::config::vault_bucket("nats-kv");
    let entry = js
        .get_key_value(&vault)
        .await
        .unwrap()
        .entry("keyring")
        .await
        .unwrap()
        .unwrap();
    let record: VaultRecord = serde_json::from_slice(&entry.value).unwrap();
    assert_eq!(record.data_keys.len(), 2);
    let oldest = record.data_keys[0].id.clone();
    let (code, body) = signed(&operator, &admin, "lock").await;
    assert_eq!(code, 200, "{body}");

    // The real record, its keys in the other order: the old one last, active.
    let mut forged = record.clone();
    forged.data_keys.reverse();
    for k in &mut forged.data_keys {
        k.active_from_ms = 0;
    }
    let forged = serde_json::to_vec(&forged).unwrap();
    // Written where the instances read and watch it: a KV put is a publish on
    // `$KV.<bucket>.<key>`, which the bucket's stream stores.
    let attacker = nats.client().await;
    let written = attacker
        .request(format!("$KV.{vault}.keyring"), forged.into())
        .await
        .expect("the stream acknowledged the forged record");

    // The operators unlock (signed, the real key).
    let unlocked = unlock_with(&nats, &admin, &key).await;
    // Positive control: the forged record was stored where the instance reads it.
    assert!(
        String::from_utf8_lossy(&written.payload).contains("\"seq\""),
        "{written:?}"
    );
    match unlocked {
        // Safe: the altered record is refused, and nothing is installed.
        Some((403, body)) => {
            assert!(
                body["error"].as_str().unwrap_or("").contains("key record"),
                "{body}"
            );
            let status = wait_database_instances(&operator, "piggybank", 1).await;
            assert_eq!(status[0]["sealed"], json!(true));
        }
        // Also safe, if it opened: new values are sealed under the newest key.
        Some((200, _)) => {
            assert!(post(&operator, "probe", b"new").await);
            let probe_by = sealed_by(&js, "billing/probe").await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let db_by = sealed_by(&js, "billing/db").await;
            assert_eq!(
                probe_by.as_deref(),
                Some(newest.as_str()),
                "after the operators' signed unlock a new value is sealed under the old \
                 data key ({oldest}), not the newest ({newest}); billing/db, re-sealed under \
                 the newest before, is now sealed by {db_by:?}"
            );
        }
        other => panic!("the operators' unlock: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Finding 3: `piggybank audit` prints request text verbatim, control characters included.
// ---------------------------------------------------------------------------------------

/// Attack: send one Piggy Bank API request (no signature needed; NATS subjects may hold
/// any byte but whitespace) on `piggybank.billing.<ESC]0;...BEL ESC[2J ESC[1A ...>`. The
/// API records it in the audit trail (`secret` is the subject's name, as sent, before the
/// name is checked), and `piggybank audit` prints each record's fields verbatim: the
/// operator's terminal title is set, the screen cleared, lines overwritten (a fake "no
/// denied gets" line can hide the records before it). `cli::printable` was applied to
/// status, unlock and init, not to `audit`, `list` or `mappings` (whose answers anyone can
/// forge). Impact: operator deception while reviewing the trail. Severity: low.
///
/// Fix: print every field of `audit` (and the names of `list`/`mappings`) through
/// `cli::printable`; reject names with control characters before auditing them.
///
/// Fixed: `audit`, `list` and `mappings` print through `cli::printable`.
#[tokio::test(flavor = "multi_thread")]
async fn the_audit_listing_never_prints_control_characters_from_a_request() {
    let subject = "piggybank.billing.\u{1b}]0;pwned\u{7}\u{1b}[2J\u{1b}[1AQUIET";
    let lines = audit_lines_after_a_get_on(subject).await;
    let controls: Vec<&String> = lines
        .iter()
        .filter(|l| l.chars().any(|c| c.is_control()))
        .collect();
    assert!(
        controls.is_empty(),
        "piggybank audit printed control characters: {controls:?}"
    );
}

// ---------------------------------------------------------------------------------------
// What held.
// ---------------------------------------------------------------------------------------

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
