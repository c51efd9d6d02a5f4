//! What a handler answers: a payload and optional headers. Handlers return a `Reply` and
//! never publish themselves, so they are plain functions of their input.

use async_nats::HeaderMap;
use bytes::Bytes;
use serde::Serialize;

use super::wire::AdminError;
use crate::config::headers;

pub struct Reply {
    pub headers: Option<HeaderMap>,
    pub payload: Bytes,
}

impl Reply {
    pub fn plain(payload: impl Into<Bytes>) -> Self {
        Self {
            headers: None,
            payload: payload.into(),
        }
    }

    /// Publish this reply to `to`; a failure is logged (the requester times out).
    pub async fn send(self, client: &async_nats::Client, to: async_nats::Subject) {
        let sent = match self.headers {
            Some(h) => client.publish_with_headers(to, h, self.payload).await,
            None => client.publish(to, self.payload).await,
        };
        if let Err(e) = sent {
            tracing::warn!(error = %e, "failed to send reply");
        }
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
