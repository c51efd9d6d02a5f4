//! Requests shed, rather than handled, counted per reason ([`ShedCounts`]): in the metric
//! `piggybank.requests.shed` (by `reason` and `at`, a lane or a connection), in `status`
//! (`shed`, by reason), and logged at warn at most every 10 s per reason with the counts, so
//! that a flood never becomes a flood of log lines. Nothing from the request (subject, reply
//! subject, body) is logged.
//!
//! Every way a request is shed is one [`ShedReason`]; one [`ShedCounts`] counts them for a
//! serve loop and its connection, so what `status` reports is what the metric counts.

use std::collections::BTreeMap;
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
    /// Its reply subject was refused by the reply policy: dropped unanswered at intake,
    /// before anything else was done with it.
    RefusedReply,
    /// Its operation carries no value, and it was larger than `max_request_bytes`: answered
    /// with a refusal, never handled.
    TooLarge,
    /// Its lane was full (every permit taken and its queue full, or its answers paced):
    /// dropped unanswered, without taking anything another lane needs.
    LaneFull,
}

impl ShedReason {
    const ALL: [ShedReason; 4] = [
        ShedReason::SlowConsumer,
        ShedReason::RefusedReply,
        ShedReason::TooLarge,
        ShedReason::LaneFull,
    ];

    /// The `reason` of the log line, of the metric and of `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            ShedReason::SlowConsumer => "slow_consumer",
            ShedReason::RefusedReply => "refused_reply",
            ShedReason::TooLarge => "too_large",
            ShedReason::LaneFull => "lane_full",
        }
    }

    fn message(self) -> &'static str {
        match self {
            ShedReason::SlowConsumer => {
                "requests dropped by the NATS client, unanswered: a subscription's buffer was \
                 full (its intake fell behind)"
            }
            ShedReason::RefusedReply => {
                "requests whose reply subject the reply policy refuses: dropped unanswered, \
                 nothing done"
            }
            ShedReason::TooLarge => {
                "requests over --max-request-bytes for an operation that carries no value: \
                 refused (413), not handled"
            }
            ShedReason::LaneFull => {
                "requests dropped unanswered: their lane (a front door, admin operations, \
                 refusals or discovery) was full; the other lanes were not affected"
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

    /// Count one request shed (at `place`: a lane, or a connection's role), and log if the
    /// last warning is 10 s old or more.
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

/// Requests shed since start, one count per [`ShedReason`]: one for a serve loop and the
/// connection it serves on.
pub struct ShedCounts {
    sheds: [Shed; ShedReason::ALL.len()],
}

impl Default for ShedCounts {
    fn default() -> Self {
        Self {
            sheds: ShedReason::ALL.map(Shed::new),
        }
    }
}

impl ShedCounts {
    fn of(&self, reason: ShedReason) -> &Shed {
        // `ALL` lists every reason in the order `sheds` holds them.
        let index = ShedReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or_default();
        &self.sheds[index]
    }

    /// Count one request shed for `reason` at `place` (a lane, or a connection's role).
    pub(crate) fn add(&self, reason: ShedReason, place: &'static str) {
        self.of(reason).add(place);
    }

    /// Requests shed for `reason` since start.
    pub(crate) fn total(&self, reason: ShedReason) -> u64 {
        self.of(reason).total()
    }

    /// Every reason and its count since start (zeros included): what `status` reports.
    pub fn by_reason(&self) -> BTreeMap<String, u64> {
        self.sheds
            .iter()
            .map(|s| (s.reason.as_str().to_string(), s.total()))
            .collect()
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

    #[test]
    fn each_reason_is_counted_apart() {
        let counts = ShedCounts::default();
        counts.add(ShedReason::RefusedReply, "protocol");
        counts.add(ShedReason::RefusedReply, "protocol");
        counts.add(ShedReason::LaneFull, "discovery");
        let by_reason = counts.by_reason();
        assert_eq!(by_reason["refused_reply"], 2);
        assert_eq!(by_reason["lane_full"], 1);
        assert_eq!(by_reason["slow_consumer"], 0);
        assert_eq!(by_reason["too_large"], 0);
        assert_eq!(by_reason.len(), ShedReason::ALL.len());
    }
}
