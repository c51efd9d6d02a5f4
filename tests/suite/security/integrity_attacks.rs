//! Attacks on the integrity guarantees: the audit trail (floods of allowed requests, a
//! sealed, unacknowledging or lossy trail), values bound to their names (a rewritten
//! header), restore's limits, the bucket's owner record, floods on open subjects, and seeds
//! in error output. The attacker holds a NATS user on the backend's account; the operator
//! follows the README (`--admin-keys`, `--trusted-issuers`, `--audit-required`). Each test
//! asserts the safe behaviour; one the project knows and leaves is `#[ignore = "known and
//! left: ..."]`, with its reason in docs/security.md.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;

use crate::common::sealed::admin_seed;
use crate::common::*;

const DECISIONS: &str = "PIGGYBANK_AUDIT_nats-kv";

/// The operator's backend, as the README advises: signed administration, trusted issuers,
/// `--audit-required`, plus `extra`. A secret `db` mapped to a component of the trusted
/// issuer. Returns (run, signed admin client, component jwt, component key).
async fn operators_backend(
    nats: &NatsServer,
    keys: &Keys,
    extra: &[&str],
) -> (Proc, piggybank::client::AdminClient, String, String) {
    let (_seed, signer) = admin_seed();
    let public = signer.public_key().to_string();
    let issuer = Issuer::new();
    let issuer_key = issuer.public_key();
    let mut args = vec![
        "--admin-keys",
        public.as_str(),
        "--trusted-issuers",
        issuer_key.as_str(),
    ];
    args.extend_from_slice(extra);
    let run = spawn_run(nats, keys, &args);
    wait_for_backend(nats, "wasmcloud.secrets.v1alpha1.nats-kv").await;
    let operator = admin(nats.client().await).with_signer(Some(signer));
    operator
        .put_secret("db", text("v"), None, None)
        .await
        .unwrap();
    let (jwt, component) = issuer.component();
    operator
        .add_mapping(&component, &names(&["db"]))
        .await
        .unwrap();
    (run, operator, jwt, component)
}

/// The attacker's flood of *allowed* gets: a component's JWT is public (it is in its wasm)
/// and a 1.x host JWT is self-signed, so anyone who may publish on `get` makes as many
/// allowed gets as they like. `tasks` concurrent loops for `for_how_long`; returns the
/// number served.
async fn flood_allowed_gets(
    nats: &NatsServer,
    jwt: &str,
    tasks: usize,
    for_how_long: Duration,
) -> u64 {
    let served = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + for_how_long;
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let client = host_client(nats).await;
        let (jwt, served) = (jwt.to_string(), Arc::clone(&served));
        handles.push(tokio::spawn(async move {
            while Instant::now() < until {
                if host_get(&client, request("db", &jwt)).await.is_ok() {
                    served.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    served.load(Ordering::Relaxed)
}

/// Attack (target 1): fill the decisions trail with allowed gets of a public component JWT
/// (no key, no signature, no refusal: nothing the refusal gate or the second trail sees).
/// The trail discards new records when full, so under `--audit-required` every host is then
/// refused for the whole retention (`--audit-max-age-secs`, 7 days by default), and an
/// operator's signed admin change is applied but never recorded.
///
/// Safe: after the flood, a legitimate host's get is still served and recorded, and the
/// operator's signed `put_secret` is either recorded or not applied.
///
/// The trail is made small (256 KiB) so the flood is short; the property does not depend on
/// the size (the default 256 MiB is ~300k allowed-get records).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_allowed_gets_cannot_stop_the_recording_of_an_admin_change() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let (_run, operator, jwt, component) = operators_backend(
        &nats,
        &keys,
        &["--audit-required", "--audit-max-bytes", "262144"],
    )
    .await;
    let host = host_client(&nats).await;
    let js = jetstream::new(nats.client().await);
    let revision_before = js
        .get_key_value("WASMCLOUD_SECRETS")
        .await
        .unwrap()
        .entry("db")
        .await
        .unwrap()
        .map(|e| e.revision);
    // Control: the legitimate host is served before the flood.
    host_get(&host, request("db", &jwt)).await.unwrap();

    // The flood, until the host is refused or 60 s have passed.
    let started = Instant::now();
    let mut flooded = 0;
    let mut host_refused_at = None;
    while started.elapsed() < Duration::from_secs(60) {
        flooded += flood_allowed_gets(&nats, &jwt, 8, Duration::from_secs(2)).await;
        if host_get(&host, request("db", &jwt)).await.is_err() {
            host_refused_at = Some(started.elapsed());
            break;
        }
    }
    eprintln!("allowed gets flooded: {flooded}; host refused after {host_refused_at:?}");
    // Control that the flood reached the decisions trail as allowed accesses.
    let info = js
        .get_stream(DECISIONS)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    eprintln!(
        "decisions stream: {} messages, {} bytes of {}",
        info.state.messages, info.state.bytes, info.config.max_bytes
    );

    // A legitimate host, a few seconds later.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let host_after = host_get(&host, request("db", &jwt)).await.map(|_| ());
    // The operator's signed change, and whether it was applied.
    let put = operator
        .put_secret("db", text("changed-by-operator"), None, None)
        .await;
    // Whether it was applied: the secrets bucket's revision of `db`, read directly (a
    // listing is an admin operation, refused like the rest).
    let kv = js.get_key_value("WASMCLOUD_SECRETS").await.unwrap();
    let revision = kv.entry("db").await.unwrap().map(|e| e.revision);
    let applied = revision != revision_before;
    let (verified, verify_out) = audit_verify(&nats);
    eprintln!("verify: {verified}: {verify_out}");
    let puts_recorded = audit_json(&nats, &["--trail", "admin"])
        .iter()
        .filter(|r| r["operation"] == "put_secret")
        .count();
    let statuses = database_statuses(&nats.client().await, "piggybank").await;
    eprintln!(
        "host after: {host_after:?}\nput: {put:?}\napplied: {applied}\nput records: \
         {puts_recorded}\naudit status: {}",
        statuses
            .first()
            .map(|s| s["audit"].to_string())
            .unwrap_or_default()
    );
    let _ = component;
    // A legitimate host is refused once the decisions trail is full (fail closed): known and
    // left (docs/security.md), what `an_api_application_cannot_fill...` tracks.
    let _ = host_after;
    let mut broken = Vec::new();
    if !applied || puts_recorded < 2 {
        broken.push(format!(
            "the operator's signed put_secret was applied and never recorded (answered {put:?})"
        ));
    }
    assert!(
        broken.is_empty(),
        "after a flood of allowed gets: {broken:#?}"
    );
}

/// Attack (target 1, `--verify`): the same flood of allowed gets, on an operator's backend
/// run without `--audit-required` (the default). Every later access (the legitimate host's
/// gets, the operator's signed changes) is served and never recorded, and `status` counts
/// them as dropped.
///
/// Safe: `piggybank audit --verify` does not report the trail clean while a running
/// instance says records were lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_is_not_clean_while_an_instance_dropped_records() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let (_run, operator, jwt, _component) =
        operators_backend(&nats, &keys, &["--audit-max-bytes", "262144"]).await;
    let flooded = flood_allowed_gets(&nats, &jwt, 8, Duration::from_secs(4)).await;
    // The legitimate host and the operator, after the flood: served.
    let host = host_client(&nats).await;
    host_get(&host, request("db", &jwt)).await.unwrap();
    operator
        .put_secret("db", text("changed-by-operator"), None, None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let status = database_statuses(&nats.client().await, "piggybank").await;
    let dropped = status[0]["audit"]["dropped"].as_u64().unwrap_or(0);
    let puts_recorded = audit_json(&nats, &["--trail", "decisions"])
        .iter()
        .filter(|r| r["operation"] == "put_secret")
        .count();
    eprintln!("flooded {flooded}; dropped {dropped}; put records {puts_recorded}");
    // Control: records really were lost (the operator's change among them, when
    // `puts_recorded` is 1: most runs).
    assert!(dropped > 0, "{status:?}");
    let (ok, out) = audit_verify(&nats);
    assert!(
        !ok,
        "verify reports clean while {dropped} records (a signed put among them) are missing: {out}"
    );
}

/// Attack (target 1, JetStream API on the audit stream, as the existing tamper tests do):
/// `sealed: true` on the decisions stream. A sealed stream takes no new message and can
/// never be unsealed, and `TrailStream::problems` does not look at `sealed`.
///
/// Safe: the instance reports a problem, and `audit --verify` fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_decisions_stream_is_found() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let (_run, _operator, jwt, _component) =
        operators_backend(&nats, &keys, &["--audit-required"]).await;
    let host = host_client(&nats).await;
    host_get(&host, request("db", &jwt)).await.unwrap();
    let js = jetstream::new(nats.client().await);
    let mut config = js
        .get_stream(DECISIONS)
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    config.sealed = true;
    js.update_stream(config).await.unwrap();
    let served_after = host_get(&host, request("db", &jwt)).await.is_ok();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = database_statuses(&nats.client().await, "piggybank").await;
    let (ok, out) = audit_verify(&nats);
    eprintln!(
        "served after: {served_after}\nstatus: {}\nverify: {ok}: {out}",
        status[0]["audit"]
    );
    assert!(
        !served_after,
        "a get was served on a sealed trail under --audit-required"
    );
    assert!(!ok, "verify reports a sealed trail clean: {out}");
}

/// As above with `no_ack: true`: the stream stores records but acknowledges none. Under
/// `--audit-required` every request is refused (fail closed, fine), but `status` shows no
/// problem and `--verify` reports the trail clean, so the operator is not told why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decisions_stream_that_acknowledges_nothing_is_found() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let (_run, _operator, jwt, _component) =
        operators_backend(&nats, &keys, &["--audit-required"]).await;
    let host = host_client(&nats).await;
    host_get(&host, request("db", &jwt)).await.unwrap();
    let js = jetstream::new(nats.client().await);
    let mut config = js
        .get_stream(DECISIONS)
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    config.no_ack = true;
    js.update_stream(config).await.unwrap();
    let served_after = host_get(&host, request("db", &jwt)).await.is_ok();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = database_statuses(&nats.client().await, "piggybank").await;
    let (ok, out) = audit_verify(&nats);
    eprintln!(
        "served after: {served_after}\nstatus: {}\nverify: {ok}: {out}",
        status[0]["audit"]
    );
    assert!(
        !served_after,
        "a get was served unacknowledged under --audit-required"
    );
    assert!(!ok, "verify reports a no_ack trail clean: {out}");
}

/// The attacker's move of `prod/db`'s stored value over `public/motd` (which their component
/// is mapped to), after `rewrite` of its clear header. Returns what the attacker's component
/// is then served under `public/motd` (or the refusal), and the owner's control read.
async fn moved_with_rewritten_header(
    rewrite: fn(&[u8]) -> Vec<u8>,
) -> (Result<Option<String>, String>, Option<String>) {
    let Deployed {
        nats,
        keys: _,
        backend: _backend,
        admin,
    } = deployed().await;
    admin
        .put_secret("prod/db", text("PROD-DB-PASSWORD"), None, None)
        .await
        .unwrap();
    admin
        .put_secret("public/motd", text("hello"), None, None)
        .await
        .unwrap();
    let issuer = Issuer::new();
    let (attacker_jwt, attacker) = issuer.component();
    let (owner_jwt, owner) = issuer.component();
    admin
        .add_mapping(&attacker, &names(&["public/motd"]))
        .await
        .unwrap();
    admin
        .add_mapping(&owner, &names(&["prod/db"]))
        .await
        .unwrap();
    let host = host_client(&nats).await;
    let owners = host_get(&host, request("prod/db", &owner_jwt))
        .await
        .unwrap()
        .string_secret;
    let js = jetstream::new(nats.client().await);
    let bucket = js.get_key_value("WASMCLOUD_SECRETS").await.unwrap();
    let sealed = bucket.get("prod/db").await.unwrap().unwrap();
    assert!(sealed.starts_with(b"pgb2"), "the value is bound (pgb2)");
    bucket
        .put("public/motd", rewrite(&sealed).into())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = host_get(&host, request("public/motd", &attacker_jwt))
            .await
            .map(|s| s.string_secret);
        if answer.as_ref().ok().and_then(|s| s.as_deref()) != Some("hello")
            || Instant::now() > deadline
        {
            return (answer, owners);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Attack (target 2): the envelope's magic is in clear and not authenticated. Rewrite a
/// bound value's `pgb2` to `pgb1` and copy it to another name: `open` reads it as an unbound
/// value (which opens under any name), skips the kind byte and serves `name_len | name |
/// value` as the value.
///
/// Safe: the moved value is refused (as the straight copy is), never served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_value_relabelled_unbound_does_not_open_under_another_name() {
    let (answer, owners) = moved_with_rewritten_header(|sealed| {
        let mut v = sealed.to_vec();
        v[..4].copy_from_slice(b"pgb1");
        v
    })
    .await;
    assert_eq!(owners.as_deref(), Some("PROD-DB-PASSWORD"), "control");
    match answer {
        Ok(served) => panic!(
            "the relabelled value was served under public/motd: {:?}",
            served.map(|s| s.escape_debug().to_string())
        ),
        Err(refusal) => eprintln!("refused: {refusal}"),
    }
}

/// Attack (target 2): strip the bound envelope's header, leaving its bare `xkv1` box: the
/// sample's format, which names no name and opens under any. The box holds
/// `kind | name_len | name | value`, valid UTF-8 for a text secret, so it is served as the
/// sample's string.
///
/// Safe: the moved value is refused, never served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_value_stripped_to_the_samples_format_does_not_open_under_another_name() {
    let (answer, owners) = moved_with_rewritten_header(|sealed| {
        let kid_len = sealed[13] as usize;
        sealed[14 + kid_len..].to_vec()
    })
    .await;
    assert_eq!(owners.as_deref(), Some("PROD-DB-PASSWORD"), "control");
    match answer {
        Ok(served) => panic!(
            "the stripped value was served under public/motd: {:?}",
            served.map(|s| s.escape_debug().to_string())
        ),
        Err(refusal) => eprintln!("refused: {refusal}"),
    }
}

/// Publish `subject` with `reply` as fast as one client can, on a thread of its own, until
/// `stop`; returns how many were published.
fn flooder(
    url: String,
    subject: String,
    reply: String,
    body: Vec<u8>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let client = async_nats::connect(url).await.unwrap();
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let _ = client
                    .publish_with_reply(subject.clone(), reply.clone(), body.clone().into())
                    .await;
                sent += 1;
                if sent % 1000 == 0 {
                    let _ = client.flush().await;
                }
            }
            sent
        })
    })
}

/// The gets 4 hosts complete in 2.5 s while one client floods `subject`.
async fn host_gets_while_flooding(
    nats: &NatsServer,
    hosts: &[Arc<wasmcloud_secrets_client::Client>],
    jwt: &str,
    subject: &str,
    reply: &str,
    body: &[u8],
) -> u64 {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = flooder(
        nats.url(),
        subject.into(),
        reply.into(),
        body.to_vec(),
        Arc::clone(&stop),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let served = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_millis(2500);
    let mut tasks = Vec::new();
    for host in hosts {
        let (host, jwt, served) = (Arc::clone(host), jwt.to_string(), Arc::clone(&served));
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                let get = host_get(&host, request("db", &jwt));
                if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), get).await {
                    if Instant::now() < until {
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let published = tokio::task::spawn_blocking(move || flood.join().unwrap())
        .await
        .unwrap();
    let gets = served.load(Ordering::Relaxed);
    eprintln!("flood {subject:<45} published {published:>8}, host gets {gets:>6}");
    // Let the backlog drain before the next measurement.
    tokio::time::sleep(Duration::from_secs(2)).await;
    gets
}

/// Attack (target 5): floods beyond the documented one (the hosts' own `get` subject):
/// `server_xkey` (an open read every host makes once; it writes a refusal-trail record),
/// the database `status` (open, answered with a sealed proof by every instance), the Piggy
/// Bank API, and `$SRV.STATS`. Safe: under each, hosts keep at least half the gets they
/// complete under a control flood on an unserved subject.
///
/// Measured (debug build, 2 shared cores), two runs: control 985 / 1,083; `server_xkey`
/// 0 / 0; database `status` 110 / 104; API `piggybank.app.x` 162 / 252; `$SRV.STATS`
/// 361 / 592 (under half in one run of two).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "known and left (docs/security.md): a server_xkey flood starves hosts completely (0 of 985: same subscription and lane as get), and status / API floods leave them 10-23% ($SRV.STATS 37-55%)"]
async fn floods_on_other_open_subjects_leave_hosts_half_their_throughput() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let (_run, _operator, jwt, _component) = operators_backend(
        &nats,
        &keys,
        &["--audit-required", "--piggybank-prefix", "piggybank"],
    )
    .await;
    let mut hosts = Vec::new();
    for _ in 0..4 {
        let host = Arc::new(host_client(&nats).await);
        host_get(&host, request("db", &jwt)).await.unwrap();
        hosts.push(host);
    }
    let inbox = "_INBOX.flood.x";
    let control = host_gets_while_flooding(&nats, &hosts, &jwt, "unserved.x", inbox, b"").await;
    assert!(control >= 20, "control: {control}");
    let floods: [(&str, &[u8]); 4] = [
        ("wasmcloud.secrets.v1alpha1.nats-kv.server_xkey", b""),
        ("piggybank.database.nats-kv.status", b""),
        ("piggybank.app.x", b""),
        ("$SRV.STATS", b""),
    ];
    let mut starved = Vec::new();
    for (subject, body) in floods {
        let gets = host_gets_while_flooding(&nats, &hosts, &jwt, subject, inbox, body).await;
        if gets * 2 < control {
            starved.push(format!("{subject}: {gets} of {control}"));
        }
    }
    assert!(starved.is_empty(), "starved: {starved:?}");
}

/// `piggybank` with `args` and `env` (no other seed inherited), against `nats`: its output.
fn piggybank_output(nats: &NatsServer, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = std::process::Command::new(piggybank_bin());
    cmd.args(args)
        .env_remove("ENCRYPTION_XKEY_SEED")
        .env_remove("TRANSIT_XKEY_SEED")
        .env_remove("PIGGYBANK_ADMIN_SEED")
        .env("NATS_ADDRESS", nats.url())
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null());
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A command that would serve is stopped after 3 s: what it printed by then is enough.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Attack (target 6): a seed given where another key (or a public key) is expected, or a
/// seed with one character changed. Safe: no output contains the seed, nor any 20-character
/// run of it. (`HOSTILE_DUMP=dir` keeps each case's output.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misplaced_or_mistyped_seed_is_never_echoed() {
    let nats = NatsServer::start();
    let user = nkeys::KeyPair::new_user().seed().unwrap();
    let account = nkeys::KeyPair::new_account().seed().unwrap();
    let xkey = nkeys::XKey::new().seed().unwrap();
    let xkey2 = nkeys::XKey::new().seed().unwrap();
    let mut typo = xkey.clone().into_bytes();
    let last = typo.len() - 3;
    typo[last] = if typo[last] == b'A' { b'B' } else { b'A' };
    let typo = String::from_utf8(typo).unwrap();
    let transit = nkeys::XKey::new().seed().unwrap();
    let previous = format!("{xkey2},{typo}");
    // (the seed that must not show, the arguments, the environment)
    type Case<'a> = (String, Vec<&'a str>, Vec<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        (
            user.clone(),
            vec!["run"],
            vec![
                ("ENCRYPTION_XKEY_SEED", &user),
                ("TRANSIT_XKEY_SEED", &transit),
            ],
        ),
        (
            typo.clone(),
            vec!["run"],
            vec![
                ("ENCRYPTION_XKEY_SEED", &typo),
                ("TRANSIT_XKEY_SEED", &transit),
            ],
        ),
        (
            typo.clone(),
            vec!["run"],
            vec![
                ("ENCRYPTION_XKEY_SEED", &xkey),
                ("TRANSIT_XKEY_SEED", &typo),
            ],
        ),
        (
            typo.clone(),
            vec!["run"],
            vec![
                ("ENCRYPTION_XKEY_SEED", &xkey),
                ("TRANSIT_XKEY_SEED", &transit),
                ("PREVIOUS_ENCRYPTION_XKEY_SEEDS", &previous),
            ],
        ),
        (
            account.clone(),
            vec!["run", "--trusted-issuers", &account],
            vec![
                ("ENCRYPTION_XKEY_SEED", &xkey),
                ("TRANSIT_XKEY_SEED", &transit),
            ],
        ),
        (
            user.clone(),
            vec!["run", "--admin-keys", &user],
            vec![
                ("ENCRYPTION_XKEY_SEED", &xkey),
                ("TRANSIT_XKEY_SEED", &transit),
            ],
        ),
        (
            xkey.clone(),
            vec!["audit", "--verify", "--instance-key", &xkey],
            vec![],
        ),
        (
            user.clone(),
            vec!["restore", "/nonexistent", "--admin-keys", &user],
            vec![],
        ),
        (
            account.clone(),
            vec!["list"],
            vec![("PIGGYBANK_ADMIN_SEED", &account)],
        ),
        (
            xkey.clone(),
            vec!["get", "db"],
            vec![("ENCRYPTION_XKEY_SEED", &typo)],
        ),
        (
            typo.clone(),
            vec!["get", "db"],
            vec![("ENCRYPTION_XKEY_SEED", &typo)],
        ),
    ];
    let mut leaked = Vec::new();
    for (i, (seed, args, env)) in cases.iter().enumerate() {
        let out = piggybank_output(&nats, args, env);
        if let Some(dir) = std::env::var_os("HOSTILE_DUMP") {
            let _ = std::fs::write(
                std::path::Path::new(&dir).join(format!("case{i}.txt")),
                &out,
            );
        }
        let runs = (0..=seed.len() - 20).any(|i| out.contains(&seed[i..i + 20]));
        eprintln!("{args:?}: {}", out.lines().last().unwrap_or(""));
        if runs {
            leaked.push(format!("{args:?}: {out}"));
        }
    }
    assert!(leaked.is_empty(), "seeds echoed: {leaked:#?}");
}

/// Attack (target 2, restore writes partially): restore checks each message's size against
/// `max_payload` and the bucket's max value size, but not the bucket's total `max_bytes`
/// (discard `new`, a limit the docs say is the operator's to set, and which anyone with the
/// JetStream API can set on an empty bucket before a restore). A backup of 8 values of
/// 100 KiB restored into a secrets bucket of 300 KiB.
///
/// Safe: the restore is refused whole (nothing written), or it writes everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_into_a_bucket_too_small_in_total_writes_nothing() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let backend = start_backend(&nats, config(&nats, &keys)).await;
    let secrets: Vec<_> = (0..8)
        .map(|i| (format!("big/{i}"), text(&"x".repeat(100 * 1024))))
        .collect();
    seed_secrets(&nats, &keys, secrets, 1).await;
    backend.stop().await;
    let seed = piggybank::admin_auth::AdminSigner::generate_seed();
    let operator = piggybank::admin_auth::AdminSigner::from_seed(&seed)
        .unwrap()
        .public_key()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("piggybank.backup");
    let file = file.to_str().unwrap();
    let (ok, _, err) = cli(
        &nats,
        &["backup", "--out", file],
        None,
        &[("PIGGYBANK_ADMIN_SEED", seed.as_str())],
    );
    assert!(ok, "{err}");

    let target = NatsServer::start();
    let js = jetstream::new(target.client().await);
    js.create_key_value(jetstream::kv::Config {
        bucket: "WASMCLOUD_SECRETS".into(),
        history: 64,
        max_bytes: 300 * 1024,
        ..Default::default()
    })
    .await
    .unwrap();
    let (ok, out, err) = cli(
        &target,
        &["restore", file],
        None,
        &[("ADMIN_KEYS", operator.as_str())],
    );
    let out = String::from_utf8_lossy(&out);
    let stored = js
        .get_stream("KV_WASMCLOUD_SECRETS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    eprintln!("restore ok={ok}\n{out}{err}\nsecrets written: {stored} of 8");
    assert!(
        (ok && stored == 8) || (!ok && stored == 0),
        "restore wrote {stored} of 8 secrets (ok={ok}): {err}"
    );
}

/// Check (target 4): an account user with the JetStream API rewrites the secrets bucket's
/// owner metadata; the legitimate instance then refuses to start. Expected (fail closed);
/// this test only confirms it, for the report's note that the docs do not say an owner
/// record can be forged this way. It asserts the refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_owner_record_stops_the_legitimate_instance_at_start() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let mut run = spawn_run(&nats, &keys, &[]);
    wait_for_backend(&nats, "wasmcloud.secrets.v1alpha1.nats-kv").await;
    run.signal(libc::SIGTERM);
    assert!(run.wait_exit(Duration::from_secs(10)).is_some());
    let js = jetstream::new(nats.client().await);
    let mut config = js
        .get_stream("KV_WASMCLOUD_SECRETS")
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    eprintln!("metadata: {:?}", config.metadata);
    config
        .metadata
        .insert("piggybank.data_key".into(), "XFORGEDBYANATTACKER".into());
    js.update_stream(config).await.unwrap();
    let mut again = spawn_run(&nats, &keys, &[]);
    let exit = again.wait_exit(Duration::from_secs(10));
    eprintln!("second start: {exit:?}");
    assert!(
        exit.is_some_and(|s| !s.success()),
        "it served a store whose owner record names another key"
    );
}

/// Attack (target 5): a flood running while the operator stops an instance. Safe: SIGTERM
/// ends it within `--drain-timeout-ms` (here 2000) plus a margin, whatever the flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_does_not_hold_up_the_drain_beyond_its_timeout() {
    let floods: [(&str, &str); 3] = [
        (
            "wasmcloud.secrets.v1alpha1.nats-kv.server_xkey",
            "_INBOX.flood.x",
        ),
        ("wasmcloud.secrets.v1alpha1.nats-kv.get", "_INBOX.flood.x"),
        ("$SRV.PING", "_INBOX.flood.x"),
    ];
    let mut slow = Vec::new();
    for (subject, reply) in floods {
        let nats = NatsServer::start();
        let keys = Keys::generate();
        let (run, _operator, _jwt, _component) = operators_backend(
            &nats,
            &keys,
            &["--audit-required", "--drain-timeout-ms", "2000"],
        )
        .await;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flood = flooder(
            nats.url(),
            subject.into(),
            reply.into(),
            vec![],
            Arc::clone(&stop),
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut run = run;
        let asked = Instant::now();
        run.signal(libc::SIGTERM);
        let exited = tokio::task::spawn_blocking(move || {
            let e = run.wait_exit(Duration::from_secs(30));
            (e, run)
        })
        .await
        .unwrap();
        let took = asked.elapsed();
        stop.store(true, Ordering::Relaxed);
        let _ = tokio::task::spawn_blocking(move || flood.join()).await;
        eprintln!(
            "drain under a {subject} flood: {took:?}, exit {:?}",
            exited.0
        );
        if exited.0.is_none() || took > Duration::from_millis(4000) {
            slow.push(format!("{subject}: {took:?} ({:?})", exited.0));
        }
    }
    assert!(slow.is_empty(), "drains beyond the timeout: {slow:?}");
}

/// Attack (target 1, within correct NATS permissions): a Piggy Bank API application, which
/// may publish only on `piggybank.<its app>.>` (docs/piggybank-api.md), reads its own
/// secret in a loop. Each read is an allowed access, so a decisions record. Once the trail is
/// full, under `--audit-required` the hosts of the whole lattice are refused.
///
/// Safe: after the application's flood, a host's get is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "known and left (docs/security.md): whoever may make allowed requests, an API application reading its own secret among them, fills the decisions trail; under --audit-required every host is then refused (fail closed)"]
async fn an_api_application_cannot_fill_the_decisions_trail_and_stop_the_hosts() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let (_run, _operator, jwt, _component) = operators_backend(
        &nats,
        &keys,
        &[
            "--audit-required",
            "--audit-max-bytes",
            "262144",
            "--piggybank-prefix",
            "piggybank",
        ],
    )
    .await;
    let host = host_client(&nats).await;
    host_get(&host, request("db", &jwt)).await.unwrap();
    let app = nats.client().await;
    let mut post = async_nats::HeaderMap::new();
    post.insert("method", "post");
    let stored = app
        .request_with_headers("piggybank.shop.token", post, "t".into())
        .await
        .unwrap();
    eprintln!("post: {:?}", String::from_utf8_lossy(&stored.payload));
    let mut reads = 0u64;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        let mut handles = Vec::new();
        for _ in 0..64 {
            let mut get = async_nats::HeaderMap::new();
            get.insert("method", "get");
            let app = app.clone();
            handles.push(tokio::spawn(async move {
                app.request_with_headers("piggybank.shop.token", get, "".into())
                    .await
                    .ok()
                    .and_then(|m| m.headers)
                    .and_then(|h| h.get("Status").map(|s| s.to_string()))
                    == Some("200".into())
            }));
        }
        for h in handles {
            if h.await.unwrap() {
                reads += 1;
            }
        }
        if reads >= 300 && host_get(&host, request("db", &jwt)).await.is_err() {
            break;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = host_get(&host, request("db", &jwt)).await.map(|_| ());
    eprintln!(
        "application reads served: {reads} in {:?}; host after: {after:?}",
        started.elapsed()
    );
    assert!(
        after.is_ok(),
        "after {reads} reads by an API application: {after:?}"
    );
}
