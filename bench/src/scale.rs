//! The scale table: for each store size, fill fresh buckets (N secrets, `--mapped-entities`
//! mapped entities), start a `piggybank run` process on them (the `piggybank` binary beside
//! this one, as cargo builds both into one target dir), and measure its time to ready (it
//! answers requests) and to loaded (its mirrors hold both buckets), host-style gets at
//! concurrency 1 while it loads and once it has, its resident memory, the time to list every
//! secret through the protocol (as `piggybank list` does), and `piggybank backup` and
//! `piggybank restore` of the store as processes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use nkeys::XKey;
use piggybank::client::AdminClient;
use piggybank::config::env;
use piggybank::keys::generate_seed;
use piggybank::server::{self, RunConfig};
use piggybank::store::envelope::SecretValue;
use piggybank::MappingChange;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use zeroize::Zeroizing;

use super::{load, micros, Caller, VALUE};

const WRITES_IN_FLIGHT: usize = 256;

pub async fn run(
    piggybank: &Path,
    nats_url: &str,
    sizes: &[usize],
    entities: usize,
    subject_base: &str,
) -> anyhow::Result<()> {
    println!("scale: {entities} mapped entities in every store");
    println!(
        "scale: secrets | fill s | ready ms (process) | startup_ms (log) | loaded ms (log) | \
         gets while loading (n, p50 µs) | RSS MiB | get p50 µs | get p99 µs | list ms | \
         backup ms | restore ms"
    );
    let caller = Arc::new(Caller::new());
    for &size in sizes {
        let mut config = RunConfig::new(generate_seed(), generate_seed());
        config.nats_address = nats_url.to_string();
        config.subject_base = subject_base.to_string();
        config.name = format!("scale{size}");
        config.secrets_bucket = format!("SCALE_{size}");
        let fill = Instant::now();
        fill_store(&config, size, entities, &caller.entity).await?;
        let fill = fill.elapsed();
        let row = measure(piggybank, &config, &caller, size).await?;
        let (backup, restore) = backup_and_restore(piggybank, &config).await?;
        println!(
            "scale: {size:>7} | {:>6.1} | {:>8.0} | {:>8} | {:>8} | {:>6}, {:>6.0} | {:>7.1} | \
             {:>10.0} | {:>10.0} | {:>7.0} | {:>7.0} | {:>7.0}",
            fill.as_secs_f64(),
            row.ready.as_secs_f64() * 1e3,
            row.startup_ms,
            row.loaded_ms,
            row.loading_gets.ok,
            micros(row.loading_gets.p50),
            row.rss_kib as f64 / 1024.0,
            micros(row.gets.p50),
            micros(row.gets.p99),
            row.list.as_secs_f64() * 1e3,
            backup.as_secs_f64() * 1e3,
            restore.as_secs_f64() * 1e3,
        );
    }
    Ok(())
}

async fn fill_store(
    config: &RunConfig,
    size: usize,
    entities: usize,
    bench_entity: &str,
) -> anyhow::Result<()> {
    let backend = server::start(config).await?.backend;
    let value = SecretValue::String(Zeroizing::new(VALUE.to_string()));
    let puts = futures::stream::iter(0..size)
        .map(|i| {
            let (backend, value) = (Arc::clone(&backend), &value);
            async move {
                let store = backend.unsealed()?;
                store.put(&format!("scale/{i}"), value, None).await
            }
        })
        .buffer_unordered(WRITES_IN_FLIGHT);
    let failed = puts
        .filter(|r| futures::future::ready(r.is_err()))
        .count()
        .await;
    anyhow::ensure!(failed == 0, "{failed} puts failed while filling the store");
    let maps = futures::stream::iter(0..entities)
        .map(|i| {
            let backend = Arc::clone(&backend);
            async move {
                let entity = nkeys::KeyPair::new_module().public_key();
                let names = BTreeSet::from([format!("scale/{}", i % size.max(1))]);
                let store = backend.unsealed()?;
                store
                    .update_mapping(&entity, MappingChange::Add, &names)
                    .await
            }
        })
        .buffer_unordered(WRITES_IN_FLIGHT);
    let failed = maps
        .filter(|r| futures::future::ready(r.is_err()))
        .count()
        .await;
    anyhow::ensure!(
        failed == 0,
        "{failed} mapping updates failed while filling the store"
    );
    backend
        .unsealed()?
        .update_mapping(
            bench_entity,
            MappingChange::Add,
            &BTreeSet::from(["scale/0".to_string()]),
        )
        .await?;
    Ok(())
}

struct Row {
    ready: Duration,
    startup_ms: u64,
    /// "piggybank loaded": both mirrors hold their whole bucket.
    loaded_ms: u64,
    /// Gets between ready and loaded (answered from the buckets themselves).
    loading_gets: load::Stats,
    rss_kib: u64,
    gets: load::Stats,
    /// Every secret listed through the protocol, page by page.
    list: Duration,
}

/// The `piggybank` binary beside this one (`make bench` builds both).
pub fn piggybank_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("piggybank");
    anyhow::ensure!(
        bin.is_file(),
        "the scale table runs `piggybank run`, and there is no {} (build it: \
         cargo build --release --bin piggybank, as make bench does)",
        bin.display()
    );
    Ok(bin)
}

/// Start `piggybank run` on the filled buckets (`size` secrets) and measure it.
async fn measure(
    piggybank: &Path,
    config: &RunConfig,
    caller: &Arc<Caller>,
    size: usize,
) -> anyhow::Result<Row> {
    let started = Instant::now();
    let mut child = tokio::process::Command::new(piggybank)
        .args(["--log-format", "json", "run", "--name", &config.name])
        .args(["--secrets-bucket", &config.secrets_bucket])
        .args(["--subject-base", &config.subject_base])
        .args(["--nats-address", &config.nats_address])
        .env(
            env::ENCRYPTION_XKEY_SEED,
            config.encryption_xkey_seed.as_str(),
        )
        .env(env::TRANSIT_XKEY_SEED, config.transit_xkey_seed.as_str())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start piggybank run")?;
    let stderr = child.stderr.take().context("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    // A small store may be loaded before it serves: "loaded" can come before "ready".
    let mut loaded_first = None;
    let startup_ms = loop {
        let event = next_event(&mut lines).await?;
        if event["fields"]["message"] == "piggybank loaded" {
            loaded_first = event["fields"]["loaded_ms"].as_u64();
        }
        if event["fields"]["message"] == "piggybank ready" {
            break event["fields"]["startup_ms"].as_u64().unwrap_or_default();
        }
    };
    let ready = started.elapsed();
    // Keep reading its log (so it never blocks on a full pipe), and tell when it is loaded.
    let (loaded_tx, mut loaded_rx) = tokio::sync::watch::channel(loaded_first);
    tokio::spawn(async move {
        while let Ok(event) = next_event(&mut lines).await {
            if event["fields"]["message"] == "piggybank loaded" {
                loaded_tx.send_replace(event["fields"]["loaded_ms"].as_u64());
            }
        }
    });

    let nats = async_nats::connect(&config.nats_address).await?;
    let client = Arc::new(
        wasmcloud_secrets_client::Client::new(&config.name, &config.subject_base, nats.clone())
            .await?,
    );
    let get = {
        let (client, caller) = (Arc::clone(&client), Arc::clone(caller));
        move || {
            let (client, caller) = (Arc::clone(&client), Arc::clone(&caller));
            async move {
                client
                    .get(caller.request("scale/0"), XKey::new())
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
        }
    };
    // Gets while the mirrors load, one after another, until it says it is loaded.
    let (mut latencies, mut errors) = (Vec::new(), 0);
    let loading = Instant::now();
    while loaded_rx.borrow().is_none() {
        let began = Instant::now();
        match get().await {
            Ok(()) => latencies.push(began.elapsed()),
            Err(e) => {
                errors += 1;
                tracing::warn!(error = %e, "a get failed while the store loaded");
            }
        }
    }
    let sent = latencies.len() as u64 + errors;
    let loading_gets = load::Stats::from(latencies, errors, sent, loading.elapsed());
    anyhow::ensure!(errors == 0, "{errors} gets failed while the store loaded");
    let loaded_ms = tokio::time::timeout(
        Duration::from_secs(600),
        loaded_rx.wait_for(Option::is_some),
    )
    .await
    .context("piggybank run did not load within 600 s")??
    .unwrap_or_default();
    let rss_kib = child.id().map(rss_kib).unwrap_or_default();

    let gets = load::run(
        1,
        Duration::from_millis(500),
        Duration::from_secs(2),
        move |_| get(),
    )
    .await;
    anyhow::ensure!(gets.errors == 0, "{} gets failed", gets.errors);

    // Every secret, as `piggybank list` reads them: page after page of the protocol.
    let admin = AdminClient::new(
        nats,
        &config.subject_base,
        &config.api_version,
        &config.name,
    );
    let listing = Instant::now();
    let listed = admin.list_secrets("").await?;
    let list = listing.elapsed();
    anyhow::ensure!(
        listed.len() == size,
        "listed {} secrets of {size}",
        listed.len()
    );

    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on our own child, which has not been reaped.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    Ok(Row {
        ready,
        startup_ms,
        loaded_ms,
        loading_gets,
        rss_kib,
        gets,
        list,
    })
}

/// The next JSON event of a `piggybank --log-format json` log.
async fn next_event(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
) -> anyhow::Result<serde_json::Value> {
    loop {
        let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
            .await
            .context("piggybank run logged nothing for 120 s")??
            .context("piggybank run exited")?;
        if let Ok(event) = serde_json::from_str(&line) {
            return Ok(event);
        }
    }
}

/// `piggybank backup --out` of the store, then `piggybank restore` of that file into fresh
/// buckets of another backend name, as processes: how long each took.
async fn backup_and_restore(
    piggybank: &Path,
    config: &RunConfig,
) -> anyhow::Result<(Duration, Duration)> {
    let file = std::env::temp_dir().join(format!(
        "piggybank-bench-{}-{}.backup",
        std::process::id(),
        config.secrets_bucket
    ));
    // Backups are signed by an admin key, and restore trusts it.
    let admin_seed = piggybank::admin_auth::AdminSigner::generate_seed();
    let admin_key = piggybank::admin_auth::AdminSigner::from_seed(&admin_seed)?
        .public_key()
        .to_string();
    let run = |args: Vec<String>| {
        let mut command = tokio::process::Command::new(piggybank);
        command
            .args(&args)
            .args(["--nats-address", &config.nats_address])
            .env_remove("NATS_CONTEXT")
            .env(env::PIGGYBANK_ADMIN_SEED, admin_seed.as_str())
            .env(env::ADMIN_KEYS, &admin_key)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        async move {
            let began = Instant::now();
            let out = command.output().await?;
            anyhow::ensure!(
                out.status.success(),
                "piggybank {} failed: {}",
                args.first().map_or("", String::as_str),
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(began.elapsed())
        }
    };
    let path = file.to_string_lossy().into_owned();
    let backup = run(vec![
        "backup".into(),
        "--out".into(),
        path.clone(),
        "-n".into(),
        config.name.clone(),
        "-b".into(),
        config.secrets_bucket.clone(),
    ])
    .await;
    let restore = match backup {
        Ok(_) => {
            run(vec![
                "restore".into(),
                path,
                "-n".into(),
                format!("{}r", config.name),
                "-b".into(),
                format!("{}_R", config.secrets_bucket),
            ])
            .await
        }
        Err(_) => Ok(Duration::ZERO),
    };
    let _ = std::fs::remove_file(&file);
    Ok((backup?, restore?))
}

/// Resident memory of a process, from /proc (Linux); 0 where unknown.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}
