//! A smoke run of `piggybank bench` (a fraction of a second per point) so the benchmark
//! cannot rot: every measurement it reports runs, and no get fails. The figures themselves
//! come from `make bench` (README, "Performance").

mod common;

use std::process::Command;

use common::*;

/// Run the benchmark binary; returns its stdout.
fn bench(args: &[&str]) -> String {
    let out = Command::new(piggybank_bin())
        .arg("bench")
        .args(["--duration", "0.3", "--warmup", "0.1"])
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .expect("run piggybank bench");
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

#[test]
fn bench_runs_every_measurement_without_a_failed_get() {
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
    for c in [1, 4] {
        for workload in ["backend", "floor", "bare"] {
            let (per_second, errors) = row(&out, workload, c);
            assert!(per_second > 0.0, "{workload} c={c}:\n{out}");
            assert_eq!(errors, 0, "{workload} c={c}:\n{out}");
        }
    }
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

#[tokio::test]
async fn bench_measures_a_running_backend() {
    let Deployed {
        nats,
        keys: _,
        backend: _backend,
        admin: _,
    } = deployed().await;
    // The backend runs on this test's runtime: run the benchmark process off it.
    let url = nats.url();
    let out = tokio::task::spawn_blocking(move || {
        bench(&[
            "--nats-address",
            &url,
            "--concurrency",
            "2",
            "--no-bad-traffic",
        ])
    })
    .await
    .unwrap();
    assert!(out.contains("(external)"), "{out}");
    assert_eq!(row(&out, "backend", 2).1, 0, "{out}");
}
