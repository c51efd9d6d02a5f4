//! The wasmCloud secrets protocol front door (`{base}.{version}.{name}.>`).
//!
//! Served by the one serve loop ([`crate::serve`]) in queue group `{queue_base}.{name}`, so
//! instances share the load. [`endpoint`] is the whole door: its subject, its rules (which
//! operations are admin ones, which carry a value: [`Operation`]), its refusals in each
//! operation's own wire format, and its handlers, which answer one parsed message and never
//! publish.

pub(crate) mod admin;
pub mod get;
pub mod read_secret;
pub(crate) mod reply;
pub(crate) mod subject;
pub mod wire;

use std::sync::Arc;

use async_nats::Message;
use futures::future::BoxFuture;

use crate::admin_auth::{AdminRefusal, Signed};
use crate::audit::AuditNote;
use crate::backend::{Backend, MappingChange, Unsealed};
use crate::decision::Decision;
use crate::error::ErrorKind;
use crate::serve::{Class, Door, Endpoint, LoopRefusal};
use crate::store::Grantee;
use reply::Reply;
use subject::{Operation, SubjectError};

/// The transit public key: answered while sealed too, once known (hosts cache it).
fn server_xkey(backend: &Backend) -> Reply {
    match backend.transit_public() {
        // Anyone may know it: an open read, not a decision (`audit::Trail::of`).
        Some(public) => Reply::plain(public).audited(AuditNote::default().allowed().public_read()),
        None => Reply::admin_error(
            423,
            "the store is not initialized: no transit key yet (piggybank init)",
            Decision::refused(ErrorKind::Sealed, "not_initialized"),
        ),
    }
}

/// The protocol door of `backend`, on `{prefix}.>` in `queue_group`.
pub(crate) fn endpoint(backend: Arc<Backend>, prefix: String, queue_group: String) -> Endpoint {
    let subject = format!("{prefix}.>");
    let door = Arc::new(ProtocolDoor { backend, prefix });
    Endpoint::new("protocol", subject, Some(queue_group), door)
}

struct ProtocolDoor {
    backend: Arc<Backend>,
    /// `{base}.{version}.{name}`.
    prefix: String,
}

impl Door for ProtocolDoor {
    /// A subject that does not parse is answered (with its error) by the handler.
    type Op = Result<Operation, SubjectError>;

    fn classify(&self, msg: &Message) -> Option<(Class, Self::Op)> {
        let op = subject::parse(&self.prefix, msg.subject.as_str());
        let class = match &op {
            Ok(op) if op.is_admin() => Class::admin(Signed::Once),
            _ => Class::open(),
        };
        let class = match &op {
            Ok(op) if op.carries_value() => class.with_value(),
            _ => class,
        };
        Some((class, op))
    }

    fn handle(self: Arc<Self>, op: Self::Op, msg: Message) -> BoxFuture<'static, Option<Reply>> {
        Box::pin(async move { Some(handle(&self.backend, op, &msg).await) })
    }

    fn refuse(&self, op: &Self::Op, _: &Message, refused: &LoopRefusal) -> Reply {
        let (name, entity) = op.as_ref().map_or(("unknown", None), audit_name);
        refusal(op.as_ref().ok(), refused).audited_as(name, entity)
    }

    fn too_large(reply: &Reply, message: String) -> Reply {
        reply::too_large(reply, message)
    }
}

/// A refusal by the serve loop in the operation's own format: `put_secret` answers the
/// sample's `PutSecretResponse` (`InvalidHeaders`: the signature headers are missing or
/// invalid), `get` a `SecretResponse` error (all a host reads), the others an admin error
/// (403, 413, or 503 when the nonce store did not answer).
fn refusal(op: Option<&Operation>, refused: &LoopRefusal) -> Reply {
    use wire::{PutSecretError, PutSecretResponse};
    match op {
        Some(Operation::PutSecret) => {
            let error = match refused {
                LoopRefusal::Admin(AdminRefusal::Refused(_)) => PutSecretError::InvalidHeaders,
                LoopRefusal::Admin(AdminRefusal::Unavailable(_))
                | LoopRefusal::AuditUnavailable => PutSecretError::Upstream(refused.to_string()),
                LoopRefusal::TooLarge { .. } => PutSecretError::InvalidPayload,
            };
            Reply::json(&PutSecretResponse {
                revision: 0,
                error: Some(error),
            })
        }
        Some(Operation::Get) => Reply::json(&wasmcloud_secrets_types::SecretResponse {
            secret: None,
            error: Some(wasmcloud_secrets_types::GetSecretError::Other(
                refused.to_string(),
            )),
        }),
        _ => Reply::admin_error(refused.code(), refused.to_string(), refused.decision()),
    }
}

/// Answer one message, parsed as `operation`. Pure with respect to NATS: the caller
/// publishes the reply.
///
/// `server_xkey` is the only operation answered while sealed; every other one runs on the
/// [`crate::backend::Unsealed`] store, or answers its own "sealed" error.
async fn handle(
    backend: &Backend,
    operation: Result<Operation, SubjectError>,
    msg: &Message,
) -> Reply {
    let (name, entity) = match &operation {
        Ok(op) => audit_name(op),
        Err(_) => ("unknown", None),
    };
    let entity = entity.map(str::to_string);
    answer(backend, operation, msg)
        .await
        .audited_as(name, entity.as_deref())
}

/// The operation's name and entity, as the audit trail records them: the entity only if it
/// is an entity key (the subject's token is the requester's text).
pub(crate) fn audit_name(op: &Operation) -> (&'static str, Option<&str>) {
    let (name, entity) = operation_and_entity(op);
    (
        name,
        entity.filter(|e| crate::store::EntityKey::parse(e).is_ok()),
    )
}

/// Its name, and the entity it names (an application's name is not an entity).
fn operation_and_entity(op: &Operation) -> (&'static str, Option<&str>) {
    match op {
        Operation::AddAppMapping(_)
        | Operation::RemoveAppMapping(_)
        | Operation::GetAppMappings(_) => (op.name_and_argument().0, None),
        _ => op.name_and_argument(),
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
    match operation {
        Operation::ServerXkey => server_xkey(backend),
        // A get opens its request before it asks for the store, so that a refusal while
        // sealed names the secret.
        Operation::Get => get::handle(backend, headers, payload).await,
        admin_operation => match backend.unsealed() {
            Ok(store) => administer(&store, admin_operation, headers, payload).await,
            Err(e) if admin_operation == Operation::PutSecret => admin::put_core_error(&e),
            Err(e) => Reply::core_error(&e),
        },
    }
}

/// An admin operation, on the unsealed store.
async fn administer(
    store: &Unsealed<'_>,
    operation: Operation,
    headers: Option<&async_nats::HeaderMap>,
    payload: &[u8],
) -> Reply {
    match operation {
        Operation::PutSecret => admin::put_secret(store, headers, payload).await,
        Operation::DeleteSecret => admin::delete_secret(store, payload).await,
        Operation::ListSecrets => admin::list_secrets(store, payload).await,
        Operation::AddMapping(entity) => {
            admin::update_mapping(store, MappingChange::Add, Grantee::entity(&entity), payload)
                .await
        }
        Operation::RemoveMapping(entity) => {
            let grantee = Grantee::entity(&entity);
            admin::update_mapping(store, MappingChange::Remove, grantee, payload).await
        }
        Operation::GetMappings(entity) => {
            admin::get_mappings(store, Grantee::entity(&entity), payload).await
        }
        Operation::AddAppMapping(app) => {
            let grantee = Grantee::application(&app);
            admin::update_mapping(store, MappingChange::Add, grantee, payload).await
        }
        Operation::RemoveAppMapping(app) => {
            let grantee = Grantee::application(&app);
            admin::update_mapping(store, MappingChange::Remove, grantee, payload).await
        }
        Operation::GetAppMappings(app) => {
            admin::get_mappings(store, Grantee::application(&app), payload).await
        }
        Operation::ReadSecret => read_secret::read_secret(store, headers, payload).await,
        // Answered before the store is asked for (`answer`).
        Operation::ServerXkey | Operation::Get => {
            Reply::bad_request("not an admin operation", "invalid_subject")
        }
    }
}
