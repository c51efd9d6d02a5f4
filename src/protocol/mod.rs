//! The wasmCloud secrets protocol front door (`{base}.{version}.{name}.>`).
//!
//! Concurrency model: one queue subscription per instance (group `{queue_base}.{name}`, so
//! instances share load); every message is handled on its own task, on all cores. A
//! semaphore caps the tasks in flight: when it is exhausted the receive loop waits, and
//! messages queue in the subscription instead of in unbounded tasks (backpressure).
//! Shutdown drains: the subscription stops taking new messages, buffered ones are answered,
//! and `serve` returns when every in-flight request has replied.

pub mod admin;
pub mod get;
pub mod reply;
pub mod subject;
pub mod wire;

use std::future::Future;
use std::sync::Arc;

use async_nats::{Client, Message};
use futures::StreamExt;
use tokio::sync::Semaphore;

use crate::backend::{Backend, MappingChange};
use reply::Reply;
use subject::{Operation, SubjectError};

/// Where and how the protocol is served.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// `{base}.{version}.{name}`.
    pub prefix: String,
    pub queue_group: String,
    pub max_in_flight: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("failed to subscribe to {subject}: {source}")]
    Subscribe {
        subject: String,
        source: async_nats::SubscribeError,
    },
}

/// Answer one message. Pure with respect to NATS: the caller publishes the reply.
pub async fn handle(backend: &Backend, prefix: &str, msg: &Message) -> Reply {
    let headers = msg.headers.as_ref();
    let payload = &msg.payload;
    match subject::parse(prefix, msg.subject.as_str()) {
        Ok(Operation::ServerXkey) => match backend.transit_public() {
            Some(public) => Reply::plain(public),
            None => Reply::admin_error(
                423,
                "the store is not initialized: no transit key yet (piggybank init)",
            ),
        },
        Ok(Operation::Get) => get::handle(backend, headers, payload).await,
        Ok(Operation::PutSecret) => admin::put_secret(backend, headers, payload).await,
        Ok(Operation::DeleteSecret) => admin::delete_secret(backend, payload).await,
        Ok(Operation::ListSecrets) => admin::list_secrets(backend, payload),
        Ok(Operation::AddMapping(entity)) => {
            admin::update_mapping(backend, MappingChange::Add, &entity, payload).await
        }
        Ok(Operation::RemoveMapping(entity)) => {
            admin::update_mapping(backend, MappingChange::Remove, &entity, payload).await
        }
        Ok(Operation::GetMappings(entity)) => admin::get_mappings(backend, &entity, payload),
        Err(e @ SubjectError::UnknownOperation(_)) => Reply::admin_error(404, e.to_string()),
        Err(e) => Reply::admin_error(400, e.to_string()),
    }
}

/// Serve the protocol for `backend` until `shutdown` completes, then drain and return.
pub async fn serve(
    client: Client,
    backend: Arc<Backend>,
    config: ServeConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let prefix: Arc<str> = config.prefix.clone().into();
    let handler = move |msg: Message| {
        let (backend, prefix) = (backend.clone(), prefix.clone());
        async move { Some(handle(&backend, &prefix, &msg).await) }
    };
    serve_with(client, config, handler, shutdown).await
}

/// The serve loop, with the handler as a parameter: every front door on NATS shares it.
/// A handler answering `None` leaves the request to another subscriber.
pub async fn serve_with<H, F>(
    client: Client,
    config: ServeConfig,
    handler: H,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError>
where
    H: Fn(Message) -> F + Send + Sync + 'static,
    F: Future<Output = Option<Reply>> + Send + 'static,
{
    let subject = format!("{}.>", config.prefix);
    let mut sub = client
        .queue_subscribe(subject.clone(), config.queue_group.clone())
        .await
        .map_err(|source| ServeError::Subscribe {
            subject: subject.clone(),
            source,
        })?;
    tracing::info!(%subject, queue = %config.queue_group, "serving");
    let max = config.max_in_flight.clamp(1, u32::MAX as usize);
    let permits = Arc::new(Semaphore::new(max));
    tokio::pin!(shutdown);
    let mut draining = false;
    loop {
        let msg = tokio::select! {
            _ = &mut shutdown, if !draining => {
                draining = true;
                tracing::info!("shutting down: draining in-flight requests");
                if let Err(e) = sub.drain().await {
                    tracing::warn!(error = %e, "drain failed; stopping at once");
                    break;
                }
                continue;
            }
            msg = sub.next() => msg,
        };
        let Some(msg) = msg else { break };
        let Some(reply_to) = msg.reply.clone() else {
            continue;
        };
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let client = client.clone();
        let reply = handler(msg);
        tokio::spawn(async move {
            if let Some(reply) = reply.await {
                reply.send(&client, reply_to).await;
            }
            drop(permit);
        });
    }
    // Wait for every in-flight request to reply.
    let _ = permits.acquire_many(max as u32).await;
    let _ = client.flush().await;
    Ok(())
}
