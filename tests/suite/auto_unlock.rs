//! Auto-unlock: a sealed-mode instance given its database key at start (a mode-0600 file or
//! `PIGGYBANK_DATABASE_KEY`) unlocks itself, so restarts need no operator; `lock` still
//! locks. A key others can read, or a key that does not open the store, stops the start.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::Value;

fn key_file(dir: &std::path::Path, key: &str, mode: u32) -> std::path::PathBuf {
    let path = dir.join("database.key");
    let mut file = std::fs::File::create(&path).unwrap();
    writeln!(file, "# the database key").unwrap();
    writeln!(file, "{key}").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// Initialize through the CLI against a first, sealed instance; returns the key.
async fn initialized(nats: &NatsServer) -> String {
    let first = spawn_sealed_run(nats, &[]);
    wait_database_instances(&nats.client().await, "piggybank", 1).await;
    let (ok, out, err) = cli(
        nats,
        &["init", "--json", "--unverified-instances"],
        None,
        &[],
    );
    assert!(ok, "{err}");
    drop(first);
    let reply: Value = serde_json::from_slice(&out).unwrap();
    reply["database_key"].as_str().unwrap().to_string()
}

/// The instances answering `status`, and how many are sealed.
async fn sealed_count(nats: &NatsServer) -> (usize, usize) {
    let all = database_statuses(&nats.client().await, "piggybank").await;
    let sealed = all.iter().filter(|s| s["sealed"] == true).count();
    (all.len(), sealed)
}

async fn wait_unsealed(nats: &NatsServer, instances: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while sealed_count(nats).await != (instances, 0) {
        assert!(
            Instant::now() < deadline,
            "instances did not come up unsealed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_given_the_key_unlock_themselves_and_a_restart_needs_no_operator() {
    let nats = NatsServer::start();
    let key = initialized(&nats).await;
    let dir = tempfile::tempdir().unwrap();
    let file = key_file(dir.path(), &key, 0o600);
    let file_arg = file.to_str().unwrap();
    // Each instance's log, printed if a get fails (a get was lost once, in a full run).
    let logs = ["a", "b", "b-restarted"].map(|n| dir.path().join(format!("{n}.log")));
    let _a = spawn_sealed_run_logged(&nats, &["--unlock-key-file", file_arg], &logs[0]);
    let mut b = spawn_sealed_run_logged(&nats, &["--unlock-key-file", file_arg], &logs[1]);
    wait_unsealed(&nats, 2).await;

    let admin = admin(nats.client().await);
    admin
        .put_secret("db", text("hunter2"), None, None)
        .await
        .unwrap();
    let issuer = Issuer::new();
    let (jwt, component) = issuer.component();
    admin
        .add_mapping(&component, &names(&["db"]))
        .await
        .unwrap();

    // Gets all along, while b restarts.
    let host = host_client(&nats).await;
    let (stop, gets, failed) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(std::sync::Mutex::new(Vec::new())),
    );
    let load = {
        let (stop, gets, failed) = (stop.clone(), gets.clone(), failed.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let sent = time::OffsetDateTime::now_utc();
                let got = host_get(&host, request("db", &jwt)).await;
                gets.fetch_add(1, Ordering::Relaxed);
                match got {
                    Ok(s) if s.string_secret.as_deref() == Some("hunter2") => {}
                    other => {
                        let at = gets.load(Ordering::Relaxed);
                        let why = format!("{:?}", other.map(|_| "another value"));
                        eprintln!("get {at}, sent at {sent}, failed: {why}");
                        failed.lock().unwrap().push((sent, why));
                    }
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.signal(libc::SIGTERM);
    assert_eq!(
        b.wait_exit(Duration::from_secs(10)).and_then(|s| s.code()),
        Some(0)
    );
    let restarted = Instant::now();
    let _b = spawn_sealed_run_logged(&nats, &["--unlock-key-file", file_arg], &logs[2]);
    wait_unsealed(&nats, 2).await;
    let restart_to_serving = restarted.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let gets = gets.load(Ordering::Relaxed);
    let failed = std::mem::take(&mut *failed.lock().unwrap());
    eprintln!(
        "restart to serving, unlocked: {restart_to_serving:?}; {gets} gets, {} failed",
        failed.len()
    );
    if !failed.is_empty() {
        for log in &logs {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            eprintln!("==== {} ====\n{text}", log.display());
        }
    }
    assert!(gets > 20, "the load ran: {gets} gets");
    // One get may be lost, and only one sent while b drained: async-nats 0.39 drops a
    // drained subscription before the server has confirmed the unsubscribe, so a request the
    // server routed to b just before is dropped by b's client (seen once in a full run: sent
    // 1 ms into b's 8 ms drain, timed out). nats.rs fixed it upstream (PR #1504, a ping
    // after the drain); piggybank is pinned to 0.39 by the wasmCloud crates. Any other lost
    // get fails the test.
    let drain = drain_window(&logs[1]);
    let explained = failed.len() == 1
        && failed.iter().all(|(sent, why)| {
            why.contains("timed out")
                && drain.is_some_and(|(from, to)| {
                    let margin = time::Duration::milliseconds(50);
                    *sent >= from - margin && *sent <= to + margin
                })
        });
    assert!(
        failed.is_empty() || explained,
        "the other instance serves while one restarts: {failed:?} (b's drain: {drain:?})"
    );
    if explained {
        eprintln!("one get sent during b's drain was lost: the async-nats 0.39 drain race");
    }

    // `lock` still locks: the key given at start unlocks only at start.
    let (ok, _, err) = cli(&nats, &["lock"], None, &[]);
    assert!(ok, "{err}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while sealed_count(&nats).await != (2, 2) {
        assert!(
            Instant::now() < deadline,
            "lock did not seal both instances"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Run `piggybank run` in sealed mode to its end (it is expected to stop at start).
fn failed_start(nats: &NatsServer, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut all: Vec<&str> = vec!["run"];
    all.extend_from_slice(args);
    let (code, _, err) = cli_code(nats, &all, None, env);
    (code, err)
}

#[tokio::test]
async fn a_key_others_can_read_or_that_does_not_open_the_store_stops_the_start() {
    let nats = NatsServer::start();
    let key = initialized(&nats).await;
    let dir = tempfile::tempdir().unwrap();

    let readable = key_file(dir.path(), &key, 0o644);
    let (code, err) = failed_start(
        &nats,
        &["--unlock-key-file", readable.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("mode 0644") && err.contains("chmod 600"),
        "{err}"
    );
    assert!(!err.contains(&key), "the key was echoed");

    // Another store's key: a valid key, but not this one's.
    let other = {
        let nats = NatsServer::start();
        initialized(&nats).await
    };
    let (code, err) = failed_start(&nats, &[], &[("PIGGYBANK_DATABASE_KEY", other.as_str())]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("cannot unlock with the configured database key"),
        "{err}"
    );
    assert!(!err.contains(&other), "the key was echoed");
}

#[tokio::test]
async fn a_key_given_before_initialization_leaves_the_store_sealed() {
    let nats = NatsServer::start();
    let key = "A".repeat(44);
    let _run = spawn_sealed_run(&nats, &["--database-key", &key]);
    wait_database_instances(&nats.client().await, "piggybank", 1).await;
    let all = database_statuses(&nats.client().await, "piggybank").await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["initialized"], false);
    assert_eq!(all[0]["sealed"], true);
}

/// When an instance's log says its drain began and ended (`shutting down`, `piggybank
/// stopped`).
fn drain_window(log: &std::path::Path) -> Option<(time::OffsetDateTime, time::OffsetDateTime)> {
    let text = std::fs::read_to_string(log).ok()?;
    let at = |marker: &str| {
        text.lines().find(|l| l.contains(marker)).and_then(|line| {
            // The timestamp is the first token, after any colour codes.
            let plain: String = strip_ansi(line);
            let stamp = plain.split_whitespace().next()?;
            time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339).ok()
        })
    };
    Some((at("shutting down")?, at("piggybank stopped")?))
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
