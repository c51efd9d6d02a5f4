//! The audit trail: one record per access decision, never a value, on two JetStream streams
//! (the trails, [`trail`]): the decisions an operator must keep, and the refusals anyone can
//! cause at will, so that no flood of the second can evict the first.
//!
//! - **Never a value.** An [`AuditRecord`] has no field that can hold a value, a seed, a
//!   key or a share: names, public keys, ids, and a reason that is a short code chosen by
//!   the code, never an error's text (which may quote what a request sent).
//! - **Bounded.** Every field a requester can influence is capped ([`bounds`]): a record is
//!   at most [`MAX_RECORD_BYTES`], whatever the request held.
//! - **Decisions apart from refusals.** [`Trail::of`] is the one rule. Decisions go to a
//!   stream that refuses new records when full (discard new), refusals to one of their own
//!   that evicts its oldest, summarised beyond a rate ([`gate`]).
//! - **Tamper-evident.** Each instance signs its records with a key made at start and
//!   chains them per trail ([`chain`]); `piggybank audit --verify` ([`verify`]) reports
//!   every gap, reorder, forged record and foreign stream.
//! - **Checked streams.** An instance configures both streams at start, checks them every
//!   second and checks the stream named in every acknowledgement ([`health`]); with
//!   `--audit-required` it refuses to serve while its decisions stream is not the one it
//!   configured.
//! - **Off the hot path.** Records go to bounded buffers (one per trail, so refusals never
//!   take the decisions' slots), and one task on a NATS connection of its own signs them,
//!   publishes them in batches that fit the server's max payload ([`writer`]) and gathers
//!   the acknowledgements. A record that cannot be buffered or is not acknowledged is
//!   counted as dropped ([`Auditor::dropped`], in `status`).
//! - **Fail closed on request** (`--audit-required`): a request is answered only once its
//!   decision record is acknowledged by the stream; when it cannot be written, the request
//!   is refused instead of served unaudited. A refusal's record is never waited for: the
//!   request it records was refused anyway.
//! - **Where replies cannot reach.** The subjects start with `$`, where piggybank never
//!   publishes a reply (`crate::reply_policy`), so no request can make the backend forge a
//!   record; who else may publish there is the operator's NATS permissions' business (give
//!   only the backend's user publish rights on `$PIGGYBANK.AUDIT.>`); a record published by
//!   anyone else carries no valid signature of a known instance key.

mod bounds;
pub mod chain;
pub mod gate;
mod health;
pub mod trail;
pub mod verify;
mod writer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

pub use bounds::MAX_RECORD_BYTES;
pub use trail::{Trail, TrailStream};

use crate::clock::now_ms;
use crate::decision::Decision;
use health::Health;

/// How a decision went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Served or done.
    #[default]
    Allowed,
    /// Refused: authorization, a signature, the seal, or a policy.
    Denied,
    /// Failed: a bad request, something missing, or the store.
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
            Outcome::Error => "error",
        }
    }
}

/// A wRPC caller: the link it came through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkRef {
    pub source_id: String,
    pub name: String,
}

/// One access decision (or, on the refusal trail, a summary of many).
///
/// The field order is part of the signed bytes ([`chain`]): add a field only at the end.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Unix milliseconds.
    pub time_ms: u64,
    /// Unique per request: `<instance id>-<n>`; also on the request's tracing span.
    pub request_id: String,
    pub instance_id: String,
    /// `protocol`, `database`, `api` or `wit`.
    pub front_door: String,
    pub operation: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// The verified component or provider key (`M...`, `V...`), or an entity whose mapping
    /// was changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity: Option<String>,
    /// The admin key that signed the request (`U...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<LinkRef>,
    /// The Piggy Bank API's application, or the wadm application a host's `get` named
    /// (`context.application.name`, a claim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application: Option<String>,
    /// What granted an allowed `get`: `entity` (a mapping of its key) or `application` (a
    /// grant to the application it named).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granted_by: Option<String>,
    /// The host key (`N...`) the request's host JWT names, once its signature verified. A
    /// claim: a wasmCloud 1.x host signs its own JWT with an account key it makes at start,
    /// so no trust anchor can check it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub outcome: Outcome,
    /// Why it was denied or failed: a short code (`not_mapped`, `sealed`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A summary ([`gate`]): how many refusals like this one it stands for ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// ... counted from this time (Unix ms) to `time_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<u64>,
    /// A field was longer than its cap and was cut ([`bounds`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// The trail it was written to ([`Trail::of`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trail: Option<Trail>,
    /// The chain ([`chain`]): the writing instance's public key (`N...`), ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_key: Option<String>,
    /// ... the record's place in that instance's chain on this trail, from 1, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// ... the previous record's digest and time (absent on the first), ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_time_ms: Option<u64>,
    /// ... and the instance key's signature over the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
}

/// What a handler knows about its decision; the finishing step ([`crate::finish`]) adds the
/// rest (time, request id, instance, front door, the admin key the serve loop verified) and
/// records it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditNote {
    pub operation: Option<String>,
    pub secret: Option<String>,
    pub version: Option<u64>,
    pub entity: Option<String>,
    pub link: Option<LinkRef>,
    pub application: Option<String>,
    /// What granted an allowed `get` (`entity` or `application`).
    pub granted_by: Option<String>,
    pub host: Option<String>,
    /// What was decided; `None` until a handler says (a reply without one was served).
    pub decision: Option<Decision>,
    /// An open read that reveals nothing (`server_xkey`, `status`): anyone may make it at
    /// will, so it goes to the refusal trail ([`Trail::of`]).
    pub public_read: bool,
}

impl AuditNote {
    pub fn operation(op: impl Into<String>) -> Self {
        Self {
            operation: Some(op.into()),
            ..Self::default()
        }
    }

    pub fn secret(mut self, name: impl Into<String>) -> Self {
        self.secret = Some(name.into());
        self
    }

    pub fn entity(mut self, key: impl Into<String>) -> Self {
        self.entity = Some(key.into());
        self
    }

    pub fn allowed(self) -> Self {
        self.decided(Decision::Allowed)
    }

    /// Served, and what it served anyone may know ([`AuditNote::public_read`]).
    pub fn public_read(mut self) -> Self {
        self.public_read = true;
        self
    }

    /// Record what was decided (see [`Decision`]: the core's own, or the door's for what the
    /// core never saw).
    pub fn decided(mut self, decision: Decision) -> Self {
        self.decision = Some(decision);
        self
    }

    /// The decision, a note without one being a request that was served.
    pub fn decision(&self) -> Decision {
        self.decision.unwrap_or(Decision::Allowed)
    }
}

/// Retention and behaviour of the audit trails.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// `false`: no stream, no records.
    pub enabled: bool,
    /// How long both trails keep a record.
    pub max_age: Duration,
    /// The decisions trail's size; once full it refuses new records (never evicts).
    pub max_bytes: i64,
    /// The refusal trail's size; once full its oldest records go.
    pub refusals_max_bytes: i64,
    pub replicas: usize,
    /// Refuse requests whose record cannot be written.
    pub required: bool,
    /// Records buffered (per trail) before they are dropped (or, with `required`, refused).
    pub buffer: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_age: Duration::from_secs(crate::config::DEFAULT_AUDIT_MAX_AGE_SECS),
            max_bytes: crate::config::DEFAULT_AUDIT_MAX_BYTES,
            refusals_max_bytes: crate::config::DEFAULT_AUDIT_REFUSALS_MAX_BYTES,
            replicas: 1,
            required: false,
            buffer: crate::config::DEFAULT_AUDIT_BUFFER,
        }
    }
}

impl AuditConfig {
    /// The stream `trail` must be, for backend `name`.
    pub fn stream(&self, trail: Trail, name: &str) -> TrailStream {
        let max_bytes = match trail {
            Trail::Decisions | Trail::Admin => self.max_bytes,
            Trail::Refusals => self.refusals_max_bytes,
        };
        TrailStream::new(trail, name, self.max_age, max_bytes, self.replicas)
    }
}

/// The decisions trail's stream name for backend `name`.
pub fn stream_name(name: &str) -> String {
    Trail::Decisions.stream_name(name)
}

/// The subject tree of backend `name`'s records.
pub fn subject_root(name: &str) -> String {
    format!("$PIGGYBANK.AUDIT.{name}")
}

/// The record could not be written, and `--audit-required` is set.
#[derive(Debug, thiserror::Error)]
#[error("the audit trail cannot be written, and this backend requires it (--audit-required)")]
pub struct AuditUnavailable;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit trail: {0}")]
    Key(#[from] chain::ChainError),
    #[error("audit stream {stream}: {message}")]
    Stream { stream: String, message: String },
    #[error(
        "audit stream {stream} is not the one this backend configures, and --audit-required \
         is set: {problems}"
    )]
    Foreign { stream: String, problems: String },
}

/// What `status` says about this instance's trail.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditStatus {
    /// The public key this instance signs its records with (`N...`).
    pub instance_key: String,
    /// `--audit-required`.
    pub required: bool,
    /// Records acknowledged, and lost (not buffered, or not acknowledged).
    pub written: u64,
    pub dropped: u64,
    /// Refusals counted into summaries instead of written one by one.
    pub summarised: u64,
    /// The retention this instance configured.
    pub max_age_secs: u64,
    pub max_bytes: i64,
    pub refusals_max_bytes: i64,
    /// By trail (`decisions`, `refusals`): the chain sequence of this instance's last
    /// record the stream acknowledged. `--verify` reads `status` before the streams, so a
    /// chain that ends before it lost its last records.
    #[serde(default)]
    pub acknowledged_seq: std::collections::BTreeMap<Trail, u64>,
    /// What is wrong with the streams, as last checked: empty when both are the ones this
    /// instance configured. With `required`, a problem with the decisions stream refuses
    /// every request.
    #[serde(default)]
    pub problems: Vec<String>,
}

/// Counters shared by the auditor and its writer.
#[derive(Debug, Default)]
struct Counters {
    written: AtomicU64,
    dropped: AtomicU64,
    summarised: AtomicU64,
    /// Records handed to the writer, and those it is done with (written or dropped).
    queued: AtomicU64,
    finished: AtomicU64,
    /// By trail: the chain sequence of the last record acknowledged.
    acknowledged_seq: [AtomicU64; 3],
}

/// A trail's index in per-trail arrays (`Trail::ALL`'s order).
fn trail_index(trail: Trail) -> usize {
    trail.index()
}

/// Writes records. Cheap to share.
pub struct Auditor {
    instance_id: String,
    next_id: AtomicU64,
    counters: Arc<Counters>,
    /// `None`: auditing is off.
    writer: Option<Writer>,
}

struct Writer {
    decisions: mpsc::Sender<writer::Queued>,
    refusals: mpsc::Sender<writer::Queued>,
    /// Its own buffer too: a flood of reads fills the decisions' buffer, never this one.
    admin: mpsc::Sender<writer::Queued>,
    gate: Arc<std::sync::Mutex<gate::RefusalGate>>,
    health: Arc<Health>,
    instance_key: String,
    config: AuditConfig,
}

impl Auditor {
    /// No trail: every call is a no-op.
    pub fn disabled(instance_id: &str) -> Self {
        Self {
            instance_id: instance_id.to_string(),
            next_id: AtomicU64::new(0),
            counters: Arc::default(),
            writer: None,
        }
    }

    /// Make this instance's key, configure both streams (create them, or set an existing
    /// one back to this instance's config) and start the writer and the stream checks, on
    /// `client`, a connection of the trail's own.
    pub async fn start(
        client: async_nats::Client,
        js_domain: Option<&str>,
        backend_name: &str,
        instance_id: &str,
        config: &AuditConfig,
    ) -> Result<Self, AuditError> {
        if !config.enabled {
            return Ok(Self::disabled(instance_id));
        }
        let key = chain::InstanceKey::generate()?;
        let js = crate::store::jetstream(&client, js_domain);
        let health = Arc::new(Health::default());
        let mut configured = Vec::new();
        for trail in Trail::ALL {
            let mut spec = config.stream(trail, backend_name);
            let created = health::configure(&js, &mut spec, config.required).await?;
            configured.push((spec, created));
        }
        let counters = Arc::<Counters>::default();
        let gate = Arc::<std::sync::Mutex<gate::RefusalGate>>::default();
        let (decisions, decisions_rx) = mpsc::channel(config.buffer.max(1));
        let (refusals, refusals_rx) = mpsc::channel(config.buffer.max(1));
        let (admin, admin_rx) = mpsc::channel(config.buffer.max(1));
        tokio::spawn(health::watch(
            js.clone(),
            configured.clone(),
            Arc::downgrade(&health),
        ));
        let instance_key = key.public().to_string();
        let task = writer::WriterTask::new(
            client,
            js,
            key,
            subject_root(backend_name),
            configured
                .iter()
                .map(|(spec, _)| spec.name.clone())
                .collect(),
            Arc::clone(&counters),
            Arc::clone(&health),
            Arc::clone(&gate),
            instance_id.to_string(),
        );
        tokio::spawn(task.run(admin_rx, decisions_rx, refusals_rx));
        Ok(Self {
            instance_id: instance_id.to_string(),
            next_id: AtomicU64::new(0),
            counters,
            writer: Some(Writer {
                decisions,
                refusals,
                admin,
                gate,
                health,
                instance_key,
                config: config.clone(),
            }),
        })
    }

    /// A new request id: `<instance id>-<n>`.
    pub fn request_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.instance_id)
    }

    pub(crate) fn is_required(&self) -> bool {
        self.writer.as_ref().is_some_and(|w| w.config.required)
    }

    /// Records lost: not buffered, or not acknowledged.
    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }

    /// Records acknowledged by the stream.
    pub fn written(&self) -> u64 {
        self.counters.written.load(Ordering::Relaxed)
    }

    /// The public key this instance signs its records with; `None` when auditing is off.
    pub fn instance_key(&self) -> Option<&str> {
        self.writer.as_ref().map(|w| w.instance_key.as_str())
    }

    /// What `status` reports; `None` when auditing is off.
    pub fn status(&self) -> Option<AuditStatus> {
        let writer = self.writer.as_ref()?;
        Some(AuditStatus {
            instance_key: writer.instance_key.clone(),
            required: writer.config.required,
            written: self.written(),
            dropped: self.dropped(),
            summarised: self.counters.summarised.load(Ordering::Relaxed),
            max_age_secs: writer.config.max_age.as_secs(),
            max_bytes: writer.config.max_bytes,
            refusals_max_bytes: writer.config.refusals_max_bytes,
            acknowledged_seq: Trail::ALL
                .iter()
                .map(|t| {
                    let seq =
                        self.counters.acknowledged_seq[trail_index(*t)].load(Ordering::Relaxed);
                    (*t, seq)
                })
                .collect(),
            problems: writer.health.problems(),
        })
    }

    /// Wait, until `deadline` at most, for every record handed to the writer to be written
    /// or dropped (at shutdown: the last requests' records are not left in the buffer).
    /// Returns how many are still pending.
    pub async fn flush(&self, deadline: tokio::time::Instant) -> u64 {
        loop {
            let done = self.counters.finished.load(Ordering::Relaxed);
            let pending = self
                .counters
                .queued
                .load(Ordering::Relaxed)
                .saturating_sub(done);
            if pending == 0 || tokio::time::Instant::now() >= deadline {
                return pending;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The record of `note`, completed, on the trail [`Trail::of`] says.
    pub fn complete(
        &self,
        request_id: String,
        front_door: &str,
        note: AuditNote,
        admin_key: Option<String>,
    ) -> AuditRecord {
        let decision = note.decision();
        let trail = Trail::of(&note, admin_key.as_deref());
        AuditRecord {
            time_ms: now_ms(),
            request_id,
            instance_id: self.instance_id.clone(),
            front_door: front_door.to_string(),
            operation: note.operation.unwrap_or_else(|| "unknown".into()),
            secret: note.secret,
            version: note.version,
            entity: note.entity,
            admin_key,
            link: note.link,
            application: note.application,
            granted_by: note.granted_by,
            host: note.host,
            outcome: decision.outcome(),
            reason: decision.reason().map(str::to_string),
            trail: Some(trail),
            ..AuditRecord::default()
        }
    }

    /// Record `record` (bounded first), on its trail (a record that names none is a
    /// decision). Without `--audit-required`, buffered and written in the background (`Ok`
    /// even when dropped; the drop is counted). With it, a decision is `Ok` only once the
    /// stream has acknowledged it; a refusal is never waited for.
    pub async fn record(&self, record: AuditRecord) -> Result<(), AuditUnavailable> {
        let Some(writer) = &self.writer else {
            return Ok(());
        };
        let record = record.bounded();
        let required = writer.config.required;
        if record.trail == Some(Trail::Refusals) {
            let admitted = {
                let mut gate = writer.gate.lock().unwrap_or_else(|p| p.into_inner());
                gate.admit(&record, now_ms())
            };
            if !admitted {
                self.counters.summarised.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            self.enqueue(&writer.refusals, record, None);
            return Ok(());
        }
        let (trail, buffer) = match record.trail {
            Some(Trail::Admin) => (Trail::Admin, &writer.admin),
            _ => (Trail::Decisions, &writer.decisions),
        };
        if required && writer.health.refuses(trail) {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return Err(AuditUnavailable);
        }
        if !required {
            self.enqueue(buffer, record, None);
            return Ok(());
        }
        let (acked, ack) = tokio::sync::oneshot::channel();
        if !self.enqueue(buffer, record, Some(acked)) {
            return Err(AuditUnavailable);
        }
        match ack.await {
            Ok(true) => Ok(()),
            _ => Err(AuditUnavailable),
        }
    }

    /// Hand `record` to the writer; `false` (counted as dropped) when its buffer is full.
    fn enqueue(
        &self,
        to: &mpsc::Sender<writer::Queued>,
        record: AuditRecord,
        acked: Option<tokio::sync::oneshot::Sender<bool>>,
    ) -> bool {
        match to.try_send(writer::Queued { record, acked }) {
            Ok(()) => {
                self.counters.queued.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(_) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

/// The records of one message of a trail (JSON lines).
pub fn records(
    payload: &[u8],
) -> impl Iterator<Item = Result<AuditRecord, serde_json::Error>> + '_ {
    payload
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(serde_json::from_slice)
}
