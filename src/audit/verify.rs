//! `piggybank audit --verify`'s judgement, pure: given what one trail's stream holds (in
//! stream order), the instance keys to trust and the retention, every finding.
//!
//! What is found, per instance chain ([`super::chain`]):
//! - a **forged** record: its signature is not its instance key's; or it is unsigned and
//!   no valid signature follows it in its chain before a break (each message's last record
//!   signs every record back to the previous signed one, [`super::chain`]); or it is on
//!   another trail's stream or subject than the one it names;
//! - an **unknown key**: a chain whose key is not among the trusted instance keys;
//! - a **gap**: sequence numbers missing between two records (removed records; also what a
//!   record the instance failed to write leaves, which its `status` counts as dropped);
//! - a **reorder** or a repeated sequence number, and a **broken link** (a record whose
//!   `prev` is not the digest of the record before it);
//! - a **missing head** on the decisions trail: a chain whose first record there is not
//!   its first, while the one before it is younger than the retention (`max_age`): it was
//!   removed, not expired. (The refusal trail evicts its oldest records by design.)
//!
//! What the stream's config is worth is judged by [`super::TrailStream::problems`]; the
//! caller adds those findings.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use super::chain::{check_signature, digest};
use super::{AuditRecord, Trail};

/// Clock skew allowed between the instance that wrote a record and the verifier.
pub const CLOCK_SKEW_MS: u64 = 10_000;

/// One message of a trail's stream.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub stream_seq: u64,
    pub subject: String,
    pub payload: bytes::Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The stream is not piggybank's (from [`super::TrailStream::problems`]).
    Stream(String),
    /// A line that is not a record.
    Unreadable {
        trail: Trail,
        stream_seq: u64,
    },
    Forged {
        trail: Trail,
        stream_seq: u64,
        why: String,
    },
    UnknownKey {
        trail: Trail,
        key: String,
        records: usize,
    },
    Gap {
        trail: Trail,
        key: String,
        missing_from: u64,
        missing_to: u64,
    },
    Reordered {
        trail: Trail,
        key: String,
        seq: u64,
        after: u64,
    },
    BrokenLink {
        trail: Trail,
        key: String,
        seq: u64,
    },
    MissingHead {
        trail: Trail,
        key: String,
        first_seq: u64,
        prev_time_ms: u64,
    },
    /// A running instance's chain ends before the last record it says was acknowledged.
    MissingTail {
        trail: Trail,
        key: String,
        last_seen: u64,
        acknowledged: u64,
    },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Stream(problem) => write!(f, "foreign stream: {problem}"),
            Finding::Unreadable { trail, stream_seq } => write!(
                f,
                "{}: message {stream_seq} holds a line that is not a record",
                trail.as_str()
            ),
            Finding::Forged {
                trail,
                stream_seq,
                why,
            } => write!(
                f,
                "{}: forged record in message {stream_seq}: {why}",
                trail.as_str()
            ),
            Finding::UnknownKey {
                trail,
                key,
                records,
            } => write!(
                f,
                "{}: {records} record(s) signed by {key}, which is not a known instance key",
                trail.as_str()
            ),
            Finding::Gap {
                trail,
                key,
                missing_from,
                missing_to,
            } => write!(
                f,
                "{}: gap in {key}'s chain: records {missing_from} to {missing_to} are missing",
                trail.as_str()
            ),
            Finding::Reordered {
                trail,
                key,
                seq,
                after,
            } => write!(
                f,
                "{}: {key}'s record {seq} comes after its record {after} (reordered or repeated)",
                trail.as_str()
            ),
            Finding::MissingTail {
                trail,
                key,
                last_seen,
                acknowledged,
            } => write!(
                f,
                "{}: {key}'s records {} to {acknowledged} are missing: the instance says they \
                 were acknowledged",
                trail.as_str(),
                last_seen + 1
            ),
            Finding::BrokenLink { trail, key, seq } => write!(
                f,
                "{}: {key}'s record {seq} does not link to the record before it",
                trail.as_str()
            ),
            Finding::MissingHead {
                trail,
                key,
                first_seq,
                prev_time_ms,
            } => write!(
                f,
                "{}: {key}'s records before {first_seq} are missing, and the last of them \
                 (written at {prev_time_ms} ms) is younger than the retention: removed, \
                 not expired",
                trail.as_str()
            ),
        }
    }
}

/// What one trail held, judged.
#[derive(Debug, Default)]
pub struct Verified {
    pub records: usize,
    pub chains: usize,
    pub findings: Vec<Finding>,
}

/// What a trail is checked against.
pub struct Expect<'a> {
    pub trail: Trail,
    /// `$PIGGYBANK.AUDIT.<name>`.
    pub root: &'a str,
    /// The instance keys to trust.
    pub known_keys: &'a HashSet<String>,
    pub now_ms: u64,
    /// The trail's retention (its stream's `max_age`); `None`: unlimited.
    pub max_age_ms: Option<u64>,
    /// Running instances' keys, and the last sequence each says the stream acknowledged
    /// (read before the stream).
    pub acknowledged: &'a BTreeMap<String, u64>,
}

/// Where a chain stands while the trail is read.
struct ChainState {
    seq: u64,
    digest: Option<String>,
    /// Unsigned records since its last signed one (their messages' stream sequences): a
    /// valid signature further on, with no break, covers them.
    unsigned: Vec<u64>,
}

impl ChainState {
    /// The chain breaks here: what was waiting for a signature never gets one.
    fn break_off(&mut self, trail: Trail, findings: &mut Vec<Finding>) {
        for stream_seq in self.unsigned.drain(..) {
            findings.push(Finding::Forged {
                trail,
                stream_seq,
                why: "unsigned, and its chain breaks before a signed record".into(),
            });
        }
    }
}

/// Judge `messages`, one trail's stream in stream order.
pub fn verify(expect: &Expect<'_>, messages: &[StoredMessage]) -> Verified {
    let trail = expect.trail;
    let mut verified = Verified::default();
    let mut chains: BTreeMap<String, ChainState> = BTreeMap::new();
    let mut unknown: BTreeMap<String, usize> = BTreeMap::new();
    for message in messages {
        for line in message
            .payload
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
        {
            verified.records += 1;
            let Ok(record) = serde_json::from_slice::<AuditRecord>(line) else {
                verified.findings.push(Finding::Unreadable {
                    trail,
                    stream_seq: message.stream_seq,
                });
                continue;
            };
            let forged = |why: String| Finding::Forged {
                trail,
                stream_seq: message.stream_seq,
                why,
            };
            let signed = record.sig.is_some();
            if signed {
                if let Err(bad) = check_signature(&record) {
                    verified.findings.push(forged(bad.as_str().into()));
                    continue;
                }
            }
            let expected_subject =
                trail.subject(expect.root, record.outcome.as_str(), &record.front_door);
            if record.trail != Some(trail) || message.subject != expected_subject {
                verified.findings.push(forged(format!(
                    "a {} record on subject {}, where this trail's would be on {expected_subject}",
                    record.trail.map_or("trail-less", Trail::as_str),
                    message.subject
                )));
                continue;
            }
            let (Some(key), Some(seq)) = (record.instance_key.clone(), record.seq) else {
                verified.findings.push(forged("no place in a chain".into()));
                continue;
            };
            if !expect.known_keys.contains(&key) {
                *unknown.entry(key).or_default() += 1;
                continue;
            }
            let Ok(this_digest) = digest(&record) else {
                continue;
            };
            let state = match chains.get_mut(&key) {
                None => {
                    if seq != 1 {
                        check_head(expect, &record, &key, seq, &mut verified.findings);
                    }
                    chains.entry(key).or_insert(ChainState {
                        seq,
                        digest: Some(this_digest),
                        unsigned: Vec::new(),
                    })
                }
                Some(state) => {
                    if seq <= state.seq {
                        verified.findings.push(Finding::Reordered {
                            trail,
                            key: key.clone(),
                            seq,
                            after: state.seq,
                        });
                        state.break_off(trail, &mut verified.findings);
                        if !signed {
                            verified
                                .findings
                                .push(forged("unsigned, and out of its chain's order".into()));
                        }
                        continue;
                    }
                    if seq > state.seq + 1 {
                        verified.findings.push(Finding::Gap {
                            trail,
                            key: key.clone(),
                            missing_from: state.seq + 1,
                            missing_to: seq - 1,
                        });
                        state.break_off(trail, &mut verified.findings);
                    } else if record.prev != state.digest {
                        verified.findings.push(Finding::BrokenLink {
                            trail,
                            key: key.clone(),
                            seq,
                        });
                        state.break_off(trail, &mut verified.findings);
                    }
                    state.seq = seq;
                    state.digest = Some(this_digest);
                    state
                }
            };
            match signed {
                // Valid (checked above): it covers every unsigned record before it.
                true => state.unsigned.clear(),
                false => state.unsigned.push(message.stream_seq),
            }
        }
    }
    for state in chains.values_mut() {
        for stream_seq in state.unsigned.drain(..) {
            verified.findings.push(Finding::Forged {
                trail,
                stream_seq,
                why: "unsigned, and no signed record follows it".into(),
            });
        }
    }
    for (key, acknowledged) in expect.acknowledged {
        let last_seen = chains.get(key).map_or(0, |c| c.seq);
        // The refusal trail evicts its oldest records: only a chain seen at all is judged.
        let judged = trail.keeps_all() || chains.contains_key(key);
        if judged && last_seen < *acknowledged {
            verified.findings.push(Finding::MissingTail {
                trail,
                key: key.clone(),
                last_seen,
                acknowledged: *acknowledged,
            });
        }
    }
    verified.chains = chains.len();
    verified.findings.extend(
        unknown
            .into_iter()
            .map(|(key, records)| Finding::UnknownKey {
                trail,
                key,
                records,
            }),
    );
    verified
}

/// A chain whose first record on the trail is not its first: on the decisions trail, its
/// predecessor must have expired.
fn check_head(
    expect: &Expect<'_>,
    record: &AuditRecord,
    key: &str,
    first_seq: u64,
    findings: &mut Vec<Finding>,
) {
    if !expect.trail.keeps_all() {
        return;
    }
    let (Some(prev_time_ms), Some(max_age_ms)) = (record.prev_time_ms, expect.max_age_ms) else {
        return;
    };
    let expires = prev_time_ms
        .saturating_add(max_age_ms)
        .saturating_sub(CLOCK_SKEW_MS);
    if expect.now_ms < expires {
        findings.push(Finding::MissingHead {
            trail: expect.trail,
            key: key.to_string(),
            first_seq,
            prev_time_ms,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::{Chain, InstanceKey};
    use crate::audit::Outcome;

    const ROOT: &str = "$PIGGYBANK.AUDIT.nats-kv";

    fn sealed(chain: &mut Chain, key: &InstanceKey, op: &str, outcome: Outcome) -> StoredMessage {
        let record = AuditRecord {
            time_ms: 1_000,
            operation: op.into(),
            front_door: "protocol".into(),
            outcome,
            ..AuditRecord::default()
        };
        let line = chain.seal(record, key).unwrap();
        StoredMessage {
            stream_seq: 0,
            subject: Trail::Decisions.subject(ROOT, outcome.as_str(), "protocol"),
            payload: line.into(),
        }
    }

    fn trail(n: usize) -> (InstanceKey, Vec<StoredMessage>) {
        let key = InstanceKey::generate().unwrap();
        let mut chain = Chain::new(Trail::Decisions);
        let messages = (0..n)
            .map(|i| {
                let outcome = if i % 2 == 0 {
                    Outcome::Allowed
                } else {
                    Outcome::Error
                };
                let mut m = sealed(&mut chain, &key, "get", outcome);
                m.stream_seq = i as u64 + 1;
                m
            })
            .collect();
        (key, messages)
    }

    fn judge(key: &InstanceKey, messages: &[StoredMessage]) -> Vec<Finding> {
        let known = HashSet::from([key.public().to_string()]);
        let expect = Expect {
            trail: Trail::Decisions,
            root: ROOT,
            known_keys: &known,
            now_ms: 2_000,
            max_age_ms: Some(60_000),
            acknowledged: &BTreeMap::new(),
        };
        verify(&expect, messages).findings
    }

    #[test]
    fn an_untouched_chain_has_no_finding() {
        let (key, messages) = trail(6);
        assert_eq!(judge(&key, &messages), vec![]);
    }

    /// A message as the writer makes it: every record linked, only the last signed.
    fn message_of(
        chain: &mut Chain,
        key: &InstanceKey,
        ops: &[&str],
        stream_seq: u64,
    ) -> StoredMessage {
        let mut payload = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let record = AuditRecord {
                time_ms: 1_000,
                operation: (*op).into(),
                front_door: "protocol".into(),
                outcome: Outcome::Allowed,
                ..AuditRecord::default()
            };
            let linked = chain.link(record, key).unwrap();
            let line = match i + 1 == ops.len() {
                true => crate::audit::chain::sign(linked, key).unwrap(),
                false => serde_json::to_vec(&linked).unwrap(),
            };
            payload.extend_from_slice(&line);
            payload.push(b'\n');
        }
        StoredMessage {
            stream_seq,
            subject: Trail::Decisions.subject(ROOT, "allowed", "protocol"),
            payload: payload.into(),
        }
    }

    #[test]
    fn one_signature_per_message_covers_every_record_before_it() {
        let key = InstanceKey::generate().unwrap();
        let mut chain = Chain::new(Trail::Decisions);
        let messages = vec![
            message_of(&mut chain, &key, &["get", "get", "get"], 1),
            message_of(&mut chain, &key, &["add_mapping", "get"], 2),
        ];
        assert_eq!(judge(&key, &messages), vec![]);

        // An unsigned record that links correctly, appended after the last signed one.
        let mut tail = messages.clone();
        tail.push(message_of(&mut chain.clone(), &key, &["get"], 3));
        let mut payload = tail[2].payload.to_vec();
        let mut record: AuditRecord = serde_json::from_slice(payload.trim_ascii_end()).unwrap();
        record.sig = None;
        payload = serde_json::to_vec(&record).unwrap();
        tail[2].payload = payload.into();
        assert!(matches!(
            judge(&key, &tail)[..],
            [Finding::Forged { stream_seq: 3, .. }]
        ));

        // A record of a message changed: the signature that covers it no longer holds, so
        // the record after it does not link, and it is left unsigned.
        let mut changed = messages.clone();
        let text = String::from_utf8(changed[0].payload.to_vec()).unwrap();
        changed[0].payload = text
            .replacen("\"get\"", "\"put_secret\"", 1)
            .into_bytes()
            .into();
        let findings = judge(&key, &changed);
        assert!(
            findings
                .iter()
                .any(|f| matches!(f, Finding::BrokenLink { seq: 2, .. })),
            "{findings:?}"
        );
        assert!(
            findings
                .iter()
                .any(|f| matches!(f, Finding::Forged { stream_seq: 1, .. })),
            "{findings:?}"
        );
    }

    #[test]
    fn a_removed_record_is_a_gap_and_a_removed_head_within_retention_is_found() {
        let (key, mut messages) = trail(6);
        messages.remove(3);
        assert!(matches!(
            judge(&key, &messages)[..],
            [Finding::Gap {
                missing_from: 4,
                missing_to: 4,
                ..
            }]
        ));
        let (key, mut messages) = trail(6);
        messages.drain(..2);
        assert!(matches!(
            judge(&key, &messages)[..],
            [Finding::MissingHead { first_seq: 3, .. }]
        ));
    }

    #[test]
    fn records_removed_from_the_end_are_found_against_what_the_instance_acknowledged() {
        let (key, mut messages) = trail(6);
        messages.truncate(4);
        let known = HashSet::from([key.public().to_string()]);
        let acknowledged = BTreeMap::from([(key.public().to_string(), 6)]);
        let expect = Expect {
            trail: Trail::Decisions,
            root: ROOT,
            known_keys: &known,
            now_ms: 2_000,
            max_age_ms: Some(60_000),
            acknowledged: &acknowledged,
        };
        assert!(matches!(
            verify(&expect, &messages).findings[..],
            [Finding::MissingTail {
                last_seen: 4,
                acknowledged: 6,
                ..
            }]
        ));
        // Positive control: the whole chain passes.
        let (key, messages) = trail(6);
        let known = HashSet::from([key.public().to_string()]);
        let acknowledged = BTreeMap::from([(key.public().to_string(), 6)]);
        let expect = Expect {
            acknowledged: &acknowledged,
            known_keys: &known,
            ..expect
        };
        assert_eq!(verify(&expect, &messages).findings, vec![]);
    }

    #[test]
    fn reordered_forged_and_unknown_records_are_found() {
        let (key, mut messages) = trail(4);
        messages.swap(1, 2);
        assert!(judge(&key, &messages)
            .iter()
            .any(|f| matches!(f, Finding::Reordered { .. })));
        // A record of another key, valid in its own right.
        let (_, stranger) = trail(1);
        assert!(matches!(
            judge(&key, &stranger)[..],
            [Finding::UnknownKey { records: 1, .. }]
        ));
        // A line written by hand, claiming the known key.
        let (key, mut messages) = trail(2);
        let mut forged: AuditRecord = serde_json::from_slice(&messages[1].payload).unwrap();
        forged.operation = "add_mapping".into();
        messages[1].payload = serde_json::to_vec(&forged).unwrap().into();
        assert!(matches!(
            judge(&key, &messages)[..],
            [Finding::Forged { .. }]
        ));
        // A genuine record moved to another subject.
        let (key, mut messages) = trail(2);
        messages[0].subject = format!("{ROOT}.denied.protocol");
        assert!(matches!(judge(&key, &messages)[0], Finding::Forged { .. }));
    }
}
