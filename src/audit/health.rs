//! Is each trail's stream still the one this instance configured?
//!
//! - **At start** ([`configure`]): a missing stream is created; an existing one is set back
//!   to this instance's config (its limits may have been changed by an operator's new
//!   flags, or by an attacker). One that cannot be (a mirror, say) stops the start under
//!   `--audit-required`, else is reported.
//! - **Every [`CHECK_INTERVAL`]** ([`watch`]): the stream's config and creation time are
//!   compared with what was configured; a replaced stream (deleted and made again, even
//!   with the same config) has another creation time.
//! - **In every acknowledgement** (the writer): an acknowledgement from another stream than
//!   the trail's is a problem that stays until restart.
//!
//! A problem is logged at error once when it appears and once when it clears, shown in
//! `status` (`audit.problems`), and, with `--audit-required`, a problem with the decisions
//! stream refuses every request ([`Health::refuses`]).

use std::sync::{Mutex, Weak};
use std::time::Duration;

use async_nats::jetstream;

use super::{AuditError, Trail, TrailStream};

/// How often each stream's config is checked.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// When the stream was created, as the server says.
pub type Created = time::OffsetDateTime;

/// The problems of each trail, as last found.
#[derive(Debug, Default)]
pub struct Health {
    /// By trail (`Trail::ALL`'s order): the config check's findings, and a foreign
    /// acknowledgement (sticky).
    checked: Mutex<[Vec<String>; 3]>,
    foreign_ack: Mutex<[Option<String>; 3]>,
}

fn index(trail: Trail) -> usize {
    trail.index()
}

impl Health {
    /// Every problem found, both trails.
    pub fn problems(&self) -> Vec<String> {
        let checked = self
            .checked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let foreign = self
            .foreign_ack
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        checked
            .into_iter()
            .flatten()
            .chain(foreign.into_iter().flatten())
            .collect()
    }

    /// Whether `--audit-required` must refuse a record for `trail`: its stream is not as
    /// configured.
    pub fn refuses(&self, trail: Trail) -> bool {
        let i = index(trail);
        !self.checked.lock().unwrap_or_else(|p| p.into_inner())[i].is_empty()
            || self.foreign_ack.lock().unwrap_or_else(|p| p.into_inner())[i].is_some()
    }

    fn set_checked(&self, trail: Trail, problems: Vec<String>) {
        let mut checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
        let slot = &mut checked[index(trail)];
        if *slot == problems {
            return;
        }
        if problems.is_empty() {
            tracing::info!(
                trail = trail.as_str(),
                "audit stream is as configured again"
            );
        } else {
            tracing::error!(
                trail = trail.as_str(),
                problems = %problems.join("; "),
                "audit stream is not the one this instance configured"
            );
        }
        *slot = problems;
    }

    /// An acknowledgement came from `stream`, not from the trail's own.
    pub fn foreign_ack(&self, trail: Trail, expected: &str, stream: &str) {
        let mut foreign = self.foreign_ack.lock().unwrap_or_else(|p| p.into_inner());
        let slot = &mut foreign[index(trail)];
        if slot.is_none() {
            let problem = format!(
                "a record was acknowledged by stream {stream:?}, not {expected}: another \
                 stream captures the trail's subjects (restart once it is removed)"
            );
            tracing::error!(trail = trail.as_str(), %problem, "audit record went astray");
            *slot = Some(problem);
        }
    }
}

/// Whether the server says there is no such stream.
fn is_missing(e: &jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(je)
            if je.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

/// Create `spec`'s stream, or set an existing one back to it. Returns its creation time.
/// A stream of an older version that allows purges keeps allowing them (the server does
/// not let an update change that): `spec` is adjusted, and a warning says to recreate it.
pub async fn configure(
    js: &jetstream::Context,
    spec: &mut TrailStream,
    required: bool,
) -> Result<Created, AuditError> {
    let stream_error = |message: String| AuditError::Stream {
        stream: spec.name.clone(),
        message,
    };
    let existing = match js.get_stream(&spec.name).await {
        Ok(mut stream) => Some(
            stream
                .info()
                .await
                .map_err(|e| stream_error(e.to_string()))?
                .clone(),
        ),
        Err(e) if is_missing(&e) => None,
        Err(e) => return Err(stream_error(e.to_string())),
    };
    let Some(info) = existing else {
        let created = js
            .create_stream(spec.config())
            .await
            .map_err(|e| stream_error(e.to_string()))?;
        return Ok(created.cached_info().created);
    };
    if !info.config.deny_purge || !info.config.deny_delete {
        spec.deny_removal = false;
        tracing::warn!(
            stream = %spec.name,
            "this audit stream allows its records to be deleted or purged through the \
             JetStream API (made by an older piggybank); delete it once its records are \
             no longer needed, and the next start makes one that does not"
        );
    }
    let problems = spec.problems(&info.config);
    if problems.is_empty() {
        return Ok(info.created);
    }
    match js.update_stream(spec.config()).await {
        Ok(updated) => {
            tracing::warn!(
                stream = %spec.name,
                was = %problems.join("; "),
                "audit stream set back to this instance's config"
            );
            Ok(updated.created)
        }
        Err(e) if required => Err(AuditError::Foreign {
            stream: spec.name.clone(),
            problems: format!("{}; it cannot be set back: {e}", problems.join("; ")),
        }),
        Err(e) => {
            tracing::error!(
                stream = %spec.name,
                problems = %problems.join("; "),
                error = %e,
                "audit stream is not this instance's, and cannot be set back to it"
            );
            Ok(info.created)
        }
    }
}

/// Check each configured stream every [`CHECK_INTERVAL`] until the auditor is gone.
pub async fn watch(
    js: jetstream::Context,
    configured: Vec<(TrailStream, Created)>,
    health: Weak<Health>,
) {
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(health) = health.upgrade() else {
            return;
        };
        for (spec, created) in &configured {
            let problems = match js.get_stream(&spec.name).await {
                Ok(mut stream) => match stream.info().await {
                    Ok(info) => {
                        let mut problems = spec.problems(&info.config);
                        if info.created != *created {
                            problems.push(format!(
                                "stream {} was replaced: created at {}, not at {}",
                                spec.name, info.created, created
                            ));
                        }
                        problems
                    }
                    Err(_) => continue,
                },
                Err(e) if is_missing(&e) => {
                    vec![format!("stream {} is gone", spec.name)]
                }
                // NATS is unreachable: nothing new is known (publishes fail on their own).
                Err(_) => continue,
            };
            health.set_checked(spec.trail, problems);
        }
    }
}
