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
    use crate::audit::{AuditNote, Outcome};
    use crate::authz::AuthzError;
    use crate::backend::BackendError;
    use crate::decision::Decision;
    use crate::provider::bindings::exports::piggybank::secrets0_2_0::admin::Error as WitError;
    use crate::seal::key_record::KeyRecordError;
    use crate::seal::SealError;
    use crate::serve::Reply;
    use crate::store::envelope::EnvelopeError;
    use crate::store::StoreError;
    use wasmcloud_secrets_types::GetSecretError;

    /// Causes of every kind, one per variant the core returns to a request, as the core
    /// returns them.
    fn causes() -> Vec<(BackendError, ErrorKind)> {
        vec![
            (
                StoreError::InvalidEntity("x".into()).into(),
                ErrorKind::Invalid,
            ),
            (BackendError::InvalidVersion("v".into()), ErrorKind::Invalid),
            (BackendError::MissingField("f".into()), ErrorKind::Invalid),
            (BackendError::NotAnObject("f".into()), ErrorKind::Invalid),
            (AuthzError::Policy("p".into()).into(), ErrorKind::Invalid),
            (AuthzError::NotMapped.into(), ErrorKind::Denied),
            (
                AuthzError::UntrustedIssuer("A".into()).into(),
                ErrorKind::Denied,
            ),
            (
                AuthzError::InvalidEntityJwt("bad".into()).into(),
                ErrorKind::Denied,
            ),
            (
                AuthzError::InvalidHostJwt("bad".into()).into(),
                ErrorKind::Denied,
            ),
            (SealError::UnknownShare.into(), ErrorKind::Denied),
            (KeyRecordError::WrongKey.into(), ErrorKind::Denied),
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
            (
                EnvelopeError::UnknownKey("k".into()).into(),
                ErrorKind::Internal,
            ),
            (EnvelopeError::WrongName.into(), ErrorKind::Internal),
        ]
    }

    /// The decision a reply carries to the finishing step (metrics, `$SRV`, audit).
    fn decided(reply: &Reply) -> Decision {
        reply.audit.as_ref().expect("an audit note").decision()
    }

    /// The kind a `get` error tells a host, as far as its variant tells one.
    fn get_kind(e: &GetSecretError, kind: ErrorKind) -> ErrorKind {
        match e {
            GetSecretError::Unauthorized
            | GetSecretError::InvalidEntityJWT(_)
            | GetSecretError::InvalidHostJWT(_) => ErrorKind::Denied,
            GetSecretError::SecretNotFound => ErrorKind::NotFound,
            GetSecretError::UpstreamError(_) => ErrorKind::Unavailable,
            GetSecretError::PolicyError(_) | GetSecretError::InvalidRequest => ErrorKind::Invalid,
            // `Other` carries the message of an error the sample's variants cannot name.
            GetSecretError::Other(_) | GetSecretError::DecryptionError => kind,
            other => panic!("a core error answered as {other:?}"),
        }
    }

    #[test]
    fn one_cause_gets_one_answer_and_one_decision_at_every_front_door() {
        // BackendError is not Clone (its sources are not): each front door gets a fresh one.
        for i in 0..causes().len() {
            let cause = || causes().swap_remove(i).0;
            let kind = causes()[i].1;
            let e = cause();
            assert_eq!(e.kind(), kind, "{e}");
            // The core decides once: its kind and its own code, whichever door answers.
            let decision = Decision::of(&e);
            assert_eq!(decision, Decision::refused(kind, e.code()), "{e}");
            let outcome = match kind {
                ErrorKind::Denied | ErrorKind::Sealed => Outcome::Denied,
                _ => Outcome::Error,
            };
            assert_eq!(decision.outcome(), outcome, "{e}");

            // The protocol's get: the host's error, and the core's decision.
            let refused = crate::protocol::get::Refused::by_core(&e);
            assert_eq!(get_kind(&refused.wire, kind), kind, "get: {e}");
            let reply = refused.reply(AuditNote::operation("get"));
            assert_eq!(decided(&reply), decision, "get: {e}");

            // The protocol's put_secret, and its other admin operations.
            let reply = crate::protocol::admin::put_core_error(&e);
            assert_eq!(decided(&reply), decision, "put_secret: {e}");
            let reply = Reply::core_error(&e);
            let code = reply.headers.as_ref().and_then(|h| {
                h.get(crate::config::headers::SERVICE_ERROR_CODE)
                    .map(|v| v.as_str().to_string())
            });
            assert_eq!(code, Some(kind.status().to_string()), "admin: {e}");
            assert_eq!(decided(&reply), decision, "admin: {e}");

            // The database operations.
            let reply = crate::database::error_reply(&e, AuditNote::default());
            assert_eq!(decided(&reply), decision, "database: {e}");

            // The Piggy Bank API.
            let api = crate::piggybank_api::api_error(cause());
            assert_eq!(api.status(), kind.status(), "api: {e}");
            let reply = crate::piggybank_api::error_reply(&api, AuditNote::default());
            assert_eq!(decided(&reply), decision, "api: {e}");

            // The WIT admin interface.
            let refused = crate::provider::admin::Refusal::from(cause());
            assert_eq!(refused.decision, decision, "wit: {e}");
            let wit_kind = match refused.error {
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
            assert_eq!(wit_kind, kind, "wit: {e}");
        }
    }

    #[test]
    fn an_untrusted_issuer_and_the_seal_keep_their_reasons() {
        // The two reasons that drifted when the doors re-derived them from their wire errors.
        let untrusted: BackendError = AuthzError::UntrustedIssuer("A".into()).into();
        let reply = crate::protocol::get::Refused::by_core(&untrusted).reply(AuditNote::default());
        assert_eq!(decided(&reply).reason(), Some("untrusted_issuer"));
        let reply = crate::protocol::get::Refused::by_core(&BackendError::Sealed)
            .reply(AuditNote::default());
        let decision = decided(&reply);
        assert_eq!(
            (decision.outcome(), decision.reason()),
            (Outcome::Denied, Some("sealed"))
        );
    }
}
