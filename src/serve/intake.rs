//! The intake: what happens to a message between its subscription and its lane, on a task
//! of its subscription's own, never waiting for anything but the next message.
//!
//! In this order, cheapest refusal first:
//! 1. **Reply subject.** A request whose reply subject the [`ReplyPolicy`] refuses is dropped
//!    at once, before it is parsed (counted, [`ShedReason::RefusedReply`]). It takes no
//!    buffer slot past its own arrival, no queue slot and no permit. (A message that two
//!    subscriptions receive, such as the database operations', is counted by each.)
//! 2. **Its door's classification**, once; not this door's: dropped. A Piggy Bank API request
//!    is then checked again for its application's own reply namespaces.
//! 3. **Size.** A request too large for its operation loses its body here, and its refusal
//!    goes to the `refused` lane.
//! 4. **Lane.** An admin operation (any door's) goes to the `admin` lane, an open one to its
//!    endpoint's own lane, `$SRV` to the `discovery` lane ([`super::lanes`]). The lane runs
//!    it or sheds it; the intake never waits for a permit.
//!
//! So whatever one class of traffic sends, the subscriptions keep being emptied as fast as
//! messages arrive, and what a class may hold (queue slots, permits, CPU when paced) is its
//! own lane's.

use std::sync::Arc;
use std::time::Duration;

use async_nats::Message;
use futures::future::BoxFuture;

use super::discovery::Discovery;
use super::lanes::{Lane, LaneBounds};
use super::shed::{ShedCounts, ShedReason};
use super::{
    refused_reply, Access, Body, Classified, Endpoint, LoopRefusal, Reply, ReplyPolicy, Requester,
    ServeConfig, ServeConnection,
};
use crate::finish::Finish;

/// Where a message came from: an endpoint's subscription (by index) or discovery's.
#[derive(Debug, Clone, Copy)]
pub(super) enum Source {
    Endpoint(usize),
    Discovery,
}

/// The lanes of one serve loop: one per endpoint for its open operations, and one each for
/// admin operations, the loop's own refusals and discovery.
pub(super) struct Lanes {
    pub endpoints: Vec<Lane>,
    pub admin: Lane,
    pub refused: Lane,
    pub discovery: Lane,
}

/// How each lane is bounded, from `max_in_flight`.
pub(super) struct LanePlan;

impl LanePlan {
    /// A front door's open operations (a host's `get`): what `--max-in-flight` says.
    pub fn endpoint(max_in_flight: usize) -> LaneBounds {
        LaneBounds {
            permits: max_in_flight,
            queue: max_in_flight,
            pace: None,
        }
    }

    /// Admin operations, of every door: an operator's, a few at a time. Their signature
    /// checks and nonce writes, and the refusals of unsigned ones, can take no more.
    pub fn admin(max_in_flight: usize) -> LaneBounds {
        let side = (max_in_flight / 8).clamp(1, 32);
        LaneBounds {
            permits: side,
            queue: side * 4,
            pace: None,
        }
    }

    /// The loop's own refusals (requests too large for their operation): answered, at most
    /// 2,000 a second.
    pub fn refused(max_in_flight: usize) -> LaneBounds {
        let side = (max_in_flight / 8).clamp(1, 32);
        LaneBounds {
            permits: side,
            queue: side * 4,
            pace: Some(Duration::from_micros(500)),
        }
    }

    /// `$SRV` discovery: one at a time, at most 1,000 a second (`nats micro ls` sends one).
    pub fn discovery() -> LaneBounds {
        LaneBounds {
            permits: 1,
            queue: 16,
            pace: Some(Duration::from_millis(1)),
        }
    }
}

/// What every intake task shares: the endpoints, the policy, the lanes and what a request
/// needs to be answered.
pub(super) struct Intake {
    pub endpoints: Vec<Endpoint>,
    pub policy: ReplyPolicy,
    pub lanes: Lanes,
    pub shed: Arc<ShedCounts>,
    pub connection: ServeConnection,
    pub config: ServeConfig,
    pub instance: Arc<str>,
    pub discovery: Arc<Discovery>,
}

impl Intake {
    /// Take one message from `source`: drop it, or offer it to its lane.
    pub fn take(&self, source: Source, msg: Message) {
        match source {
            Source::Endpoint(index) => self.take_request(index, msg),
            Source::Discovery => self.take_discovery(msg),
        }
    }

    /// The reply subject of `msg` for `requester`, or `None` (counted when refused).
    fn admit(
        &self,
        msg: &Message,
        requester: &Requester,
        at: &'static str,
    ) -> Option<super::ReplyTo> {
        match self.policy.check_as(msg.reply.as_ref(), requester) {
            Ok(to) => Some(to),
            // It asks for no reply: there is nothing to refuse.
            Err(crate::reply_policy::Refused::Missing) => None,
            Err(_) => {
                self.shed.add(ShedReason::RefusedReply, at);
                None
            }
        }
    }

    fn take_discovery(&self, msg: Message) {
        let Some(reply_to) = self.admit(&msg, &Requester::Any, "discovery") else {
            return;
        };
        let client = self.connection.side().clone();
        let discovery = Arc::clone(&self.discovery);
        let job = Box::pin(async move {
            if let Some(reply) = discovery.answer(msg.subject.as_str()) {
                reply
                    .send(&client, reply_to, |r, _| Reply::plain(r.payload.clone()))
                    .await;
            }
        });
        self.lanes.discovery.offer(job, &self.shed);
    }

    fn take_request(&self, index: usize, msg: Message) {
        let (Some(endpoint), Some(own_lane)) =
            (self.endpoints.get(index), self.lanes.endpoints.get(index))
        else {
            return;
        };
        // Every requester's namespaces are within those of `Any`: the cheapest check first.
        if self.admit(&msg, &Requester::Any, endpoint.name).is_none() {
            return;
        }
        let Some(Classified {
            class,
            handle,
            refuse,
        }) = (endpoint.classify)(&msg)
        else {
            return;
        };
        let Some(reply_to) = self.admit(&msg, &class.requester, endpoint.name) else {
            return;
        };
        // Its body goes at once: a flood of large requests holds no more than their
        // subjects, and each is refused without reaching a handler.
        let (msg, oversized) = match class.body {
            Body::Small if msg.length > self.config.max_request_bytes => {
                self.shed.add(ShedReason::TooLarge, endpoint.name);
                let refused = LoopRefusal::TooLarge {
                    size: msg.length,
                    limit: self.config.max_request_bytes,
                };
                let stripped = Message {
                    payload: bytes::Bytes::new(),
                    headers: None,
                    ..msg
                };
                (stripped, Some(refused))
            }
            _ => (msg, None),
        };
        let lane = match (&oversized, class.access) {
            (Some(_), _) => &self.lanes.refused,
            (None, Access::Admin(_)) => &self.lanes.admin,
            (None, Access::Open) => own_lane,
        };
        let admin = match class.access {
            Access::Admin(signed) => self.config.admin.clone().map(|verifier| (verifier, signed)),
            Access::Open => None,
        };
        let (client, too_large) = (
            endpoint.client(&self.connection).clone(),
            endpoint.too_large,
        );
        let instance = Arc::clone(&self.instance);
        let (auditor, front_door) = (Arc::clone(&self.config.auditor), endpoint.name);
        let request_id = auditor.request_id();
        let span = tracing::info_span!("request", %request_id, front_door);
        let discovery = Arc::clone(&self.discovery);
        let received = std::time::Instant::now();
        let work = async move {
            // Kept only when a refusal may have to replace the reply after the handler ran.
            let kept = auditor.is_required().then(|| msg.clone());
            let mut admin_key = None;
            let reply = match (oversized, admin) {
                (Some(refused), _) => Some(refused_reply(&msg, &*refuse, &refused)),
                (None, Some((verifier, signed))) => {
                    match verifier.check(&msg, signed, &instance).await {
                        Ok(key) => {
                            admin_key = Some(key.0);
                            handle(msg).await
                        }
                        Err(refused) => Some(refused_reply(&msg, &*refuse, &refused.into())),
                    }
                }
                (None, None) => handle(msg).await,
            };
            // One record per answered request, after what it decided; nothing is sent
            // before it is recorded (and, with --audit-required, acknowledged).
            if let Some(reply) = reply {
                let mut reply = reply.fit(client.server_info().max_payload, too_large);
                let note = reply.audit.take().map(|note| *note).unwrap_or_default();
                let elapsed = received.elapsed();
                discovery.count(index, elapsed, note.decision().reason());
                let finish = Finish {
                    auditor: &auditor,
                    front_door,
                    request_id,
                    admin_key,
                    elapsed,
                };
                if finish.finish(note).await.is_err() {
                    if let Some(msg) = &kept {
                        reply = refused_reply(msg, &*refuse, &LoopRefusal::AuditUnavailable);
                    }
                }
                reply.send(&client, reply_to, too_large).await;
            }
        };
        let job: BoxFuture<'static, ()> = Box::pin(tracing::Instrument::instrument(work, span));
        lane.offer(job, &self.shed);
    }
}
