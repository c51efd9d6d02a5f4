//! The two limits the backend is measured against, served from the benchmark process.
//!
//! - **Protocol floor**: a responder speaking the secrets protocol that does only the crypto
//!   the protocol requires: open the sealed request with the transit key, seal a fixed
//!   response to the requester from a fresh one-time xkey. Each message on its own task; no
//!   JWT checks, no storage. The real `wasmcloud-secrets-client` drives it like a backend.
//! - **Bare echo**: a NATS request/reply with the same payload sizes and no work at all.

use std::sync::Arc;

use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use futures::StreamExt as _;
use tokio::task::JoinHandle;

use piggybank::config::{self, headers::RESPONSE_XKEY};
use piggybank::keys::{self, TransitKey};
use piggybank::protocol::get::requester_key;

/// Serve the protocol floor under `{base}.{api}.{name}.>` until the task is aborted.
pub async fn spawn_floor(
    nats: &Client,
    base: &str,
    name: &str,
    transit: TransitKey,
    response: Bytes,
) -> anyhow::Result<JoinHandle<()>> {
    let prefix = config::subject_prefix(base, config::DEFAULT_API_VERSION, name);
    let mut sub = nats.subscribe(format!("{prefix}.>")).await?;
    // Taken by the server before anyone asks: the clients use other connections.
    nats.flush().await?;
    let server_xkey = format!("{prefix}.{}", config::ops::SERVER_XKEY);
    let transit = Arc::new(transit);
    let nats = nats.clone();
    Ok(tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let Some(reply_to) = msg.reply.clone() else {
                continue;
            };
            let (nats, transit, response) = (nats.clone(), transit.clone(), response.clone());
            let is_xkey = msg.subject.as_str() == server_xkey;
            tokio::spawn(async move {
                if is_xkey {
                    let key = Bytes::copy_from_slice(transit.public_key().as_bytes());
                    let _ = nats.publish(reply_to, key).await;
                    return;
                }
                let Ok(requester) = requester_key(msg.headers.as_ref()) else {
                    return;
                };
                if transit.open(&msg.payload, &requester).is_err() {
                    return;
                }
                let Ok((sealed, one_time)) = keys::seal_to(&response, &requester) else {
                    return;
                };
                let mut headers = HeaderMap::new();
                headers.insert(RESPONSE_XKEY, one_time.as_str());
                let _ = nats
                    .publish_with_headers(reply_to, headers, sealed.into())
                    .await;
            });
        }
    }))
}

/// Answer every request on `subject` with `reply`, inline: the cheapest possible responder.
pub async fn spawn_echo(
    nats: &Client,
    subject: &str,
    reply: Bytes,
) -> anyhow::Result<JoinHandle<()>> {
    let mut sub = nats.subscribe(subject.to_string()).await?;
    // Taken by the server before anyone asks: the clients use other connections.
    nats.flush().await?;
    let nats = nats.clone();
    Ok(tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            if let Some(reply_to) = msg.reply {
                let _ = nats.publish(reply_to, reply.clone()).await;
            }
        }
    }))
}
