//! Closed-loop load: `concurrency` workers each run one operation after another for a fixed
//! time; every completed operation's latency is recorded. Throughput is completed operations
//! per second of wall time; percentiles come from the sorted latencies. Operations run during
//! the warm-up are not measured, but counted in [`Stats::sent`]: the system under test saw them
//! (the audit trail records them).

use std::future::Future;
use std::time::{Duration, Instant};

/// What one run measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    /// Every operation run, the warm-up's included.
    pub sent: u64,
    pub ok: u64,
    pub errors: u64,
    pub per_second: f64,
    pub p50: Duration,
    pub p99: Duration,
}

impl Stats {
    pub(crate) fn from(
        mut latencies: Vec<Duration>,
        errors: u64,
        sent: u64,
        elapsed: Duration,
    ) -> Self {
        latencies.sort_unstable();
        let at = |q: f64| -> Duration {
            if latencies.is_empty() {
                return Duration::ZERO;
            }
            let i = ((latencies.len() as f64 - 1.0) * q).round() as usize;
            latencies[i.min(latencies.len() - 1)]
        };
        Stats {
            sent,
            ok: latencies.len() as u64,
            errors,
            per_second: latencies.len() as f64 / elapsed.as_secs_f64().max(1e-9),
            p50: at(0.50),
            p99: at(0.99),
        }
    }
}

/// Run `op` from `concurrency` workers for `duration` (after `warmup`, not recorded).
pub async fn run<F, Fut>(concurrency: usize, warmup: Duration, duration: Duration, op: F) -> Stats
where
    F: Fn(usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let start = Instant::now() + warmup;
    let end = start + duration;
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..concurrency.max(1) {
        let op = op.clone();
        workers.spawn(async move {
            let mut latencies = Vec::with_capacity(4096);
            let mut errors = 0u64;
            let mut sent = 0u64;
            let mut first_error = None;
            loop {
                let began = Instant::now();
                if began >= end {
                    break;
                }
                let result = op(worker).await;
                sent += 1;
                if began < start {
                    continue;
                }
                match result {
                    Ok(()) => latencies.push(began.elapsed()),
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e);
                    }
                }
            }
            (latencies, errors, sent, first_error)
        });
    }
    let mut all = Vec::new();
    let (mut errors, mut sent) = (0, 0);
    while let Some(done) = workers.join_next().await {
        if let Ok((latencies, e, n, first)) = done {
            all.extend(latencies);
            errors += e;
            sent += n;
            if let Some(first) = first {
                tracing::warn!(error = %first, "operation failed during the benchmark");
            }
        }
    }
    Stats::from(all, errors, sent, duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_sorted_latencies() {
        let latencies = (1..=100).rev().map(Duration::from_millis).collect();
        let stats = Stats::from(latencies, 2, 110, Duration::from_secs(2));
        assert_eq!(stats.sent, 110);
        assert_eq!(stats.ok, 100);
        assert_eq!(stats.errors, 2);
        assert_eq!(stats.per_second, 50.0);
        assert_eq!(stats.p50, Duration::from_millis(51));
        assert_eq!(stats.p99, Duration::from_millis(99));
    }

    #[tokio::test]
    async fn load_counts_operations_and_errors() {
        let stats = run(
            4,
            Duration::ZERO,
            Duration::from_millis(100),
            |worker| async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                if worker == 0 {
                    Err("worker 0 always fails".to_string())
                } else {
                    Ok(())
                }
            },
        )
        .await;
        assert!(stats.ok >= 3 * 10, "{stats:?}");
        assert!(stats.errors >= 10, "{stats:?}");
        assert_eq!(stats.sent, stats.ok + stats.errors, "no warm-up: {stats:?}");
        assert!(stats.p50 >= Duration::from_millis(5));
    }
}
