//! The Piggy Bank front door: secrets for plain NATS services on `{prefix}.<application>.<name>`.
//!
//! A request's `method` header says what to do: `get` returns the value, `post` stores the
//! payload as a new version, `delete` removes every version. Every reply carries a `Status`
//! header (200; or an error's: 400, 403, 404, 409, 423 while sealed, 500, 503, see
//! [`ErrorKind::status`]); errors have the JSON body `{"error": "..."}`.
//! The reserved application `database` is never answered here: the sealed-mode operations own
//! those subjects. Refusing another application is the NATS server's job (permissions).
//!
//! The secret lives in the same store the wasmCloud protocol serves, but in a namespace of
//! its own that the protocol never serves to a component (`_api/<application>/<name>`): what
//! an application may reach is decided once, in [`access`] (its own names, what the operator
//! shared with it, read-only applications).
//!
//! Authorization is NATS's: an application may publish only on `{prefix}.<application>.>`
//! and receive replies only on its own inbox prefix (README, "Piggy Bank API"). The backend
//! trusts the subject, so these permissions are what keeps applications apart. The serve
//! loop answers a request of an application only in that application's reply namespaces
//! (`_INBOX.`, and `_INBOX_<application>.` when trusted: the door's classification,
//! `crate::reply_policy::Requester`), so that no application can have its stored bytes
//! delivered into another's inbox.

pub mod access;

use std::sync::Arc;

use async_nats::{HeaderMap, Message};
use futures::future::BoxFuture;
use zeroize::Zeroizing;

use crate::audit::AuditNote;
use crate::backend::{Backend, BackendError};
use crate::decision::Decision;
use crate::error::ErrorKind;
use crate::serve::{Class, Door, Endpoint, LoopRefusal, Reply};
use crate::store::envelope::SecretValue;

/// Default subject prefix of the API.
pub const DEFAULT_PREFIX: &str = "piggybank";
/// Applications that may not be named: `database` is where the store's own operations go.
pub const RESERVED_APPLICATIONS: &[&str] = &["database"];

/// Request and reply headers.
pub mod headers {
    /// `get`, `post` or `delete`.
    pub const METHOD: &str = "method";
    /// On `post`, optional: `string` (the payload must be UTF-8) or `binary`. Without it, a
    /// UTF-8 payload is stored as a string and any other payload as binary.
    pub const KIND: &str = "kind";
    /// On every reply: an HTTP-like status code.
    pub const STATUS: &str = "Status";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "get",
            Method::Post => "post",
            Method::Delete => "delete",
        }
    }
}

/// What a request asks for, once its subject and headers are understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    pub application: String,
    /// The name within the application (it may contain dots).
    pub name: String,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("application {0:?} is reserved")]
    Reserved(String),
    /// A `post` or `delete` of a name the application may only read.
    #[error("{0}")]
    ReadOnly(String),
    /// The core's error: its kind gives the status.
    /// The core refused it: its decision, and its message.
    #[error("{message}")]
    Core { decision: Decision, message: String },
}

impl ApiError {
    pub(crate) fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::Reserved(_) | ApiError::ReadOnly(_) => 403,
            ApiError::Core { decision, .. } => decision.kind().map_or(500, ErrorKind::status),
        }
    }

    /// What was decided: the core's own decision, or this door's for a request it could not
    /// use.
    pub(crate) fn decision(&self) -> Decision {
        match self {
            ApiError::BadRequest(_) => Decision::refused(ErrorKind::Invalid, "invalid_request"),
            ApiError::Reserved(_) => Decision::refused(ErrorKind::Denied, "reserved"),
            ApiError::ReadOnly(_) => Decision::refused(ErrorKind::Denied, "read_only"),
            ApiError::Core { decision, .. } => *decision,
        }
    }
}

/// The application a subject names: the token after `{prefix}.`, as sent (valid or not).
fn application<'a>(prefix: &str, subject: &'a str) -> Option<&'a str> {
    let rest = subject.strip_prefix(prefix)?.strip_prefix('.')?;
    Some(
        rest.split_once('.')
            .map_or(rest, |(application, _)| application),
    )
}

/// Understand a request: `{prefix}.<application>.<name>` (the name may contain dots) and
/// its `method` header. Pure, so every rule is unit-tested.
pub fn parse(
    prefix: &str,
    subject: &str,
    headers: Option<&HeaderMap>,
) -> Result<Request, ApiError> {
    let bad = |why: &str| ApiError::BadRequest(why.to_string());
    let rest = subject
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('.'))
        .ok_or_else(|| bad("subject is not under the API's prefix"))?;
    // Checked first, as `classify` does: the reserved subjects are not the API's at all.
    let application = rest
        .split_once('.')
        .map_or(rest, |(application, _)| application);
    if RESERVED_APPLICATIONS.contains(&application) {
        return Err(ApiError::Reserved(application.to_string()));
    }
    let (application, name) = rest
        .split_once('.')
        .ok_or_else(|| bad("expected <prefix>.<application>.<name>; the name is empty"))?;
    if !access::valid_application(application) {
        return Err(bad("the application must be letters, digits, '-' or '_'"));
    }
    if name.is_empty() {
        return Err(bad("the name is empty"));
    }
    let method = match headers
        .and_then(|h| h.get(headers::METHOD))
        .map(|v| v.as_str())
    {
        Some(m) if m.eq_ignore_ascii_case("get") => Method::Get,
        Some(m) if m.eq_ignore_ascii_case("post") => Method::Post,
        Some(m) if m.eq_ignore_ascii_case("delete") => Method::Delete,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "unknown method {other:?}: use get, post or delete"
            )))
        }
        None => return Err(bad("missing header `method`: get, post or delete")),
    };
    Ok(Request {
        method,
        application: application.to_string(),
        name: name.to_string(),
    })
}

/// The Piggy Bank API door of `backend`, on `{prefix}.>` in `{queue_group}.piggybank`, with
/// what each application may reach (`access`).
pub(crate) fn endpoint(
    backend: Arc<Backend>,
    prefix: &str,
    queue_group: &str,
    access: access::ApiAccess,
) -> Endpoint {
    let door = Arc::new(ApiDoor {
        backend,
        prefix: prefix.to_string(),
        access,
    });
    let group = format!("{queue_group}.piggybank");
    Endpoint::new("api", format!("{prefix}.>"), Some(group), door)
}

struct ApiDoor {
    backend: Arc<Backend>,
    prefix: String,
    access: access::ApiAccess,
}

impl Door for ApiDoor {
    /// A request that does not parse is answered (with its error) by the handler.
    type Op = Result<Request, ApiError>;

    fn classify(&self, msg: &Message) -> Option<(Class, Self::Op)> {
        classify(&self.prefix, &self.access, msg)
    }

    fn handle(
        self: Arc<Self>,
        request: Self::Op,
        msg: Message,
    ) -> BoxFuture<'static, Option<Reply>> {
        Box::pin(async move { Some(handle(&self.backend, &self.access, request, &msg).await) })
    }

    fn refuse(&self, _: &Self::Op, _: &Message, refused: &LoopRefusal) -> Reply {
        error(refused.code(), refused)
    }

    fn too_large(reply: &Reply, message: String) -> Reply {
        too_large(reply, message)
    }
}

/// Parse and classify a request, once: never the reserved applications' (no reply); a
/// `post` carries a value; and the request comes from the application its subject names, so
/// that it is answered only in that application's reply namespaces. Except a request of a
/// read-only application ([`access::ApiAccess::is_read_only`]) that parses: what it returns
/// only admins wrote (or it is an error), and every service reads it, each from its own
/// inbox.
fn classify(
    prefix: &str,
    access: &access::ApiAccess,
    msg: &Message,
) -> Option<(Class, Result<Request, ApiError>)> {
    let subject = msg.subject.as_str();
    let request = parse(prefix, subject, msg.headers.as_ref());
    if let Err(ApiError::Reserved(_)) = request {
        return None;
    }
    let application = application(prefix, subject).unwrap_or_default();
    let class = match &request {
        Ok(r) if access.is_read_only(&r.application) => Class::open().asked_by_any_application(),
        _ => Class::open().asked_by(application),
    };
    // By the header alone, as the handler will read it: a `post` whose subject is refused
    // still carries its value.
    let post = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(headers::METHOD))
        .is_some_and(|m| m.as_str().eq_ignore_ascii_case(Method::Post.as_str()));
    Some((if post { class.with_value() } else { class }, request))
}

/// Answer one parsed request.
async fn handle(
    backend: &Backend,
    access: &access::ApiAccess,
    request: Result<Request, ApiError>,
    msg: &Message,
) -> Reply {
    let mut note = AuditNote::default();
    let target = request.and_then(|request| {
        note.operation = Some(request.method.as_str().to_string());
        note.application = Some(request.application.clone());
        let target = access.resolve(&request.application, &request.name);
        // Named on the record only if it is a name (the subject is the requester's text).
        if crate::store::validate_name(&target.key).is_ok() {
            note.secret = Some(target.key.clone());
        }
        target.permits(request.method)?;
        Ok((request.method, target))
    });
    match respond(backend, target, msg).await {
        Ok((payload, status)) => reply(status, payload).audited(note.allowed()),
        Err(e) => error_reply(&e, note),
    }
}

async fn respond(
    backend: &Backend,
    target: Result<(Method, access::Target), ApiError>,
    msg: &Message,
) -> Result<(Vec<u8>, u16), ApiError> {
    let (method, target) = target?;
    // Every method reads or changes the store: none is answered while sealed.
    let store = backend.unsealed().map_err(api_error)?;
    match method {
        Method::Get => {
            let value = store.value(&target.key).await.map_err(api_error)?;
            Ok((value.as_bytes().to_vec(), 200))
        }
        Method::Post => {
            let kind = msg
                .headers
                .as_ref()
                .and_then(|h| h.get(headers::KIND))
                .map(|v| v.as_str().to_ascii_lowercase());
            let value = posted_value(kind.as_deref(), &msg.payload)?;
            let version = store
                .put(&target.key, &value, None)
                .await
                .map_err(api_error)?;
            Ok((format!(r#"{{"version":{version}}}"#).into_bytes(), 200))
        }
        Method::Delete => {
            store.delete(&target.key).await.map_err(api_error)?;
            Ok((Vec::new(), 200))
        }
    }
}

/// The value a `post` stores: the payload, byte-exact. Without a `kind` header, a UTF-8
/// payload is a string and any other payload is binary (Piggy Bank's clients send the value
/// and nothing else); `kind` overrides that, and `kind: string` requires UTF-8.
fn posted_value(kind: Option<&str>, payload: &[u8]) -> Result<SecretValue, ApiError> {
    let text = |payload: &[u8]| {
        std::str::from_utf8(payload).map(|t| SecretValue::String(Zeroizing::new(t.to_string())))
    };
    let binary = |payload: &[u8]| SecretValue::Binary(Zeroizing::new(payload.to_vec()));
    match kind {
        None => Ok(text(payload).unwrap_or_else(|_| binary(payload))),
        Some("string") => text(payload).map_err(|_| {
            ApiError::BadRequest("kind is string but the payload is not UTF-8".into())
        }),
        Some("binary") => Ok(binary(payload)),
        Some(other) => Err(ApiError::BadRequest(format!(
            "unknown kind {other:?}: use string or binary"
        ))),
    }
}

/// An API error: its status, `{"error": ...}`, and what was decided.
pub(crate) fn error_reply(e: &ApiError, note: AuditNote) -> Reply {
    error(e.status(), e).audited(note.decided(e.decision()))
}

/// The error reply of the API and the database operations: `Status` and `{"error": ...}`.
pub(crate) fn error(status: u16, message: impl std::fmt::Display) -> Reply {
    let body = serde_json::json!({ "error": message.to_string() }).to_string();
    reply(status, body.into_bytes())
}

pub(crate) fn reply(status: u16, payload: Vec<u8>) -> Reply {
    let mut h = HeaderMap::new();
    h.insert(headers::STATUS, status.to_string().as_str());
    Reply::with_headers(h, payload)
}

/// The API's error for a reply too large to send (database operations included): `413`.
pub fn too_large(_: &Reply, message: String) -> Reply {
    error(413, message)
}

/// The one mapping from core errors to API errors: by kind. Messages name keys, never
/// values.
pub(crate) fn api_error(e: BackendError) -> ApiError {
    ApiError::Core {
        decision: Decision::of(&e),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_method(m: &str) -> Option<HeaderMap> {
        let mut h = HeaderMap::new();
        h.insert(headers::METHOD, m);
        Some(h)
    }

    #[test]
    fn subjects_name_an_application_and_a_name_in_it() {
        let r = parse(
            "piggybank",
            "piggybank.billing.db.password",
            with_method("GET").as_ref(),
        );
        assert_eq!(
            r.unwrap(),
            Request {
                method: Method::Get,
                application: "billing".into(),
                name: "db.password".into()
            }
        );
        let r = parse(
            "acme.pb",
            "acme.pb.shop.token",
            with_method("post").as_ref(),
        )
        .unwrap();
        assert_eq!(
            (r.method, r.application.as_str(), r.name.as_str()),
            (Method::Post, "shop", "token")
        );
    }

    #[test]
    fn a_post_stores_any_payload_and_infers_its_kind_unless_told() {
        let kind = |v: &SecretValue| matches!(v, SecretValue::Binary(_));
        let not_utf8 = [0xff, 0x00, 0xfe, b'a'];
        let v = posted_value(None, &not_utf8).unwrap();
        assert!(kind(&v) && v.as_bytes() == not_utf8);
        let v = posted_value(None, "sé".as_bytes()).unwrap();
        assert!(!kind(&v) && v.as_bytes() == "sé".as_bytes());
        assert!(kind(&posted_value(Some("binary"), b"text").unwrap()));
        assert!(!kind(&posted_value(Some("string"), b"text").unwrap()));
        let err = posted_value(Some("string"), &not_utf8)
            .map(|_| ())
            .unwrap_err();
        assert_eq!(err.status(), 400);
        assert_eq!(
            posted_value(Some("json"), b"{}")
                .map(|_| ())
                .unwrap_err()
                .status(),
            400
        );
        assert!(
            posted_value(None, b"").is_ok(),
            "an empty value is a valid string"
        );
    }

    fn message(subject: &str, method: Option<&str>) -> Message {
        Message {
            subject: subject.into(),
            reply: None,
            payload: Default::default(),
            headers: method.and_then(with_method),
            status: None,
            description: None,
            length: 0,
        }
    }

    fn classify(prefix: &str, msg: &Message) -> Option<Class> {
        super::classify(prefix, &access::ApiAccess::default(), msg).map(|(class, _)| class)
    }

    #[test]
    fn a_request_is_classified_by_its_application_and_method() {
        use crate::serve::{Body, Requester};
        let class = classify("piggybank", &message("piggybank.shop.db", Some("POST"))).unwrap();
        assert_eq!(class.requester, Requester::Application("shop".into()));
        assert_eq!(class.body, Body::Value);
        for method in [Some("get"), Some("delete"), Some("nope"), None] {
            let class = classify("piggybank", &message("piggybank.shop.db", method)).unwrap();
            assert_eq!(class.body, Body::Small, "{method:?}");
        }
        // A malformed subject is answered (400) only where an application may read.
        let class = classify("piggybank", &message("piggybank.shop", Some("get"))).unwrap();
        assert_eq!(class.requester, Requester::Application("shop".into()));
        let class = classify("piggybank", &message("piggybank", Some("get"))).unwrap();
        assert_eq!(class.requester, Requester::Application(String::new()));
        // The database operations own the reserved application's subjects.
        for subject in ["piggybank.database.status", "piggybank.database"] {
            assert!(
                classify("piggybank", &message(subject, None)).is_none(),
                "{subject}"
            );
        }
    }

    #[test]
    fn a_read_only_applications_requests_are_answered_like_a_hosts() {
        use crate::serve::Requester;
        let access = access::ApiAccess::new(&[], &["global".to_string()]).unwrap();
        let class = |subject: &str, method: &str| {
            super::classify("piggybank", &access, &message(subject, Some(method)))
                .unwrap()
                .0
                .requester
        };
        for method in ["get", "post", "delete"] {
            assert_eq!(
                class("piggybank.global.ca", method),
                Requester::AnyApplication
            );
        }
        // A request that does not parse is answered as its application's.
        assert_eq!(
            class("piggybank.global.ca", "nope"),
            Requester::Application("global".into())
        );
        assert_eq!(
            class("piggybank.shop.ca", "get"),
            Requester::Application("shop".into())
        );
    }

    #[test]
    fn bad_requests_are_refused_with_their_status() {
        let get = with_method("get");
        for (subject, headers, status) in [
            ("piggybank.billing", get.as_ref(), 400),
            ("piggybank.billing.", get.as_ref(), 400),
            ("piggybank.bil*ing.x", get.as_ref(), 400),
            ("other.billing.x", get.as_ref(), 400),
            ("piggybank.database.x", get.as_ref(), 403),
            ("piggybank.database", get.as_ref(), 403),
            ("piggybank.billing.x", None, 400),
            ("piggybank.billing.x", with_method("put").as_ref(), 400),
        ] {
            let err = parse("piggybank", subject, headers).expect_err(subject);
            assert_eq!(err.status(), status, "{subject}: {err}");
        }
    }
}
