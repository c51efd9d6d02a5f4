//! The operators' `init` and `unlock` cannot be hijacked or blocked: `piggybank init` shows
//! only an answer sealed from the pinned transit key (unpinned, it shows every answer and
//! fails when there are several); `piggybank unlock` seals the key only to an instance that
//! proved itself with the pinned key (never to an impostor, a relayed or replayed proof, or
//! a status reflected through the Piggy Bank API) and refuses to guess without a pin; and
//! neither one forged message nor a bogus share stops the operators' unlock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use base64::Engine as _;
use futures::StreamExt as _;
use nkeys::XKey;
use piggybank::config::headers::REQUESTER_XKEY;
use piggybank::seal::transfer::{Sealed, SealedInitialize, SealedUnlock};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

use crate::common::sealed::*;
use crate::common::*;

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
/// Impact: the freshly initialized store can never be unlocked (the printed key is refused with
/// 403; the real one is lost), and the operator files a key the attacker knows as the store's key
/// (in a safe, in auto-unlock config). Recovery needs the record deleted by hand and a new `init`,
/// which the attacker forges again. The same applies to `init --shares`: forged shares.
///
/// Safe: the backend seals `initialize`'s answer from its transit key, and `init -t` shows only an
/// answer that opens with the pinned one; the forged answer is named and ignored.
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

/// The fake instance an attacker slips into `piggybank unlock`'s `status` gathering: its
/// `unseal_xkey` is the attacker's.
fn impostor_status(unseal: &XKey) -> Vec<u8> {
    json!({
        "mode": "sealed",
        "version": "0.1.0",
        "instance_id": "NIMPOSTOR000",
        "initialized": true,
        "sealed": true,
        "progress": 0,
        "threshold": null,
        "shares": null,
        "key_version": 1,
        "key_id": null,
        "server_xkey": null,
        "secrets": 0,
        "mapped_entities": 0,
        "reencryption": null,
        "admin": "signed",
        "unseal_xkey": unseal.public_key(),
    })
    .to_string()
    .into_bytes()
}

/// `piggybank unlock ARGS` with `key` in `PIGGYBANK_DATABASE_KEY`, signed with
/// `admin_seed`, started at once on a blocking thread.
fn spawn_unlock(
    nats: &NatsServer,
    key: &str,
    admin_seed: &str,
    args: &[&str],
) -> tokio::task::JoinHandle<(bool, String, String)> {
    let env = [
        ("PIGGYBANK_DATABASE_KEY", key),
        ("PIGGYBANK_ADMIN_SEED", admin_seed),
    ];
    spawn_cli(nats, &env, args)
}

/// What the test publishes on `unlock` once the CLI has exited: everything the CLI sent
/// reached the server before, so the spy sees this after all of it (the backend refuses it:
/// it is not signed).
const END_OF_CLI: &[u8] = b"end of the CLI's unlocks";

/// Opens the key `piggybank unlock` sealed to the impostor, from the unlock requests seen
/// before [`END_OF_CLI`] (or before none has come for 15 s).
async fn key_sealed_to_impostor(
    unlocks: &mut async_nats::Subscriber,
    unseal: &XKey,
) -> Option<String> {
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(15), unlocks.next()).await {
        if msg.payload.as_ref() == END_OF_CLI {
            break;
        }
        let Ok(body) = serde_json::from_slice::<SealedUnlock>(&msg.payload) else {
            continue;
        };
        if body.instance_id != "NIMPOSTOR000" {
            continue;
        }
        let plaintext = body.key_material().open(unseal).ok()?;
        let value: Value = serde_json::from_slice(&plaintext).ok()?;
        return value["database_key"].as_str().map(str::to_string);
    }
    None
}

/// Runs the operator's `piggybank unlock -t TRANSIT` while the attacker's `answering` task
/// interferes, then stops it; asserts that no `unlock` seen on `unlocks` gave the attacker
/// (`unseal`) a key. Returns the CLI's exit status and stderr.
async fn unlock_while_answering(
    nats: &NatsServer,
    seed: &str,
    transit: &str,
    key: &str,
    unseal: &XKey,
    mut unlocks: async_nats::Subscriber,
    answering: tokio::task::JoinHandle<()>,
) -> (bool, String) {
    let (ok, _, stderr) = spawn_unlock(nats, key, seed, &["unlock", "-t", transit])
        .await
        .unwrap();
    answering.abort();
    let marker = nats.client().await;
    marker
        .publish(format!("{DB}.unlock"), END_OF_CLI.into())
        .await
        .unwrap();
    marker.flush().await.unwrap();
    let stolen = key_sealed_to_impostor(&mut unlocks, unseal).await;
    assert!(
        stolen.is_none(),
        "the attacker opened a database key (the real one: {}); the CLI said: {stderr}",
        stolen.as_deref() == Some(key)
    );
    (ok, stderr)
}

/// Attack: `piggybank unlock` asks `status` who the instances are and seals the key to each
/// one's `unseal_xkey`, trusting every reply it gathers (for 300 ms after the last). The
/// spy sees the status request and answers it too, into the CLI's inbox, as an instance
/// whose unseal xkey is the attacker's. The CLI seals the database key to the attacker and
/// publishes it on `unlock`, where the spy reads it and opens it. (A responder of any
/// service on the account may publish to `_INBOX.>`; the next test does the same through
/// piggybank itself, for a user who may publish only on its own API subjects.) Safe: the
/// CLI never seals the key to an xkey that is not a real instance's.
#[tokio::test(flavor = "multi_thread")]
async fn the_cli_unlock_never_hands_the_key_to_an_impostor_instance() {
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
    let unseal = XKey::new();
    let mut statuses = attacker.subscribe(format!("{DB}.status")).await.unwrap();
    let unlocks = attacker.subscribe(format!("{DB}.unlock")).await.unwrap();
    attacker.flush().await.unwrap();
    let impostor = attacker.clone();
    let fake = impostor_status(&unseal);
    let answering = tokio::spawn(async move {
        while let Some(msg) = statuses.next().await {
            if let Some(reply) = msg.reply {
                let mut h = HeaderMap::new();
                h.insert("Status", "200");
                let _ = impostor
                    .publish_with_headers(reply, h, fake.clone().into())
                    .await;
                let _ = impostor.flush().await;
            }
        }
    });
    let (ok, stderr) =
        unlock_while_answering(&nats, &seed, &transit, &key, &unseal, unlocks, answering).await;
    // The real instance proved itself and was unlocked; the impostor is named.
    let statuses = wait_database_instances(&operator, "piggybank", 1).await;
    assert_eq!(statuses[0]["sealed"], false, "{statuses:?}: {stderr}");
    assert!(
        !ok && stderr.contains("NIMPOSTOR000") && stderr.contains("no proof"),
        "{stderr}"
    );
}

/// Without a pinned transit key, `piggybank unlock` sends nothing (unless told
/// `--unverified-instances`): it cannot tell an instance from an impostor.
#[tokio::test(flavor = "multi_thread")]
async fn the_cli_unlock_refuses_to_guess_which_instances_are_real() {
    let PinnedStore {
        nats,
        seed,
        backend: _backend,
        operator,
        key,
        ..
    } = pinned_store().await;
    let spy = nats.client().await;
    let mut seen = spy.subscribe(format!("{DB}.>")).await.unwrap();
    spy.flush().await.unwrap();
    let (ok, _, stderr) = spawn_unlock(&nats, &key, &seed, &["unlock"]).await.unwrap();
    assert!(!ok && stderr.contains("--transit-xkey"), "{stderr}");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), seen.next())
            .await
            .is_err(),
        "nothing is published, not even status"
    );
    // A wrong pin (another backend's transit key) unlocks nothing either.
    let other = nkeys::XKey::new().public_key();
    let (ok, _, stderr) = spawn_unlock(&nats, &key, &seed, &["unlock", "-t", &other])
        .await
        .unwrap();
    assert!(!ok && stderr.contains("pinned transit key"), "{stderr}");
    let statuses = wait_database_instances(&operator, "piggybank", 1).await;
    assert_eq!(statuses[0]["sealed"], true);
}

/// Attack: as above, for a user who may publish only on its own Piggy Bank API subjects
/// (`piggybank.shop.>`, the README's layout) and never on `_INBOX.>`. While one instance
/// is unsealed (auto-unlocked) and a new one waits for `piggybank unlock`, `shop` stores
/// the impostor's status as its own secret, then asks for it with the CLI's status inbox as
/// the reply subject: piggybank delivers it (Status 200) into the CLI's gathering, which
/// seals the key to the attacker. Safe: as above.
#[tokio::test(flavor = "multi_thread")]
async fn the_cli_unlock_never_hands_the_key_to_an_instance_reflected_through_the_api() {
    let PinnedStore {
        nats,
        seed,
        admin,
        transit,
        config,
        backend: _one,
        operator,
        key,
        ..
    } = pinned_store().await;
    let clear = json!({ "database_key": key }).to_string();
    let unlock = format!("{DB}.unlock");
    let unlocked = gather_all(
        &operator,
        &unlock,
        admin.sign(&unlock, clear.as_bytes()),
        clear.as_bytes(),
    )
    .await;
    assert!(unlocked.iter().any(|(s, _)| *s == 200), "{unlocked:?}");

    // The attacker, as application `shop`, stores the impostor's status while unsealed.
    let attacker = nats.client().await;
    let unseal = XKey::new();
    let fake = impostor_status(&unseal);
    let (status, _) = api(&attacker, "piggybank.shop.status", "post", &fake).await;
    assert_eq!(status, 200);

    // A second instance starts, sealed; the operator runs `piggybank unlock` for it.
    let _two = start_backend(&nats, config).await;
    wait_database_instances(&operator, "piggybank", 2).await;
    let mut statuses = attacker.subscribe(format!("{DB}.status")).await.unwrap();
    let unlocks = attacker.subscribe(format!("{DB}.unlock")).await.unwrap();
    attacker.flush().await.unwrap();
    let reflector = attacker.clone();
    let answering = tokio::spawn(async move {
        while let Some(msg) = statuses.next().await {
            let Some(reply) = msg.reply else { continue };
            // The API's queue group picks an instance; the sealed one answers 423, which
            // the CLI ignores, so ask a few times.
            for _ in 0..6 {
                let _ = reflector
                    .publish_with_reply_and_headers(
                        "piggybank.shop.status".to_string(),
                        reply.to_string(),
                        method("get"),
                        "".into(),
                    )
                    .await;
            }
            let _ = reflector.flush().await;
        }
    });
    let (_, stderr) =
        unlock_while_answering(&nats, &seed, &transit, &key, &unseal, unlocks, answering).await;
    let statuses = wait_database_instances(&operator, "piggybank", 2).await;
    assert!(
        statuses.iter().all(|s| s["sealed"] == false),
        "both real instances are unlocked: {statuses:?}; the CLI said: {stderr}"
    );
}

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

/// Attack: the spy on `piggybank.database.<name>.status` sees the status request of
/// `piggybank unlock` (it carries `Piggybank-Requester-Xkey`) and its reply inbox, and at
/// once publishes into that inbox one message whose header block is `NATS/1.0 503` (what
/// the server sends for "no responders"; NATS lets any client publish it, here over a raw
/// connection). The CLI's `gather` bails on a 503 that comes before any other reply, and
/// it does: the real instance first reads the key record from JetStream.
///
/// Impact: the operator's `piggybank unlock -t` sends nothing, every time the attacker cares to,
/// and says "no piggybank backend answers on ... (is one running on this NATS server? ...)", not
/// that someone interfered: the store stays sealed (availability), and the operator is steered to
/// debugging their deployment (or to `--unverified-instances`, which would then hand the key to the
/// next impostor). The key is not exposed. The same message breaks `piggybank status`, and a 503
/// into the request inbox of `unlock`, `lock`, `init` or `rotate` makes the CLI report "no backend"
/// though the instance acted. A weaker variant: 1,024 junk replies before the real one
/// (`MAX_REPLIES`) make `gather` stop, and the junk is skipped silently ("no instance ... sent a
/// status this CLI can read"); that one is a race the attacker does not always win.
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

/// Attack: before (or while) the operators unlock a store split into shares, submit a bogus share
/// (right length, any x coordinate, here the one of the operators' first share) to `unlock`
/// (unauthenticated without `--admin-keys`; this store runs without), which takes a share sealed to
/// the public `unseal_xkey` from `status` just as well. The bogus share takes the slot of that x,
/// so the real one is refused as "already given", and the next real share combines with the bogus
/// one, fails, and discards every pending share. Repeated, the store can never be unlocked. Safe:
/// the operators' real shares unlock the store whatever an attacker submitted before.
#[tokio::test]
async fn a_bogus_share_cannot_block_the_operators_unlock() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let _backend = start_sealed_backend(&nats).await;
    let (status, body) = db(&client, "initialize", r#"{"shares":3,"threshold":2}"#).await;
    assert_eq!(status, 200, "{body}");
    let shares: Vec<String> = body["shares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut bogus = b64.decode(&shares[0]).unwrap();
    for b in bogus.iter_mut().skip(1) {
        *b = 0x42;
    }
    let bogus = b64.encode(&bogus);

    let (status, body) = db(&client, "unlock", &format!(r#"{{"share":"{bogus}"}}"#)).await;
    let attacker_answer = format!("{status} {body}");
    let mut answers = Vec::new();
    for share in &shares[..2] {
        let (status, body) = db(&client, "unlock", &format!(r#"{{"share":"{share}"}}"#)).await;
        answers.push(format!("{status} {body}"));
    }
    let (_, status) = db(&client, "status", "").await;
    assert_eq!(
        status["sealed"].as_bool(),
        Some(false),
        "two real shares did not unlock the store after one bogus share \
         (attacker: {attacker_answer}; operators: {answers:?})"
    );
}
