//! A second hostile review of sealed mode: `piggybank init`, `piggybank unlock -t` (the
//! status proof), and the seal's record pin. The attacker holds a NATS user on the
//! backend's account: it publishes anything, with any headers and reply subject, and
//! subscribes to `>` (the shared `_INBOX.>` included).
//!
//! Each test names an attack and asserts the SAFE behaviour: a failing test is a finding.
//! Every finding of that review is fixed now; each test says how it was exploited before.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use base64::Engine as _;
use common::sealed::*;
use common::*;
use futures::StreamExt as _;
use nkeys::XKey;
use piggybank::config::headers::REQUESTER_XKEY;
use piggybank::seal::transfer::{Sealed, SealedInitialize, SealedUnlock};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

/// A raw NATS connection, for what async-nats cannot publish: a message whose header block
/// carries a status line (`NATS/1.0 503`), as the server's own "no responders" does.
struct RawNats {
    stream: tokio::net::TcpStream,
}

impl RawNats {
    async fn connect(url: &str) -> Self {
        let stream = tokio::net::TcpStream::connect(url).await.unwrap();
        let mut reader = BufReader::new(stream);
        let mut info = String::new();
        reader.read_line(&mut info).await.unwrap();
        assert!(info.starts_with("INFO"), "{info}");
        let mut stream = reader.into_inner();
        stream
            .write_all(
                b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"protocol\":1}\r\nPING\r\n",
            )
            .await
            .unwrap();
        let mut reader = BufReader::new(stream);
        let mut pong = String::new();
        reader.read_line(&mut pong).await.unwrap();
        assert!(pong.starts_with("PONG"), "{pong}");
        Self {
            stream: reader.into_inner(),
        }
    }

    /// Publish a forged "no responders" (status 503, no body) on `subject`.
    async fn no_responders(&mut self, subject: &str) {
        let header = "NATS/1.0 503\r\n\r\n";
        let frame = format!(
            "HPUB {subject} {} {}\r\n{header}\r\n",
            header.len(),
            header.len()
        );
        self.stream.write_all(frame.as_bytes()).await.unwrap();
        self.stream.flush().await.unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// Finding 1: `piggybank init` believes the first reply, which anyone can forge.
// ---------------------------------------------------------------------------------------

/// Attack: the spy on `piggybank.database.<name>.initialize` sees the operator's `piggybank
/// init` request, with its reply inbox and its one-time `Piggybank-Requester-Xkey` (a public
/// key: anyone can seal to it). It answers at once, before the real instance (which first
/// checks the admin signature, reads and creates the record over JetStream), with a
/// well-formed `SealedInitialize` holding a database key of its own choosing, sealed to the
/// operator's one-time xkey. The CLI read only the first reply, opened it (it opened: it was
/// sealed to the CLI's key; nothing said *who* sealed it) and printed the attacker's key as
/// "Database key". The real key, sealed in the real reply, arrived second and was dropped:
/// nobody ever saw it. `--admin-keys` does not help (the reply is not signed).
///
/// Impact: the freshly initialized store can never be unlocked (the printed key is refused
/// with 403; the real one is lost), and the operator files a key the attacker knows as the
/// store's key (in a safe, in auto-unlock config). Recovery needs the record deleted by
/// hand and a new `init`, which the attacker forges again. The same applies to `init
/// --shares`: forged shares. Severity: medium.
///
/// Fixed: the backend seals `initialize`'s answer from its transit key, and `init -t` shows
/// only an answer that opens with the pinned one; the forged answer is named and ignored.
#[tokio::test(flavor = "multi_thread")]
async fn the_cli_init_cannot_be_handed_a_forged_key() {
    let nats = NatsServer::start();
    let (seed, admin) = admin_seed();
    let (config, transit) = sealed_signed_transit_config(&nats, &admin);
    let _backend = start_backend(&nats, config).await;
    let attacker_key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let planted = attacker_key.clone();
    let forging = forge_initialize_answers(&nats, move |_, xkey| {
        let material = json!({ "database_key": planted }).to_string();
        async move {
            SealedInitialize {
                sealed: true,
                threshold: None,
                sealed_to: xkey.clone(),
                key_material: Sealed::seal(material.as_bytes(), &xkey).unwrap(),
            }
        }
    })
    .await;

    let env = [("PIGGYBANK_ADMIN_SEED", seed.as_str())];
    let (ok, stdout, stderr) = run_cli(&nats, &env, &["init", "-t", &transit]).await;
    forging.abort();
    assert!(ok, "init failed: {stderr}");
    let printed = printed_keys(&stdout);
    assert_eq!(printed.len(), 1, "{stdout}");
    assert_ne!(printed[0], attacker_key, "init printed the attacker's key");
    assert!(
        unlocks(&nats, &admin, &printed[0]).await,
        "the key init printed does not unlock the store"
    );
    // Positive control: the forged answer reached the CLI, which named it.
    assert!(
        stderr.contains("not sealed from the pinned transit key"),
        "{stderr}"
    );
}

/// Without a pin (a store run without `TRANSIT_XKEY_SEED`, which makes its transit key at
/// init), nothing tells the real answer from a forged one. Safe: `init
/// --unverified-instances` shows every answer it gets and fails, so the real key is never
/// dropped, and the operator knows someone interfered.
#[tokio::test(flavor = "multi_thread")]
async fn without_a_pin_init_shows_every_answer_and_fails_when_there_are_several() {
    let nats = NatsServer::start();
    let (seed, admin) = admin_seed();
    let _backend = start_backend(&nats, sealed_signed_config(&nats, &admin)).await;
    let attacker_key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let planted = attacker_key.clone();
    let forging = forge_initialize_answers(&nats, move |_, xkey| {
        let material = json!({ "database_key": planted, "purpose": "piggybank-initialize-v1" });
        async move {
            SealedInitialize {
                sealed: true,
                threshold: None,
                sealed_to: xkey.clone(),
                key_material: Sealed::seal(material.to_string().as_bytes(), &xkey).unwrap(),
            }
        }
    })
    .await;
    let env = [("PIGGYBANK_ADMIN_SEED", seed.as_str())];
    let (ok, stdout, stderr) = run_cli(&nats, &env, &["init", "--unverified-instances"]).await;
    forging.abort();
    assert!(!ok, "two answers, and init succeeded: {stdout}");
    assert!(stderr.contains("2 different answers"), "{stderr}");
    let printed = printed_keys(&stdout);
    assert_eq!(printed.len(), 2, "{stdout}");
    assert!(printed.contains(&attacker_key), "{stdout}");
    let real = printed.iter().find(|k| **k != attacker_key).unwrap();
    assert!(unlocks(&nats, &admin, real).await);
}

/// Answer every `initialize` request seen on the bus with `forge(reply, requester_xkey)`,
/// as soon as it is seen.
async fn forge_initialize_answers<F, Fut>(
    nats: &NatsServer,
    forge: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(String, String) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = SealedInitialize> + Send,
{
    let attacker = nats.client().await;
    let mut inits = attacker
        .subscribe(format!("{DB}.initialize"))
        .await
        .unwrap();
    attacker.flush().await.unwrap();
    tokio::spawn(async move {
        while let Some(msg) = inits.next().await {
            let (Some(reply), Some(xkey)) = (
                msg.reply.clone(),
                msg.headers.as_ref().and_then(|h| h.get(REQUESTER_XKEY)),
            ) else {
                continue;
            };
            let forged = forge(reply.to_string(), xkey.as_str().to_string()).await;
            let mut h = HeaderMap::new();
            h.insert("Status", "200");
            let _ = attacker
                .publish_with_headers(reply, h, serde_json::to_vec(&forged).unwrap().into())
                .await;
            let _ = attacker.flush().await;
        }
    })
}

// ---------------------------------------------------------------------------------------
// Finding 2: an instance that did not answer `initialize` has no transit pin, and unlocks
// with a forged record.
// ---------------------------------------------------------------------------------------

/// Attack: two instances of a sealed backend run without `TRANSIT_XKEY_SEED` (the README's
/// default: "without it, `initialize` makes the transit key and the key record keeps
/// it"), both started before the store is initialized (first deployment, or scale-out before
/// `init`). `initialize` is answered by one of them (queue group); only that one learns the
/// record's transit key (`set_transit_public`). The other one read no record at start and
/// its record watch loads nothing while sealed, so `Backend::transit_public()` stays `None`
/// there and the unlock's record check (`pinned.is_some_and(..)`) passes *any*
/// self-consistent record. The attacker then does what
/// `attack.rs::a_forged_key_record_cannot_unseal_the_store_with_an_attackers_keys` does
/// (answer the instance's direct get of the record first with its own record, and send an
/// `unlock` with its own master key; here sealed to that instance's public `unseal_xkey`
/// and naming it, so only it answers), and won after 42 tries.
///
/// Impact: that instance unseals with the attacker's data and transit keys: `server_xkey`
/// and `status` announce the attacker's transit key, every value written through it (the
/// Piggy Bank API, `put_secret`) is sealed with the attacker's data key, which the spy
/// reads off `$KV.WASMCLOUD_SECRETS.>` and opens; the next real `piggybank unlock` is told
/// "already unlocked". Severity: high in that deployment (confidentiality of new writes,
/// integrity of the store).
///
/// Fixed: with `--admin-keys`, `unlock` must be signed like every other database operation
/// but `status`; the attacker's unlock is refused whatever record the instance reads.
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
            if let Ok(value) = piggybank::store::envelope::open(&msg.payload, &attacker_keys) {
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

// ---------------------------------------------------------------------------------------
// Finding 3: one forged message makes `piggybank unlock` give up, with a misleading error.
// ---------------------------------------------------------------------------------------

/// Attack: the spy on `piggybank.database.<name>.status` sees the status request of
/// `piggybank unlock` (it carries `Piggybank-Requester-Xkey`) and its reply inbox, and at
/// once publishes into that inbox one message whose header block is `NATS/1.0 503` (what
/// the server sends for "no responders"; NATS lets any client publish it, here over a raw
/// connection). The CLI's `gather` bails on a 503 that comes before any other reply, and
/// it does: the real instance first reads the key record from JetStream.
///
/// Impact: the operator's `piggybank unlock -t` sends nothing, every time the attacker
/// cares to, and says "no piggybank backend answers on ... (is one running on this NATS
/// server? ...)", not that someone interfered: the store stays sealed (availability), and
/// the operator is steered to debugging their deployment (or to `--unverified-instances`,
/// which would then hand the key to the next impostor). The key is not exposed. The same
/// message breaks `piggybank status`, and a 503 into the request inbox of `unlock`, `lock`,
/// `init` or `rotate` makes the CLI report "no backend" though the instance acted. A
/// weaker variant: 1,024 junk replies before the real one (`MAX_REPLIES`) make `gather`
/// stop, and the junk is skipped silently ("no instance ... sent a status this CLI can
/// read"); that one is a race the attacker does not always win. Severity: low-medium (an
/// account user can disrupt NATS in cruder ways, but this is one message, targeted, and
/// misattributed).
#[tokio::test(flavor = "multi_thread")]
async fn one_forged_message_does_not_stop_the_operators_unlock() {
    let PinnedStore {
        nats,
        seed,
        transit,
        backend: _backend,
        operator,
        key,
        ..
    } = pinned_store().await;

    let attacker = nats.client().await;
    let mut statuses = attacker.subscribe(format!("{DB}.status")).await.unwrap();
    attacker.flush().await.unwrap();
    let mut raw = RawNats::connect(&nats.url()).await;
    // 0: a forged "no responders"; then nothing (the positive control).
    let round = Arc::new(AtomicU64::new(0));
    let which = round.clone();
    let interfering = tokio::spawn(async move {
        while let Some(msg) = statuses.next().await {
            let is_cli = msg
                .headers
                .as_ref()
                .is_some_and(|h| h.get(REQUESTER_XKEY).is_some());
            let Some(reply) = msg.reply.filter(|_| is_cli) else {
                continue;
            };
            if which.load(Ordering::SeqCst) == 0 {
                raw.no_responders(reply.as_str()).await;
            }
        }
    });

    let env = [
        ("PIGGYBANK_DATABASE_KEY", key.as_str()),
        ("PIGGYBANK_ADMIN_SEED", seed.as_str()),
    ];
    let mut outcomes = Vec::new();
    for r in 0..2 {
        round.store(r, Ordering::SeqCst);
        let (ok, _, stderr) = run_cli(&nats, &env, &["unlock", "-t", &transit]).await;
        let sealed = wait_database_instances(&operator, "piggybank", 1).await[0]["sealed"].clone();
        outcomes.push((ok, sealed.clone(), stderr.trim().to_string()));
        if sealed == json!(false) {
            break;
        }
    }
    interfering.abort();
    let control = outcomes.last().unwrap();
    assert_eq!(
        (control.0, control.1.clone()),
        (true, json!(false)),
        "positive control: {outcomes:#?}"
    );
    assert_eq!(
        outcomes.len(),
        1,
        "the operator's `piggybank unlock -t` gave up, the store still sealed, because of \
         one forged 503 in its status inbox (then the control): {outcomes:#?}"
    );
}

// ---------------------------------------------------------------------------------------
// Finding 4: the CLI prints what any answer says, control characters included.
// ---------------------------------------------------------------------------------------

/// Attack: answer the status request of `piggybank unlock -t` as an impostor whose
/// `instance_id` carries terminal control sequences (here: carriage return, "erase line",
/// cursor up, and a fake "Unsealed: the store is unlocked."). The CLI names every unproven
/// answer on stderr with its `instance_id` verbatim (`piggybank status` prints every field
/// verbatim too). On a terminal this rewrites what the operator sees, e.g. hides the warning
/// that an impostor answered. Impact: operator deception only (the exit code still says 1,
/// and nothing is sent to the impostor). Severity: low.
///
/// Fixed: the CLI shows text from answers through `cli::printable` (status's fields, names
/// of instances), and every error through it, which escapes control characters.
#[tokio::test(flavor = "multi_thread")]
async fn the_cli_never_prints_control_characters_from_an_answer() {
    let PinnedStore {
        nats,
        seed,
        transit,
        backend: _backend,
        key,
        ..
    } = pinned_store().await;

    let attacker = nats.client().await;
    let mut statuses = attacker.subscribe(format!("{DB}.status")).await.unwrap();
    attacker.flush().await.unwrap();
    let impostor = attacker.clone();
    let answering = tokio::spawn(async move {
        while let Some(msg) = statuses.next().await {
            let Some(reply) = msg.reply else { continue };
            let fake = json!({
                "mode": "sealed", "version": "0.1.0",
                "instance_id": "\r\u{1b}[2K\u{1b}[1AUnsealed: the store is unlocked.\u{1b}[8m",
                "initialized": true, "sealed": false, "progress": 0, "threshold": null,
                "shares": null, "key_version": 1, "key_id": null, "server_xkey": null,
                "secrets": 0, "mapped_entities": 0, "reencryption": null,
                "unseal_xkey": XKey::new().public_key(),
            });
            let mut h = HeaderMap::new();
            h.insert("Status", "200");
            let _ = impostor
                .publish_with_headers(reply, h, fake.to_string().into())
                .await;
            let _ = impostor.flush().await;
        }
    });
    let env = [
        ("PIGGYBANK_DATABASE_KEY", key.as_str()),
        ("PIGGYBANK_ADMIN_SEED", seed.as_str()),
    ];
    let (_, stdout, stderr) = run_cli(&nats, &env, &["unlock", "-t", &transit]).await;
    let (_, status_out, status_err) = run_cli(&nats, &[], &["status"]).await;
    answering.abort();
    let printed = [stdout, stderr, status_out, status_err];
    let controls: Vec<&String> = printed
        .iter()
        .filter(|s| s.contains('\u{1b}') || s.contains('\r'))
        .collect();
    assert!(
        controls.is_empty(),
        "the CLI printed an answer's control characters verbatim: {controls:#?}"
    );
    // Positive control: the impostor's answer was shown, escaped.
    assert!(
        printed.iter().any(|s| s.contains("\\u{1b}[2K")),
        "{printed:#?}"
    );
}

// ---------------------------------------------------------------------------------------
// What held (each passes).
// ---------------------------------------------------------------------------------------

/// Attack: make a real instance vouch for the attacker. (a) Relay: the spy sends `status`
/// itself with the CLI's one-time xkey (copied from the CLI's request) to the real instance
/// and forwards the genuine proof into the CLI's inbox, beside the attacker's own unseal
/// xkey, under the real instance id (first), and under a new id; (b) ask `status` with its
/// own requester xkey and open the proof (what it learns: only the public instance id and
/// unseal xkey), then replay that proof to the CLI; (c) a status whose unseal xkey is the
/// transit key's public half or the CLI's own one-time key; (d) the same claim for a
/// duplicate of the real instance id sent twice. Safe: the key goes only to the real
/// instance's unseal xkey; the real instance is unlocked.
#[tokio::test(flavor = "multi_thread")]
async fn relayed_and_replayed_proofs_never_hand_the_key_to_the_attacker() {
    let PinnedStore {
        nats,
        seed,
        transit,
        backend: _backend,
        operator,
        key,
        ..
    } = pinned_store().await;

    let attacker = nats.client().await;
    // (b) a proof for the attacker's own requester key: it opens, and says nothing secret.
    let own = XKey::new();
    let mut h = HeaderMap::new();
    h.insert(REQUESTER_XKEY, own.public_key().as_str());
    let (code, mine) = ask(
        &attacker,
        &format!("{DB}.status"),
        h,
        b"",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(code, 200);
    let proof = base64::engine::general_purpose::STANDARD
        .decode(mine["unseal_proof"].as_str().unwrap())
        .unwrap();
    let transit_key = XKey::from_public_key(&transit).unwrap();
    let opened: Value = serde_json::from_slice(&own.open(&proof, &transit_key).unwrap()).unwrap();
    assert_eq!(
        opened,
        json!({
            "purpose": "piggybank-unseal-proof-v1",
            "instance_id": mine["instance_id"],
            "unseal_xkey": mine["unseal_xkey"]
        })
    );

    // (e) cross-protocol: a proof made for the instance's own unseal xkey is a box under
    // x25519(transit, unseal), which is exactly what the instance opens a sealed unlock from
    // "sender" transit with. It opens there, but is no key or share: refused, nothing changes.
    let mut h = HeaderMap::new();
    h.insert(REQUESTER_XKEY, mine["unseal_xkey"].as_str().unwrap());
    let (_, reflexive) = ask(
        &attacker,
        &format!("{DB}.status"),
        h,
        b"",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let confused = json!({
        "instance_id": reflexive["instance_id"],
        "sender_xkey": transit,
        "secret": reflexive["unseal_proof"],
    });
    let refused = ask(
        &attacker,
        &format!("{DB}.unlock"),
        HeaderMap::new(),
        confused.to_string().as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    // Refused by its missing signature (403); unsigned backends refuse it as no key (400).
    assert!(matches!(refused, Some((400 | 403, _))), "{refused:?}");
    assert_eq!(
        wait_database_instances(&attacker, "piggybank", 1).await[0]["sealed"],
        json!(true)
    );

    let unseal = XKey::new();
    let mut statuses = attacker.subscribe(format!("{DB}.status")).await.unwrap();
    let mut unlocks = attacker.subscribe(format!("{DB}.unlock")).await.unwrap();
    attacker.flush().await.unwrap();
    let relay = attacker.clone();
    let (stale, transit_pub) = (mine.clone(), transit.clone());
    let attacker_unseal = unseal.public_key();
    let relaying = tokio::spawn(async move {
        let mut seen = std::collections::HashSet::new();
        while let Some(msg) = statuses.next().await {
            let Some(xkey) = msg.headers.as_ref().and_then(|h| h.get(REQUESTER_XKEY)) else {
                continue;
            };
            let (Some(reply), xkey) = (msg.reply.clone(), xkey.as_str().to_string()) else {
                continue;
            };
            // Its own relayed request carries the same key: relay each CLI request once.
            if !seen.insert(xkey.clone()) {
                continue;
            }
            // Ask the real instance with the CLI's one-time key.
            let mut h = HeaderMap::new();
            h.insert(REQUESTER_XKEY, xkey.as_str());
            let genuine = ask(
                &relay,
                &format!("{DB}.status"),
                h,
                b"",
                Duration::from_secs(5),
            )
            .await
            .map(|(_, v)| v)
            .unwrap_or(Value::Null);
            let mut forgeries = Vec::new();
            for unseal_xkey in [attacker_unseal.clone(), transit_pub.clone(), xkey.clone()] {
                for id in [genuine["instance_id"].clone(), json!("NATTACKER000")] {
                    let mut f = genuine.clone();
                    f["unseal_xkey"] = json!(unseal_xkey);
                    f["instance_id"] = id;
                    forgeries.push(f);
                }
            }
            let mut replayed = stale.clone();
            replayed["unseal_xkey"] = json!(attacker_unseal);
            forgeries.push(replayed);
            forgeries.push(stale.clone());
            forgeries.push(genuine.clone());
            forgeries.push(genuine.clone());
            for f in forgeries {
                let mut h = HeaderMap::new();
                h.insert("Status", "200");
                let _ = relay
                    .publish_with_headers(reply.clone(), h, f.to_string().into())
                    .await;
            }
            let _ = relay.flush().await;
        }
    });
    let env = [
        ("PIGGYBANK_DATABASE_KEY", key.as_str()),
        ("PIGGYBANK_ADMIN_SEED", seed.as_str()),
    ];
    let args = ["unlock", "-t", transit.as_str()];
    let cli = run_cli(&nats, &env, &args);
    let watch = async {
        let mut stolen = None;
        while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(7), unlocks.next()).await
        {
            let Ok(body) = serde_json::from_slice::<SealedUnlock>(&msg.payload) else {
                continue;
            };
            if let Ok(plain) = body.key_material().open(&unseal) {
                stolen = Some(String::from_utf8_lossy(&plain).to_string());
            }
        }
        stolen
    };
    let ((_, _, stderr), stolen) = tokio::join!(cli, watch);
    relaying.abort();
    assert!(stolen.is_none(), "the attacker opened {stolen:?}; {stderr}");
    let after = wait_database_instances(&operator, "piggybank", 1).await;
    assert_eq!(after[0]["sealed"], json!(false), "{stderr}");
    // Positive control: the relayed forgeries reached the CLI, which named them.
    assert!(stderr.contains("NATTACKER000"), "{stderr}");
}
