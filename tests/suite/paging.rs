//! Listings of any size, and replies too large for one NATS message.
//!
//! `list_secrets` and `get_mappings` answer one page at a time with a `next` cursor, the
//! client pages through everything, and the CLI prints everything. A reply that would exceed
//! the connection's max payload is answered with an error in its front door's format instead
//! of being dropped (which left the requester waiting for its timeout).

use std::time::{Duration, Instant};

use crate::common::*;
use piggybank::protocol::wire::{
    AdminError, ListSecretsResponse, MappingsResponse, REPLY_TOO_LARGE,
};
use piggybank::store::secrets::{PAGE_DEFAULT, PAGE_MAX};
use wasmcloud_secrets_types::{Secret, SecretResponse};

const PREFIX: &str = "wasmcloud.secrets.v1alpha1.nats-kv";

/// `count` names of about 40 bytes, as a real deployment's: `apps/team-NN/service-NNNNN/...`.
fn app_names(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| format!("apps/team-{:02}/service-{i:05}/db-password", i % 50))
        .collect()
}

fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names
}

/// Seed `names` (value: the name's index) and wait until the backend lists them all.
async fn seed(deployed: &Deployed, names: &[String]) {
    let started = Instant::now();
    let secrets = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.clone(), text(&format!("value-{i}"))))
        .collect();
    seed_secrets(&deployed.nats, &deployed.keys, secrets, 256).await;
    wait_listed(&deployed.admin, "", names.len()).await;
    eprintln!("seeded {} secrets in {:?}", names.len(), started.elapsed());
}

/// The real `piggybank` binary, run while the in-process backend keeps serving on the
/// runtime's other worker.
fn run_cli(nats: &NatsServer, args: &[&str]) -> (bool, Vec<u8>, String) {
    tokio::task::block_in_place(|| cli(nats, args, None, &[]))
}

/// A raw request on the protocol's admin subjects, as scripts send them.
async fn raw(nats: &async_nats::Client, op: &str, body: &str) -> async_nats::Message {
    tokio::time::timeout(
        Duration::from_secs(10),
        nats.request(format!("{PREFIX}.{op}"), body.to_string().into()),
    )
    .await
    .expect("an answer, not a timeout")
    .expect("a reply")
}

fn admin_error(msg: &async_nats::Message) -> Option<AdminError> {
    msg.headers.as_ref()?.get("Nats-Service-Error-Code")?;
    serde_json::from_slice(&msg.payload).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_of_20000_secrets_returns_every_one_as_text_and_as_one_json_array() {
    let deployed = deployed().await;
    let names = app_names(20_000);
    seed(&deployed, &names).await;
    let expected = sorted(names);

    let started = Instant::now();
    let (ok, stdout, stderr) = run_cli(&deployed.nats, &["list"]);
    eprintln!("piggybank list: {:?}", started.elapsed());
    assert!(ok, "{stderr}");
    let stdout = String::from_utf8(stdout).unwrap();
    let mut lines = stdout.lines();
    assert!(lines.next().unwrap().starts_with("NAME"), "a header line");
    let listed: Vec<String> = lines
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    assert_eq!(listed.len(), 20_000);
    assert_eq!(listed, expected, "every name once, in name order");

    let started = Instant::now();
    let (ok, stdout, stderr) = run_cli(&deployed.nats, &["list", "--json"]);
    eprintln!("piggybank list --json: {:?}", started.elapsed());
    assert!(ok, "{stderr}");
    let json: serde_json::Value = serde_json::from_slice(&stdout).expect("one JSON document");
    let array = json.as_array().expect("one JSON array");
    assert_eq!(array.len(), 20_000);
    let json_names: Vec<String> = array
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(json_names, expected);
    assert!(array
        .iter()
        .all(|m| m["kind"] == "string" && m["version"].is_u64()));

    // A prefix pages too: 400 names per team.
    let (ok, stdout, _) = run_cli(
        &deployed.nats,
        &["list", "--json", "--prefix", "apps/team-07/"],
    );
    assert!(ok);
    let team: serde_json::Value = serde_json::from_slice(&stdout).unwrap();
    assert_eq!(team.as_array().unwrap().len(), 400);
}

#[tokio::test]
async fn list_secrets_answers_pages_with_a_next_cursor() {
    let deployed = deployed().await;
    let names = app_names(2_500);
    seed(&deployed, &names).await;
    let expected = sorted(names);
    let nats = deployed.nats.client().await;
    let page = |msg: async_nats::Message| -> ListSecretsResponse {
        assert!(admin_error(&msg).is_none(), "{:?}", admin_error(&msg));
        serde_json::from_slice(&msg.payload).unwrap()
    };
    let names_of = |p: &ListSecretsResponse| -> Vec<String> {
        p.secrets.iter().map(|m| m.name.clone()).collect()
    };

    // The sample-era bodies still work: the first page, and where to go on.
    for body in ["", "{}", r#"{"prefix": ""}"#] {
        let first = page(raw(&nats, "list_secrets", body).await);
        assert_eq!(names_of(&first), expected[..PAGE_DEFAULT], "body {body:?}");
        assert_eq!(
            first.next.as_deref(),
            Some(expected[PAGE_DEFAULT - 1].as_str())
        );
    }
    // The reply always says whether more remain.
    let msg = raw(&nats, "list_secrets", r#"{"prefix": "apps/team-01/"}"#).await;
    let raw_json: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(raw_json["next"], serde_json::Value::Null);
    assert_eq!(raw_json["secrets"].as_array().unwrap().len(), 50);

    // The cursor: strictly after the name given.
    let body = serde_json::json!({ "after": expected[9], "limit": 3 }).to_string();
    let three = page(raw(&nats, "list_secrets", &body).await);
    assert_eq!(names_of(&three), expected[10..13]);
    assert_eq!(three.next.as_deref(), Some(expected[12].as_str()));
    // A limit over the maximum is lowered to it; the last page has no next.
    let big = page(raw(&nats, "list_secrets", r#"{"limit": 100000}"#).await);
    assert_eq!(big.secrets.len(), PAGE_MAX);
    let body = serde_json::json!({ "after": big.next, "limit": 100000 }).to_string();
    let rest = page(raw(&nats, "list_secrets", &body).await);
    assert_eq!(names_of(&rest), expected[PAGE_MAX..]);
    assert_eq!(rest.next, None);
    // The page-level client method is the same request.
    let client_page = deployed
        .admin
        .list_secrets_page("", Some(&expected[0]), Some(2))
        .await
        .unwrap();
    assert_eq!(names_of(&client_page), expected[1..3]);

    for bad in [
        r#"{"limit": 0}"#,
        r#"{"limit": -1}"#,
        r#"{"after": 5}"#,
        "{bad",
    ] {
        let err = admin_error(&raw(&nats, "list_secrets", bad).await);
        assert_eq!(err.map(|e| e.code), Some(400), "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_mappings_pages_through_an_entity_mapped_to_many_names() {
    let deployed = deployed().await;
    let entity = nkeys::KeyPair::new_module().public_key();
    let names = app_names(4_500);
    // Mappings may name secrets that do not exist yet: no secret needs seeding.
    deployed
        .admin
        .add_mapping(&entity, &names.iter().cloned().collect())
        .await
        .unwrap();
    let expected = sorted(names);

    let started = Instant::now();
    let all = deployed.admin.get_mappings(&entity).await.unwrap();
    eprintln!("get_mappings of 4500 names: {:?}", started.elapsed());
    assert_eq!(all, expected);

    // An empty body, as the sample-era client sends: the first page and a cursor.
    let nats = deployed.nats.client().await;
    let msg = raw(&nats, &format!("get_mappings.{entity}"), "").await;
    let first: MappingsResponse = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(first.entity, entity);
    assert_eq!(first.secrets, expected[..PAGE_DEFAULT]);
    assert_eq!(
        first.next.as_deref(),
        Some(expected[PAGE_DEFAULT - 1].as_str())
    );
    let second = deployed
        .admin
        .get_mappings_page(&entity, first.next.as_deref(), Some(PAGE_MAX as u64))
        .await
        .unwrap();
    assert_eq!(
        second.secrets,
        expected[PAGE_DEFAULT..PAGE_DEFAULT + PAGE_MAX]
    );
    let last = deployed
        .admin
        .get_mappings_page(&entity, second.next.as_deref(), Some(PAGE_MAX as u64))
        .await
        .unwrap();
    assert_eq!(last.secrets, expected[PAGE_DEFAULT + PAGE_MAX..]);
    assert_eq!(last.next, None);
    let body = r#"{"prefix": "apps/team-03/", "limit": 1000}"#;
    let team: MappingsResponse = serde_json::from_slice(
        &raw(&nats, &format!("get_mappings.{entity}"), body)
            .await
            .payload,
    )
    .unwrap();
    assert_eq!(team.secrets.len(), 90);
    assert!(team.secrets.iter().all(|n| n.starts_with("apps/team-03/")));
    let zero = raw(&nats, &format!("get_mappings.{entity}"), r#"{"limit": 0}"#).await;
    assert_eq!(admin_error(&zero).map(|e| e.code), Some(400));

    let (ok, stdout, stderr) = run_cli(&deployed.nats, &["mappings", &entity]);
    assert!(ok, "{stderr}");
    let printed: Vec<String> = String::from_utf8(stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(printed, expected);
}

/// `max_payload` minus what a sealed `get` reply of an `L`-byte string adds, less a margin:
/// a string of the returned length fits in one message as a payload, but not with the
/// reply's `Server-Response-Xkey` header (92 bytes encoded).
fn string_that_only_headers_push_over(max_payload: usize) -> usize {
    let json_overhead = serde_json::to_vec(&SecretResponse {
        secret: Some(Secret {
            version: "1".into(),
            string_secret: Some(String::new()),
            binary_secret: None,
        }),
        error: None,
    })
    .unwrap()
    .len();
    // It must also fit in the bucket: the envelope adds 115 bytes to the value.
    assert!(json_overhead + 44 + 40 >= 115);
    // xkv1 box: 4 bytes of magic, a 24-byte nonce, a 16-byte tag.
    max_payload - json_overhead - 44 - 40
}

#[tokio::test]
async fn a_get_too_large_for_one_nats_message_answers_an_error_at_once() {
    let deployed = deployed().await;
    let max_payload = deployed.nats.client().await.server_info().max_payload;
    assert_eq!(max_payload, 1024 * 1024, "the NATS default");
    let issuer = Issuer::new();
    let (jwt, entity) = issuer.component();

    // 900 KB of bytes: stored in one KV message, but a get reply is JSON, where bytes take
    // up to four characters each.
    let binary: Vec<u8> = (0..900_000u32).map(|i| (i % 251) as u8).collect();
    // A string whose reply payload fits, and only its header makes it too large: the case
    // where the server, not the client, refuses the message (and drops the connection).
    let long = "x".repeat(string_that_only_headers_push_over(max_payload));
    seed_secrets(
        &deployed.nats,
        &deployed.keys,
        vec![
            ("big/binary".into(), bytes(&binary)),
            ("big/string".into(), text(&long)),
            ("small".into(), text("still served")),
        ],
        4,
    )
    .await;
    wait_listed(&deployed.admin, "", 3).await;
    deployed
        .admin
        .add_mapping(&entity, &names(&["big/binary", "big/string", "small"]))
        .await
        .unwrap();

    let host = host_client(&deployed.nats).await;
    for name in ["big/binary", "big/string", "small", "big/binary"] {
        let started = Instant::now();
        let got = tokio::time::timeout(
            Duration::from_secs(10),
            host_get(&host, request(name, &jwt)),
        )
        .await
        .expect("an answer, not silence");
        let took = started.elapsed();
        eprintln!("get {name}: {took:?}");
        assert!(took < Duration::from_secs(5), "{name} took {took:?}");
        if name == "small" {
            let secret = got.expect("the service keeps serving");
            assert_eq!(secret.string_secret.as_deref(), Some("still served"));
        } else {
            let err = got.err().unwrap_or_else(|| panic!("{name} was served"));
            assert!(err.contains("too large"), "{name}: {err}");
            assert!(err.contains(&max_payload.to_string()), "{name}: {err}");
        }
    }
    // The backend's connection survived: admin requests on it still work.
    assert_eq!(deployed.admin.list_secrets("big/").await.unwrap().len(), 2);
}

#[tokio::test]
async fn pages_shrink_when_the_server_max_payload_is_small() {
    let server = nats_with_max_payload(32 * 1024);
    let keys = Keys::generate();
    let _backend = start_backend(&server, config(&server, &keys)).await;
    let admin = admin(server.client().await);
    let names = app_names(400);
    let secrets = names.iter().map(|n| (n.clone(), text("v"))).collect();
    seed_secrets(&server, &keys, secrets, 64).await;

    // A default page (1000 entries) of 400 secrets is about 90 KB: over 32 KB. The backend
    // says so with 413 instead of letting the request time out.
    let nats = server.client().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let err = loop {
        let msg = raw(&nats, "list_secrets", "").await;
        match admin_error(&msg) {
            Some(err) => break err,
            None => {
                // The mirror has not loaded enough yet for the page to be large.
                assert!(Instant::now() < deadline, "never too large");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(err.code, REPLY_TOO_LARGE);
    assert!(err.error.contains("too large"), "{}", err.error);
    // The client asks again with smaller pages, and gets everything.
    wait_listed(&admin, "", 400).await;
    assert_eq!(
        admin
            .list_secrets("")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect::<Vec<_>>(),
        sorted(names)
    );
}
