//! The `piggybank:secrets/admin` front door: WIT calls over wRPC -> the core.
//!
//! Two versions are served: `admin@0.2.0` (the [`Handler`] below) and `admin@0.3.0`, which
//! uses 0.2.0's types and adds grants to wadm applications; its shared functions are the
//! 0.2.0 ones, called as they are.
//!
//! Each function authorizes the caller by its link ([`Links`]), checks names against the link's
//! scope, calls [`Backend`], and maps errors to the WIT `error` variant in one function
//! (`wit_error`). Handlers never return a transport error for a bad argument: every refusal
//! is a typed `error` the component can match on. No function returns a secret value.
//!
//! Results of any size reach the caller: the provider's wRPC server writes a result as a
//! stream of messages of at most the connection's max payload each
//! ([`ResultWriter`](super::wrpc::ResultWriter)), so nothing is lost to NATS's message size,
//! unlike a plain NATS reply.
//! The listings are paged anyway (at most 2000 entries, under 1 MiB), so a caller holds
//! a bounded page in memory.

use std::collections::BTreeSet;
use std::sync::Arc;

use wasmcloud_provider_sdk::Context;
use zeroize::Zeroizing;

use super::bindings::exports::piggybank::secrets0_2_0::admin::{
    Error, Handler, NamePage, SecretInfo, SecretKind, SecretPage, SecretValue as WitValue,
    StoreStatus,
};
use super::bindings::exports::piggybank::secrets0_3_0::admin::Handler as HandlerV3;
use super::links::{Access, LinkScope, Links, ScopeError};
use crate::audit::{AuditNote, Auditor, LinkRef};
use crate::backend::{page_limit, Backend, BackendError, MappingChange, PageRequest};
use crate::decision::Decision;
use crate::error::ErrorKind;
use crate::finish::Finish;
use crate::server::RunConfig;
use crate::store::envelope::{SecretKind as StoredKind, SecretValue};
use crate::store::{Grantee, SecretMeta, StoreError};

/// What the exports need: the core, the links, and what `status` reports.
#[derive(Clone)]
pub(crate) struct AdminExports {
    backend: Arc<Backend>,
    links: Arc<Links>,
    nats: async_nats::Client,
    backend_name: String,
    subject_prefix: String,
    auditor: Arc<Auditor>,
}

/// What a WIT call is about, for its audit record.
#[derive(Default)]
struct About<'a> {
    secret: Option<&'a str>,
    entity: Option<&'a str>,
    application: Option<&'a str>,
}

impl AdminExports {
    /// The store, unless it is sealed: every call but `status` goes through here.
    fn store(&self) -> Result<crate::backend::Unsealed<'_>, Refusal> {
        self.backend.unsealed().map_err(Refusal::from)
    }

    pub fn new(
        backend: Arc<Backend>,
        links: Arc<Links>,
        nats: async_nats::Client,
        config: &RunConfig,
        auditor: Arc<Auditor>,
    ) -> Self {
        Self {
            backend,
            links,
            nats,
            backend_name: config.name.clone(),
            subject_prefix: config.subject_prefix(),
            auditor,
        }
    }

    /// Run the call, then finish it as every request is finished ([`crate::finish`]:
    /// metrics, audit record); with `--audit-required`, a call whose record is not written
    /// answers `unavailable` instead of its result.
    async fn audited<T>(
        &self,
        cx: &Option<Context>,
        operation: &str,
        about: About<'_>,
        call: impl std::future::Future<Output = Result<T, Refusal>>,
    ) -> Result<T, Error> {
        use tracing::Instrument as _;
        let started = std::time::Instant::now();
        // The span carries the request id the audit record carries, as the serve loop's do.
        let request_id = self.auditor.request_id();
        let span = tracing::info_span!("request", %request_id, front_door = "wit", operation);
        let result = call.instrument(span).await;
        let mut note = AuditNote::operation(operation);
        note.secret = about.secret.map(str::to_string);
        note.entity = about.entity.map(str::to_string);
        note.application = about.application.map(str::to_string);
        note.link = cx.as_ref().map(|c| LinkRef {
            source_id: c.component.clone().unwrap_or_default(),
            name: c.link_name().to_string(),
        });
        let (result, decision) = match result {
            Ok(value) => (Ok(value), Decision::Allowed),
            Err(refused) => (Err(refused.error), refused.decision),
        };
        let finish = Finish {
            auditor: &self.auditor,
            front_door: "wit",
            request_id,
            admin_key: None,
            elapsed: started.elapsed(),
        };
        match finish.finish(note.decided(decision)).await {
            Ok(()) => result,
            Err(e) => Err(Error::Unavailable(e.to_string())),
        }
    }

    fn authorize(&self, cx: &Option<Context>, access: Access) -> Result<LinkScope, Refusal> {
        let component = cx.as_ref().and_then(|c| c.component.as_deref());
        let link = cx.as_ref().map_or("default", Context::link_name);
        let scope = self.links.authorize(component, link, access);
        if let Err(err) = &scope {
            tracing::info!(component, link, %err, "admin call refused");
        }
        scope.map_err(Refusal::from)
    }

    /// Authorize, then check every name against the scope.
    fn authorize_names<'a>(
        &self,
        cx: &Option<Context>,
        access: Access,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<LinkScope, Refusal> {
        let scope = self.authorize(cx, access)?;
        for name in names {
            scope.allows_name(name)?;
        }
        Ok(scope)
    }

    async fn mapping(
        &self,
        cx: &Option<Context>,
        grantee: Result<Grantee, StoreError>,
        names: Vec<String>,
        change: MappingChange,
    ) -> Result<Vec<String>, Refusal> {
        let scope = self.authorize_names(cx, Access::Write, names.iter().map(String::as_str))?;
        if names.is_empty() {
            return Err(Refusal::invalid("names must not be empty", "invalid_body"));
        }
        let grantee = grantee.map_err(|e| Refusal::from(BackendError::from(e)))?;
        let names: BTreeSet<String> = names.into_iter().collect();
        let all = self
            .store()?
            .update_grant(&grantee, change, &names)
            .await
            .map_err(Refusal::from)?;
        Ok(within(&scope, all))
    }

    /// `add_app_mapping` and `remove_app_mapping`: a change of an application's grant, audited
    /// under the operation's name.
    async fn app_mapping(
        &self,
        cx: Option<Context>,
        application: String,
        names: Vec<String>,
        change: MappingChange,
    ) -> Result<Vec<String>, Error> {
        let operation = match change {
            MappingChange::Add => crate::config::ops::ADD_APP_MAPPING,
            MappingChange::Remove => crate::config::ops::REMOVE_APP_MAPPING,
        };
        let grantee = Grantee::application(&application);
        let result = self.mapping(&cx, grantee, names, change);
        self.audited(&cx, operation, about_application(&application), result)
            .await
    }

    /// One page of the names granted to `grantee`, within the caller's scope.
    async fn grants_page(
        &self,
        cx: &Option<Context>,
        grantee: Result<Grantee, StoreError>,
        after: Option<String>,
        limit: Option<u32>,
    ) -> Result<NamePage, Refusal> {
        let scope = self.authorize(cx, Access::Read)?;
        let grantee = grantee.map_err(|e| Refusal::from(BackendError::from(e)))?;
        // The scope is a name prefix, so paging within it is paging with that prefix.
        let request = PageRequest {
            prefix: &scope.prefix,
            after: after.as_deref(),
            limit: wit_limit(limit)?,
        };
        let store = self.store()?;
        let page = store
            .grant_page(&grantee, &request)
            .await
            .map_err(Refusal::from)?;
        Ok(NamePage {
            names: page.items,
            next: page.next,
        })
    }
}

impl Handler<Option<Context>> for AdminExports {
    async fn put_secret(
        &self,
        cx: Option<Context>,
        name: String,
        value: WitValue,
        expected_version: Option<u64>,
    ) -> anyhow::Result<Result<u64, Error>> {
        let put = async {
            self.authorize_names(&cx, Access::Write, [name.as_str()])?;
            let value = match value {
                WitValue::Text(s) => SecretValue::String(Zeroizing::new(s)),
                WitValue::Bytes(b) => SecretValue::Binary(Zeroizing::new(b.into())),
            };
            self.store()?
                .put(&name, &value, expected_version)
                .await
                .map_err(Refusal::from)
        };
        let about = About {
            secret: Some(&name),
            ..About::default()
        };
        Ok(self.audited(&cx, "put_secret", about, put).await)
    }

    async fn delete_secret(
        &self,
        cx: Option<Context>,
        name: String,
    ) -> anyhow::Result<Result<(), Error>> {
        let delete = async {
            self.authorize_names(&cx, Access::Write, [name.as_str()])?;
            self.store()?.delete(&name).await.map_err(Refusal::from)
        };
        let about = About {
            secret: Some(&name),
            ..About::default()
        };
        Ok(self.audited(&cx, "delete_secret", about, delete).await)
    }

    async fn list_secrets(
        &self,
        cx: Option<Context>,
        prefix: String,
        after: Option<String>,
        limit: Option<u32>,
    ) -> anyhow::Result<Result<SecretPage, Error>> {
        let listed = async {
            let scope = self.authorize(&cx, Access::Read)?;
            let prefix = scope.narrow(&prefix)?;
            let request = PageRequest {
                prefix: &prefix,
                after: after.as_deref(),
                limit: wit_limit(limit)?,
            };
            let store = self.store()?;
            let page = store.list_page(&request).await.map_err(Refusal::from)?;
            Ok(SecretPage {
                secrets: page.items.into_iter().map(info).collect(),
                next: page.next,
            })
        };
        Ok(self
            .audited(&cx, "list_secrets", About::default(), listed)
            .await)
    }

    async fn describe_secret(
        &self,
        cx: Option<Context>,
        name: String,
    ) -> anyhow::Result<Result<SecretInfo, Error>> {
        let described = async {
            self.authorize_names(&cx, Access::Read, [name.as_str()])?;
            self.store()?
                .info(&name)
                .await
                .map(info)
                .map_err(Refusal::from)
        };
        let about = About {
            secret: Some(&name),
            ..About::default()
        };
        Ok(self.audited(&cx, "describe_secret", about, described).await)
    }

    async fn add_mapping(
        &self,
        cx: Option<Context>,
        entity: String,
        names: Vec<String>,
    ) -> anyhow::Result<Result<Vec<String>, Error>> {
        let about = About {
            entity: Some(&entity),
            ..About::default()
        };
        let result = self.mapping(&cx, Grantee::entity(&entity), names, MappingChange::Add);
        Ok(self.audited(&cx, "add_mapping", about, result).await)
    }

    async fn remove_mapping(
        &self,
        cx: Option<Context>,
        entity: String,
        names: Vec<String>,
    ) -> anyhow::Result<Result<Vec<String>, Error>> {
        let about = About {
            entity: Some(&entity),
            ..About::default()
        };
        let result = self.mapping(&cx, Grantee::entity(&entity), names, MappingChange::Remove);
        Ok(self.audited(&cx, "remove_mapping", about, result).await)
    }

    async fn list_mappings(
        &self,
        cx: Option<Context>,
        entity: String,
        after: Option<String>,
        limit: Option<u32>,
    ) -> anyhow::Result<Result<NamePage, Error>> {
        let listed = self.grants_page(&cx, Grantee::entity(&entity), after, limit);
        let about = About {
            entity: Some(&entity),
            ..About::default()
        };
        Ok(self.audited(&cx, "list_mappings", about, listed).await)
    }

    async fn status(&self, cx: Option<Context>) -> anyhow::Result<Result<StoreStatus, Error>> {
        let status = async {
            let scope = self.authorize(&cx, Access::Read)?;
            Ok(StoreStatus {
                backend_name: self.backend_name.clone(),
                subject_prefix: self.subject_prefix.clone(),
                server_xkey: self.backend.transit_public().unwrap_or_default(),
                sealed: self.backend.is_sealed(),
                nats_connected: self.nats.connection_state()
                    == async_nats::connection::State::Connected,
                secrets: self.backend.counts().0 as u64,
                mapped_entities: self.backend.counts().1 as u64,
                scope_prefix: scope.prefix,
                read_only: scope.read_only,
            })
        };
        Ok(self.audited(&cx, "status", About::default(), status).await)
    }
}

/// `admin@0.3.0`: 0.2.0's functions, and grants to wadm applications.
impl HandlerV3<Option<Context>> for AdminExports {
    async fn put_secret(
        &self,
        cx: Option<Context>,
        name: String,
        value: WitValue,
        expected_version: Option<u64>,
    ) -> anyhow::Result<Result<u64, Error>> {
        Handler::put_secret(self, cx, name, value, expected_version).await
    }

    async fn delete_secret(
        &self,
        cx: Option<Context>,
        name: String,
    ) -> anyhow::Result<Result<(), Error>> {
        Handler::delete_secret(self, cx, name).await
    }

    async fn list_secrets(
        &self,
        cx: Option<Context>,
        prefix: String,
        after: Option<String>,
        limit: Option<u32>,
    ) -> anyhow::Result<Result<SecretPage, Error>> {
        Handler::list_secrets(self, cx, prefix, after, limit).await
    }

    async fn describe_secret(
        &self,
        cx: Option<Context>,
        name: String,
    ) -> anyhow::Result<Result<SecretInfo, Error>> {
        Handler::describe_secret(self, cx, name).await
    }

    async fn add_mapping(
        &self,
        cx: Option<Context>,
        entity: String,
        names: Vec<String>,
    ) -> anyhow::Result<Result<Vec<String>, Error>> {
        Handler::add_mapping(self, cx, entity, names).await
    }

    async fn remove_mapping(
        &self,
        cx: Option<Context>,
        entity: String,
        names: Vec<String>,
    ) -> anyhow::Result<Result<Vec<String>, Error>> {
        Handler::remove_mapping(self, cx, entity, names).await
    }

    async fn list_mappings(
        &self,
        cx: Option<Context>,
        entity: String,
        after: Option<String>,
        limit: Option<u32>,
    ) -> anyhow::Result<Result<NamePage, Error>> {
        Handler::list_mappings(self, cx, entity, after, limit).await
    }

    async fn status(&self, cx: Option<Context>) -> anyhow::Result<Result<StoreStatus, Error>> {
        Handler::status(self, cx).await
    }

    async fn add_app_mapping(
        &self,
        cx: Option<Context>,
        application: String,
        names: Vec<String>,
    ) -> anyhow::Result<Result<Vec<String>, Error>> {
        Ok(self
            .app_mapping(cx, application, names, MappingChange::Add)
            .await)
    }

    async fn remove_app_mapping(
        &self,
        cx: Option<Context>,
        application: String,
        names: Vec<String>,
    ) -> anyhow::Result<Result<Vec<String>, Error>> {
        Ok(self
            .app_mapping(cx, application, names, MappingChange::Remove)
            .await)
    }

    async fn list_app_mappings(
        &self,
        cx: Option<Context>,
        application: String,
        after: Option<String>,
        limit: Option<u32>,
    ) -> anyhow::Result<Result<NamePage, Error>> {
        let about = about_application(&application);
        let listed = self.grants_page(&cx, Grantee::application(&application), after, limit);
        Ok(self.audited(&cx, "list_app_mappings", about, listed).await)
    }
}

/// Names the scope lets the caller see.
fn within(scope: &LinkScope, names: Vec<String>) -> Vec<String> {
    names
        .into_iter()
        .filter(|n| scope.allows_name(n).is_ok())
        .collect()
}

/// A page's size from the WIT `limit` (see [`page_limit`]).
fn wit_limit(limit: Option<u32>) -> Result<usize, Refusal> {
    page_limit(limit.map(u64::from)).map_err(|e| Refusal::invalid(e.to_string(), "invalid_limit"))
}

fn info(meta: SecretMeta) -> SecretInfo {
    SecretInfo {
        name: meta.name,
        version: meta.version,
        kind: match meta.kind {
            StoredKind::String => SecretKind::Text,
            StoredKind::Binary => SecretKind::Bytes,
            StoredKind::Legacy => SecretKind::Legacy,
        },
        created_at: meta.created_at,
        updated_at: meta.updated_at,
        key_id: meta.key_id,
    }
}

/// A WIT call refused: the error the component reads, and what was decided.
pub(crate) struct Refusal {
    pub error: Error,
    pub decision: Decision,
}

impl Refusal {
    /// An argument this door cannot use (the core never saw it).
    fn invalid(message: impl Into<String>, reason: &'static str) -> Self {
        Refusal {
            error: Error::InvalidArgument(message.into()),
            decision: Decision::refused(ErrorKind::Invalid, reason),
        }
    }
}

/// The core refused it: its WIT error and its own decision.
impl From<BackendError> for Refusal {
    fn from(err: BackendError) -> Self {
        let decision = Decision::of(&err);
        Refusal {
            error: wit_error(err),
            decision,
        }
    }
}

/// The link does not allow the call.
impl From<ScopeError> for Refusal {
    fn from(err: ScopeError) -> Self {
        Refusal {
            decision: Decision::refused(ErrorKind::Denied, err.code()),
            error: Error::Unauthorized(err.to_string()),
        }
    }
}

/// The one mapping from core errors to the WIT error variant: by kind.
pub(crate) fn wit_error(err: BackendError) -> Error {
    let message = err.to_string();
    match err.kind() {
        ErrorKind::Invalid => Error::InvalidArgument(message),
        ErrorKind::Denied => Error::Unauthorized(message),
        ErrorKind::NotFound => Error::NotFound(message),
        ErrorKind::Conflict => Error::VersionConflict(message),
        ErrorKind::Sealed => Error::Sealed(message),
        ErrorKind::Unavailable | ErrorKind::Internal => Error::Unavailable(message),
    }
}

/// What a call about `application` records of it: its name only if it is a valid one (the
/// argument is the caller's text).
fn about_application(application: &str) -> About<'_> {
    About {
        application: Some(application).filter(|a| Grantee::application(a).is_ok()),
        ..About::default()
    }
}
