//! A KV bucket seen as its stream: which subject holds which key, and the one way piggybank
//! reads a bucket in order (an ordered push consumer on an inbox of its own). The mirror
//! follows a bucket with it forever ([`KvStream::ordered`]); backup and restore read what a
//! bucket holds now and stop ([`KvStream::read_existing`]).
//!
//! A KV message is a key's value, or a delete or purge marker (a `KV-Operation` header);
//! its stream sequence is the key's revision.

use std::ops::ControlFlow;
use std::time::Duration;

use async_nats::jetstream::consumer::{push, DeliverPolicy};
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::StreamExt as _;
use time::OffsetDateTime;

use super::StoreError;

/// The header that marks a delete or purge.
const KV_OPERATION: &str = "KV-Operation";
/// A read of what a bucket holds now fails once it delivers nothing for this long.
const IDLE: Duration = Duration::from_secs(30);

/// Whether a KV message is a delete or purge marker.
pub(crate) fn is_deletion(headers: Option<&async_nats::HeaderMap>) -> bool {
    headers
        .and_then(|h| h.get(KV_OPERATION))
        .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE")
}

/// The subject `key`'s messages are stored under in the bucket `kv`.
pub(crate) fn key_subject(kv: &kv::Store, key: &str) -> String {
    format!("{}{key}", kv.prefix)
}

/// The subject a write of `key` to the bucket `kv` goes to, without the JetStream domain's
/// API prefix that [`KvStream::put_subject`] adds for a bucket in another domain.
pub(crate) fn write_subject(kv: &kv::Store, key: &str) -> String {
    format!("{}{key}", kv.put_prefix.as_deref().unwrap_or(&kv.prefix))
}

/// One change to a key: one message of a bucket's stream.
pub(crate) struct Change {
    pub key: String,
    /// The stream sequence: the key's revision.
    pub revision: u64,
    /// When the stream stored it.
    pub at: OffsetDateTime,
    /// `None` when the key was deleted or purged. Shares the connection's read buffer: a
    /// reader that keeps it should keep a copy of its own.
    pub value: Option<Bytes>,
}

/// One delivered message: where the read stands, and the change it carries.
pub(crate) struct KvMessage {
    /// The stream sequence.
    pub revision: u64,
    /// Messages the consumer had yet to deliver after this one.
    pub pending: u64,
    /// When the stream stored it.
    pub at: OffsetDateTime,
    /// `None` when the subject is not one of the bucket's keys (the consumer's filter
    /// delivers none such; the position still counts).
    pub change: Option<Change>,
}

/// Which messages of a bucket [`KvStream::read_existing`] reads.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Delivery {
    /// Every message still in the stream, in stream order.
    History { headers_only: bool },
    /// The last message of each key.
    Latest { headers_only: bool },
}

/// A bucket's stream and its key-to-subject mapping.
#[derive(Clone)]
pub(crate) struct KvStream {
    bucket: String,
    stream: jetstream::stream::Stream,
    stream_name: String,
    /// `$KV.<bucket>.`: a key's subject is this and the key.
    prefix: String,
    /// Where writes go when they differ from reads (a mirrored or sourced bucket).
    put_prefix: Option<String>,
    /// Whether writes go through the JetStream domain's API prefix.
    use_jetstream_prefix: bool,
}

impl KvStream {
    pub fn of(kv: &kv::Store) -> Self {
        Self {
            bucket: kv.name.clone(),
            stream: kv.stream.clone(),
            stream_name: kv.stream_name.clone(),
            prefix: kv.prefix.clone(),
            put_prefix: kv.put_prefix.clone(),
            use_jetstream_prefix: kv.use_jetstream_prefix,
        }
    }

    /// The stream, for its state.
    pub fn stream(&self) -> &jetstream::stream::Stream {
        &self.stream
    }

    /// The subject a KV put of `key` goes to, as `kv::Store::put` makes it (through the
    /// domain's API prefix when the bucket is in another JetStream domain).
    pub(crate) fn put_subject(&self, js_domain: Option<&str>, key: &str) -> String {
        let mut subject = String::new();
        if let Some(domain) = js_domain.map(str::trim).filter(|d| !d.is_empty()) {
            if self.use_jetstream_prefix {
                subject.push_str(&format!("$JS.{domain}.API."));
            }
        }
        subject.push_str(self.put_prefix.as_deref().unwrap_or(&self.prefix));
        subject.push_str(key);
        subject
    }

    /// The key a subject of this bucket names, if it is one.
    pub fn key<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject.strip_prefix(self.prefix.as_str())
    }

    /// A delivered message, decoded.
    pub fn message(&self, message: &jetstream::Message) -> Result<KvMessage, StoreError> {
        let info = message.info().map_err(StoreError::upstream)?;
        let deleted = is_deletion(message.headers.as_ref());
        let (revision, at) = (info.stream_sequence, info.published);
        Ok(KvMessage {
            revision,
            pending: info.pending,
            at,
            change: self.key(message.subject.as_str()).map(|key| Change {
                key: key.to_string(),
                revision,
                at,
                value: (!deleted).then(|| message.payload.clone()),
            }),
        })
    }

    /// Start an ordered read of every key, from `start`, through `js` (whose request timeout
    /// applies to making the consumer). Returns the messages the consumer has to deliver at
    /// first, and the messages; decode each with [`KvStream::message`].
    pub async fn ordered(
        &self,
        client: &async_nats::Client,
        js: &jetstream::Context,
        start: DeliverPolicy,
        headers_only: bool,
        description: &str,
    ) -> Result<(u64, push::Ordered), StoreError> {
        let consumer = js
            .create_consumer_on_stream(
                push::OrderedConfig {
                    deliver_subject: client.new_inbox(),
                    description: Some(description.to_string()),
                    filter_subject: format!("{}>", self.prefix),
                    deliver_policy: start,
                    headers_only,
                    ..Default::default()
                },
                &self.stream_name,
            )
            .await
            .map_err(StoreError::upstream)?;
        let pending = consumer.cached_info().num_pending;
        let messages = consumer.messages().await.map_err(StoreError::upstream)?;
        Ok((pending, messages))
    }

    /// Read the messages of the stream that exist now, in stream order, until `each` breaks.
    /// Writes made after the read starts are not read. Fails when the read delivers nothing
    /// for 30 s.
    pub(crate) async fn read_existing<E: From<StoreError>>(
        &self,
        client: &async_nats::Client,
        js: &jetstream::Context,
        delivery: Delivery,
        description: &str,
        mut each: impl FnMut(Change) -> Result<ControlFlow<()>, E>,
    ) -> Result<(), E> {
        let upstream = |e: String| E::from(StoreError::Upstream(e));
        let state = self
            .stream
            .get_info()
            .await
            .map_err(|e| upstream(e.to_string()))?
            .state;
        if state.messages == 0 {
            return Ok(());
        }
        let last = state.last_sequence;
        let (start, headers_only) = match delivery {
            Delivery::History { headers_only } => (DeliverPolicy::All, headers_only),
            Delivery::Latest { headers_only } => (DeliverPolicy::LastPerSubject, headers_only),
        };
        let (pending, mut messages) = self
            .ordered(client, js, start, headers_only, description)
            .await?;
        if pending == 0 {
            return Ok(());
        }
        loop {
            let next = tokio::time::timeout(IDLE, messages.next())
                .await
                .map_err(|_| {
                    upstream(format!(
                        "bucket {:?} delivered nothing for {} s",
                        self.bucket,
                        IDLE.as_secs()
                    ))
                })?;
            let message = next
                .ok_or_else(|| {
                    upstream(format!("the read of bucket {:?} ended early", self.bucket))
                })?
                .map_err(|e| upstream(e.to_string()))?;
            let message = self.message(&message)?;
            let (revision, pending) = (message.revision, message.pending);
            if revision > last {
                return Ok(());
            }
            if let Some(change) = message.change {
                if each(change)?.is_break() {
                    return Ok(());
                }
            }
            if pending == 0 || revision >= last {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_and_purge_markers_are_deletions() {
        let marked = |op: &str| {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(KV_OPERATION, op);
            is_deletion(Some(&headers))
        };
        assert!(marked("DEL"));
        assert!(marked("PURGE"));
        assert!(!marked("PUT"));
        assert!(!is_deletion(None));
        assert!(!is_deletion(Some(&async_nats::HeaderMap::new())));
    }
}
