//! The wasmCloud secrets protocol front door (`{base}.{version}.{name}.>`).
//!
//! Served by the one serve loop ([`crate::serve`]) in queue group `{queue_base}.{name}`, so
//! instances share the load; [`handle`] answers one message and never publishes.

pub mod admin;
pub mod get;
pub mod reply;
pub mod subject;
pub mod wire;

use async_nats::Message;

use crate::backend::{Backend, MappingChange};
use reply::Reply;
use subject::{Operation, SubjectError};

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
