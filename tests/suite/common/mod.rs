//! Shared test fixtures: a piggybank backend running in-process, host-side clients, the
//! CLI as a child process, and load. The real `nats-server -js` (free loopback port, temp
//! dir, killed on drop) and the wascap-minted JWTs come from `piggybank-testkit`, which the
//! benchmark shares.
#![allow(dead_code)]

pub mod layout;
pub mod pki;
pub mod provider;
pub mod sealed;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nkeys::XKey;
use piggybank::client::AdminClient;
use piggybank::server::RunConfig;
// The nats-server fixture and the JWT maker, shared with the benchmark; not every test file
// uses each of them.
#[allow(unused_imports)]
pub use piggybank_testkit::{
    free_port, host_jwt, nats_with_max_payload, unique_name, wait_listening, Issuer, NatsServer,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wasmcloud_secrets_types::{Application, Context, SecretRequest};
use zeroize::Zeroizing;

pub struct Keys {
    pub transit: Zeroizing<String>,
    pub encryption: Zeroizing<String>,
}

impl Keys {
    pub fn generate() -> Self {
        Keys {
            transit: piggybank::keys::generate_seed(),
            encryption: piggybank::keys::generate_seed(),
        }
    }

    pub fn transit_public(&self) -> String {
        XKey::from_seed(&self.transit).unwrap().public_key()
    }
}

pub fn config(nats: &NatsServer, keys: &Keys) -> RunConfig {
    let mut c = RunConfig::new(keys.encryption.clone(), keys.transit.clone());
    c.nats_address = nats.url();
    c
}

/// A backend running in-process; stopped (drained) on `stop`, aborted on drop.
pub struct Running {
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), piggybank::server::ServerError>>>,
}

impl Running {
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("backend task")
                .expect("backend ran cleanly");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

pub async fn start_backend(nats: &NatsServer, config: RunConfig) -> Running {
    let client = nats.client().await;
    start_backend_with(&client, config).await
}

/// Start a backend on a server that requires a user and password.
pub async fn start_backend_as(
    nats: &NatsServer,
    config: RunConfig,
    user: &str,
    password: &str,
) -> Running {
    let client = async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
        .connect(nats.url())
        .await
        .expect("connect as the backend's user");
    start_backend_with(&client, config).await
}

/// Start a backend, and wait until `client` gets its `server_xkey` answered.
pub async fn start_backend_with(client: &async_nats::Client, config: RunConfig) -> Running {
    let prefix = config.subject_prefix();
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(piggybank::server::run(config, async {
        let _ = rx.await;
    }));
    wait_answering(client, &prefix).await;
    Running {
        shutdown: Some(tx),
        task: Some(task),
    }
}

/// A connection for a serve loop of a test's own, each subscription buffering at most
/// `capacity` messages.
pub async fn serve_connection(
    nats: &NatsServer,
    capacity: usize,
) -> piggybank::serve::ServeConnection {
    let options = async_nats::ConnectOptions::new();
    piggybank::serve::ServeConnection::connect(&nats.url(), options, capacity, "test")
        .await
        .expect("connect the serve loop's connection")
}

/// Wait until something answers `{prefix}.server_xkey`.
pub async fn wait_for_backend(nats: &NatsServer, prefix: &str) {
    wait_answering(&nats.client().await, prefix).await;
}

async fn wait_answering(client: &async_nats::Client, prefix: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let asked = client.request(format!("{prefix}.server_xkey"), "".into());
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), asked).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("backend did not come up on {prefix}");
}

pub fn admin(nats_client: async_nats::Client) -> AdminClient {
    AdminClient::new(nats_client, "wasmcloud.secrets", "v1alpha1", "nats-kv")
}

pub fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

pub fn request(key: &str, entity_jwt: &str) -> SecretRequest {
    SecretRequest {
        key: key.to_string(),
        field: None,
        version: None,
        context: Context {
            entity_jwt: entity_jwt.to_string(),
            host_jwt: host_jwt(),
            application: Application {
                name: Some("app".into()),
                policy: r#"{"type":"properties.secret.wasmcloud.dev/v1alpha1","properties":{}}"#
                    .into(),
            },
        },
    }
}

/// The real host-side client.
pub async fn host_client(nats: &NatsServer) -> wasmcloud_secrets_client::Client {
    wasmcloud_secrets_client::Client::new("nats-kv", "wasmcloud.secrets", nats.client().await)
        .await
        .expect("secrets client")
}

/// Get through the real client; `Err` carries the client's error text.
pub async fn host_get(
    client: &wasmcloud_secrets_client::Client,
    req: SecretRequest,
) -> Result<wasmcloud_secrets_types::Secret, String> {
    client
        .get(req, XKey::new())
        .await
        .map_err(|e| e.to_string())
}

/// The `piggybank` binary under test: this build's, or the one `PIGGYBANK_TEST_BIN` names, to
/// check that a regression test fails on an older build (docs/testing.md).
pub fn piggybank_bin() -> PathBuf {
    std::env::var_os("PIGGYBANK_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_piggybank")))
}

pub fn assert_private_file(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{} must be 0600", path.display());
}

/// Get through the real client, expecting a refusal; returns the client's error text.
pub async fn host_refusal(client: &wasmcloud_secrets_client::Client, req: SecretRequest) -> String {
    match host_get(client, req).await {
        Ok(_) => panic!("expected the backend to refuse this get"),
        Err(e) => e,
    }
}

/// A `piggybank` child process, killed on drop.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on a child we spawned and have not reaped.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Wait for exit, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawn `piggybank run` against `nats` with `keys` (through the env, as operators do).
pub fn spawn_run(nats: &NatsServer, keys: &Keys, extra: &[&str]) -> Proc {
    let child = Command::new(piggybank_bin())
        .arg("run")
        .args(extra)
        .env("ENCRYPTION_XKEY_SEED", keys.encryption.as_str())
        .env("TRANSIT_XKEY_SEED", keys.transit.as_str())
        .env("NATS_ADDRESS", nats.url())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn piggybank run");
    Proc { child }
}

/// The records `piggybank audit --json` prints with these extra arguments.
pub fn audit_json(nats: &NatsServer, extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["audit", "--json"];
    args.extend_from_slice(extra);
    let (ok, out, err) = cli(nats, &args, None, &[]);
    assert!(ok, "piggybank audit failed: {err}");
    String::from_utf8_lossy(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON record per line"))
        .collect()
}

/// `piggybank audit --verify`: (success, stdout and stderr).
pub fn audit_verify(nats: &NatsServer) -> (bool, String) {
    let (ok, out, err) = cli(nats, &["audit", "--verify"], None, &[]);
    (ok, format!("{}{err}", String::from_utf8_lossy(&out)))
}

/// Run a `piggybank` client command; returns (success, stdout bytes, stderr text).
pub fn cli(
    nats: &NatsServer,
    args: &[&str],
    stdin: Option<&[u8]>,
    env: &[(&str, &str)],
) -> (bool, Vec<u8>, String) {
    let url = nats.url();
    let mut all = vec![("NATS_ADDRESS", url.as_str())];
    all.extend_from_slice(env);
    cli_at(&all, args, stdin)
}

/// Run the CLI with exactly these env additions (NATS_ADDRESS among them); no seeds are
/// inherited from the test's environment.
pub fn cli_at(
    env: &[(&str, &str)],
    args: &[&str],
    stdin: Option<&[u8]>,
) -> (bool, Vec<u8>, String) {
    let out = run_piggybank(env, args, stdin);
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Run `piggybank` with `env` added, stdin from `stdin`; no seed, key, share or prefix is
/// inherited from the test's environment.
fn run_piggybank(
    env: &[(&str, &str)],
    args: &[&str],
    stdin: Option<&[u8]>,
) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(piggybank_bin())
        .args(args)
        .env_remove("ENCRYPTION_XKEY_SEED")
        .env_remove("TRANSIT_XKEY_SEED")
        .env_remove("PIGGYBANK_DATABASE_KEY")
        .env_remove("PIGGYBANK_SHARE")
        .env_remove("PIGGYBANK_PREFIX")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn piggybank");
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        input.write_all(bytes).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

pub fn text(s: &str) -> piggybank::store::envelope::SecretValue {
    piggybank::store::envelope::SecretValue::String(Zeroizing::new(s.to_string()))
}

pub fn bytes(b: &[u8]) -> piggybank::store::envelope::SecretValue {
    piggybank::store::envelope::SecretValue::Binary(Zeroizing::new(b.to_vec()))
}

/// A nats-server with a piggybank backend on it (default config) and an admin client:
/// the start of most tests. Destructure it to keep the parts alive for the whole test.
pub struct Deployed {
    pub nats: NatsServer,
    pub keys: Keys,
    pub backend: Running,
    pub admin: AdminClient,
}

pub async fn deployed() -> Deployed {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let backend = start_backend(&nats, config(&nats, &keys)).await;
    let admin = admin(nats.client().await);
    Deployed {
        nats,
        keys,
        backend,
        admin,
    }
}

/// Reads and writes going on while something else happens (a rekey, a rotation): one task
/// cycles host gets over `expected` and counts every get that fails or serves another
/// value; another writes `w1`, `w2`, ... to the `hot` names and remembers the last value of
/// each.
pub struct ReadWriteLoad {
    stop: Arc<AtomicBool>,
    reads: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    last: Arc<Mutex<HashMap<String, String>>>,
    hot: usize,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl ReadWriteLoad {
    pub fn start(
        host: wasmcloud_secrets_client::Client,
        jwt: String,
        expected: Vec<(String, String)>,
        admin: AdminClient,
        hot: Vec<String>,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (reads, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let last: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let reader = {
            let (stop, reads, failed) = (stop.clone(), reads.clone(), failed.clone());
            tokio::spawn(async move {
                for (name, value) in expected.iter().cycle() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let got = host_get(&host, request(name, &jwt)).await;
                    if got.map(|s| s.string_secret).ok() != Some(Some(value.clone())) {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        let hot_count = hot.len();
        let writer = {
            let (stop, last) = (stop.clone(), last.clone());
            tokio::spawn(async move {
                for (j, name) in (1..).zip(hot.iter().cycle()) {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let value = format!("w{j}");
                    admin
                        .put_secret(name, text(&value), None, None)
                        .await
                        .unwrap();
                    last.lock().unwrap().insert(name.clone(), value);
                }
            })
        };
        Self {
            stop,
            reads,
            failed,
            last,
            hot: hot_count,
            reader,
            writer,
        }
    }

    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Wait until reads are flowing and every hot name has been written once.
    pub async fn flowing(&self) {
        while self.reads() < 10 || self.last.lock().unwrap().len() < self.hot {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stop both tasks; returns (reads, failed reads, the last value written to each name).
    pub async fn stop(self) -> (u64, u64, HashMap<String, String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.reader.await.unwrap();
        self.writer.await.unwrap();
        let last = self.last.lock().unwrap().clone();
        let reads = self.reads.load(Ordering::Relaxed);
        (reads, self.failed.load(Ordering::Relaxed), last)
    }
}

/// Run a `piggybank` client command against `nats`; returns (exit code, stdout, stderr).
pub fn cli_code(
    nats: &NatsServer,
    args: &[&str],
    stdin: Option<&[u8]>,
    env: &[(&str, &str)],
) -> (Option<i32>, String, String) {
    let url = nats.url();
    let mut all = vec![("NATS_ADDRESS", url.as_str())];
    all.extend_from_slice(env);
    let out = run_piggybank(&all, args, stdin);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Spawn `piggybank run` in sealed mode (no seeds at all) against `nats`.
pub fn spawn_sealed_run(nats: &NatsServer, extra: &[&str]) -> Proc {
    sealed_run(nats, extra, Stdio::null())
}

/// Spawn `piggybank run` in sealed mode, its log (debug) appended to `log`: for a test that
/// prints what each instance did when it fails.
pub fn spawn_sealed_run_logged(nats: &NatsServer, extra: &[&str], log: &Path) -> Proc {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open the instance's log");
    sealed_run(nats, extra, Stdio::from(file))
}

fn sealed_run(nats: &NatsServer, extra: &[&str], stderr: Stdio) -> Proc {
    let child = Command::new(piggybank_bin())
        .arg("run")
        .args(extra)
        .env_remove("ENCRYPTION_XKEY_SEED")
        .env_remove("TRANSIT_XKEY_SEED")
        .env_remove("PIGGYBANK_PREFIX")
        .env("NATS_ADDRESS", nats.url())
        .env("RUST_LOG", "piggybank=debug,async_nats=debug")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn piggybank run");
    Proc { child }
}

/// The replies to one `{prefix}.database.status` sent now, gathered for 300 ms after the last.
pub async fn database_statuses(
    client: &async_nats::Client,
    prefix: &str,
) -> Vec<serde_json::Value> {
    use futures::StreamExt as _;
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.unwrap();
    client
        .publish_with_reply(format!("{prefix}.database.status"), inbox, "".into())
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(300), replies.next()).await
    {
        if let Ok(value) = serde_json::from_slice(&msg.payload) {
            out.push(value);
        }
    }
    out
}

/// Wait until `count` instances answer `{prefix}.database.status` (they subscribe it a
/// moment after `server_xkey`).
pub async fn wait_database_instances(
    client: &async_nats::Client,
    prefix: &str,
    count: usize,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let all = database_statuses(client, prefix).await;
        if all.len() >= count {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "{count} instances never answered {prefix}.database.status (got {})",
            all.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Write secrets straight into the backend's bucket in the envelope format piggybank
/// writes (sealed with `keys`' data key), `concurrency` puts at a time: the fastest way to
/// seed thousands of real secrets. The backends' mirrors pick them up from the KV watch.
pub async fn seed_secrets(
    nats: &NatsServer,
    keys: &Keys,
    secrets: Vec<(String, piggybank::store::envelope::SecretValue)>,
    concurrency: usize,
) {
    use futures::StreamExt as _;
    let data_key = piggybank::keys::DataKey::from_seed(&keys.encryption).unwrap();
    let js = async_nats::jetstream::new(nats.client().await);
    let kv = js
        .get_key_value(piggybank::config::DEFAULT_SECRETS_BUCKET)
        .await
        .expect("the backend created its secrets bucket");
    let created = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp() * 1000).unwrap();
    futures::stream::iter(secrets)
        .map(|(name, value)| {
            let sealed =
                piggybank::store::envelope::seal(&value, &name, &data_key, created).unwrap();
            let kv = kv.clone();
            async move {
                kv.put(name.as_str(), sealed.into())
                    .await
                    .unwrap_or_else(|e| panic!("seed {name}: {e}"))
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await;
}

/// Wait until the backend lists `count` secrets under `prefix` (its mirror has caught up).
pub async fn wait_listed(admin: &AdminClient, prefix: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = admin.list_secrets(prefix).await.unwrap().len();
        if listed == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "backend lists {listed} secrets under {prefix:?}, expected {count}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every entry of every KV bucket on the server: (bucket, key) -> (revision, value).
pub async fn kv_state(
    client: &async_nats::Client,
) -> std::collections::BTreeMap<(String, String), (u64, Vec<u8>)> {
    use futures::StreamExt as _;
    let js = async_nats::jetstream::new(client.clone());
    let mut names: Vec<String> = js.stream_names().map(|n| n.unwrap()).collect().await;
    names.retain(|n| n.starts_with("KV_"));
    let mut state = std::collections::BTreeMap::new();
    for stream in names {
        let bucket = stream.trim_start_matches("KV_").to_string();
        let kv = js.get_key_value(&bucket).await.unwrap();
        let keys: Vec<String> = match kv.keys().await {
            Ok(keys) => keys.map(|k| k.unwrap()).collect().await,
            Err(_) => Vec::new(),
        };
        for key in keys {
            if let Some(entry) = kv.entry(&key).await.unwrap() {
                state.insert(
                    (bucket.clone(), key),
                    (entry.revision, entry.value.to_vec()),
                );
            }
        }
    }
    state
}

/// A sealed-mode config (no keys) with the Piggy Bank API and database operations on
/// `piggybank`.
pub fn sealed_api_config(nats: &NatsServer) -> RunConfig {
    let mut c = RunConfig::new(Zeroizing::default(), Zeroizing::default());
    c.nats_address = nats.url();
    c.piggybank_prefix = Some("piggybank".into());
    c
}

/// A sealed-mode backend in this process, answering `piggybank.database.status`; stopped
/// when the returned sender drops.
pub async fn start_sealed_backend(nats: &NatsServer) -> oneshot::Sender<()> {
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(piggybank::server::run(sealed_api_config(nats), async {
        let _ = rx.await;
    }));
    let client = nats.client().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let asked = client.request("piggybank.database.status", "".into());
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), asked).await {
            return tx;
        }
        assert!(Instant::now() < deadline, "backend did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the collector received: (path, body) of each POST.
pub type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// A collector on a free loopback port: answers 200 to every POST and keeps the bodies.
pub fn otlp_collector() -> (u16, Received) {
    use std::io::{BufRead as _, Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let received: Received = Arc::default();
    let keep = std::sync::Arc::clone(&received);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let keep = std::sync::Arc::clone(&keep);
            std::thread::spawn(move || {
                let mut reader = std::io::BufReader::new(stream);
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut length = 0usize;
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).unwrap_or(0) == 0 {
                            return;
                        }
                        let header = header.trim_end();
                        if header.is_empty() {
                            break;
                        }
                        if let Some((name, value)) = header.split_once(':') {
                            if name.eq_ignore_ascii_case("content-length") {
                                length = value.trim().parse().unwrap_or(0);
                            }
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let path = request_line.split(' ').nth(1).unwrap_or("").to_string();
                    keep.lock().unwrap().push((path, body));
                    let stream = reader.get_mut();
                    let _ = stream.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
                    );
                }
            });
        }
    });
    (port, received)
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Whether `haystack` holds `needle`'s bytes.
pub fn contains_bytes(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Wait until every one of `wanted` appears in some export the collector received (all of
/// them to `/v1/metrics`), or fail after `within`.
pub async fn wait_for_export(received: &Received, wanted: &[&str], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let all = received.lock().unwrap().clone();
        let missing: Vec<&str> = wanted
            .iter()
            .copied()
            .filter(|w| !all.iter().any(|(_, body)| contains_bytes(body, w)))
            .collect();
        if missing.is_empty() {
            assert!(
                all.iter().all(|(path, _)| path == "/v1/metrics"),
                "{:?}",
                all.iter().map(|(p, _)| p).collect::<Vec<_>>()
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not exported: {missing:?} ({} exports received)",
            all.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Connect to the NATS server of a `piggybank dev` run whose data is in `dir`, as `role` of
/// its NATS layout (the seed file `dir/nats/<role>.nk`): dev's server refuses anyone else.
pub async fn connect_dev_role(
    address: &str,
    dir: &Path,
    role: &str,
) -> Result<async_nats::Client, String> {
    let text =
        std::fs::read_to_string(dir.join(format!("nats/{role}.nk"))).map_err(|e| e.to_string())?;
    let seed = text
        .lines()
        .find(|l| l.starts_with("SU"))
        .ok_or("no seed")?
        .to_string();
    async_nats::ConnectOptions::with_nkey(seed)
        .connect(address)
        .await
        .map_err(|e| e.to_string())
}

/// What `keys.env` of a dev run in `dir` sets to make the CLI its admin role.
pub fn dev_admin_env(dir: &Path) -> [(&'static str, String); 2] {
    [
        ("NATS_NKEY", dir.join("nats/admin.nk").display().to_string()),
        (
            "NATS_INBOX_PREFIX",
            piggybank::nats_layout::admin_inbox_prefix("nats-kv"),
        ),
    ]
}
