//! An operator's component for piggybank: provisions an app's secrets over HTTP.
//!
//! It imports `piggybank:secrets/admin` (linked to the piggybank provider, whose link config
//! limits it to one prefix) and exports `wasi:http/incoming-handler`:
//!
//! - `GET  /status`                              the store's status and this link's scope
//! - `GET  /secrets?prefix=shop/`                metadata of the secrets under a prefix, one
//!   page at a time: `&limit=N` (default 1000, at most 2000) and `&after=<next>` for the page
//!   after the one whose `next` that was
//! - `POST /provision?entity=M...&names=a,b`     create each missing secret with a random
//!   value (32 bytes, hex) and map them all to the entity; existing values are kept
//! - `POST /revoke?entity=M...&names=a,b`        remove those mappings
//!
//! No response ever contains a secret value: generated values go straight into piggybank.

use serde_json::{json, Value};
use wasi::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wit_bindgen::generate!({ world: "admin-component", path: "wit", generate_all });

// `secrets0_2_0`: the vendored package also holds admin@0.3.0, so bindings carry versions.
use piggybank::secrets0_2_0::admin::{self, Error, SecretKind, SecretValue};

struct Component;

wasi::http::proxy::export!(Component);

impl wasi::exports::http::incoming_handler::Guest for Component {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let (status, body) = route(&request);
        respond(out, status, &body);
    }
}

fn route(request: &IncomingRequest) -> (u16, Value) {
    let target = request.path_with_query().unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((target.as_str(), ""));
    let params = match Params::parse(query) {
        Ok(params) => params,
        Err(why) => return (400, json!({ "error": why })),
    };
    let result = match (request.method(), path) {
        (Method::Get, "/status") => status(),
        (Method::Get, "/secrets") => params.limit().and_then(|limit| {
            list(
                params.get("prefix").unwrap_or_default(),
                params.get("after"),
                limit,
            )
        }),
        (Method::Post, "/provision") => params
            .entity_and_names()
            .and_then(|(e, n)| provision(e, &n)),
        (Method::Post, "/revoke") => params.entity_and_names().and_then(|(e, n)| revoke(e, &n)),
        _ => return (404, json!({ "error": "no such route" })),
    };
    match result {
        Ok(body) => (200, body),
        Err((status, why)) => (status, json!({ "error": why })),
    }
}

type Outcome = Result<Value, (u16, String)>;

fn status() -> Outcome {
    let s = admin::status().map_err(failure)?;
    Ok(json!({
        "backend_name": s.backend_name,
        "subject_prefix": s.subject_prefix,
        "server_xkey": s.server_xkey,
        "sealed": s.sealed,
        "nats_connected": s.nats_connected,
        "secrets": s.secrets,
        "mapped_entities": s.mapped_entities,
        "scope_prefix": s.scope_prefix,
        "read_only": s.read_only,
    }))
}

fn list(prefix: &str, after: Option<&str>, limit: Option<u32>) -> Outcome {
    let page = admin::list_secrets(prefix, after, limit).map_err(failure)?;
    let secrets: Vec<Value> = page
        .secrets
        .into_iter()
        .map(|s| {
            json!({
                "name": s.name,
                "version": s.version,
                "kind": match s.kind {
                    SecretKind::Text => "text",
                    SecretKind::Bytes => "bytes",
                    SecretKind::Legacy => "legacy",
                },
                "created_at": s.created_at,
                "updated_at": s.updated_at,
            })
        })
        .collect();
    Ok(json!({ "secrets": secrets, "next": page.next }))
}

/// Create what is missing (compare-and-set on "does not exist"), then map everything.
fn provision(entity: &str, names: &[String]) -> Outcome {
    let mut created = Vec::new();
    let mut kept = Vec::new();
    for name in names {
        let value = SecretValue::Text(random_hex(32));
        match admin::put_secret(name, &value, Some(0)) {
            Ok(version) => created.push(json!({ "name": name, "version": version })),
            Err(Error::VersionConflict(_)) => kept.push(name.clone()),
            Err(err) => return Err(failure(err)),
        }
    }
    let mapped = admin::add_mapping(entity, names).map_err(failure)?;
    Ok(json!({ "created": created, "kept": kept, "entity": entity, "mapped": mapped }))
}

fn revoke(entity: &str, names: &[String]) -> Outcome {
    let left = admin::remove_mapping(entity, names).map_err(failure)?;
    Ok(json!({ "entity": entity, "mapped": left }))
}

fn random_hex(len: u64) -> String {
    wasi::random::random::get_random_bytes(len)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The admin interface's typed error, as an HTTP status and a message.
fn failure(err: Error) -> (u16, String) {
    match err {
        Error::Unauthorized(m) => (403, m),
        Error::InvalidArgument(m) => (400, m),
        Error::NotFound(m) => (404, m),
        Error::VersionConflict(m) => (409, m),
        Error::Sealed(m) => (423, m),
        Error::Unavailable(m) => (503, m),
    }
}

/// Query parameters. Secret names and entity keys need no percent-encoding, so none is decoded.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(query: &str) -> Result<Self, String> {
        if query.contains('%') {
            return Err("percent-encoded query values are not supported".into());
        }
        let pairs = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (p.to_string(), String::new()),
            })
            .collect();
        Ok(Params(pairs))
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `limit=N`, when given: a page size.
    fn limit(&self) -> Result<Option<u32>, (u16, String)> {
        self.get("limit")
            .map(|l| {
                l.parse()
                    .map_err(|_| (400, format!("limit must be a number, not {l:?}")))
            })
            .transpose()
    }

    fn entity_and_names(&self) -> Result<(&str, Vec<String>), (u16, String)> {
        let entity = self.get("entity").filter(|e| !e.is_empty()).ok_or((
            400,
            "missing entity=<component or provider public key>".to_string(),
        ))?;
        let names: Vec<String> = self
            .get("names")
            .unwrap_or_default()
            .split(',')
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .collect();
        if names.is_empty() {
            return Err((400, "missing names=<name>[,<name>...]".into()));
        }
        Ok((entity, names))
    }
}

fn respond(out: ResponseOutparam, status: u16, body: &Value) {
    let headers = Fields::new();
    let _ = headers.set("content-type", &[b"application/json".to_vec()]);
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let Ok(outgoing) = response.body() else {
        return;
    };
    ResponseOutparam::set(out, Ok(response));
    let bytes = body.to_string().into_bytes();
    if let Ok(stream) = outgoing.write() {
        // A blocking write takes at most 4096 bytes at a time.
        for chunk in bytes.chunks(4096) {
            if stream.blocking_write_and_flush(chunk).is_err() {
                break;
            }
        }
    }
    let _ = OutgoingBody::finish(outgoing, None);
}
