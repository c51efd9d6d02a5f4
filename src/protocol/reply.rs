//! The protocol's replies: `ok`, JSON bodies, admin errors (JSON `{"error","code"}` plus the
//! NATS micro-service error headers), and its answer to a reply too large to send.

use async_nats::HeaderMap;
use serde::Serialize;
use wasmcloud_secrets_types::{GetSecretError, SecretResponse};

use super::wire::{AdminError, REPLY_TOO_LARGE};
use crate::audit::AuditNote;
use crate::backend::BackendError;
use crate::config::headers;
use crate::decision::Decision;
use crate::error::ErrorKind;
pub use crate::serve::Reply;

impl Reply {
    pub fn ok() -> Self {
        Self::plain("ok")
    }

    pub fn json<T: Serialize>(value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Self::plain(body),
            Err(e) => Self::admin_error(
                500,
                format!("failed to encode reply: {e}"),
                Decision::refused(ErrorKind::Internal, "encode"),
            ),
        }
    }

    /// An admin error: JSON `{"error","code"}` plus the NATS micro-service error headers,
    /// noted with what was `decided`.
    pub fn admin_error(code: u16, message: impl Into<String>, decided: Decision) -> Self {
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
        Self::with_headers(h, body).audited(AuditNote::default().decided(decided))
    }

    /// The admin error answering a refusal of the core: its kind's status, its decision.
    pub(crate) fn core_error(err: &BackendError) -> Self {
        Self::admin_error(err.kind().status(), err.to_string(), Decision::of(err))
    }

    /// A request body or subject this door could not use (400).
    pub(crate) fn bad_request(message: impl Into<String>, reason: &'static str) -> Self {
        Self::admin_error(400, message, Decision::refused(ErrorKind::Invalid, reason))
    }
}

/// The protocol's error for a reply too large to send. A successful `get` (the only reply
/// with `Server-Response-Xkey`) answers a plain `SecretResponse{error: Other(..)}`, as its
/// other errors; every other reply is an admin reply, which answers code 413
/// ([`REPLY_TOO_LARGE`]); a `read_secret` value (`Piggybank-Sender-Xkey`) says to read it
/// directly instead. (A `get` *error* has no header, but it is a few bytes.)
pub fn too_large(reply: &Reply, message: String) -> Reply {
    let is_get = reply
        .headers
        .as_ref()
        .is_some_and(|h| h.get(headers::RESPONSE_XKEY).is_some());
    let is_read = reply
        .headers
        .as_ref()
        .is_some_and(|h| h.get(headers::SENDER_XKEY).is_some());
    if is_get {
        Reply::json(&SecretResponse {
            secret: None,
            error: Some(GetSecretError::Other(message)),
        })
    } else if is_read {
        Reply::admin_error(
            REPLY_TOO_LARGE,
            format!(
                "{message}: this value is too large to read through the backend; read the \
                 bucket directly with the data key (piggybank get -e)"
            ),
            crate::serve::REPLY_TOO_LARGE,
        )
    } else {
        Reply::admin_error(
            REPLY_TOO_LARGE,
            format!("{message}; ask for fewer entries (a smaller \"limit\")"),
            crate::serve::REPLY_TOO_LARGE,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_header(name: &str, value: &str, payload: Vec<u8>) -> Reply {
        let mut h = HeaderMap::new();
        h.insert(name, value);
        Reply::with_headers(h, payload)
    }

    #[test]
    fn an_oversized_get_answers_a_get_error() {
        let sealed = with_header(headers::RESPONSE_XKEY, "XKEY", vec![7; 2000]);
        let r = sealed.fit(1000, too_large);
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
        let r = Reply::plain(vec![b'x'; 2000]).fit(1000, too_large);
        let h = r.headers.as_ref().unwrap();
        assert_eq!(h.get(headers::SERVICE_ERROR_CODE).unwrap().as_str(), "413");
        let body: AdminError = serde_json::from_slice(&r.payload).unwrap();
        assert_eq!(body.code, REPLY_TOO_LARGE);
        assert!(body.error.contains("too large"), "{}", body.error);
    }

    #[test]
    fn an_oversized_read_says_to_read_the_bucket_directly() {
        let r = with_header(headers::SENDER_XKEY, "XKEY", vec![7; 2000]).fit(1000, too_large);
        let body: AdminError = serde_json::from_slice(&r.payload).unwrap();
        assert_eq!(body.code, REPLY_TOO_LARGE);
        assert!(body.error.contains("get -e"), "{}", body.error);
    }

    #[test]
    fn headers_alone_can_make_a_reply_too_large() {
        let r = with_header(headers::RESPONSE_XKEY, "XKEY", vec![7; 990]);
        assert!(r.payload.len() < 1000 && r.wire_size() > 1000);
        assert!(
            r.fit(1000, too_large).headers.is_none(),
            "replaced by the get error"
        );
    }
}
