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
//! A Piggy Bank API request is also answered only in a namespace its application may read
//! ([`Requester::Application`]): the shared `_INBOX.`, or the application's own prefix
//! `_INBOX_<application>.` when that is a trusted prefix. A trusted prefix of that form
//! belongs to that application: no other application's request is answered there, so one
//! application cannot make piggybank deliver bytes it chose (a value it stored) into
//! another's inbox, where NATS permissions forbid it to publish. Nor is any other trusted
//! prefix answered for an application. The shared `_INBOX.` stays open to every application:
//! whoever can read it reads every reply there, so an application that keeps its replies
//! from the others has a prefix of its own anyway. The other front doors (the protocol, the
//! database operations, discovery, wRPC) answer in every trusted namespace: their callers are
//! hosts and operators, and an application's NATS permissions keep it off their subjects.
//!
//! An operators' inbox is trusted like any other prefix, and named for what it is: a prefix
//! under `_PIGGYBANK_ADMIN_INBOX.` (the admin role's in the generated NATS layout). Once one
//! is trusted, an admin operation's reply ([`Requester::Operator`]) goes only there: a list
//! of names, a grant, or a database key from a raw `initialize` never lands in the shared
//! `_INBOX.`, which every host may read. A request to a read-only application, which any
//! service may send ([`Requester::AnyApplication`]), is answered in `_INBOX.` and in the
//! applications' own inboxes only, never in the operators'.
//!
//! An operator may also bind any prefix to an application ([`AppInbox`], `--app-inbox
//! foo=foo.secrets`): Piggy Bank's own layout gives each application an inbox such as
//! `foo.secrets.>`. A bound prefix is trusted, and belongs to that application exactly as
//! `_INBOX_<application>.` does; two applications' inboxes may not overlap.
//!
//! A request refused for its reply subject gets no answer: the serve loop counts it
//! (`refused_reply` in `status` and the metric `piggybank.requests.shed`) and logs it at warn,
//! at most every 10 s.
//!
//! This holds by construction: the only way to publish a reply is [`ReplyTo`], and the
//! only way to make a `ReplyTo` is [`ReplyPolicy::admit`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::Subject;

/// The default inbox prefix of NATS clients.
pub const DEFAULT_REPLY_PREFIX: &str = "_INBOX.";

/// A trusted prefix `_INBOX_<application>` belongs to that Piggy Bank API application.
pub const APPLICATION_REPLY_PREFIX: &str = "_INBOX_";

/// A trusted prefix under `_PIGGYBANK_ADMIN_INBOX.` belongs to the operators: admin replies
/// go only there once one is trusted ([`Requester::Operator`]).
pub const OPERATOR_REPLY_PREFIX: &str = "_PIGGYBANK_ADMIN_INBOX.";

/// The inbox prefix of piggybank's own server connections. Its subscriptions (KV mirror
/// deliveries, the key record watch, JetStream replies) live under it, so it is one of the
/// trees piggybank serves: no reply is ever published under it, and a configured reply
/// prefix may not overlap it. Under the shared `_INBOX.`, an attacker who saw a mirror's
/// heartbeat could have piggybank reply into its own consumer.
pub const SERVER_INBOX_PREFIX: &str = "_PIGGYBANK_INBOX";

/// Refused reply subjects are logged at most this often (with the count since the last log).
const WARN_EVERY: Duration = Duration::from_secs(10);

/// `--app-inbox APP=PREFIX`: replies to application `APP`'s Piggy Bank API requests may go
/// under `PREFIX.`, and no other application's may.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppInbox {
    pub application: String,
    /// Ends with `.`.
    pub prefix: String,
}

impl std::str::FromStr for AppInbox {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (application, prefix) = s
            .trim()
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected APP=PREFIX, e.g. foo=foo.secrets"))?;
        crate::store::ApplicationName::parse(application).map_err(|e| e.to_string())?;
        let prefix = prefix.trim_end_matches('.');
        if prefix.starts_with('$') || !valid_subject(prefix) {
            return Err(format!(
                "{s:?}: the inbox must be a subject prefix without wildcards, not $..."
            ));
        }
        Ok(Self {
            application: application.to_string(),
            prefix: format!("{prefix}."),
        })
    }
}

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
    #[error(
        "a trusted prefix that is not the requester's (another application's, or the operators')"
    )]
    NotTheRequesters,
    #[error("not a valid subject (empty token or wildcard)")]
    Malformed,
}

/// Who sent a request: which of the trusted namespaces its reply may go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requester {
    /// A host, a component's host, a monitor (the protocol's `get` and `server_xkey`,
    /// `status`, discovery, wRPC): every trusted namespace.
    Any,
    /// An operator: an admin operation of the protocol or the database (what
    /// [`crate::serve::Class::admin`] classifies). When an operators' inbox is trusted
    /// (`_PIGGYBANK_ADMIN_INBOX.<name>`, the admin role's in the generated NATS layout), only
    /// there: an admin reply (a list of names, a database key) never lands in the shared
    /// `_INBOX.`, which every host may read. Otherwise every trusted namespace.
    Operator,
    /// A Piggy Bank API request of this application (the token after the API's prefix, as
    /// sent): only `_INBOX.` and, if trusted, `_INBOX_<application>.`.
    Application(String),
    /// A request to a read-only application, which any service may send: what it returns
    /// only admins wrote. `_INBOX.` and the applications' own inboxes, never another
    /// trusted prefix (the operators' inbox above all).
    AnyApplication,
}

/// One trusted reply namespace.
#[derive(Debug)]
struct Namespace {
    /// Ends with `.`: a reply subject must be `<prefix><at least one token>`.
    prefix: String,
    /// The API application it belongs to (`_INBOX_<application>.`); `None`: shared.
    owner: Option<String>,
    /// The operators' inbox (under [`OPERATOR_REPLY_PREFIX`]).
    operators: bool,
}

impl Namespace {
    fn owned(inbox: &AppInbox) -> Self {
        Self {
            prefix: inbox.prefix.clone(),
            owner: Some(inbox.application.clone()),
            operators: false,
        }
    }

    fn new(prefix: String) -> Self {
        let owner = prefix
            .strip_prefix(APPLICATION_REPLY_PREFIX)
            .and_then(|rest| rest.strip_suffix('.'))
            .filter(|app| {
                !app.is_empty()
                    && app
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            })
            .map(str::to_string);
        let operators = prefix.starts_with(OPERATOR_REPLY_PREFIX);
        Self {
            prefix,
            owner,
            operators,
        }
    }

    fn contains(&self, subject: &str) -> bool {
        subject.len() > self.prefix.len() && subject.starts_with(self.prefix.as_str())
    }

    /// Whether `requester` may be answered here; `operators_inbox`: whether the policy
    /// trusts an operators' inbox.
    fn admits(&self, requester: &Requester, operators_inbox: bool) -> bool {
        match requester {
            Requester::Any => true,
            Requester::Operator => self.operators || !operators_inbox,
            Requester::Application(app) => {
                self.prefix == DEFAULT_REPLY_PREFIX || self.owner.as_deref() == Some(app.as_str())
            }
            Requester::AnyApplication => {
                self.prefix == DEFAULT_REPLY_PREFIX || self.owner.is_some()
            }
        }
    }
}

/// The trusted reply namespaces and the subject trees piggybank serves.
#[derive(Debug)]
pub struct ReplyPolicy {
    /// `_INBOX.`, then the configured prefixes.
    namespaces: Vec<Namespace>,
    /// Subject trees served (`wasmcloud.secrets.v1alpha1.nats-kv`, `piggybank`, ...).
    served: Vec<String>,
    /// Whether one of `namespaces` is the operators' (fixed at start, read per request).
    operators_inbox: bool,
    refused: AtomicU64,
    last_warning: Mutex<Option<(Instant, u64)>>,
}

impl ReplyPolicy {
    /// `prefixes`: trusted reply prefixes besides `_INBOX.`, which is always trusted; a
    /// prefix given without a trailing `.` gets one (`_INBOX_billing` means
    /// `_INBOX_billing.>`).
    /// `served`: every subject prefix piggybank subscribes under.
    pub fn new(prefixes: &[String], served: &[String]) -> Result<Self, String> {
        Self::with_app_inboxes(prefixes, &[], served)
    }

    /// [`Self::new`], with inboxes bound to applications (`--app-inbox`): trusted, and each
    /// its application's alone. A prefix also in `prefixes` is the application's.
    pub fn with_app_inboxes(
        prefixes: &[String],
        inboxes: &[AppInbox],
        served: &[String],
    ) -> Result<Self, String> {
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
        // `_INBOX_<application>.` is that application's by name: binding it to another
        // would hand one application's replies to the other.
        for inbox in inboxes {
            if let Some(owner) = Namespace::new(inbox.prefix.clone()).owner {
                if owner != inbox.application {
                    return Err(format!(
                        "inbox {:?} is application {owner:?}'s by its name; it cannot be bound to {:?}",
                        inbox.prefix, inbox.application
                    ));
                }
            }
        }
        let mut namespaces: Vec<Namespace> = inboxes.iter().map(Namespace::owned).collect();
        namespaces.extend(
            trusted
                .into_iter()
                .filter(|p| inboxes.iter().all(|i| &i.prefix != p))
                .map(Namespace::new),
        );
        // No two applications' inboxes overlap, nor one the shared `_INBOX.`: a subject
        // inside both would be answered for either.
        for (i, a) in namespaces.iter().enumerate() {
            let tree = |n: &Namespace| n.prefix[..n.prefix.len() - 1].to_string();
            for b in &namespaces[i + 1..] {
                let shared = |n: &Namespace| n.prefix == DEFAULT_REPLY_PREFIX;
                let claimed = (a.owner.is_some() || shared(a)) && (b.owner.is_some() || shared(b));
                let overlap = within(&tree(a), &tree(b)) || within(&tree(b), &tree(a));
                if claimed && overlap && a.owner != b.owner {
                    return Err(format!(
                        "inboxes {:?} and {:?} overlap: an application's inbox must be its own",
                        a.prefix, b.prefix
                    ));
                }
            }
            if a.owner.is_some() {
                let t = tree(a);
                if served.iter().any(|s| within(&t, s) || within(s, &t)) {
                    return Err(format!(
                        "inbox {:?} overlaps a subject tree piggybank serves",
                        a.prefix
                    ));
                }
            }
        }
        let operators_inbox = namespaces.iter().any(|n| n.operators);
        Ok(Self {
            namespaces,
            served,
            operators_inbox,
            refused: AtomicU64::new(0),
            last_warning: Mutex::new(None),
        })
    }

    /// Check the reply subject of a request from a host or an operator ([`Requester::Any`]).
    pub fn check(&self, reply: Option<&Subject>) -> Result<ReplyTo, Refused> {
        self.check_as(reply, &Requester::Any)
    }

    /// Check the reply subject of a request from `requester`. Pure: no logging or counting
    /// (see [`Self::admit_as`]).
    pub fn check_as(
        &self,
        reply: Option<&Subject>,
        requester: &Requester,
    ) -> Result<ReplyTo, Refused> {
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
        let mut within = self.namespaces.iter().filter(|n| n.contains(s)).peekable();
        if within.peek().is_none() {
            return Err(Refused::Untrusted);
        }
        if !within.any(|n| n.admits(requester, self.operators_inbox)) {
            return Err(Refused::NotTheRequesters);
        }
        Ok(ReplyTo(reply.clone()))
    }

    /// [`Self::admit_as`] for a request from a host or an operator ([`Requester::Any`]).
    pub fn admit(&self, operation: &str, reply: Option<&Subject>) -> Option<ReplyTo> {
        self.admit_as(operation, reply, &Requester::Any)
    }

    /// [`Self::check_as`], counting refusals and logging them at warn, at most every 10 s. A
    /// request without a reply subject is not counted: it asks for no reply.
    pub fn admit_as(
        &self,
        operation: &str,
        reply: Option<&Subject>,
        requester: &Requester,
    ) -> Option<ReplyTo> {
        match self.check_as(reply, requester) {
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
pub(crate) fn within(subject: &str, tree: &str) -> bool {
    subject == tree
        || subject
            .strip_prefix(tree)
            .is_some_and(|rest| rest.starts_with('.'))
}

/// A literal subject: non-empty tokens, no wildcards, no whitespace.
pub(crate) fn valid_subject(s: &str) -> bool {
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

    fn check_for(p: &ReplyPolicy, app: &str, s: &str) -> Result<(), Refused> {
        let app = Requester::Application(app.to_string());
        p.check_as(Some(&Subject::from(s)), &app).map(|_| ())
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

    /// Finding 2 of the layout review: the admin role's `initialize` from a client with the
    /// default inbox was answered in `_INBOX.`, where a host read the database key.
    #[test]
    fn an_operators_reply_goes_only_to_the_operators_inbox_once_one_is_trusted() {
        let operator = |p: &ReplyPolicy, s: &str| {
            p.check_as(Some(&Subject::from(s)), &Requester::Operator)
                .map(|_| ())
        };
        let p = policy(&["_PIGGYBANK_ADMIN_INBOX.nats-kv", "_INBOX_shop"]);
        assert_eq!(operator(&p, "_PIGGYBANK_ADMIN_INBOX.nats-kv.a1"), Ok(()));
        for elsewhere in ["_INBOX.a1", "_INBOX_shop.a1"] {
            assert_eq!(
                operator(&p, elsewhere),
                Err(Refused::NotTheRequesters),
                "{elsewhere}"
            );
        }
        // A host's reply (sealed, or an error) may still go there, as anywhere trusted.
        assert_eq!(check(&p, "_PIGGYBANK_ADMIN_INBOX.nats-kv.b2"), Ok(()));
        // Without an operators' inbox, an operator is answered wherever it is trusted.
        let open = policy(&["_INBOX_shop"]);
        assert_eq!(operator(&open, "_INBOX.a1"), Ok(()));
        assert_eq!(operator(&open, "_INBOX_shop.a1"), Ok(()));
    }

    /// Finding 3 of the layout review: a read-only application's value was delivered into
    /// the operators' inbox.
    #[test]
    fn a_read_only_applications_reply_goes_to_application_inboxes_only() {
        let any_app = |p: &ReplyPolicy, s: &str| {
            p.check_as(Some(&Subject::from(s)), &Requester::AnyApplication)
                .map(|_| ())
        };
        let p = policy(&["_PIGGYBANK_ADMIN_INBOX.nats-kv", "_INBOX_shop", "_R_"]);
        assert_eq!(any_app(&p, "_INBOX.a"), Ok(()));
        assert_eq!(any_app(&p, "_INBOX_shop.a"), Ok(()));
        for refused in ["_PIGGYBANK_ADMIN_INBOX.nats-kv.a", "_R_.a"] {
            assert_eq!(
                any_app(&p, refused),
                Err(Refused::NotTheRequesters),
                "{refused}"
            );
        }
    }

    #[test]
    fn refusals_are_counted_but_a_missing_reply_is_not() {
        let p = policy(&[]);
        assert!(p.admit("get", None).is_none());
        assert!(p.admit("get", Some(&Subject::from("$KV.B.k"))).is_none());
        assert!(p.admit("get", Some(&Subject::from("x.y"))).is_none());
        assert!(p.admit("get", Some(&Subject::from("_INBOX.ok"))).is_some());
        let shop = Requester::Application("shop".into());
        assert!(p
            .admit_as("get", Some(&Subject::from("_INBOX.ok")), &shop)
            .is_some());
        assert_eq!(p.refused(), 2);
    }

    #[test]
    fn an_application_is_answered_only_in_the_shared_inbox_or_its_own_prefix() {
        let p = policy(&["_INBOX_billing", "_INBOX_shop", "_R_", "_INBOX_team.ops"]);
        for s in ["_INBOX.a", "_INBOX_shop.a.b"] {
            assert_eq!(check_for(&p, "shop", s), Ok(()), "{s}");
        }
        for s in ["_INBOX_billing.pending.1", "_R_.a", "_INBOX_team.ops.a"] {
            assert_eq!(
                check_for(&p, "shop", s),
                Err(Refused::NotTheRequesters),
                "{s}"
            );
        }
        assert_eq!(check_for(&p, "billing", "_INBOX_billing.pending.1"), Ok(()));
        // A prefix is an application's by its whole name: not a shorter or a longer one's.
        assert_eq!(
            check_for(&p, "bill", "_INBOX_billing.1"),
            Err(Refused::NotTheRequesters)
        );
        assert_eq!(
            check_for(&p, "billing2", "_INBOX_billing2.1"),
            Err(Refused::Untrusted)
        );
        // An application's prefix is answered only once configured.
        assert_eq!(
            check_for(&p, "other", "_INBOX_other.1"),
            Err(Refused::Untrusted)
        );
        // The other rules hold for applications too.
        assert_eq!(check_for(&p, "shop", "$KV.B.k"), Err(Refused::System));
        assert_eq!(
            check_for(&p, "shop", "piggybank.shop.x"),
            Err(Refused::Served)
        );
        // Hosts and operators are answered in every trusted namespace.
        for s in [
            "_INBOX.a",
            "_INBOX_shop.a",
            "_INBOX_billing.a",
            "_R_.a",
            "_INBOX_team.ops.a",
        ] {
            assert_eq!(check(&p, s), Ok(()), "{s}");
        }
    }

    fn inbox(s: &str) -> AppInbox {
        s.parse().unwrap()
    }

    fn bound(inboxes: &[&str], prefixes: &[&str]) -> Result<ReplyPolicy, String> {
        let inboxes: Vec<AppInbox> = inboxes.iter().map(|s| inbox(s)).collect();
        let prefixes: Vec<String> = prefixes.iter().map(|s| s.to_string()).collect();
        ReplyPolicy::with_app_inboxes(&prefixes, &inboxes, &["piggybank".into()])
    }

    #[test]
    fn an_inbox_bound_to_an_application_answers_it_and_no_other() {
        let p = bound(&["foo=foo.secrets", "bar=bar.in."], &["_INBOX_shop"]).unwrap();
        assert_eq!(check_for(&p, "foo", "foo.secrets.abc.1"), Ok(()));
        assert_eq!(check_for(&p, "bar", "bar.in.1"), Ok(()));
        for (app, s) in [
            ("bar", "foo.secrets.abc.1"),
            ("shop", "foo.secrets.abc.1"),
            ("foo", "bar.in.1"),
            ("foo", "_INBOX_shop.1"),
        ] {
            assert_eq!(
                check_for(&p, app, s),
                Err(Refused::NotTheRequesters),
                "{app} {s}"
            );
        }
        // Hosts and operators are answered there too; outside every inbox, nobody.
        assert_eq!(check(&p, "foo.secrets.1"), Ok(()));
        assert_eq!(check_for(&p, "foo", "foo.other.1"), Err(Refused::Untrusted));
        // The same prefix in --reply-prefixes stays the application's.
        let p = bound(&["foo=foo.secrets"], &["foo.secrets"]).unwrap();
        assert_eq!(
            check_for(&p, "bar", "foo.secrets.1"),
            Err(Refused::NotTheRequesters)
        );
    }

    #[test]
    fn overlapping_or_unsafe_inboxes_are_refused_at_start() {
        for (inboxes, prefixes) in [
            (vec!["foo=a.b", "bar=a"], vec![]),
            (vec!["foo=a", "bar=a"], vec![]),
            (vec!["foo=_INBOX.foo"], vec![]),
            (vec!["foo=_INBOX_bar.x"], vec!["_INBOX_bar"]),
            // `_INBOX_bar.` is bar's by name, trusted or not.
            (vec!["foo=_INBOX_bar"], vec!["_INBOX_bar"]),
            (vec!["foo=_INBOX_bar"], vec![]),
            (vec!["foo=piggybank.foo"], vec![]),
            (vec!["foo=_PIGGYBANK_INBOX.x"], vec![]),
        ] {
            assert!(
                bound(&inboxes, &prefixes).is_err(),
                "{inboxes:?} {prefixes:?}"
            );
        }
        assert!(bound(&["foo=a.b", "foo=a.c"], &["a"]).is_ok());
        for bad in [
            "foo",
            "=x",
            "fo.o=x",
            "foo=$KV.x",
            "foo=a.*",
            "foo=a..b",
            "foo=",
        ] {
            assert!(bad.parse::<AppInbox>().is_err(), "{bad}");
        }
    }
}
