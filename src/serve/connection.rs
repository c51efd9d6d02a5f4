//! The connection a front door subscribes on ([`ServeConnection`]): its own, apart from the
//! one the stores use, with a small subscription capacity.
//!
//! async-nats keeps what a subscription has received, and its reader has not taken yet, in a
//! buffer of `subscription_capacity` messages (65,536 by default). A front door whose
//! `max_in_flight` permits are all taken stops reading, so a flood of 1 MiB requests would
//! wait there: up to 64 GiB a subscription. On a `ServeConnection` each subscription buffers
//! at most `capacity` messages, and the client drops what arrives beyond them (a "slow
//! consumer"): each drop is counted ([`ServeConnection::dropped`], and the metric
//! `piggybank.requests.shed`) and logged at warn at most every 10 s. The requester of a
//! dropped request times out, as it would have behind the flood.
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

use super::shed::{Shed, ShedReason};

/// A connection a front door subscribes and replies on; see the module docs.
#[derive(Clone)]
pub struct ServeConnection {
    client: Client,
    capacity: usize,
    slow_consumers: Arc<Shed>,
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
        let slow_consumers = Arc::new(Shed::new(ShedReason::SlowConsumer));
        let options = log_events(options, role, Some(Arc::clone(&slow_consumers)))
            .subscription_capacity(capacity);
        let client = options.connect(address).await?;
        Ok(Self {
            client,
            capacity,
            slow_consumers,
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Messages each subscription buffers before the client drops what comes next.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Messages the client dropped since start because a subscription's buffer was full.
    /// A lower bound in a storm: async-nats queues at most 128 events and drops the rest.
    pub fn dropped(&self) -> u64 {
        self.slow_consumers.total()
    }
}

/// `options` with an event callback that logs the connection's events with its `role`
/// (`stores`, `serving`, `wrpc`), and counts a front door's slow-consumer drops in
/// `slow_consumers`. On the stores' connection (`None`) a drop is logged at warn each time:
/// its subscriptions are JetStream's flow-controlled consumers and replies, which never fill
/// 65,536 messages unless something is badly wrong.
pub(crate) fn log_events(
    options: ConnectOptions,
    role: &'static str,
    slow_consumers: Option<Arc<Shed>>,
) -> ConnectOptions {
    options.event_callback(move |event| {
        let slow_consumers = slow_consumers.clone();
        async move {
            match event {
                Event::SlowConsumer(_) => match slow_consumers {
                    Some(shed) => shed.add(role),
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
