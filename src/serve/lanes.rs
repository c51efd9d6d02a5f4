//! Lanes: each class of traffic waits and runs apart, so that one class overflowing takes
//! nothing another class needs.
//!
//! A lane is a bounded queue, the permits of the requests it runs at once, and a runner
//! task that takes the next request when a permit is free and spawns it. The intake offers
//! a request to its lane and never waits: when the lane's queue is full the request is
//! dropped unanswered and counted ([`ShedReason::LaneFull`], `at` the lane's name). So a
//! flood of one lane fills that lane's queue and permits, and no other's.
//!
//! Invariants:
//! - A request runs only while it holds one of its lane's permits; at most `permits` run at
//!   once in a lane, and at most `queue` wait.
//! - Offering never blocks the intake.
//! - A lane with a `pace` starts at most one request per `pace`: its share of the CPU is
//!   bounded whatever its callers send (discovery, refusals).

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

use super::shed::{ShedCounts, ShedReason};

/// How a lane is bounded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LaneBounds {
    /// Requests run at once.
    pub permits: usize,
    /// Requests waiting for a permit; beyond, they are shed.
    pub queue: usize,
    /// At most one request starts per `pace` (`None`: as fast as permits free up).
    pub pace: Option<Duration>,
}

/// The intake's side of a lane: where requests are offered.
#[derive(Clone)]
pub(crate) struct Lane {
    name: &'static str,
    queue: mpsc::Sender<BoxFuture<'static, ()>>,
    permits: Arc<Semaphore>,
    /// Whether the lane is paced: then every request goes through the runner.
    paced: bool,
}

/// The runner's side of a lane, and what the drain waits for.
pub(crate) struct LaneRunner {
    jobs: mpsc::Receiver<BoxFuture<'static, ()>>,
    permits: Arc<Semaphore>,
    max: usize,
    pace: Option<Duration>,
}

/// A lane named `name` (for the metric and the logs), bounded by `bounds`.
pub(crate) fn lane(name: &'static str, bounds: LaneBounds) -> (Lane, LaneRunner) {
    let max = bounds
        .permits
        .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let (queue, jobs) = mpsc::channel(bounds.queue.max(1));
    let permits = Arc::new(Semaphore::new(max));
    (
        Lane {
            name,
            queue,
            permits: Arc::clone(&permits),
            paced: bounds.pace.is_some(),
        },
        LaneRunner {
            jobs,
            permits,
            max,
            pace: bounds.pace,
        },
    )
}

impl Lane {
    /// Run `job` in this lane, or shed it when the lane is full. Never waits.
    pub fn offer(&self, job: BoxFuture<'static, ()>, shed: &ShedCounts) {
        // Nothing waits and a permit is free: run it now, without the runner's hop (the
        // semaphore is fair, so a permit the runner waits for is never taken here).
        if !self.paced && self.queue.capacity() == self.queue.max_capacity() {
            if let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() {
                tokio::spawn(async move {
                    job.await;
                    drop(permit);
                });
                return;
            }
        }
        if self.queue.try_send(job).is_err() {
            shed.add(ShedReason::LaneFull, self.name);
        }
    }
}

impl LaneRunner {
    /// Start the runner: it ends once every [`Lane`] of it is dropped and its queue is
    /// empty; what it started may still run (see [`LaneRunner::in_flight`]).
    pub fn start(mut self) -> (JoinHandle<()>, InFlight) {
        let in_flight = InFlight {
            permits: Arc::clone(&self.permits),
            max: self.max,
        };
        let handle = tokio::spawn(async move {
            let mut pace = self.pace.map(|every| {
                let mut ticks = tokio::time::interval(every);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ticks
            });
            while let Some(job) = self.jobs.recv().await {
                if let Some(ticks) = pace.as_mut() {
                    ticks.tick().await;
                }
                let Ok(permit) = Arc::clone(&self.permits).acquire_owned().await else {
                    break;
                };
                tokio::spawn(async move {
                    job.await;
                    drop(permit);
                });
            }
        });
        (handle, in_flight)
    }
}

/// The requests a lane is running, for the drain to wait on.
pub(crate) struct InFlight {
    permits: Arc<Semaphore>,
    max: usize,
}

impl InFlight {
    /// Completes when nothing runs in the lane any more (and nothing can start: the
    /// permits are kept).
    pub async fn finished(&self) {
        if let Ok(all) = self.permits.acquire_many(self.max as u32).await {
            all.forget();
        }
    }

    /// Requests running now.
    pub fn running(&self) -> usize {
        self.max - self.permits.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(permits: usize, queue: usize) -> LaneBounds {
        LaneBounds {
            permits,
            queue,
            pace: None,
        }
    }

    /// A lane whose permits are held by jobs that wait on `gate`, and whose queue is full,
    /// sheds what it is offered next; the other lane runs its job at once.
    #[tokio::test]
    async fn a_full_lane_sheds_and_another_lane_still_runs() {
        let shed = ShedCounts::default();
        let gate = Arc::new(Semaphore::new(0));
        let (busy, runner) = lane("busy", bounds(2, 3));
        let (_handle, in_flight) = runner.start();
        for _ in 0..10 {
            let gate = Arc::clone(&gate);
            busy.offer(
                Box::pin(async move {
                    let _ = gate.acquire().await;
                }),
                &shed,
            );
        }
        // 2 run, 3 wait (one of them possibly held by the runner), the rest are shed.
        tokio::task::yield_now().await;
        let shed_count = shed.total(ShedReason::LaneFull);
        assert!(
            (4..=5).contains(&shed_count),
            "shed {shed_count} of 10 (2 running, 3 or 4 queued)"
        );
        assert_eq!(in_flight.running(), 2);

        let (other, runner) = lane("other", bounds(1, 1));
        let (_other_handle, _) = runner.start();
        let (tx, rx) = tokio::sync::oneshot::channel();
        other.offer(
            Box::pin(async move {
                let _ = tx.send(());
            }),
            &shed,
        );
        tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .expect("the other lane runs its job while the first is full")
            .unwrap();
        gate.add_permits(100);
        tokio::time::timeout(Duration::from_secs(5), in_flight.finished())
            .await
            .expect("the busy lane finishes once its jobs can");
    }

    /// A paced lane starts at most one job per pace, however many are offered.
    #[tokio::test(start_paused = true)]
    async fn a_paced_lane_starts_one_job_per_pace() {
        let shed = ShedCounts::default();
        let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (paced, runner) = lane(
            "paced",
            LaneBounds {
                permits: 8,
                queue: 100,
                pace: Some(Duration::from_millis(10)),
            },
        );
        let (_handle, _) = runner.start();
        for _ in 0..50 {
            let started = Arc::clone(&started);
            paced.offer(
                Box::pin(async move {
                    started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }),
                &shed,
            );
        }
        tokio::time::sleep(Duration::from_millis(105)).await;
        let n = started.load(std::sync::atomic::Ordering::SeqCst);
        // The first offer ran at once; then one per 10 ms.
        assert!((10..=13).contains(&n), "{n} jobs started in 105 ms");
    }
}
