//! The server side of wRPC over NATS for the provider's exports, with piggybank's rules.
//!
//! wrpc-transport-nats 0.29's server publishes its handshake to an invocation's reply
//! subject as given, and the results to `{reply}.results`, with the provider's own NATS
//! rights; NATS never authorizes a reply subject. Its demultiplexing task (a `select!`
//! without `biased;`) can also route an invocation's end-of-parameters message before the
//! invocation's listener is registered, and drop it: a call without arguments then stays
//! pending forever. So the provider serves its exports with [`WrpcServer`], its own
//! implementation of `wrpc_transport::Serve` on a lattice connection of its own:
//!
//! - **Bounded memory.** Its connection is a [`ServeConnection`]: each subscription buffers
//!   at most `max_in_flight` messages, and never fewer than [`MIN_BUFFERED_MESSAGES`]
//!   (invocations wait there while every permit is taken; a call's parameters arrive there
//!   in parts), and the client drops the rest, counted and logged.
//!
//! - **Reply subjects.** An invocation is answered only if the provider's [`ReplyPolicy`]
//!   admits its reply subject (a trusted reply prefix, never `$...`, never a tree the
//!   provider serves, never the lattice's subjects). Otherwise nothing is published at all:
//!   no handshake, no results, and the handler never runs. (An admitted `reply` makes
//!   `{reply}.results` safe too: it lies under the same trusted prefix.)
//! - **No lost messages.** Each invocation's parameters have their own NATS subscription,
//!   made before the handshake is published. NATS handles one connection's SUB and PUB in
//!   order, so the subscription exists before the caller can learn where to send.
//! - **Bounded.** Each invocation holds one of `max_in_flight` permits from its receipt until
//!   its results are sent or it is dropped.
//! - **Time limit.** Once the invocation holds its permit, its parameters must all arrive
//!   within the limit, or it is dropped (logged at warn, without values). The caller's results stream is then ended
//!   at once (an empty message), so it fails fast instead of waiting for its own timeout.
//!   The provider's serve loop applies the same limit to the handler and the results.
//! - **Whole parameters.** Parameters are collected before the handler runs, at most what
//!   the stores' server takes in one message plus room for names ([`params_limit`]): a
//!   larger call could only be refused after it was held in memory, so it is dropped as its
//!   parts arrive. The admin interface has no `stream` or `future` types, so there are
//!   no nested parameter or result paths; serving a function that needs them fails at start.
//!
//! The wire protocol (`wrpc.0.0.1`), as a wrpc-transport-nats client speaks it: the caller
//! publishes to `{prefix}.wrpc.0.0.1.{instance}.{function}` with a reply subject `R` and the
//! first bytes of the parameters. The server answers on `R` with an empty message whose reply
//! subject is its own inbox `S`; the caller sends the rest of the parameters to
//! `S.params` and ends them with an empty message. The server writes the results to
//! `R.results` in messages of at most the server's max payload, ending with an empty one.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context as TaskContext, Poll};
use std::time::Duration;

use async_nats::{HeaderMap, Message, PublishMessage, Subject};
use bytes::{Bytes, BytesMut};
use futures::{SinkExt as _, Stream, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmcloud_provider_sdk::Context;
use wit_bindgen_wrpc::wrpc_transport::{Index, Serve};

use crate::reply_policy::{ReplyPolicy, ReplyTo};
use crate::serve::ServeConnection;

/// The wRPC protocol token in invocation subjects.
pub const PROTOCOL: &str = "wrpc.0.0.1";
/// Largest parameters accepted for one invocation (a secret value is at most one NATS
/// message, 1 MiB by default, 64 MiB at most).
pub(crate) const MAX_PARAMS_BYTES: usize = 64 << 20;
/// The least each subscription of the wRPC connection buffers, whatever `max_in_flight`:
/// the parts of the largest parameters ([`MAX_PARAMS_BYTES`]) in messages of the default
/// max payload (1 MiB), which the transport sends without waiting for the reader.
pub(crate) const MIN_BUFFERED_MESSAGES: usize = MAX_PARAMS_BYTES / (1 << 20);
/// Room for the parameters other than a value: names, an entity key, a version.
const PARAMS_BESIDES_A_VALUE: usize = 64 << 10;

/// The largest parameters worth collecting when the stores' server takes messages of at most
/// `max_payload` bytes: a value larger than that could never be stored.
pub(crate) fn params_limit(max_payload: usize) -> usize {
    max_payload
        .saturating_add(PARAMS_BESIDES_A_VALUE)
        .min(MAX_PARAMS_BYTES)
}

/// Messages of results when the server does not say its max payload.
const FALLBACK_CHUNK: usize = 64 << 10;

/// `{prefix}.wrpc.0.0.1.{instance}.{function}`.
pub fn invocation_subject(prefix: &str, instance: &str, func: &str) -> String {
    format!("{prefix}.{PROTOCOL}.{instance}.{func}")
}

/// Serves exports on its lattice connection under `{lattice}.{provider id}`.
pub(crate) struct WrpcServer {
    shared: Arc<Shared>,
    prefix: String,
    queue_group: String,
}

/// What every invocation stream needs.
struct Shared {
    nats: async_nats::Client,
    policy: ReplyPolicy,
    permits: Arc<Semaphore>,
    max_in_flight: usize,
    limit: Duration,
    /// Largest parameters collected ([`params_limit`]).
    max_params: usize,
}

impl WrpcServer {
    /// `prefix`: `{lattice}.{provider id}`, which is also the queue group (as the SDK's).
    pub fn new(
        connection: ServeConnection,
        prefix: String,
        policy: ReplyPolicy,
        max_in_flight: usize,
        limit: Duration,
        max_params: usize,
    ) -> Self {
        let max_in_flight = max_in_flight.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            shared: Arc::new(Shared {
                nats: connection.client().clone(),
                policy,
                permits: Arc::new(Semaphore::new(max_in_flight)),
                max_in_flight,
                limit,
                max_params,
            }),
            queue_group: prefix.clone(),
            prefix,
        }
    }
}

impl Serve for WrpcServer {
    type Context = Option<Context>;
    type Outgoing = ResultWriter;
    type Incoming = Params;

    async fn serve(
        &self,
        instance: &str,
        func: &str,
        paths: impl Into<Arc<[Box<[Option<usize>]>]>> + Send,
    ) -> anyhow::Result<
        impl Stream<Item = anyhow::Result<(Self::Context, Self::Outgoing, Self::Incoming)>>
            + Send
            + 'static,
    > {
        let paths: Arc<[Box<[Option<usize>]>]> = paths.into();
        anyhow::ensure!(
            paths.is_empty(),
            "`{instance}.{func}` has stream or future parameters or results, which this \
             server does not carry"
        );
        let subject = invocation_subject(&self.prefix, instance, func);
        let invocations = self
            .shared
            .nats
            .queue_subscribe(subject, self.queue_group.clone())
            .await?;
        let name: Arc<str> = Arc::from(format!("{instance}.{func}"));
        let shared = Arc::clone(&self.shared);
        let admit = {
            let shared = Arc::clone(&shared);
            let name = Arc::clone(&name);
            move |msg: Message| {
                let reply = shared.policy.admit(&name, msg.reply.as_ref());
                futures::future::ready(reply.map(|reply| (msg, reply)))
            }
        };
        let permit = {
            let permits = Arc::clone(&shared.permits);
            move |(msg, reply)| {
                let permits = Arc::clone(&permits);
                async move { (msg, reply, permits.acquire_owned().await.ok()) }
            }
        };
        let accept = move |(msg, reply, permit): (Message, ReplyTo, Option<_>)| {
            let shared = Arc::clone(&shared);
            let name = Arc::clone(&name);
            async move { shared.accept(&name, msg, reply, permit?).await }
        };
        Ok(invocations
            .filter_map(admit)
            .then(permit)
            .map(accept)
            .buffer_unordered(self.shared.max_in_flight)
            .filter_map(|accepted| futures::future::ready(accepted.map(Ok))))
    }
}

impl Shared {
    /// Handshake, then collect the parameters within the time limit. `None`: dropped (and
    /// logged); the caller's results stream has been ended.
    async fn accept(
        &self,
        name: &str,
        msg: Message,
        reply: ReplyTo,
        permit: OwnedSemaphorePermit,
    ) -> Option<(Option<Context>, ResultWriter, Params)> {
        let deadline = tokio::time::Instant::now() + self.limit;
        let results = Subject::from(format!("{}.results", reply.subject()));
        // From here on, dropping `writer` ends the caller's results stream.
        let writer = ResultWriter::new(self.nats.clone(), results, permit);
        let inbox = self.nats.new_inbox();
        let mut params = match self.nats.subscribe(format!("{inbox}.params")).await {
            Ok(sub) => sub,
            Err(err) => {
                tracing::warn!(invocation = name, %err, "wRPC invocation dropped: cannot subscribe");
                return None;
            }
        };
        if let Err(err) = self
            .nats
            .publish_with_reply(reply.into_subject(), inbox, Bytes::new())
            .await
        {
            tracing::warn!(invocation = name, %err, "wRPC invocation dropped: cannot answer");
            return None;
        }
        let mut received = BytesMut::from(&msg.payload[..]);
        loop {
            let next = match tokio::time::timeout_at(deadline, params.next()).await {
                Ok(next) => next,
                Err(_) => {
                    tracing::warn!(
                        invocation = name,
                        limit_ms = self.limit.as_millis() as u64,
                        received_bytes = received.len(),
                        "wRPC invocation dropped: its parameters did not complete within the \
                         time limit"
                    );
                    return None;
                }
            };
            match next {
                None => {
                    tracing::warn!(
                        invocation = name,
                        "wRPC invocation dropped: connection closed"
                    );
                    return None;
                }
                Some(part) if part.payload.is_empty() => break,
                Some(part) if received.len() + part.payload.len() > self.max_params => {
                    tracing::warn!(
                        invocation = name,
                        max_bytes = self.max_params,
                        "wRPC invocation dropped: parameters too large"
                    );
                    return None;
                }
                Some(part) => received.extend_from_slice(&part.payload),
            }
        }
        drop(params);
        let cx = msg
            .headers
            .as_ref()
            .map(wasmcloud_provider_sdk::provider::invocation_context);
        Some((cx, writer, Params(received.freeze())))
    }
}

/// One invocation's parameters, complete.
pub(crate) struct Params(Bytes);

impl AsyncRead for Params {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.0.len().min(buf.remaining());
        let part = self.0.split_to(n);
        buf.put_slice(&part);
        Poll::Ready(Ok(()))
    }
}

impl Index<Params> for Params {
    fn index(&self, _: &[usize]) -> anyhow::Result<Params> {
        anyhow::bail!("no nested parameter streams: the interface has no stream or future types")
    }
}

/// Writes one invocation's results to `{reply}.results`, and holds its permit.
pub(crate) struct ResultWriter {
    nats: async_nats::Client,
    subject: Subject,
    /// Written, not yet published.
    pending: BytesMut,
    /// The end-of-results message is queued: nothing more may be written.
    ended: bool,
    _permit: OwnedSemaphorePermit,
}

impl ResultWriter {
    fn new(nats: async_nats::Client, subject: Subject, permit: OwnedSemaphorePermit) -> Self {
        Self {
            nats,
            subject,
            pending: BytesMut::new(),
            ended: false,
            _permit: permit,
        }
    }

    fn chunk(&self) -> usize {
        match self.nats.server_info().max_payload {
            0 => FALLBACK_CHUNK,
            max => max,
        }
    }

    /// Queue one message; the connection must be ready (`poll_ready`).
    fn start_send(&mut self, payload: Bytes) -> std::io::Result<()> {
        self.nats
            .start_send_unpin(PublishMessage {
                subject: self.subject.clone(),
                payload,
                reply: None,
                headers: None::<HeaderMap>,
            })
            .map_err(broken_pipe)
    }

    /// Queue every pending byte, in messages of at most the max payload.
    fn poll_send_pending(&mut self, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        while !self.pending.is_empty() {
            ready!(self.nats.poll_ready_unpin(cx)).map_err(broken_pipe)?;
            let n = self.pending.len().min(self.chunk());
            let payload = self.pending.split_to(n).freeze();
            self.start_send(payload)?;
        }
        Poll::Ready(Ok(()))
    }
}

fn broken_pipe(err: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::BrokenPipe, err.to_string())
}

impl AsyncWrite for ResultWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.ended {
            return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        // Publish full messages as they accumulate, so memory stays at one message.
        if self.pending.len() >= self.chunk() {
            ready!(self.poll_send_pending(cx))?;
        }
        self.pending.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_send_pending(cx))?;
        self.nats.poll_flush_unpin(cx).map_err(broken_pipe)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.ended {
            ready!(self.poll_send_pending(cx))?;
            ready!(self.nats.poll_ready_unpin(cx)).map_err(broken_pipe)?;
            self.start_send(Bytes::new())?;
            self.ended = true;
        }
        self.nats.poll_flush_unpin(cx).map_err(broken_pipe)
    }
}

impl Index<ResultWriter> for ResultWriter {
    fn index(&self, _: &[usize]) -> anyhow::Result<ResultWriter> {
        anyhow::bail!("no nested result streams: the interface has no stream or future types")
    }
}

impl Drop for ResultWriter {
    /// A call dropped before its results were complete (refused parameters, time limit,
    /// handler error): end the caller's results stream, so it fails now rather than at its
    /// own timeout.
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let nats = self.nats.clone();
        let subject = self.subject.clone();
        runtime.spawn(async move {
            if let Err(err) = nats.publish(subject, Bytes::new()).await {
                tracing::debug!(%err, "cannot end a dropped invocation's results");
            }
        });
    }
}
