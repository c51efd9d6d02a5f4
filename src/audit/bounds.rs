//! The size bound of a record: every field a requester can influence is capped, so no
//! request, however large, writes more than [`MAX_RECORD_BYTES`] to the trail.
//!
//! Invariant: [`AuditRecord::bounded`] is applied by the writer to every record before it
//! is signed (`Auditor::record` is the only way in), so the bound holds by construction,
//! whichever front door noted what. A field cut short is marked (`truncated`), so a reader
//! knows it does not hold the whole text.
//!
//! The caps (bytes, cut at a character boundary):
//! - a secret name: 255, the longest valid name (`crate::store::validate_name`);
//! - a key (entity, host, admin key), a request or instance id: 64 (an nkey's public key is
//!   56);
//! - an application, a link's source id or name: 128 (a wadm component id is far shorter);
//! - an operation, a reason: 64 (both are codes the code chose, capped all the same).

use super::{AuditRecord, LinkRef};

pub(super) const MAX_SECRET: usize = crate::store::MAX_NAME_LEN;
pub(super) const MAX_KEY: usize = 64;
pub(super) const MAX_LABEL: usize = 128;
pub(super) const MAX_CODE: usize = 64;

/// Largest serialized record, signature and chain fields included (a unit test holds it,
/// with every field at its cap in the characters JSON escapes at six bytes each).
pub const MAX_RECORD_BYTES: usize = 8 * 1024;

/// `text` cut to at most `max` bytes at a character boundary; `true` if it was cut.
fn cap(text: &mut String, max: usize) -> bool {
    if text.len() <= max {
        return false;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    true
}

fn cap_opt(text: &mut Option<String>, max: usize) -> bool {
    text.as_mut().is_some_and(|t| cap(t, max))
}

impl AuditRecord {
    /// This record with every requester-influenced field within its cap, marked
    /// `truncated` if any was cut.
    pub(crate) fn bounded(mut self) -> Self {
        let mut cut = false;
        cut |= cap(&mut self.operation, MAX_CODE);
        cut |= cap(&mut self.front_door, MAX_CODE);
        cut |= cap(&mut self.request_id, MAX_KEY);
        cut |= cap(&mut self.instance_id, MAX_KEY);
        cut |= cap_opt(&mut self.secret, MAX_SECRET);
        cut |= cap_opt(&mut self.entity, MAX_KEY);
        cut |= cap_opt(&mut self.admin_key, MAX_KEY);
        cut |= cap_opt(&mut self.host, MAX_KEY);
        cut |= cap_opt(&mut self.application, MAX_LABEL);
        cut |= cap_opt(&mut self.reason, MAX_CODE);
        if let Some(LinkRef { source_id, name }) = self.link.as_mut() {
            cut |= cap(source_id, MAX_LABEL);
            cut |= cap(name, MAX_LABEL);
        }
        self.truncated |= cut;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{chain::Chain, chain::InstanceKey, Outcome, Trail};

    /// The worst case: every field far over its cap, in a character JSON escapes as
    /// `\u00XX` (six bytes for one).
    fn hostile_record() -> AuditRecord {
        let huge = "\u{1}".repeat(100_000);
        AuditRecord {
            time_ms: u64::MAX,
            request_id: huge.clone(),
            instance_id: huge.clone(),
            front_door: huge.clone(),
            operation: huge.clone(),
            secret: Some(huge.clone()),
            version: Some(u64::MAX),
            entity: Some(huge.clone()),
            admin_key: Some(huge.clone()),
            link: Some(LinkRef {
                source_id: huge.clone(),
                name: huge.clone(),
            }),
            application: Some(huge.clone()),
            host: Some(huge.clone()),
            outcome: Outcome::Denied,
            reason: Some(huge),
            count: Some(u64::MAX),
            since_ms: Some(u64::MAX),
            ..AuditRecord::default()
        }
    }

    #[test]
    fn a_record_is_bounded_whatever_its_fields_hold() {
        let key = InstanceKey::generate().unwrap();
        let mut chain = Chain::new(Trail::Decisions);
        let line = chain.seal(hostile_record().bounded(), &key).unwrap();
        assert!(
            line.len() <= MAX_RECORD_BYTES,
            "{} bytes over {MAX_RECORD_BYTES}",
            line.len()
        );
        let record: AuditRecord = serde_json::from_slice(&line).unwrap();
        assert!(record.truncated);
        assert_eq!(record.secret.unwrap().len(), MAX_SECRET);
        // Positive control: without the caps the same record is far larger.
        let unbounded = serde_json::to_vec(&hostile_record()).unwrap();
        assert!(unbounded.len() > 100 * MAX_RECORD_BYTES);
    }

    #[test]
    fn a_record_within_its_caps_is_unchanged_and_not_marked() {
        let record = AuditRecord {
            operation: "get".into(),
            secret: Some("a".repeat(MAX_SECRET)),
            entity: Some("M".repeat(56)),
            ..AuditRecord::default()
        };
        let bounded = record.clone().bounded();
        assert_eq!(bounded, record);
        assert!(!bounded.truncated);
    }

    #[test]
    fn a_cut_never_splits_a_character() {
        let mut text = "é".repeat(200);
        assert!(cap(&mut text, 255));
        assert_eq!(text.len(), 254);
        assert!(text.chars().all(|c| c == 'é'));
    }
}
