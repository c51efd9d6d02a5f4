//! The writer: one task per instance, on a NATS connection of the trail's own, that signs,
//! chains and publishes records and gathers the acknowledgements.
//!
//! - **Two buffers.** Decisions and refusals come on channels of their own, decisions
//!   first, so a refusal flood never takes a decision's slot.
//! - **Batches fit the server.** What is buffered at once goes out as one message per
//!   subject (JSON lines, [`super::records`] reads them back), each at most the
//!   connection's `max_payload` (a larger publish would make the server close the
//!   connection), and at most [`MAX_BATCH_RECORDS`] records.
//! - **Chained in publish order.** A record is linked into its trail's chain just before it
//!   is added to the message that carries it, so the chain's order is the stream's; the last
//!   record of each message is signed as the message is sent, which covers the whole
//!   message ([`super::chain`]).
//! - **Acknowledged by the right stream.** An acknowledgement naming another stream counts
//!   as a failure and is reported ([`super::health::Health::foreign_ack`]).
//! - **Summaries.** Every [`super::gate::WINDOW`] the refusal gate's closed window becomes
//!   summary records.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use futures::stream::{FuturesUnordered, StreamExt as _};
use tokio::sync::{mpsc, oneshot};

use super::chain::{sign, Chain, InstanceKey, SIGNATURE_BYTES};
use super::gate::{RefusalGate, WINDOW};
use super::health::Health;
use super::{trail_index, AuditRecord, Counters, Trail};
use crate::clock::now_ms;

/// A record and, with `--audit-required`, where to say whether it was acknowledged.
pub(super) struct Queued {
    pub record: AuditRecord,
    pub acked: Option<oneshot::Sender<bool>>,
}

/// Most records in one message.
const MAX_BATCH_RECORDS: usize = 512;
/// How long records without a waiting requester gather before they are written.
const LINGER: Duration = Duration::from_millis(20);
/// Most acknowledgements awaited at once.
const MAX_PENDING_ACKS: usize = 1024;
/// Longest a record may wait for its acknowledgement before it counts as dropped.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) struct WriterTask {
    client: async_nats::Client,
    js: jetstream::Context,
    key: InstanceKey,
    root: String,
    /// Each trail's stream name and chain, in `Trail::ALL`'s order.
    streams: Vec<String>,
    chains: [Chain; 3],
    counters: Arc<Counters>,
    health: Arc<Health>,
    gate: Arc<Mutex<RefusalGate>>,
    instance_id: String,
}

type Pending = FuturesUnordered<futures::future::BoxFuture<'static, (bool, u64)>>;

impl WriterTask {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: async_nats::Client,
        js: jetstream::Context,
        key: InstanceKey,
        root: String,
        streams: Vec<String>,
        counters: Arc<Counters>,
        health: Arc<Health>,
        gate: Arc<Mutex<RefusalGate>>,
        instance_id: String,
    ) -> Self {
        Self {
            client,
            js,
            key,
            root,
            streams,
            chains: Trail::ALL.map(Chain::new),
            counters,
            health,
            gate,
            instance_id,
        }
    }

    fn count_done(&self, ok: bool, count: u64) {
        let counter = if ok {
            &self.counters.written
        } else {
            &self.counters.dropped
        };
        counter.fetch_add(count, Ordering::Relaxed);
        self.counters.finished.fetch_add(count, Ordering::Relaxed);
    }

    pub async fn run(
        mut self,
        mut admin: mpsc::Receiver<Queued>,
        mut decisions: mpsc::Receiver<Queued>,
        mut refusals: mpsc::Receiver<Queued>,
    ) {
        let mut pending: Pending = FuturesUnordered::new();
        let mut tick = tokio::time::interval(WINDOW);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut admin_open, mut decisions_open, mut refusals_open) = (true, true, true);
        while admin_open || decisions_open || refusals_open {
            let room = pending.len() < MAX_PENDING_ACKS;
            tokio::select! {
                biased;
                queued = admin.recv(), if admin_open && room => match queued {
                    Some(first) => {
                        let batch = gather(first, &mut admin).await;
                        self.publish(Trail::Admin, batch, &mut pending).await;
                    }
                    None => admin_open = false,
                },
                queued = decisions.recv(), if decisions_open && room => match queued {
                    Some(first) => {
                        let batch = gather(first, &mut decisions).await;
                        self.publish(Trail::Decisions, batch, &mut pending).await;
                    }
                    None => decisions_open = false,
                },
                queued = refusals.recv(), if refusals_open && room => match queued {
                    Some(first) => {
                        let batch = gather(first, &mut refusals).await;
                        self.publish(Trail::Refusals, batch, &mut pending).await;
                    }
                    None => refusals_open = false,
                },
                Some((ok, count)) = pending.next(), if !pending.is_empty() => {
                    self.count_done(ok, count)
                }
                _ = tick.tick() => self.summarise(false, &mut pending).await,
            }
        }
        // The last window's summaries, whether it has closed or not.
        self.summarise(true, &mut pending).await;
        while let Some((ok, count)) = pending.next().await {
            self.count_done(ok, count);
        }
    }

    /// Write the summaries of the gate's window if it has closed (or, `closing`, anyway).
    async fn summarise(&mut self, closing: bool, pending: &mut Pending) {
        let summaries = {
            let mut gate = self.gate.lock().unwrap_or_else(|p| p.into_inner());
            gate.take_summaries(now_ms(), &self.instance_id, closing)
        };
        if summaries.is_empty() {
            return;
        }
        let batch = summaries
            .into_iter()
            .map(|mut record| {
                record.trail = Some(Trail::Refusals);
                self.counters.queued.fetch_add(1, Ordering::Relaxed);
                Queued {
                    record: record.bounded(),
                    acked: None,
                }
            })
            .collect();
        self.publish(Trail::Refusals, batch, pending).await;
    }

    /// Link `batch` into `trail`'s chain and publish it, one message per subject, each
    /// within the server's max payload, each signed once: by its last record's signature
    /// (see [`super::chain`]).
    async fn publish(&mut self, trail: Trail, batch: Vec<Queued>, pending: &mut Pending) {
        let max_payload = self.client.server_info().max_payload.max(1);
        let slot = trail_index(trail);
        for (subject, group) in by_subject(batch, |r| {
            trail.subject(&self.root, r.outcome.as_str(), &r.front_door)
        }) {
            let mut message = Message::default();
            for queued in group {
                let before = self.chains[slot].clone();
                let linked = self.chains[slot]
                    .link(queued.record, &self.key)
                    .and_then(|record| Ok((serde_json::to_vec(&record)?, record)));
                let Ok((line, record)) = linked else {
                    self.chains[slot] = before;
                    self.refuse(queued.acked);
                    continue;
                };
                // Each line may be the one that carries the message's signature.
                let room = line.len() + SIGNATURE_BYTES + 1;
                if room > max_payload {
                    // Never fits: dropped, and its place in the chain given back.
                    self.chains[slot] = before;
                    self.refuse(queued.acked);
                    continue;
                }
                if message.len() + room > max_payload {
                    let full = std::mem::take(&mut message);
                    self.send(trail, subject.clone(), full, pending).await;
                }
                message.push(line, record, self.chains[slot].seq());
                message.acks.extend(queued.acked);
            }
            if message.count > 0 {
                self.send(trail, subject, message, pending).await;
            }
        }
    }

    /// A record that will never be written.
    fn refuse(&self, acked: Option<oneshot::Sender<bool>>) {
        self.count_done(false, 1);
        if let Some(acked) = acked {
            let _ = acked.send(false);
        }
    }

    async fn send(&self, trail: Trail, subject: String, message: Message, pending: &mut Pending) {
        let expected = self.streams[trail_index(trail)].clone();
        let (body, count, acks, last_seq) = match message.signed(&self.key) {
            Ok(signed) => signed,
            Err(acks) => {
                // Unsigned records are written never: refused as any unwritable record.
                for acked in acks {
                    self.refuse(Some(acked));
                }
                return;
            }
        };
        let publish = self.js.publish(subject, body.into()).await;
        let health = Arc::clone(&self.health);
        let counters = Arc::clone(&self.counters);
        pending.push(Box::pin(async move {
            let ok = match publish {
                Ok(ack) => match tokio::time::timeout(ACK_TIMEOUT, ack).await {
                    Ok(Ok(ack)) if ack.stream == expected => true,
                    Ok(Ok(ack)) => {
                        health.foreign_ack(trail, &expected, &ack.stream);
                        false
                    }
                    _ => false,
                },
                Err(_) => false,
            };
            if ok {
                counters.acknowledged_seq[trail_index(trail)]
                    .fetch_max(last_seq, Ordering::Relaxed);
            }
            for acked in acks {
                let _ = acked.send(ok);
            }
            (ok, count)
        }));
    }
}

/// One message being filled.
#[derive(Default)]
struct Message {
    /// The lines of every record but the last, each with its newline.
    body: Vec<u8>,
    /// The last record, linked, and its line unsigned: signed when the message is sent.
    last: Option<(AuditRecord, Vec<u8>)>,
    count: u64,
    /// The chain sequence of its last record.
    last_seq: u64,
    acks: Vec<oneshot::Sender<bool>>,
}

impl Message {
    /// Its size once the last record is signed.
    fn len(&self) -> usize {
        self.body.len()
            + self
                .last
                .as_ref()
                .map_or(0, |(_, line)| line.len() + SIGNATURE_BYTES + 1)
    }

    /// Add a linked record and its line, unsigned.
    fn push(&mut self, line: Vec<u8>, record: AuditRecord, seq: u64) {
        if let Some((_, previous)) = self.last.replace((record, line)) {
            self.body.extend_from_slice(&previous);
            self.body.push(b'\n');
        }
        self.count += 1;
        self.last_seq = seq;
    }

    /// The body with its last record signed: (body, records, acknowledgements, last
    /// sequence); or, if it cannot be signed, the acknowledgements to refuse.
    #[allow(clippy::type_complexity)]
    fn signed(
        self,
        key: &InstanceKey,
    ) -> Result<(Vec<u8>, u64, Vec<oneshot::Sender<bool>>, u64), Vec<oneshot::Sender<bool>>> {
        let Message {
            mut body,
            last,
            count,
            last_seq,
            acks,
            ..
        } = self;
        if let Some((last, _)) = last {
            match sign(last, key) {
                Ok(line) => {
                    body.extend_from_slice(&line);
                    body.push(b'\n');
                }
                Err(_) => return Err(acks),
            }
        }
        Ok((body, count, acks, last_seq))
    }
}

/// `first` and what else is buffered (at most [`MAX_BATCH_RECORDS`]). Without
/// `--audit-required` nobody waits for a record: let more gather for [`LINGER`], so a steady
/// trickle of requests is one message per `LINGER` too.
async fn gather(first: Queued, rx: &mut mpsc::Receiver<Queued>) -> Vec<Queued> {
    let linger = first
        .acked
        .is_none()
        .then(|| tokio::time::Instant::now() + LINGER);
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH_RECORDS {
        let next = match rx.try_recv() {
            Ok(next) => Some(next),
            Err(_) => match linger {
                Some(until) => tokio::time::timeout_at(until, rx.recv())
                    .await
                    .ok()
                    .flatten(),
                None => None,
            },
        };
        let Some(next) = next else { break };
        batch.push(next);
    }
    batch
}

/// Records grouped by subject, in arrival order within each group.
fn by_subject(
    batch: Vec<Queued>,
    subject: impl Fn(&AuditRecord) -> String,
) -> Vec<(String, Vec<Queued>)> {
    let mut groups: Vec<(String, Vec<Queued>)> = Vec::new();
    for queued in batch {
        let s = subject(&queued.record);
        match groups.iter_mut().find(|(g, _)| *g == s) {
            Some((_, group)) => group.push(queued),
            None => groups.push((s, vec![queued])),
        }
    }
    groups
}
