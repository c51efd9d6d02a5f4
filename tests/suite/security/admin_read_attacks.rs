//! Attacks on `read_secret` (`piggybank get` without a data key) and on the operators' inbox
//! rule, by an account user: in the open setup any user (it subscribes to `>`, answers any
//! request first, replays and reflects what it captured); under the generated layout the
//! host role, an application role, or the admin role's NATS user without the admin seed.
//!
//! Each test asserts the secure outcome beside a positive control that shows the attack
//! reached its target. Two of them failed when they were written, and pass since their
//! fixes (each says what was found).

use std::time::Duration;

use async_nats::{HeaderMap, Message};
use base64::Engine as _;
use futures::StreamExt as _;
use nkeys::XKey;
use piggybank::admin_auth::AdminSigner;
use piggybank::client::AdminClient;
use piggybank::config::headers::{REQUESTER_XKEY, SENDER_XKEY};
use piggybank::config::DEFAULT_SUBJECT_BASE;
use piggybank::nats_layout::admin_inbox_prefix;
use piggybank::protocol::read_secret::{ReadSecretRequest, ReadValue, SealedValue, PURPOSE};

use crate::common::layout::{gather, operator, spy, Layout};
use crate::common::sealed::admin_seed;
use crate::common::*;

const PROTOCOL: &str = "wasmcloud.secrets.v1alpha1.nats-kv";
const READ: &str = "wasmcloud.secrets.v1alpha1.nats-kv.read_secret";
/// What the backend holds under `db`.
const GENUINE: &str = "genuine-value-7f3a";
/// What a forger seals to the CLI's one-time key.
const FORGED: &str = "forged-by-attacker-91c2";

/// A keyed `piggybank run` (the real binary) requiring `signer`'s signature, holding `db`.
struct OpenSetup {
    nats: NatsServer,
    keys: Keys,
    seed: zeroize::Zeroizing<String>,
    signer: AdminSigner,
    _backend: Proc,
}

async fn open_setup() -> OpenSetup {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let (seed, signer) = admin_seed();
    let backend = spawn_run(&nats, &keys, &["--admin-keys", signer.public_key()]);
    wait_for_backend(&nats, PROTOCOL).await;
    admin(nats.client().await)
        .with_signer(Some(signer.clone()))
        .put_secret("db", text(GENUINE), None, None)
        .await
        .unwrap();
    OpenSetup {
        nats,
        keys,
        seed,
        signer,
        _backend: backend,
    }
}

impl OpenSetup {
    /// `piggybank get <args>` as the operator (admin seed, no data key): (ok, stdout, stderr).
    async fn get(&self, args: &[&str], env: &[(&str, &str)]) -> (bool, Vec<u8>, String) {
        let mut all: Vec<(String, String)> = vec![
            ("NATS_ADDRESS".into(), self.nats.url()),
            ("PIGGYBANK_ADMIN_SEED".into(), self.seed.to_string()),
        ];
        all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let argv: Vec<String> = std::iter::once("get")
            .chain(args.iter().copied())
            .map(str::to_string)
            .collect();
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

/// How a forger answers a `read_secret` it sees.
#[derive(Clone, Copy)]
enum Forgery {
    /// [`FORGED`], sealed to the request's requester xkey from a key of the forger's own, as
    /// a well-formed read reply for the name asked.
    Value,
    /// An admin error, as the backend words "not found".
    NotFound,
}

/// An account user subscribed to every backend's `read_secret` that answers each request at
/// once with `forgery`, before the backend (which checks a signature and records a nonce
/// first) can. Runs until aborted.
async fn forger(nats: &NatsServer, forgery: Forgery) -> tokio::task::JoinHandle<()> {
    let client = nats.client().await;
    let mut requests = client
        .subscribe("wasmcloud.secrets.v1alpha1.*.read_secret")
        .await
        .unwrap();
    client.flush().await.unwrap();
    tokio::spawn(async move {
        let own = XKey::new();
        while let Some(msg) = requests.next().await {
            let Some(reply) = msg.reply.clone() else {
                continue;
            };
            let (headers, body) = match forgery {
                Forgery::Value => {
                    let Some(requester) = msg
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(REQUESTER_XKEY))
                        .and_then(|k| XKey::from_public_key(k.as_str()).ok())
                    else {
                        continue;
                    };
                    let asked: ReadSecretRequest = serde_json::from_slice(&msg.payload).unwrap();
                    let plain = ReadValue {
                        purpose: PURPOSE.into(),
                        name: asked.key.clone(),
                        version: asked.version.unwrap_or(1),
                        string_secret: Some(FORGED.into()),
                        binary_secret: None,
                    };
                    let sealed = own
                        .seal(&serde_json::to_vec(&plain).unwrap(), &requester)
                        .unwrap();
                    let mut h = HeaderMap::new();
                    h.insert(SENDER_XKEY, own.public_key().as_str());
                    (h, sealed)
                }
                Forgery::NotFound => {
                    let mut h = HeaderMap::new();
                    h.insert("Nats-Service-Error-Code", "404");
                    h.insert("Nats-Service-Error", "not found");
                    let body = br#"{"error":"secret \"db\" not found","code":404}"#.to_vec();
                    (h, body)
                }
            };
            let _ = client
                .publish_with_headers(reply, headers, body.into())
                .await;
            let _ = client.flush().await;
        }
    })
}

/// Attack: an account user who subscribes to `…read_secret` answers an operator's
/// `piggybank get` first, with a well-formed read reply: a value of its choosing sealed to
/// the CLI's one-time xkey (public, in the request's header) from a key of its own. Safe:
/// pinned to the backend's transit key (`-t`, or `TRANSIT_XKEY_SEED` as a dev `keys.env`
/// sets it), the CLI never prints the forged value, whether the backend answers too or only
/// the forger does. Control: unpinned, the CLI prints the forged value (docs/security.md
/// leaves it: "unpinned, the CLI believes the first reply that opens"), so the forgery is
/// well-formed and reached the CLI first.
#[tokio::test]
async fn a_pinned_get_never_prints_a_value_a_forger_sealed_to_its_request() {
    let s = open_setup().await;
    let attack = forger(&s.nats, Forgery::Value).await;
    let transit = s.keys.transit_public();

    // Pinned by flag, and by the seed in the environment, with the real backend answering too.
    let (_, out, err) = s.get(&["db", "-t", &transit], &[]).await;
    assert!(
        !contains_bytes(&out, FORGED),
        "pinned get printed the forgery"
    );
    assert!(!err.contains(FORGED), "{err}");
    let seed = s.keys.transit.to_string();
    let (_, out, _) = s.get(&["db"], &[("TRANSIT_XKEY_SEED", &seed)]).await;
    assert!(!contains_bytes(&out, FORGED), "pinned (env) get printed it");

    // Only the forger answers (no backend is named `ghost`): the pinned CLI refuses.
    let (ok, out, err) = s.get(&["db", "-n", "ghost", "-t", &transit], &[]).await;
    assert!(!ok && out.is_empty(), "pinned get believed a forger: {err}");
    assert!(err.contains("not believed"), "{err}");

    // Control: unpinned, the same forgery is believed.
    let (ok, out, err) = s.get(&["db", "-n", "ghost"], &[]).await;
    assert!(ok, "control: the forged reply did not open: {err}");
    assert_eq!(out, format!("{FORGED}\n").as_bytes());
    attack.abort();
}

/// Attack: the same account user answers a pinned `piggybank get` first, with a reply the pin
/// makes the CLI refuse (a value sealed from the forger's own key), or with an unsigned admin
/// error (a forged "not found", which no pin covers). Safe: a pinned get still prints the
/// value the backend sealed, since the backend's own reply follows within milliseconds (as
/// `piggybank init` waits for a vouched key after an error answer). Control: without the
/// forger, the same pinned get prints the backend's value.
///
/// Found: the CLI takes the first reply only (`AdminClient::read_secret` is one
/// `request`), so anyone who sees a read's request ends it: with "not believed", or with a
/// "not found" that the operator takes for the backend's answer.
#[tokio::test]
async fn a_forged_first_answer_does_not_stop_a_pinned_get_from_reading_the_backends_value() {
    let s = open_setup().await;
    let transit = s.keys.transit_public();
    let (ok, out, err) = s.get(&["db", "-t", &transit], &[]).await;
    assert!(ok, "control: the pinned get works: {err}");
    assert_eq!(out, format!("{GENUINE}\n").as_bytes());

    let mut failures = Vec::new();
    for (forgery, what) in [
        (Forgery::Value, "a value sealed from another key"),
        (Forgery::NotFound, "a forged not found"),
    ] {
        let attack = forger(&s.nats, forgery).await;
        let (ok, out, err) = s.get(&["db", "-t", &transit], &[]).await;
        attack.abort();
        if !(ok && out == format!("{GENUINE}\n").as_bytes()) {
            failures.push(format!("{what} ended the pinned get: {}", err.trim()));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A raw signed `read_secret` of `key`, its value to be sealed to `requester`.
fn signed_read(signer: &AdminSigner, key: &str, requester: &XKey) -> (HeaderMap, Vec<u8>) {
    let body = serde_json::to_vec(&ReadSecretRequest {
        key: key.into(),
        version: None,
    })
    .unwrap();
    let mut h = HeaderMap::new();
    h.insert(REQUESTER_XKEY, requester.public_key().as_str());
    signer.sign_into(READ, &body, &mut h);
    (h, body)
}

fn open_read(reply: &Message, requester: &XKey, pin: &str) -> Option<Vec<u8>> {
    SealedValue {
        headers: reply.headers.as_ref(),
        body: &reply.payload,
    }
    .open(requester, Some(pin), "db", None)
    .ok()
    .map(|(_, v)| v.as_bytes().to_vec())
}

/// Whether a value's bytes, raw or as standard base64, are anywhere in `msg`.
fn carries(msg: &Message, value: &str) -> bool {
    let b64 = base64::engine::general_purpose::STANDARD.encode(value);
    let headers = format!("{:?}", msg.headers);
    [value, b64.as_str()].iter().any(|needle| {
        contains_bytes(&msg.payload, needle)
            || headers.contains(needle)
            || msg.subject.as_str().contains(needle)
    })
}

/// Attack: an operator's read captured on the bus (in the open setup a spy on `>` sees the
/// reply) is fed back to the backend as a host's `get`, with the captured reply's requester
/// xkey as `WasmCloud-Host-Xkey`. An xkey box opens with either side's secret, so the
/// transit key opens it: this is the one way to make the backend decrypt a read reply.
/// Safe: the backend answers an error that carries no byte of the value, and no audit
/// record holds it. Control: the reflected box was opened (the backend answers
/// `InvalidRequest`, where a box sealed to it from an unrelated key answers
/// `DecryptionError`), so the attack reached the parser.
#[tokio::test]
async fn a_read_reply_fed_back_as_a_hosts_get_is_opened_but_reveals_nothing() {
    let s = open_setup().await;
    let operator = XKey::new();
    let client = s.nats.client().await;
    let (h, body) = signed_read(&s.signer, "db", &operator);
    let captured = client
        .request_with_headers(READ, h, body.into())
        .await
        .unwrap();
    assert_eq!(
        open_read(&captured, &operator, &s.keys.transit_public()).as_deref(),
        Some(GENUINE.as_bytes()),
        "control: the operator's read was served"
    );

    let attacker = s.nats.client().await;
    let get = format!("{PROTOCOL}.get");
    let host_get = |key: String, payload: Vec<u8>| {
        let attacker = attacker.clone();
        let get = get.clone();
        async move {
            let mut h = HeaderMap::new();
            h.insert("WasmCloud-Host-Xkey", key.as_str());
            attacker
                .request_with_headers(get, h, payload.into())
                .await
                .unwrap()
        }
    };
    let reflected = host_get(operator.public_key(), captured.payload.to_vec()).await;
    assert!(
        !carries(&reflected, GENUINE),
        "the get reply carries the value"
    );
    let answer: wasmcloud_secrets_types::SecretResponse =
        serde_json::from_slice(&reflected.payload).unwrap();
    assert!(answer.secret.is_none());
    assert!(
        matches!(
            answer.error,
            Some(wasmcloud_secrets_types::GetSecretError::InvalidRequest)
        ),
        "control: the reflected box was opened and refused as a request: {:?}",
        answer.error
    );
    // A box from an unrelated key is not opened at all: what the control tells apart.
    let stranger = XKey::new();
    let transit = XKey::from_public_key(&s.keys.transit_public()).unwrap();
    let junk = stranger.seal(b"{}", &transit).unwrap();
    let unrelated = host_get(operator.public_key(), junk).await;
    let answer: wasmcloud_secrets_types::SecretResponse =
        serde_json::from_slice(&unrelated.payload).unwrap();
    assert!(matches!(
        answer.error,
        Some(wasmcloud_secrets_types::GetSecretError::DecryptionError)
    ));

    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut records = crate::audit::trail(&s.nats).await;
    records.extend(crate::audit::stream_records(&s.nats, "PIGGYBANK_AUDIT_ADMIN_nats-kv").await);
    assert!(
        records.iter().any(|(r, _)| r.operation == "get"),
        "control: the reflected get is on the trail"
    );
    for (_, raw) in &records {
        assert!(!contains_bytes(raw, GENUINE), "a record holds the value");
    }
}

/// Attack: a captured signed `read_secret` relayed to another backend on the account that
/// trusts the same admin key (another `-n`), at once, with a reply subject of the
/// attacker's. Safe: refused (the signature covers the subject, which names the backend),
/// and nothing the relay gets back opens for the attacker. Control: a read signed for that
/// backend is served there.
#[tokio::test]
async fn a_signed_read_relayed_to_another_backend_is_refused() {
    let s = open_setup().await;
    let other = spawn_run(
        &s.nats,
        &s.keys,
        &[
            "--admin-keys",
            s.signer.public_key(),
            "-n",
            "other",
            "-b",
            "OTHER_SECRETS",
        ],
    );
    wait_for_backend(&s.nats, "wasmcloud.secrets.v1alpha1.other").await;
    let other_admin = AdminClient::new(
        s.nats.client().await,
        DEFAULT_SUBJECT_BASE,
        "v1alpha1",
        "other",
    )
    .with_signer(Some(s.signer.clone()));
    other_admin
        .put_secret("db", text("other-value"), None, None)
        .await
        .unwrap();

    let attacker = s.nats.client().await;
    let operator = XKey::new();
    let (h, body) = signed_read(&s.signer, "db", &operator);
    let relayed = attacker
        .request_with_headers(
            "wasmcloud.secrets.v1alpha1.other.read_secret",
            h,
            body.into(),
        )
        .await
        .unwrap();
    let code = relayed
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Service-Error-Code"))
        .map(|c| c.as_str().to_string());
    assert_eq!(code.as_deref(), Some("403"), "the relayed read was served");
    assert!(!carries(&relayed, "other-value"));

    // Control: signed for `other`, the read is served there.
    let (_, value) = other_admin.read_secret("db", None, None).await.unwrap();
    assert_eq!(value.as_bytes(), b"other-value");
    drop(other);
}

/// Attack: under the generated layout, a signed read is sent (by an operator whose CLI lacks
/// the admin inbox prefix, or by whoever holds a captured request) with its reply subject in
/// the hosts' shared `_INBOX.`, in an application's `_INBOX_shop.`, or on the secret's own
/// `$KV` subject. Safe: none is answered: the host's and the application's spies get
/// nothing, and the secret is unchanged. Control: the same read with its reply in the
/// operators' inbox is answered, and opens only with the operator's one-time key (a second
/// admin-role user, which sees the operators' inbox, reads no value in it).
#[tokio::test]
async fn under_the_layout_a_read_is_answered_only_in_the_operators_inbox() {
    let (_, signer) = admin_seed();
    let layout = Layout::start(&["shop"], vec![signer.public_key().to_string()]).await;
    let admin = layout.admin().await;
    let signed = operator(&admin, Some(signer.clone()));
    signed
        .put_secret("db", text(GENUINE), None, None)
        .await
        .unwrap();
    let transit = signed.server_xkey().await.unwrap();
    let host = layout.host().await;
    let shop = layout.app("shop").await;
    let mut host_spy = spy(&host, "_INBOX.>").await;
    let mut shop_spy = spy(&shop, "_INBOX_shop.>").await;
    let peer = layout.admin().await;
    let mut peer_spy = spy(&peer, &format!("{}.>", admin_inbox_prefix("nats-kv"))).await;

    let operator_key = XKey::new();
    for reply in [
        "_INBOX.hosts.see.this",
        "_INBOX_shop.shop.sees.this",
        "$KV.WASMCLOUD_SECRETS.db",
    ] {
        let (h, body) = signed_read(&signer, "db", &operator_key);
        admin
            .client
            .publish_with_reply_and_headers(READ, reply, h, body.into())
            .await
            .unwrap();
    }
    admin.client.flush().await.unwrap();
    let to_host = gather(&mut host_spy, Duration::from_millis(700)).await;
    let to_shop = gather(&mut shop_spy, Duration::from_millis(100)).await;
    assert!(
        to_host.is_empty(),
        "answered in the hosts' inbox: {to_host:?}"
    );
    assert!(to_shop.is_empty(), "answered in shop's inbox: {to_shop:?}");
    let (_, value) = signed
        .read_secret("db", None, Some(&transit))
        .await
        .unwrap();
    assert_eq!(value.as_bytes(), GENUINE.as_bytes(), "the secret changed");

    // Control: in the operators' inbox it is answered; a peer there sees it sealed.
    let (h, body) = signed_read(&signer, "db", &operator_key);
    let answered = admin
        .client
        .request_with_headers(READ, h, body.into())
        .await
        .unwrap();
    assert_eq!(
        open_read(&answered, &operator_key, &transit).as_deref(),
        Some(GENUINE.as_bytes())
    );
    let seen = gather(&mut peer_spy, Duration::from_millis(500)).await;
    assert!(
        seen.iter().any(|m| m.payload == answered.payload),
        "control: the peer saw the operators' inbox"
    );
    assert!(
        !seen.iter().any(|m| carries(m, GENUINE)),
        "a peer read the value"
    );
}

/// Attack: the admin role's NATS user without any admin seed (a second operator's laptop, a
/// CI job given `admin.nk`), under the layout exactly as `piggybank nats-config` prints its
/// `run` command, sends an unsigned `read_secret`. The layout denies this user `get`
/// precisely so that it alone cannot read a value ("never `get`: with it, this user alone
/// would read every mapped secret", docs/nats-layout.md). Safe: refused; a value leaves the
/// backend only for an admin signature. Control: the same user reaches the backend
/// (`server_xkey` is answered in its inbox), and with the admin seed `nats-config` wrote
/// (`admin.seed`, the one the printed `--admin-keys` names) it reads the value.
///
/// Found: `nats-config` printed `piggybank run ... --reply-prefixes ...` with no
/// `--admin-keys` (and wrote no admin signing key), and `read_secret` was then served
/// unsigned, so the admin role's NATS user read every plaintext value, more than the `get`
/// it was denied (no mapping needed).
#[tokio::test]
async fn under_the_printed_layout_the_admin_roles_user_reads_no_value_without_an_admin_seed() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(piggybank_bin())
        .args(["nats-config", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8_lossy(&out.stdout);
    // The backend as printed: the admin keys the printed command names, if any.
    let words: Vec<&str> = printed.split_whitespace().collect();
    let admin_keys: Vec<String> = words
        .windows(2)
        .filter(|w| w[0] == "--admin-keys")
        .flat_map(|w| w[1].split(',').map(str::to_string))
        .collect();
    let layout = Layout::start(&[], admin_keys.clone()).await;
    let admin = layout.admin().await;
    let unsigned = operator(&admin, None);
    let transit = unsigned
        .server_xkey()
        .await
        .expect("control: the admin role reaches the backend");
    let seed = std::fs::read_to_string(dir.path().join("admin.seed")).unwrap_or_default();
    let seed = seed
        .lines()
        .find(|l| l.starts_with("SU"))
        .map(str::to_string);
    let signer = seed.map(|s| AdminSigner::from_seed(&zeroize::Zeroizing::new(s)).unwrap());
    assert_eq!(
        signer.as_ref().map(|s| s.public_key().to_string()),
        admin_keys.first().cloned(),
        "the printed --admin-keys is the key of the admin.seed nats-config wrote:\n{printed}"
    );
    let signed = operator(&admin, signer);
    signed
        .put_secret("db", text(GENUINE), None, None)
        .await
        .expect("control: a signed put");
    let read = unsigned.read_secret("db", None, Some(&transit)).await;
    let leaked = read.as_ref().ok().map(|(_, v)| v.as_bytes().to_vec());
    assert!(
        leaked.is_none(),
        "the admin role's user read the value unsigned: {:?}",
        leaked.map(|v| String::from_utf8_lossy(&v).into_owned())
    );
    let (_, value) = signed
        .read_secret("db", None, Some(&transit))
        .await
        .expect("control: a signed read");
    assert_eq!(value.as_bytes(), GENUINE.as_bytes());
}
