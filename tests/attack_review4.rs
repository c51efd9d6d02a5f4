//! A fourth hostile review, of the three latest fixes: admin signatures over every header
//! (1ae9a5c), the key record bound to the master key (5ef1352), and the CLI's init answers
//! and escaped output (dd122e3). The attacker holds a NATS user on the backend's account: it
//! publishes anything, on any subject, with any headers and reply subject, and subscribes to
//! anything, `>` and `_INBOX.>` included, in any queue group. The operator runs with
//! `--admin-keys`.
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
use nkeys::XKey;
use piggybank::admin_auth::AdminSigner;
use piggybank::config::headers::{
    ADMIN_KEY, ADMIN_NONCE, ADMIN_SIGNATURE, ADMIN_TIME, REQUESTER_XKEY,
};
use piggybank::seal::key_record::KeyRecord as VaultRecord;
use piggybank::seal::transfer::SealedInitialize;

/// The reply's status (the `Status` header, 200 without one) and payload, or `None` when
/// nothing answered within `wait`.
async fn ask_raw(
    client: &async_nats::Client,
    subject: &str,
    headers: HeaderMap,
    body: &[u8],
    wait: Duration,
) -> Option<(u16, bytes::Bytes)> {
    let sent = client.request_with_headers(subject.to_string(), headers, body.to_vec().into());
    let reply = tokio::time::timeout(wait, sent).await.ok()?.ok()?;
    let status = reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Status"))
        .and_then(|s| s.as_str().parse().ok())
        .unwrap_or(200);
    Some((status, reply.payload))
}

/// The headers of a signed `initialize` whose key is sealed to `requester`.
fn signed_initialize_headers(admin: &AdminSigner, requester: &XKey) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(REQUESTER_XKEY, requester.public_key().as_str());
    admin.sign_into(&format!("{DB}.initialize"), b"", &mut h);
    h
}

/// `billing/<name>` through the Piggy Bank API: its value, or the refusal's status.
async fn get(client: &async_nats::Client, name: &str) -> Result<Vec<u8>, Option<u16>> {
    let mut h = HeaderMap::new();
    h.insert("method", "get");
    let subject = format!("piggybank.billing.{name}");
    match ask_raw(client, &subject, h, b"", Duration::from_secs(5)).await {
        Some((200, payload)) => Ok(payload.to_vec()),
        other => Err(other.map(|(status, _)| status)),
    }
}

/// The stored key record and its KV revision.
async fn stored_record(js: &async_nats::jetstream::Context) -> (VaultRecord, u64) {
    let vault = piggybank::config::vault_bucket("nats-kv");
    let entry = js
        .get_key_value(&vault)
        .await
        .unwrap()
        .entry("keyring")
        .await
        .unwrap()
        .unwrap();
    (
        serde_json::from_slice(&entry.value).unwrap(),
        entry.revision,
    )
}

// ---------------------------------------------------------------------------------------
// Finding 1: `rotate` binds whatever record it reads, so an altered record comes out of it
// bound by the real master key.
// ---------------------------------------------------------------------------------------

/// Attack: `vault::open` checks the binding, but `Seal::rotate` does not open the record: it
/// reads it over NATS (`record_store.entry()`), pushes a new data key, and `vault::rotate`
/// calls `bind` on whatever it read, with the real master key, then writes it back
/// (compare-and-set on the revision it read). So an altered record that the binding refuses
/// is laundered into a bound one by the operators' next routine, signed `rotate`.
/// (1) The store is unlocked, `billing/db` is sealed under data key K1. (2) The attacker
/// takes the real record (public) and empties `data_keys`, and writes it where the
/// instances read it (a publish on `$KV.<vault>.keyring`, as in `tests/attack_review3.rs`;
/// answering the rotate's read of the record, `$JS.API.DIRECT.GET`, should work the same way
/// without writing the bucket: not tried here). The instance's watch refuses it (altered),
/// nothing changes.
/// (3) The operators rotate (signed). The backend binds `[K2]` and stores it; its reload
/// opens it (the binding is genuine) and installs a keyring without K1.
///
/// Impact: K1's wrapped seed is gone from the only place that kept it: every value sealed
/// under it stops opening at once, on every instance, and for good (unless a backup of the
/// record exists). The same laundering makes any other alteration stick (share checks that
/// refuse every real share: a store nobody can unlock again; a `split` removed; activation
/// times), while the README says an altered record is refused. Severity: medium to high
/// (same reach as the medium finding the binding fixed, a forged record read or a write of
/// the vault bucket; the damage is permanent and done by the backend itself).
///
/// Fix: in `Seal::rotate`, check the record read before changing it: `vault::rotate` should
/// call `check_binding` first (or rotate from the record the instance last opened, and
/// compare-and-set against its revision); refuse (`altered_record`) otherwise.
///
/// Fixed: `vault::rotate` checks the binding of what it read first.
#[tokio::test(flavor = "multi_thread")]
async fn a_rotate_never_binds_a_record_the_master_key_did_not_bind() {
    let nats = NatsServer::start();
    let (_, admin) = admin_seed();
    let _backend = start_backend(&nats, sealed_signed_config(&nats, &admin)).await;
    let operator = nats.client().await;
    let js = async_nats::jetstream::new(operator.clone());
    let key = signed_initialize(&operator, &admin).await;
    assert_eq!(
        unlock_with(&nats, &admin, &key).await.map(|(s, _)| s),
        Some(200)
    );
    assert!(post(&operator, "db", b"hunter2").await);
    let (record, _) = stored_record(&js).await;
    let original = record.data_keys[0].id.clone();

    // The real record, every data key dropped.
    let mut forged = record.clone();
    forged.data_keys.clear();
    let vault = piggybank::config::vault_bucket("nats-kv");
    let attacker = nats.client().await;
    let written = attacker
        .request(
            format!("$KV.{vault}.keyring"),
            serde_json::to_vec(&forged).unwrap().into(),
        )
        .await
        .expect("the stream acknowledged the forged record");
    // Positive control: the forged record was stored where the instance reads it.
    assert!(
        String::from_utf8_lossy(&written.payload).contains("\"seq\""),
        "{written:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        get(&operator, "db").await.as_deref(),
        Ok(&b"hunter2"[..]),
        "the instance's watch refused the altered record"
    );

    // The operators rotate (signed).
    let (code, rotated) = signed(&operator, &admin, "rotate").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (after, _) = stored_record(&js).await;
    let ids: Vec<&str> = after.data_keys.iter().map(|k| k.id.as_str()).collect();
    let read = get(&operator, "db").await;
    // Safe: the rotate refused the altered record (or at least kept the original key), so
    // it is never bound, and the instance still serves with the keys it holds. (The
    // altered record stays in the bucket, where only a write could put it: an unlock reads
    // it and is refused until the operators put the real one back from a backup.)
    assert!(
        code != 200 || ids.contains(&original.as_str()),
        "the signed rotate ({code} {rotated}) bound and stored a record without the original \
         data key {original} (now {ids:?}); billing/db reads {read:?}"
    );
    assert!(
        after.data_keys.is_empty(),
        "the stored record changed: {ids:?}"
    );
    assert_eq!(read.as_deref(), Ok(&b"hunter2"[..]));
}

// ---------------------------------------------------------------------------------------
// Finding 2: `cli::printable` escapes control characters (Cc), not the Unicode format
// characters that reorder or hide text.
// ---------------------------------------------------------------------------------------

/// Characters that change how the text around them is shown (bidi overrides and isolates,
/// marks, zero-width characters): Unicode category Cf, not Cc, so `char::is_control` is false.
fn is_deceptive(c: char) -> bool {
    matches!(
        c,
        '\u{061c}'
            | '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{2069}'
            | '\u{feff}'
    )
}

/// Attack: one Piggy Bank API request on `piggybank.billing.<name>` where the name holds
/// U+202E RIGHT-TO-LEFT OVERRIDE (NATS subjects may hold any byte but whitespace). The
/// request is audited with that name, and `piggybank audit` prints it through
/// `cli::printable`, which escapes `char::is_control` (C0, DEL, C1) only: the override goes
/// to the terminal as is, and a terminal with bidi support (VTE, Konsole, mlterm) shows the
/// rest of the line reversed: the record of a denied `get` of `billing/db-prod` can read
/// as anything the attacker spelled backwards, and the fields after it (outcome, entity)
/// are reordered. The same goes for `list`, `mappings`, `status` instance names and the
/// keys an unpinned `init` shows. Impact: operator deception while reading the trail.
/// Severity: low.
///
/// Fix: in `printable`, escape Unicode format characters (category Cf: U+200B..U+200F,
/// U+202A..U+202E, U+2060..U+2069, U+061C, U+FEFF) and line/paragraph separators
/// (U+2028, U+2029) as well as controls.
///
/// Fixed: `printable` escapes Unicode's format characters and the separators too.
#[tokio::test(flavor = "multi_thread")]
async fn the_audit_listing_never_prints_bidi_overrides_from_a_request() {
    let subject = "piggybank.billing.QUIET\u{202e}dorp-bd\u{200b}";
    let lines = audit_lines_after_a_get_on(subject).await;
    let deceptive: Vec<&String> = lines
        .iter()
        .filter(|l| l.chars().any(is_deceptive))
        .collect();
    assert!(
        deceptive.is_empty(),
        "piggybank audit printed bidi or zero-width characters: {deceptive:?}"
    );
}

// ---------------------------------------------------------------------------------------
// What held.
// ---------------------------------------------------------------------------------------

/// Attack: the attacker holds the operator's signed `initialize` (from the queue group, as
/// in `tests/attack_review3.rs`) and sends it on with its requester xkey added in a way
/// the signed bytes might not see: (a) a second `Piggybank-Requester-Xkey` value, the
/// attacker's first (the backend reads the first value); (b) the header name in another
/// case, `piggybank-requester-xkey` (async-nats header names are case-sensitive); (c) the
/// attacker's value under a signature header's name in another case, and its own value in
/// place. Safe: each is refused (403) and the store stays uninitialized. Positive control:
/// the request as signed is accepted, and its key opens for the operator only.
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
