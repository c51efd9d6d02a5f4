//! Parse a request subject into an [`Operation`]. Pure; no index arithmetic on split subjects.

use crate::config::ops;

/// One operation of the protocol subject tree `{base}.{version}.{name}.{op}[.{entity}]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    ServerXkey,
    Get,
    PutSecret,
    DeleteSecret,
    ListSecrets,
    AddMapping(String),
    RemoveMapping(String),
    GetMappings(String),
    /// Grants to a wadm application, by its name (the last subject token).
    AddAppMapping(String),
    RemoveAppMapping(String),
    GetAppMappings(String),
    /// An operator reads a value (the name is in the body: names may hold dots).
    ReadSecret,
}

impl Operation {
    /// One of each operation the subject tree has (an argument `x` where it takes one):
    /// what the NATS layout grants the admin role is read from it. It is the table
    /// [`parse`] reads, so an operation that can be requested is in it.
    pub fn every_kind() -> Vec<Operation> {
        OPERATIONS
            .iter()
            .map(|(_, make)| match make {
                Make::Plain(op) => op.clone(),
                Make::WithArgument(make) => make("x".to_string()),
            })
            .collect()
    }

    /// Its subjects under the backend's `prefix`, as a NATS permission: `{prefix}.{op}`, or
    /// `{prefix}.{op}.*` for an operation on an entity or application.
    pub fn permission_subject(&self, prefix: &str) -> String {
        let (name, argument) = self.name_and_argument();
        match argument {
            Some(_) => format!("{prefix}.{name}.*"),
            None => format!("{prefix}.{name}"),
        }
    }

    /// Its name on the wire, and its argument token if it takes one.
    pub(crate) fn name_and_argument(&self) -> (&'static str, Option<&str>) {
        match self {
            Operation::ServerXkey => (ops::SERVER_XKEY, None),
            Operation::Get => (ops::GET, None),
            Operation::PutSecret => (ops::PUT_SECRET, None),
            Operation::DeleteSecret => (ops::DELETE_SECRET, None),
            Operation::ListSecrets => (ops::LIST_SECRETS, None),
            Operation::AddMapping(e) => (ops::ADD_MAPPING, Some(e)),
            Operation::RemoveMapping(e) => (ops::REMOVE_MAPPING, Some(e)),
            Operation::GetMappings(e) => (ops::GET_MAPPINGS, Some(e)),
            Operation::AddAppMapping(a) => (ops::ADD_APP_MAPPING, Some(a)),
            Operation::RemoveAppMapping(a) => (ops::REMOVE_APP_MAPPING, Some(a)),
            Operation::GetAppMappings(a) => (ops::GET_APP_MAPPINGS, Some(a)),
            Operation::ReadSecret => (ops::READ_SECRET, None),
        }
    }

    /// Whether it changes or reveals store state, and so must be signed when the backend
    /// runs with `--admin-keys`: all but `server_xkey` and `get`, which hosts use.
    /// `read_secret` reveals a value: it is one.
    pub(crate) fn is_admin(&self) -> bool {
        match self {
            Operation::ServerXkey | Operation::Get => false,
            Operation::PutSecret
            | Operation::DeleteSecret
            | Operation::ListSecrets
            | Operation::AddMapping(_)
            | Operation::RemoveMapping(_)
            | Operation::GetMappings(_)
            | Operation::AddAppMapping(_)
            | Operation::RemoveAppMapping(_)
            | Operation::GetAppMappings(_)
            | Operation::ReadSecret => true,
        }
    }

    /// Whether its request carries a value or a list of names, and so may be as large as a
    /// NATS message: `put_secret`, `add_mapping` and `remove_mapping`.
    pub(crate) fn carries_value(&self) -> bool {
        match self {
            Operation::PutSecret
            | Operation::AddMapping(_)
            | Operation::RemoveMapping(_)
            | Operation::AddAppMapping(_)
            | Operation::RemoveAppMapping(_) => true,
            Operation::ServerXkey
            | Operation::Get
            | Operation::DeleteSecret
            | Operation::ListSecrets
            | Operation::GetMappings(_)
            | Operation::GetAppMappings(_)
            | Operation::ReadSecret => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SubjectError {
    #[error("subject is outside this backend's prefix")]
    OutsidePrefix,
    #[error("unknown operation {0:?}")]
    UnknownOperation(String),
    #[error("operation {0:?} needs an entity public key as the last subject token")]
    MissingEntity(&'static str),
    #[error("operation {0:?} takes no further subject tokens")]
    Trailing(String),
}

/// How an operation is made from its subject: it takes no further token, or one argument
/// (an entity key, an application's name).
enum Make {
    Plain(Operation),
    WithArgument(fn(String) -> Operation),
}

/// Every operation of the subject tree, by its name on the wire: the one table [`parse`]
/// reads and [`Operation::every_kind`] lists.
const OPERATIONS: &[(&str, Make)] = &[
    (ops::SERVER_XKEY, Make::Plain(Operation::ServerXkey)),
    (ops::GET, Make::Plain(Operation::Get)),
    (ops::PUT_SECRET, Make::Plain(Operation::PutSecret)),
    (ops::DELETE_SECRET, Make::Plain(Operation::DeleteSecret)),
    (ops::LIST_SECRETS, Make::Plain(Operation::ListSecrets)),
    (ops::READ_SECRET, Make::Plain(Operation::ReadSecret)),
    (ops::ADD_MAPPING, Make::WithArgument(Operation::AddMapping)),
    (
        ops::REMOVE_MAPPING,
        Make::WithArgument(Operation::RemoveMapping),
    ),
    (
        ops::GET_MAPPINGS,
        Make::WithArgument(Operation::GetMappings),
    ),
    (
        ops::ADD_APP_MAPPING,
        Make::WithArgument(Operation::AddAppMapping),
    ),
    (
        ops::REMOVE_APP_MAPPING,
        Make::WithArgument(Operation::RemoveAppMapping),
    ),
    (
        ops::GET_APP_MAPPINGS,
        Make::WithArgument(Operation::GetAppMappings),
    ),
];

/// `prefix` is `{base}.{version}.{name}` (no trailing dot).
pub fn parse(prefix: &str, subject: &str) -> Result<Operation, SubjectError> {
    let rest = subject
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('.'))
        .ok_or(SubjectError::OutsidePrefix)?;
    let (op, arg) = match rest.split_once('.') {
        Some((op, arg)) => (op, Some(arg)),
        None => (rest, None),
    };
    let (name, make) = OPERATIONS
        .iter()
        .find(|(name, _)| *name == op)
        .ok_or_else(|| SubjectError::UnknownOperation(op.to_string()))?;
    match (make, arg) {
        (Make::Plain(operation), None) => Ok(operation.clone()),
        (Make::Plain(_), Some(_)) => Err(SubjectError::Trailing(op.to_string())),
        (Make::WithArgument(make), Some(entity)) if !entity.is_empty() && !entity.contains('.') => {
            Ok(make(entity.to_string()))
        }
        (Make::WithArgument(_), _) => Err(SubjectError::MissingEntity(name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "wasmcloud.secrets.v1alpha1.nats-kv";

    #[test]
    fn every_kinds_permission_subject_parses_back_to_it() {
        for op in Operation::every_kind() {
            let subject = op.permission_subject(P).replace('*', "x");
            assert_eq!(parse(P, &subject), Ok(op));
        }
    }

    #[test]
    fn parses_every_operation() {
        let s = |op: &str| format!("{P}.{op}");
        assert_eq!(parse(P, &s("server_xkey")), Ok(Operation::ServerXkey));
        assert_eq!(parse(P, &s("get")), Ok(Operation::Get));
        assert_eq!(parse(P, &s("put_secret")), Ok(Operation::PutSecret));
        assert_eq!(parse(P, &s("delete_secret")), Ok(Operation::DeleteSecret));
        assert_eq!(parse(P, &s("list_secrets")), Ok(Operation::ListSecrets));
        assert_eq!(parse(P, &s("read_secret")), Ok(Operation::ReadSecret));
        assert!(Operation::ReadSecret.is_admin(), "it reveals a value");
        assert_eq!(
            parse(P, &s("add_mapping.MABC")),
            Ok(Operation::AddMapping("MABC".into()))
        );
        assert_eq!(
            parse(P, &s("remove_mapping.MABC")),
            Ok(Operation::RemoveMapping("MABC".into()))
        );
        assert_eq!(
            parse(P, &s("get_mappings.VXYZ")),
            Ok(Operation::GetMappings("VXYZ".into()))
        );
        assert_eq!(
            parse(P, &s("add_app_mapping.shop")),
            Ok(Operation::AddAppMapping("shop".into()))
        );
        assert_eq!(
            parse(P, &s("remove_app_mapping.shop")),
            Ok(Operation::RemoveAppMapping("shop".into()))
        );
        assert_eq!(
            parse(P, &s("get_app_mappings.shop")),
            Ok(Operation::GetAppMappings("shop".into()))
        );
    }

    #[test]
    fn refuses_malformed_subjects() {
        assert_eq!(
            parse(P, &format!("{P}.nope")),
            Err(SubjectError::UnknownOperation("nope".into()))
        );
        assert_eq!(
            parse(P, &format!("{P}.add_mapping")),
            Err(SubjectError::MissingEntity("add_mapping"))
        );
        assert_eq!(
            parse(P, &format!("{P}.add_mapping.A.B")),
            Err(SubjectError::MissingEntity("add_mapping"))
        );
        assert_eq!(
            parse(P, &format!("{P}.get.extra")),
            Err(SubjectError::Trailing("get".into()))
        );
        assert_eq!(
            parse(P, "wasmcloud.secrets.v1alpha1.nats-kvx.get"),
            Err(SubjectError::OutsidePrefix)
        );
        assert_eq!(parse(P, P), Err(SubjectError::OutsidePrefix));
    }
}
