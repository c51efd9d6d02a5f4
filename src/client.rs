//! A client for piggybank's admin operations, used by the CLI and the tests.
//!
//! Values are sealed to the backend's transit key from a one-time key, exactly as the
//! sample's client does, so it also works against the sample backend for the operations the
//! sample has.
//!
//! With an [`AdminSigner`] ([`AdminClient::with_signer`]), every request it sends carries
//! the admin signature headers (`crate::admin_auth`), added in one place
//! (`AdminClient::request`), so no operation can be sent unsigned by mistake.

use std::collections::BTreeSet;

use async_nats::jetstream;
use async_nats::{Client, HeaderMap};
use nkeys::XKey;
use zeroize::Zeroizing;

use crate::admin_auth::AdminSigner;
use crate::config::{self, headers, ops};
use crate::keys::Keyring;
use crate::protocol::read_secret::{ReadSecretRequest, SealedValue};
use crate::protocol::wire::{
    AdminError, DeleteSecretRequest, GetMappingsRequest, ListSecretsRequest, ListSecretsResponse,
    MappingsResponse, PutSecretError, PutSecretRequest, PutSecretResponse, REPLY_TOO_LARGE,
};
use crate::store::envelope::{self, SecretValue};
use crate::store::page::PAGE_DEFAULT;
use crate::store::SecretMeta;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("request to {subject} failed: {reason}")]
    Request { subject: String, reason: String },
    #[error(
        "no piggybank backend answers on {0}: is it running, and are -n/--name, \
         -s/--subject-base and --secrets-api-version the ones it was started with?"
    )]
    NoBackend(String),
    #[error("backend refused ({code}): {message}")]
    Admin { code: u16, message: String },
    #[error("put_secret refused: {0}")]
    Put(PutSecretError),
    #[error("unexpected reply from backend: {0}")]
    Decode(String),
    #[error("invalid transit key: {0}")]
    TransitKey(String),
    #[error("secret {0:?} not found")]
    NotFound(String),
    #[error("cannot read secret: {0}")]
    Read(String),
    #[error("the backend's pages do not add up: {0}")]
    Paging(String),
    /// (Not a `source`: its text is in the message once.)
    #[error("read_secret reply not believed: {0}")]
    SealedReply(crate::protocol::read_secret::SealedValueError),
}

impl ClientError {
    /// Whether the backend refused for want of a valid admin signature: 403 on the admin
    /// operations; `put_secret` answers the sample's `InvalidHeaders`, which a request
    /// this client built can only get for its signature headers.
    pub fn is_admin_refusal(&self) -> bool {
        matches!(self, ClientError::Admin { code: 403, .. })
            || matches!(self, ClientError::Put(PutSecretError::InvalidHeaders))
    }
}

/// How long a pinned `read_secret` waits for an answer sealed from the pinned key.
const PINNED_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long an error answer must stand alone to be believed (anyone can forge one).
const FORGED_ERROR_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// The backend's refusal in an admin reply (`Nats-Service-Error-Code`), if it is one.
fn admin_error(msg: &async_nats::Message) -> Option<ClientError> {
    let code = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(headers::SERVICE_ERROR_CODE))?;
    let parsed: Option<AdminError> = serde_json::from_slice(&msg.payload).ok();
    Some(ClientError::Admin {
        code: code.as_str().parse().unwrap_or(500),
        message: parsed.map_or_else(
            || String::from_utf8_lossy(&msg.payload).into_owned(),
            |p| p.error,
        ),
    })
}

#[derive(Clone)]
pub struct AdminClient {
    nats: Client,
    prefix: String,
    /// Signs every request when set (backends run with `--admin-keys` require it).
    signer: Option<AdminSigner>,
}

impl AdminClient {
    /// `subject_base`, `api_version`, `name` as the backend was started with.
    pub fn new(nats: Client, subject_base: &str, api_version: &str, name: &str) -> Self {
        Self {
            nats,
            prefix: config::subject_prefix(subject_base, api_version, name),
            signer: None,
        }
    }

    /// Sign every request with `signer` (`None`: send them unsigned).
    pub fn with_signer(mut self, signer: Option<AdminSigner>) -> Self {
        self.signer = signer;
        self
    }

    fn subject(&self, op: &str) -> String {
        format!("{}.{op}", self.prefix)
    }

    async fn request(
        &self,
        subject: String,
        headers: Option<HeaderMap>,
        body: Vec<u8>,
    ) -> Result<async_nats::Message, ClientError> {
        let sent = signed_request(&self.nats, self.signer.as_ref(), &subject, headers, body).await;
        let msg = sent.map_err(|e| match e.kind() {
            async_nats::RequestErrorKind::NoResponders => ClientError::NoBackend(subject.clone()),
            _ => ClientError::Request {
                subject,
                reason: e.to_string(),
            },
        })?;
        match admin_error(&msg) {
            Some(refused) => Err(refused),
            None => Ok(msg),
        }
    }

    async fn expect_ok(&self, subject: String, body: Vec<u8>) -> Result<(), ClientError> {
        let msg = self.request(subject, None, body).await?;
        if msg.payload.as_ref() == b"ok" {
            Ok(())
        } else {
            Err(ClientError::Decode(
                String::from_utf8_lossy(&msg.payload).into_owned(),
            ))
        }
    }

    /// The backend's transit public key.
    pub async fn server_xkey(&self) -> Result<String, ClientError> {
        let msg = self
            .request(self.subject(ops::SERVER_XKEY), None, Vec::new())
            .await?;
        String::from_utf8(msg.payload.to_vec()).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// Store a value; `expected_version`: compare-and-set (`Some(0)`: create only).
    /// `transit`: the backend's transit key; fetched with `server_xkey` when `None`.
    pub async fn put_secret(
        &self,
        name: &str,
        value: SecretValue,
        expected_version: Option<u64>,
        transit: Option<&XKey>,
    ) -> Result<u64, ClientError> {
        let fetched;
        let transit = match transit {
            Some(t) => t,
            None => {
                fetched = XKey::from_public_key(&self.server_xkey().await?)
                    .map_err(|e| ClientError::TransitKey(e.to_string()))?;
                &fetched
            }
        };
        let mut request = PutSecretRequest::default();
        request.key = name.to_string();
        request.version = expected_version.map(|v| v.to_string()).unwrap_or_default();
        match value {
            SecretValue::String(s) => request.string_secret = Some(s.as_str().to_owned()),
            SecretValue::Binary(b) => request.binary_secret = Some(b.to_vec()),
        }
        let body = Zeroizing::new(
            serde_json::to_vec(&request).map_err(|e| ClientError::Decode(e.to_string()))?,
        );
        let one_time = XKey::new();
        let sealed = one_time
            .seal(&body, transit)
            .map_err(|e| ClientError::TransitKey(e.to_string()))?;
        let mut h = HeaderMap::new();
        h.insert(headers::WASMCLOUD_HOST_XKEY, one_time.public_key().as_str());
        let msg = self
            .request(self.subject(ops::PUT_SECRET), Some(h), sealed)
            .await?;
        let response: PutSecretResponse =
            serde_json::from_slice(&msg.payload).map_err(|e| ClientError::Decode(e.to_string()))?;
        match response.error {
            Some(e) => Err(ClientError::Put(e)),
            None => Ok(response.revision),
        }
    }

    /// Read `name` (at `version`; the latest when `None`) through the backend: the value
    /// comes back sealed to a one-time xkey made here for this request, which never leaves
    /// this process (`crate::protocol::read_secret`). With `pin` (the backend's transit public
    /// key), only a reply sealed from that key is believed.
    pub async fn read_secret(
        &self,
        name: &str,
        version: Option<u64>,
        pin: Option<&str>,
    ) -> Result<(u64, SecretValue), ClientError> {
        let body = serde_json::to_vec(&ReadSecretRequest {
            key: name.to_string(),
            version,
        })
        .map_err(|e| ClientError::Decode(e.to_string()))?;
        let one_time = XKey::new();
        let mut h = HeaderMap::new();
        h.insert(headers::REQUESTER_XKEY, one_time.public_key().as_str());
        let subject = self.subject(ops::READ_SECRET);
        let open = |msg: &async_nats::Message| {
            SealedValue {
                headers: msg.headers.as_ref(),
                body: &msg.payload,
            }
            .open(&one_time, pin, name, version)
            .map_err(ClientError::SealedReply)
        };
        if pin.is_none() {
            // Unpinned, the first answer is as good as any: anyone may answer first.
            return open(&self.request(subject, Some(h), body).await?);
        }
        self.pinned_read(subject, h, body, open).await
    }

    /// A pinned `read_secret`: anyone on the bus may answer first, with a value sealed from
    /// a key of its own or an error, so answers are read until one opens under the pin. An
    /// error (or "no responders") is believed only if no such value comes within
    /// [`FORGED_ERROR_GRACE`] of it; an answer the pin refuses is skipped.
    async fn pinned_read(
        &self,
        subject: String,
        mut headers: HeaderMap,
        body: Vec<u8>,
        open: impl Fn(&async_nats::Message) -> Result<(u64, SecretValue), ClientError>,
    ) -> Result<(u64, SecretValue), ClientError> {
        use futures::StreamExt as _;
        let failed = |reason: String| ClientError::Request {
            subject: subject.clone(),
            reason,
        };
        let inbox = self.nats.new_inbox();
        let mut replies = self
            .nats
            .subscribe(inbox.clone())
            .await
            .map_err(|e| failed(e.to_string()))?;
        if let Some(signer) = &self.signer {
            signer.sign_into(&subject, &body, &mut headers);
        }
        self.nats
            .publish_with_reply_and_headers(subject.clone(), inbox, headers, body.into())
            .await
            .map_err(|e| failed(e.to_string()))?;
        self.nats.flush().await.map_err(|e| failed(e.to_string()))?;
        let mut deadline = tokio::time::Instant::now() + PINNED_READ_TIMEOUT;
        let mut believed_if_alone: Option<ClientError> = None;
        let mut refused: Option<ClientError> = None;
        while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, replies.next()).await {
            let error = if msg.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
                Some(ClientError::NoBackend(subject.clone()))
            } else {
                admin_error(&msg)
            };
            if let Some(error) = error {
                believed_if_alone.get_or_insert(error);
                deadline = deadline.min(tokio::time::Instant::now() + FORGED_ERROR_GRACE);
                continue;
            }
            match open(&msg) {
                Ok(read) => return Ok(read),
                Err(e) => {
                    refused.get_or_insert(e);
                }
            }
        }
        Err(believed_if_alone
            .or(refused)
            .unwrap_or_else(|| failed("no answer sealed from the pinned transit key".into())))
    }

    pub async fn delete_secret(&self, name: &str) -> Result<(), ClientError> {
        let body = serde_json::to_vec(&DeleteSecretRequest { key: name.into() })
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        self.expect_ok(self.subject(ops::DELETE_SECRET), body).await
    }

    /// One page of `list_secrets` (see [`ListSecretsRequest`]): names starting with `prefix`,
    /// strictly after `after`, at most `limit` (the backend's default when `None`).
    pub async fn list_secrets_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: Option<u64>,
    ) -> Result<ListSecretsResponse, ClientError> {
        let body = serde_json::to_vec(&ListSecretsRequest {
            prefix: prefix.into(),
            limit,
            after: after.map(str::to_string),
        })
        .map_err(|e| ClientError::Decode(e.to_string()))?;
        let msg = self
            .request(self.subject(ops::LIST_SECRETS), None, body)
            .await?;
        serde_json::from_slice(&msg.payload).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// Metadata of every secret whose name starts with `prefix`, in name order: every page.
    pub async fn list_secrets(&self, prefix: &str) -> Result<Vec<SecretMeta>, ClientError> {
        all_pages(|after, limit| async move {
            let page = self
                .list_secrets_page(prefix, after.as_deref(), limit)
                .await?;
            Ok((page.secrets, page.next, |m: &SecretMeta| m.name.clone()))
        })
        .await
    }

    pub async fn add_mapping(
        &self,
        entity: &str,
        names: &BTreeSet<String>,
    ) -> Result<(), ClientError> {
        let body = serde_json::to_vec(names).map_err(|e| ClientError::Decode(e.to_string()))?;
        let subject = format!("{}.{entity}", self.subject(ops::ADD_MAPPING));
        self.expect_ok(subject, body).await
    }

    pub async fn remove_mapping(
        &self,
        entity: &str,
        names: &BTreeSet<String>,
    ) -> Result<(), ClientError> {
        let body = serde_json::to_vec(names).map_err(|e| ClientError::Decode(e.to_string()))?;
        let subject = format!("{}.{entity}", self.subject(ops::REMOVE_MAPPING));
        self.expect_ok(subject, body).await
    }

    /// Grant `names` to the wadm application `application` (any entity a host says is part
    /// of it may read them).
    pub async fn add_app_mapping(
        &self,
        application: &str,
        names: &BTreeSet<String>,
    ) -> Result<(), ClientError> {
        let body = serde_json::to_vec(names).map_err(|e| ClientError::Decode(e.to_string()))?;
        let subject = format!("{}.{application}", self.subject(ops::ADD_APP_MAPPING));
        self.expect_ok(subject, body).await
    }

    pub async fn remove_app_mapping(
        &self,
        application: &str,
        names: &BTreeSet<String>,
    ) -> Result<(), ClientError> {
        let body = serde_json::to_vec(names).map_err(|e| ClientError::Decode(e.to_string()))?;
        let subject = format!("{}.{application}", self.subject(ops::REMOVE_APP_MAPPING));
        self.expect_ok(subject, body).await
    }

    /// Every name granted to the application, in name order: every page.
    pub async fn get_app_mappings(&self, application: &str) -> Result<Vec<String>, ClientError> {
        let subject = format!("{}.{application}", self.subject(ops::GET_APP_MAPPINGS));
        all_pages(|after, limit| {
            let subject = subject.clone();
            async move {
                let page = self.grants_page(subject, after.as_deref(), limit).await?;
                Ok((page.secrets, page.next, String::clone))
            }
        })
        .await
    }

    /// One page of the names `entity` may read, strictly after `after`, at most `limit`.
    pub async fn get_mappings_page(
        &self,
        entity: &str,
        after: Option<&str>,
        limit: Option<u64>,
    ) -> Result<MappingsResponse, ClientError> {
        let subject = format!("{}.{entity}", self.subject(ops::GET_MAPPINGS));
        self.grants_page(subject, after, limit).await
    }

    /// One page of a `get_mappings` or `get_app_mappings` subject.
    async fn grants_page(
        &self,
        subject: String,
        after: Option<&str>,
        limit: Option<u64>,
    ) -> Result<MappingsResponse, ClientError> {
        // The first page with the default limit is asked with an empty body, as the sample-era
        // client did, so this works against backends that take no body.
        let body = if after.is_none() && limit.is_none() {
            Vec::new()
        } else {
            serde_json::to_vec(&GetMappingsRequest {
                prefix: String::new(),
                limit,
                after: after.map(str::to_string),
            })
            .map_err(|e| ClientError::Decode(e.to_string()))?
        };
        let msg = self.request(subject, None, body).await?;
        serde_json::from_slice(&msg.payload).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// Every name `entity` may read, in name order: every page.
    pub async fn get_mappings(&self, entity: &str) -> Result<Vec<String>, ClientError> {
        all_pages(|after, limit| async move {
            let page = self
                .get_mappings_page(entity, after.as_deref(), limit)
                .await?;
            Ok((page.secrets, page.next, String::clone))
        })
        .await
    }
}

/// Fetch every page of a listing. `fetch(after, limit)` returns one page, its `next` cursor
/// and how to read an entry's name. A reply too large for the connection (413, a server with
/// a small max payload) is asked again with half the limit; a cursor that does not move
/// forward is an error rather than a loop.
async fn all_pages<T, N, F, Fut>(fetch: F) -> Result<Vec<T>, ClientError>
where
    N: Fn(&T) -> String,
    F: Fn(Option<String>, Option<u64>) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, Option<String>, N), ClientError>>,
{
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    let mut limit: Option<u64> = None;
    loop {
        let (items, next, name) = match fetch(after.clone(), limit).await {
            Ok(page) => page,
            Err(ClientError::Admin {
                code: REPLY_TOO_LARGE,
                message,
            }) => {
                let current = limit.unwrap_or(PAGE_DEFAULT as u64);
                if current <= 1 {
                    return Err(ClientError::Admin {
                        code: REPLY_TOO_LARGE,
                        message,
                    });
                }
                limit = Some(current / 2);
                continue;
            }
            Err(e) => return Err(e),
        };
        let Some(next) = next else {
            all.extend(items);
            return Ok(all);
        };
        // The cursor must move forward and be the page's last name, or paging would loop.
        let last = items.last().map(&name);
        if last.as_deref() != Some(next.as_str()) || after.as_ref().is_some_and(|a| next <= *a) {
            return Err(ClientError::Paging(format!(
                "cursor {next:?} after {after:?} does not follow the page it ends"
            )));
        }
        all.extend(items);
        after = Some(next);
    }
}

/// One request on `subject`, signed by `signer` when given (the admin signature headers are
/// added to `headers`): the one way admin requests leave a client.
pub(crate) async fn signed_request(
    nats: &Client,
    signer: Option<&AdminSigner>,
    subject: &str,
    headers: Option<HeaderMap>,
    body: Vec<u8>,
) -> Result<async_nats::Message, async_nats::RequestError> {
    let headers = match signer {
        Some(signer) => {
            let mut h = headers.unwrap_or_default();
            signer.sign_into(subject, &body, &mut h);
            Some(h)
        }
        None => headers,
    };
    let subject = subject.to_string();
    match headers {
        Some(h) => nats.request_with_headers(subject, h, body.into()).await,
        None => nats.request(subject, body.into()).await,
    }
}

/// Read a secret straight from the bucket (in JetStream domain `js_domain`; none: the
/// account's own) with the data key, bypassing mappings (owning the encryption key means full
/// trust). This is what the sample's `get` command does.
///
/// The name is checked first, as `put` checks it, so it can never be a wildcard in the
/// subject read. The bucket's stream is read directly (the last message of the key's subject,
/// or the message at `version`, whose subject is checked here): async-nats 0.39's
/// `Store::entry_for_revision` prints `subject mismatch ...` to stdout, where the value goes.
pub async fn read_direct(
    nats: &Client,
    js_domain: Option<&str>,
    bucket: &str,
    keys: &Keyring,
    name: &str,
    version: Option<u64>,
) -> Result<(u64, SecretValue), ClientError> {
    let read = |e: &dyn std::fmt::Display| ClientError::Read(e.to_string());
    crate::store::validate_name(name).map_err(|e| read(&e))?;
    let js = crate::store::jetstream(nats, js_domain);
    let kv = crate::store::existing_bucket(&js, bucket)
        .await
        .map_err(|e| read(&e))?;
    let subject = crate::store::kv_stream::key_subject(&kv, name);
    let not_found = || match version {
        Some(v) => ClientError::NotFound(format!("{name} (version {v})")),
        None => ClientError::NotFound(name.to_string()),
    };
    let message = match version {
        Some(0) => return Err(not_found()),
        Some(v) => match kv.stream.get_raw_message(v).await {
            Ok(m) => m,
            Err(e) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => {
                return Err(not_found())
            }
            Err(e) => return Err(read(&e)),
        },
        None => match kv.stream.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => m,
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
                return Err(not_found())
            }
            Err(e) => return Err(read(&e)),
        },
    };
    // A revision of another key, or a delete marker, is no version of this secret.
    if message.subject.as_str() != subject
        || crate::store::kv_stream::is_deletion(Some(&message.headers))
    {
        return Err(not_found());
    }
    let value = envelope::open(&message.payload, name, keys).map_err(|e| read(&e))?;
    Ok((message.sequence, value))
}
