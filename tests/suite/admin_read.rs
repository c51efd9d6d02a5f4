//! `piggybank get` reads through the backend (`read_secret`, as `vault kv get` does) when no
//! data key is given: signed under `--admin-keys`, audited with the name and the signer and
//! never the value, in keyed and sealed mode, its reply sealed to a one-time xkey so that
//! nothing on the bus reveals the value, and a captured request replays to nothing. With a
//! data key, `get` still reads the bucket directly (`cli`, `sample_migration`).
//!
//! The backend runs as the real `piggybank run` where it can, and the CLI is the real binary,
//! so `PIGGYBANK_TEST_BIN` can point both at an older build (docs/testing.md).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use base64::Engine as _;
use futures::StreamExt as _;
use nkeys::XKey;
use piggybank::admin_auth::AdminSigner;
use piggybank::audit::Outcome;
use piggybank::client::AdminClient;
use piggybank::config::headers::{REQUESTER_XKEY, SENDER_XKEY};
use piggybank::protocol::read_secret::{ReadSecretRequest, SealedValue};

use crate::common::sealed::{admin_seed, printed_keys, run_cli, sealed_signed_transit_config};
use crate::common::*;

const PROTOCOL: &str = "wasmcloud.secrets.v1alpha1.nats-kv";
/// The trail of requests signed by an admin key.
const ADMIN_TRAIL: &str = "PIGGYBANK_AUDIT_ADMIN_nats-kv";

/// A keyed `piggybank run` requiring `admin`'s signature, and a signed admin client.
struct Signed {
    nats: NatsServer,
    keys: Keys,
    seed: zeroize::Zeroizing<String>,
    signer: AdminSigner,
    admin: AdminClient,
    _backend: Proc,
}

async fn signed_backend() -> Signed {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let (seed, signer) = admin_seed();
    let backend = spawn_run(&nats, &keys, &["--admin-keys", signer.public_key()]);
    wait_for_backend(&nats, PROTOCOL).await;
    let admin = admin(nats.client().await).with_signer(Some(signer.clone()));
    Signed {
        nats,
        keys,
        seed,
        signer,
        admin,
        _backend: backend,
    }
}

impl Signed {
    /// `piggybank <args>` with the admin seed and no data key: (ok, stdout bytes, stderr).
    async fn get(&self, args: &[&str]) -> (bool, Vec<u8>, String) {
        self.get_with(args, &[("PIGGYBANK_ADMIN_SEED", self.seed.as_str())])
            .await
    }

    async fn get_with(&self, args: &[&str], env: &[(&str, &str)]) -> (bool, Vec<u8>, String) {
        let url = self.nats.url();
        let mut all: Vec<(String, String)> = vec![("NATS_ADDRESS".into(), url)];
        all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut argv = vec!["get".to_string()];
        argv.extend(args.iter().map(|a| a.to_string()));
        tokio::task::spawn_blocking(move || {
            let env: Vec<(&str, &str)> =
                all.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            cli_at(&env, &argv, None)
        })
        .await
        .unwrap()
    }
}

/// Every message on the server (`>`), as (subject, headers text, payload), kept while the
/// returned task runs.
async fn capture_everything(
    nats: &NatsServer,
) -> (
    Arc<Mutex<Vec<async_nats::Message>>>,
    tokio::task::JoinHandle<()>,
) {
    let spy = nats.client().await;
    let mut all = spy.subscribe(">").await.unwrap();
    spy.flush().await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&seen);
    let task = tokio::spawn(async move {
        let _spy = spy;
        while let Some(msg) = all.next().await {
            kept.lock().unwrap().push(msg);
        }
    });
    (seen, task)
}

/// Whether `needle` is anywhere in a message: its subject, its headers or its payload.
fn message_holds(msg: &async_nats::Message, needle: &[u8]) -> bool {
    let headers: Vec<u8> = msg
        .headers
        .iter()
        .flat_map(|h| h.iter())
        .flat_map(|(n, vs)| {
            let name: &[u8] = n.as_ref();
            vs.iter()
                .flat_map(move |v| [name, b": ", v.as_str().as_bytes(), b"\n"].concat())
        })
        .collect();
    [msg.subject.as_bytes(), &headers, &msg.payload]
        .iter()
        .any(|hay| hay.windows(needle.len()).any(|w| w == needle))
}

/// Read `name` with a raw request: the reply message.
async fn raw_read(
    client: &async_nats::Client,
    headers: HeaderMap,
    body: Vec<u8>,
) -> async_nats::Message {
    let subject = format!("{PROTOCOL}.read_secret");
    tokio::time::timeout(
        Duration::from_secs(5),
        client.request_with_headers(subject, headers, body.into()),
    )
    .await
    .expect("answered in time")
    .expect("answered")
}

fn status_of(msg: &async_nats::Message) -> Option<String> {
    msg.headers
        .as_ref()
        .and_then(|h| h.get("Nats-Service-Error-Code"))
        .map(|c| c.as_str().to_string())
}

/// Attack: none; the operator's read. Safe: without the data key, `get` prints the value
/// the backend holds, of the version asked, of the kind it was stored as (a binary value that
/// is valid UTF-8 stays binary), to stdout or to a 0600 file. Control: the direct read with
/// `-e` prints the same.
#[tokio::test]
async fn get_without_the_data_key_reads_through_the_backend_keeping_version_and_kind() {
    let s = signed_backend().await;
    s.admin
        .put_secret("db", text("first-value"), None, None)
        .await
        .unwrap();
    let v2 = s
        .admin
        .put_secret("db", text("second-value"), None, None)
        .await
        .unwrap();
    let blob = b"\x00\x01\xfe\xffraw".to_vec();
    s.admin
        .put_secret("blob", bytes(&blob), None, None)
        .await
        .unwrap();
    s.admin
        .put_secret("utf8", bytes(b"looks-like-text"), None, None)
        .await
        .unwrap();

    let (ok, out, err) = s.get(&["db"]).await;
    assert!(ok, "{err}");
    assert_eq!(out, b"second-value\n");
    let (ok, out, err) = s.get(&["db", "--secret-version", "1"]).await;
    assert!(ok, "{err}");
    assert_eq!(out, b"first-value\n");
    let (ok, out, _) = s.get(&["db", "--secret-version", &v2.to_string()]).await;
    assert!(ok && out == b"second-value\n");
    let (ok, out, err) = s.get(&["blob"]).await;
    assert!(ok, "{err}");
    assert_eq!(out, blob, "bytes as they are, no newline");
    let (ok, out, err) = s.get(&["utf8", "--kind", "string"]).await;
    assert!(!ok && out.is_empty(), "binary read as a string");
    assert!(err.contains("secret is binary"), "{err}");
    let (ok, out, _) = s.get(&["utf8", "--kind", "binary"]).await;
    assert!(ok && out == b"looks-like-text");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("value");
    let (ok, out, err) = s.get(&["db", "--out", file.to_str().unwrap()]).await;
    assert!(ok && out.is_empty(), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"second-value");
    assert_private_file(&file);

    // Control: the sample's road, with the data key, reads the same.
    let (ok, out, err) = cli(
        &s.nats,
        &["get", "db"],
        None,
        &[("ENCRYPTION_XKEY_SEED", s.keys.encryption.as_str())],
    );
    assert!(ok, "{err}");
    assert_eq!(out, b"second-value\n");
}

/// Attack: an account user without the admin key reads a value through the backend, with no
/// signature, or signed by a key that is not an admin key. Safe: both are refused (and the
/// CLI says which key to set). Control: the admin key's signed read is served.
#[tokio::test]
async fn an_unsigned_read_is_refused_under_admin_keys_and_the_signed_one_is_served() {
    let s = signed_backend().await;
    s.admin
        .put_secret("db", text("only-for-admins"), None, None)
        .await
        .unwrap();
    let (ok, out, err) = s.get_with(&["db"], &[]).await;
    assert!(!ok && out.is_empty(), "unsigned read served");
    assert!(
        err.contains("admin signature required") && err.contains("PIGGYBANK_ADMIN_SEED"),
        "{err}"
    );
    let (stranger, _) = admin_seed();
    let (ok, out, _) = s
        .get_with(&["db"], &[("PIGGYBANK_ADMIN_SEED", stranger.as_str())])
        .await;
    assert!(!ok && out.is_empty(), "a stranger's signature served");
    // The library's own client, unsigned, is refused too (403).
    let unsigned = admin(s.nats.client().await);
    let Err(refused) = unsigned.read_secret("db", None, None).await else {
        panic!("an unsigned read was served");
    };
    assert!(refused.is_admin_refusal(), "{refused}");
    // Control.
    let (ok, out, err) = s.get(&["db"]).await;
    assert!(ok, "{err}");
    assert_eq!(out, b"only-for-admins\n");
}

/// Attack: an account user subscribes to `>` (every request and every reply, the operator's
/// inbox included) while the operator reads a string and a binary secret. Safe: no message
/// holds the value, nor its base64. Control: the capture did see the read requests and
/// their replies (with the sealed value), and the operator got both values.
#[tokio::test]
async fn a_read_through_the_backend_reveals_no_value_to_a_subscriber_on_everything() {
    let s = signed_backend().await;
    let string_value = "correct-horse-battery-staple";
    let binary_value = b"\x00binary-staple\xff\x10".to_vec();
    s.admin
        .put_secret("db", text(string_value), None, None)
        .await
        .unwrap();
    s.admin
        .put_secret("cert", bytes(&binary_value), None, None)
        .await
        .unwrap();
    let (seen, spy) = capture_everything(&s.nats).await;
    let (ok, out, err) = s.get(&["db"]).await;
    assert!(ok, "{err}");
    assert_eq!(out, format!("{string_value}\n").as_bytes());
    let (ok, out, err) = s.get(&["cert"]).await;
    assert!(ok, "{err}");
    assert_eq!(out, binary_value);
    // The library's client too (its own connection and inbox).
    let (_, value) = s.admin.read_secret("db", None, None).await.unwrap();
    assert_eq!(value.as_bytes(), string_value.as_bytes());
    tokio::time::sleep(Duration::from_millis(300)).await;
    spy.abort();
    let seen = seen.lock().unwrap();

    let requests = seen
        .iter()
        .filter(|m| m.subject.as_str() == format!("{PROTOCOL}.read_secret"))
        .count();
    let replies = seen
        .iter()
        .filter(|m| {
            m.headers
                .as_ref()
                .is_some_and(|h| h.get(SENDER_XKEY).is_some())
        })
        .count();
    assert_eq!((requests, replies), (3, 3), "the capture saw the reads");
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    for needle in [
        string_value.as_bytes().to_vec(),
        binary_value.clone(),
        b64(string_value.as_bytes()).into_bytes(),
        b64(&binary_value).into_bytes(),
    ] {
        for msg in seen.iter() {
            assert!(
                !message_holds(msg, &needle),
                "the value is readable in a message on {}",
                msg.subject
            );
        }
    }
}

/// Attack: an account user captures the operator's signed `read_secret` request from `>`,
/// and sends it again: as it is (to its own inbox), and with its own requester xkey in place
/// of the operator's. Safe: both are refused (the nonce was used; the signature covers the
/// requester xkey), and the captured reply opens for no key but the operator's one-time key.
/// Control: the original request was served, and a fresh signed request is.
#[tokio::test]
async fn a_replayed_read_request_is_refused_and_its_captured_reply_opens_for_no_one_else() {
    let s = signed_backend().await;
    s.admin
        .put_secret("db", text("replay-me-not"), None, None)
        .await
        .unwrap();
    let (seen, spy) = capture_everything(&s.nats).await;
    let (ok, _, err) = s.get(&["db"]).await;
    assert!(ok, "{err}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    spy.abort();
    let (request, reply) = {
        let seen = seen.lock().unwrap();
        let request = seen
            .iter()
            .find(|m| m.subject.as_str() == format!("{PROTOCOL}.read_secret"))
            .expect("the request was captured")
            .clone();
        let reply = seen
            .iter()
            .find(|m| Some(&m.subject) == request.reply.as_ref())
            .expect("the reply was captured")
            .clone();
        (request, reply)
    };
    let attacker = s.nats.client().await;
    let headers = request.headers.clone().unwrap();

    let replayed = raw_read(&attacker, headers.clone(), request.payload.to_vec()).await;
    assert_eq!(
        status_of(&replayed).as_deref(),
        Some("403"),
        "replay served"
    );
    assert!(replayed.headers.unwrap().get(SENDER_XKEY).is_none());

    let mine = XKey::new();
    let mut swapped = headers.clone();
    swapped.insert(REQUESTER_XKEY, mine.public_key().as_str());
    let replayed = raw_read(&attacker, swapped, request.payload.to_vec()).await;
    assert_eq!(
        status_of(&replayed).as_deref(),
        Some("403"),
        "swapped key served"
    );

    // The captured reply: sealed to the operator's one-time key, which never left the CLI.
    let opened = SealedValue {
        headers: reply.headers.as_ref(),
        body: &reply.payload,
    }
    .open(&mine, None, "db", None);
    assert!(opened.is_err(), "the captured reply opened for another key");
    assert!(!message_holds(&reply, b"replay-me-not"));

    // Control: a fresh signed request, with the attacker's connection, is served.
    let body = serde_json::to_vec(&ReadSecretRequest {
        key: "db".into(),
        version: None,
    })
    .unwrap();
    let mut fresh = HeaderMap::new();
    fresh.insert(REQUESTER_XKEY, mine.public_key().as_str());
    s.signer
        .sign_into(&format!("{PROTOCOL}.read_secret"), &body, &mut fresh);
    let served = raw_read(&attacker, fresh, body).await;
    let (_, value) = SealedValue {
        headers: served.headers.as_ref(),
        body: &served.payload,
    }
    .open(&mine, None, "db", None)
    .expect("a fresh signed read is served");
    assert_eq!(value.as_bytes(), b"replay-me-not");
}

/// Attack: none; accountability. Safe: every read through the backend is one record (the
/// signed ones on the admin trail), naming the secret, its version and the admin key that signed it, and
/// the refused unsigned one is a denied record; no record holds the value. Control: the
/// records are found (the trail is being read).
#[tokio::test]
async fn every_read_through_the_backend_is_audited_with_name_and_signer_never_the_value() {
    let s = signed_backend().await;
    let value = "audited-but-never-recorded";
    let version = s
        .admin
        .put_secret("db", text(value), None, None)
        .await
        .unwrap();
    let (ok, _, err) = s.get(&["db"]).await;
    assert!(ok, "{err}");
    let (ok, _, _) = s.get_with(&["db"], &[]).await;
    assert!(!ok, "unsigned read served");
    let (ok, _, _) = s.get(&["nope"]).await;
    assert!(!ok, "a missing secret served");
    let deadline = Instant::now() + Duration::from_secs(10);
    let records = loop {
        let mut records = crate::audit::trail(&s.nats).await;
        records.extend(crate::audit::stream_records(&s.nats, ADMIN_TRAIL).await);
        let reads = records
            .iter()
            .filter(|(r, _)| r.operation == "read_secret")
            .count();
        if reads >= 3 {
            break records;
        }
        assert!(Instant::now() < deadline, "no read records: {records:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let reads: Vec<_> = records
        .iter()
        .filter(|(r, _)| r.operation == "read_secret")
        .collect();
    let served = reads
        .iter()
        .find(|(r, _)| r.outcome == Outcome::Allowed)
        .expect("the signed read is recorded");
    assert_eq!(served.0.secret.as_deref(), Some("db"));
    assert_eq!(served.0.version, Some(version));
    assert_eq!(served.0.admin_key.as_deref(), Some(s.signer.public_key()));
    assert_eq!(served.0.front_door, "protocol");
    let refused = reads
        .iter()
        .find(|(r, _)| r.outcome == Outcome::Denied)
        .expect("the unsigned read is recorded");
    assert_eq!(refused.0.reason.as_deref(), Some("admin_signature_refused"));
    let missing = reads
        .iter()
        .find(|(r, _)| r.secret.as_deref() == Some("nope"))
        .expect("the read of a missing secret is recorded");
    assert_eq!(missing.0.reason.as_deref(), Some("not_found"));
    for (_, raw) in &records {
        assert!(
            !raw.windows(value.len()).any(|w| w == value.as_bytes()),
            "a record holds the value"
        );
    }
}

/// Attack: none; a newcomer's sealed store. Safe: `get -n sealed1 NAME` reads a sealed store
/// once unlocked (pinned to its transit key with `-t`), is refused with the seal's error once
/// it is locked, and refuses an answer not sealed from the pinned key. Control: the same
/// read unlocked works, and unpinned too.
#[tokio::test]
async fn get_reads_a_sealed_store_once_unlocked_and_is_refused_while_sealed() {
    let nats = NatsServer::start();
    let (seed, signer) = admin_seed();
    let (mut config, transit) = sealed_signed_transit_config(&nats, &signer);
    config.name = "sealed1".into();
    let _backend = start_backend(&nats, config).await;
    let admin_env = [("PIGGYBANK_ADMIN_SEED", seed.as_str())];
    let (ok, out, err) = run_cli(
        &nats,
        &admin_env,
        &["init", "-n", "sealed1", "-t", &transit],
    )
    .await;
    assert!(ok, "{err}");
    let key = printed_keys(&out).pop().expect("init printed the key");
    let unlock_env = [
        ("PIGGYBANK_ADMIN_SEED", seed.as_str()),
        ("PIGGYBANK_DATABASE_KEY", key.as_str()),
    ];
    let (ok, _, err) = run_cli(
        &nats,
        &unlock_env,
        &["unlock", "-n", "sealed1", "-t", &transit],
    )
    .await;
    assert!(ok, "{err}");
    let (ok, _, err) = run_cli(
        &nats,
        &admin_env,
        &["put", "-n", "sealed1", "db", "--string", "sealed-value"],
    )
    .await;
    assert!(ok, "{err}");

    let (ok, out, err) = run_cli(
        &nats,
        &admin_env,
        &["get", "-n", "sealed1", "-t", &transit, "db"],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out, "sealed-value\n");
    let (ok, out, err) = run_cli(&nats, &admin_env, &["get", "-n", "sealed1", "db"]).await;
    assert!(ok && out == "sealed-value\n", "{err}");
    // A pin of another key: the backend's own answer is not believed.
    let other = XKey::new().public_key();
    let (ok, out, err) = run_cli(
        &nats,
        &admin_env,
        &["get", "-n", "sealed1", "-t", &other, "db"],
    )
    .await;
    assert!(
        !ok && out.is_empty(),
        "an answer from another key was believed"
    );
    assert!(err.contains("pinned transit key"), "{err}");

    let (ok, _, err) = run_cli(&nats, &admin_env, &["lock", "-n", "sealed1"]).await;
    assert!(ok, "{err}");
    let (ok, out, err) = run_cli(&nats, &admin_env, &["get", "-n", "sealed1", "db"]).await;
    assert!(!ok && out.is_empty(), "a locked store served a value");
    assert!(err.contains("423") && err.contains("sealed"), "{err}");
}

/// Attack: none; a typo. Safe: a missing secret says "not found" on stderr and prints
/// nothing on stdout, and a name that is not a name states the rule before any request.
/// Control: the existing secret prints.
#[tokio::test]
async fn get_of_a_missing_secret_through_the_backend_says_not_found() {
    let s = signed_backend().await;
    s.admin
        .put_secret("db", text("here"), None, None)
        .await
        .unwrap();
    let (ok, out, err) = s.get(&["nope"]).await;
    assert!(!ok && out.is_empty());
    assert!(err.contains("\"nope\" not found"), "{err}");
    let (ok, out, err) = s.get(&["db", "--secret-version", "99"]).await;
    assert!(!ok && out.is_empty());
    assert!(err.contains("not found"), "{err}");
    let (ok, _, err) = s.get(&["bad..name"]).await;
    assert!(!ok && err.contains("nor contain '..'"), "{err}");
    let (ok, out, _) = s.get(&["db"]).await;
    assert!(ok && out == b"here\n");
}

/// Attack: none; no backend is running. Safe: `get` without a data key says no backend
/// answers, and how to read the bucket directly instead (`-e`, `ENCRYPTION_XKEY_SEED`,
/// keys.env). Control: with the data key, the same server's bucket is read directly.
#[tokio::test]
async fn get_without_a_backend_says_how_to_read_directly_with_the_data_key() {
    let s = signed_backend().await;
    s.admin
        .put_secret("db", text("direct"), None, None)
        .await
        .unwrap();
    drop(s._backend);
    let nats = &s.nats;
    let deadline = Instant::now() + Duration::from_secs(10);
    let err = loop {
        let (ok, _, err) = cli(nats, &["get", "db"], None, &[]);
        assert!(!ok);
        if err.contains("no piggybank backend answers") || Instant::now() > deadline {
            break err;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(err.contains("no piggybank backend answers"), "{err}");
    assert!(
        err.contains("-e/--encryption-xkey-seed")
            && err.contains("ENCRYPTION_XKEY_SEED")
            && err.contains("keys.env"),
        "{err}"
    );
    let (ok, out, err) = cli(
        nats,
        &["get", "db"],
        None,
        &[("ENCRYPTION_XKEY_SEED", s.keys.encryption.as_str())],
    );
    assert!(ok, "{err}");
    assert_eq!(out, b"direct\n");
}

/// Not a test of behaviour: how long a read takes through the backend (`read_secret`, signed,
/// one request) and directly (`read_direct`: a JetStream direct get, opened here), in a loop,
/// printed. `cargo test --test suite -- admin_read::read_timings --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn read_timings_through_the_backend_and_directly() {
    const READS: usize = 300;
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let (_, signer) = admin_seed();
    let mut c = config(&nats, &keys);
    c.admin_keys = vec![signer.public_key().to_string()];
    let _backend = start_backend(&nats, c).await;
    let signed = admin(nats.client().await).with_signer(Some(signer));
    let unsigned_nats = NatsServer::start();
    let _unsigned_backend = start_backend(&unsigned_nats, config(&unsigned_nats, &keys)).await;
    let unsigned = admin(unsigned_nats.client().await);
    signed
        .put_secret("db", text("timing-value"), None, None)
        .await
        .unwrap();
    unsigned
        .put_secret("db", text("timing-value"), None, None)
        .await
        .unwrap();
    let keyring = piggybank::server::keyring(&keys.encryption, &[]).unwrap();
    let direct = nats.client().await;
    let time = |label: &str, took: Vec<Duration>| {
        let mut took = took;
        took.sort();
        let mean = took.iter().sum::<Duration>() / took.len() as u32;
        println!(
            "{label:<34} {READS} reads: mean {:>7.3} ms, p50 {:>7.3} ms, p99 {:>7.3} ms",
            mean.as_secs_f64() * 1e3,
            took[took.len() / 2].as_secs_f64() * 1e3,
            took[took.len() * 99 / 100].as_secs_f64() * 1e3,
        );
    };
    let mut seen = HashSet::new();
    for round in 0..2 {
        let mut through = Vec::with_capacity(READS);
        for _ in 0..READS {
            let start = Instant::now();
            let (_, v) = signed.read_secret("db", None, None).await.unwrap();
            through.push(start.elapsed());
            seen.insert(v.as_bytes().to_vec());
        }
        let mut through_unsigned = Vec::with_capacity(READS);
        for _ in 0..READS {
            let start = Instant::now();
            let (_, v) = unsigned.read_secret("db", None, None).await.unwrap();
            through_unsigned.push(start.elapsed());
            seen.insert(v.as_bytes().to_vec());
        }
        let mut directly = Vec::with_capacity(READS);
        for _ in 0..READS {
            let start = Instant::now();
            let (_, v) = piggybank::client::read_direct(
                &direct,
                None,
                piggybank::config::DEFAULT_SECRETS_BUCKET,
                &keyring,
                "db",
                None,
            )
            .await
            .unwrap();
            directly.push(start.elapsed());
            seen.insert(v.as_bytes().to_vec());
        }
        if round == 1 {
            time("through the backend, signed", through);
            time("through the backend, unsigned", through_unsigned);
            time("directly (data key, bucket read)", directly);
        }
    }
    assert_eq!(seen.len(), 1, "every read read the same value");
}
