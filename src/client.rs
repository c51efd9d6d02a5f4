//! A client for piggybank's admin operations, used by the CLI and the tests.
//!
//! Values are sealed to the backend's transit key from a one-time key, exactly as the
//! sample's client does, so it also works against the sample backend for the operations the
//! sample has.

use std::collections::BTreeSet;

use async_nats::jetstream;
use async_nats::{Client, HeaderMap};
use nkeys::XKey;
use zeroize::Zeroizing;

use crate::config::{self, headers, ops};
use crate::keys::Keyring;
use crate::protocol::wire::{
    AdminError, DeleteSecretRequest, ListSecretsRequest, ListSecretsResponse, MappingsResponse,
    PutSecretError, PutSecretRequest, PutSecretResponse,
};
use crate::store::envelope::{self, SecretValue};
use crate::store::SecretMeta;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("request to {subject} failed: {reason}")]
    Request { subject: String, reason: String },
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
}

#[derive(Clone)]
pub struct AdminClient {
    nats: Client,
    prefix: String,
}

impl AdminClient {
    /// `subject_base`, `api_version`, `name` as the backend was started with.
    pub fn new(nats: Client, subject_base: &str, api_version: &str, name: &str) -> Self {
        Self {
            nats,
            prefix: config::subject_prefix(subject_base, api_version, name),
        }
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
        let sent = match headers {
            Some(h) => {
                self.nats
                    .request_with_headers(subject.clone(), h, body.into())
                    .await
            }
            None => self.nats.request(subject.clone(), body.into()).await,
        };
        let msg = sent.map_err(|e| ClientError::Request {
            subject,
            reason: e.to_string(),
        })?;
        if let Some(code) = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(headers::SERVICE_ERROR_CODE))
        {
            let parsed: Option<AdminError> = serde_json::from_slice(&msg.payload).ok();
            return Err(ClientError::Admin {
                code: code.as_str().parse().unwrap_or(500),
                message: parsed.map_or_else(
                    || String::from_utf8_lossy(&msg.payload).into_owned(),
                    |p| p.error,
                ),
            });
        }
        Ok(msg)
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

    pub async fn delete_secret(&self, name: &str) -> Result<(), ClientError> {
        let body = serde_json::to_vec(&DeleteSecretRequest { key: name.into() })
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        self.expect_ok(self.subject(ops::DELETE_SECRET), body).await
    }

    pub async fn list_secrets(&self, prefix: &str) -> Result<Vec<SecretMeta>, ClientError> {
        let body = serde_json::to_vec(&ListSecretsRequest {
            prefix: prefix.into(),
        })
        .map_err(|e| ClientError::Decode(e.to_string()))?;
        let msg = self
            .request(self.subject(ops::LIST_SECRETS), None, body)
            .await?;
        let list: ListSecretsResponse =
            serde_json::from_slice(&msg.payload).map_err(|e| ClientError::Decode(e.to_string()))?;
        Ok(list.secrets)
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

    pub async fn get_mappings(&self, entity: &str) -> Result<Vec<String>, ClientError> {
        let subject = format!("{}.{entity}", self.subject(ops::GET_MAPPINGS));
        let msg = self.request(subject, None, Vec::new()).await?;
        let response: MappingsResponse =
            serde_json::from_slice(&msg.payload).map_err(|e| ClientError::Decode(e.to_string()))?;
        Ok(response.secrets)
    }
}

/// Read a secret straight from the bucket with the data key, bypassing mappings (owning the
/// encryption key means full trust). This is what the sample's `get` command does.
pub async fn read_direct(
    nats: &Client,
    bucket: &str,
    keys: &Keyring,
    name: &str,
    version: Option<u64>,
) -> Result<(u64, SecretValue), ClientError> {
    let read = |e: &dyn std::fmt::Display| ClientError::Read(e.to_string());
    let js = jetstream::new(nats.clone());
    let kv = js.get_key_value(bucket).await.map_err(|e| read(&e))?;
    let entry = match version {
        Some(v) => kv.entry_for_revision(name, v).await,
        None => kv.entry(name).await,
    }
    .map_err(|e| read(&e))?
    .filter(|e| e.operation == jetstream::kv::Operation::Put)
    .ok_or_else(|| ClientError::NotFound(name.to_string()))?;
    let value = envelope::open(&entry.value, keys).map_err(|e| read(&e))?;
    Ok((entry.revision, value))
}
