//! Where piggybank may publish a reply: the reply subject of a request is the requester's
//! to choose, and NATS never authorizes it, so it is the attacker's.
//!
//! A responder publishes its reply with its own permissions, and piggybank's connection may
//! write its own KV buckets (`$KV.<bucket>.<key>` is just a subject) and call the JetStream
//! API (`$JS.API.>`). Replying to whatever subject a request names would let anyone who can
//! send a request write piggybank's buckets, or send requests to piggybank itself, with
//! piggybank's rights. So a reply goes only to a subject inside a trusted reply namespace
//! (the inbox prefix `_INBOX.`, and those given with `--reply-prefixes`), never to one
//! that starts with `$`, and never to one inside a subject tree piggybank serves.
//!
//! This holds by construction: the only way to publish a reply is [`ReplyTo`], and the
//! only way to make a `ReplyTo` is [`ReplyPolicy::admit`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::Subject;

/// The default inbox prefix of NATS clients.
pub const DEFAULT_REPLY_PREFIX: &str = "_INBOX.";

/// The inbox prefix of piggybank's own server connections. Its subscriptions (KV mirror
/// deliveries, the key record watch, JetStream replies) live under it, so it is one of the
/// trees piggybank serves: no reply is ever published under it, and a configured reply
/// prefix may not overlap it. Under the shared `_INBOX.`, an attacker who saw a mirror's
/// heartbeat could have piggybank reply into its own consumer.
pub const SERVER_INBOX_PREFIX: &str = "_PIGGYBANK_INBOX";

/// Refused reply subjects are logged at most this often (with the count since the last log).
const WARN_EVERY: Duration = Duration::from_secs(10);

/// A reply subject that [`ReplyPolicy::admit`] accepted. It cannot be made any other way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyTo(Subject);

impl ReplyTo {
    pub fn subject(&self) -> &Subject {
        &self.0
    }

    pub fn into_subject(self) -> Subject {
        self.0
    }
}

/// Why a reply subject was refused (for the log line; the requester gets nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("no reply subject")]
    Missing,
    #[error("a system subject ($...)")]
    System,
    #[error("inside a subject tree piggybank serves")]
    Served,
    #[error("outside the trusted reply prefixes")]
    Untrusted,
    #[error("not a valid subject (empty token or wildcard)")]
    Malformed,
}

/// The trusted reply namespaces and the subject trees piggybank serves.
#[derive(Debug)]
pub struct ReplyPolicy {
    /// Each ends with `.`: a reply subject must be `<prefix><at least one token>`.
    prefixes: Vec<String>,
    /// Subject trees served (`wasmcloud.secrets.v1alpha1.nats-kv`, `piggybank`, ...).
    served: Vec<String>,
    refused: AtomicU64,
    last_warning: Mutex<Option<(Instant, u64)>>,
}

impl ReplyPolicy {
    /// `prefixes`: trusted reply prefixes besides `_INBOX.`, which is always trusted; a
    /// prefix given without a trailing `.` gets one (`_INBOX_billing` means
    /// `_INBOX_billing.>`).
    /// `served`: every subject prefix piggybank subscribes under.
    pub fn new(prefixes: &[String], served: &[String]) -> Result<Self, String> {
        let mut trusted = vec![DEFAULT_REPLY_PREFIX.to_string()];
        for p in prefixes.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
            let p = if p.ends_with('.') {
                p.to_string()
            } else {
                format!("{p}.")
            };
            if p.starts_with('$') || !valid_subject(&p[..p.len() - 1]) {
                return Err(format!(
                    "invalid reply prefix {p:?}: a subject prefix without wildcards, not $..."
                ));
            }
            trusted.push(p);
        }
        let served: Vec<String> = served
            .iter()
            .map(|s| s.trim_end_matches(['.', '>', '*']).to_string())
            .filter(|s| !s.is_empty())
            .chain([SERVER_INBOX_PREFIX.to_string()])
            .collect();
        for p in &trusted {
            let tree = &p[..p.len() - 1];
            if served.iter().any(|s| within(tree, s) || within(s, tree)) {
                return Err(format!(
                    "reply prefix {p:?} overlaps a subject tree piggybank serves"
                ));
            }
        }
        Ok(Self {
            prefixes: trusted,
            served,
            refused: AtomicU64::new(0),
            last_warning: Mutex::new(None),
        })
    }

    /// Check a request's reply subject. Pure: no logging or counting (see [`Self::admit`]).
    pub fn check(&self, reply: Option<&Subject>) -> Result<ReplyTo, Refused> {
        let reply = reply.ok_or(Refused::Missing)?;
        let s = reply.as_str();
        if s.starts_with('$') {
            return Err(Refused::System);
        }
        if !valid_subject(s) {
            return Err(Refused::Malformed);
        }
        if self.served.iter().any(|tree| within(s, tree)) {
            return Err(Refused::Served);
        }
        if !self
            .prefixes
            .iter()
            .any(|p| s.len() > p.len() && s.starts_with(p.as_str()))
        {
            return Err(Refused::Untrusted);
        }
        Ok(ReplyTo(reply.clone()))
    }

    /// [`Self::check`], counting refusals and logging them at warn, at most every 10 s. A
    /// request without a reply subject is not counted: it asks for no reply.
    pub fn admit(&self, operation: &str, reply: Option<&Subject>) -> Option<ReplyTo> {
        match self.check(reply) {
            Ok(to) => Some(to),
            Err(Refused::Missing) => None,
            Err(why) => {
                let total = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
                let mut last = self.last_warning.lock().unwrap_or_else(|p| p.into_inner());
                let due = last.is_none_or(|(at, _)| at.elapsed() >= WARN_EVERY);
                if due {
                    let since = total - last.map_or(0, |(_, n)| n);
                    *last = Some((Instant::now(), total));
                    // The subject is the attacker's text: log its length, not its bytes.
                    tracing::warn!(
                        operation,
                        reason = %why,
                        refused_since_last_warning = since,
                        refused_total = total,
                        "request with an untrusted reply subject: not answered, nothing done"
                    );
                }
                None
            }
        }
    }

    /// Requests refused for their reply subject since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// `subject` is `tree` or inside it (token boundary).
fn within(subject: &str, tree: &str) -> bool {
    subject == tree
        || subject
            .strip_prefix(tree)
            .is_some_and(|rest| rest.starts_with('.'))
}

/// A literal subject: non-empty tokens, no wildcards, no whitespace.
fn valid_subject(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|t| !t.is_empty() && t != "*" && t != ">" && !t.chars().any(|c| c.is_whitespace()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(prefixes: &[&str]) -> ReplyPolicy {
        let p: Vec<String> = prefixes.iter().map(|s| s.to_string()).collect();
        ReplyPolicy::new(
            &p,
            &[
                "wasmcloud.secrets.v1alpha1.nats-kv".into(),
                "piggybank".into(),
            ],
        )
        .unwrap()
    }

    fn check(p: &ReplyPolicy, s: &str) -> Result<(), Refused> {
        p.check(Some(&Subject::from(s))).map(|_| ())
    }

    #[test]
    fn inbox_replies_are_admitted() {
        let p = policy(&[]);
        assert_eq!(check(&p, "_INBOX.abc.def"), Ok(()));
        assert_eq!(check(&p, "_INBOX.x"), Ok(()));
    }

    #[test]
    fn system_served_and_foreign_subjects_are_refused() {
        let p = policy(&[]);
        for (s, why) in [
            ("$KV.SECRETS_nats-kv_state.MABC", Refused::System),
            ("$KV.WASMCLOUD_SECRETS.x", Refused::System),
            ("$JS.API.STREAM.PURGE.KV_WASMCLOUD_SECRETS", Refused::System),
            ("$SYS.REQ.SERVER.PING", Refused::System),
            (
                "wasmcloud.secrets.v1alpha1.nats-kv.add_mapping.MABC",
                Refused::Served,
            ),
            ("piggybank.database.lock", Refused::Served),
            ("piggybank", Refused::Served),
            ("_PIGGYBANK_INBOX.mirror.1", Refused::Served),
            ("orders.created", Refused::Untrusted),
            ("_INBOX", Refused::Untrusted),
            ("_INBOX.", Refused::Malformed),
            ("_INBOXES.x", Refused::Untrusted),
            ("_INBOX..x", Refused::Malformed),
            ("_INBOX.*", Refused::Malformed),
            ("_INBOX.>", Refused::Malformed),
            ("_INBOX.a b", Refused::Malformed),
        ] {
            assert_eq!(check(&p, s), Err(why), "{s}");
        }
        assert_eq!(p.check(None), Err(Refused::Missing));
        // A sibling of a served tree is not inside it.
        let p = policy(&["piggybanks"]);
        assert_eq!(check(&p, "piggybanks.x"), Ok(()));
    }

    #[test]
    fn configured_prefixes_add_to_the_default() {
        let p = policy(&["_INBOX_billing", "_R_."]);
        assert_eq!(check(&p, "_INBOX_billing.1"), Ok(()));
        assert_eq!(check(&p, "_R_.2"), Ok(()));
        assert_eq!(check(&p, "_INBOX.3"), Ok(()));
        assert_eq!(check(&p, "_INBOX_shipping.4"), Err(Refused::Untrusted));
    }

    #[test]
    fn unsafe_prefixes_are_refused_at_start() {
        let served = ["piggybank".to_string()];
        for bad in ["$KV", "piggybank", "piggybank.app", "a.*", "a.>", "a..b"] {
            assert!(
                ReplyPolicy::new(&[bad.to_string()], &served).is_err(),
                "{bad}"
            );
        }
        assert!(ReplyPolicy::new(&["_PIGGYBANK_INBOX".into()], &served).is_err());
        // A reply prefix that would contain a served tree is refused too.
        assert!(ReplyPolicy::new(&["pb".into()], &["pb.x".into()]).is_err());
    }

    #[test]
    fn refusals_are_counted_but_a_missing_reply_is_not() {
        let p = policy(&[]);
        assert!(p.admit("get", None).is_none());
        assert!(p.admit("get", Some(&Subject::from("$KV.B.k"))).is_none());
        assert!(p.admit("get", Some(&Subject::from("x.y"))).is_none());
        assert!(p.admit("get", Some(&Subject::from("_INBOX.ok"))).is_some());
        assert_eq!(p.refused(), 2);
    }
}
