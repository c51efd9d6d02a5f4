//! Refusal floods are summarised: within each window of [`WINDOW`], the first
//! [`INDIVIDUAL_PER_WINDOW`] refusals are written one record each; the rest are counted per
//! (operation, reason, front door, source) and written as one summary record per key when
//! the window closes (`count`, `since_ms`). At most [`MAX_KEYS`] keys are counted per
//! window; beyond them, counts go to one key with every part `*`.
//!
//! So what a flood writes to the refusal trail is bounded by the rate, not by the flood:
//! at most `INDIVIDUAL_PER_WINDOW + MAX_KEYS + 1` records per window, each bounded
//! ([`super::bounds`]).
//!
//! A refusal's source is the key it named once verified (its entity, else its host), or
//! `-`: NATS does not tell a responder who sent a message.

use std::collections::HashMap;
use std::time::Duration;

use super::{AuditRecord, Outcome};

pub const WINDOW: Duration = Duration::from_secs(1);
pub const INDIVIDUAL_PER_WINDOW: u32 = 100;
pub const MAX_KEYS: usize = 64;

/// What a summary counts together.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    operation: String,
    reason: Option<String>,
    outcome: Outcome,
    front_door: String,
    source: Option<String>,
}

impl Key {
    fn of(record: &AuditRecord) -> Self {
        Key {
            operation: record.operation.clone(),
            reason: record.reason.clone(),
            outcome: record.outcome,
            front_door: record.front_door.clone(),
            source: record.entity.clone().or_else(|| record.host.clone()),
        }
    }

    fn overflow(outcome: Outcome) -> Self {
        Key {
            operation: "*".into(),
            reason: Some("*".into()),
            outcome,
            front_door: "*".into(),
            source: None,
        }
    }
}

/// The current window's counts. Not thread-safe: the auditor holds it under a mutex (each
/// call is a few map operations).
#[derive(Debug, Default)]
pub struct RefusalGate {
    window_start_ms: u64,
    individual: u32,
    counts: HashMap<Key, u64>,
}

impl RefusalGate {
    /// `true`: write `record` on its own. `false`: it was counted, for the window's summary.
    pub fn admit(&mut self, record: &AuditRecord, now_ms: u64) -> bool {
        if now_ms.saturating_sub(self.window_start_ms) >= WINDOW.as_millis() as u64
            && self.counts.is_empty()
        {
            self.window_start_ms = now_ms;
            self.individual = 0;
        }
        if self.individual < INDIVIDUAL_PER_WINDOW {
            self.individual += 1;
            return true;
        }
        let key = Key::of(record);
        let key = if self.counts.contains_key(&key) || self.counts.len() < MAX_KEYS {
            key
        } else {
            Key::overflow(record.outcome)
        };
        *self.counts.entry(key).or_default() += 1;
        false
    }

    /// The summaries of a window that has closed by `now_ms`, or, `closing` (at shutdown), of
    /// the current one; none while it is open, or when nothing was counted. The next window
    /// starts with them taken.
    pub fn take_summaries(
        &mut self,
        now_ms: u64,
        instance_id: &str,
        closing: bool,
    ) -> Vec<AuditRecord> {
        let closed =
            closing || now_ms.saturating_sub(self.window_start_ms) >= WINDOW.as_millis() as u64;
        if !closed || self.counts.is_empty() {
            return Vec::new();
        }
        let since_ms = self.window_start_ms;
        self.window_start_ms = now_ms;
        self.individual = 0;
        let mut summaries: Vec<AuditRecord> = self
            .counts
            .drain()
            .map(|(key, count)| AuditRecord {
                time_ms: now_ms,
                request_id: "summary".into(),
                instance_id: instance_id.to_string(),
                front_door: key.front_door,
                operation: key.operation,
                entity: key.source,
                outcome: key.outcome,
                reason: key.reason,
                count: Some(count),
                since_ms: Some(since_ms),
                ..AuditRecord::default()
            })
            .collect();
        summaries.sort_by_key(|s| std::cmp::Reverse(s.count));
        summaries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(reason: &str, entity: Option<String>) -> AuditRecord {
        AuditRecord {
            operation: "get".into(),
            front_door: "protocol".into(),
            outcome: Outcome::Error,
            reason: Some(reason.into()),
            entity,
            ..AuditRecord::default()
        }
    }

    #[test]
    fn a_flood_beyond_the_rate_becomes_one_summary_per_key() {
        let mut gate = RefusalGate::default();
        let now = 10_000;
        let written = (0..10_000)
            .filter(|_| gate.admit(&refusal("invalid_name", None), now))
            .count();
        assert_eq!(written, INDIVIDUAL_PER_WINDOW as usize);
        assert!(
            gate.take_summaries(now + 10, "i", false).is_empty(),
            "window still open"
        );
        let summaries = gate.take_summaries(now + 1_000, "i", false);
        assert_eq!(summaries.len(), 1);
        assert_eq!(
            summaries[0].count,
            Some(10_000 - u64::from(INDIVIDUAL_PER_WINDOW))
        );
        assert_eq!(summaries[0].since_ms, Some(now));
        assert_eq!(summaries[0].reason.as_deref(), Some("invalid_name"));
        // The next window writes individually again.
        assert!(gate.admit(&refusal("invalid_name", None), now + 1_001));
    }

    #[test]
    fn many_sources_are_counted_in_bounded_keys() {
        let mut gate = RefusalGate::default();
        for i in 0..(INDIVIDUAL_PER_WINDOW as usize + 10_000) {
            gate.admit(&refusal("not_mapped", Some(format!("M{i}"))), 0);
        }
        let summaries = gate.take_summaries(WINDOW.as_millis() as u64, "i", false);
        assert_eq!(summaries.len(), MAX_KEYS + 1);
        let total: u64 = summaries.iter().filter_map(|s| s.count).sum();
        assert_eq!(total, 10_000);
    }
}
