//! What a handler answers: a payload and optional headers. Handlers return a `Reply` and
//! never publish themselves, so they are plain functions of their input.
//!
//! [`Reply::send`] is the one way every NATS front door publishes, and so the one place that
//! makes sure a reply fits in a NATS message. A message larger than the connection's max
//! payload (1 MiB by default; payload plus headers) is refused by the client or, with
//! headers, by the server, and its requester would only see a timeout. So a reply that
//! would not fit is replaced by an error in its front door's own format ([`Reply::fit`]),
//! and the event is logged at warn with sizes only, never content.

use async_nats::HeaderMap;
use bytes::Bytes;
use serde::Serialize;
use wasmcloud_secrets_types::{GetSecretError, SecretResponse};

use super::wire::{AdminError, REPLY_TOO_LARGE};
use crate::config::headers;

pub struct Reply {
    pub headers: Option<HeaderMap>,
    pub payload: Bytes,
}

/// The front door a reply came from, which decides the format of its errors. Read from the
/// reply itself, so front doors need not declare it: a successful `get` is the only reply
/// with the `Server-Response-Xkey` header, and every Piggy Bank API reply (database
/// operations included) carries `Status`. Every other reply is an admin reply. (A `get`
/// *error* has no header, but it is a few bytes and never too large.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontDoor {
    /// The wasmCloud `get`: errors are plain JSON `SecretResponse{error}`.
    Get,
    /// The Piggy Bank API: a `Status` header and `{"error": ...}`.
    PiggyBank,
    /// The protocol's admin operations: [`Reply::admin_error`].
    Admin,
}

impl Reply {
    pub fn plain(payload: impl Into<Bytes>) -> Self {
        Self {
            headers: None,
            payload: payload.into(),
        }
    }

    /// Publish this reply to `to`, or the error that replaces it when it would exceed the
    /// connection's max payload ([`Reply::fit`]). A failure is logged (the requester times
    /// out).
    pub async fn send(self, client: &async_nats::Client, to: async_nats::Subject) {
        let reply = self.fit(client.server_info().max_payload);
        let sent = match reply.headers {
            Some(h) => client.publish_with_headers(to, h, reply.payload).await,
            None => client.publish(to, reply.payload).await,
        };
        if let Err(e) = sent {
            tracing::warn!(error = %e, "failed to send reply");
        }
    }

    /// This reply if it fits in one NATS message of at most `max_payload` bytes (headers
    /// included; 0 means unknown, and nothing is checked), else its front door's error
    /// saying it is too large: `get` answers `SecretResponse{error: Other(..)}`, admin
    /// operations code 413 ([`REPLY_TOO_LARGE`]), the Piggy Bank API `Status: 413`.
    pub fn fit(self, max_payload: usize) -> Self {
        let size = self.wire_size();
        if max_payload == 0 || size <= max_payload {
            return self;
        }
        let door = self.front_door();
        tracing::warn!(
            ?door,
            size,
            max_payload,
            "reply too large for one NATS message; answering an error instead"
        );
        let message = format!(
            "reply too large to send: {size} bytes, over the NATS max payload of \
             {max_payload} bytes"
        );
        match door {
            FrontDoor::Get => Self::json(&SecretResponse {
                secret: None,
                error: Some(GetSecretError::Other(message)),
            }),
            FrontDoor::PiggyBank => crate::piggybank_api::reply(
                REPLY_TOO_LARGE,
                serde_json::json!({ "error": message })
                    .to_string()
                    .into_bytes(),
            ),
            FrontDoor::Admin => Self::admin_error(
                REPLY_TOO_LARGE,
                format!("{message}; ask for fewer entries (a smaller \"limit\")"),
            ),
        }
    }

    /// Which front door made this reply (see [`FrontDoor`]).
    pub fn front_door(&self) -> FrontDoor {
        let has = |name: &str| self.headers.as_ref().is_some_and(|h| h.get(name).is_some());
        if has(headers::RESPONSE_XKEY) {
            FrontDoor::Get
        } else if has(crate::piggybank_api::headers::STATUS) {
            FrontDoor::PiggyBank
        } else {
            FrontDoor::Admin
        }
    }

    /// Bytes this reply counts against the max payload: the payload plus the headers as NATS
    /// encodes them (`NATS/1.0\r\n`, `name: value\r\n` each, and a closing `\r\n`).
    pub fn wire_size(&self) -> usize {
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

    pub fn ok() -> Self {
        Self::plain("ok")
    }

    pub fn json<T: Serialize>(value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Self::plain(body),
            Err(e) => Self::admin_error(500, format!("failed to encode reply: {e}")),
        }
    }

    /// An admin error: JSON `{"error","code"}` plus the NATS micro-service error headers.
    pub fn admin_error(code: u16, message: impl Into<String>) -> Self {
        let message: String = message.into();
        let mut h = HeaderMap::new();
        // Header values may not contain line breaks; keep the header to one line.
        let one_line: String = message
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        h.insert(headers::SERVICE_ERROR, one_line.as_str());
        h.insert(headers::SERVICE_ERROR_CODE, code.to_string().as_str());
        let body = serde_json::to_vec(&AdminError {
            error: message,
            code,
        })
        .unwrap_or_default();
        Self {
            headers: Some(h),
            payload: body.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_header(name: &str, value: &str, payload: Vec<u8>) -> Reply {
        let mut h = HeaderMap::new();
        h.insert(name, value);
        Reply {
            headers: Some(h),
            payload: payload.into(),
        }
    }

    #[test]
    fn wire_size_counts_headers_as_nats_encodes_them() {
        assert_eq!(Reply::plain("abc").wire_size(), 3);
        let r = with_header("Status", "200", b"abc".to_vec());
        // "NATS/1.0\r\n" + "Status: 200\r\n" + "\r\n" + payload
        assert_eq!(r.wire_size(), 10 + 13 + 2 + 3);
    }

    #[test]
    fn a_reply_that_fits_is_sent_as_it_is() {
        let r = Reply::plain(vec![b'x'; 100]).fit(100);
        assert_eq!(r.payload.len(), 100);
        assert!(r.headers.is_none());
        let r = Reply::plain(vec![b'x'; 100]).fit(0);
        assert_eq!(
            r.payload.len(),
            100,
            "0: max payload unknown, nothing checked"
        );
    }

    #[test]
    fn an_oversized_get_answers_a_get_error() {
        let sealed = with_header(headers::RESPONSE_XKEY, "XKEY", vec![7; 2000]);
        assert_eq!(sealed.front_door(), FrontDoor::Get);
        let r = sealed.fit(1000);
        assert!(r.headers.is_none(), "get errors carry no header");
        let response: SecretResponse = serde_json::from_slice(&r.payload).unwrap();
        assert!(response.secret.is_none());
        match response.error {
            Some(GetSecretError::Other(m)) => assert!(m.contains("too large"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_oversized_admin_reply_answers_413() {
        let r = Reply::plain(vec![b'x'; 2000]).fit(1000);
        let h = r.headers.as_ref().unwrap();
        assert_eq!(h.get(headers::SERVICE_ERROR_CODE).unwrap().as_str(), "413");
        let body: AdminError = serde_json::from_slice(&r.payload).unwrap();
        assert_eq!(body.code, REPLY_TOO_LARGE);
        assert!(body.error.contains("too large"), "{}", body.error);
    }

    #[test]
    fn an_oversized_piggy_bank_reply_answers_status_413() {
        let big = crate::piggybank_api::reply(200, vec![b'x'; 2000]);
        assert_eq!(big.front_door(), FrontDoor::PiggyBank);
        let r = big.fit(1000);
        let status = r.headers.as_ref().unwrap();
        let status = status.get(crate::piggybank_api::headers::STATUS).unwrap();
        assert_eq!(status.as_str(), "413");
        let body: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
        assert!(body["error"].as_str().unwrap().contains("too large"));
    }

    #[test]
    fn headers_alone_can_make_a_reply_too_large() {
        let r = with_header(headers::RESPONSE_XKEY, "XKEY", vec![7; 990]);
        assert!(r.payload.len() < 1000 && r.wire_size() > 1000);
        assert!(r.fit(1000).headers.is_none(), "replaced by the get error");
    }
}
