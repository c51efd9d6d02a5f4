//! Fixtures of the security tests (`security/`) and the seal's: signed sealed-mode backends,
//! raw database and Piggy Bank API requests as an account user sends them, and the CLI run as
//! an operator runs it.

use std::time::Duration;

use async_nats::HeaderMap;
use futures::StreamExt as _;
use nkeys::XKey;
use piggybank::admin_auth::AdminSigner;
use piggybank::config::headers::REQUESTER_XKEY;
use piggybank::seal::transfer::{Sealed, SealedInitialize, SealedUnlock};
use piggybank::server::RunConfig;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::{cli_at, sealed_api_config, wait_database_instances, NatsServer};

/// The database subjects of the default backend.
pub const DB: &str = "piggybank.database.nats-kv";

/// An admin seed (as an operator's `PIGGYBANK_ADMIN_SEED`) and its signer.
pub fn admin_seed() -> (Zeroizing<String>, AdminSigner) {
    let seed = AdminSigner::generate_seed();
    let signer = AdminSigner::from_seed(&seed).unwrap();
    (seed, signer)
}

/// A sealed-mode backend (no seeds) that requires signed administration by `admin`, with
/// the Piggy Bank API on `piggybank` (so the API's `piggybank.>` sees the database subjects
/// too).
pub fn sealed_signed_config(nats: &NatsServer, admin: &AdminSigner) -> RunConfig {
    let mut c = sealed_api_config(nats);
    c.admin_keys = vec![admin.public_key().to_string()];
    c
}

/// As [`sealed_signed_config`], run with a transit key (`TRANSIT_XKEY_SEED`), whose public
/// half an operator pins with `-t`. Returns the config and that public key.
pub fn sealed_signed_transit_config(nats: &NatsServer, admin: &AdminSigner) -> (RunConfig, String) {
    let seed = piggybank::keys::generate_seed();
    let public = XKey::from_seed(&seed).unwrap().public_key();
    let mut c = sealed_signed_config(nats, admin);
    c.transit_xkey_seed = seed;
    (c, public)
}

/// (Status, JSON) of one request, or `None` when nothing answered within `wait`.
pub async fn ask(
    client: &async_nats::Client,
    subject: &str,
    headers: HeaderMap,
    body: &[u8],
    wait: Duration,
) -> Option<(u16, Value)> {
    let sent = client.request_with_headers(subject.to_string(), headers, body.to_vec().into());
    let reply = tokio::time::timeout(wait, sent).await.ok()?.ok()?;
    let status = reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Status").or_else(|| h.get("Nats-Service-Error-Code")))
        .and_then(|s| s.as_str().parse().ok())
        .unwrap_or(200);
    Some((
        status,
        serde_json::from_slice(&reply.payload).unwrap_or(Value::Null),
    ))
}

/// As [`ask`], signed by `admin`, waiting 5 s.
pub async fn ask_signed(
    client: &async_nats::Client,
    admin: &AdminSigner,
    subject: &str,
    body: &[u8],
) -> Option<(u16, Value)> {
    let headers = admin.sign(subject, body);
    ask(client, subject, headers, body, Duration::from_secs(5)).await
}

/// `initialize`, signed by `admin`, with the key sealed to a one-time xkey as `piggybank
/// init` does; returns the database key.
pub async fn signed_initialize(client: &async_nats::Client, admin: &AdminSigner) -> String {
    let subject = format!("{DB}.initialize");
    let requester = XKey::new();
    // The requester xkey first: the signature covers every header.
    let mut h = HeaderMap::new();
    h.insert(REQUESTER_XKEY, requester.public_key().as_str());
    admin.sign_into(&subject, b"", &mut h);
    let (status, body) = ask(client, &subject, h, b"", Duration::from_secs(10))
        .await
        .expect("initialize answered");
    assert_eq!(status, 200, "{body}");
    let sealed: SealedInitialize = serde_json::from_value(body).unwrap();
    let material = sealed.open(&requester, None).unwrap();
    material["database_key"].as_str().unwrap().to_string()
}

/// The body `piggybank unlock` sends to one instance: the key sealed to its unseal xkey.
pub fn sealed_unlock_for(status: &Value, key: &str) -> Vec<u8> {
    let plaintext = json!({ "database_key": key }).to_string();
    let sealed = Sealed::seal(
        plaintext.as_bytes(),
        status["unseal_xkey"].as_str().unwrap(),
    )
    .unwrap();
    serde_json::to_vec(&SealedUnlock::new(
        status["instance_id"].as_str().unwrap(),
        sealed,
    ))
    .unwrap()
}

/// The answer to a signed unlock of the (one) instance with `key`.
pub async fn unlock_with(
    nats: &NatsServer,
    admin: &AdminSigner,
    key: &str,
) -> Option<(u16, Value)> {
    let operator = nats.client().await;
    let status = wait_database_instances(&operator, "piggybank", 1).await;
    let subject = format!("{DB}.unlock");
    let body = sealed_unlock_for(&status[0], key);
    ask_signed(&operator, admin, &subject, &body).await
}

/// Whether `key` unlocks the (one) instance, in a signed unlock.
pub async fn unlocks(nats: &NatsServer, admin: &AdminSigner, key: &str) -> bool {
    matches!(unlock_with(nats, admin, key).await, Some((200, _)))
}

/// Run `piggybank <args>` against `nats` with `env`, off the runtime's threads.
pub async fn run_cli(
    nats: &NatsServer,
    env: &[(&str, &str)],
    args: &[&str],
) -> (bool, String, String) {
    spawn_cli(nats, env, args).await.unwrap()
}

/// As [`run_cli`], started at once on a blocking thread: await the handle for its outcome.
pub fn spawn_cli(
    nats: &NatsServer,
    env: &[(&str, &str)],
    args: &[&str],
) -> tokio::task::JoinHandle<(bool, String, String)> {
    let mut all: Vec<(String, String)> = vec![("NATS_ADDRESS".into(), nats.url())];
    all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = all.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, out, err) = cli_at(&env, &args, None);
        (ok, String::from_utf8_lossy(&out).into_owned(), err)
    })
}

/// The keys `piggybank init` printed.
pub fn printed_keys(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("Database key: "))
        .map(|k| k.trim().to_string())
        .collect()
}

/// A signed admin database operation with an empty body; its answer.
pub async fn signed(client: &async_nats::Client, admin: &AdminSigner, op: &str) -> (u16, Value) {
    let subject = format!("{DB}.{op}");
    ask(
        client,
        &subject,
        admin.sign(&subject, b""),
        b"",
        Duration::from_secs(10),
    )
    .await
    .unwrap_or_else(|| panic!("{op} answered"))
}

/// Store `value` under `billing/<name>` through the Piggy Bank API; whether it was taken.
pub async fn post(client: &async_nats::Client, name: &str, value: &[u8]) -> bool {
    let mut h = HeaderMap::new();
    h.insert("method", "post");
    let r = ask(
        client,
        &format!("piggybank.billing.{name}"),
        h,
        value,
        Duration::from_secs(5),
    )
    .await;
    matches!(r, Some((200, _)))
}

/// The lines `piggybank audit` prints (stdout and stderr) when the trail holds a record
/// whose secret is `secret` (which holds `QUIET`), against a sealed, signed backend. The
/// record is published on the audit subjects, as any account user who may publish there can
/// (docs/security.md, "Known and left"): piggybank itself puts no more of a requester's text
/// on a record than a valid name (`security::doors`). Checks the positive control: the record
/// is listed.
pub async fn audit_lines_with_a_record_naming(secret: &str) -> Vec<String> {
    let nats = NatsServer::start();
    let (_, admin) = admin_seed();
    let _backend = super::start_backend(&nats, sealed_signed_config(&nats, &admin)).await;
    let js = async_nats::jetstream::new(nats.client().await);
    let record = json!({
        "time_ms": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
        "request_id": "forged-1",
        "instance_id": "forged",
        "front_door": "api",
        "operation": "get",
        "secret": secret,
        "outcome": "denied",
        "reason": "not_found",
    });
    js.publish(
        "$PIGGYBANK.AUDIT.nats-kv.denied.api",
        serde_json::to_vec(&record).unwrap().into(),
    )
    .await
    .expect("published")
    .await
    .expect("the audit stream stores it");
    let (ok, stdout, stderr) = run_cli(&nats, &[], &["audit"]).await;
    assert!(ok && stdout.contains("QUIET"), "{stdout}\n{stderr}");
    stdout
        .lines()
        .chain(stderr.lines())
        .map(str::to_string)
        .collect()
}

/// A sealed backend run with a transit key (which `piggybank unlock -t` pins) and signed
/// administration, initialized and still sealed: what most attacks on the operators' unlock start from.
pub struct PinnedStore {
    pub nats: NatsServer,
    /// The admin seed, as an operator's `PIGGYBANK_ADMIN_SEED`, and its signer.
    pub seed: Zeroizing<String>,
    pub admin: AdminSigner,
    /// The transit public key (`server_xkey`).
    pub transit: String,
    /// The backend's config, to start more instances of it.
    pub config: RunConfig,
    pub backend: super::Running,
    pub operator: async_nats::Client,
    /// The database key `initialize` made.
    pub key: String,
}

pub async fn pinned_store() -> PinnedStore {
    let nats = NatsServer::start();
    let (seed, admin) = admin_seed();
    let (config, transit) = sealed_signed_transit_config(&nats, &admin);
    let backend = super::start_backend(&nats, config.clone()).await;
    let operator = nats.client().await;
    let key = signed_initialize(&operator, &admin).await;
    PinnedStore {
        nats,
        seed,
        admin,
        transit,
        config,
        backend,
        operator,
        key,
    }
}

/// Answer every read of the default backend's key record (a JetStream direct get, whose
/// reply subject the subscriber sees) with `forged`, as soon as it is seen, from
/// `attacker`. Returns the forger's task and how many reads it answered.
pub async fn forge_record_reads(
    attacker: &async_nats::Client,
    forged: Vec<u8>,
) -> (
    tokio::task::JoinHandle<()>,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    let vault = piggybank::config::vault_bucket("nats-kv");
    // A plain subscription: it receives every record read (as a spy on `>` does).
    let mut reads = attacker
        .subscribe(format!("$JS.API.DIRECT.GET.KV_{vault}.>"))
        .await
        .unwrap();
    attacker.flush().await.unwrap();
    let responder = attacker.clone();
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = answered.clone();
    let forger = tokio::spawn(async move {
        while let Some(msg) = reads.next().await {
            let Some(reply) = msg.reply else { continue };
            let mut h = HeaderMap::new();
            h.insert("Nats-Stream", format!("KV_{vault}").as_str());
            h.insert("Nats-Subject", format!("$KV.{vault}.keyring").as_str());
            h.insert("Nats-Sequence", "1");
            h.insert("Nats-Time-Stamp", "2025-01-01T00:00:00Z");
            let _ = responder
                .publish_with_headers(reply, h, forged.clone().into())
                .await;
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    (forger, answered)
}

/// The protocol subjects of the default backend.
pub const PROTOCOL: &str = "wasmcloud.secrets.v1alpha1.nats-kv";

/// The Piggy Bank API's `method` header.
pub fn method(m: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("method", m);
    h
}

/// (Status, JSON) of a database operation, on the subject every version serves.
pub async fn db(client: &async_nats::Client, op: &str, body: &str) -> (u16, Value) {
    let reply = client
        .request(format!("piggybank.database.{op}"), body.to_string().into())
        .await
        .unwrap();
    let status = reply.headers.as_ref().unwrap().get("Status").unwrap();
    (
        status.as_str().parse().unwrap(),
        serde_json::from_slice(&reply.payload)
            .unwrap_or_else(|e| panic!("{op}: the answer is not JSON ({e})")),
    )
}

/// (Status, payload) of a Piggy Bank API request.
pub async fn api(
    client: &async_nats::Client,
    subject: &str,
    m: &str,
    body: &[u8],
) -> (u16, Vec<u8>) {
    let reply = client
        .request_with_headers(subject.to_string(), method(m), body.to_vec().into())
        .await
        .unwrap();
    let status = reply.headers.unwrap().get("Status").unwrap().to_string();
    (status.parse().unwrap(), reply.payload.to_vec())
}

/// Every reply to one request, until none has come for 500 ms.
pub async fn gather_all(
    client: &async_nats::Client,
    subject: &str,
    headers: HeaderMap,
    body: &[u8],
) -> Vec<(u16, Value)> {
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.unwrap();
    client
        .publish_with_reply_and_headers(subject.to_string(), inbox, headers, body.to_vec().into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let mut out = Vec::new();
    let mut wait = Duration::from_secs(3);
    while let Ok(Some(msg)) = tokio::time::timeout(wait, replies.next()).await {
        let status = msg
            .headers
            .as_ref()
            .and_then(|h| h.get("Status"))
            .and_then(|s| s.as_str().parse().ok())
            .unwrap_or(0);
        out.push((
            status,
            serde_json::from_slice(&msg.payload).unwrap_or(Value::Null),
        ));
        wait = Duration::from_millis(500);
    }
    out
}

/// The `status` of the (one) instance of the default backend; it must answer 200.
pub async fn one_status(client: &async_nats::Client) -> Value {
    let (status, body) = ask(
        client,
        &format!("{DB}.status"),
        HeaderMap::new(),
        b"",
        Duration::from_secs(5),
    )
    .await
    .expect("status answered");
    assert_eq!(status, 200, "{body}");
    body
}
