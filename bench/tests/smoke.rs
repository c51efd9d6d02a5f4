//! A smoke run of `piggybank-bench` (a fraction of a second per point) so the benchmark
//! cannot rot: every measurement it reports runs, no get fails, and every get the backend
//! served has its audit record on the stream or counted as dropped. The figures themselves
//! come from `make bench` (docs/performance.md).
//!
//! The scale table and the running backend are `piggybank` processes: the binary beside
//! `piggybank-bench` in the same target dir. `cargo test --workspace` builds it (so does
//! `make test`); these tests never build it themselves.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use piggybank::config::{self, env};
use piggybank::keys::generate_seed;
use piggybank_testkit::NatsServer;

const BENCH: &str = env!("CARGO_BIN_EXE_piggybank-bench");

/// The `piggybank` binary beside the benchmark's.
fn piggybank_bin() -> PathBuf {
    let bin = PathBuf::from(BENCH).with_file_name("piggybank");
    assert!(
        bin.is_file(),
        "no {}: build it first (cargo build --bin piggybank; make test does)",
        bin.display()
    );
    bin
}

/// Run the benchmark binary; returns its stdout.
fn bench(args: &[&str]) -> String {
    let out = Command::new(BENCH)
        .args(["--duration", "0.3", "--warmup", "0.1"])
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .expect("run piggybank-bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "bench failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The (gets/s, errors) of a workload's row at concurrency `c`.
fn row(stdout: &str, workload: &str, c: usize) -> (f64, u64) {
    let line = stdout
        .lines()
        .find(|l| {
            let mut cols = l.split_whitespace();
            cols.next() == Some(workload) && cols.next() == Some(&c.to_string())
        })
        .unwrap_or_else(|| panic!("no {workload} row at c={c} in:\n{stdout}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    (cols[2].parse().unwrap(), cols[6].parse().unwrap())
}

/// The audit table's row at concurrency `c`: (gets sent, records written, dropped, missing).
fn audit_row(stdout: &str, c: usize) -> (u64, u64, u64, u64) {
    let line = stdout
        .lines()
        .skip_while(|l| !l.starts_with("audit trail ("))
        .find(|l| l.split_whitespace().next() == Some(&c.to_string()))
        .unwrap_or_else(|| panic!("no audit row at c={c} in:\n{stdout}"));
    let cols: Vec<u64> = line
        .split_whitespace()
        .map(|col| col.parse().unwrap_or_else(|_| panic!("{line:?}")))
        .collect();
    (cols[2], cols[3], cols[5], cols[6])
}

/// Every get of the backend's run at `c` has its record on the stream or counted as dropped.
fn assert_every_get_audited(out: &str, c: usize) {
    let (sent, written, dropped, missing) = audit_row(out, c);
    assert!(sent > 0 && written > 0, "c={c}:\n{out}");
    assert_eq!(written + dropped, sent, "c={c}:\n{out}");
    assert_eq!(missing, 0, "c={c}:\n{out}");
}

/// Every workload ran at every concurrency, and none had an error.
fn assert_every_row_clean(out: &str, concurrency: &[usize]) {
    for &c in concurrency {
        for workload in ["backend", "floor", "bare"] {
            let (per_second, errors) = row(out, workload, c);
            assert!(per_second > 0.0, "{workload} c={c}:\n{out}");
            assert_eq!(errors, 0, "{workload} c={c}:\n{out}");
        }
    }
}

#[test]
fn bench_runs_every_measurement_without_a_failed_get() {
    piggybank_bin(); // the scale table runs it
    let out = bench(&[
        "--concurrency",
        "1,4",
        "--revocations",
        "5",
        "--scale",
        "10",
        "--mapped-entities",
        "20",
    ]);
    assert_every_row_clean(&out, &[1, 4]);
    assert_every_get_audited(&out, 1);
    assert_every_get_audited(&out, 4);
    let refused = out
        .split("refused with an error reply: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|counts| counts.split_once('/'))
        .unwrap_or_else(|| panic!("no bad-traffic counts in:\n{out}"));
    assert_eq!(
        refused.0, refused.1,
        "every bad request gets an error reply"
    );
    assert!(
        refused.1.parse::<u64>().unwrap() > 0,
        "no bad traffic was sent"
    );
    for expected in [
        "ratios: backend/floor",
        "target p50 c=1",
        "failed good gets: 0",
        "handling instance refused at once: 5/5",
        "scale:      10 |",
    ] {
        assert!(out.contains(expected), "no {expected:?} in:\n{out}");
    }
}

#[test]
fn bench_with_admin_keys_signs_administration_and_serves_every_get() {
    // The bench's put and mapping go through signed requests: were they refused, it would
    // fail before the first measurement.
    let out = bench(&[
        "--admin-keys",
        "--concurrency",
        "2",
        "--revocations",
        "2",
        "--no-bad-traffic",
    ]);
    assert!(out.contains("admin signed (--admin-keys)"), "{out}");
    assert_every_row_clean(&out, &[2]);
    assert!(
        out.contains("handling instance refused at once: 2/2"),
        "{out}"
    );
}

/// A `piggybank run` process, killed on drop.
struct Backend(Child);

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `piggybank run` with generated keys on `nats`, once it answers `server_xkey`.
fn run_backend(nats: &NatsServer) -> Backend {
    let child = Command::new(piggybank_bin())
        .args(["run", "--nats-address", &nats.url()])
        .env_remove(env::ADMIN_KEYS)
        .env_remove(env::TRUSTED_ISSUERS)
        .env(env::ENCRYPTION_XKEY_SEED, generate_seed().as_str())
        .env(env::TRANSIT_XKEY_SEED, generate_seed().as_str())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn piggybank run");
    let backend = Backend(child);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let prefix = config::subject_prefix(
        config::DEFAULT_SUBJECT_BASE,
        config::DEFAULT_API_VERSION,
        config::DEFAULT_BACKEND_NAME,
    );
    let server_xkey = format!("{prefix}.{}", config::ops::SERVER_XKEY);
    runtime.block_on(async {
        let client = nats.client().await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let asked = client.request(server_xkey.clone(), "".into());
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), asked).await {
                break;
            }
            assert!(Instant::now() < deadline, "piggybank run did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    backend
}

#[test]
fn bench_measures_a_running_backend() {
    let nats = NatsServer::start();
    let _backend = run_backend(&nats);
    let out = bench(&[
        "--nats-address",
        &nats.url(),
        "--concurrency",
        "2",
        "--no-bad-traffic",
    ]);
    assert!(out.contains("(external)"), "{out}");
    assert_eq!(row(&out, "backend", 2).1, 0, "{out}");
    assert_every_get_audited(&out, 2);
}
