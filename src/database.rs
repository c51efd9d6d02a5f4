//! The database operations' front door, `{prefix}.database.{name}.<op>`: initialize,
//! unlock, lock, status and rotate of a sealed store's seal ([`Seal`], `crate::seal`), and
//! `status` of every store. A sibling of the other front doors (`protocol`, `piggybank_api`):
//! it parses a request, calls the core, and encodes the reply; nothing else.
//!
//! Every instance of a backend subscribes to `unlock`, `lock` and `status` without a queue
//! group, so an unlock share or a lock reaches all of them (each replies; a requester reads
//! the first reply, or gathers them all for `status`). `initialize` and `rotate` are answered
//! by one instance (queue group).
//!
//! A backend run with `ENCRYPTION_XKEY_SEED` ("keyed" mode) has no seal: it answers `status`
//! like a sealed-mode one (so one command reports on any backend) and refuses the other
//! operations with 409, rather than leaving the requester to time out.
//!
//! Replies carry `Status` and a JSON body; errors are `{"error": "..."}`, with the status of
//! the error's kind ([`crate::error::ErrorKind::status`]). A failed request changes nothing,
//! except that shares which do not unlock the store are all discarded.
//!
//! Subjects carry the backend's name ([`subject`]), so two sealed backends on one account
//! never answer each other. The older `{prefix}.database.{op}` is still served, as a
//! deprecated alias (logged at warn, at most once a minute).
//!
//! Key material in transit: `initialize` seals the key or shares to the requester's one-time
//! xkey (header `Piggybank-Requester-Xkey`); `unlock` takes the key or share sealed to an
//! instance's unseal xkey (`status` announces it), and an `unlock` naming another instance
//! gets no answer from this one. The clear forms are the core's to accept or refuse.

use std::sync::{Arc, Mutex};

use async_nats::Message;
use futures::future::BoxFuture;
use serde::Deserialize;

use crate::admin_auth::AdminMode;
use crate::admin_auth::Signed;
use crate::audit::{AuditNote, Auditor};
use crate::backend::BackendError;
use crate::decision::Decision;
use crate::seal::key_record::ShareSpec;
use crate::seal::transfer::SealedUnlock;
use crate::seal::{ClearUnlock, Initialized, KeyDelivery, Seal, SealError, UnlockInput, Unlocked};
use crate::serve::{Class, Door, Endpoint, LoopRefusal, Reply};

/// The subject of operation `op` of backend `name`: `{prefix}.database.{name}.{op}`.
pub fn subject(prefix: &str, name: &str, op: &str) -> String {
    format!("{prefix}.database.{name}.{op}")
}

/// One database operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseOp {
    Status,
    Initialize,
    Unlock,
    Lock,
    Rotate,
}

impl DatabaseOp {
    const ALL: [DatabaseOp; 5] = [
        DatabaseOp::Status,
        DatabaseOp::Initialize,
        DatabaseOp::Unlock,
        DatabaseOp::Lock,
        DatabaseOp::Rotate,
    ];

    /// The last token of its subject.
    pub fn as_str(self) -> &'static str {
        match self {
            DatabaseOp::Status => "status",
            DatabaseOp::Initialize => "initialize",
            DatabaseOp::Unlock => "unlock",
            DatabaseOp::Lock => "lock",
            DatabaseOp::Rotate => "rotate",
        }
    }

    fn parse(token: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.as_str() == token)
    }

    /// Answered by one instance (`initialize`, `rotate`: the queue-group subscription)
    /// rather than by every instance (the broadcast one).
    pub fn answered_once(self) -> bool {
        matches!(self, DatabaseOp::Initialize | DatabaseOp::Rotate)
    }

    /// Who may call it. `initialize` and `rotate` (one instance), `lock` and `unlock`
    /// (every instance) change the seal; only `status` needs no signature. `unlock` is
    /// signed because the key alone does not authenticate it: the key record it is checked
    /// against is read over NATS, where an account user can answer the read with a record
    /// of their own and then send its key.
    fn class(self) -> Class {
        match self {
            DatabaseOp::Initialize | DatabaseOp::Rotate => Class::admin(Signed::Once),
            DatabaseOp::Lock | DatabaseOp::Unlock => Class::admin(Signed::OnEveryInstance),
            DatabaseOp::Status => Class::open(),
        }
    }
}

/// A database request, parsed from its subject: its operation (`Err`: an unknown one, which
/// every instance answers with 400), and whether it came on the deprecated alias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatabaseRequest {
    pub op: Result<DatabaseOp, UnknownOperation>,
    pub alias: bool,
}

/// An operation the database does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownOperation;

/// A database subject of backend `name` under `prefix`. `None`: another backend's, or not a
/// database subject at all.
pub fn parse_subject(prefix: &str, name: &str, subject: &str) -> Option<DatabaseRequest> {
    let rest = subject.strip_prefix(prefix)?.strip_prefix(".database.")?;
    let (op, alias) = match rest.split_once('.') {
        None => (rest, true),
        Some((backend, op)) if backend == name && !op.contains('.') => (op, false),
        Some(_) => return None,
    };
    Some(DatabaseRequest {
        op: DatabaseOp::parse(op).ok_or(UnknownOperation),
        alias,
    })
}

/// The database door of one instance: `{prefix}.database.{name}.{op}`, and the deprecated
/// `{prefix}.database.{op}`; only these two, so a request for a name nobody serves gets
/// NATS's "no responders" at once. Each subject has two subscriptions: one in
/// `{queue_group}.database` for the operations one instance answers, one without a group
/// for those every instance answers; each answers only its own.
pub(crate) fn endpoints(
    api: Arc<DatabaseApi>,
    prefix: &str,
    name: &str,
    queue_group: &str,
) -> Vec<Endpoint> {
    let subjects = [subject(prefix, name, "*"), format!("{prefix}.database.*")];
    let mut endpoints = Vec::new();
    for subject in subjects {
        for once in [true, false] {
            let door = Arc::new(DatabaseDoor {
                api: Arc::clone(&api),
                prefix: prefix.to_string(),
                name: name.to_string(),
                once,
            });
            let group = once.then(|| format!("{queue_group}.database"));
            endpoints.push(Endpoint::new("database", subject.clone(), group, door));
        }
    }
    endpoints
}

struct DatabaseDoor {
    api: Arc<DatabaseApi>,
    prefix: String,
    name: String,
    /// This subscription answers the operations one instance answers.
    once: bool,
}

impl Door for DatabaseDoor {
    type Op = DatabaseRequest;

    /// No database operation carries a value: every request is small.
    fn classify(&self, msg: &Message) -> Option<(Class, DatabaseRequest)> {
        // Another backend's subject is not answered.
        let request = parse_subject(&self.prefix, &self.name, msg.subject.as_str())?;
        // Both subscriptions see every operation; each answers its own.
        let once = request.op.is_ok_and(DatabaseOp::answered_once);
        if once != self.once {
            return None;
        }
        let class = request.op.map_or_else(|_| Class::open(), DatabaseOp::class);
        Some((class, request))
    }

    fn handle(
        self: Arc<Self>,
        request: DatabaseRequest,
        msg: Message,
    ) -> BoxFuture<'static, Option<Reply>> {
        Box::pin(async move {
            if request.alias {
                self.api.note_deprecated_subject(operation_name(request.op));
            }
            self.api
                .handle(request.op, msg.headers.as_ref(), &msg.payload)
                .await
        })
    }

    fn refuse(&self, request: &DatabaseRequest, _: &Message, refused: &LoopRefusal) -> Reply {
        crate::piggybank_api::error(refused.code(), refused)
            .audited_as(operation_name(request.op), None)
    }

    fn too_large(reply: &Reply, message: String) -> Reply {
        crate::piggybank_api::too_large(reply, message)
    }
}

/// An operation's name in logs and the audit trail; never the token a request sent.
fn operation_name(op: Result<DatabaseOp, UnknownOperation>) -> &'static str {
    op.map_or("unknown", DatabaseOp::as_str)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct InitializeRequest {
    shares: Option<u8>,
    threshold: Option<u8>,
}

/// The database operations of one instance.
pub struct DatabaseApi {
    seal: Arc<Seal>,
    /// For `status`: records dropped so far.
    auditor: Arc<Auditor>,
    /// Whether admin operations must be signed (reported by `status`; the serve loop checks).
    admin: AdminMode,
    /// For `status`: what the serve loop shed, by reason.
    shed: Option<Arc<crate::serve::ShedCounts>>,
    /// When the deprecated subjects were last warned about (at most once a minute).
    alias_warned: Mutex<Option<std::time::Instant>>,
}

impl DatabaseApi {
    pub fn new(seal: Arc<Seal>, admin: AdminMode, auditor: Arc<Auditor>) -> Self {
        Self {
            seal,
            auditor,
            admin,
            shed: None,
            alias_warned: Mutex::default(),
        }
    }

    /// Report what the serve loop sheds (`shed` in `status`).
    pub fn with_shed(mut self, shed: Arc<crate::serve::ShedCounts>) -> Self {
        self.shed = Some(shed);
        self
    }

    pub fn seal(&self) -> &Arc<Seal> {
        &self.seal
    }

    /// Log that a deprecated subject (`{prefix}.database.{op}`, without the backend name)
    /// was used: at warn, at most once a minute.
    pub fn note_deprecated_subject(&self, op: &'static str) {
        let mut warned = self.alias_warned.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        if warned.is_some_and(|at| now.duration_since(at) < std::time::Duration::from_secs(60)) {
            return;
        }
        *warned = Some(now);
        tracing::warn!(
            op,
            "a database operation came on the deprecated subject without the backend name; \
             use <prefix>.database.<name>.<op>"
        );
    }

    /// Answer `op`. `None`: not this instance's to answer (an `unlock` sealed for another
    /// instance).
    pub async fn handle(
        &self,
        op: Result<DatabaseOp, UnknownOperation>,
        headers: Option<&async_nats::HeaderMap>,
        payload: &[u8],
    ) -> Option<Reply> {
        let result = match op {
            Ok(DatabaseOp::Status) => self.status(headers).await,
            Ok(DatabaseOp::Initialize) => self.initialize(headers, payload).await,
            Ok(DatabaseOp::Unlock) => self.unlock(payload).await,
            Ok(DatabaseOp::Lock) => self
                .seal
                .lock()
                .await
                .map(|()| serde_json::json!({ "sealed": true })),
            Ok(DatabaseOp::Rotate) => self.seal.rotate().await.and_then(to_json),
            Err(UnknownOperation) => Err(invalid(
                "unknown operation: use initialize, unlock, lock, status or rotate".into(),
            )),
        };
        let note = AuditNote::operation(operation_name(op));
        // `status` reveals nothing a requester may not know: an open read, not a decision.
        let note = match op {
            Ok(DatabaseOp::Status) => note.public_read(),
            _ => note,
        };
        Some(match result {
            Ok(body) => crate::piggybank_api::reply(200, body.to_string().into_bytes())
                .audited(note.allowed()),
            Err(BackendError::Seal(SealError::OtherInstance)) => return None,
            Err(e) => error_reply(&e, note),
        })
    }

    async fn status(
        &self,
        headers: Option<&async_nats::HeaderMap>,
    ) -> Result<serde_json::Value, BackendError> {
        let requester = headers.and_then(|h| h.get(crate::config::headers::REQUESTER_XKEY));
        let mut report = self.seal.report(requester.map(|x| x.as_str())).await?;
        report.admin = Some(self.admin);
        report.audit_dropped = Some(self.auditor.dropped());
        report.shed = self.shed.as_ref().map(|shed| shed.by_reason());
        report.audit = self.auditor.status();
        to_json(report)
    }

    async fn initialize(
        &self,
        headers: Option<&async_nats::HeaderMap>,
        payload: &[u8],
    ) -> Result<serde_json::Value, BackendError> {
        let delivery = match headers.and_then(|h| h.get(crate::config::headers::REQUESTER_XKEY)) {
            Some(xkey) => KeyDelivery::SealedTo(xkey.as_str()),
            None => KeyDelivery::Clear,
        };
        let request: InitializeRequest = if payload.iter().all(u8::is_ascii_whitespace) {
            InitializeRequest::default()
        } else {
            serde_json::from_slice(payload).map_err(|e| invalid(format!("invalid JSON: {e}")))?
        };
        let split = match (request.shares, request.threshold) {
            (None, None) => None,
            (Some(shares), Some(threshold)) => Some(ShareSpec { shares, threshold }),
            _ => return Err(invalid("give both shares and threshold, or neither".into())),
        };
        match self.seal.initialize(split, delivery).await? {
            Initialized::Sealed(sealed) => to_json(sealed),
            Initialized::Clear(material) => {
                let mut clear = to_json(&material)?;
                clear["sealed"] = true.into();
                Ok(clear)
            }
        }
    }

    async fn unlock(&self, payload: &[u8]) -> Result<serde_json::Value, BackendError> {
        let input = if let Ok(sealed) = serde_json::from_slice::<SealedUnlock>(payload) {
            UnlockInput::Sealed(sealed)
        } else if let Ok(clear) = serde_json::from_slice::<ClearUnlock>(payload) {
            UnlockInput::Clear(clear)
        } else {
            return Err(invalid(
                r#"expected {"instance_id", "sender_xkey", "secret"} (sealed to this instance's unseal_xkey), or {"database_key": "..."} or {"share": "..."}"#
                    .into(),
            ));
        };
        Ok(match self.seal.unlock(input).await? {
            Unlocked::Unsealed => serde_json::json!({ "sealed": false }),
            Unlocked::Progress {
                progress,
                threshold,
            } => serde_json::json!({
                "sealed": true,
                "progress": progress,
                "threshold": threshold,
            }),
        })
    }
}

fn invalid(message: String) -> BackendError {
    SealError::Invalid(message).into()
}

fn to_json(value: impl serde::Serialize) -> Result<serde_json::Value, BackendError> {
    serde_json::to_value(value).map_err(|e| SealError::Internal(e.to_string()).into())
}

/// A database operation the core refused: its status, its message, its own decision.
pub(crate) fn error_reply(e: &BackendError, note: AuditNote) -> Reply {
    crate::piggybank_api::error(e.kind().status(), e).audited(note.decided(Decision::of(e)))
}
