//! The connection a front door subscribes on ([`ServeConnection`]): its own, apart from the
//! one the stores use, with a small subscription capacity.
//!
//! async-nats keeps what a subscription has received, and its reader has not taken yet, in a
//! buffer of `subscription_capacity` messages (65,536 by default). A front door whose
//! `max_in_flight` permits are all taken stops reading, so a flood of 1 MiB requests would
//! wait there: up to 64 GiB a subscription. On a `ServeConnection` each subscription buffers
//! at most `capacity` messages, and the client drops what arrives beyond them (a "slow
//! consumer"): each drop is counted ([`ServeConnection::dropped`], the metric
//! `piggybank.requests.shed` and `status`) and logged at warn at most every 10 s. The
//! requester of a dropped request times out, as it would have behind the flood. The serve
//! loop empties each subscription as fast as messages come (see `serve`'s intake), so the
//! buffer fills only when its intake falls behind, not when handlers are busy.
//!
//! The stores' KV watches, their JetStream requests and the audit stream stay on the other
//! connection, with the default capacity: an ordered consumer that loses a message resets
//! and replays its whole bucket.
//!
//! Events of every server connection are logged here, once each and with the connection's
//! role, rather than by async-nats (whose own line per event `piggybank run` filters out, so
//! that a flood of slow-consumer events is not a flood of log lines).

use std::sync::Arc;

use async_nats::{Client, ConnectOptions, Event};

use super::shed::{ShedCounts, ShedReason};

/// A connection a front door subscribes and replies on; see the module docs.
#[derive(Clone)]
pub struct ServeConnection {
    client: Client,
    /// The side traffic's connection (discovery, the database operations, the API), if
    /// made: a flood there fills its own server-side buffer, not the hosts'.
    side: Option<Client>,
    capacity: usize,
    /// What this connection's client and the serve loop on it shed, by reason.
    shed: Arc<ShedCounts>,
}

impl ServeConnection {
    /// Connect with `options` (credentials, TLS, inbox prefix, name: the caller's), each
    /// subscription buffering at most `capacity` messages (at least 1). Replaces any event
    /// callback `options` had.
    pub async fn connect(
        address: &str,
        options: ConnectOptions,
        capacity: usize,
        role: &'static str,
    ) -> Result<Self, async_nats::ConnectError> {
        let capacity = capacity.max(1);
        let shed = Arc::new(ShedCounts::default());
        let options =
            log_events(options, role, Some(Arc::clone(&shed))).subscription_capacity(capacity);
        let client = options.connect(address).await?;
        Ok(Self {
            client,
            side: None,
            capacity,
            shed,
        })
    }

    /// Add a second connection, for side traffic (see [`ServeConnection::side`]), made with
    /// `options` (the caller's, as for [`ServeConnection::connect`]); its drops are counted
    /// with this connection's.
    pub async fn with_side(
        mut self,
        address: &str,
        options: ConnectOptions,
        role: &'static str,
    ) -> Result<Self, async_nats::ConnectError> {
        let options = log_events(options, role, Some(Arc::clone(&self.shed)))
            .subscription_capacity(self.capacity);
        self.side = Some(options.connect(address).await?);
        Ok(self)
    }

    /// The hosts' connection: the wasmCloud protocol's subscriptions and replies.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The side traffic's connection: discovery, the database operations and the API
    /// (the hosts' connection when no side connection was made). NATS buffers what it has
    /// yet to deliver per connection: a flood of side traffic waits there, not in front of
    /// the hosts' gets.
    pub fn side(&self) -> &Client {
        self.side.as_ref().unwrap_or(&self.client)
    }

    /// Messages each subscription buffers before the client drops what comes next.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Messages the client dropped since start because a subscription's buffer was full.
    /// A lower bound in a storm: async-nats queues at most 128 events and drops the rest.
    pub fn dropped(&self) -> u64 {
        self.shed.total(ShedReason::SlowConsumer)
    }

    /// Requests shed on this connection since start, by reason: by its client, and by the
    /// serve loop that runs on it.
    pub fn shed(&self) -> &Arc<ShedCounts> {
        &self.shed
    }
}

/// `options` with an event callback that logs the connection's events with its `role`
/// (`stores`, `serving`, `wrpc`), and counts a front door's slow-consumer drops in
/// `shed`. On the stores' connection (`None`) a drop is logged at warn each time:
/// its subscriptions are JetStream's flow-controlled consumers and replies, which never fill
/// 65,536 messages unless something is badly wrong.
pub(crate) fn log_events(
    options: ConnectOptions,
    role: &'static str,
    shed: Option<Arc<ShedCounts>>,
) -> ConnectOptions {
    options.event_callback(move |event| {
        let shed = shed.clone();
        async move {
            match event {
                Event::SlowConsumer(_) => match shed {
                    Some(shed) => shed.add(ShedReason::SlowConsumer, role),
                    None => tracing::warn!(
                        connection = role,
                        "the NATS client dropped a message: a subscription's buffer was full"
                    ),
                },
                Event::Connected => tracing::info!(connection = role, "NATS connected"),
                Event::Disconnected => tracing::warn!(connection = role, "NATS disconnected"),
                Event::LameDuckMode => {
                    tracing::warn!(connection = role, "NATS server in lame duck mode")
                }
                Event::Draining => tracing::info!(connection = role, "NATS connection draining"),
                Event::Closed => tracing::info!(connection = role, "NATS connection closed"),
                Event::ServerError(e) => {
                    tracing::warn!(connection = role, error = %e, "NATS server error")
                }
                Event::ClientError(e) => {
                    tracing::warn!(connection = role, error = %e, "NATS client error")
                }
            }
        }
    })
}
