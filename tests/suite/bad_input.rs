//! Every malformed request gets a typed error reply within milliseconds, nothing is written,
//! and the next good request is served.

use std::time::{Duration, Instant};

use crate::common::sealed::{db, method, PROTOCOL};
use crate::common::*;
use async_nats::HeaderMap;
use base64::Engine as _;
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
    // read_secret: a requester xkey is required and must be one; the body is checked.
    let requester = |xkey: &str| {
        let mut headers = HeaderMap::new();
        headers.insert(piggybank::config::headers::REQUESTER_XKEY, xkey);
        Some(headers)
    };
    let xkey = nkeys::XKey::new().public_key();
    let user = nkeys::KeyPair::new_user().public_key();
    for (headers, body, expect) in [
        (None, r#"{"key":"good"}"#, 400),
        (requester("not-a-key"), r#"{"key":"good"}"#, 400),
        (requester(&user), r#"{"key":"good"}"#, 400),
        (requester(&xkey), "garbage", 400),
        (requester(&xkey), r#"{"key":"good","field":"f"}"#, 400),
        (requester(&xkey), r#"{"key":"bad name"}"#, 400),
        (requester(&xkey), r#"{"key":"missing"}"#, 404),
        (requester(&xkey), r#"{"key":"good","version":999}"#, 404),
    ] {
        let reply = h
            .raw("read_secret", headers, body.as_bytes().to_vec())
            .await;
        assert_eq!(
            code(&reply),
            expect,
            "read_secret {body}: {}",
            String::from_utf8_lossy(&reply.payload)
        );
    }
    h.still_serving_unchanged().await;
}

/// A malformed `WasmCloud-Host-Xkey` header gets an `InvalidXKey` error, and the service keeps
/// serving (in the sample backend it panicked the only request loop).
#[tokio::test]
async fn malformed_xkey_header_gets_an_error_and_the_service_keeps_serving() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let _b = start_backend(&nats, config(&nats, &keys)).await;
    let client = nats.client().await;
    for op in ["get", "put_secret"] {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("WasmCloud-Host-Xkey", "not-an-xkey");
        let reply = client
            .request_with_headers(
                format!("wasmcloud.secrets.v1alpha1.nats-kv.{op}"),
                headers,
                "x".into(),
            )
            .await
            .unwrap();
        let body = String::from_utf8_lossy(&reply.payload);
        assert!(body.contains("InvalidXKey"), "{op}: {body}");
    }
    assert_eq!(
        admin(client).server_xkey().await.unwrap(),
        keys.transit_public()
    );
}

/// Attack: malformed input on every front door, each sent as a request with a proper reply
/// subject: huge and deeply nested JSON, non-UTF-8 bodies and headers, absurd limits, shares
/// with x = 0 or the wrong length, unknown operations, unicode subjects. A handler that
/// panics answers nothing (its task dies), and one that panics in the serve loop stops the
/// backend. Safe: every request gets an answer, and the backend still serves afterwards.
#[tokio::test]
async fn malformed_requests_all_get_an_answer() {
    // The protocol and the API on a keyed backend (unsealed: requests reach the core)...
    let keyed_nats = NatsServer::start();
    let keys = Keys::generate();
    let mut c = config(&keyed_nats, &keys);
    c.piggybank_prefix = Some("piggybank".into());
    let _keyed = start_backend(&keyed_nats, c).await;
    let keyed = keyed_nats.client().await;
    // ...and the database operations on a sealed one, split into shares.
    let nats = NatsServer::start();
    let client = nats.client().await;
    let _backend = start_sealed_backend(&nats).await;
    let (_, body) = db(&client, "initialize", r#"{"shares":2,"threshold":2}"#).await;
    assert!(body["shares"].is_array(), "{body}");

    let nested = format!("{}{}", "[".repeat(200_000), "]".repeat(200_000));
    let many_names = serde_json::to_vec(
        &(0..60_000)
            .map(|i| format!("n{i}"))
            .collect::<Vec<String>>(),
    )
    .unwrap();
    let zero_share = base64::engine::general_purpose::STANDARD.encode([0u8; 33]);
    let short_share = base64::engine::general_purpose::STANDARD.encode([1u8; 5]);
    let long_share = base64::engine::general_purpose::STANDARD.encode([1u8; 5000]);
    let (_, entity) = Issuer::new().component();
    let mut weird = HeaderMap::new();
    weird.insert("WasmCloud-Host-Xkey", "X\u{0}\u{7f}é");
    weird.insert("method", "gEt\u{2028}");
    let mut xkey = HeaderMap::new();
    xkey.insert(
        "WasmCloud-Host-Xkey",
        nkeys::XKey::new().public_key().as_str(),
    );
    let p = PROTOCOL;
    let requests: Vec<(String, Option<HeaderMap>, Vec<u8>)> = vec![
        (format!("{p}.get"), None, vec![0xff; 900_000]),
        (
            format!("{p}.get"),
            Some(weird.clone()),
            nested.clone().into(),
        ),
        (format!("{p}.get"), Some(xkey.clone()), vec![0x00; 64]),
        (format!("{p}.put_secret"), Some(xkey), vec![0xfe; 1000]),
        (format!("{p}.list_secrets"), None, nested.clone().into()),
        (
            format!("{p}.list_secrets"),
            None,
            br#"{"limit":18446744073709551615,"after":"\u0000"}"#.to_vec(),
        ),
        (
            format!("{p}.list_secrets"),
            None,
            br#"{"limit":-1}"#.to_vec(),
        ),
        (format!("{p}.add_mapping.{entity}"), None, many_names),
        (
            format!("{p}.add_mapping.{entity}"),
            None,
            nested.clone().into(),
        ),
        (format!("{p}.add_mapping.Mé"), None, br#"["x"]"#.to_vec()),
        (format!("{p}.get_mappings.{entity}"), None, vec![0xff; 10]),
        (
            format!("{p}.delete_secret"),
            None,
            br#"{"key":null}"#.to_vec(),
        ),
        (format!("{p}.nope"), None, vec![]),
        (format!("{p}.get.extra.tokens"), None, vec![]),
        (
            "piggybank.database.unlock".into(),
            None,
            format!(r#"{{"share":"{zero_share}"}}"#).into(),
        ),
        (
            "piggybank.database.unlock".into(),
            None,
            format!(r#"{{"share":"{short_share}"}}"#).into(),
        ),
        (
            "piggybank.database.unlock".into(),
            None,
            format!(r#"{{"share":"{long_share}"}}"#).into(),
        ),
        (
            "piggybank.database.unlock".into(),
            None,
            br#"{"share":"AQ==","database_key":"AQ=="}"#.to_vec(),
        ),
        (
            "piggybank.database.unlock".into(),
            None,
            nested.clone().into(),
        ),
        (
            "piggybank.database.initialize".into(),
            None,
            br#"{"shares":255,"threshold":255}"#.to_vec(),
        ),
        ("piggybank.database.rotate".into(), None, vec![0xff; 100]),
        ("piggybank.database.nope".into(), None, vec![]),
        ("piggybank.shop.x".into(), Some(weird), vec![0xff; 100]),
        ("piggybank.shop.ü.ß".into(), Some(method("get")), vec![]),
        ("piggybank.shop.x".into(), Some(method("post")), vec![]),
    ];
    let mut silent = Vec::new();
    for (subject, headers, body) in requests {
        let to = if subject.starts_with("piggybank.database.") {
            &client
        } else {
            &keyed
        };
        let h = headers.unwrap_or_default();
        let sent = to.request_with_headers(subject.clone(), h, body.into());
        let answered = tokio::time::timeout(Duration::from_secs(10), sent).await;
        if !matches!(answered, Ok(Ok(_))) {
            silent.push(subject);
        }
    }
    assert!(silent.is_empty(), "no answer (panic?) to {silent:?}");
    let (status, report) = db(&client, "status", "").await;
    assert_eq!(status, 200);
    assert_eq!(report["progress"].as_u64(), Some(0), "{report}");
    let xkey = keyed
        .request(format!("{PROTOCOL}.server_xkey"), "".into())
        .await
        .unwrap();
    assert_eq!(xkey.payload.as_ref(), keys.transit_public().as_bytes());
}
