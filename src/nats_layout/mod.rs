//! The least-privilege NATS layout of one piggybank deployment: which NATS user (role) may
//! publish and subscribe where, as a nats-server `authorization` block.
//!
//! Roles: the **backend** (its service subjects and queue groups, its buckets and streams
//! through the JetStream API, its own inbox, the audit stream, `$SRV`); the **host** (only
//! `server_xkey` and `get` of the named backend, replies on `_INBOX.`); the **admin** (the
//! admin and database operations, status, audit and bucket reads, replies on an inbox of its
//! own; no bucket writes, which would bypass `--admin-keys`: `restore` and `rekey` run as the
//! backend); and one role per **Piggy Bank API application** (its own
//! `<prefix>.<application>.>`, replies on `_INBOX_<application>.`).
//!
//! Invariants, which `tests/suite/security/nats_layout.rs` checks against a real server:
//! - Only the backend may write piggybank's buckets, purge, update or delete its streams, or
//!   create any stream at all. A stream create names only
//!   the stream, not its subjects or sources, so whoever may create streams can capture
//!   piggybank's subjects: the host and applications get no `STREAM.CREATE`, `UPDATE`,
//!   `DELETE` or `PURGE` at all, and an explicit deny of them, which stays in force when an
//!   operator merges a lattice's own allow list into those users (deny wins in NATS).
//! - Every name comes from where the code defines it ([`crate::config`], [`crate::audit`],
//!   [`crate::store::buckets`], [`crate::reply_policy`]): the layout cannot name a bucket or
//!   a subject the backend does not use.
//!
//! Pure: it renders text. Writing the seed files is the CLI's (`piggybank nats-config`).

use crate::config;
use crate::protocol::subject::Operation;
use crate::reply_policy::{
    valid_subject, within, AppInbox, APPLICATION_REPLY_PREFIX, DEFAULT_REPLY_PREFIX,
    SERVER_INBOX_PREFIX,
};
use crate::store::buckets::Buckets;

mod render;
pub use render::server_config;

/// The JetStream API of the account's own JetStream (no domain).
const JS_API: &str = "$JS.API";

/// The inbox prefix of the admin role of backend `name`: replies to the operators stay out
/// of the shared `_INBOX.`, which every host reads.
pub fn admin_inbox_prefix(backend_name: &str) -> String {
    format!("_PIGGYBANK_ADMIN_INBOX.{backend_name}")
}

/// The inbox prefix of Piggy Bank API application `app` (the form the reply policy binds to
/// that application).
pub fn application_inbox_prefix(app: &str) -> String {
    format!("{APPLICATION_REPLY_PREFIX}{app}")
}

/// A layout that cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("application name {0:?} is not one subject token (letters, digits, '-', '_')")]
    BadApplication(String),
    #[error("application {0:?} is reserved")]
    ReservedApplication(String),
    #[error("application {0:?} is given twice")]
    DuplicateApplication(String),
    #[error("{what} {value:?} is not a subject without wildcards")]
    BadName { what: &'static str, value: String },
    #[error("--app-inbox {0}=...: {0:?} is not an application of the layout (add --app {0})")]
    InboxOfUnknownApplication(String),
    #[error("--app-inbox: {0}")]
    InboxesRefused(String),
    #[error("--app-inbox {application}={prefix}: {why}")]
    BadInbox {
        application: String,
        prefix: String,
        why: String,
    },
}

/// One NATS user of the layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Backend,
    Host,
    Admin,
    Application(String),
}

impl Role {
    /// The stem of its seed file (`backend.nk`, `app-shop.nk`).
    pub fn file_stem(&self) -> String {
        match self {
            Role::Backend => "backend".into(),
            Role::Host => "host".into(),
            Role::Admin => "admin".into(),
            Role::Application(app) => format!("app-{app}"),
        }
    }

    /// What it is for, in a few words (the summary and the config's comments).
    pub fn describe(&self) -> String {
        match self {
            Role::Backend => "the backend (piggybank run / dev / the provider)".into(),
            Role::Host => "wasmCloud hosts: server_xkey and get only".into(),
            Role::Admin => "operators: the piggybank CLI (admin, database, audit, backup)".into(),
            Role::Application(app) => format!("Piggy Bank API application {app:?}"),
        }
    }
}

/// What one role may do. Deny wins over allow (NATS's rule).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    pub publish_allow: Vec<String>,
    pub publish_deny: Vec<String>,
    pub subscribe_allow: Vec<String>,
    pub subscribe_deny: Vec<String>,
    /// May publish to the reply subject of a message it received (once each).
    pub allow_responses: bool,
}

/// The names of one deployment: everything the layout is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    pub subject_base: String,
    pub api_version: String,
    pub backend_name: String,
    pub secrets_bucket: String,
    /// The Piggy Bank API's and the database operations' prefix (`piggybank`).
    pub piggybank_prefix: String,
    pub applications: Vec<String>,
    /// Inboxes of any name bound to applications (`--app-inbox foo=foo.secrets`): the
    /// application may receive there too, and the backend must run with the same bindings.
    pub app_inboxes: Vec<AppInbox>,
    /// Read-only Piggy Bank API applications (`--read-only-apps`): every application's user
    /// may request their secrets; the backend refuses their `post` and `delete`.
    pub read_only_apps: Vec<String>,
}

impl Deployment {
    /// Check the names: each application one token, not reserved, given once.
    pub fn new(
        subject_base: &str,
        api_version: &str,
        backend_name: &str,
        secrets_bucket: &str,
        piggybank_prefix: &str,
        applications: &[String],
    ) -> Result<Self, LayoutError> {
        for (what, value) in [
            ("subject base", subject_base),
            ("api version", api_version),
            ("piggybank prefix", piggybank_prefix),
        ] {
            if !literal_subject(value) {
                return Err(LayoutError::BadName {
                    what,
                    value: value.into(),
                });
            }
        }
        for (what, value) in [("backend name", backend_name), ("bucket", secrets_bucket)] {
            if !token(value) {
                return Err(LayoutError::BadName {
                    what,
                    value: value.into(),
                });
            }
        }
        let applications = checked_applications(applications.iter().cloned())?;
        Ok(Self {
            subject_base: subject_base.into(),
            api_version: api_version.into(),
            backend_name: backend_name.into(),
            secrets_bucket: secrets_bucket.into(),
            piggybank_prefix: piggybank_prefix.into(),
            applications,
            app_inboxes: Vec::new(),
            read_only_apps: Vec::new(),
        })
    }

    /// Mark applications read-only: each one token, not reserved, given once.
    pub fn with_read_only_apps(mut self, apps: Vec<String>) -> Result<Self, LayoutError> {
        self.read_only_apps = checked_applications(apps)?;
        Ok(self)
    }

    /// Bind inboxes of any name to applications of the layout. Each must be an application's
    /// own: the backend's reply policy must accept the bindings (no overlap with another
    /// application's inbox, the shared `_INBOX.` or what piggybank serves), and no inbox may
    /// reach into a tree the layout keeps from applications (the admin's inbox, the audit
    /// trail, the buckets), which the application would then be allowed to read.
    pub fn with_app_inboxes(mut self, inboxes: Vec<AppInbox>) -> Result<Self, LayoutError> {
        let bad = |inbox: &AppInbox, why: String| LayoutError::BadInbox {
            application: inbox.application.clone(),
            prefix: inbox.prefix.trim_end_matches('.').to_string(),
            why,
        };
        let kept = self.protected_subscribe();
        for inbox in &inboxes {
            if !self.applications.contains(&inbox.application) {
                return Err(LayoutError::InboxOfUnknownApplication(
                    inbox.application.clone(),
                ));
            }
            let tree = inbox.prefix.trim_end_matches('.');
            if tree.starts_with('$') || !valid_subject(tree) {
                return Err(bad(
                    inbox,
                    "not a subject prefix without wildcards, not $...".into(),
                ));
            }
            if let Some(kept) = kept
                .iter()
                .map(|k| k.trim_end_matches(".>"))
                .find(|k| within(tree, k) || within(k, tree))
            {
                return Err(bad(
                    inbox,
                    format!("it overlaps {kept}.>, kept from applications"),
                ));
            }
        }
        let served = [self.protocol(), self.piggybank_prefix.clone()];
        if let Err(why) = crate::reply_policy::ReplyPolicy::with_app_inboxes(
            &self.reply_prefixes(),
            &inboxes,
            &served,
        ) {
            return Err(LayoutError::InboxesRefused(why));
        }
        self.app_inboxes = inboxes;
        Ok(self)
    }

    /// Every role: backend, host, admin, then the applications in the order given.
    pub fn roles(&self) -> Vec<Role> {
        let mut roles = vec![Role::Backend, Role::Host, Role::Admin];
        roles.extend(self.applications.iter().cloned().map(Role::Application));
        roles
    }

    /// `{base}.{api_version}.{name}`.
    fn protocol(&self) -> String {
        config::subject_prefix(&self.subject_base, &self.api_version, &self.backend_name)
    }

    fn buckets(&self) -> Buckets {
        Buckets::of(&self.backend_name, &self.secrets_bucket)
    }

    /// Every bucket the backend opens: secrets, mappings, the key record, the nonces.
    fn all_buckets(&self) -> Vec<String> {
        let b = self.buckets();
        vec![
            b.secrets,
            b.mappings,
            b.vault,
            config::nonces_bucket(&self.backend_name),
        ]
    }

    /// The audit trails' streams (`audit::Trail::ALL`).
    fn audit_streams(&self) -> Vec<String> {
        crate::audit::Trail::ALL
            .iter()
            .map(|trail| trail.stream_name(&self.backend_name))
            .collect()
    }

    /// Every stream of the deployment: the buckets' and the audit trails'.
    pub fn streams(&self) -> Vec<String> {
        let mut streams: Vec<String> = self.all_buckets().iter().map(|b| kv_stream(b)).collect();
        streams.extend(self.audit_streams());
        streams
    }

    /// The reply prefixes the backend must trust besides `_INBOX.` (`run --reply-prefixes`):
    /// the admin's inbox and each application's.
    pub fn reply_prefixes(&self) -> Vec<String> {
        let mut prefixes = vec![admin_inbox_prefix(&self.backend_name)];
        prefixes.extend(
            self.applications
                .iter()
                .map(|a| application_inbox_prefix(a)),
        );
        prefixes
    }

    pub fn permissions(&self, role: &Role) -> Permissions {
        match role {
            Role::Backend => self.backend(),
            Role::Host => self.host(),
            Role::Admin => self.admin(),
            Role::Application(app) => self.application(app),
        }
    }

    fn backend(&self) -> Permissions {
        let mut publish: Vec<String> = self
            .all_buckets()
            .iter()
            .map(|b| format!("$KV.{b}.>"))
            .collect();
        publish.push(format!(
            "{}.>",
            crate::audit::subject_root(&self.backend_name)
        ));
        publish.push(format!("{JS_API}.INFO"));
        for stream in self.streams() {
            publish.extend(stream_owner_api(&stream));
        }
        Permissions {
            publish_allow: publish,
            subscribe_allow: vec![
                format!("{}.>", self.protocol()),
                format!("{}.>", self.piggybank_prefix),
                "$SRV.>".into(),
                format!("{SERVER_INBOX_PREFIX}.>"),
            ],
            // Replies, `$SRV` answers and JetStream flow control: only to messages it got.
            allow_responses: true,
            ..Default::default()
        }
    }

    fn host(&self) -> Permissions {
        let protocol = self.protocol();
        Permissions {
            publish_allow: vec![
                format!("{protocol}.{}", config::ops::SERVER_XKEY),
                format!("{protocol}.{}", config::ops::GET),
            ],
            publish_deny: [
                self.protected_publish(),
                vec![format!("{}.>", self.piggybank_prefix)],
                self.operator_operations(),
            ]
            .concat(),
            subscribe_allow: vec![format!("{DEFAULT_REPLY_PREFIX}>")],
            subscribe_deny: [self.protected_subscribe(), self.application_inboxes(None)].concat(),
            allow_responses: false,
        }
    }

    fn admin(&self) -> Permissions {
        let b = self.buckets();
        // The admin operations by name, and `server_xkey` (a CLI `put` seals to it), never
        // `get`: with `get`, this user alone reads every mapped secret by presenting a
        // component's public JWT, admin seed or not.
        let mut publish: Vec<String> = self.operator_operations();
        publish.push(Operation::ServerXkey.permission_subject(&self.protocol()));
        publish.extend([
            format!(
                "{}.>",
                crate::database::subject(&self.piggybank_prefix, &self.backend_name, "")
                    .trim_end_matches('.')
            ),
            "$SRV.>".into(),
            format!("{JS_API}.INFO"),
        ]);
        // Reads only: a user who may write the mappings bucket grants access without an admin
        // signature, so `restore` and `rekey`, which write the buckets, run as the backend.
        for stream in [b.secrets, b.mappings, b.vault]
            .iter()
            .map(|b| kv_stream(b))
            .chain(self.audit_streams())
        {
            publish.extend(stream_reader_api(&stream));
        }
        Permissions {
            publish_allow: publish,
            subscribe_allow: vec![format!("{}.>", admin_inbox_prefix(&self.backend_name))],
            ..Default::default()
        }
    }

    /// The protocol's admin operations, one subject each.
    fn operator_operations(&self) -> Vec<String> {
        let protocol = self.protocol();
        Operation::every_kind()
            .iter()
            .filter(|op| op.is_admin())
            .map(|op| op.permission_subject(&protocol))
            .collect()
    }

    /// Every application's inboxes: `_INBOX_<app>.>` and the ones bound to it.
    fn application_inboxes(&self, except: Option<&str>) -> Vec<String> {
        let mine = |app: &str| except == Some(app);
        self.applications
            .iter()
            .filter(|app| !mine(app))
            .map(|app| format!("{}.>", application_inbox_prefix(app)))
            .chain(
                self.app_inboxes
                    .iter()
                    .filter(|inbox| !mine(&inbox.application))
                    .map(|inbox| format!("{}>", inbox.prefix)),
            )
            .collect()
    }

    fn application(&self, app: &str) -> Permissions {
        Permissions {
            publish_allow: std::iter::once(app)
                .chain(
                    self.read_only_apps
                        .iter()
                        .map(String::as_str)
                        .filter(|ro| *ro != app),
                )
                .map(|a| format!("{}.{a}.>", self.piggybank_prefix))
                .collect(),
            publish_deny: [
                self.protected_publish(),
                vec![
                    format!("{}.>", self.protocol()),
                    format!("{}.database.>", self.piggybank_prefix),
                ],
            ]
            .concat(),
            subscribe_allow: std::iter::once(format!("{}.>", application_inbox_prefix(app)))
                .chain(
                    self.app_inboxes
                        .iter()
                        .filter(|inbox| inbox.application == app)
                        .map(|inbox| format!("{}>", inbox.prefix)),
                )
                .collect(),
            subscribe_deny: [
                self.protected_subscribe(),
                vec![format!("{DEFAULT_REPLY_PREFIX}>")],
                self.application_inboxes(Some(app)),
            ]
            .concat(),
            allow_responses: false,
        }
    }

    /// What no role but the backend's (and, for reads, the admin's) may publish to: denied explicitly to the host and applications, so that it stays denied when an
    /// operator adds a lattice's allow list to those users.
    fn protected_publish(&self) -> Vec<String> {
        let mut deny: Vec<String> = self
            .all_buckets()
            .iter()
            .map(|b| format!("$KV.{b}.>"))
            .collect();
        deny.extend([
            format!("{}.>", crate::audit::subject_root(&self.backend_name)),
            format!("{SERVER_INBOX_PREFIX}.>"),
            format!("{}.>", admin_inbox_prefix(&self.backend_name)),
            "$SRV.>".into(),
        ]);
        // No stream may be created, changed, emptied or removed: a create names the stream
        // only, so it could capture or source piggybank's subjects under any name.
        // Nor restored: a snapshot of a stream capturing `…add_mapping.>`, made on another
        // server, restores as a capture here.
        for verb in ["CREATE", "UPDATE", "DELETE", "PURGE", "RESTORE"] {
            deny.push(format!("{JS_API}.STREAM.{verb}.>"));
        }
        for stream in self.streams() {
            deny.extend(stream_owner_api(&stream));
        }
        deny
    }

    fn protected_subscribe(&self) -> Vec<String> {
        let mut deny = vec![
            format!("{}.>", self.protocol()),
            format!("{}.>", self.piggybank_prefix),
            format!("{SERVER_INBOX_PREFIX}.>"),
            format!("{}.>", admin_inbox_prefix(&self.backend_name)),
            format!("{}.>", crate::audit::subject_root(&self.backend_name)),
            "$SRV.>".into(),
            // Other clients' JetStream API calls and the server's events name piggybank's
            // keys (a KV get's subject is its key).
            format!("{JS_API}.>"),
            "$JS.EVENT.>".into(),
        ];
        deny.extend(self.all_buckets().iter().map(|b| format!("$KV.{b}.>")));
        deny
    }
}

/// The stream of a KV bucket.
fn kv_stream(bucket: &str) -> String {
    format!("KV_{bucket}")
}

/// Everything the JetStream API does on `stream`: the owner's rights.
fn stream_owner_api(stream: &str) -> Vec<String> {
    vec![
        format!("{JS_API}.STREAM.*.{stream}"),
        format!("{JS_API}.STREAM.*.*.{stream}"),
        format!("{JS_API}.CONSUMER.*.{stream}"),
        format!("{JS_API}.CONSUMER.*.{stream}.>"),
        format!("{JS_API}.CONSUMER.*.*.{stream}.>"),
        format!("{JS_API}.DIRECT.GET.{stream}"),
        format!("{JS_API}.DIRECT.GET.{stream}.>"),
        format!("$JS.ACK.{stream}.>"),
        format!("$JS.FC.{stream}.>"),
    ]
}

/// Reading `stream`: its info, single messages, and consumers of one's own (ephemeral or
/// ordered, as KV watches, `get`, `backup` and `audit` make them).
fn stream_reader_api(stream: &str) -> Vec<String> {
    vec![
        format!("{JS_API}.STREAM.INFO.{stream}"),
        format!("{JS_API}.STREAM.MSG.GET.{stream}"),
        format!("{JS_API}.DIRECT.GET.{stream}"),
        format!("{JS_API}.DIRECT.GET.{stream}.>"),
        format!("{JS_API}.CONSUMER.CREATE.{stream}"),
        format!("{JS_API}.CONSUMER.CREATE.{stream}.>"),
        format!("{JS_API}.CONSUMER.INFO.{stream}.>"),
        format!("{JS_API}.CONSUMER.DELETE.{stream}.>"),
        format!("{JS_API}.CONSUMER.MSG.NEXT.{stream}.>"),
        format!("$JS.ACK.{stream}.>"),
        format!("$JS.FC.{stream}.>"),
    ]
}

/// One subject token: letters, digits, `-`, `_`.
fn token(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A subject of such tokens.
fn literal_subject(s: &str) -> bool {
    s.split('.').all(token)
}

/// Application names, each one token, not reserved, given once.
fn checked_applications(
    apps: impl IntoIterator<Item = String>,
) -> Result<Vec<String>, LayoutError> {
    let mut seen: Vec<String> = Vec::new();
    for app in apps {
        if !token(&app) {
            return Err(LayoutError::BadApplication(app));
        }
        if crate::piggybank_api::RESERVED_APPLICATIONS.contains(&app.as_str()) {
            return Err(LayoutError::ReservedApplication(app));
        }
        if seen.contains(&app) {
            return Err(LayoutError::DuplicateApplication(app));
        }
        seen.push(app);
    }
    Ok(seen)
}

#[cfg(test)]
mod tests;
