//! Every malformed request gets a typed error reply within milliseconds, nothing is written,
//! and the next good request is served.

mod common;

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use common::*;
use nkeys::XKey;
use piggybank::store::envelope::SecretValue;
use wasmcloud_secrets_types::{GetSecretError, SecretRequest, SecretResponse};
use zeroize::Zeroizing;

const PREFIX: &str = "wasmcloud.secrets.v1alpha1.nats-kv";
/// Generous for a 2-core CI machine running debug builds; typical replies take ~1 ms.
const FAST: Duration = Duration::from_millis(500);

struct Harness {
    nats: NatsServer,
    keys: Keys,
    client: async_nats::Client,
    jwt: String,
    subject: String,
    _backend: Running,
}

impl Harness {
    async fn new() -> Self {
        Self::with_trusted(vec![]).await.0
    }

    async fn with_trusted(trusted: Vec<String>) -> (Self, Issuer) {
        let nats = NatsServer::start();
        let keys = Keys::generate();
        let issuer = Issuer::new();
        let mut cfg = config(&nats, &keys);
        cfg.trusted_issuers = if trusted.is_empty() { vec![] } else { trusted };
        let backend = start_backend(&nats, cfg).await;
        let client = nats.client().await;
        let (jwt, subject) = issuer.component();
        let admin = admin(client.clone());
        admin
            .put_secret(
                "good",
                SecretValue::String(Zeroizing::new("v".into())),
                None,
                None,
            )
            .await
            .unwrap();
        admin
            .add_mapping(&subject, &names(&["good"]))
            .await
            .unwrap();
        (
            Harness {
                nats,
                keys,
                client,
                jwt,
                subject,
                _backend: backend,
            },
            issuer,
        )
    }

    /// Send a raw request, check it is answered fast, and return the reply.
    async fn raw(
        &self,
        op: &str,
        headers: Option<HeaderMap>,
        body: Vec<u8>,
    ) -> async_nats::Message {
        let subject = format!("{PREFIX}.{op}");
        let started = Instant::now();
        let reply = match headers {
            Some(h) => {
                self.client
                    .request_with_headers(subject, h, body.into())
                    .await
            }
            None => self.client.request(subject, body.into()).await,
        }
        .expect("every request gets a reply");
        assert!(
            started.elapsed() < FAST,
            "{op} took {:?}",
            started.elapsed()
        );
        reply
    }

    /// A get with a sealed body, answered with a plain error.
    async fn get_error(&self, headers: Option<HeaderMap>, body: Vec<u8>) -> GetSecretError {
        let reply = self.raw("get", headers, body).await;
        assert!(
            reply
                .headers
                .as_ref()
                .and_then(|h| h.get("Server-Response-Xkey"))
                .is_none(),
            "errors are not sealed"
        );
        let response: SecretResponse =
            serde_json::from_slice(&reply.payload).expect("SecretResponse JSON");
        response.error.expect("an error")
    }

    fn seal(&self, plaintext: &[u8]) -> (HeaderMap, Vec<u8>) {
        let one_time = XKey::new();
        let transit = XKey::from_public_key(&self.keys.transit_public()).unwrap();
        let mut h = HeaderMap::new();
        h.insert("WasmCloud-Host-Xkey", one_time.public_key().as_str());
        (h, one_time.seal(plaintext, &transit).unwrap())
    }

    fn sealed_request(&self, req: &SecretRequest) -> (HeaderMap, Vec<u8>) {
        self.seal(&serde_json::to_vec(req).unwrap())
    }

    /// The good request still works, and nothing was written.
    async fn still_serving_unchanged(&self) {
        let host = host_client(&self.nats).await;
        let got = host_get(&host, request("good", &self.jwt)).await.unwrap();
        assert_eq!(got.string_secret.as_deref(), Some("v"));
        let admin = admin(self.client.clone());
        let listed = admin.list_secrets("").await.unwrap();
        assert_eq!(
            listed
                .iter()
                .map(|m| (m.name.as_str(), m.version))
                .collect::<Vec<_>>(),
            [("good", 1)]
        );
        assert_eq!(admin.get_mappings(&self.subject).await.unwrap(), ["good"]);
    }
}

#[tokio::test]
async fn bad_get_envelopes_get_typed_errors() {
    let h = Harness::new().await;
    let (good_headers, good_body) = h.sealed_request(&request("good", &h.jwt));

    assert!(matches!(
        h.get_error(None, good_body.clone()).await,
        GetSecretError::InvalidHeaders
    ));
    let mut no_key = HeaderMap::new();
    no_key.insert("Other", "x");
    assert!(matches!(
        h.get_error(Some(no_key), good_body.clone()).await,
        GetSecretError::InvalidXKey
    ));
    for bad in [
        "",
        "garbage",
        "UABC",
        &nkeys::KeyPair::new_user().public_key(),
    ] {
        let mut headers = HeaderMap::new();
        headers.insert("WasmCloud-Host-Xkey", bad);
        assert!(
            matches!(
                h.get_error(Some(headers), good_body.clone()).await,
                GetSecretError::InvalidXKey
            ),
            "{bad:?}"
        );
    }
    assert!(matches!(
        h.get_error(Some(good_headers.clone()), vec![]).await,
        GetSecretError::InvalidPayload
    ));
    assert!(matches!(
        h.get_error(Some(good_headers.clone()), b"garbage".to_vec())
            .await,
        GetSecretError::DecryptionError
    ));

    // Sealed to the wrong key.
    let stranger = XKey::new();
    let one_time = XKey::new();
    let mut headers = HeaderMap::new();
    headers.insert("WasmCloud-Host-Xkey", one_time.public_key().as_str());
    let wrong = one_time
        .seal(
            &serde_json::to_vec(&request("good", &h.jwt)).unwrap(),
            &stranger,
        )
        .unwrap();
    assert!(matches!(
        h.get_error(Some(headers), wrong).await,
        GetSecretError::DecryptionError
    ));

    // Sealed correctly, but not a SecretRequest.
    let (headers, body) = h.seal(b"{\"not\":\"a request\"}");
    assert!(matches!(
        h.get_error(Some(headers), body).await,
        GetSecretError::InvalidRequest
    ));
    h.still_serving_unchanged().await;
}

#[tokio::test]
async fn bad_jwts_get_typed_errors() {
    let (h, issuer) = Harness::with_trusted(vec![]).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (expired, _) = issuer.component_with(None, Some(now - 60));
    let (not_yet, _) = issuer.component_with(Some(now + 3600), None);
    let tampered = {
        let mut parts: Vec<String> = h.jwt.split('.').map(String::from).collect();
        parts[2] = parts[2].chars().rev().collect();
        parts.join(".")
    };
    for (what, jwt) in [
        ("garbage", "garbage".to_string()),
        ("expired", expired),
        ("not yet valid", not_yet),
        ("tampered", tampered),
        ("host as entity", host_jwt()),
    ] {
        let (headers, body) = h.sealed_request(&request("good", &jwt));
        let err = h.get_error(Some(headers), body).await;
        assert!(
            matches!(err, GetSecretError::InvalidEntityJWT(_)),
            "{what}: {err:?}"
        );
    }
    let mut bad_host = request("good", &h.jwt);
    bad_host.context.host_jwt = "not.a.jwt".into();
    let (headers, body) = h.sealed_request(&bad_host);
    assert!(matches!(
        h.get_error(Some(headers), body).await,
        GetSecretError::InvalidHostJWT(_)
    ));
    h.still_serving_unchanged().await;
}

#[tokio::test]
async fn unknown_issuer_is_unauthorized() {
    let trusted = Issuer::new();
    let (h, _) = Harness::with_trusted(vec![trusted.public_key()]).await;
    // The harness's own issuer is not the trusted one.
    let (headers, body) = h.sealed_request(&request("good", &h.jwt));
    assert!(matches!(
        h.get_error(Some(headers), body).await,
        GetSecretError::Unauthorized
    ));
}

#[tokio::test]
async fn bad_names_versions_and_policies_get_typed_errors() {
    let h = Harness::new().await;
    for (what, mutate, expect) in [
        (
            "bad name",
            Box::new(|r: &mut SecretRequest| r.key = "a b*c".into())
                as Box<dyn Fn(&mut SecretRequest)>,
            "InvalidRequest",
        ),
        (
            "empty name",
            Box::new(|r: &mut SecretRequest| r.key = String::new()),
            "InvalidRequest",
        ),
        (
            "bad version",
            Box::new(|r: &mut SecretRequest| r.version = Some("v1".into())),
            "InvalidRequest",
        ),
        (
            "bad policy",
            Box::new(|r: &mut SecretRequest| r.context.application.policy = "[1".into()),
            "PolicyError",
        ),
        (
            "wrong policy type",
            Box::new(|r: &mut SecretRequest| {
                r.context.application.policy = r#"{"type":"x"}"#.into()
            }),
            "PolicyError",
        ),
    ] {
        let mut req = request("good", &h.jwt);
        mutate(&mut req);
        let (headers, body) = h.sealed_request(&req);
        let err = h.get_error(Some(headers), body).await;
        assert!(format!("{err:?}").starts_with(expect), "{what}: {err:?}");
    }
    h.still_serving_unchanged().await;
}

#[tokio::test]
async fn bad_put_requests_write_nothing() {
    let h = Harness::new().await;
    let put_error = |reply: async_nats::Message| -> String {
        let v: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(v["revision"], 0);
        v["error"].to_string()
    };
    assert!(put_error(h.raw("put_secret", None, b"x".to_vec()).await).contains("InvalidHeaders"));
    let (headers, _) = h.seal(b"");
    assert!(
        put_error(h.raw("put_secret", Some(headers.clone()), vec![]).await)
            .contains("InvalidPayload")
    );
    assert!(put_error(
        h.raw("put_secret", Some(headers), b"garbage".to_vec())
            .await
    )
    .contains("DecryptionError"));
    for (body, expect) in [
        (r#"{"key":"good","version":""}"#, "NoSecretProvided"),
        (
            r#"{"key":"good","version":"","string_secret":"a","binary_secret":[1]}"#,
            "BothSecretsProvided",
        ),
        (
            r#"{"key":"bad name","version":"","string_secret":"a"}"#,
            "InvalidName",
        ),
        (
            r#"{"key":"","version":"","string_secret":"a"}"#,
            "InvalidName",
        ),
        (
            r#"{"key":"good","version":"abc","string_secret":"a"}"#,
            "InvalidVersion",
        ),
        (
            r#"{"key":"good","version":"7","string_secret":"a"}"#,
            "VersionConflict",
        ),
        (r#"not json"#, "InvalidPayload"),
    ] {
        let (headers, sealed) = h.seal(body.as_bytes());
        let err = put_error(h.raw("put_secret", Some(headers), sealed).await);
        assert!(err.contains(expect), "{body}: {err}");
        assert!(!err.contains("\"a\""), "errors never echo values: {err}");
    }
    h.still_serving_unchanged().await;
}

#[tokio::test]
async fn bad_admin_requests_get_status_codes_and_write_nothing() {
    let h = Harness::new().await;
    let code = |reply: &async_nats::Message| -> u16 {
        reply
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Service-Error-Code"))
            .map(|v| v.as_str().parse().unwrap())
            .unwrap_or(200)
    };
    let entity = &h.subject;
    for (op, body, expect) in [
        ("nonsense", "", 404),
        ("get.extra", "", 400),
        ("add_mapping", r#"["good"]"#, 400),
        (&format!("add_mapping.{entity}"), "not json", 400),
        (&format!("add_mapping.{entity}"), r#"{"a":1}"#, 400),
        (&format!("add_mapping.{entity}"), "[]", 400),
        (&format!("add_mapping.{entity}"), r#"["bad name"]"#, 400),
        ("add_mapping.not-a-key", r#"["good"]"#, 400),
        (&format!("remove_mapping.{entity}"), "[1,2]", 400),
        ("get_mappings.not-a-key", "", 400),
        ("delete_secret", "garbage", 400),
        ("delete_secret", r#"{"key":"missing"}"#, 404),
        ("delete_secret", r#"{"key":"bad name"}"#, 400),
        ("list_secrets", "{bad", 400),
    ] {
        let reply = h.raw(op, None, body.as_bytes().to_vec()).await;
        assert_eq!(
            code(&reply),
            expect,
            "{op} {body}: {}",
            String::from_utf8_lossy(&reply.payload)
        );
        let json: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
        assert!(json["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    h.still_serving_unchanged().await;
}
