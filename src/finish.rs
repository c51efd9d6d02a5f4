//! The one finishing step of every answered request, whichever front door answered it: the
//! NATS serve loop ([`crate::serve`]) and the WIT admin interface alike.
//!
//! From the request's [`AuditNote`] (and its [`Decision`](crate::decision::Decision)) it
//! counts the request in the metrics, and writes its audit record. Its result is the
//! fail-closed rule of `--audit-required`: `Err` means the record was not acknowledged, and
//! the caller must answer its door's "unavailable" refusal instead of what it decided.

use std::time::Duration;

use crate::audit::{AuditNote, AuditUnavailable, Auditor};

/// One request's last step before its answer is sent.
pub(crate) struct Finish<'a> {
    pub auditor: &'a Auditor,
    /// `protocol`, `database`, `api` or `wit`: never taken from the request.
    pub front_door: &'static str,
    /// The id on the request's tracing span, and on its record.
    pub request_id: String,
    /// The admin key whose signature the serve loop verified.
    pub admin_key: Option<String>,
    /// Time since the request was received.
    pub elapsed: Duration,
}

impl Finish<'_> {
    /// Count and record the request `note` describes. `Err`: with `--audit-required`, its
    /// record was not acknowledged, so it must not be answered as decided.
    pub(crate) async fn finish(self, note: AuditNote) -> Result<(), AuditUnavailable> {
        let decision = note.decision();
        crate::metrics::request(
            self.front_door,
            note.operation.as_deref().unwrap_or("unknown"),
            decision.outcome().as_str(),
            self.elapsed,
        );
        let record = self
            .auditor
            .complete(self.request_id, self.front_door, note, self.admin_key);
        self.auditor.record(record).await
    }
}
