//! What the audit trail kept of a load phase (issue 12: audit must not slow the hot path, and
//! what it drops is counted). After each backend phase the benchmark sets three figures side
//! by side:
//!
//! - **sent**: the gets the phase sent, warm-up included (the backend decided each one);
//! - **written**: the records of those gets on the stream `PIGGYBANK_AUDIT_<name>`, read
//!   back (records are batched, many to a message, so the stream's message count is not
//!   the record count: the messages are shown beside it);
//! - **dropped**: what the backend counted as lost over the phase (`audit_dropped` in its
//!   `status`, the same counter as the metric `piggybank.audit.dropped`).
//!
//! Written plus dropped should be sent; **missing** is what neither accounts for. Only the
//! benchmark caller's gets are counted (records of the protocol front door, operation `get`,
//! for its entity), so other traffic on a shared backend does not blur the figures; `status`
//! comes from whichever instance answers first, so with several instances `dropped` is that
//! one's.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};
use piggybank::audit;
use tokio::time::Instant;

use crate::load::Stats;

/// Longest wait for a phase's records to be written or counted dropped: the backend's writer
/// gives up on an acknowledgement after 5 s (and counts its records dropped).
const SETTLE: Duration = Duration::from_secs(7);

/// Reads the audit stream forward, and the backend's drop counter.
pub struct AuditProbe {
    nats: async_nats::Client,
    stream: Stream,
    /// Subjects of the protocol front door's records (all outcomes).
    protocol_subjects: String,
    status_subject: String,
    entity: String,
    /// The next stream sequence to read.
    next_sequence: u64,
    tally: AuditTally,
}

/// Running totals since the probe opened.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuditTally {
    /// The caller's get records on the stream.
    pub records: u64,
    /// Stream messages that held at least one of them.
    pub messages: u64,
    /// `audit_dropped` from `status`; `None` when no status answer carried it.
    pub dropped: Option<u64>,
}

/// One phase's figures.
#[derive(Debug, Clone, Copy)]
pub struct PhaseAudit {
    pub sent: u64,
    pub written: u64,
    pub messages: u64,
    pub dropped: Option<u64>,
    /// How long after the phase ended the last record arrived (or the wait gave up).
    pub settled_in: Duration,
}

impl PhaseAudit {
    /// Gets that have neither a record nor a drop counted.
    pub fn missing(&self) -> Option<u64> {
        self.dropped
            .map(|d| self.sent.saturating_sub(self.written.saturating_add(d)))
    }
}

impl AuditProbe {
    /// `None` when backend `name` has no audit stream this client can read (`--no-audit`).
    pub async fn open(
        nats: &async_nats::Client,
        name: &str,
        database_prefix: &str,
        entity: &str,
    ) -> anyhow::Result<Option<Self>> {
        let js = async_nats::jetstream::new(nats.clone());
        let mut stream = match js.get_stream(audit::stream_name(name)).await {
            Ok(stream) => stream,
            Err(_) => return Ok(None),
        };
        let next_sequence = stream.info().await?.state.last_sequence + 1;
        let mut probe = AuditProbe {
            nats: nats.clone(),
            stream,
            protocol_subjects: format!("{}.*.protocol", audit::subject_root(name)),
            // The database front door's subject (docs/sealed-mode.md), which the library
            // does not export.
            status_subject: format!("{database_prefix}.database.{name}.status"),
            entity: entity.to_string(),
            next_sequence,
            tally: AuditTally::default(),
        };
        probe.tally.dropped = probe.dropped().await;
        Ok(Some(probe))
    }

    /// The totals now: reads what the stream gained since the last call, asks `status`.
    pub async fn tally(&mut self) -> anyhow::Result<AuditTally> {
        loop {
            let message = match self
                .stream
                .get_first_raw_message_by_subject(&self.protocol_subjects, self.next_sequence)
                .await
            {
                Ok(message) => message,
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => break,
                Err(e) => return Err(e).context("cannot read the audit stream"),
            };
            self.next_sequence = message.sequence + 1;
            let ours = audit::records(&message.payload)
                .filter_map(Result::ok)
                .filter(|r| r.operation == piggybank::config::ops::GET)
                .filter(|r| r.entity.as_deref() == Some(self.entity.as_str()))
                .count() as u64;
            self.tally.records += ours;
            self.tally.messages += u64::from(ours > 0);
        }
        self.tally.dropped = self.dropped().await;
        Ok(self.tally)
    }

    /// The phase that sent `sent` gets since `before`: waits (up to [`SETTLE`]) until every
    /// one is written or counted dropped, then returns the difference.
    pub async fn phase(&mut self, before: AuditTally, sent: u64) -> anyhow::Result<PhaseAudit> {
        let start = Instant::now();
        loop {
            let now = self.tally().await?;
            let written = now.records - before.records;
            let dropped = match (now.dropped, before.dropped) {
                (Some(now), Some(before)) => Some(now.saturating_sub(before)),
                _ => None,
            };
            let settled = written + dropped.unwrap_or(0) >= sent;
            if settled || start.elapsed() >= SETTLE {
                return Ok(PhaseAudit {
                    sent,
                    written,
                    messages: now.messages - before.messages,
                    dropped,
                    settled_in: start.elapsed(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `audit_dropped` from the first `status` answer (unsigned: `status` needs no admin key).
    async fn dropped(&self) -> Option<u64> {
        let reply = tokio::time::timeout(
            Duration::from_secs(2),
            self.nats.request(self.status_subject.clone(), "".into()),
        )
        .await
        .ok()?
        .ok()?;
        let status: serde_json::Value = serde_json::from_slice(&reply.payload).ok()?;
        status.get("audit_dropped")?.as_u64()
    }
}

/// What the audit writer spends on one core: linking a record into its chain (serializing
/// and digesting it), and signing (once per message it publishes, on its last record).
pub fn print_sealing_cost() -> anyhow::Result<()> {
    use piggybank::audit::chain::{sign, Chain, InstanceKey};
    use piggybank::audit::{AuditRecord, Trail};
    let key = InstanceKey::generate()?;
    let mut chain = Chain::new(Trail::Decisions);
    let record = AuditRecord {
        time_ms: 1_700_000_000_000,
        request_id: "NAY2537EL4FQ-123456".into(),
        instance_id: "NAY2537EL4FQ".into(),
        front_door: "protocol".into(),
        operation: "get".into(),
        secret: Some("shop/db-password".into()),
        version: Some(3),
        entity: Some(nkeys::KeyPair::new_module().public_key()),
        host: Some(nkeys::KeyPair::new_server().public_key()),
        ..AuditRecord::default()
    };
    let n = 20_000u32;
    let started = std::time::Instant::now();
    let mut last = None;
    for _ in 0..n {
        let linked = chain.link(record.clone(), &key)?;
        last = Some(serde_json::to_vec(&linked)?.len());
        std::hint::black_box(&linked);
    }
    let link = started.elapsed() / n;
    let linked = chain.link(record.clone(), &key)?;
    let signatures = 2_000u32;
    let started = std::time::Instant::now();
    let mut signed_len = 0;
    for _ in 0..signatures {
        signed_len = sign(linked.clone(), &key)?.len();
    }
    let signing = started.elapsed() / signatures;
    println!(
        "audit writer, one core: linking {:.1} µs/record ({} bytes), signing {:.1} µs/message \
         ({} bytes signed); one signature per message",
        link.as_secs_f64() * 1e6,
        last.unwrap_or(0),
        signing.as_secs_f64() * 1e6,
        signed_len
    );
    Ok(())
}

/// The table's header.
pub fn print_header(stream: &str) {
    println!(
        "audit trail ({stream}), per backend run, warm-up included; \
         dropped is status's audit_dropped"
    );
    println!(
        "{:>4} {:>10} {:>10} {:>10} {:>9} {:>8} {:>8} {:>10}",
        "c", "gets/s", "gets sent", "written", "messages", "dropped", "missing", "settled ms"
    );
}

/// A row: the run's measured throughput, then its audit figures.
pub fn print_row(c: usize, stats: &Stats, phase: &PhaseAudit) {
    let or_unknown = |v: Option<u64>| v.map_or_else(|| "?".to_string(), |v| v.to_string());
    println!(
        "{c:>4} {:>10.0} {:>10} {:>10} {:>9} {:>8} {:>8} {:>10.0}",
        stats.per_second,
        phase.sent,
        phase.written,
        phase.messages,
        or_unknown(phase.dropped),
        or_unknown(phase.missing()),
        phase.settled_in.as_secs_f64() * 1e3
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_is_what_neither_records_nor_drops_account_for() {
        let phase = |written, dropped| PhaseAudit {
            sent: 100,
            written,
            messages: 1,
            dropped,
            settled_in: Duration::ZERO,
        };
        assert_eq!(phase(100, Some(0)).missing(), Some(0));
        assert_eq!(phase(90, Some(10)).missing(), Some(0));
        assert_eq!(phase(80, Some(5)).missing(), Some(15));
        assert_eq!(phase(80, None).missing(), None);
    }
}
