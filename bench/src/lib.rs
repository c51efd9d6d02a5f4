//! `piggybank-bench`: host-style gets against the backend, measured against the protocol's
//! limits in the same run, plus revocation latency across two instances and (with `--scale`)
//! startup, memory and latency at several store sizes.
//!
//! Every get goes through the real `wasmcloud-secrets-client` with a one-time xkey, as a
//! host's does. By default the benchmark starts its own `nats-server` (the test kit's
//! fixture: free loopback port, temporary dir) and backend; with `--nats-address` it measures
//! a running backend instead. It uses only the `piggybank` library's public API, and the
//! test kit's JWT maker for its caller's identity.
//!
//! # Layout
//! - this file: the flags, the run, the tables, bad traffic and revocation.
//! - `audit`: what the audit trail kept of each backend run: gets sent, records written,
//!   records the backend counted as dropped.
//! - `limits`: the protocol floor and the bare echo, served from this process.
//! - `load`: closed-loop load and its statistics.
//! - `scale`: the scale table, against `piggybank run` processes (the `piggybank` binary
//!   beside this one).

mod audit;
mod limits;
mod load;
mod scale;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use nkeys::XKey;
use piggybank::admin_auth::AdminSigner;
use piggybank::client::AdminClient;
use piggybank::config;
use piggybank::keys::{generate_seed, TransitKey};
use piggybank::server::{self, RunConfig};
use piggybank::store::envelope::SecretValue;
use piggybank::MappingChange;
use piggybank_testkit::{host_jwt, Issuer, NatsServer};
use tokio::sync::oneshot;
use wasmcloud_secrets_types::{Application, Context, SecretRequest, SecretResponse};
use zeroize::Zeroizing;

use load::Stats;

#[derive(Parser, Clone, Debug)]
#[command(
    name = "piggybank-bench",
    version,
    about = "Measure host-style gets against the protocol's limits (starts its own NATS and backend)"
)]
pub struct BenchArgs {
    /// Seconds measured per workload and concurrency
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Seconds of unrecorded warm-up before each measurement
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Concurrency levels (comma-separated)
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub concurrency: Vec<usize>,
    /// Measure a running backend on this NATS server instead of starting one
    #[arg(long)]
    pub nats_address: Option<String>,
    /// Name of the backend to measure (with --nats-address)
    #[arg(short = 'n', long = "name", default_value = config::DEFAULT_BACKEND_NAME)]
    pub backend_name: String,
    /// Subject base of the backend to measure
    #[arg(short = 's', long, default_value = config::DEFAULT_SUBJECT_BASE)]
    pub subject_base: String,
    /// Prefix of the measured backend's database operations, whose `status` counts dropped
    /// audit records (with --nats-address; the built-in backend uses the default)
    #[arg(long, default_value = "piggybank", requires = "nats_address")]
    pub piggybank_prefix: String,
    /// Revocations to time across two instances (0 skips; needs the built-in server)
    #[arg(long, default_value_t = 100)]
    pub revocations: usize,
    /// Store sizes for the scale table, e.g. 10,10000,100000 (empty skips)
    #[arg(long, value_delimiter = ',')]
    pub scale: Vec<usize>,
    /// Entities mapped in each store of the scale table
    #[arg(long, default_value_t = 10_000)]
    pub mapped_entities: usize,
    /// Run only the scale table (no get benchmark, bad traffic or revocation)
    #[arg(long, requires = "scale", conflicts_with = "nats_address")]
    pub scale_only: bool,
    /// Skip the mixed good/bad traffic measurement
    #[arg(long)]
    pub no_bad_traffic: bool,
    /// nats-server binary used when the benchmark starts its own server
    #[arg(long, default_value = "nats-server")]
    pub nats_server_bin: PathBuf,
    /// Run the built-in backend with a generated admin key and sign every admin request
    /// (shows that signed administration leaves the get path alone)
    #[arg(long, conflicts_with = "nats_address")]
    pub admin_keys: bool,
    /// How the benchmark's component is granted its secret: by its key, or by the wadm
    /// application its host names (`bench`), to compare the two paths of a get
    #[arg(long, value_enum, default_value = "key")]
    pub grant: Grant,
}

/// How a get is allowed: the entity's own grant, or its application's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Grant {
    Key,
    Application,
}

/// The application every benchmark get names (`context.application.name`).
const APPLICATION: &str = "bench";

/// The secret every get asks for, and the value it holds (the size of a typical password).
const SECRET: &str = "bench/secret";
const VALUE: &str = "0123456789abcdef0123456789abcdef";
/// Name the protocol floor answers under.
const FLOOR: &str = "pgb-bench-floor";

/// A caller with a component identity, as hosts present one.
struct Caller {
    entity_jwt: String,
    entity: String,
    host_jwt: String,
}

impl Caller {
    /// A component JWT from a fresh issuer (so a backend measured must trust any issuer),
    /// and a host JWT.
    fn new() -> Self {
        let (entity_jwt, entity) = Issuer::new().component();
        Caller {
            entity_jwt,
            entity,
            host_jwt: host_jwt(),
        }
    }

    fn request(&self, key: &str) -> SecretRequest {
        SecretRequest {
            key: key.into(),
            field: None,
            version: None,
            context: Context {
                entity_jwt: self.entity_jwt.clone(),
                host_jwt: self.host_jwt.clone(),
                application: Application {
                    name: Some(APPLICATION.into()),
                    policy: format!(
                        r#"{{"type":"{}","properties":{{}}}}"#,
                        wasmcloud_secrets_types::SECRET_POLICY_PROPERTIES_TYPE
                    ),
                },
            },
        }
    }
}

/// A backend the benchmark runs in-process.
struct InProcess {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl InProcess {
    async fn start(config: &RunConfig) -> anyhow::Result<Self> {
        let started = server::start(config).await?;
        let (stop, stopped) = oneshot::channel::<()>();
        let config = config.clone();
        let task = tokio::spawn(async move {
            let _ = server::serve(started, &config, async {
                let _ = stopped.await;
            })
            .await;
        });
        Ok(InProcess {
            stop: Some(stop),
            task,
        })
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = self.task.await;
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let duration = Duration::from_secs_f64(args.duration);
    let warmup = Duration::from_secs_f64(args.warmup);
    if args.scale_only {
        let piggybank = scale::piggybank_bin()?;
        let nats = NatsServer::try_start(&args.nats_server_bin)?;
        let (sizes, entities) = (&args.scale, args.mapped_entities);
        return scale::run(&piggybank, &nats.url(), sizes, entities, &args.subject_base).await;
    }
    let caller = Arc::new(Caller::new());
    // The scale table needs the `piggybank` binary: find it before the first measurement.
    let piggybank = match (args.scale.is_empty(), &args.nats_address) {
        (false, None) => Some(scale::piggybank_bin()?),
        _ => None,
    };
    // With --admin-keys, the built-in backend requires signed administration, and gets this
    // key's public half; the admin client signs with it.
    let signer = if args.admin_keys {
        Some(AdminSigner::from_seed(&AdminSigner::generate_seed())?)
    } else {
        None
    };

    // The system under test: our own NATS and backend, or a running one.
    let mut local_nats = None;
    let mut in_process = None;
    let mut run_config = None;
    let nats_url = match &args.nats_address {
        Some(url) => url.clone(),
        None => {
            let nats = NatsServer::try_start(&args.nats_server_bin)?;
            let url = nats.url();
            local_nats = Some(nats);
            let mut config = RunConfig::new(generate_seed(), generate_seed());
            config.nats_address = url.clone();
            config.name = args.backend_name.clone();
            config.subject_base = args.subject_base.clone();
            config.admin_keys = signer.iter().map(|s| s.public_key().to_string()).collect();
            in_process = Some(InProcess::start(&config).await?);
            run_config = Some(config);
            url
        }
    };
    let nats = async_nats::connect(&nats_url)
        .await
        .with_context(|| format!("cannot connect to NATS at {nats_url}"))?;
    let admin = AdminClient::new(
        nats.clone(),
        &args.subject_base,
        config::DEFAULT_API_VERSION,
        &args.backend_name,
    )
    .with_signer(signer);
    let value = SecretValue::String(Zeroizing::new(VALUE.to_string()));
    admin
        .put_secret(SECRET, value, None, None)
        .await
        .context("cannot put the benchmark's secret (is the backend running?)")?;
    let granted = BTreeSet::from([SECRET.to_string()]);
    match args.grant {
        Grant::Key => admin.add_mapping(&caller.entity, &granted).await?,
        Grant::Application => admin.add_app_mapping(APPLICATION, &granted).await?,
    }

    // The limits, served from this process.
    let floor_response = serde_json::to_vec(&SecretResponse {
        secret: Some(wasmcloud_secrets_types::Secret {
            version: "1".into(),
            string_secret: Some(VALUE.into()),
            binary_secret: None,
        }),
        error: None,
    })?;
    let floor_transit = TransitKey::from_seed(&generate_seed())?;
    let (request_size, reply_size) = payload_sizes(&caller, &floor_transit, &floor_response)?;
    // Each responder has its own connection, as the backend does: a reply then crosses
    // nats-server between two connections in every workload.
    let floor_nats = async_nats::connect(&nats_url).await?;
    let echo_nats = async_nats::connect(&nats_url).await?;
    let floor = limits::spawn_floor(
        &floor_nats,
        &args.subject_base,
        FLOOR,
        floor_transit,
        Bytes::from(floor_response),
    )
    .await?;
    let echo_subject = format!("pgb-bench.echo.{}", std::process::id());
    let echo = limits::spawn_echo(
        &echo_nats,
        &echo_subject,
        Bytes::from(vec![b'r'; reply_size]),
    )
    .await?;

    let backend_client = Arc::new(
        wasmcloud_secrets_client::Client::new(&args.backend_name, &args.subject_base, nats.clone())
            .await?,
    );
    let floor_client = Arc::new(
        wasmcloud_secrets_client::Client::new(FLOOR, &args.subject_base, nats.clone()).await?,
    );

    println!(
        "piggybank-bench: NATS {nats_url}, {}; {:.1} s per point after {:.1} s warm-up; \
         request {request_size} B, reply {reply_size} B; granted by {:?}",
        if args.nats_address.is_some() {
            format!("backend {:?} (external)", args.backend_name)
        } else if args.admin_keys {
            "backend in this process, admin signed (--admin-keys)".to_string()
        } else {
            "backend in this process".to_string()
        },
        duration.as_secs_f64(),
        warmup.as_secs_f64(),
        args.grant,
    );
    println!(
        "{:<8} {:>4} {:>10} {:>9} {:>9} {:>8} {:>7}",
        "workload", "c", "gets/s", "p50 µs", "p99 µs", "n", "errors"
    );
    // The audit trail of the measured backend, read after each of its runs.
    let database_prefix = match &run_config {
        Some(config) => config.database_prefix().to_string(),
        None => args.piggybank_prefix.clone(),
    };
    let mut trail =
        audit::AuditProbe::open(&nats, &args.backend_name, &database_prefix, &caller.entity)
            .await?;
    let mut audited = Vec::new();
    let mut rows = Vec::new();
    for &c in &args.concurrency {
        let before = match &mut trail {
            Some(trail) => Some(trail.tally().await?),
            None => None,
        };
        let backend = host_gets(&backend_client, &caller, c, warmup, duration).await;
        if let (Some(trail), Some(before)) = (&mut trail, before) {
            audited.push((c, backend, trail.phase(before, backend.sent).await?));
        }
        let floor_stats = host_gets(&floor_client, &caller, c, warmup, duration).await;
        let bare = echo_requests(&nats, &echo_subject, request_size, c, warmup, duration).await;
        for (name, s) in [
            ("backend", &backend),
            ("floor", &floor_stats),
            ("bare", &bare),
        ] {
            print_row(name, c, s);
        }
        rows.push((c, backend, floor_stats, bare));
    }
    print_ratios(&rows);
    match &trail {
        Some(_) => {
            audit::print_header(&piggybank::audit::stream_name(&args.backend_name));
            for (c, stats, phase) in &audited {
                audit::print_row(*c, stats, phase);
            }
            audit::print_sealing_cost()?;
        }
        None => println!(
            "audit trail: no stream {} (the backend runs with --no-audit?)",
            piggybank::audit::stream_name(&args.backend_name)
        ),
    }

    if !args.no_bad_traffic {
        if let Some((c, clean, _, _)) = rows.iter().find(|(c, ..)| *c == 16).or(rows.last()) {
            let run = (*c, clean, warmup, duration);
            bad_traffic(&backend_client, &nats, &args, &caller, run).await?;
        }
    }

    floor.abort();
    echo.abort();
    if let (Some(config), true) = (&run_config, args.revocations > 0) {
        revocation(config, &caller, args.revocations).await?;
    }
    if let Some(backend) = in_process {
        backend.stop().await;
    }
    if !args.scale.is_empty() {
        match (&local_nats, &piggybank) {
            (Some(local), Some(piggybank)) => {
                scale::run(
                    piggybank,
                    &local.url(),
                    &args.scale,
                    args.mapped_entities,
                    &args.subject_base,
                )
                .await?
            }
            _ => println!("scale: skipped (needs the benchmark's own NATS server)"),
        }
    }
    drop(local_nats);
    Ok(())
}

/// Sizes of a sealed request and a sealed reply, for the bare echo.
fn payload_sizes(
    caller: &Caller,
    transit: &TransitKey,
    response: &[u8],
) -> anyhow::Result<(usize, usize)> {
    let request = serde_json::to_vec(&caller.request(SECRET))?;
    let server = XKey::from_public_key(transit.public_key())?;
    let sealed_request = XKey::new().seal(&request, &server)?;
    let (sealed_reply, _) = piggybank::keys::seal_to(response, &XKey::new())?;
    Ok((sealed_request.len(), sealed_reply.len()))
}

async fn host_gets(
    client: &Arc<wasmcloud_secrets_client::Client>,
    caller: &Arc<Caller>,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
) -> Stats {
    let (client, caller) = (Arc::clone(client), Arc::clone(caller));
    load::run(concurrency, warmup, duration, move |_| {
        let (client, caller) = (Arc::clone(&client), Arc::clone(&caller));
        async move {
            let secret = client
                .get(caller.request(SECRET), XKey::new())
                .await
                .map_err(|e| e.to_string())?;
            match secret.string_secret.as_deref() {
                Some(VALUE) => Ok(()),
                _ => Err("wrong value served".to_string()),
            }
        }
    })
    .await
}

async fn echo_requests(
    nats: &async_nats::Client,
    subject: &str,
    size: usize,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
) -> Stats {
    let (nats, subject) = (nats.clone(), subject.to_string());
    let payload = Bytes::from(vec![b'q'; size]);
    load::run(concurrency, warmup, duration, move |_| {
        let (nats, subject, payload) = (nats.clone(), subject.clone(), payload.clone());
        async move {
            nats.request(subject, payload)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        }
    })
    .await
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn print_row(name: &str, c: usize, s: &Stats) {
    println!(
        "{name:<8} {c:>4} {:>10.0} {:>9.0} {:>9.0} {:>8} {:>7}",
        s.per_second,
        micros(s.p50),
        micros(s.p99),
        s.ok,
        s.errors
    );
}

fn print_ratios(rows: &[(usize, Stats, Stats, Stats)]) {
    println!("ratios: backend/floor and backend/bare (throughput; p50; p99)");
    for (c, backend, floor, bare) in rows {
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
        println!(
            "  c={c:<3} floor: {:.2}x; {:.2}x; {:.2}x   bare: {:.2}x; {:.2}x; {:.2}x",
            ratio(backend.per_second, floor.per_second),
            ratio(micros(backend.p50), micros(floor.p50)),
            ratio(micros(backend.p99), micros(floor.p99)),
            ratio(backend.per_second, bare.per_second),
            ratio(micros(backend.p50), micros(bare.p50)),
            ratio(micros(backend.p99), micros(bare.p99)),
        );
    }
    let at = |c: usize| rows.iter().find(|r| r.0 == c);
    let mut targets = Vec::new();
    if let Some((_, b, f, _)) = at(64) {
        targets.push((
            "throughput c=64 >= 0.9x floor",
            b.per_second / f.per_second,
            0.9,
            true,
        ));
        targets.push((
            "p99 c=64 <= 1.5x floor",
            micros(b.p99) / micros(f.p99),
            1.5,
            false,
        ));
    }
    if let Some((_, b, f, _)) = at(1) {
        targets.push((
            "p50 c=1 <= 1.2x floor",
            micros(b.p50) / micros(f.p50),
            1.2,
            false,
        ));
    }
    for (what, value, limit, at_least) in targets {
        let met = if at_least {
            value >= limit
        } else {
            value <= limit
        };
        println!(
            "target {what}: {value:.2}x {}",
            if met { "met" } else { "MISSED" }
        );
    }
}

/// Good gets at the clean run's concurrency with bad requests mixed in at 10% of all
/// requests: garbage payloads, and well-sealed requests with a forged-issuer JWT.
async fn bad_traffic(
    client: &Arc<wasmcloud_secrets_client::Client>,
    nats: &async_nats::Client,
    args: &BenchArgs,
    caller: &Arc<Caller>,
    (c, clean, warmup, duration): (usize, &Stats, Duration, Duration),
) -> anyhow::Result<()> {
    let rate = (clean.per_second / 9.0).max(1.0);
    let sent = Arc::new(AtomicU64::new(0));
    let subject = format!(
        "{}.{}",
        config::subject_prefix(
            &args.subject_base,
            config::DEFAULT_API_VERSION,
            &args.backend_name
        ),
        config::ops::GET
    );
    let server = XKey::from_public_key(
        &AdminClient::new(
            nats.clone(),
            &args.subject_base,
            config::DEFAULT_API_VERSION,
            &args.backend_name,
        )
        .server_xkey()
        .await?,
    )?;
    // Built before the run, so the generator costs the 2 cores nothing but publishing.
    let requests = Arc::new(bad_requests(caller, &server, 256)?);
    let refused = Arc::new(AtomicU64::new(0));
    let bad = {
        let (nats, sent, refused) = (nats.clone(), Arc::clone(&sent), Arc::clone(&refused));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let n = sent.fetch_add(1, Ordering::Relaxed) as usize;
                let (payload, requester) = requests[n % requests.len()].clone();
                let (nats, subject, refused) = (nats.clone(), subject.clone(), refused.clone());
                tokio::spawn(async move {
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert(config::headers::WASMCLOUD_HOST_XKEY, requester.as_str());
                    let reply = nats.request_with_headers(subject, headers, payload).await;
                    let error = reply.ok().and_then(|r| {
                        serde_json::from_slice::<SecretResponse>(&r.payload)
                            .ok()?
                            .error
                    });
                    if error.is_some() {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        })
    };
    let mixed = host_gets(client, caller, c, warmup, duration).await;
    bad.abort();
    tokio::time::sleep(Duration::from_millis(200)).await; // last replies
    let (sent, refused) = (
        sent.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    );
    let slower = |a: f64, b: f64| (a / b - 1.0) * 100.0;
    println!(
        "bad traffic (10% of requests, ~{rate:.0}/s) at c={c}: good gets {:.0}/s ({:+.1}% vs clean), \
         p50 {:.0} µs ({:+.1}%), p99 {:.0} µs ({:+.1}%), failed good gets: {}; \
         bad requests refused with an error reply: {refused}/{sent}",
        mixed.per_second,
        slower(mixed.per_second, clean.per_second),
        micros(mixed.p50),
        slower(micros(mixed.p50), micros(clean.p50)),
        micros(mixed.p99),
        slower(micros(mixed.p99), micros(clean.p99)),
        mixed.errors
    );
    Ok(())
}

/// Bad requests, each with the requester key to send in its header: half garbage payloads,
/// half well-sealed requests whose entity JWT has a broken signature (so every one of them
/// costs the backend a transit open, a parse and a failed ed25519 check: nothing to cache).
fn bad_requests(
    caller: &Caller,
    server: &XKey,
    count: usize,
) -> anyhow::Result<Vec<(Bytes, String)>> {
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let requester = XKey::new();
        let payload = if i % 2 == 0 {
            vec![0xA5; 600]
        } else {
            let mut request = caller.request(SECRET);
            let jwt = &mut request.context.entity_jwt;
            let at = jwt.len().saturating_sub(10);
            let flipped = if jwt.as_bytes().get(at) == Some(&b'A') {
                "B"
            } else {
                "A"
            };
            jwt.replace_range(at..at + 1, flipped);
            requester.seal(&serde_json::to_vec(&request)?, server)?
        };
        out.push((Bytes::from(payload), requester.public_key()));
    }
    Ok(out)
}

/// Revocation across instances: a second instance on the same buckets; a mapping is removed
/// (and a secret deleted) through the first; how long until the second refuses?
async fn revocation(config: &RunConfig, caller: &Caller, trials: usize) -> anyhow::Result<()> {
    let a = server::start(config).await?.backend;
    let b = server::start(config).await?.backend;
    let names = BTreeSet::from(["bench/revoked".to_string()]);
    let value = SecretValue::String(Zeroizing::new(VALUE.to_string()));
    let mut mapping = Vec::with_capacity(trials);
    let mut deletion = Vec::with_capacity(trials);
    let mut at_once = 0;
    // Timed from here: both instances hold both buckets in memory.
    a.loaded().await?;
    b.loaded().await?;
    // Both instances run with ENCRYPTION_XKEY_SEED: they are never sealed.
    let (a, b) = (a.unsealed()?, b.unsealed()?);
    let entity = piggybank::store::EntityKey::parse(&caller.entity)?;
    for _ in 0..trials {
        a.put("bench/revoked", &value, None).await?;
        a.update_mapping(&caller.entity, MappingChange::Add, &names)
            .await?;
        wait_until(|| {
            b.mappings().allows(&entity, "bench/revoked")
                && b.secrets().latest("bench/revoked").is_some()
        })
        .await?;

        a.update_mapping(&caller.entity, MappingChange::Remove, &names)
            .await?;
        let removed = Instant::now();
        at_once += u32::from(!a.mappings().allows(&entity, "bench/revoked"));
        wait_until(|| !b.mappings().allows(&entity, "bench/revoked")).await?;
        mapping.push(removed.elapsed());

        a.delete("bench/revoked").await?;
        let deleted = Instant::now();
        wait_until(|| b.secrets().latest("bench/revoked").is_none()).await?;
        deletion.push(deleted.elapsed());
    }
    let summary = |mut v: Vec<Duration>| {
        v.sort_unstable();
        let q = |p: f64| micros(v[((v.len() - 1) as f64 * p).round() as usize]);
        format!(
            "p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs",
            q(0.5),
            q(0.99),
            q(1.0)
        )
    };
    println!(
        "revocation across 2 instances ({trials} trials): remove_mapping {}; delete {}; \
         handling instance refused at once: {at_once}/{trials}",
        summary(mapping),
        summary(deletion)
    );
    Ok(())
}

async fn wait_until(done: impl Fn() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        if Instant::now() > deadline {
            anyhow::bail!("the second instance did not catch up within 5 s");
        }
        tokio::time::sleep(Duration::from_micros(100)).await;
    }
    Ok(())
}
