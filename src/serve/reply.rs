//! What a handler answers: a payload and optional headers. Handlers return a `Reply` and
//! never publish themselves, so they are plain functions of their input.
//!
//! [`Reply::send`] is the one way a NATS front door publishes. It takes a [`ReplyTo`], which
//! only the reply policy makes, and it makes sure the reply fits in a NATS message: one
//! larger than the connection's max payload (1 MiB by default; payload plus headers) is
//! refused by the client or, with headers, by the server, and its requester would only see
//! a timeout. So a reply that would not fit is replaced by the endpoint's own "too large"
//! error ([`Reply::fit`]), and the event is logged at warn with sizes only, never content.

use async_nats::HeaderMap;
use bytes::Bytes;

use super::ReplyTo;
use crate::audit::AuditNote;
use crate::decision::Decision;
use crate::error::ErrorKind;

/// The decision on a request whose reply would not fit in one NATS message.
pub const REPLY_TOO_LARGE: Decision = Decision::refused(ErrorKind::Invalid, "reply_too_large");

pub struct Reply {
    pub headers: Option<HeaderMap>,
    pub payload: Bytes,
    /// What the handler decided, for the audit trail; never sent.
    pub audit: Option<Box<AuditNote>>,
}

/// An endpoint's error for a reply too large to send: given the reply that did not fit (its
/// headers tell, for example, a `get` from an admin reply) and a message saying why.
pub(crate) type TooLarge = fn(&Reply, String) -> Reply;

impl Reply {
    pub fn plain(payload: impl Into<Bytes>) -> Self {
        Self {
            headers: None,
            payload: payload.into(),
            audit: None,
        }
    }

    pub(crate) fn with_headers(headers: HeaderMap, payload: impl Into<Bytes>) -> Self {
        Self {
            headers: Some(headers),
            payload: payload.into(),
            audit: None,
        }
    }

    /// Attach what the handler decided, for the audit record of this request.
    pub fn audited(mut self, note: AuditNote) -> Self {
        self.audit = Some(Box::new(note));
        self
    }

    /// Fill in the note's operation (and entity) where the handler left them out.
    pub(crate) fn audited_as(mut self, operation: &str, entity: Option<&str>) -> Self {
        let note = self.audit.get_or_insert_with(Default::default);
        note.operation.get_or_insert_with(|| operation.to_string());
        if note.entity.is_none() {
            note.entity = entity.map(str::to_string);
        }
        self
    }

    /// Publish this reply to `to`, or the error that replaces it when it would exceed the
    /// connection's max payload ([`Reply::fit`]). A failure is logged (the requester times
    /// out).
    pub async fn send(self, client: &async_nats::Client, to: ReplyTo, too_large: TooLarge) {
        let reply = self.fit(client.server_info().max_payload, too_large);
        let to = to.into_subject();
        let sent = match reply.headers {
            Some(h) => client.publish_with_headers(to, h, reply.payload).await,
            None => client.publish(to, reply.payload).await,
        };
        if let Err(e) = sent {
            tracing::warn!(error = %e, "failed to send reply");
        }
    }

    /// This reply if it fits in one NATS message of at most `max_payload` bytes (headers
    /// included; 0 means unknown, and nothing is checked), else `too_large`'s error.
    pub fn fit(self, max_payload: usize, too_large: TooLarge) -> Self {
        let size = self.wire_size();
        if max_payload == 0 || size <= max_payload {
            return self;
        }
        tracing::warn!(
            size,
            max_payload,
            "reply too large for one NATS message; answering an error instead"
        );
        let audit = self.audit.clone();
        let mut replaced = too_large(
            &self,
            format!(
                "reply too large to send: {size} bytes, over the NATS max payload of \
                 {max_payload} bytes"
            ),
        );
        replaced.audit = audit.map(|note| Box::new(note.decided(REPLY_TOO_LARGE)));
        replaced
    }

    /// Bytes this reply counts against the max payload: the payload plus the headers as NATS
    /// encodes them (`NATS/1.0\r\n`, `name: value\r\n` each, and a closing `\r\n`).
    pub(crate) fn wire_size(&self) -> usize {
        let headers = self.headers.as_ref().map_or(0, |h| {
            let lines: usize = h
                .iter()
                .map(|(name, values)| {
                    let name: &[u8] = name.as_ref();
                    values
                        .iter()
                        .map(|v| name.len() + 2 + v.as_str().len() + 2)
                        .sum::<usize>()
                })
                .sum();
            b"NATS/1.0\r\n".len() + lines + 2
        });
        self.payload.len() + headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shout(_: &Reply, why: String) -> Reply {
        Reply::plain(why)
    }

    #[test]
    fn wire_size_counts_headers_as_nats_encodes_them() {
        assert_eq!(Reply::plain("abc").wire_size(), 3);
        let mut h = HeaderMap::new();
        h.insert("Status", "200");
        let r = Reply::with_headers(h, "abc");
        // "NATS/1.0\r\n" + "Status: 200\r\n" + "\r\n" + payload
        assert_eq!(r.wire_size(), 10 + 13 + 2 + 3);
    }

    #[test]
    fn a_reply_that_fits_is_sent_as_it_is_and_one_that_does_not_is_replaced() {
        let r = Reply::plain(vec![b'x'; 100]).fit(100, shout);
        assert_eq!(r.payload.len(), 100);
        let r = Reply::plain(vec![b'x'; 100]).fit(0, shout);
        assert_eq!(
            r.payload.len(),
            100,
            "0: max payload unknown, nothing checked"
        );
        let r = Reply::plain(vec![b'x'; 101]).fit(100, shout);
        assert!(std::str::from_utf8(&r.payload)
            .unwrap()
            .contains("too large"));
    }
}
