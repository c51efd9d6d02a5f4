//! The one error model: every failure of the core has an [`ErrorKind`], and the error itself
//! is its source (its message, and the detail a wire format may need).
//!
//! The kind is decided once, here and in the `kind` methods beside each error type; every
//! front door maps a kind to its own wire error in one function. So one cause gets one
//! answer everywhere: a contention on a mapping is `409` on the admin operations and the
//! Piggy Bank API, and `version-conflict` over WIT.

use serde::{Deserialize, Serialize};

/// What went wrong, as far as a caller can act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request is malformed, or names something invalid: fix the request.
    Invalid,
    /// Authentication or authorization refused it.
    Denied,
    /// What it names does not exist.
    NotFound,
    /// The state is not what the request expected (a version, a concurrent update, already
    /// done): read again, or retry.
    Conflict,
    /// The store is sealed, or not initialized: unlock it first.
    Sealed,
    /// NATS or JetStream could not do it now: retry.
    Unavailable,
    /// Stored data cannot be used (corrupt, or sealed under a key this instance lacks): an
    /// operator must look.
    Internal,
}

impl ErrorKind {
    /// The status code of the front doors that answer with a `Status` header and HTTP's
    /// codes (the admin operations, the database operations, the Piggy Bank API).
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::Invalid => 400,
            ErrorKind::Denied => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::Sealed => 423,
            ErrorKind::Internal => 500,
            ErrorKind::Unavailable => 503,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::AuthzError;
    use crate::backend::seal::SealError;
    use crate::backend::BackendError;
    use crate::provider::bindings::exports::piggybank::secrets::admin::Error as WitError;
    use crate::store::StoreError;

    /// One cause of each kind (and several for some), as the core returns them.
    fn causes() -> Vec<(BackendError, ErrorKind)> {
        vec![
            (
                StoreError::InvalidEntity("x".into()).into(),
                ErrorKind::Invalid,
            ),
            (BackendError::InvalidVersion("v".into()), ErrorKind::Invalid),
            (AuthzError::NotMapped.into(), ErrorKind::Denied),
            (SealError::UnknownShare.into(), ErrorKind::Denied),
            (StoreError::NotFound("a".into()).into(), ErrorKind::NotFound),
            (
                StoreError::Contention("a".into()).into(),
                ErrorKind::Conflict,
            ),
            (
                StoreError::VersionConflict {
                    name: "a".into(),
                    expected: 1,
                    current: 2,
                }
                .into(),
                ErrorKind::Conflict,
            ),
            (SealError::AlreadyInitialized.into(), ErrorKind::Conflict),
            (BackendError::Sealed, ErrorKind::Sealed),
            (SealError::NotInitialized.into(), ErrorKind::Sealed),
            (
                StoreError::Upstream("down".into()).into(),
                ErrorKind::Unavailable,
            ),
            (
                StoreError::Corrupt {
                    key: "a".into(),
                    why: "bad".into(),
                }
                .into(),
                ErrorKind::Internal,
            ),
        ]
    }

    #[test]
    fn one_cause_gets_one_answer_at_every_front_door() {
        // BackendError is not Clone (its sources are not): each front door gets a fresh one.
        for i in 0..causes().len() {
            let cause = || causes().swap_remove(i).0;
            let kind = causes()[i].1;
            assert_eq!(cause().kind(), kind, "{}", cause());
            let admin = crate::protocol::wire::admin_code(&cause());
            let api = crate::piggybank_api::api_error(cause()).status();
            assert_eq!(admin, kind.status(), "admin: {}", cause());
            assert_eq!(api, kind.status(), "api: {}", cause());
            let wit = crate::provider::admin::wit_error(cause());
            let wit_kind = match wit {
                WitError::InvalidArgument(_) => ErrorKind::Invalid,
                WitError::Unauthorized(_) => ErrorKind::Denied,
                WitError::NotFound(_) => ErrorKind::NotFound,
                WitError::VersionConflict(_) => ErrorKind::Conflict,
                WitError::Sealed(_) => ErrorKind::Sealed,
                WitError::Unavailable(_) => match kind {
                    ErrorKind::Internal => ErrorKind::Internal,
                    _ => ErrorKind::Unavailable,
                },
            };
            assert_eq!(wit_kind, kind, "wit: {}", cause());
        }
    }
}
