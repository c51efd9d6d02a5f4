//! Requests shed, rather than handled: dropped by the client under load, or refused for
//! their size. Counted (and in the metric `piggybank.requests.shed`), and logged at warn at
//! most every 10 s with the counts, so that a flood never becomes a flood of log lines.
//! Nothing from the request (subject, reply subject, body) is logged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Shed requests are logged at most this often (with the count since the last log).
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Why a request was shed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShedReason {
    /// The client dropped it, unanswered: its subscription's buffer was full
    /// ([`super::ServeConnection`]).
    SlowConsumer,
    /// Its operation carries no value, and it was larger than `max_request_bytes`: answered
    /// with a refusal, never handled.
    TooLarge,
}

impl ShedReason {
    /// The `reason` of the log line and of the metric.
    pub fn as_str(self) -> &'static str {
        match self {
            ShedReason::SlowConsumer => "slow_consumer",
            ShedReason::TooLarge => "too_large",
        }
    }

    fn message(self) -> &'static str {
        match self {
            ShedReason::SlowConsumer => {
                "requests dropped by the NATS client, unanswered: a subscription's buffer was \
                 full (its front door is at --max-in-flight)"
            }
            ShedReason::TooLarge => {
                "requests over --max-request-bytes for an operation that carries no value: \
                 refused (413), not handled"
            }
        }
    }
}

/// A count of requests shed for one reason, and when it was last logged.
pub(crate) struct Shed {
    reason: ShedReason,
    total: AtomicU64,
    /// When the last warning was logged, and the total then.
    last_warning: Mutex<Option<(Instant, u64)>>,
}

impl Shed {
    pub fn new(reason: ShedReason) -> Self {
        Self {
            reason,
            total: AtomicU64::new(0),
            last_warning: Mutex::new(None),
        }
    }

    /// Count one request shed (at `place`: a front door, or a connection's role), and log if
    /// the last warning is 10 s old or more.
    pub fn add(&self, place: &'static str) {
        let total = self.total.fetch_add(1, Ordering::Relaxed) + 1;
        crate::metrics::shed(self.reason.as_str(), place);
        let mut last = self.last_warning.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|(at, _)| at.elapsed() >= WARN_EVERY) {
            let since = total - last.map_or(0, |(_, n)| n);
            *last = Some((Instant::now(), total));
            tracing::warn!(
                reason = self.reason.as_str(),
                at = place,
                shed_since_last_warning = since,
                shed_total = total,
                "{}",
                self.reason.message()
            );
        }
    }

    /// Requests shed since start.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_shed_is_counted_but_only_the_first_of_a_window_is_logged() {
        let shed = Shed::new(ShedReason::TooLarge);
        for _ in 0..1000 {
            shed.add("test");
        }
        assert_eq!(shed.total(), 1000);
        let last = *shed.last_warning.lock().unwrap();
        assert_eq!(
            last.map(|(_, n)| n),
            Some(1),
            "one warning, at the first drop"
        );
    }
}
