//! Fair serving: one publisher flooding a kind of request piggybank refuses or answers on the
//! side (`$SRV` discovery, gets whose reply subject is refused, requests too large for their
//! operation, unsigned admin and database operations) does not starve the hosts. Each flood
//! is measured against a control: the same flooder publishing as fast as it can on a subject
//! nothing serves, so the CPU the flooder and the server take is in both figures.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::{HeaderMap, Subject};

use crate::common::sealed::*;
use crate::common::*;

/// How long the hosts' gets are counted under each flood.
const WINDOW: Duration = Duration::from_millis(2500);
/// Concurrent hosts, each getting one secret after another.
const HOSTS: usize = 4;
/// A host whose request was dropped waits this long before its next get (a real host would
/// wait its whole request timeout: the point is to count drops, not to wait them out).
const HOST_TIMEOUT: Duration = Duration::from_millis(500);

/// One flood: what one attacker publishes, as fast as it can, fire and forget.
struct Flood {
    name: &'static str,
    subject: String,
    reply: &'static str,
    headers: HeaderMap,
    body: bytes::Bytes,
}

impl Flood {
    fn new(name: &'static str, subject: String, reply: &'static str, body: Vec<u8>) -> Self {
        Flood {
            name,
            subject,
            reply,
            headers: HeaderMap::new(),
            body: body.into(),
        }
    }
}

/// Publish `flood` from its own connection, on a thread of its own (so the hosts' runtime is
/// not the flooder's), until `stop`; returns how many it published.
fn start_flooder(
    url: String,
    flood: &Flood,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    let (subject, reply) = (
        Subject::from(flood.subject.as_str()),
        Subject::from(flood.reply),
    );
    let (headers, body) = (flood.headers.clone(), flood.body.clone());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let client = async_nats::connect(url).await.unwrap();
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let _ = match headers.is_empty() {
                    true => {
                        client
                            .publish_with_reply(subject.clone(), reply.clone(), body.clone())
                            .await
                    }
                    false => {
                        client
                            .publish_with_reply_and_headers(
                                subject.clone(),
                                reply.clone(),
                                headers.clone(),
                                body.clone(),
                            )
                            .await
                    }
                };
                sent += 1;
                if sent % 1000 == 0 {
                    let _ = client.flush().await;
                }
            }
            sent
        })
    })
}

/// What the backend has shed so far, by reason (`status`), once it answers again.
async fn shed_by_reason(nats: &NatsServer) -> serde_json::Value {
    let client = nats.client().await;
    for _ in 0..50 {
        let asked = client.request(format!("{DB}.status"), "".into());
        if let Ok(Ok(reply)) = tokio::time::timeout(Duration::from_millis(500), asked).await {
            let status: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
            return status["shed"].clone();
        }
    }
    serde_json::Value::Null
}

/// The gets `HOSTS` hosts complete in `WINDOW` while `flood` runs.
async fn host_gets_under(
    nats: &NatsServer,
    hosts: &[Arc<wasmcloud_secrets_client::Client>],
    jwt: &str,
    flood: &Flood,
) -> u64 {
    let stop = Arc::new(AtomicBool::new(false));
    let flooder = start_flooder(nats.url(), flood, Arc::clone(&stop));
    // Let the flood reach its pace before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let served = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + WINDOW;
    let mut tasks = Vec::new();
    for host in hosts {
        let (host, jwt, served) = (Arc::clone(host), jwt.to_string(), Arc::clone(&served));
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                let get = host_get(&host, request("db", &jwt));
                if let Ok(Ok(secret)) = tokio::time::timeout(HOST_TIMEOUT, get).await {
                    assert_eq!(secret.string_secret.as_deref(), Some("pw"));
                    if Instant::now() < until {
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let published = tokio::task::spawn_blocking(move || flooder.join().unwrap())
        .await
        .unwrap();
    let gets = served.load(Ordering::Relaxed);
    let shed = shed_by_reason(nats).await;
    eprintln!(
        "fairness: flood {:<22} published {published:>8}, host gets {gets:>6}, shed {shed}",
        flood.name
    );
    gets
}

/// Attack: one client floods the backend with requests it refuses or answers on the side,
/// each kind in turn: `$SRV.PING` (every instance answers), gets whose reply subject the
/// policy refuses (`$JS.API...`: never answered), gets larger than `--max-request-bytes`
/// (refused 413), unsigned `put_secret` and database `lock` (refused 403 with
/// `--admin-keys`). Before, a refused-reply flood left the hosts 1 get in 4 s against 3,493
/// under the control: refused requests took the protocol's buffer slots before their reply
/// subject was checked, and `$SRV` was answered inside the one receive loop.
/// Safe: under each flood the hosts complete at least half the gets they complete while the
/// same flooder publishes on a subject nothing serves (the control, which must itself serve
/// gets: the hosts work).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "issue 18 part 4 target, not met yet: refused-reply get and unsigned put_secret \
            floods on the hosts' own subject still starve them (see the branch report)"]
async fn one_flooding_publisher_leaves_hosts_at_least_half_their_throughput() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let (_, admin_key) = admin_seed();
    let run = spawn_run(&nats, &keys, &["--admin-keys", admin_key.public_key()]);
    wait_for_backend(&nats, PROTOCOL).await;
    let signed_admin = admin(nats.client().await).with_signer(Some(admin_key.clone()));
    signed_admin
        .put_secret("db", text("pw"), None, None)
        .await
        .unwrap();
    let issuer = Issuer::new();
    let (jwt, entity) = issuer.component();
    signed_admin
        .add_mapping(&entity, &names(&["db"]))
        .await
        .unwrap();
    let mut hosts = Vec::new();
    for _ in 0..HOSTS {
        hosts.push(Arc::new(host_client(&nats).await));
    }
    // Warm up: every host is served before anything is measured.
    for host in &hosts {
        host_get(host, request("db", &jwt)).await.unwrap();
    }

    let small = b"{}".to_vec();
    let too_large = vec![b'x'; piggybank::config::DEFAULT_MAX_REQUEST_BYTES + 1];
    let control = Flood::new(
        "control (unserved)",
        "unserved.flood".into(),
        "_INBOX.flood.x",
        small.clone(),
    );
    let floods = [
        Flood::new("$SRV.PING", "$SRV.PING".into(), "_INBOX.flood.x", vec![]),
        Flood::new(
            "get, refused reply",
            format!("{PROTOCOL}.get"),
            "$JS.API.STREAM.PURGE.X",
            small.clone(),
        ),
        Flood::new(
            "get, too large",
            format!("{PROTOCOL}.get"),
            "_INBOX.flood.x",
            too_large,
        ),
        Flood::new(
            "put_secret, unsigned",
            format!("{PROTOCOL}.put_secret"),
            "_INBOX.flood.x",
            small.clone(),
        ),
        Flood::new(
            "database lock, unsigned",
            format!("{DB}.lock"),
            "_INBOX.flood.x",
            small.clone(),
        ),
    ];
    let baseline = host_gets_under(&nats, &hosts, &jwt, &control).await;
    assert!(
        baseline >= 20,
        "the control serves the hosts (positive control): {baseline} gets"
    );
    let mut starved = Vec::new();
    for flood in &floods {
        let gets = host_gets_under(&nats, &hosts, &jwt, flood).await;
        if gets * 2 < baseline {
            starved.push(format!("{}: {gets} of {baseline}", flood.name));
        }
    }
    drop(run);
    assert!(
        starved.is_empty(),
        "floods that left the hosts under half their control throughput: {starved:?}"
    );
}
