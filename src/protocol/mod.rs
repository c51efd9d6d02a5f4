//! The wasmCloud secrets protocol front door (`{base}.{version}.{name}.>`).
//!
//! Served by the one serve loop ([`crate::serve`]) in queue group `{queue_base}.{name}`, so
//! instances share the load; [`handle`] answers one message and never publishes.

pub(crate) mod admin;
pub mod get;
pub(crate) mod reply;
pub(crate) mod subject;
pub mod wire;

use async_nats::Message;

use crate::backend::{Backend, MappingChange};
use crate::decision::Decision;
use crate::error::ErrorKind;
use reply::Reply;
use subject::{Operation, SubjectError};

/// The transit public key: answered while sealed too, once known (hosts cache it).
fn server_xkey(backend: &Backend) -> Reply {
    match backend.transit_public() {
        Some(public) => Reply::plain(public),
        None => Reply::admin_error(
            423,
            "the store is not initialized: no transit key yet (piggybank init)",
            Decision::refused(ErrorKind::Sealed, "not_initialized"),
        ),
    }
}

/// Answer one message. Pure with respect to NATS: the caller publishes the reply.
///
/// `server_xkey` is the only operation answered while sealed; every other one runs on the
/// [`crate::backend::Unsealed`] store, or answers its own "sealed" error.
pub async fn handle(backend: &Backend, prefix: &str, msg: &Message) -> Reply {
    let operation = subject::parse(prefix, msg.subject.as_str());
    let (name, entity) = match &operation {
        Ok(op) => audit_name(op),
        Err(_) => ("unknown", None),
    };
    let entity = entity.map(str::to_string);
    answer(backend, operation, msg)
        .await
        .audited_as(name, entity.as_deref())
}

/// The operation's name and entity, as the audit trail records them.
pub(crate) fn audit_name(op: &Operation) -> (&'static str, Option<&str>) {
    use crate::config::ops;
    match op {
        Operation::ServerXkey => (ops::SERVER_XKEY, None),
        Operation::Get => (ops::GET, None),
        Operation::PutSecret => (ops::PUT_SECRET, None),
        Operation::DeleteSecret => (ops::DELETE_SECRET, None),
        Operation::ListSecrets => (ops::LIST_SECRETS, None),
        Operation::AddMapping(e) => (ops::ADD_MAPPING, Some(e)),
        Operation::RemoveMapping(e) => (ops::REMOVE_MAPPING, Some(e)),
        Operation::GetMappings(e) => (ops::GET_MAPPINGS, Some(e)),
    }
}

async fn answer(
    backend: &Backend,
    operation: Result<Operation, SubjectError>,
    msg: &Message,
) -> Reply {
    let headers = msg.headers.as_ref();
    let payload = &msg.payload;
    let operation = match operation {
        Ok(Operation::ServerXkey) => return server_xkey(backend),
        Ok(operation) => operation,
        Err(e @ SubjectError::UnknownOperation(_)) => {
            return Reply::admin_error(
                404,
                e.to_string(),
                Decision::refused(ErrorKind::NotFound, "unknown_operation"),
            )
        }
        Err(e) => return Reply::bad_request(e.to_string(), "invalid_subject"),
    };
    // A get opens its request first, so that a refusal while sealed names the secret.
    if let Operation::Get = operation {
        return get::handle(backend, headers, payload).await;
    }
    let store = match backend.unsealed() {
        Ok(store) => store,
        Err(e) => {
            return match operation {
                Operation::PutSecret => admin::put_core_error(&e),
                _ => Reply::core_error(&e),
            }
        }
    };
    match operation {
        Operation::ServerXkey => server_xkey(backend),
        Operation::Get => get::handle(backend, headers, payload).await,
        Operation::PutSecret => admin::put_secret(&store, headers, payload).await,
        Operation::DeleteSecret => admin::delete_secret(&store, payload).await,
        Operation::ListSecrets => admin::list_secrets(&store, payload).await,
        Operation::AddMapping(entity) => {
            admin::update_mapping(&store, MappingChange::Add, &entity, payload).await
        }
        Operation::RemoveMapping(entity) => {
            admin::update_mapping(&store, MappingChange::Remove, &entity, payload).await
        }
        Operation::GetMappings(entity) => admin::get_mappings(&store, &entity, payload).await,
    }
}
