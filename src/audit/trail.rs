//! The three trails, and the one rule that says which record goes where.
//!
//! - **Admin** (`PIGGYBANK_AUDIT_ADMIN_<name>`, subjects `$PIGGYBANK.AUDIT.<name>.admin.
//!   <outcome>.<front door>`): every request signed by an admin key, whatever its outcome.
//!   Only a holder of an admin seed can add to it, so no flood of reads or refusals can keep
//!   an admin change from being recorded. Discard **new**.
//! - **Decisions** (`PIGGYBANK_AUDIT_<name>`, subjects `$PIGGYBANK.AUDIT.<name>.<outcome>.
//!   <front door>`): every other allowed access to the store (a get served, a secret written,
//!   listed or deleted, a mapping changed, a database operation done). Discard **new**: when
//!   the stream is full, a record is refused, never an older one evicted, and
//!   `--audit-required` then refuses the request. Whoever may make allowed requests (a
//!   component's JWT is public) can fill it: only NATS permissions bound who may
//!   ([docs/nats-layout.md]).
//! - **Refusals** (`PIGGYBANK_AUDIT_REFUSALS_<name>`, subjects `$PIGGYBANK.AUDIT.<name>.
//!   refused.<outcome>.<front door>`): what anyone on the bus can cause at will without a
//!   key: requests refused or failed before an admin signature vouched for them (bad
//!   requests, unmapped or untrusted JWTs, the seal), and open reads that reveal nothing
//!   (`server_xkey`, `status`). Discard old, limits of its own, and summarised beyond a rate
//!   ([`super::gate`]): a flood of them can only evict refusals.
//!
//! A denied get with a valid component JWT is a refusal: a component's JWT is public (it is
//! in its wasm), so anyone can make as many as they like.
//!
//! [`TrailStream`] is the stream each trail must be, and [`TrailStream::problems`] what is
//! wrong with a stream found under its name (pure; the instance checks at start, on a timer
//! and in every acknowledgement, and `piggybank audit --verify` checks again).

use std::time::Duration;

use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use serde::{Deserialize, Serialize};

use super::AuditNote;
use crate::decision::Decision;

/// Which trail a record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trail {
    Decisions,
    Refusals,
    Admin,
}

impl Trail {
    pub const ALL: [Trail; 3] = [Trail::Decisions, Trail::Refusals, Trail::Admin];

    /// The one rule: a request signed by an admin key goes to the admin trail; an allowed
    /// access is a decision; anything else anyone could send at will is a refusal.
    pub(crate) fn of(note: &AuditNote, admin_key: Option<&str>) -> Trail {
        if admin_key.is_some() {
            return Trail::Admin;
        }
        match note.decision() {
            Decision::Allowed if !note.public_read => Trail::Decisions,
            _ => Trail::Refusals,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Trail::Decisions => "decisions",
            Trail::Refusals => "refusals",
            Trail::Admin => "admin",
        }
    }

    /// Its place in per-trail arrays (`ALL`'s order).
    pub(crate) fn index(self) -> usize {
        match self {
            Trail::Decisions => 0,
            Trail::Refusals => 1,
            Trail::Admin => 2,
        }
    }

    /// Whether the trail keeps every record it takes (discard new): what is missing from it
    /// was removed, not evicted.
    pub fn keeps_all(self) -> bool {
        self.discard() == DiscardPolicy::New
    }

    /// The stream of this trail for backend `name`.
    pub fn stream_name(self, name: &str) -> String {
        match self {
            Trail::Decisions => format!("PIGGYBANK_AUDIT_{name}"),
            Trail::Refusals => format!("PIGGYBANK_AUDIT_REFUSALS_{name}"),
            Trail::Admin => format!("PIGGYBANK_AUDIT_ADMIN_{name}"),
        }
    }

    /// The subject of a record with `outcome` from `front_door`, under `root`
    /// (`$PIGGYBANK.AUDIT.<name>`).
    pub fn subject(self, root: &str, outcome: &str, front_door: &str) -> String {
        match self {
            Trail::Decisions => format!("{root}.{outcome}.{front_door}"),
            Trail::Refusals => format!("{root}.{REFUSED_TOKEN}.{outcome}.{front_door}"),
            Trail::Admin => format!("{root}.{ADMIN_TOKEN}.{outcome}.{front_door}"),
        }
    }

    /// The subjects the trail's stream captures.
    pub fn stream_subjects(self, root: &str) -> Vec<String> {
        match self {
            Trail::Decisions => ["allowed", "denied", "error"]
                .iter()
                .map(|o| format!("{root}.{o}.>"))
                .collect(),
            Trail::Refusals => vec![format!("{root}.{REFUSED_TOKEN}.>")],
            Trail::Admin => vec![format!("{root}.{ADMIN_TOKEN}.>")],
        }
    }

    fn discard(self) -> DiscardPolicy {
        match self {
            Trail::Decisions | Trail::Admin => DiscardPolicy::New,
            Trail::Refusals => DiscardPolicy::Old,
        }
    }
}

/// The subject tokens under which refusals and admin records live (never an outcome).
const REFUSED_TOKEN: &str = "refused";
const ADMIN_TOKEN: &str = "admin";

/// The stream a trail must be: its config, as this instance set it.
#[derive(Debug, Clone, PartialEq)]
pub struct TrailStream {
    pub trail: Trail,
    pub name: String,
    pub subjects: Vec<String>,
    pub max_age: Duration,
    pub max_bytes: i64,
    pub replicas: usize,
    /// Whether the stream refuses message deletes and purges through the JetStream API.
    /// `true` for a stream piggybank creates; a stream made by an older version keeps its
    /// own (the server does not let an update change it), and start warns.
    pub deny_removal: bool,
}

impl TrailStream {
    pub fn new(
        trail: Trail,
        backend: &str,
        max_age: Duration,
        max_bytes: i64,
        replicas: usize,
    ) -> Self {
        let root = super::subject_root(backend);
        Self {
            trail,
            name: trail.stream_name(backend),
            subjects: trail.stream_subjects(&root),
            max_age,
            max_bytes,
            replicas,
            deny_removal: true,
        }
    }

    /// The stream's config.
    pub fn config(&self) -> stream::Config {
        stream::Config {
            name: self.name.clone(),
            description: Some(match self.trail {
                Trail::Decisions => {
                    "piggybank audit trail: access decisions (signed, chained; full: refuse)".into()
                }
                Trail::Refusals => {
                    "piggybank audit trail: refusals and open reads (signed, chained, summarised)"
                        .into()
                }
                Trail::Admin => {
                    "piggybank audit trail: requests signed by an admin key (signed, chained; \
                     full: refuse)"
                        .into()
                }
            }),
            subjects: self.subjects.clone(),
            retention: RetentionPolicy::Limits,
            max_age: self.max_age,
            max_bytes: self.max_bytes,
            max_messages: -1,
            max_messages_per_subject: -1,
            max_message_size: -1,
            num_replicas: self.replicas,
            discard: self.trail.discard(),
            storage: StorageType::File,
            deny_delete: self.deny_removal,
            deny_purge: self.deny_removal,
            ..Default::default()
        }
    }

    /// What is wrong with `actual`, a stream found under this trail's name: empty when it
    /// is the stream this instance configured. Each problem is one line for logs, `status`
    /// and `--verify`.
    pub fn problems(&self, actual: &stream::Config) -> Vec<String> {
        let mut problems = Vec::new();
        let mut wrong = |what: &str, expected: String, found: String| {
            if expected != found {
                problems.push(format!(
                    "stream {}: {what} is {found}, not {expected}",
                    self.name
                ));
            }
        };
        let expected = self.config();
        let sorted = |s: &[String]| {
            let mut s = s.to_vec();
            s.sort();
            s.join(",")
        };
        wrong(
            "subjects",
            sorted(&expected.subjects),
            sorted(&actual.subjects),
        );
        wrong(
            "mirror",
            "none".into(),
            actual
                .mirror
                .as_ref()
                .map_or("none".into(), |m| format!("{:?}", m.name)),
        );
        wrong(
            "sources",
            "none".into(),
            match actual.sources.as_deref() {
                None | Some([]) => "none".into(),
                Some(sources) => sources
                    .iter()
                    .map(|s| s.name.clone())
                    .collect::<Vec<_>>()
                    .join(","),
            },
        );
        wrong(
            "discard",
            format!("{:?}", expected.discard),
            format!("{:?}", actual.discard),
        );
        wrong(
            "retention",
            format!("{:?}", expected.retention),
            format!("{:?}", actual.retention),
        );
        wrong(
            "max_age",
            format!("{:?}", expected.max_age),
            format!("{:?}", actual.max_age),
        );
        wrong(
            "max_bytes",
            expected.max_bytes.to_string(),
            actual.max_bytes.to_string(),
        );
        wrong("max_msgs", "-1".into(), actual.max_messages.to_string());
        wrong(
            "max_msgs_per_subject",
            "-1".into(),
            actual.max_messages_per_subject.to_string(),
        );
        wrong(
            "max_msg_size",
            "-1".into(),
            actual.max_message_size.to_string(),
        );
        wrong(
            "deny_delete",
            self.deny_removal.to_string(),
            actual.deny_delete.to_string(),
        );
        wrong(
            "deny_purge",
            self.deny_removal.to_string(),
            actual.deny_purge.to_string(),
        );
        // A stream that acknowledges nothing: every record waits for an ack that never comes.
        wrong("no_ack", "false".into(), actual.no_ack.to_string());
        // A sealed stream can be neither written nor aged out.
        wrong("sealed", "false".into(), actual.sealed.to_string());
        wrong(
            "republish",
            "none".into(),
            actual.republish.as_ref().map_or("none".into(), |r| {
                format!("{} -> {}", r.source, r.destination)
            }),
        );
        wrong(
            "subject_transform",
            "none".into(),
            actual
                .subject_transform
                .as_ref()
                .map_or("none".into(), |t| {
                    format!("{} -> {}", t.source, t.destination)
                }),
        );
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn spec() -> TrailStream {
        TrailStream::new(
            Trail::Decisions,
            "nats-kv",
            Duration::from_secs(60),
            1 << 20,
            1,
        )
    }

    #[test]
    fn the_stream_piggybank_configures_has_no_problem() {
        let spec = spec();
        assert_eq!(spec.problems(&spec.config()), Vec::<String>::new());
    }

    #[test]
    fn a_changed_limit_a_source_or_other_subjects_are_each_a_problem() {
        let spec = spec();
        let mut shrunk = spec.config();
        shrunk.max_messages = 1;
        assert_eq!(
            spec.problems(&shrunk).len(),
            1,
            "{:?}",
            spec.problems(&shrunk)
        );
        for changed in [
            stream::Config {
                no_ack: true,
                ..spec.config()
            },
            stream::Config {
                sealed: true,
                ..spec.config()
            },
        ] {
            assert_eq!(spec.problems(&changed).len(), 1, "{changed:?}");
        }
        let mut sourced = spec.config();
        sourced.sources = Some(vec![stream::Source {
            name: "FORGED".into(),
            ..Default::default()
        }]);
        assert!(spec.problems(&sourced)[0].contains("FORGED"));
        let mut wide = spec.config();
        wide.subjects = vec!["$PIGGYBANK.AUDIT.nats-kv.>".into()];
        assert_eq!(spec.problems(&wide).len(), 1);
        let mut evicting = spec.config();
        evicting.discard = DiscardPolicy::Old;
        assert_eq!(spec.problems(&evicting).len(), 1);
    }

    #[test]
    fn signed_requests_go_to_the_admin_trail_and_allowed_accesses_are_decisions() {
        let allowed = AuditNote::operation("get").allowed();
        let refused =
            AuditNote::operation("get").decided(Decision::refused(ErrorKind::Denied, "not_mapped"));
        let public = AuditNote::operation("server_xkey").allowed().public_read();
        assert_eq!(Trail::of(&allowed, None), Trail::Decisions);
        assert_eq!(Trail::of(&refused, None), Trail::Refusals);
        assert_eq!(Trail::of(&public, None), Trail::Refusals);
        assert_eq!(Trail::of(&refused, Some("U...")), Trail::Admin);
        assert_eq!(Trail::of(&allowed, Some("U...")), Trail::Admin);
    }

    #[test]
    fn each_trails_subjects_are_captured_by_its_stream_alone() {
        let root = "$PIGGYBANK.AUDIT.nats-kv";
        let captures = |trail: Trail, subject: &str| {
            trail
                .stream_subjects(root)
                .iter()
                .any(|s| subject.starts_with(s.trim_end_matches('>')))
        };
        for trail in Trail::ALL {
            for outcome in ["allowed", "denied", "error"] {
                let subject = trail.subject(root, outcome, "protocol");
                for other in Trail::ALL {
                    assert_eq!(captures(other, &subject), other == trail, "{subject}");
                }
            }
        }
    }
}
