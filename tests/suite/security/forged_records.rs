//! A forged key record installs nothing: whether the attacker answers an instance's read of
//! the record (a JetStream direct get whose reply subject it sees) or writes the record
//! bucket, an unlock never unseals with keys the operators did not make, a signed unlock
//! never rolls the key schedule back, and a `rotate` never binds a record the master key did
//! not bind. Nothing stored after such an attempt opens with the attacker's keys.

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::HeaderMap;
use futures::StreamExt as _;
use piggybank::seal::key_record::KeyRecord;
use serde_json::{json, Value};

use crate::common::sealed::*;
use crate::common::*;

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
    let admin = admin_seed().1;
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
            // The secret's name is the KV key: the subject after `$KV.<bucket>.`.
            let name = msg.subject.splitn(3, '.').nth(2).unwrap_or_default();
            if let Ok(value) = piggybank::store::envelope::open(&msg.payload, name, &attacker_keys)
            {
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

/// Attack: two instances of a sealed backend run without `TRANSIT_XKEY_SEED` (the README's default:
/// "without it, `initialize` makes the transit key and the key record keeps it"), both started
/// before the store is initialized (first deployment, or scale-out before `init`). `initialize` is
/// answered by one of them (queue group); only that one learns the record's transit key
/// (`set_transit_public`). The other one read no record at start and its record watch loads nothing
/// while sealed, so `Backend::transit_public()` stays `None` there and the unlock's record check
/// (`pinned.is_some_and(..)`) passes *any* self-consistent record. The attacker then does what
/// `a_forged_key_record_cannot_unseal_the_store_with_an_attackers_keys` does (answer the instance's
/// direct get of the record first with its own record, and send an `unlock` with its own master
/// key; here sealed to that instance's public `unseal_xkey` and naming it, so only it answers), and
/// won after 42 tries.
///
/// Impact: that instance unseals with the attacker's data and transit keys: `server_xkey` and
/// `status` announce the attacker's transit key, every value written through it (the Piggy Bank
/// API, `put_secret`) is sealed with the attacker's data key, which the spy reads off
/// `$KV.WASMCLOUD_SECRETS.>` and opens; the next real `piggybank unlock` is told "already
/// unlocked".
///
/// Safe: with `--admin-keys`, `unlock` must be signed like every other database operation but
/// `status`; the attacker's unlock is refused whatever record the instance reads.
#[tokio::test(flavor = "multi_thread")]
async fn a_forged_record_cannot_unseal_an_instance_that_did_not_answer_initialize() {
    let nats = NatsServer::start();
    let (_, admin) = admin_seed();
    let _one = start_backend(&nats, sealed_signed_config(&nats, &admin)).await;
    let _two = start_backend(&nats, sealed_signed_config(&nats, &admin)).await;
    let operator = nats.client().await;
    wait_database_instances(&operator, "piggybank", 2).await;
    let _real_key = signed_initialize(&operator, &admin).await;
    let statuses = wait_database_instances(&operator, "piggybank", 2).await;
    // The instance that did not answer initialize: it reports no server_xkey.
    let victim = statuses
        .iter()
        .find(|s| s["server_xkey"].is_null())
        .cloned()
        .expect("one instance did not answer initialize, and knows no transit key");
    forged_record_unlock(&nats, &victim, None).await;
}

/// The same attack on an instance that *is* pinned, by its configured `TRANSIT_XKEY_SEED`:
/// the record of such a store holds only the transit key's public half, so the attacker
/// copies it (it is announced in `server_xkey`) into a record of its own, and the pin check
/// passes. Before signed unlock this was the same hole as above, in the configuration the
/// README recommended as its fix.
#[tokio::test(flavor = "multi_thread")]
async fn a_forged_record_naming_the_configured_transit_key_cannot_unseal_an_instance() {
    let nats = NatsServer::start();
    let (_, admin) = admin_seed();
    let (config, transit_public) = sealed_signed_transit_config(&nats, &admin);
    let _one = start_backend(&nats, config).await;
    let operator = nats.client().await;
    wait_database_instances(&operator, "piggybank", 1).await;
    let _real_key = signed_initialize(&operator, &admin).await;
    let victim = wait_database_instances(&operator, "piggybank", 1).await[0].clone();
    forged_record_unlock(&nats, &victim, Some(transit_public)).await;
}

/// Answer every read of the key record with the attacker's own record (naming
/// `transit_public` when given, else its own transit key) and send `victim` unlocks with the
/// attacker's master key, unsigned, up to 1,000 times; then post a secret through the API.
/// Asserts the safe outcome: the victim is still sealed, and nothing it stored opens with
/// the attacker's keys.
async fn forged_record_unlock(nats: &NatsServer, victim: &Value, transit_public: Option<String>) {
    let operator = nats.client().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let (mut record, master) = piggybank::seal::key_record::initialize(None, None, now).unwrap();
    let (attacker_keys, _) = piggybank::seal::key_record::open(&record, &master, now).unwrap();
    if let Some(public) = transit_public {
        // A configured transit key: the record holds only its public half.
        record.transit_public = public;
        record.transit = None;
        // Bound again with the attacker's own master key, as the backend binds its records.
        piggybank::seal::key_record::bind(&mut record, &master).unwrap();
    }
    let forged = serde_json::to_vec(&record).unwrap();
    let attacker = nats.client().await;
    let mut stored = attacker.subscribe("$KV.WASMCLOUD_SECRETS.>").await.unwrap();
    let (forger, answered) = forge_record_reads(&attacker, forged).await;

    // The attacker's master key, sealed to the victim's public unseal xkey, naming it: only
    // the victim answers. Its unseal xkey changes only at lock and unlock.
    let body = sealed_unlock_for(victim, master.to_base64().as_str());
    let mut tries = 0;
    let mut last = None;
    for _ in 0..1_000 {
        tries += 1;
        let r = ask(
            &attacker,
            &format!("{DB}.unlock"),
            HeaderMap::new(),
            &body,
            Duration::from_secs(5),
        )
        .await;
        let done = matches!(&r, Some((200, _)) | Some((409, _)));
        last = r;
        if done {
            break;
        }
    }
    forger.abort();
    let after = database_statuses(&operator, "piggybank").await;
    let victim_now = after
        .iter()
        .find(|s| s["instance_id"] == victim["instance_id"])
        .cloned()
        .unwrap_or(Value::Null);

    // A service writes a secret now (the API's queue group: retry until an unsealed one
    // takes it); the spy opens what piggybank stored.
    let mut read_back = None;
    let mut posted = None;
    if victim_now["sealed"] == json!(false) {
        for _ in 0..20 {
            let mut h = HeaderMap::new();
            h.insert("method", "post");
            let r = ask(
                &operator,
                "piggybank.billing.db",
                h,
                b"hunter2",
                Duration::from_secs(5),
            )
            .await;
            if matches!(r, Some((200, _))) {
                posted = r;
                break;
            }
        }
        while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(2), stored.next()).await
        {
            // The secret's name is the KV key: the subject after `$KV.<bucket>.`.
            let name = msg.subject.splitn(3, '.').nth(2).unwrap_or_default();
            if let Ok(value) = piggybank::store::envelope::open(&msg.payload, name, &attacker_keys)
            {
                read_back = Some(String::from_utf8_lossy(value.as_bytes()).to_string());
                break;
            }
        }
    }
    assert!(
        victim_now["sealed"] == json!(true) && read_back.is_none(),
        "after {tries} tries ({} forged record reads), instance {} is unsealed={} with the \
         attacker's keys; a secret posted since ({posted:?}) was opened by the attacker: \
         {read_back:?}; last unlock answer: {last:?}",
        answered.load(Ordering::Relaxed),
        victim["instance_id"],
        victim_now["sealed"] == json!(false),
    );
    assert_eq!(
        last.map(|(status, _)| status),
        Some(403),
        "the attacker's unlock is refused"
    );
}

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
/// Impact: a legit unlock installs a key schedule the operators did not choose: every new value is
/// sealed with K1, and every value already re-sealed under K2 is re-sealed back under K1
/// (persistent in the KV). A rotation made because K1 (or a host that held it) leaked is silently
/// undone, store-wide. The same forged record can drop keys instead (values under them stop
/// opening) or swap `share_checks` (every real share refused). The README says "a forged record can
/// only make the operators' unlock fail".
///
/// Safe: the record carries its digest wrapped by the master key (`binding`), checked first in
/// `vault::open`: the altered record is refused (403), nothing is installed. Left: a replay of an
/// older real record (before the rotation) is still bound; see README "Known and left".
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
    while sealed_by(&js, "_api/billing/db").await.as_deref() != Some(newest.as_str()) {
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
    let record: KeyRecord = serde_json::from_slice(&entry.value).unwrap();
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
            let probe_by = sealed_by(&js, "_api/billing/probe").await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let db_by = sealed_by(&js, "_api/billing/db").await;
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
async fn stored_record(js: &async_nats::jetstream::Context) -> (KeyRecord, u64) {
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

/// Attack: `vault::open` checks the binding, but `Seal::rotate` does not open the record: it reads
/// it over NATS (`record_store.entry()`), pushes a new data key, and `vault::rotate` calls `bind`
/// on whatever it read, with the real master key, then writes it back (compare-and-set on the
/// revision it read). So an altered record that the binding refuses is laundered into a bound one
/// by the operators' next routine, signed `rotate`. (1) The store is unlocked, `billing/db` is
/// sealed under data key K1. (2) The attacker takes the real record (public) and empties
/// `data_keys`, and writes it where the instances read it (a publish on `$KV.<vault>.keyring`, as
/// in `security::forged_records`; answering the rotate's read of the record, `$JS.API.DIRECT.GET`,
/// should work the same way without writing the bucket: not tried here). The instance's watch
/// refuses it (altered), nothing changes. (3) The operators rotate (signed). The backend binds
/// `[K2]` and stores it; its reload opens it (the binding is genuine) and installs a keyring
/// without K1.
///
/// Impact: K1's wrapped seed is gone from the only place that kept it: every value sealed under it
/// stops opening at once, on every instance, and for good (unless a backup of the record exists).
/// The same laundering makes any other alteration stick (share checks that refuse every real share:
/// a store nobody can unlock again; a `split` removed; activation times), while the README says an
/// altered record is refused.
///
/// Safe: `vault::rotate` checks the binding of what it read first.
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
