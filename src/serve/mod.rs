//! The one serve loop of every NATS front door: the wasmCloud protocol (with its admin
//! operations), the database operations and the Piggy Bank API.
//!
//! What holds for every request holds here, once:
//! - **One parse.** Each endpoint's [`Door`] parses and classifies a message once, by its
//!   subject (and, for the API, its `method` header) alone ([`Class`]): not this door's (no
//!   reply), or its [`Access`], size and requester, with the parsed operation, which the
//!   loop hands to the door's handler or to its refusal: what is checked is what runs.
//! - **Signed administration.** An admin operation's class says so. When the
//!   backend runs with `--admin-keys`, the loop checks an admin operation's signature before
//!   its handler runs, and answers a refusal in the endpoint's format; a handler never sees
//!   an unsigned admin request, and an endpoint cannot be built without saying which of its
//!   operations are admin ones.
//! - **Audit.** Every answered request is one record ([`crate::audit`]): what the handler
//!   noted on its [`Reply`] (its decision among it), finished by the one finishing step
//!   (`crate::finish`, shared with the WIT door) with the request id, the front door and the
//!   admin key that signed it. With `--audit-required`, a reply whose record is not
//!   acknowledged is replaced by the door's "unavailable" refusal.
//! - **Reply subjects.** A request is handled only if its reply subject is admitted by the
//!   [`ReplyPolicy`] for its [`Requester`] (trusted reply prefixes, and for a Piggy Bank API
//!   application only `_INBOX.` and its own; never `$...`, never inside a served tree, which
//!   the loop derives from its own endpoints). Any other request gets no reply and is not
//!   handled, so it changes nothing. A request with no reply subject is not handled either.
//! - **Requests that fit.** A request whose operation carries no value ([`Body::Small`]: all
//!   but `put_secret`, `add_mapping`, `remove_mapping` and the API's `post`) and is larger
//!   than `max_request_bytes` is never handled: its body is dropped as soon as it is read,
//!   and the endpoint's refusal answers it ([`LoopRefusal::TooLarge`]: 413, audited); these
//!   are counted and logged at warn at most every 10 s.
//! - **Fair serving.** Each subscription has an intake task of its own ([`intake`]) that
//!   refuses a hostile reply subject before anything else (the cheapest path) and hands each
//!   class of traffic to a lane of its own ([`lanes`]): one per endpoint for its open
//!   operations, one for every door's admin operations, one for the loop's own refusals and
//!   one for `$SRV` discovery (paced). A lane has its own permits (`max_in_flight` for an
//!   endpoint, fewer for the others) and a bounded queue; when it is full its requests are
//!   shed, counted, and nothing another lane needs is taken. Side traffic (discovery, the
//!   database operations, the API) subscribes on a connection of its own
//!   ([`ServeConnection::side`]), so its backlog waits in its own server-side buffer.
//! - **Bounded memory.** The subscriptions live on a [`ServeConnection`], whose
//!   subscriptions buffer at most `max_in_flight` messages each: the client drops the rest.
//!   Every request shed is counted by reason ([`ShedCounts`]: metric, `status`) and logged
//!   at most every 10 s per reason.
//! - **Replies that fit.** [`Reply::send`] replaces a reply that would exceed the max payload
//!   with the endpoint's own "too large" error.
//! - **Draining, bounded.** On shutdown every subscription is drained, buffered messages are
//!   answered, and `serve` returns when every in-flight request has replied, or at
//!   [`ServeConfig::drain_timeout`], whichever comes first: whether NATS is still there or
//!   not, stopping never takes longer. What was abandoned is logged.
//!
//! Handlers are plain async functions of the parsed operation and the message that return a
//! [`Reply`] (or `None` to leave the message to another instance); they never publish.

mod connection;
mod discovery;
mod intake;
mod lanes;
mod reply;
mod shed;

use std::future::Future;
use std::sync::Arc;

use async_nats::{Client, Message};
use futures::future::BoxFuture;
use futures::stream::StreamExt;

pub use crate::admin_auth::Signed;
use crate::admin_auth::{AdminRefusal, AdminVerifier};
use crate::audit::Auditor;
use crate::decision::Decision;
use crate::error::ErrorKind;
pub use crate::reply_policy::{ReplyPolicy, ReplyTo, Requester};
pub(crate) use connection::log_events;
pub use connection::ServeConnection;
use intake::{Intake, LanePlan, Lanes, Source};
use lanes::InFlight;
pub use reply::Reply;
pub(crate) use reply::{TooLarge, REPLY_TOO_LARGE};
pub use shed::ShedCounts;

/// Who may call a message's operation, decided from its subject before any handler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone who may publish on the subject (a host's `get`, `server_xkey`, `status`).
    Open,
    /// An operation that changes or reveals store state: with `--admin-keys`, only a request
    /// signed by one of them reaches the handler.
    Admin(Signed),
}

/// How large a request may be, by what its operation carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// No value: at most [`ServeConfig::max_request_bytes`].
    Small,
    /// A secret value or a list of names: whatever one NATS message carries.
    Value,
}

/// What an endpoint decides about a message before anything else runs: who may call it,
/// how large it may be, and who asks (which reply namespaces it may be answered in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Class {
    pub access: Access,
    pub body: Body,
    pub requester: Requester,
}

impl Class {
    /// An open operation without a value, from a host or an operator.
    pub fn open() -> Self {
        Access::Open.into()
    }

    /// An admin operation without a value: an operator's, answered only in the operators'
    /// inbox when one is trusted ([`Requester::Operator`]).
    pub fn admin(signed: Signed) -> Self {
        Class {
            requester: Requester::Operator,
            ..Access::Admin(signed).into()
        }
    }

    /// The operation carries a value (or a list of names).
    pub fn with_value(mut self) -> Self {
        self.body = Body::Value;
        self
    }

    /// The request may come from any Piggy Bank API application (one to a read-only
    /// application).
    pub(crate) fn asked_by_any_application(mut self) -> Self {
        self.requester = Requester::AnyApplication;
        self
    }

    /// The request comes from this Piggy Bank API application.
    pub(crate) fn asked_by(mut self, application: &str) -> Self {
        self.requester = Requester::Application(application.to_string());
        self
    }
}

impl From<Access> for Class {
    fn from(access: Access) -> Self {
        Class {
            access,
            body: Body::Small,
            requester: Requester::Any,
        }
    }
}

/// Why the loop answers a request itself, in the endpoint's format, instead of its handler.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoopRefusal {
    /// An admin operation whose signature was refused or could not be checked (or, with
    /// `--audit-required`, whose record could not be written).
    #[error(transparent)]
    Admin(#[from] AdminRefusal),
    /// An operation that carries no value, in a request larger than `max_request_bytes`.
    #[error(
        "request too large: {size} bytes, over the {limit} bytes an operation without a value \
         may take (--max-request-bytes)"
    )]
    TooLarge { size: usize, limit: usize },
    /// With `--audit-required`: the request's record could not be written.
    #[error(
        "refused: this request's audit record could not be written (the trail is full or \
         unreachable; `piggybank status` says which), and --audit-required serves nothing \
         unrecorded. A change it asked for may be applied already: check before retrying"
    )]
    AuditUnavailable,
}

impl LoopRefusal {
    /// What the loop decided, whichever endpoint answers the refusal.
    pub fn decision(&self) -> Decision {
        match self {
            LoopRefusal::Admin(AdminRefusal::Refused(_)) => {
                Decision::refused(ErrorKind::Denied, "admin_signature_refused")
            }
            LoopRefusal::Admin(AdminRefusal::Unavailable(_)) => {
                Decision::refused(ErrorKind::Unavailable, "admin_nonce_store_unavailable")
            }
            LoopRefusal::TooLarge { .. } => {
                Decision::refused(ErrorKind::Invalid, "request_too_large")
            }
            LoopRefusal::AuditUnavailable => {
                Decision::refused(ErrorKind::Unavailable, "audit_unavailable")
            }
        }
    }

    /// The status code: the admin refusal's (403, 503), or 413.
    pub fn code(&self) -> u16 {
        match self {
            LoopRefusal::Admin(refused) => refused.code(),
            LoopRefusal::TooLarge { .. } => 413,
            LoopRefusal::AuditUnavailable => 503,
        }
    }
}

/// A front door: its rules in one place, next to its handlers. The loop asks it to
/// classify each message, which parses the message once; the parsed operation then goes to
/// the door's handler, or, when the loop refuses the request, to its refusal.
pub trait Door: Send + Sync + 'static {
    /// A parsed request: what the handler and the refusal need to know of it.
    type Op: Clone + Send + Sync + 'static;

    /// Parse and classify `msg`: who may call it, how large it may be, who asks. `None`:
    /// not this door's to answer (no reply).
    fn classify(&self, msg: &Message) -> Option<(Class, Self::Op)>;

    /// Answer `msg`, parsed as `op`. `None`: not this instance's to answer (no reply).
    fn handle(self: Arc<Self>, op: Self::Op, msg: Message) -> BoxFuture<'static, Option<Reply>>;

    /// The door's answer, in `op`'s own wire format, to a request the loop refused (a
    /// refused admin signature, a request too large, a record that could not be written).
    fn refuse(&self, op: &Self::Op, msg: &Message, refused: &LoopRefusal) -> Reply;

    /// The door's error for a reply that would not fit in a NATS message.
    fn too_large(reply: &Reply, message: String) -> Reply;
}

/// A door's answer to a request the loop refused, for one parsed operation.
type Refuse = dyn Fn(&Message, &LoopRefusal) -> Reply + Send + Sync;

/// A message classified by its door: its class, and its parsed operation's two ways out.
struct Classified {
    class: Class,
    handle: Box<dyn FnOnce(Message) -> BoxFuture<'static, Option<Reply>> + Send>,
    refuse: Box<Refuse>,
}

type Classify = Arc<dyn Fn(&Message) -> Option<Classified> + Send + Sync>;

/// One subscription of the loop and the door that answers it.
pub struct Endpoint {
    /// A short name for logs (`protocol`, `database`, `api`): never taken from the request.
    pub name: &'static str,
    /// The subject subscribed to, e.g. `wasmcloud.secrets.v1alpha1.nats-kv.>`.
    pub subject: String,
    /// `Some`: one instance of the group receives each message; `None`: every instance.
    pub queue_group: Option<String>,
    /// Whether it is side traffic, served on the side connection ([`ServeConnection::side`]).
    side: bool,
    classify: Classify,
    too_large: TooLarge,
}

impl Endpoint {
    /// `door`, serving `subject` (in `queue_group`, if any).
    pub fn new<D: Door>(
        name: &'static str,
        subject: String,
        queue_group: Option<String>,
        door: Arc<D>,
    ) -> Self {
        let classify: Classify = Arc::new(move |msg: &Message| {
            let (class, op) = door.classify(msg)?;
            let (handler, refuser, kept) = (Arc::clone(&door), Arc::clone(&door), op.clone());
            Some(Classified {
                class,
                handle: Box::new(move |msg| handler.handle(op, msg)),
                refuse: Box::new(move |msg, refused| refuser.refuse(&kept, msg, refused)),
            })
        });
        Endpoint {
            name,
            subject,
            queue_group,
            side: false,
            classify,
            too_large: D::too_large,
        }
    }

    /// Serve this endpoint on the side connection: its floods wait in a server-side buffer
    /// of their own, not in front of the hosts' gets.
    pub fn on_side(mut self) -> Self {
        self.side = true;
        self
    }

    /// The connection this endpoint subscribes and replies on.
    fn client<'a>(&self, connection: &'a ServeConnection) -> &'a Client {
        match self.side {
            true => connection.side(),
            false => connection.client(),
        }
    }

    /// The subject tree this endpoint serves (its subject without a trailing wildcard).
    fn tree(&self) -> String {
        self.subject
            .trim_end_matches(['>', '*'])
            .trim_end_matches('.')
            .to_string()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("failed to subscribe to {subject}: {source}")]
    Subscribe {
        subject: String,
        source: async_nats::SubscribeError,
    },
    #[error("invalid --reply-prefixes or --app-inbox: {0}")]
    ReplyPrefixes(String),
}

/// How the loop runs.
#[derive(Clone)]
pub struct ServeConfig {
    /// Requests handled at once; also what each subscription of the [`ServeConnection`]
    /// buffers (see [`ServeConnection::connect`]).
    pub max_in_flight: usize,
    /// Largest request of an operation that carries no value, as NATS counts it (subject,
    /// reply subject, headers and payload).
    pub max_request_bytes: usize,
    /// Trusted reply prefixes besides `_INBOX.`.
    pub reply_prefixes: Vec<String>,
    /// Inboxes bound to a Piggy Bank API application (`--app-inbox`): trusted, and that
    /// application's alone.
    pub app_inboxes: Vec<crate::reply_policy::AppInbox>,
    /// Checks admin signatures (`--admin-keys`); `None`: admin operations are unauthenticated.
    pub admin: Option<Arc<AdminVerifier>>,
    /// This instance's id: the nonce scope of operations every instance answers.
    pub instance_id: String,
    /// Longest the drain at shutdown may take; then in-flight requests are abandoned.
    pub drain_timeout: std::time::Duration,
    /// Records every answered request (a disabled one records nothing).
    pub auditor: Arc<Auditor>,
    /// Called once every subscription exists and its intake runs: the moment requests are
    /// answered (the server logs "piggybank ready" there).
    pub on_serving: Option<Arc<dyn Fn() + Send + Sync>>,
}

/// The door's answer to a refused request, with the loop's decision in its audit note.
fn refused_reply(msg: &Message, refuse: &Refuse, refused: &LoopRefusal) -> Reply {
    let mut reply = refuse(msg, refused);
    let note = reply.audit.get_or_insert_with(Default::default);
    note.decision = Some(refused.decision());
    reply
}

/// Time given to the last flush when the drain deadline has already passed.
const FLUSH_GRACE: std::time::Duration = std::time::Duration::from_millis(200);
/// How often a draining loop has its connections hear from the server (see `serve`).
const NUDGE_EVERY: std::time::Duration = std::time::Duration::from_millis(20);

/// The reply policy for these endpoints: `prefixes`, and every tree they serve.
pub(crate) fn policy_for(
    endpoints: &[Endpoint],
    prefixes: &[String],
    app_inboxes: &[crate::reply_policy::AppInbox],
) -> Result<ReplyPolicy, ServeError> {
    let served: Vec<String> = endpoints.iter().map(Endpoint::tree).collect();
    ReplyPolicy::with_app_inboxes(prefixes, app_inboxes, &served).map_err(ServeError::ReplyPrefixes)
}

/// Subscribe to `subject` (in `queue_group`, if any).
async fn subscribe(
    client: &Client,
    subject: &str,
    queue_group: Option<&String>,
) -> Result<async_nats::Subscriber, ServeError> {
    let subscribed = match queue_group {
        Some(group) => {
            client
                .queue_subscribe(subject.to_string(), group.clone())
                .await
        }
        None => client.subscribe(subject.to_string()).await,
    };
    subscribed.map_err(|source| ServeError::Subscribe {
        subject: subject.to_string(),
        source,
    })
}

/// One subscription's intake task: take each message as it comes until the subscription
/// ends; at `stop`, drain it (what it has received is still taken).
async fn run_intake(
    intake: Arc<Intake>,
    source: Source,
    mut subscription: async_nats::Subscriber,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut draining = false;
    loop {
        tokio::select! {
            biased;
            _ = stop.changed(), if !draining => {
                draining = true;
                if let Err(e) = subscription.drain().await {
                    tracing::warn!(error = %e, "drain failed");
                }
            }
            next = subscription.next() => match next {
                Some(msg) => intake.take(source, msg),
                None => break,
            },
        }
    }
}

/// Serve `endpoints` on `connection` until `shutdown` completes; then drain and return.
pub async fn serve(
    connection: ServeConnection,
    endpoints: Vec<Endpoint>,
    config: ServeConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let policy = policy_for(&endpoints, &config.reply_prefixes, &config.app_inboxes)?;
    let mut subscriptions = Vec::new();
    for (index, endpoint) in endpoints.iter().enumerate() {
        let on = endpoint.client(&connection);
        let subscription = subscribe(on, &endpoint.subject, endpoint.queue_group.as_ref()).await?;
        tracing::info!(
            endpoint = endpoint.name,
            subject = %endpoint.subject,
            queue = endpoint.queue_group.as_deref().unwrap_or("(every instance)"),
            "serving"
        );
        subscriptions.push((Source::Endpoint(index), subscription));
    }
    // Service discovery: every instance answers.
    let discovery = Arc::new(discovery::Discovery::new(&config.instance_id, &endpoints));
    for subject in discovery.subjects() {
        let subscription = subscribe(connection.side(), &subject, None).await?;
        subscriptions.push((Source::Discovery, subscription));
    }
    // Each class of traffic in a lane of its own (`lanes`), each run by its runner.
    let mut runners = Vec::new();
    let mut add_lane = |name: &'static str, bounds| {
        let (lane, runner) = lanes::lane(name, bounds);
        runners.push(runner);
        lane
    };
    let lanes = Lanes {
        endpoints: endpoints
            .iter()
            .map(|e| add_lane(e.name, LanePlan::endpoint(config.max_in_flight)))
            .collect(),
        admin: add_lane("admin", LanePlan::admin(config.max_in_flight)),
        refused: add_lane("refused", LanePlan::refused(config.max_in_flight)),
        discovery: add_lane("discovery", LanePlan::discovery()),
    };
    let (runners, in_flight): (Vec<_>, Vec<_>) =
        runners.into_iter().map(lanes::LaneRunner::start).unzip();
    let intake = Arc::new(Intake {
        endpoints,
        policy,
        lanes,
        shed: Arc::clone(connection.shed()),
        connection: connection.clone(),
        instance: config.instance_id.as_str().into(),
        discovery,
        config: config.clone(),
    });
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let intakes: Vec<_> = subscriptions
        .into_iter()
        .map(|(source, subscription)| {
            tokio::spawn(run_intake(
                Arc::clone(&intake),
                source,
                subscription,
                stopped.clone(),
            ))
        })
        .collect();
    // The lanes end with the last intake: only the intake tasks hold them from here on.
    drop(intake);
    if let Some(on_serving) = &config.on_serving {
        // A flush is a ping the server answers after it has taken every subscription before
        // it: from the answer on, a request finds a responder.
        let _ = futures::future::join(connection.client().flush(), connection.side().flush()).await;
        on_serving();
    }
    let aborts: Vec<_> = intakes.iter().map(|t| t.abort_handle()).collect();
    let all_intakes = futures::future::join_all(intakes);
    tokio::pin!(all_intakes);
    // Every subscription may end first (the connection closed for good): nothing to drain.
    let ended = tokio::select! {
        () = shutdown => false,
        _ = &mut all_intakes => true,
    };
    tracing::info!("shutting down: draining in-flight requests");
    let deadline = tokio::time::Instant::now() + config.drain_timeout;
    // A drain is a command to the connection, answered at once even with NATS gone; the
    // subscriptions then end once the server has confirmed it.
    let _ = stop.send(true);
    // The connection completes a drain when it next hears from the server: when idle, at its
    // next ping, a minute away. A message to itself, on a subject of its own, makes it hear
    // now, whoever else listens (a request could be held up by any subscriber that never
    // answers). Each intake sends its drain on its own task, so the nudge repeats until the
    // drain is over: one sent before the last drain would leave that one to the next ping.
    let nudges: Vec<_> = [connection.client(), connection.side()]
        .into_iter()
        .map(|client| {
            let (client, timeout) = (client.clone(), config.drain_timeout);
            tokio::spawn(async move {
                let subject = client.new_inbox();
                let nudge = async {
                    let mut echo = client.subscribe(subject.clone()).await.ok()?;
                    loop {
                        client
                            .publish(subject.clone(), bytes::Bytes::new())
                            .await
                            .ok()?;
                        echo.next().await?;
                        tokio::time::sleep(NUDGE_EVERY).await;
                    }
                };
                let _: Option<()> = tokio::time::timeout(timeout, nudge).await.ok().flatten();
            })
        })
        .collect();
    // Every subscription drained and every message taken, then every queued request
    // started, then every started request answered: until the deadline.
    let drained = ended
        || tokio::time::timeout_at(deadline, &mut all_intakes)
            .await
            .is_ok();
    for nudge in &nudges {
        nudge.abort();
    }
    let started = drained
        && tokio::time::timeout_at(deadline, futures::future::join_all(runners))
            .await
            .is_ok();
    let finished = started
        && tokio::time::timeout_at(
            deadline,
            futures::future::join_all(in_flight.iter().map(InFlight::finished)),
        )
        .await
        .is_ok();
    for task in &aborts {
        task.abort();
    }
    let abandoned: usize = in_flight.iter().map(InFlight::running).sum();
    let flushed = tokio::time::timeout_at(
        deadline.max(tokio::time::Instant::now() + FLUSH_GRACE),
        futures::future::try_join(connection.client().flush(), connection.side().flush()),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    // The last requests' audit records, still gathering in the writer, go out too.
    let unaudited = config
        .auditor
        .flush(deadline.max(tokio::time::Instant::now() + FLUSH_GRACE))
        .await;
    if unaudited > 0 {
        tracing::warn!(unaudited, "audit records not written by the drain timeout");
    }
    if drained && finished && flushed {
        tracing::info!("drained: every request received was answered");
    } else {
        tracing::warn!(
            abandoned_in_flight = abandoned,
            subscriptions_drained = drained,
            replies_flushed = flushed,
            "stopped at the drain timeout: requests not yet answered were abandoned"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests;
