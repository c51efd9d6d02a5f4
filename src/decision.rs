//! What was decided about one request: allowed, or refused with a kind and a reason code.
//!
//! A [`Decision`] travels on the reply next to the wire answer, and the finishing step
//! ([`crate::finish`]) turns it into the metric's outcome, the `$SRV` error count and the
//! audit record. So each front door says *what* it answered and never re-derives *why*:
//!
//! - **The core decides once.** A refusal by the core is [`Decision::of`] its
//!   [`BackendError`]: the error's own kind and code, whichever door answered. A wire error
//!   (`Unauthorized`, a status code, a WIT variant) is never read back into a reason; that
//!   is how an untrusted issuer came to be recorded as `not_mapped`.
//! - **A door decides only what the core never saw**: a request it could not decode, or one
//!   the serve loop refused before any handler ran ([`Decision::refused`], with the door's
//!   own code).
//!
//! A reason is a short code chosen by the code, never an error's text (which may quote what
//! a request sent).

use crate::audit::Outcome;
use crate::backend::BackendError;
use crate::error::ErrorKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Served or done.
    Allowed,
    /// Refused or failed: what kind of failure, and why, as a code.
    Refused {
        kind: ErrorKind,
        reason: &'static str,
    },
}

impl Decision {
    /// The core's decision about a request it refused: the error's kind and code.
    pub fn of(err: &BackendError) -> Self {
        Decision::Refused {
            kind: err.kind(),
            reason: err.code(),
        }
    }

    /// A refusal decided by a front door before the core saw the request.
    pub const fn refused(kind: ErrorKind, reason: &'static str) -> Self {
        Decision::Refused { kind, reason }
    }

    /// The audit trail's and the metrics' outcome: a refusal by authorization, signature or
    /// seal is `denied`; anything else that failed is an `error`.
    pub fn outcome(self) -> Outcome {
        match self {
            Decision::Allowed => Outcome::Allowed,
            Decision::Refused {
                kind: ErrorKind::Denied | ErrorKind::Sealed,
                ..
            } => Outcome::Denied,
            Decision::Refused { .. } => Outcome::Error,
        }
    }

    /// The reason code of a refusal.
    pub fn reason(self) -> Option<&'static str> {
        match self {
            Decision::Allowed => None,
            Decision::Refused { reason, .. } => Some(reason),
        }
    }

    /// The kind of a refusal.
    pub fn kind(self) -> Option<ErrorKind> {
        match self {
            Decision::Allowed => None,
            Decision::Refused { kind, .. } => Some(kind),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::AuthzError;

    #[test]
    fn the_core_s_decision_keeps_its_own_reason() {
        let untrusted = BackendError::Authz(AuthzError::UntrustedIssuer("A".into()));
        let decided = Decision::of(&untrusted);
        assert_eq!(decided.outcome(), Outcome::Denied);
        assert_eq!(decided.reason(), Some("untrusted_issuer"));
        let sealed = Decision::of(&BackendError::Sealed);
        assert_eq!(
            (sealed.outcome(), sealed.reason()),
            (Outcome::Denied, Some("sealed"))
        );
    }

    #[test]
    fn only_denials_and_the_seal_are_denied() {
        for (kind, outcome) in [
            (ErrorKind::Denied, Outcome::Denied),
            (ErrorKind::Sealed, Outcome::Denied),
            (ErrorKind::Invalid, Outcome::Error),
            (ErrorKind::NotFound, Outcome::Error),
            (ErrorKind::Conflict, Outcome::Error),
            (ErrorKind::Unavailable, Outcome::Error),
            (ErrorKind::Internal, Outcome::Error),
        ] {
            assert_eq!(Decision::refused(kind, "x").outcome(), outcome, "{kind:?}");
        }
        assert_eq!(Decision::Allowed.outcome(), Outcome::Allowed);
        assert_eq!(Decision::Allowed.reason(), None);
    }
}
