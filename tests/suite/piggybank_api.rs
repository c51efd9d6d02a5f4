//! The Piggy Bank API for plain NATS services, on a nats-server run with the README's
//! permission layout (`examples/piggybank-api/nats-server.conf`): each application reads and
//! writes its own secrets and is refused another's; the same secret is served to wasmCloud.

use std::path::Path;
use std::time::Duration;

use crate::common::sealed::admin_seed;
use crate::common::*;
use async_nats::HeaderMap;

const CONF: &str = "examples/piggybank-api/nats-server.conf";

fn nats_with_permissions() -> NatsServer {
    NatsServer::start_with_config(&Path::new(env!("CARGO_MANIFEST_DIR")).join(CONF))
}

/// A client for `user` (password `<user>-test`), replies on its own inbox prefix.
async fn app(nats: &NatsServer, user: &str) -> async_nats::Client {
    async_nats::ConnectOptions::with_user_and_password(user.into(), format!("{user}-test"))
        .custom_inbox_prefix(format!("_INBOX_{user}"))
        .request_timeout(Some(Duration::from_secs(2)))
        .connect(nats.url())
        .await
        .unwrap_or_else(|e| panic!("connect as {user}: {e}"))
}

/// (Status, body) of one API request.
async fn call(
    client: &async_nats::Client,
    subject: &str,
    method: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, Vec<u8>), String> {
    let mut headers = HeaderMap::new();
    headers.insert("method", method);
    for (k, v) in extra {
        headers.insert(*k, *v);
    }
    let reply = client
        .request_with_headers(subject.to_string(), headers, body.to_vec().into())
        .await
        .map_err(|e| e.to_string())?;
    let status = reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Status"))
        .and_then(|s| s.as_str().parse().ok())
        .ok_or("reply without a Status header")?;
    Ok((status, reply.payload.to_vec()))
}

async fn backend_on(nats: &NatsServer, keys: &Keys) -> Running {
    backend_with(nats, keys, |_| {}).await
}

/// [`backend_on`], with more configuration.
async fn backend_with(
    nats: &NatsServer,
    keys: &Keys,
    more: impl FnOnce(&mut piggybank::server::RunConfig),
) -> Running {
    let mut config = config(nats, keys);
    config.nats_credentials = Some(piggybank::connect::Credentials::UserPassword {
        user: "piggybank".into(),
        password: "piggybank-test".to_string().into(),
    });
    config.piggybank_prefix = Some("piggybank".into());
    // The applications' own inbox prefixes: replies go nowhere else.
    config.reply_prefixes = vec!["_INBOX_billing".into(), "_INBOX_shipping".into()];
    more(&mut config);
    start_backend_as(nats, config, "piggybank", "piggybank-test").await
}

/// An admin client and a host-side secrets client, connected as the backend's own user
/// (the applications' users may not reach the protocol subjects).
async fn as_the_backend_user(
    nats: &NatsServer,
) -> (
    piggybank::client::AdminClient,
    wasmcloud_secrets_client::Client,
) {
    let backend_user = async_nats::ConnectOptions::with_user_and_password(
        "piggybank".into(),
        "piggybank-test".into(),
    )
    .connect(nats.url())
    .await
    .unwrap();
    let admin = admin(backend_user.clone());
    let host = wasmcloud_secrets_client::Client::new("nats-kv", "wasmcloud.secrets", backend_user)
        .await
        .unwrap();
    (admin, host)
}

#[tokio::test]
async fn each_application_reads_its_own_secrets_and_is_refused_anothers() {
    let nats = nats_with_permissions();
    let keys = Keys::generate();
    let _backend = backend_on(&nats, &keys).await;
    let billing = app(&nats, "billing").await;
    let shipping = app(&nats, "shipping").await;

    let (status, body) = call(
        &billing,
        "piggybank.billing.stripe-key",
        "post",
        &[],
        b"sk_live_1",
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let (status, value) = call(&billing, "piggybank.billing.stripe-key", "get", &[], b"")
        .await
        .unwrap();
    assert_eq!((status, value.as_slice()), (200, b"sk_live_1".as_slice()));
    call(
        &shipping,
        "piggybank.shipping.label-token",
        "post",
        &[],
        b"lbl",
    )
    .await
    .unwrap();

    // Another application's subject: the server refuses the publish; nothing comes back.
    let refused = call(&shipping, "piggybank.billing.stripe-key", "get", &[], b"").await;
    assert!(
        refused.is_err(),
        "shipping read billing's secret: {refused:?}"
    );
    // Nor can it listen to billing's replies.
    let mut snoop = shipping.subscribe("_INBOX_billing.>").await.unwrap();
    shipping.flush().await.unwrap();
    call(&billing, "piggybank.billing.stripe-key", "get", &[], b"")
        .await
        .unwrap();
    let overheard = tokio::time::timeout(
        Duration::from_millis(300),
        futures::StreamExt::next(&mut snoop),
    )
    .await;
    assert!(
        !matches!(overheard, Ok(Some(_))),
        "shipping overheard billing's reply"
    );

    // Delete, then 404.
    let (status, _) = call(&billing, "piggybank.billing.stripe-key", "delete", &[], b"")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (status, body) = call(&billing, "piggybank.billing.stripe-key", "get", &[], b"")
        .await
        .unwrap();
    assert_eq!(status, 404);
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        error["error"].as_str().unwrap().contains("not found"),
        "{error}"
    );
}

#[tokio::test]
async fn bad_requests_get_a_status_and_a_json_error() {
    let nats = nats_with_permissions();
    let keys = Keys::generate();
    let _backend = backend_on(&nats, &keys).await;
    let billing = app(&nats, "billing").await;
    for (method, extra, body, status) in [
        ("put", vec![], b"x".to_vec(), 400),
        ("post", vec![("kind", "weird")], b"x".to_vec(), 400),
        ("post", vec![("kind", "string")], vec![0xff, 0xfe], 400),
        ("get", vec![], vec![], 404),
    ] {
        let (got, body) = call(&billing, "piggybank.billing.x", method, &extra, &body)
            .await
            .unwrap();
        assert_eq!(got, status, "{method} {extra:?}");
        let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(error["error"].is_string(), "{error}");
    }
    // `kind: binary` stores even UTF-8 payloads as bytes, and they come back byte for byte.
    let bytes = *b"plain text stored as bytes";
    let (status, _) = call(
        &billing,
        "piggybank.billing.blob",
        "post",
        &[("kind", "binary")],
        &bytes,
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let (_, value) = call(&billing, "piggybank.billing.blob", "get", &[], b"")
        .await
        .unwrap();
    assert_eq!(value, bytes);
}

/// Shares of protocol secrets with the API: `billing=billing/<name>`, writable if `rw`.
fn sharing(shares: &[&str]) -> impl FnOnce(&mut piggybank::server::RunConfig) {
    let shares: Vec<piggybank::config::ApiShare> =
        shares.iter().map(|s| s.parse().unwrap()).collect();
    move |c| c.piggybank_access = piggybank::config::ApiAccess::new(&shares, &[]).unwrap()
}

#[tokio::test]
async fn a_secret_shared_writable_is_posted_by_a_service_and_served_to_a_mapped_component() {
    let nats = nats_with_permissions();
    let keys = Keys::generate();
    let _backend = backend_with(&nats, &keys, sharing(&["billing=billing/db-password:rw"])).await;
    let billing = app(&nats, "billing").await;
    call(
        &billing,
        "piggybank.billing.db-password",
        "post",
        &[],
        b"hunter2",
    )
    .await
    .unwrap();

    let (admin, host) = as_the_backend_user(&nats).await;
    let (jwt, entity) = Issuer::new().component();
    admin
        .add_mapping(&entity, &names(&["billing/db-password"]))
        .await
        .unwrap();
    let secret = host_get(&host, request("billing/db-password", &jwt))
        .await
        .unwrap();
    assert_eq!(secret.string_secret.as_deref(), Some("hunter2"));
}

#[tokio::test]
async fn piggybank_run_serves_the_api_with_a_user_and_password() {
    let nats = nats_with_permissions();
    let keys = Keys::generate();
    let child = std::process::Command::new(piggybank_bin())
        .args([
            "run",
            "--piggybank-prefix",
            "piggybank",
            "--nats-user",
            "piggybank",
            "--reply-prefixes",
            "_INBOX_billing,_INBOX_shipping",
        ])
        .env("NATS_PASSWORD", "piggybank-test")
        .env("ENCRYPTION_XKEY_SEED", keys.encryption.as_str())
        .env("TRANSIT_XKEY_SEED", keys.transit.as_str())
        .env("NATS_ADDRESS", nats.url())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _run = Proc { child };
    let billing = app(&nats, "billing").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok((200, _)) = call(&billing, "piggybank.billing.k", "post", &[], b"v").await {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the API never answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, value) = call(&billing, "piggybank.billing.k", "get", &[], b"")
        .await
        .unwrap();
    assert_eq!((status, value.as_slice()), (200, b"v".as_slice()));
}

/// Random bytes (xorshift seeded from the clock), with one byte that is never UTF-8.
fn random_bytes(len: usize) -> Vec<u8> {
    let mut x = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut out: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    out[len / 2] = 0xff;
    out
}

#[tokio::test]
async fn a_post_of_raw_bytes_with_only_a_method_is_stored_byte_exact_and_served_as_binary() {
    let nats = nats_with_permissions();
    let keys = Keys::generate();
    let _backend = backend_with(&nats, &keys, sharing(&["billing=billing/cert:rw"])).await;
    let billing = app(&nats, "billing").await;
    let value = random_bytes(4096);
    assert!(std::str::from_utf8(&value).is_err());

    // What Piggy Bank's own clients send: the value, and the method header, nothing else.
    let (status, body) = call(&billing, "piggybank.billing.cert", "post", &[], &value)
        .await
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let (status, got) = call(&billing, "piggybank.billing.cert", "get", &[], b"")
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(got == value, "the bytes came back changed");

    // The same secret, to a mapped component, through the wasmCloud protocol.
    let (admin, host) = as_the_backend_user(&nats).await;
    let (jwt, entity) = Issuer::new().component();
    admin
        .add_mapping(&entity, &names(&["billing/cert"]))
        .await
        .unwrap();
    let listed = admin.list_secrets("billing/cert").await.unwrap();
    assert_eq!(serde_json::to_value(listed[0].kind).unwrap(), "binary");
    let secret = host_get(&host, request("billing/cert", &jwt))
        .await
        .unwrap();
    assert_eq!(secret.string_secret, None);
    assert!(secret.binary_secret.as_deref() == Some(value.as_slice()));
}

/// A backend on the permission layout with `--admin-keys`, a signed admin client and a host
/// client (both as the backend's user), and a component mapped to `billing/db-password`,
/// which a signed admin wrote: what the component reads.
async fn signed_store_with_a_component_secret(
    nats: &NatsServer,
    keys: &Keys,
    shares: &[&str],
) -> (
    Running,
    piggybank::client::AdminClient,
    wasmcloud_secrets_client::Client,
    String,
) {
    let signer = admin_seed().1;
    let shares: Vec<piggybank::config::ApiShare> =
        shares.iter().map(|s| s.parse().unwrap()).collect();
    let public = signer.public_key().to_string();
    let backend = backend_with(nats, keys, move |c| {
        c.admin_keys = vec![public];
        c.piggybank_access = piggybank::config::ApiAccess::new(&shares, &[]).unwrap();
    })
    .await;
    let (admin, host) = as_the_backend_user(nats).await;
    let admin = admin.with_signer(Some(signer));
    admin
        .put_secret("billing/db-password", text("component-value"), None, None)
        .await
        .unwrap();
    let (jwt, entity) = Issuer::new().component();
    admin
        .add_mapping(&entity, &names(&["billing/db-password"]))
        .await
        .unwrap();
    (backend, admin, host, jwt)
}

/// The secret a component reads, through the real host client.
async fn component_reads(host: &wasmcloud_secrets_client::Client, jwt: &str) -> String {
    let secret = host_get(host, request("billing/db-password", jwt))
        .await
        .unwrap();
    secret.string_secret.unwrap_or_default()
}

/// Attack: with `--admin-keys`, an unsigned API `post` on `piggybank.billing.db-password`
/// overwrote the secret a component reads as `billing/db-password` (one key space), and an
/// API `get` read it. Safe: the API's names are its own (`_api/billing/...`); the component
/// keeps reading what the signed admin wrote, and the service reads only what it posted.
#[tokio::test]
async fn an_api_application_cannot_read_or_overwrite_what_a_component_reads() {
    let nats = nats_with_permissions();
    let keys = Keys::generate();
    let (_backend, admin, host, jwt) =
        signed_store_with_a_component_secret(&nats, &keys, &[]).await;
    let billing = app(&nats, "billing").await;

    let (status, value) = call(&billing, "piggybank.billing.db-password", "get", &[], b"")
        .await
        .unwrap();
    assert_eq!(
        status,
        404,
        "the API read the component's secret: {:?}",
        String::from_utf8_lossy(&value)
    );
    let (status, body) = call(
        &billing,
        "piggybank.billing.db-password",
        "post",
        &[],
        b"service-value",
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(component_reads(&host, &jwt).await, "component-value");
    let (status, _) = call(
        &billing,
        "piggybank.billing.db-password",
        "delete",
        &[],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(component_reads(&host, &jwt).await, "component-value");

    // Positive control: the service's own name works, and lives in the API's namespace.
    call(&billing, "piggybank.billing.token", "post", &[], b"t-1")
        .await
        .unwrap();
    let (status, value) = call(&billing, "piggybank.billing.token", "get", &[], b"")
        .await
        .unwrap();
    assert_eq!((status, value.as_slice()), (200, b"t-1".as_slice()));
    let listed = admin.list_secrets("_api/billing/").await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
}

/// The protocol never serves the API's own names: no mapping may name one, and a mapping
/// that does (written straight into the bucket) grants nothing.
#[tokio::test]
async fn a_component_never_reads_an_api_applications_own_name() {
    let nats = nats_with_permissions();
    let keys = Keys::generate();
    let (_backend, admin, host, jwt) =
        signed_store_with_a_component_secret(&nats, &keys, &[]).await;
    let billing = app(&nats, "billing").await;
    call(
        &billing,
        "piggybank.billing.db-password",
        "post",
        &[],
        b"service-value",
    )
    .await
    .unwrap();
    let (_, entity) = Issuer::new().component();
    let refused = admin
        .add_mapping(&entity, &names(&["_api/billing/db-password"]))
        .await;
    assert!(refused.is_err(), "a mapping named an API name");

    // Written around piggybank, as the backend's user: still refused on the get.
    let (rogue_jwt, rogue) = Issuer::new().component();
    let backend_user = async_nats::ConnectOptions::with_user_and_password(
        "piggybank".into(),
        "piggybank-test".into(),
    )
    .connect(nats.url())
    .await
    .unwrap();
    let js = async_nats::jetstream::new(backend_user);
    let state = js.get_key_value("SECRETS_nats-kv_state").await.unwrap();
    state
        .put(
            &rogue,
            br#"["_api/billing/db-password","billing/db-password"]"#
                .to_vec()
                .into(),
        )
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    // The same write grants the protocol name (the mirror has it): the API name is refused.
    while host_get(&host, request("billing/db-password", &rogue_jwt))
        .await
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the mapping never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refusal = host_refusal(&host, request("_api/billing/db-password", &rogue_jwt)).await;
    assert!(refusal.to_lowercase().contains("unauthorized"), "{refusal}");
    assert_eq!(component_reads(&host, &jwt).await, "component-value");
}

/// A protocol secret the operator shared with an application is readable on the API, and
/// writable only when shared `:rw`; the application's other names stay its own.
#[tokio::test]
async fn a_shared_secret_is_readable_by_its_application_and_writable_only_when_shared_rw() {
    let nats = nats_with_permissions();
    let keys = Keys::generate();
    let (_backend, admin, host, jwt) = signed_store_with_a_component_secret(
        &nats,
        &keys,
        &["billing=billing/db-password", "billing=billing/cert:rw"],
    )
    .await;
    let billing = app(&nats, "billing").await;
    let shipping = app(&nats, "shipping").await;
    let (status, value) = call(&billing, "piggybank.billing.db-password", "get", &[], b"")
        .await
        .unwrap();
    assert_eq!(
        (status, value.as_slice()),
        (200, b"component-value".as_slice())
    );
    for method in ["post", "delete"] {
        let (status, body) = call(&billing, "piggybank.billing.db-password", method, &[], b"x")
            .await
            .unwrap();
        assert_eq!(status, 403, "{method}: {}", String::from_utf8_lossy(&body));
    }
    assert_eq!(component_reads(&host, &jwt).await, "component-value");
    // Shared with billing only.
    let (status, _) = call(&shipping, "piggybank.shipping.db-password", "get", &[], b"")
        .await
        .unwrap();
    assert_eq!(status, 404);

    // `:rw`: the service writes the protocol secret itself.
    let (status, _) = call(&billing, "piggybank.billing.cert", "post", &[], b"pem")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let listed = admin.list_secrets("billing/cert").await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
}

/// What `status` and `$SRV` tell whoever may ask (NATS permissions decide who: the layout
/// gives them to admins): modes, counts and reason codes, never a secret's name or value, an
/// application's name or an entity's key. Control: the counts and the reason are there.
#[tokio::test]
async fn status_and_discovery_reveal_counts_and_reason_codes_never_names_or_values() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let mut c = config(&nats, &keys);
    c.piggybank_prefix = Some("piggybank".into());
    let _backend = start_backend(&nats, c).await;
    let client = nats.client().await;
    let (name, value, app) = ("zq-name-7731", "zq-value-7731", "zqapp7731");
    call(
        &client,
        &format!("piggybank.{app}.{name}"),
        "post",
        &[],
        value.as_bytes(),
    )
    .await
    .unwrap();
    let (status, _) = call(
        &client,
        &format!("piggybank.{app}.{name}-missing"),
        "get",
        &[],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(status, 404);
    let (jwt, entity) = Issuer::new().component();
    let host = host_client(&nats).await;
    host_refusal(&host, request(name, &jwt)).await;

    let mut answers = Vec::new();
    for status in database_statuses(&client, "piggybank").await {
        answers.push(status.to_string());
    }
    for verb in ["PING", "INFO", "STATS"] {
        let reply = client
            .request(format!("$SRV.{verb}.piggybank"), "".into())
            .await
            .unwrap();
        answers.push(String::from_utf8_lossy(&reply.payload).to_string());
    }
    let all = answers.join("\n");
    for secret in [name, value, app, entity.as_str()] {
        assert!(!all.contains(secret), "{secret:?} revealed in {all}");
    }
    // Control: what they do tell.
    let status: serde_json::Value = serde_json::from_str(&answers[0]).unwrap();
    assert_eq!(status["secrets"], 1, "{status}");
    let stats: serde_json::Value = serde_json::from_str(&answers[3]).unwrap();
    let api = stats["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "api")
        .unwrap();
    assert_eq!(api["num_requests"], 2, "{api}");
    assert_eq!(api["last_error"], "0:not_found", "{api}");
}

/// Piggy Bank's `global` application, which every service may read (`shipping` may publish
/// on `piggybank.global.>` in the layout): run with `--read-only-apps global`, a service
/// gets its secrets, from its own inbox, but cannot post or delete one; a signed admin
/// writes them. Without the flag the service's post overwrote the admin's value.
#[tokio::test]
async fn a_service_reads_a_global_secret_but_cannot_post_or_delete_it() {
    let nats = nats_with_permissions();
    let keys = Keys::generate();
    let signer = admin_seed().1;
    let public = signer.public_key().to_string();
    let _backend = backend_with(&nats, &keys, move |c| {
        c.admin_keys = vec![public];
        c.piggybank_access =
            piggybank::config::ApiAccess::new(&[], &["global".to_string()]).unwrap();
    })
    .await;
    let (admin, _) = as_the_backend_user(&nats).await;
    let admin = admin.with_signer(Some(signer));
    admin
        .put_secret("_api/global/tls-ca", text("ca-v1"), None, None)
        .await
        .unwrap();
    let shipping = app(&nats, "shipping").await;
    let get = |client| async move {
        call(client, "piggybank.global.tls-ca", "get", &[], b"")
            .await
            .unwrap()
    };
    assert_eq!(get(&shipping).await, (200, b"ca-v1".to_vec()));
    for method in ["post", "delete"] {
        let (status, body) = call(&shipping, "piggybank.global.tls-ca", method, &[], b"forged")
            .await
            .unwrap();
        assert_eq!(status, 403, "{method}: {}", String::from_utf8_lossy(&body));
    }
    let (status, _) = call(
        &shipping,
        "piggybank.global.new-name",
        "post",
        &[],
        b"forged",
    )
    .await
    .unwrap();
    assert_eq!(status, 403);
    assert_eq!(get(&shipping).await, (200, b"ca-v1".to_vec()));
    // Control: a signed admin writes it, and the service reads the new value.
    admin
        .put_secret("_api/global/tls-ca", text("ca-v2"), None, None)
        .await
        .unwrap();
    assert_eq!(get(&shipping).await, (200, b"ca-v2".to_vec()));
}

/// Piggy Bank's own inbox layout: application `foo` receives on `foo.secrets.>` (its
/// client's inbox prefix). `piggybank run --app-inbox foo=foo.secrets` answers foo there,
/// and answers no other application there: billing's request aimed at foo's inbox gets no
/// answer, is counted in `status` (`shed.refused_reply`) and logged at warn. Before, foo got
/// no answer at all, even with `foo.secrets` in `--reply-prefixes`.
#[tokio::test]
async fn an_application_is_answered_in_the_inbox_bound_to_it_and_no_other_is() {
    let nats = nats_with_permissions();
    let keys = Keys::generate();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("run.log");
    let child = std::process::Command::new(piggybank_bin())
        .args([
            "run",
            "--piggybank-prefix",
            "piggybank",
            "--nats-user",
            "piggybank",
            "--reply-prefixes",
            "_INBOX_billing",
            "--app-inbox",
            "foo=foo.secrets",
        ])
        .env("NATS_PASSWORD", "piggybank-test")
        .env("ENCRYPTION_XKEY_SEED", keys.encryption.as_str())
        .env("TRANSIT_XKEY_SEED", keys.transit.as_str())
        .env("NATS_ADDRESS", nats.url())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _run = Proc { child };
    let foo = async_nats::ConnectOptions::with_user_and_password("foo".into(), "foo-test".into())
        .custom_inbox_prefix("foo.secrets")
        .request_timeout(Some(Duration::from_secs(2)))
        .connect(nats.url())
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !matches!(
        call(&foo, "piggybank.foo.token", "post", &[], b"foo-value").await,
        Ok((200, _))
    ) {
        assert!(
            std::time::Instant::now() < deadline,
            "foo was never answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, value) = call(&foo, "piggybank.foo.token", "get", &[], b"")
        .await
        .unwrap();
    assert_eq!((status, value.as_slice()), (200, b"foo-value".as_slice()));

    // billing aims its own stored bytes at a pending request in foo's inbox.
    let billing = app(&nats, "billing").await;
    call(
        &billing,
        "piggybank.billing.k",
        "post",
        &[],
        b"billing-bytes",
    )
    .await
    .unwrap();
    let mut foo_inbox = foo.subscribe("foo.secrets.>").await.unwrap();
    foo.flush().await.unwrap();
    let mut get = HeaderMap::new();
    get.insert("method", "get");
    billing
        .publish_with_reply_and_headers(
            "piggybank.billing.k",
            "foo.secrets.pending.1",
            get,
            "".into(),
        )
        .await
        .unwrap();
    billing.flush().await.unwrap();
    let delivered = tokio::time::timeout(
        Duration::from_millis(500),
        futures::StreamExt::next(&mut foo_inbox),
    )
    .await;
    assert!(
        !matches!(delivered, Ok(Some(_))),
        "billing's request was answered in foo's inbox"
    );
    let backend_user = async_nats::ConnectOptions::with_user_and_password(
        "piggybank".into(),
        "piggybank-test".into(),
    )
    .connect(nats.url())
    .await
    .unwrap();
    let statuses = database_statuses(&backend_user, "piggybank").await;
    assert_eq!(statuses[0]["shed"]["refused_reply"], 1, "{}", statuses[0]);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("WARN") && text.contains("refused_reply"),
        "no warning: {text}"
    );
    assert!(!text.contains("billing-bytes") && !text.contains("foo.secrets.pending"));
}
