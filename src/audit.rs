//! The audit trail: one record per access decision, on the JetStream stream
//! `PIGGYBANK_AUDIT_<name>` (subjects `$PIGGYBANK.AUDIT.<name>.<outcome>.<front door>`).
//!
//! - **Never a value.** An [`AuditRecord`] has no field that can hold a value, a seed, a
//!   key or a share: names, public keys, ids, and a reason that is a short code chosen by
//!   the code, never an error's text (which may quote what a request sent).
//! - **Off the hot path.** Records go to a bounded buffer, and one task publishes them and
//!   gathers the acknowledgements. What is buffered at once goes out as one message per
//!   subject (JSON lines, [`records`] reads them back), so a busy instance costs the NATS
//!   server one stored message for many decisions. A record that cannot be buffered or is not acknowledged
//!   is counted as dropped ([`Auditor::dropped`], in `status`).
//! - **Fail closed on request** (`--audit-required`): a request is answered only once its
//!   record is acknowledged by the stream; when it cannot be written, the request is
//!   refused instead of served unaudited.
//! - **Where replies cannot reach.** The subjects start with `$`, where piggybank never
//!   publishes a reply (`crate::reply_policy`), so no request can make the backend forge a
//!   record; who else may publish there is the operator's NATS permissions' business (give
//!   only the backend's user publish rights on `$PIGGYBANK.AUDIT.>`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::clock::now_ms;
use crate::decision::Decision;
use crate::store::StoreError;

/// How a decision went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Served or done.
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

/// One access decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

/// Retention and behaviour of the audit stream.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// `false`: no stream, no records.
    pub enabled: bool,
    pub max_age: Duration,
    pub max_bytes: i64,
    pub replicas: usize,
    /// Refuse requests whose record cannot be written.
    pub required: bool,
    /// Records buffered before they are dropped (or, with `required`, refused).
    pub buffer: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_age: Duration::from_secs(crate::config::DEFAULT_AUDIT_MAX_AGE_SECS),
            max_bytes: crate::config::DEFAULT_AUDIT_MAX_BYTES,
            replicas: 1,
            required: false,
            buffer: crate::config::DEFAULT_AUDIT_BUFFER,
        }
    }
}

/// The stream's name for backend `name`.
pub fn stream_name(name: &str) -> String {
    format!("PIGGYBANK_AUDIT_{name}")
}

/// The subject tree of backend `name`'s records.
pub fn subject_root(name: &str) -> String {
    format!("$PIGGYBANK.AUDIT.{name}")
}

/// The record could not be written, and `--audit-required` is set.
#[derive(Debug, thiserror::Error)]
#[error("the audit trail cannot be written, and this backend requires it (--audit-required)")]
pub struct AuditUnavailable;

/// Writes records. Cheap to share.
pub struct Auditor {
    instance_id: String,
    subject_root: String,
    next_id: AtomicU64,
    dropped: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
    /// Records handed to the writer, and those it is done with (written or dropped).
    queued: AtomicU64,
    finished: Arc<AtomicU64>,
    /// `None`: auditing is off.
    writer: Option<Writer>,
}

struct Writer {
    tx: mpsc::Sender<Queued>,
    required: bool,
}

/// A record and, with `--audit-required`, where to say whether it was acknowledged.
struct Queued {
    subject: String,
    payload: Vec<u8>,
    acked: Option<tokio::sync::oneshot::Sender<bool>>,
}

/// Most records in one message, and most bytes (well under NATS's default max payload).
const MAX_BATCH_RECORDS: usize = 512;
const MAX_BATCH_BYTES: usize = 256 * 1024;
/// How long records without a waiting requester gather before they are written.
const LINGER: Duration = Duration::from_millis(20);
/// Most acknowledgements awaited at once by the writer.
const MAX_PENDING_ACKS: usize = 1024;
/// Longest a record may wait for its acknowledgement before it counts as dropped.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

impl Auditor {
    /// No trail: every call is a no-op.
    pub fn disabled(instance_id: &str) -> Self {
        Self {
            instance_id: instance_id.to_string(),
            subject_root: String::new(),
            next_id: AtomicU64::new(0),
            dropped: Arc::default(),
            written: Arc::default(),
            queued: AtomicU64::new(0),
            finished: Arc::default(),
            writer: None,
        }
    }

    /// Create (or update) the stream and start the writer.
    pub async fn start(
        js: &jetstream::Context,
        backend_name: &str,
        instance_id: &str,
        config: &AuditConfig,
    ) -> Result<Self, StoreError> {
        if !config.enabled {
            return Ok(Self::disabled(instance_id));
        }
        let subject_root = subject_root(backend_name);
        let stream = jetstream::stream::Config {
            name: stream_name(backend_name),
            description: Some("piggybank audit trail: one record per access decision".into()),
            subjects: vec![format!("{subject_root}.>")],
            max_age: config.max_age,
            max_bytes: config.max_bytes,
            num_replicas: config.replicas,
            discard: jetstream::stream::DiscardPolicy::Old,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        };
        match js.get_or_create_stream(stream.clone()).await {
            Ok(_) => {}
            Err(e) => return Err(StoreError::upstream(format!("audit stream: {e}"))),
        }
        let (tx, rx) = mpsc::channel(config.buffer.max(1));
        let (dropped, written) = (Arc::<AtomicU64>::default(), Arc::<AtomicU64>::default());
        let finished = Arc::<AtomicU64>::default();
        tokio::spawn(write(
            js.clone(),
            rx,
            [
                Arc::clone(&written),
                Arc::clone(&dropped),
                Arc::clone(&finished),
            ],
        ));
        Ok(Self {
            instance_id: instance_id.to_string(),
            subject_root,
            next_id: AtomicU64::new(0),
            dropped,
            written,
            queued: AtomicU64::new(0),
            finished,
            writer: Some(Writer {
                tx,
                required: config.required,
            }),
        })
    }

    /// A new request id: `<instance id>-<n>`.
    pub fn request_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.instance_id)
    }

    pub(crate) fn is_required(&self) -> bool {
        self.writer.as_ref().is_some_and(|w| w.required)
    }

    /// Records lost: not buffered, or not acknowledged.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Records acknowledged by the stream.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Wait, until `deadline` at most, for every record handed to the writer to be written
    /// or dropped (at shutdown: the last requests' records are not left in the buffer).
    /// Returns how many are still pending.
    pub async fn flush(&self, deadline: tokio::time::Instant) -> u64 {
        loop {
            let done = self.finished.load(Ordering::Relaxed);
            let pending = self.queued.load(Ordering::Relaxed).saturating_sub(done);
            if pending == 0 || tokio::time::Instant::now() >= deadline {
                return pending;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The record of `note`, completed.
    pub fn complete(
        &self,
        request_id: String,
        front_door: &str,
        note: AuditNote,
        admin_key: Option<String>,
    ) -> AuditRecord {
        let decision = note.decision();
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
        }
    }

    /// Record `record`. Without `--audit-required`, buffered and written in the background
    /// (`Ok` even when dropped; the drop is counted). With it, `Ok` only once the stream has
    /// acknowledged it.
    pub async fn record(&self, record: AuditRecord) -> Result<(), AuditUnavailable> {
        let Some(writer) = &self.writer else {
            return Ok(());
        };
        let subject = format!(
            "{}.{}.{}",
            self.subject_root,
            record.outcome.as_str(),
            record.front_door
        );
        let payload = match serde_json::to_vec(&record) {
            Ok(p) => p,
            Err(_) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return if writer.required {
                    Err(AuditUnavailable)
                } else {
                    Ok(())
                };
            }
        };
        if !writer.required {
            let sent = writer.tx.try_send(Queued {
                subject,
                payload,
                acked: None,
            });
            match sent {
                Ok(()) => self.queued.fetch_add(1, Ordering::Relaxed),
                Err(_) => self.dropped.fetch_add(1, Ordering::Relaxed),
            };
            return Ok(());
        }
        let (acked, ack) = tokio::sync::oneshot::channel();
        let queued = Queued {
            subject,
            payload,
            acked: Some(acked),
        };
        if writer.tx.try_send(queued).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Err(AuditUnavailable);
        }
        self.queued.fetch_add(1, Ordering::Relaxed);
        match ack.await {
            Ok(true) => Ok(()),
            _ => Err(AuditUnavailable),
        }
    }
}

/// The writer: gather what is buffered into one message per subject (records are JSON
/// lines; a busy instance writes one message for many decisions, which keeps the cost to
/// the NATS server low), publish it, and gather acknowledgements (at most
/// [`MAX_PENDING_ACKS`] messages awaited at once).
async fn write(
    js: jetstream::Context,
    mut rx: mpsc::Receiver<Queued>,
    [written, dropped, finished]: [Arc<AtomicU64>; 3],
) {
    let count_done = |ok: bool, count: u64| {
        let counter = if ok { &written } else { &dropped };
        counter.fetch_add(count, Ordering::Relaxed);
        finished.fetch_add(count, Ordering::Relaxed);
    };
    use futures::stream::{FuturesUnordered, StreamExt as _};
    let mut pending = FuturesUnordered::new();
    loop {
        tokio::select! {
            queued = rx.recv(), if pending.len() < MAX_PENDING_ACKS => {
                let Some(first) = queued else { break };
                // Without --audit-required nobody waits for the record: let more gather for
                // a moment, so a steady trickle of requests is one message per LINGER too.
                let linger = first.acked.is_none().then(|| tokio::time::Instant::now() + LINGER);
                let mut batch = vec![first];
                let mut bytes = batch[0].payload.len();
                while bytes < MAX_BATCH_BYTES && batch.len() < MAX_BATCH_RECORDS {
                    let next = match rx.try_recv() {
                        Ok(next) => Some(next),
                        Err(_) => match linger {
                            Some(until) => tokio::time::timeout_at(until, rx.recv()).await.ok().flatten(),
                            None => None,
                        },
                    };
                    let Some(next) = next else { break };
                    bytes += next.payload.len() + 1;
                    batch.push(next);
                }
                for (subject, group) in by_subject(batch) {
                    let count = group.len() as u64;
                    let mut body = Vec::with_capacity(group.iter().map(|q| q.payload.len() + 1).sum());
                    let mut acks = Vec::new();
                    for queued in group {
                        body.extend_from_slice(&queued.payload);
                        body.push(b'\n');
                        acks.extend(queued.acked);
                    }
                    let publish = js.publish(subject, body.into()).await;
                    pending.push(async move {
                        let ok = match publish {
                            Ok(ack) => matches!(tokio::time::timeout(ACK_TIMEOUT, ack).await, Ok(Ok(_))),
                            Err(_) => false,
                        };
                        for acked in acks {
                            let _ = acked.send(ok);
                        }
                        (ok, count)
                    });
                }
            }
            Some((ok, count)) = pending.next(), if !pending.is_empty() => count_done(ok, count),
        }
    }
    while let Some((ok, count)) = pending.next().await {
        count_done(ok, count);
    }
}

/// Records grouped by subject, in arrival order within each group.
fn by_subject(batch: Vec<Queued>) -> Vec<(String, Vec<Queued>)> {
    let mut groups: Vec<(String, Vec<Queued>)> = Vec::new();
    for queued in batch {
        match groups.iter_mut().find(|(s, _)| *s == queued.subject) {
            Some((_, group)) => group.push(queued),
            None => groups.push((queued.subject.clone(), vec![queued])),
        }
    }
    groups
}

/// The records of one message of the stream (JSON lines).
pub fn records(
    payload: &[u8],
) -> impl Iterator<Item = Result<AuditRecord, serde_json::Error>> + '_ {
    payload
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(serde_json::from_slice)
}
