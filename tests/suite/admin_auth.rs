//! Signed administration (`--admin-keys`): every operation that changes or reveals store
//! state carries a signature by an admin key, over its subject, body digest, time and
//! nonce; anything else is refused with one message and changes nothing; a replay is
//! refused by every instance; the CLI signs with `PIGGYBANK_ADMIN_SEED` or a 0600 seed file;
//! `piggybank dev` turns it on; `status` says whether it is on.

use std::time::{Duration, Instant};

use crate::common::*;
use async_nats::{HeaderMap, Message};
use futures::StreamExt as _;
use nkeys::XKey;
use piggybank::admin_auth::{new_nonce, AdminSigner, REFUSED};
use piggybank::protocol::wire::{PutSecretError, PutSecretRequest, PutSecretResponse};
use piggybank::server::RunConfig;
use serde_json::{json, Value};
use zeroize::Zeroizing;

const PREFIX: &str = "wasmcloud.secrets.v1alpha1.nats-kv";

fn subject(op: &str) -> String {
    format!("{PREFIX}.{op}")
}

/// A new admin key: its signer and its seed.
fn admin_key() -> (AdminSigner, Zeroizing<String>) {
    let seed = AdminSigner::generate_seed();
    (AdminSigner::from_seed(&seed).unwrap(), seed)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Signature headers for `body` on `subject`, made at `time` (unix ms), added to `base`.
fn signed_at(
    signer: &AdminSigner,
    subject: &str,
    body: &[u8],
    time: u64,
    base: Option<HeaderMap>,
) -> HeaderMap {
    let mut h = base.unwrap_or_default();
    signer.sign_at(subject, body, time, &new_nonce(), &mut h);
    h
}

fn signed(signer: &AdminSigner, subject: &str, body: &[u8], base: Option<HeaderMap>) -> HeaderMap {
    signed_at(signer, subject, body, now_ms(), base)
}

/// A `put_secret` request as a host-side client builds it: the header and sealed body.
fn sealed_put(transit_public: &str, name: &str, value: &str) -> (HeaderMap, Vec<u8>) {
    let mut request = PutSecretRequest::default();
    request.key = name.into();
    request.string_secret = Some(value.into());
    let body = serde_json::to_vec(&request).unwrap();
    let one_time = XKey::new();
    let sealed = one_time
        .seal(&body, &XKey::from_public_key(transit_public).unwrap())
        .unwrap();
    let mut h = HeaderMap::new();
    h.insert("WasmCloud-Host-Xkey", one_time.public_key().as_str());
    (h, sealed)
}

async fn send(
    nats: &async_nats::Client,
    subject: &str,
    headers: Option<HeaderMap>,
    body: &[u8],
) -> Message {
    let sent = match headers {
        Some(h) => {
            nats.request_with_headers(subject.to_string(), h, body.to_vec().into())
                .await
        }
        None => {
            nats.request(subject.to_string(), body.to_vec().into())
                .await
        }
    };
    sent.expect("a reply")
}

/// Whether an admin reply is the refusal: code 403 and the one message, nothing else.
fn is_refusal(msg: &Message) -> bool {
    let code = msg
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Service-Error-Code"))
        .map(|c| c.as_str().to_string());
    let body: Value = serde_json::from_slice(&msg.payload).unwrap_or_default();
    code.as_deref() == Some("403") && body == json!({"error": REFUSED, "code": 403})
}

/// Whether a `put_secret` reply is the refusal (the sample's `InvalidHeaders`).
fn is_put_refusal(msg: &Message) -> bool {
    serde_json::from_slice::<PutSecretResponse>(&msg.payload)
        .is_ok_and(|r| r.error == Some(PutSecretError::InvalidHeaders) && r.revision == 0)
}

/// A Piggy Bank database reply: (Status, JSON body).
fn database_reply(msg: &Message) -> (u16, Value) {
    let status = msg
        .headers
        .as_ref()
        .and_then(|h| h.get("Status"))
        .and_then(|s| s.as_str().parse().ok())
        .unwrap_or_default();
    (
        status,
        serde_json::from_slice(&msg.payload).unwrap_or_default(),
    )
}

/// Publish one request and gather every reply (several instances may answer), until none
/// has come for 500 ms.
async fn gather(
    nats: &async_nats::Client,
    subject: &str,
    headers: HeaderMap,
    body: &[u8],
) -> Vec<Message> {
    let inbox = nats.new_inbox();
    let mut replies = nats.subscribe(inbox.clone()).await.unwrap();
    nats.publish_with_reply_and_headers(subject.to_string(), inbox, headers, body.to_vec().into())
        .await
        .unwrap();
    nats.flush().await.unwrap();
    let mut out = Vec::new();
    let mut wait = Duration::from_secs(5);
    while let Ok(Some(msg)) = tokio::time::timeout(wait, replies.next()).await {
        out.push(msg);
        wait = Duration::from_millis(500);
    }
    out
}

fn keyed_config(nats: &NatsServer, keys: &Keys, admin: &AdminSigner) -> RunConfig {
    let mut c = config(nats, keys);
    c.admin_keys = vec![admin.public_key().to_string()];
    c
}

#[tokio::test]
async fn every_admin_operation_refuses_unsigned_forged_stale_and_altered_requests() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let (admin, _) = admin_key();
    let (stranger, _) = admin_key();
    let _backend = start_backend(&nats, keyed_config(&nats, &keys, &admin)).await;
    let client = nats.client().await;
    let signed_client = crate::common::admin(nats.client().await).with_signer(Some(admin.clone()));
    let entity = nkeys::KeyPair::new_module().public_key();
    let other_entity = nkeys::KeyPair::new_module().public_key();
    signed_client
        .put_secret("kept", text("v1"), None, None)
        .await
        .expect("a signed put is served");
    signed_client
        .add_mapping(&entity, &names(&["kept"]))
        .await
        .expect("a signed mapping is served");

    // Every protocol operation that changes or reveals state, with a valid body.
    let operations: Vec<(String, Vec<u8>)> = vec![
        (subject("delete_secret"), br#"{"key":"kept"}"#.to_vec()),
        (
            subject(&format!("add_mapping.{other_entity}")),
            br#"["kept"]"#.to_vec(),
        ),
        (
            subject(&format!("remove_mapping.{entity}")),
            br#"["kept"]"#.to_vec(),
        ),
        (subject("list_secrets"), Vec::new()),
        (subject(&format!("get_mappings.{entity}")), Vec::new()),
        (subject("read_secret"), br#"{"key":"kept"}"#.to_vec()),
    ];
    let skew = 31_000;
    for (op_subject, body) in &operations {
        let elsewhere = subject("get_mappings.MOTHER");
        let mut altered = body.clone();
        altered.push(b' ');
        let attempts: Vec<(&str, Option<HeaderMap>, &[u8])> = vec![
            ("unsigned", None, body.as_slice()),
            (
                "another key",
                Some(signed(&stranger, op_subject, body, None)),
                body,
            ),
            (
                "31 s old",
                Some(signed_at(&admin, op_subject, body, now_ms() - skew, None)),
                body,
            ),
            (
                "31 s ahead",
                Some(signed_at(&admin, op_subject, body, now_ms() + skew, None)),
                body,
            ),
            (
                "body changed",
                Some(signed(&admin, op_subject, body, None)),
                altered.as_slice(),
            ),
            (
                "signed for another subject",
                Some(signed(&admin, &elsewhere, body, None)),
                body,
            ),
        ];
        for (what, headers, sent_body) in attempts {
            let reply = send(&client, op_subject, headers, sent_body).await;
            assert!(
                is_refusal(&reply),
                "{op_subject} {what}: {:?} {}",
                reply.headers,
                String::from_utf8_lossy(&reply.payload)
            );
        }
    }
    // put_secret answers in its own shape, the sample's InvalidHeaders.
    let transit = keys.transit_public();
    for what in ["unsigned", "another key", "31 s old", "body changed"] {
        let (h, body) = sealed_put(&transit, "kept", "forged");
        let put = subject("put_secret");
        let (headers, body) = match what {
            "unsigned" => (h, body),
            "another key" => (signed(&stranger, &put, &body, Some(h)), body),
            "31 s old" => (
                signed_at(&admin, &put, &body, now_ms() - skew, Some(h)),
                body,
            ),
            _ => {
                let headers = signed(&admin, &put, &body, Some(h));
                let (_, other_body) = sealed_put(&transit, "kept", "forged");
                (headers, other_body)
            }
        };
        let reply = send(&client, &put, Some(headers), &body).await;
        assert!(
            is_put_refusal(&reply),
            "put_secret {what}: {}",
            String::from_utf8_lossy(&reply.payload)
        );
    }

    // Nothing changed.
    let listed = signed_client.list_secrets("").await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!((listed[0].name.as_str(), listed[0].version), ("kept", 1));
    assert_eq!(signed_client.get_mappings(&entity).await.unwrap(), ["kept"]);
    assert!(signed_client
        .get_mappings(&other_entity)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_signed_request_is_served_once_and_its_replay_refused() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let (admin, _) = admin_key();
    let _backend = start_backend(&nats, keyed_config(&nats, &keys, &admin)).await;
    let client = nats.client().await;
    let signed_client = crate::common::admin(nats.client().await).with_signer(Some(admin.clone()));
    let entity = nkeys::KeyPair::new_module().public_key();

    // put_secret: the replay would be version 2.
    let put = subject("put_secret");
    let (h, body) = sealed_put(&keys.transit_public(), "once", "v");
    let headers = signed(&admin, &put, &body, Some(h));
    let first = send(&client, &put, Some(headers.clone()), &body).await;
    let first: PutSecretResponse = serde_json::from_slice(&first.payload).unwrap();
    assert_eq!((first.revision, first.error), (1, None));
    let replay = send(&client, &put, Some(headers), &body).await;
    assert!(is_put_refusal(&replay));

    for (op, body) in [
        (format!("add_mapping.{entity}"), br#"["once"]"#.to_vec()),
        (format!("get_mappings.{entity}"), Vec::new()),
        ("list_secrets".to_string(), Vec::new()),
        (format!("remove_mapping.{entity}"), br#"["once"]"#.to_vec()),
        ("delete_secret".to_string(), br#"{"key":"once"}"#.to_vec()),
    ] {
        let op_subject = subject(&op);
        let headers = signed(&admin, &op_subject, &body, None);
        let first = send(&client, &op_subject, Some(headers.clone()), &body).await;
        assert!(
            first
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Service-Error-Code"))
                .is_none(),
            "{op}: {}",
            String::from_utf8_lossy(&first.payload)
        );
        let replay = send(&client, &op_subject, Some(headers), &body).await;
        assert!(is_refusal(&replay), "{op} replayed was served");
    }
    assert!(signed_client.list_secrets("").await.unwrap().is_empty());

    // What hosts use needs no signature: server_xkey, and get for a mapped entity.
    let issuer = Issuer::new();
    let (jwt, subject_key) = issuer.component();
    signed_client
        .put_secret("app/db", text("pw"), None, None)
        .await
        .unwrap();
    signed_client
        .add_mapping(&subject_key, &names(&["app/db"]))
        .await
        .unwrap();
    let host = host_client(&nats).await;
    let secret = host_get(&host, request("app/db", &jwt)).await.unwrap();
    assert_eq!(secret.string_secret.as_deref(), Some("pw"));
}

#[tokio::test]
async fn a_replay_is_refused_by_every_instance() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let (admin, _) = admin_key();
    // Two instances in different queue groups: each receives every request, so one signed
    // request reaches both at once, and only the shared nonce record can refuse it on one.
    let mut a = keyed_config(&nats, &keys, &admin);
    a.nats_queue_base = "qa".into();
    let mut b = keyed_config(&nats, &keys, &admin);
    b.nats_queue_base = "qb".into();
    let _a = start_backend(&nats, a).await;
    let _b = start_backend(&nats, b).await;
    let client = nats.client().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while gather(&client, &subject("server_xkey"), HeaderMap::new(), b"")
        .await
        .len()
        < 2
    {
        assert!(Instant::now() < deadline, "both instances never answered");
    }

    let entity = nkeys::KeyPair::new_module().public_key();
    let add = subject(&format!("add_mapping.{entity}"));
    let headers = signed(&admin, &add, br#"["x"]"#, None);
    let replies = gather(&client, &add, headers.clone(), br#"["x"]"#).await;
    assert_eq!(replies.len(), 2, "both instances answer");
    let served = replies
        .iter()
        .filter(|m| m.payload.as_ref() == b"ok")
        .count();
    let refused = replies.iter().filter(|m| is_refusal(m)).count();
    assert_eq!(
        (served, refused),
        (1, 1),
        "one instance serves it, the other refuses the same nonce"
    );
    // Sent again: refused by both.
    let replies = gather(&client, &add, headers, br#"["x"]"#).await;
    assert_eq!(replies.len(), 2);
    assert!(
        replies.iter().all(is_refusal),
        "a replay is refused everywhere"
    );
}

fn sealed_config(nats: &NatsServer, admin: &AdminSigner) -> RunConfig {
    let mut c = RunConfig::new(Zeroizing::default(), Zeroizing::default());
    c.nats_address = nats.url();
    c.admin_keys = vec![admin.public_key().to_string()];
    c
}

#[tokio::test]
async fn every_database_operation_but_status_needs_a_signature() {
    let nats = NatsServer::start();
    let (admin, _) = admin_key();
    // Two instances: lock reaches both, and each refuses its replay.
    let _one = start_backend(&nats, sealed_config(&nats, &admin)).await;
    let _two = start_backend(&nats, sealed_config(&nats, &admin)).await;
    let client = nats.client().await;
    wait_database_instances(&client, "piggybank", 2).await;
    let op = |name: &str| format!("piggybank.database.{name}");

    let unsigned = send(&client, &op("initialize"), None, b"").await;
    assert_eq!(database_reply(&unsigned), (403, json!({"error": REFUSED})));
    let statuses = database_statuses(&client, "piggybank").await;
    assert_eq!(statuses.len(), 2);
    for s in &statuses {
        assert_eq!(
            s["initialized"], false,
            "a refused initialize changes nothing"
        );
        assert_eq!(s["admin"], "signed");
    }

    let init = send(
        &client,
        &op("initialize"),
        Some(signed(&admin, &op("initialize"), b"", None)),
        b"",
    )
    .await;
    let (status, body) = database_reply(&init);
    assert_eq!(status, 200, "{body}");
    let key = body["database_key"].as_str().unwrap().to_string();
    let unlock_body = json!({ "database_key": key }).to_string();
    // The right key, unsigned: refused by both, and both stay sealed.
    let refused = gather(
        &client,
        &op("unlock"),
        HeaderMap::new(),
        unlock_body.as_bytes(),
    )
    .await;
    assert_eq!(refused.len(), 2);
    for reply in &refused {
        assert_eq!(database_reply(reply), (403, json!({"error": REFUSED})));
    }
    for s in database_statuses(&client, "piggybank").await {
        assert_eq!(s["sealed"], true, "a refused unlock unseals nothing");
    }
    let unlock = |body: &str| signed(&admin, &op("unlock"), body.as_bytes(), None);
    let unlocked = gather(
        &client,
        &op("unlock"),
        unlock(&unlock_body),
        unlock_body.as_bytes(),
    )
    .await;
    assert_eq!(unlocked.len(), 2);
    assert!(unlocked.iter().all(|m| database_reply(m).0 == 200));

    for name in ["rotate", "lock"] {
        let refused = gather(&client, &op(name), HeaderMap::new(), b"").await;
        assert!(!refused.is_empty());
        for reply in &refused {
            assert_eq!(
                database_reply(reply),
                (403, json!({"error": REFUSED})),
                "{name}"
            );
        }
    }
    for s in database_statuses(&client, "piggybank").await {
        assert_eq!(
            (s["sealed"].clone(), s["key_version"].clone()),
            (json!(false), json!(1)),
            "refused lock and rotate changed nothing"
        );
    }

    let rotate = send(
        &client,
        &op("rotate"),
        Some(signed(&admin, &op("rotate"), b"", None)),
        b"",
    )
    .await;
    assert_eq!(
        database_reply(&rotate).0,
        200,
        "{:?}",
        database_reply(&rotate)
    );

    let lock = signed(&admin, &op("lock"), b"", None);
    let locked = gather(&client, &op("lock"), lock.clone(), b"").await;
    assert_eq!(locked.len(), 2, "a signed lock reaches every instance");
    assert!(locked.iter().all(|m| database_reply(m).0 == 200));
    let unlocked = gather(
        &client,
        &op("unlock"),
        unlock(&unlock_body),
        unlock_body.as_bytes(),
    )
    .await;
    assert!(unlocked.iter().all(|m| database_reply(m).0 == 200));
    let replayed = gather(&client, &op("lock"), lock, b"").await;
    assert_eq!(replayed.len(), 2);
    for reply in &replayed {
        assert_eq!(database_reply(reply), (403, json!({"error": REFUSED})));
    }
    for s in database_statuses(&client, "piggybank").await {
        assert_eq!(s["sealed"], false, "the replayed lock locked nothing");
    }
}

// Multi-threaded: the CLI runs as a blocking child process while this backend serves.
#[tokio::test(flavor = "multi_thread")]
async fn without_admin_keys_requests_need_no_signature_and_status_says_so() {
    let Deployed {
        nats,
        backend: _backend,
        admin: plain,
        ..
    } = deployed().await;
    plain
        .put_secret("open", text("v"), None, None)
        .await
        .expect("unsigned put, as the sample");
    let (signer, _) = admin_key();
    let signed_client = crate::common::admin(nats.client().await).with_signer(Some(signer));
    signed_client
        .put_secret("open", text("v2"), None, None)
        .await
        .expect("a signature is simply not checked");
    let statuses = database_statuses(&nats.client().await, "piggybank").await;
    assert_eq!(statuses.len(), 1);
    assert_eq!(statuses[0]["admin"], "unauthenticated");
    let (code, out, err) = cli_code(&nats, &["status"], None, &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("Admin:") && l.ends_with("unauthenticated")),
        "{out}"
    );
}

#[tokio::test]
async fn the_piggy_bank_api_needs_no_admin_signature() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let (admin, _) = admin_key();
    let mut c = keyed_config(&nats, &keys, &admin);
    c.piggybank_prefix = Some("piggybank".into());
    let _backend = start_backend(&nats, c).await;
    let client = nats.client().await;
    let mut post = HeaderMap::new();
    post.insert("method", "post");
    let reply = send(&client, "piggybank.shop.token", Some(post), b"t0k").await;
    assert_eq!(database_reply(&reply).0, 200, "{:?}", reply.payload);
    let mut get = HeaderMap::new();
    get.insert("method", "get");
    let reply = send(&client, "piggybank.shop.token", Some(get), b"").await;
    assert_eq!(reply.payload.as_ref(), b"t0k");
}

/// A `piggybank run --admin-keys` process on `nats`, answering.
async fn run_with_admin_keys(nats: &NatsServer, keys: &Keys, admin_key: &str) -> Proc {
    let proc = spawn_run(nats, keys, &["--admin-keys", admin_key]);
    wait_for_backend(nats, PREFIX).await;
    proc
}

#[tokio::test]
async fn the_cli_signs_with_piggybank_admin_seed() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let (admin, seed) = admin_key();
    let _run = run_with_admin_keys(&nats, &keys, admin.public_key()).await;
    let entity = nkeys::KeyPair::new_module().public_key();
    let with_seed = [("PIGGYBANK_ADMIN_SEED", seed.as_str())];

    let (ok, _, err) = cli(&nats, &["put", "db", "--string", "pw"], None, &[]);
    assert!(!ok, "an unsigned put is refused");
    assert!(
        err.contains("PIGGYBANK_ADMIN_SEED"),
        "says what to do: {err}"
    );
    let (ok, _, err) = cli(&nats, &["list"], None, &[]);
    assert!(!ok && err.contains(REFUSED), "{err}");

    for args in [
        vec!["put", "db", "--string", "pw"],
        vec!["add-mapping", &entity, "--secret", "db"],
    ] {
        let (ok, out, err) = cli(&nats, &args, None, &with_seed);
        assert!(ok, "{args:?}: {err}");
        let out = String::from_utf8_lossy(&out);
        assert!(!out.contains(seed.as_str()) && !err.contains(seed.as_str()));
    }
    let (ok, out, err) = cli(&nats, &["list"], None, &with_seed);
    assert!(ok && String::from_utf8_lossy(&out).contains("db"), "{err}");
    let (ok, out, err) = cli(&nats, &["mappings", &entity], None, &with_seed);
    assert!(ok, "{err}");
    assert_eq!(String::from_utf8_lossy(&out), "db\n");
    let (ok, _, err) = cli(
        &nats,
        &["remove-mapping", &entity, "--secret", "db"],
        None,
        &with_seed,
    );
    assert!(ok, "{err}");
    let (ok, _, err) = cli(&nats, &["delete", "db"], None, &[]);
    assert!(!ok, "an unsigned delete is refused: {err}");
    let (ok, _, err) = cli(&nats, &["delete", "db"], None, &with_seed);
    assert!(ok, "{err}");

    // A seed that is not one of --admin-keys is refused like no seed.
    let (_, other_seed) = admin_key();
    let (ok, _, err) = cli(
        &nats,
        &["put", "x", "--string", "y"],
        None,
        &[("PIGGYBANK_ADMIN_SEED", other_seed.as_str())],
    );
    assert!(!ok && !err.contains(other_seed.as_str()), "{err}");

    let (code, out, err) = cli_code(&nats, &["status"], None, &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("Admin:") && l.ends_with(" signed")),
        "{out}"
    );
}

#[tokio::test]
async fn an_admin_seed_file_must_be_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let (admin, seed) = admin_key();
    let _run = run_with_admin_keys(&nats, &keys, admin.public_key()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin.seed");
    std::fs::write(&file, format!("{}\n", *seed)).unwrap();
    let path = file.to_str().unwrap();

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, _, err) = cli(&nats, &["list", "--admin-seed-file", path], None, &[]);
    assert!(!ok, "a world-readable seed file is refused");
    assert!(err.contains("0644") && err.contains("chmod 600"), "{err}");
    assert!(!err.contains(seed.as_str()));

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (ok, _, err) = cli(
        &nats,
        &["put", "f", "--string", "v", "--admin-seed-file", path],
        None,
        &[],
    );
    assert!(ok, "{err}");
    let (ok, _, err) = cli(
        &nats,
        &["list"],
        None,
        &[("PIGGYBANK_ADMIN_SEED_FILE", path)],
    );
    assert!(ok, "the env var names the file too: {err}");
    let (ok, _, err) = cli(
        &nats,
        &["list", "--admin-seed-file", path],
        None,
        &[("PIGGYBANK_ADMIN_SEED", seed.as_str())],
    );
    assert!(!ok && err.contains("both"), "two keys are ambiguous: {err}");
}

#[tokio::test]
async fn the_database_commands_sign_too() {
    let nats = NatsServer::start();
    let (admin, seed) = admin_key();
    let _run = spawn_sealed_run(&nats, &["--admin-keys", admin.public_key()]);
    wait_database_instances(&nats.client().await, "piggybank", 1).await;
    let (code, _, err) = cli_code(&nats, &["init", "--unverified-instances"], None, &[]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains(REFUSED) && err.contains("PIGGYBANK_ADMIN_SEED"),
        "{err}"
    );
    let with_seed = [("PIGGYBANK_ADMIN_SEED", seed.as_str())];
    let init = ["init", "--json", "--unverified-instances"];
    let (code, out, err) = cli_code(&nats, &init, None, &with_seed);
    assert_eq!(code, Some(0), "{err}");
    let key = serde_json::from_str::<Value>(&out).unwrap()["database_key"]
        .as_str()
        .unwrap()
        .to_string();
    // (Run without TRANSIT_XKEY_SEED, the instance cannot prove itself to `unlock -t`.)
    let (code, _, err) = cli_code(
        &nats,
        &["unlock", "--unverified-instances"],
        None,
        &[("PIGGYBANK_DATABASE_KEY", key.as_str())],
    );
    assert_eq!(code, Some(1), "an unsigned unlock is refused");
    assert!(
        err.contains(REFUSED) && err.contains("PIGGYBANK_ADMIN_SEED"),
        "{err}"
    );
    let (code, _, _) = cli_code(&nats, &["status"], None, &[]);
    assert_eq!(code, Some(2), "still sealed");
    let (code, _, err) = cli_code(
        &nats,
        &["unlock", "--unverified-instances"],
        None,
        &[
            ("PIGGYBANK_DATABASE_KEY", key.as_str()),
            ("PIGGYBANK_ADMIN_SEED", seed.as_str()),
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    let (code, _, _) = cli_code(&nats, &["lock"], None, &[]);
    assert_eq!(code, Some(1), "an unsigned lock is refused");
    let (code, _, _) = cli_code(&nats, &["status"], None, &[]);
    assert_eq!(code, Some(0), "still unsealed");
    let (code, _, err) = cli_code(&nats, &["rotate"], None, &with_seed);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = cli_code(&nats, &["lock"], None, &with_seed);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, _) = cli_code(&nats, &["status"], None, &[]);
    assert_eq!(code, Some(2), "sealed");
}

#[test]
fn run_refuses_a_malformed_admin_key_at_start() {
    let account = nkeys::KeyPair::new_account().public_key();
    let seed = AdminSigner::generate_seed();
    for (bad, expected) in [
        (account.as_str(), "nkey user keys"),
        ("UNOTAKEY", "not an nkey public key"),
        (seed.as_str(), "looks like a seed"),
    ] {
        let keys = Keys::generate();
        let out = std::process::Command::new(piggybank_bin())
            .args(["run", "--admin-keys", bad])
            .env("ENCRYPTION_XKEY_SEED", keys.encryption.as_str())
            .env("TRANSIT_XKEY_SEED", keys.transit.as_str())
            .env("NATS_ADDRESS", format!("127.0.0.1:{}", free_port()))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad} accepted");
        assert!(err.contains(expected), "{err}");
        assert!(!err.contains(seed.as_str()), "a seed reached the terminal");
    }
}

#[tokio::test]
async fn dev_makes_an_admin_key_turns_the_check_on_and_points_keys_env_at_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("pb");
    let port = free_port();
    let mut dev = Proc {
        child: std::process::Command::new(piggybank_bin())
            .args(["dev", "--dir", data.to_str().unwrap(), "--nats-port"])
            .arg(port.to_string())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    };
    let address = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(client) = connect_dev_role(&address, &data, "host").await {
            let asked = client.request(subject("server_xkey"), "".into());
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), asked).await {
                break;
            }
        }
        assert!(Instant::now() < deadline, "dev never came up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seed_file = data.join("admin.seed");
    assert_private_file(&seed_file);
    let seed = std::fs::read_to_string(&seed_file)
        .unwrap()
        .lines()
        .find(|l| l.starts_with("SU"))
        .expect("an nkey user seed")
        .to_string();
    let keys_env = std::fs::read_to_string(data.join("keys.env")).unwrap();
    let named = keys_env
        .lines()
        .find_map(|l| l.strip_prefix("PIGGYBANK_ADMIN_SEED_FILE="))
        .expect("keys.env names the seed file");
    assert_eq!(std::path::Path::new(named), seed_file);
    assert!(!keys_env.contains(&seed), "the seed stays in its own file");

    // As keys.env sets it: the admin role of dev's NATS layout.
    let [(nkey, nkey_file), (inbox, inbox_prefix)] = dev_admin_env(&data);
    let env = [
        ("NATS_ADDRESS", address.as_str()),
        (nkey, nkey_file.as_str()),
        (inbox, inbox_prefix.as_str()),
    ];
    let (ok, _, err) = cli_at(&env, &["put", "d", "--string", "v"], None);
    assert!(!ok, "dev turned the check on");
    assert!(
        err.contains("401") || err.contains("sign"),
        "refused unsigned: {err}"
    );
    let env = [
        ("NATS_ADDRESS", address.as_str()),
        (nkey, nkey_file.as_str()),
        (inbox, inbox_prefix.as_str()),
        ("PIGGYBANK_ADMIN_SEED_FILE", named),
    ];
    let (ok, _, err) = cli_at(&env, &["put", "d", "--string", "v"], None);
    assert!(ok, "{err}");
    let (ok, out, err) = cli_at(&env, &["status", "--json"], None);
    assert!(ok, "{err}");
    let status: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(status["instances"][0]["admin"], "signed");

    dev.signal(libc::SIGINT);
    assert!(dev
        .wait_exit(Duration::from_secs(15))
        .expect("dev stops on Ctrl-C")
        .success());
    let mut stdout = String::new();
    std::io::Read::read_to_string(dev.child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    assert!(!stdout.contains(&seed), "the admin seed is never printed");

    // A second run keeps the same admin key.
    let mut dev = Proc {
        child: std::process::Command::new(piggybank_bin())
            .args(["dev", "--dir", data.to_str().unwrap(), "--nats-port"])
            .arg(port.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ok, _, _) = cli_at(&env, &["list"], None);
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the second dev run refused the old key"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        std::fs::read_to_string(data.join("keys.env")).unwrap(),
        keys_env
    );
    dev.signal(libc::SIGTERM);
    let _ = dev.wait_exit(Duration::from_secs(15));
}
