//! The capability provider without a host: the real `piggybank-provider` binary, HostData on
//! its stdin, links put and deleted on the host's subjects, the WIT admin interface called
//! over wRPC as a linked component's host would, and secrets read back with the real
//! `wasmcloud-secrets-client`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::common::provider::bindings::piggybank::secrets0_2_0::admin::{
    self, Error, SecretKind, SecretValue as WitValue,
};
use crate::common::provider::*;
use crate::common::*;
use base64::Engine as _;
use futures::StreamExt as _;

#[tokio::test]
async fn every_admin_function_works_for_a_linked_component() {
    let LinkedProvider {
        nats: _nats,
        keys,
        provider,
        wrpc,
        ..
    } = linked_provider().await;
    let ops = || caller("ops");

    let v1 = admin::put_secret(&wrpc, ops(), "db/password", &text_value("hunter2"), None)
        .await
        .unwrap()
        .unwrap();
    let bytes = WitValue::Bytes(vec![0, 159, 146, 150].into());
    admin::put_secret(&wrpc, ops(), "db/cert", &bytes, Some(0))
        .await
        .unwrap()
        .unwrap();
    // Compare-and-set: a stale version is refused, the current one is accepted.
    let stale = admin::put_secret(
        &wrpc,
        ops(),
        "db/password",
        &text_value("x"),
        Some(v1 + 100),
    )
    .await
    .unwrap();
    assert!(matches!(stale, Err(Error::VersionConflict(_))), "{stale:?}");
    let v2 = admin::put_secret(
        &wrpc,
        ops(),
        "db/password",
        &text_value("hunter3"),
        Some(v1),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(v2 > v1);

    let info = admin::describe_secret(&wrpc, ops(), "db/password")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((info.version, info.kind), (v2, SecretKind::Text));
    assert!(info.created_at.is_some());
    let listed = admin::list_secrets(&wrpc, ops(), "db/", None, None)
        .await
        .unwrap()
        .unwrap();
    let names: Vec<_> = listed.secrets.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["db/cert", "db/password"]);
    assert_eq!(listed.secrets[0].kind, SecretKind::Bytes);
    assert_eq!(listed.next, None);

    let entity = component_key();
    let mapped = admin::add_mapping(&wrpc, ops(), &entity, &["db/password", "db/cert"])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(mapped, ["db/cert", "db/password"]);
    let left = admin::remove_mapping(&wrpc, ops(), &entity, &["db/cert"])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(left, ["db/password"]);
    assert_eq!(
        admin::list_mappings(&wrpc, ops(), &entity, None, None)
            .await
            .unwrap()
            .unwrap()
            .names,
        ["db/password"]
    );

    let status = admin::status(&wrpc, ops()).await.unwrap().unwrap();
    assert_eq!(status.backend_name, "nats-kv");
    assert_eq!(status.subject_prefix, "wasmcloud.secrets.v1alpha1.nats-kv");
    assert_eq!(status.server_xkey, keys.transit_public());
    assert!(status.nats_connected && !status.sealed && !status.read_only);
    assert_eq!((status.secrets, status.mapped_entities), (2, 1));

    admin::delete_secret(&wrpc, ops(), "db/cert")
        .await
        .unwrap()
        .unwrap();
    let gone = admin::describe_secret(&wrpc, ops(), "db/cert")
        .await
        .unwrap();
    assert!(matches!(gone, Err(Error::NotFound(_))), "{gone:?}");
    let again = admin::delete_secret(&wrpc, ops(), "db/cert").await.unwrap();
    assert!(matches!(again, Err(Error::NotFound(_))), "{again:?}");

    let logs = provider.stderr();
    for secret in [
        "hunter2",
        "hunter3",
        keys.transit.as_str(),
        keys.encryption.as_str(),
    ] {
        assert!(!logs.contains(secret), "a secret reached the log");
    }
}

#[tokio::test]
async fn a_secret_put_over_wrpc_is_served_to_hosts_over_the_protocol() {
    let LinkedProvider {
        nats,
        provider: _provider,
        wrpc,
        ..
    } = linked_provider().await;

    let issuer = Issuer::new();
    let (jwt, entity) = issuer.component();
    admin::put_secret(
        &wrpc,
        caller("ops"),
        "api-token",
        &text_value("t0k3n"),
        None,
    )
    .await
    .unwrap()
    .unwrap();
    admin::add_mapping(&wrpc, caller("ops"), &entity, &["api-token"])
        .await
        .unwrap()
        .unwrap();

    let host = host_client(&nats).await;
    let secret = host_get(&host, request("api-token", &jwt)).await.unwrap();
    assert_eq!(secret.string_secret.as_deref(), Some("t0k3n"));

    admin::remove_mapping(&wrpc, caller("ops"), &entity, &["api-token"])
        .await
        .unwrap()
        .unwrap();
    let refused = host_refusal(&host, request("api-token", &jwt)).await;
    assert!(refused.contains("nauthorized"), "{refused}");

    // Each WIT call is an audit record naming the link it came through. Records are written
    // in the background, each trail by its own batches (admin changes and refusals apart),
    // so one trail's record may land before an earlier call's on another: wait for all.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let records = loop {
        let (ok, out, err) = cli(&nats, &["audit", "--json"], None, &[]);
        assert!(ok, "{err}");
        let records: Vec<serde_json::Value> = String::from_utf8_lossy(&out)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let has = |door: &str, op: Option<&str>| {
            records.iter().any(|r| {
                r["front_door"] == door
                    && op.is_none_or(|op| r["operation"] == op)
                    && (op.is_some() || r["outcome"] == "denied")
            })
        };
        if has("protocol", None)
            && has("wit", Some("put_secret"))
            && has("wit", Some("remove_mapping"))
        {
            break records;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not every call's record within 10 s: {records:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let put = records
        .iter()
        .find(|r| r["front_door"] == "wit" && r["operation"] == "put_secret")
        .unwrap_or_else(|| panic!("no WIT put record in {records:?}"));
    assert_eq!(put["secret"], "api-token");
    assert_eq!(put["outcome"], "allowed");
    assert_eq!(put["link"]["source_id"], "ops");
    assert_eq!(put["link"]["name"], "default");
    assert!(records
        .iter()
        .any(|r| r["front_door"] == "wit" && r["operation"] == "remove_mapping"));
    assert!(records
        .iter()
        .any(|r| r["front_door"] == "protocol" && r["outcome"] == "denied"));
}

#[tokio::test]
async fn unlinked_anonymous_and_out_of_scope_calls_are_refused() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let provider = ProviderProc::start(&nats, Setup::with_keys(&keys)).await;
    let client = nats.client().await;
    let wrpc = provider.wrpc(&client).await;

    let unlinked = admin::list_secrets(&wrpc, caller("stranger"), "", None, None)
        .await
        .unwrap();
    assert!(
        matches!(unlinked, Err(Error::Unauthorized(_))),
        "{unlinked:?}"
    );
    let anonymous = admin::status(&wrpc, None).await.unwrap();
    assert!(
        matches!(anonymous, Err(Error::Unauthorized(_))),
        "{anonymous:?}"
    );

    provider.put_link(&client, &provider.link("ops", &[])).await;
    provider
        .put_link(&client, &provider.link("shop", &[("prefix", "shop/")]))
        .await;
    provider
        .put_link(
            &client,
            &provider.link("auditor", &[("prefix", "shop/"), ("read_only", "true")]),
        )
        .await;
    let mut versions = HashMap::new();
    for name in ["shop/db", "bank/db"] {
        let version = admin::put_secret(&wrpc, caller("ops"), name, &text_value("v"), None)
            .await
            .unwrap()
            .unwrap();
        versions.insert(name, version);
    }
    let entity = component_key();

    // The shop link reaches shop/ names only, for every function that names a secret.
    let shop = || caller("shop");
    let outside = [
        admin::put_secret(&wrpc, shop(), "bank/db", &text_value("x"), None)
            .await
            .unwrap()
            .map(drop),
        admin::delete_secret(&wrpc, shop(), "bank/db")
            .await
            .unwrap(),
        admin::describe_secret(&wrpc, shop(), "bank/db")
            .await
            .unwrap()
            .map(drop),
        admin::list_secrets(&wrpc, shop(), "bank/", None, None)
            .await
            .unwrap()
            .map(drop),
        admin::add_mapping(&wrpc, shop(), &entity, &["bank/db"])
            .await
            .unwrap()
            .map(drop),
        admin::remove_mapping(&wrpc, shop(), &entity, &["bank/db"])
            .await
            .unwrap()
            .map(drop),
    ];
    for result in outside {
        assert!(matches!(result, Err(Error::Unauthorized(_))), "{result:?}");
    }
    let seen = admin::list_secrets(&wrpc, shop(), "", None, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        seen.secrets
            .iter()
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>(),
        ["shop/db"]
    );
    admin::add_mapping(&wrpc, shop(), &entity, &["shop/db"])
        .await
        .unwrap()
        .unwrap();
    admin::add_mapping(&wrpc, caller("ops"), &entity, &["bank/db"])
        .await
        .unwrap()
        .unwrap();
    let visible = admin::list_mappings(&wrpc, shop(), &entity, None, None)
        .await
        .unwrap()
        .unwrap()
        .names;
    assert_eq!(visible, ["shop/db"], "a scope hides mappings outside it");

    // The read-only link reads within its scope and writes nothing.
    let auditor = || caller("auditor");
    let status = admin::status(&wrpc, auditor()).await.unwrap().unwrap();
    assert!(status.read_only);
    assert_eq!(status.scope_prefix, "shop/");
    assert!(admin::describe_secret(&wrpc, auditor(), "shop/db")
        .await
        .unwrap()
        .is_ok());
    let writes = [
        admin::put_secret(&wrpc, auditor(), "shop/db", &text_value("x"), None)
            .await
            .unwrap()
            .map(drop),
        admin::delete_secret(&wrpc, auditor(), "shop/db")
            .await
            .unwrap(),
        admin::add_mapping(&wrpc, auditor(), &entity, &["shop/db"])
            .await
            .unwrap()
            .map(drop),
    ];
    for result in writes {
        assert!(matches!(result, Err(Error::Unauthorized(_))), "{result:?}");
    }
    // Nothing the refused calls tried happened.
    for name in ["shop/db", "bank/db"] {
        let info = admin::describe_secret(&wrpc, caller("ops"), name)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(info.version, versions[name], "{name} was changed");
    }
    let mapped = admin::list_mappings(&wrpc, caller("ops"), &entity, None, None)
        .await
        .unwrap()
        .unwrap()
        .names;
    assert_eq!(mapped, ["bank/db", "shop/db"]);
}

#[tokio::test]
async fn links_in_host_data_are_honoured_from_the_start() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let (mut host_data, link_put_id) = host_data(
        &nats.url(),
        &unique_name("lattice"),
        Setup::with_keys(&keys),
    );
    host_data.link_definitions = vec![
        link_to(&host_data.provider_key, "ops", &[("prefix", "ops/")]),
        link_to(&host_data.provider_key, "broken", &[("prefix", "a b")]),
    ];
    let provider = ProviderProc::start_with(&nats, host_data, link_put_id).await;
    let client = nats.client().await;
    let wrpc = provider.wrpc(&client).await;
    let status = admin::status(&wrpc, caller("ops")).await.unwrap().unwrap();
    assert_eq!(status.scope_prefix, "ops/");
    let broken = admin::status(&wrpc, caller("broken")).await.unwrap();
    assert!(matches!(broken, Err(Error::Unauthorized(_))), "{broken:?}");
}

#[tokio::test]
async fn deleting_the_link_revokes_access_at_once() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let provider = ProviderProc::start(&nats, Setup::with_keys(&keys)).await;
    let client = nats.client().await;
    let link = provider.link("ops", &[]);
    provider.put_link(&client, &link).await;
    let wrpc = provider.wrpc(&client).await;
    assert!(admin::status(&wrpc, caller("ops")).await.unwrap().is_ok());

    let started = Instant::now();
    provider.delete_link(&client, &link).await;
    loop {
        let status = admin::status(&wrpc, caller("ops")).await.unwrap();
        if matches!(status, Err(Error::Unauthorized(_))) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "link delete not honoured within 1 s"
        );
    }
    eprintln!("link delete honoured after {:?}", started.elapsed());
    let put = admin::put_secret(&wrpc, caller("ops"), "x", &text_value("v"), None)
        .await
        .unwrap();
    assert!(matches!(put, Err(Error::Unauthorized(_))), "{put:?}");
}

#[tokio::test]
async fn bad_link_config_is_refused_and_other_links_keep_working() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let provider = ProviderProc::start(&nats, Setup::with_keys(&keys)).await;
    let client = nats.client().await;
    provider
        .put_link(&client, &provider.link("good", &[]))
        .await;

    let mut wrong_interface = provider.link("other-iface", &[]);
    wrong_interface.wit_package = "keyvalue".into();
    let bad = [
        provider.link("typo", &[("read-only", "true")]),
        provider.link("maybe", &[("read_only", "maybe")]),
        provider.link("wild", &[("prefix", "shop.>")]),
        wrong_interface,
    ];
    for link in &bad {
        provider.publish_link(&client, link).await;
    }
    // Link puts are handled in order: once this one is honoured, the bad ones were seen.
    provider
        .put_link(&client, &provider.link("later", &[]))
        .await;

    let wrpc = provider.wrpc(&client).await;
    for link in &bad {
        let refused = admin::status(&wrpc, caller(&link.source_id)).await.unwrap();
        assert!(
            matches!(refused, Err(Error::Unauthorized(_))),
            "{refused:?}"
        );
    }
    for good in ["good", "later"] {
        assert!(admin::status(&wrpc, caller(good)).await.unwrap().is_ok());
    }
    let logs = provider.stderr();
    for why in ["read-only", "maybe", "shop.>", "keyvalue"] {
        assert!(
            logs.lines()
                .any(|l| l.contains("link refused") && l.contains(why)),
            "no clear refusal for {why} in:\n{logs}"
        );
    }
}

#[tokio::test]
async fn bad_arguments_get_the_typed_error_and_the_provider_keeps_serving() {
    let LinkedProvider {
        nats: _nats,
        provider,
        client,
        wrpc,
        ..
    } = linked_provider().await;
    let ops = || caller("ops");
    let too_long = "n".repeat(300);

    for name in ["", "a b", "a..b", ".hidden", "wild*", too_long.as_str()] {
        let put = admin::put_secret(&wrpc, ops(), name, &text_value("v"), None)
            .await
            .unwrap();
        assert!(
            matches!(put, Err(Error::InvalidArgument(_))),
            "{name:?}: {put:?}"
        );
        let info = admin::describe_secret(&wrpc, ops(), name).await.unwrap();
        assert!(
            matches!(info, Err(Error::InvalidArgument(_))),
            "{name:?}: {info:?}"
        );
    }
    for entity in ["", "not-a-key", &nkeys::KeyPair::new_account().public_key()] {
        let add = admin::add_mapping(&wrpc, ops(), entity, &["a"])
            .await
            .unwrap();
        assert!(
            matches!(add, Err(Error::InvalidArgument(_))),
            "{entity:?}: {add:?}"
        );
        let list = admin::list_mappings(&wrpc, ops(), entity, None, None)
            .await
            .unwrap();
        assert!(
            matches!(list, Err(Error::InvalidArgument(_))),
            "{entity:?}: {list:?}"
        );
    }
    let empty = admin::add_mapping(&wrpc, ops(), &component_key(), &[])
        .await
        .unwrap();
    assert!(matches!(empty, Err(Error::InvalidArgument(_))), "{empty:?}");
    let bad_name = admin::add_mapping(&wrpc, ops(), &component_key(), &["a b"])
        .await
        .unwrap();
    assert!(
        matches!(bad_name, Err(Error::InvalidArgument(_))),
        "{bad_name:?}"
    );
    let missing = admin::describe_secret(&wrpc, ops(), "nope").await.unwrap();
    assert!(matches!(missing, Err(Error::NotFound(_))), "{missing:?}");

    // Garbage on the wire (not a wRPC encoding) does not stop the provider.
    client
        .publish(
            format!(
                "{}.{}.wrpc.0.0.1.piggybank:secrets/admin@0.2.0.status",
                provider.lattice, provider.provider_id
            ),
            vec![0xff; 64].into(),
        )
        .await
        .unwrap();
    assert!(
        admin::put_secret(&wrpc, ops(), "ok", &text_value("v"), None)
            .await
            .unwrap()
            .is_ok()
    );
    assert!(!provider.stderr().contains("panicked"));
}

#[tokio::test]
async fn health_reports_the_secrets_connection_and_buckets() {
    let lattice_nats = NatsServer::start();
    let secrets_nats = NatsServer::start();
    let keys = Keys::generate();
    let setup = Setup::with_keys(&keys).config("nats_url", &secrets_nats.url());
    let provider = ProviderProc::start(&lattice_nats, setup).await;
    let client = lattice_nats.client().await;

    let healthy = provider.health(&client).await.unwrap();
    assert!(healthy.healthy, "{healthy:?}");
    let message = healthy.message.unwrap_or_default();
    assert!(
        message.contains("unsealed") && message.contains("buckets reachable"),
        "{message}"
    );

    // The protocol is served on the secrets connection, not the lattice's.
    let host = host_client(&secrets_nats).await;
    let (jwt, _) = Issuer::new().component();
    let refused = host_refusal(&host, request("anything", &jwt)).await;
    assert!(refused.contains("nauthorized"), "{refused}");

    drop(secrets_nats);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let report = provider.health(&client).await.unwrap();
        if !report.healthy {
            eprintln!("unhealthy: {:?}", report.message);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still healthy with its NATS gone"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn host_shutdown_drains_and_exits_cleanly() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let mut provider = ProviderProc::start(&nats, Setup::with_keys(&keys)).await;
    let client = nats.client().await;
    provider.put_link(&client, &provider.link("ops", &[])).await;

    let reply = provider.shutdown(&client).await;
    assert_eq!(reply, "shutting down");
    let status = provider
        .proc
        .wait_exit(Duration::from_secs(15))
        .expect("provider exits after shutdown");
    assert!(status.success(), "exit status {status:?}");
    assert!(provider.stderr().contains("piggybank provider stopped"));
    // Nobody answers the protocol any more.
    let gone = client
        .request("wasmcloud.secrets.v1alpha1.nats-kv.server_xkey", "".into())
        .await;
    assert!(gone.is_err(), "a stopped provider still answered");
}

#[tokio::test]
async fn sigterm_drains_and_exits_cleanly() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let mut provider = ProviderProc::start(&nats, Setup::with_keys(&keys)).await;
    provider.proc.signal(libc::SIGTERM);
    let status = provider
        .proc
        .wait_exit(Duration::from_secs(15))
        .expect("provider exits on SIGTERM");
    assert!(status.success(), "exit status {status:?}");
}

/// With its NATS server gone, the provider still stops on SIGTERM, after its bounded drain.
#[tokio::test]
async fn sigterm_stops_the_provider_even_when_nats_is_gone() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let mut provider = ProviderProc::start(&nats, Setup::with_keys(&keys)).await;
    let _dir = nats.stop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    provider.proc.signal(libc::SIGTERM);
    let status = provider.proc.wait_exit(Duration::from_secs(20));
    assert!(
        status.is_some(),
        "provider still running 20 s after SIGTERM; stderr:\n{}",
        provider.stderr()
    );
    eprintln!("stopped {:?} after SIGTERM", started.elapsed());
}

/// Start the provider with `stdin`, expect it to stop: exit code 1, no panic, and a last line
/// that says why.
fn expect_startup_failure(stdin: &[u8], why: &str) {
    let (mut proc, stderr) = spawn_with_stdin(stdin);
    let status = proc
        .wait_exit(Duration::from_secs(20))
        .expect("provider stops on bad startup input");
    std::thread::sleep(Duration::from_millis(100));
    let stderr = stderr.lock().unwrap().clone();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("piggybank-provider: ") && last.contains(why),
        "expected one clear line about {why:?}, got:\n{stderr}"
    );
}

#[tokio::test]
async fn bad_startup_input_stops_with_one_clear_line() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let lattice = unique_name("lattice");

    expect_startup_failure(b"", "stdin is empty");
    expect_startup_failure(b"%%% not base64 %%%\n", "not base64");
    let garbage = base64::engine::general_purpose::STANDARD.encode(format!(
        "{{\"secrets\": {{\"transit_xkey_seed\": \"{}\"",
        keys.transit.as_str()
    ));
    expect_startup_failure(format!("{garbage}\n").as_bytes(), "not HostData JSON");

    let mut data_key_only = Setup::with_keys(&keys);
    data_key_only.secrets.remove("transit_xkey_seed");
    let (no_transit, _) = host_data(&nats.url(), &lattice, data_key_only);
    expect_startup_failure(&encode(&no_transit), "missing secret \"transit_xkey_seed\"");

    let plain = Setup {
        config: [
            ("transit_xkey_seed", keys.transit.as_str()),
            ("encryption_xkey_seed", keys.encryption.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        secrets: HashMap::new(),
    };
    let (plain_keys, _) = host_data(&nats.url(), &lattice, plain);
    expect_startup_failure(&encode(&plain_keys), "insecure_config_keys");

    let (bad_seed, _) = host_data(
        &nats.url(),
        &lattice,
        Setup::with_keys(&Keys {
            transit: "SXnotaseed".to_string().into(),
            encryption: keys.encryption.clone(),
        }),
    );
    expect_startup_failure(&encode(&bad_seed), "transit");

    let bad_url = Setup::with_keys(&keys).config("nats_url", "nats://bad host:4222");
    let (bad_url, _) = host_data(&nats.url(), &lattice, bad_url);
    expect_startup_failure(
        &encode(&bad_url),
        "failed to connect to NATS at nats://bad host",
    );

    let closed = format!("nats://127.0.0.1:{}", free_port());
    let unreachable = Setup::with_keys(&keys).config("nats_url", &closed);
    let (unreachable, _) = host_data(&nats.url(), &lattice, unreachable);
    expect_startup_failure(&encode(&unreachable), &closed);

    let (lattice_down, _) = host_data(&closed, &lattice, Setup::with_keys(&keys));
    expect_startup_failure(
        &encode(&lattice_down),
        &format!("lattice's NATS at {closed}"),
    );
}

#[tokio::test]
async fn without_keys_the_provider_runs_sealed_and_unlocks_over_nats() {
    let nats = NatsServer::start();
    let setup = Setup {
        config: HashMap::new(),
        secrets: HashMap::new(),
    };
    let provider = ProviderProc::start(&nats, setup).await;
    let client = nats.client().await;
    let health = provider.health(&client).await.unwrap();
    assert!(health.message.unwrap_or_default().starts_with("sealed"));
    provider.put_link(&client, &provider.link("ops", &[])).await;
    let wrpc = provider.wrpc(&client).await;
    assert!(
        admin::status(&wrpc, caller("ops"))
            .await
            .unwrap()
            .unwrap()
            .sealed
    );
    let put = admin::put_secret(&wrpc, caller("ops"), "x", &text_value("v"), None)
        .await
        .unwrap();
    assert!(matches!(put, Err(Error::Sealed(_))), "{put:?}");

    let init = client
        .request("piggybank.database.initialize", "".into())
        .await
        .unwrap();
    let key: serde_json::Value = serde_json::from_slice(&init.payload).unwrap();
    let unlock = serde_json::json!({ "database_key": key["database_key"] }).to_string();
    client
        .request("piggybank.database.unlock", unlock.into())
        .await
        .unwrap();
    let status = admin::status(&wrpc, caller("ops")).await.unwrap().unwrap();
    assert!(!status.sealed && !status.server_xkey.is_empty());
    assert!(
        admin::put_secret(&wrpc, caller("ops"), "x", &text_value("v"), None)
            .await
            .unwrap()
            .is_ok()
    );
}

#[tokio::test]
async fn insecure_config_keys_start_with_a_warning() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let setup = Setup {
        config: [
            ("transit_xkey_seed", keys.transit.as_str()),
            ("encryption_xkey_seed", keys.encryption.as_str()),
            ("insecure_config_keys", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        secrets: HashMap::new(),
    };
    let provider = ProviderProc::start(&nats, setup).await;
    let client = nats.client().await;
    provider.put_link(&client, &provider.link("ops", &[])).await;
    let wrpc = provider.wrpc(&client).await;
    let status = admin::status(&wrpc, caller("ops")).await.unwrap().unwrap();
    assert_eq!(status.server_xkey, keys.transit_public());
    let logs = provider.stderr();
    assert!(logs.contains("insecure_config_keys = true"), "{logs}");
    assert!(!logs.contains(keys.transit.as_str()) && !logs.contains(keys.encryption.as_str()));
}

#[tokio::test]
async fn list_secrets_and_list_mappings_page_with_a_cursor_within_the_scope() {
    let LinkedProvider {
        nats: _nats,
        provider,
        client,
        ..
    } = linked_provider().await;
    provider
        .put_link(&client, &provider.link("shop", &[("prefix", "shop/")]))
        .await;
    let wrpc = provider.wrpc(&client).await;
    let shop_names: Vec<String> = (0..7).map(|i| format!("shop/s{i}")).collect();
    let mut all = shop_names.clone();
    all.extend(["bank/a".to_string(), "shop0".to_string(), "zz".to_string()]);
    for name in &all {
        admin::put_secret(&wrpc, caller("ops"), name, &text_value("v"), None)
            .await
            .unwrap()
            .unwrap();
    }

    // Pages of 3 through the shop link's scope: shop/ names only, each page resuming
    // strictly after the previous page's `next`.
    let mut pages = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = admin::list_secrets(&wrpc, caller("shop"), "", after.as_deref(), Some(3))
            .await
            .unwrap()
            .unwrap();
        let names: Vec<String> = page.secrets.into_iter().map(|i| i.name).collect();
        if let Some(next) = &page.next {
            assert_eq!(
                Some(next),
                names.last(),
                "the cursor is the page's last name"
            );
        }
        pages.push(names);
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(
        pages,
        [&shop_names[0..3], &shop_names[3..6], &shop_names[6..]],
        "three pages, in name order"
    );
    // The unscoped link sees everything; the default limit holds all ten.
    let everything = admin::list_secrets(&wrpc, caller("ops"), "", None, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(everything.secrets.len(), all.len());
    assert_eq!(everything.next, None);
    let zero = admin::list_secrets(&wrpc, caller("ops"), "", None, Some(0))
        .await
        .unwrap();
    assert!(matches!(zero, Err(Error::InvalidArgument(_))), "{zero:?}");

    let entity = component_key();
    let mapped: Vec<&str> = all.iter().map(String::as_str).collect();
    admin::add_mapping(&wrpc, caller("ops"), &entity, &mapped)
        .await
        .unwrap()
        .unwrap();
    let first = admin::list_mappings(&wrpc, caller("shop"), &entity, None, Some(4))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.names, shop_names[..4]);
    assert_eq!(first.next.as_deref(), Some(shop_names[3].as_str()));
    let rest = admin::list_mappings(
        &wrpc,
        caller("shop"),
        &entity,
        first.next.as_deref(),
        Some(4),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!((rest.names, rest.next), (shop_names[4..].to_vec(), None));
    let zero = admin::list_mappings(&wrpc, caller("ops"), &entity, None, Some(0))
        .await
        .unwrap();
    assert!(matches!(zero, Err(Error::InvalidArgument(_))), "{zero:?}");
}

/// The provider writes a result as a stream of messages of at most the max payload each, so a
/// WIT result larger than one NATS message is not lost (unlike a plain reply); parameters
/// larger than one message arrive whole too.
#[tokio::test]
async fn wrpc_results_larger_than_the_max_payload_arrive_whole() {
    let nats = nats_with_max_payload(16 * 1024);
    let keys = Keys::generate();
    let provider = ProviderProc::start(&nats, Setup::with_keys(&keys)).await;
    let client = nats.client().await;
    provider.put_link(&client, &provider.link("ops", &[])).await;
    let wrpc = provider.wrpc(&client).await;
    let names: Vec<String> = (0..300)
        .map(|i| format!("apps/team-{:02}/service-{i:05}/db-password", i % 50))
        .collect();
    let secrets = names.iter().map(|n| (n.clone(), text("v"))).collect();
    seed_secrets(&nats, &keys, secrets, 64).await;

    let deadline = Instant::now() + Duration::from_secs(20);
    let page = loop {
        let page = admin::list_secrets(&wrpc, caller("ops"), "", None, Some(2000))
            .await
            .unwrap()
            .unwrap();
        if page.secrets.len() == names.len() {
            break page;
        }
        assert!(
            Instant::now() < deadline,
            "the provider never listed them all"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Each entry is well over 54 bytes (a 40-byte name, two times, a key id): the result
    // is several times the 16 KiB max payload.
    let mut sorted = names.clone();
    sorted.sort();
    let listed: Vec<String> = page.secrets.into_iter().map(|i| i.name).collect();
    assert_eq!(listed, sorted);
    assert_eq!(page.next, None);

    // 40 KiB of parameters: the handler got them whole (a typed answer about the name).
    let long = "n".repeat(40 * 1024);
    let described = admin::describe_secret(&wrpc, caller("ops"), &long)
        .await
        .unwrap();
    assert!(
        matches!(described, Err(Error::InvalidArgument(_))),
        "{described:?}"
    );
}

/// A WIT call's parameters are held in memory until they are whole, so they are bounded by
/// what the stores' server could store (its max payload, plus room for names), not by the
/// 64 MiB a NATS message may be at most: a larger call is dropped as its parts arrive, and
/// the caller fails at once. A call within the bound (positive control) is answered.
#[tokio::test]
async fn wit_parameters_larger_than_the_server_could_store_are_dropped_as_they_arrive() {
    let nats = nats_with_max_payload(16 * 1024);
    let keys = Keys::generate();
    let provider = ProviderProc::start(&nats, Setup::with_keys(&keys)).await;
    let client = nats.client().await;
    provider.put_link(&client, &provider.link("ops", &[])).await;
    let wrpc = provider.wrpc(&client).await;

    let within = "n".repeat(40 * 1024);
    let answered = tokio::time::timeout(
        Duration::from_secs(20),
        admin::describe_secret(&wrpc, caller("ops"), &within),
    )
    .await
    .expect("answered in time")
    .unwrap();
    assert!(
        matches!(answered, Err(Error::InvalidArgument(_))),
        "{answered:?}"
    );

    // 16 KiB + 64 KiB is the bound: 200 KiB is dropped.
    let beyond = "n".repeat(200 * 1024);
    let dropped = tokio::time::timeout(
        Duration::from_secs(20),
        admin::describe_secret(&wrpc, caller("ops"), &beyond),
    )
    .await
    .expect("the caller fails at once, not at its own timeout");
    assert!(dropped.is_err(), "{dropped:?}");
    eventually("the provider logs the drop with its bound", || async {
        provider
            .stderr()
            .contains("wRPC invocation dropped: parameters too large")
            && provider
                .stderr()
                .contains(&format!("max_bytes={}", 16 * 1024 + 64 * 1024))
    })
    .await;
}

/// The host forwards a put for an existing link whose config changed; the SDK drops it as a
/// duplicate, so the provider follows the host's link puts itself.
#[tokio::test]
async fn changing_a_links_config_in_place_takes_effect() {
    let LinkedProvider {
        nats: _nats,
        provider,
        client,
        wrpc,
        ..
    } = linked_provider().await;
    let put = |name: &'static str| {
        let wrpc = wrpc.clone();
        async move {
            admin::put_secret(&wrpc, caller("ops"), name, &text_value("v"), None)
                .await
                .unwrap()
        }
    };
    assert!(put("shop2/db").await.is_ok());

    // Read-only, for the same source, target, interface and link name: as `wash link put`
    // again (or wadm) sends it.
    let started = Instant::now();
    provider
        .publish_link(&client, &provider.link("ops", &[("read_only", "true")]))
        .await;
    eventually("read_only honoured", || async {
        matches!(put("shop/db").await, Err(Error::Unauthorized(_)))
    })
    .await;
    eprintln!("in-place read_only honoured after {:?}", started.elapsed());
    let status = admin::status(&wrpc, caller("ops")).await.unwrap().unwrap();
    assert!(status.read_only);
    for write in [
        admin::delete_secret(&wrpc, caller("ops"), "shop2/db")
            .await
            .unwrap(),
        admin::add_mapping(&wrpc, caller("ops"), &component_key(), &["shop2/db"])
            .await
            .unwrap()
            .map(|_| ()),
    ] {
        assert!(matches!(write, Err(Error::Unauthorized(_))), "{write:?}");
    }
    let logs = provider.stderr();
    assert!(
        logs.contains("Ignoring duplicate link put"),
        "the SDK was expected to drop the update itself:\n{logs}"
    );

    // A prefix without a slash is a folder: `shop` covers shop/..., not shop2/...
    provider
        .publish_link(&client, &provider.link("ops", &[("prefix", "shop")]))
        .await;
    eventually("prefix honoured", || async {
        admin::status(&wrpc, caller("ops"))
            .await
            .unwrap()
            .is_ok_and(|s| s.scope_prefix == "shop/" && !s.read_only)
    })
    .await;
    assert!(put("shop/db").await.is_ok());
    for outside in ["shop2/db", "shop"] {
        let refused = put(outside).await;
        assert!(
            matches!(refused, Err(Error::Unauthorized(_))),
            "{outside}: {refused:?}"
        );
    }
    let listed = admin::list_secrets(&wrpc, caller("ops"), "shop", None, None)
        .await
        .unwrap()
        .unwrap();
    let names: Vec<String> = listed.secrets.into_iter().map(|i| i.name).collect();
    assert_eq!(names, ["shop/db"]);
}

#[tokio::test]
async fn a_refused_link_update_revokes_access_until_a_valid_one() {
    let LinkedProvider {
        nats: _nats,
        provider,
        client,
        wrpc,
        ..
    } = linked_provider().await;

    // A typo must not leave the old, wider scope in place.
    provider
        .publish_link(&client, &provider.link("ops", &[("prefx", "shop/")]))
        .await;
    eventually("refused update revokes", || async {
        matches!(
            admin::status(&wrpc, caller("ops")).await.unwrap(),
            Err(Error::Unauthorized(_))
        )
    })
    .await;
    let put = admin::put_secret(&wrpc, caller("ops"), "shop/db", &text_value("v"), None)
        .await
        .unwrap();
    assert!(matches!(put, Err(Error::Unauthorized(_))), "{put:?}");
    let logs = provider.stderr();
    assert!(
        logs.lines()
            .any(|l| l.contains("link refused") && l.contains("prefx")),
        "{logs}"
    );

    provider
        .publish_link(&client, &provider.link("ops", &[("prefix", "shop/")]))
        .await;
    eventually("valid update restores", || async {
        admin::status(&wrpc, caller("ops"))
            .await
            .unwrap()
            .is_ok_and(|s| s.scope_prefix == "shop/")
    })
    .await;
    assert!(
        admin::put_secret(&wrpc, caller("ops"), "shop/db", &text_value("v"), None)
            .await
            .unwrap()
            .is_ok()
    );

    // Deleting the link still revokes it, and a late copy of an old put cannot restore it.
    let link = provider.link("ops", &[("prefix", "shop/")]);
    provider.delete_link(&client, &link).await;
    eventually("delete honoured", || async {
        admin::status(&wrpc, caller("ops")).await.unwrap().is_err()
    })
    .await;
    provider.put_link(&client, &link).await;
}

#[tokio::test]
async fn a_malformed_trusted_issuer_stops_the_provider() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let good = nkeys::KeyPair::new_account().public_key();
    for bad in [
        "not-a-key".to_string(),
        format!("{good}, {}", nkeys::KeyPair::new_module().public_key()),
    ] {
        let setup = Setup::with_keys(&keys).config("trusted_issuers", &bad);
        let (host_data, _) = host_data(&nats.url(), &unique_name("lattice"), setup);
        expect_startup_failure(&encode(&host_data), "trusted_issuers");
    }
}

/// A call that never sends its end of parameters (the message wrpc-transport-nats 0.29 can
/// lose) holds its permit only until the time limit; then the next call gets it.
#[tokio::test]
async fn a_call_whose_parameters_never_complete_is_dropped_and_frees_its_permit() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let setup = Setup::with_keys(&keys)
        .config("wrpc_call_timeout_ms", "500")
        .config("max_in_flight", "1");
    let provider = ProviderProc::start(&nats, setup).await;
    let client = nats.client().await;
    provider.put_link(&client, &provider.link("ops", &[])).await;
    let wrpc = provider.wrpc(&client).await;

    // The stuck caller: its own inbox, to see the handshake and its results.
    let inbox = client.new_inbox();
    let mut handshake = client.subscribe(inbox.clone()).await.unwrap();
    let mut results = client.subscribe(format!("{inbox}.results")).await.unwrap();
    provider.invoke_raw(&client, "status", &inbox).await;
    let accepted = tokio::time::timeout(Duration::from_secs(5), handshake.next())
        .await
        .expect("handshake")
        .expect("handshake");
    assert!(
        accepted.reply.is_some(),
        "the handshake names where params go"
    );
    let started = Instant::now();

    // The only permit is the stuck call's until its limit; then this call gets it.
    let status = tokio::time::timeout(Duration::from_secs(10), admin::status(&wrpc, caller("ops")))
        .await
        .expect("a call after a stuck one hung")
        .unwrap();
    assert!(status.is_ok(), "{status:?}");
    let waited = started.elapsed();
    eprintln!("the next call waited {waited:?} for the stuck call's permit");
    assert!(waited >= Duration::from_millis(300), "{waited:?}");

    // The stuck caller is told at once: its results stream ends (an empty message).
    let end = tokio::time::timeout(Duration::from_secs(2), results.next())
        .await
        .expect("end of results")
        .expect("end of results");
    assert!(end.payload.is_empty());
    let logs = provider.stderr();
    assert!(
        logs.lines()
            .any(|l| l.contains("WARN") && l.contains("did not complete within the time limit")),
        "{logs}"
    );
    // The permit is back: calls go through without waiting.
    let quick = Instant::now();
    for _ in 0..20 {
        admin::status(&wrpc, caller("ops")).await.unwrap().unwrap();
    }
    assert!(quick.elapsed() < Duration::from_secs(5));
}

/// As a host does: a new transport client (with its own demultiplexing task) for every call,
/// and calls without arguments, whose end-of-parameters message is the one
/// wrpc-transport-nats 0.29's server can lose (then that call, and every later call of the
/// function, hangs). 1,000 sequential calls, then 6,400 from 64 callers at once, which is
/// what makes the old server lose one (in 5 runs of 6 here). The test runs on one thread
/// so that its own clients, which have the same race (the host's half, see the README),
/// always register their listeners before an answer can arrive: a hang here is the
/// provider's.
#[tokio::test]
async fn thousands_of_calls_each_from_a_new_transport_client_never_hang() {
    let LinkedProvider {
        nats: _nats,
        provider,
        client,
        ..
    } = linked_provider().await;
    let call = |who: String| {
        let (provider, client) = (&provider, &client);
        async move {
            let wrpc = provider.wrpc(client).await;
            let status =
                tokio::time::timeout(Duration::from_secs(10), admin::status(&wrpc, caller("ops")))
                    .await
                    .unwrap_or_else(|_| panic!("{who} hung"));
            assert!(status.unwrap().is_ok(), "{who}");
        }
    };
    let started = Instant::now();
    let sequential = async {
        for i in 0..1000 {
            call(format!("sequential call {i}")).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), sequential)
        .await
        .expect("1,000 sequential calls did not complete in 60 s");
    eprintln!(
        "1,000 sequential calls on fresh clients in {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    let concurrent = futures::future::join_all((0..64).map(|c| async move {
        for i in 0..100 {
            call(format!("caller {c} call {i}")).await;
        }
    }));
    tokio::time::timeout(Duration::from_secs(60), concurrent)
        .await
        .expect("6,400 calls from 64 callers did not complete in 60 s");
    eprintln!(
        "6,400 calls from 64 callers on fresh clients in {:?}",
        started.elapsed()
    );
}

/// NATS never authorizes a reply subject: a call that names `$KV...` or `$JS.API...` (or the
/// provider's own subjects) as its reply must make the provider publish nothing there.
#[tokio::test]
async fn invocations_with_untrusted_reply_subjects_publish_nothing_and_change_nothing() {
    let LinkedProvider {
        nats,
        provider,
        client,
        wrpc,
        ..
    } = linked_provider().await;
    let v1 = admin::put_secret(&wrpc, caller("ops"), "shop/db", &text_value("v"), None)
        .await
        .unwrap()
        .unwrap();
    let entity = component_key();
    let js = async_nats::jetstream::new(client.clone());
    let messages = || async {
        js.get_stream("KV_WASMCLOUD_SECRETS")
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .state
            .messages
    };
    let before = messages().await;

    let spy_client = nats.client().await;
    let mut spy = spy_client.subscribe(">").await.unwrap();
    spy_client.flush().await.unwrap();
    // The spy sees what is published: a control message proves it sees `$KV...` too, before
    // the attack (it is live) and after it (it saw everything in between).
    let mut seen = Vec::new();
    spy_sees(&client, &mut spy, "$KV.SPY_CHECK.before", &mut seen).await;
    seen.clear();
    let hostile = [
        "$KV.WASMCLOUD_SECRETS.x".to_string(),
        format!("$KV.SECRETS_nats-kv_state.{entity}"),
        "$JS.API.STREAM.PURGE.KV_WASMCLOUD_SECRETS".to_string(),
        "wasmcloud.secrets.v1alpha1.nats-kv.add_mapping.MX".to_string(),
        provider.subject("default.shutdown"),
        provider.invocation_subject("delete-secret"),
        "orders.created".to_string(),
    ];
    for reply in &hostile {
        for func in ["status", "delete-secret"] {
            provider.invoke_raw(&client, func, reply).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    spy_sees(&client, &mut spy, "$KV.SPY_CHECK.x", &mut seen).await;
    // Then until the bus is quiet.
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(200), spy.next()).await {
        seen.push(msg.subject.to_string());
    }
    for reply in &hostile {
        let leaked: Vec<&String> = seen
            .iter()
            .filter(|s| s.as_str() == reply || s.starts_with(&format!("{reply}.")))
            .filter(|s| !s.starts_with(&provider.invocation_subject("")[..]))
            .collect();
        assert!(leaked.is_empty(), "published to {leaked:?}");
    }
    // The invocation subject itself is only ever published to by this test.
    let own = provider.invocation_subject("delete-secret");
    assert_eq!(
        seen.iter().filter(|s| s.starts_with(&own[..])).count(),
        hostile.len(),
        "{seen:?}"
    );
    assert_eq!(messages().await, before, "the secrets stream changed");
    // Calls with a trusted reply subject are still answered.
    let status = tokio::time::timeout(Duration::from_secs(10), admin::status(&wrpc, caller("ops")))
        .await
        .expect("a call after the refused ones hung");
    assert!(status.unwrap().is_ok());
    let info = admin::describe_secret(&wrpc, caller("ops"), "shop/db")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.version, v1);
    let mapped = admin::list_mappings(&wrpc, caller("ops"), &entity, None, None)
        .await
        .unwrap()
        .unwrap();
    assert!(mapped.names.is_empty());
    let logs = provider.stderr();
    assert!(logs.contains("untrusted reply subject"), "{logs}");
}

/// The provider exports its metrics where the host's OTEL settings (HostData) say, through
/// the provider SDK's observability setup: the secrets protocol's requests and the WIT calls
/// (front door `wit`), each with its outcome, the latency histogram and the gauges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provider_exports_metrics_for_wit_calls_and_gets_over_otlp() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let (port, received) = otlp_collector();
    let (mut host_data, link_put_id) = host_data(
        &nats.url(),
        &unique_name("lattice"),
        Setup::with_keys(&keys),
    );
    host_data.otel_config.enable_metrics = Some(true);
    host_data.otel_config.metrics_endpoint = Some(format!("http://127.0.0.1:{port}/v1/metrics"));
    let provider = ProviderProc::start_with_env(
        &nats,
        host_data,
        link_put_id,
        &[("OTEL_METRIC_EXPORT_INTERVAL", "300")],
    )
    .await;
    let client = nats.client().await;
    provider.put_link(&client, &provider.link("ops", &[])).await;
    let wrpc = provider.wrpc(&client).await;
    provider
        .within(
            "put_secret",
            admin::put_secret(&wrpc, caller("ops"), "db", &text_value("v"), None),
        )
        .await
        .unwrap()
        .unwrap();
    // A refused call: a name the link's scope does not cover is still a WIT call.
    let (_, component) = Issuer::new().component();
    let refused = provider
        .within(
            "add_mapping",
            admin::add_mapping(&wrpc, caller("nobody"), &component, &["db"]),
        )
        .await
        .unwrap();
    assert!(
        matches!(refused, Err(Error::Unauthorized(_))),
        "{refused:?}"
    );
    // Attribute values as OTLP encodes them (protobuf KeyValue: key, then AnyValue with a
    // string): so "wit" must be the value of `front_door`, not any three bytes.
    let wanted = [
        "piggybank.requests",
        "piggybank.request.duration",
        "piggybank.sealed",
        "front_door\u{12}\u{5}\n\u{3}wit",
        "operation\u{12}\u{c}\n\u{a}put_secret",
        "operation\u{12}\u{d}\n\u{b}add_mapping",
        "outcome\u{12}\u{8}\n\u{6}denied",
    ];
    wait_for_export(&received, &wanted, Duration::from_secs(20)).await;
}

/// The provider's secrets connection takes TLS from config (HostData carries none): against
/// a nats-server that requires TLS with a verified client certificate, with the lattice on a
/// server of its own, a secret put over WIT is served to a host over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secrets_connection_uses_tls_with_a_client_certificate_from_config() {
    let pki = crate::common::pki::Pki::new();
    let secure = NatsServer::start_with_config(&pki.server_config("", ""));
    let lattice = NatsServer::start();
    let keys = Keys::generate();
    let setup = Setup::with_keys(&keys)
        .config("nats_url", &format!("tls://{}", secure.url()))
        .config("tls_ca_file", &pki.file("ca.pem"))
        .config("tls_cert_file", &pki.file("client.pem"))
        .config("tls_key_file", &pki.file("client-key.pem"));
    let provider = ProviderProc::start(&lattice, setup).await;
    let client = lattice.client().await;
    provider.put_link(&client, &provider.link("ops", &[])).await;
    let wrpc = provider.wrpc(&client).await;
    admin::put_secret(&wrpc, caller("ops"), "db", &text_value("over-tls"), None)
        .await
        .unwrap()
        .unwrap();
    let (jwt, component) = Issuer::new().component();
    admin::add_mapping(&wrpc, caller("ops"), &component, &["db"])
        .await
        .unwrap()
        .unwrap();
    let tls_client = pki.client(&secure, false).await;
    let host = wasmcloud_secrets_client::Client::new("nats-kv", "wasmcloud.secrets", tls_client)
        .await
        .expect("secrets client over TLS");
    let secret = host_get(&host, request("db", &jwt)).await.unwrap();
    assert_eq!(secret.string_secret.as_deref(), Some("over-tls"));

    // Without the client certificate the provider cannot reach its store: it stops with
    // one line that says why.
    let setup = Setup::with_keys(&keys)
        .config("nats_url", &format!("tls://{}", secure.url()))
        .config("tls_ca_file", &pki.file("ca.pem"));
    let (host_data, _) = host_data(&lattice.url(), &unique_name("lattice"), setup);
    let (mut proc, stderr) = spawn_with_stdin(&encode(&host_data));
    let status = proc
        .wait_exit(Duration::from_secs(30))
        .expect("the provider stops");
    assert!(!status.success());
    // (stderr is read by a thread, which may still be at the last line.)
    eventually("the reason on stderr", || {
        let said = stderr.lock().unwrap().contains("client certificate");
        async move { said }
    })
    .await;
}

/// Under the layout `piggybank nats-config` writes, the provider connects as the backend
/// role with that role's seed, given as the secret `nats_nkey`, and serves a host connected
/// as the host role. Without it the server refuses the provider, which stops with one line
/// saying so (the layout is what denies it: the control).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provider_connects_as_the_backend_role_with_an_nkey_secret() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(piggybank_bin())
        .arg("nats-config")
        .arg("--dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let secure = NatsServer::start_with_config(&dir.path().join("nats-server.conf"));
    let lattice = NatsServer::start();
    let seed_of = |role: &str| {
        std::fs::read_to_string(dir.path().join(format!("{role}.nk")))
            .unwrap()
            .lines()
            .find(|l| l.starts_with("SU"))
            .unwrap()
            .to_string()
    };
    let keys = Keys::generate();
    let mut setup = Setup::with_keys(&keys).config("nats_url", &secure.url());
    setup.secrets.insert(
        "nats_nkey".into(),
        wasmcloud_provider_sdk::core::secrets::SecretValue::String(seed_of("backend")),
    );
    let provider = ProviderProc::start(&lattice, setup).await;
    assert!(!provider.stderr().contains(&seed_of("backend")));
    let client = lattice.client().await;
    provider.put_link(&client, &provider.link("ops", &[])).await;
    let wrpc = provider.wrpc(&client).await;
    admin::put_secret(
        &wrpc,
        caller("ops"),
        "db",
        &text_value("as-the-backend"),
        None,
    )
    .await
    .unwrap()
    .unwrap();
    let (jwt, component) = Issuer::new().component();
    admin::add_mapping(&wrpc, caller("ops"), &component, &["db"])
        .await
        .unwrap()
        .unwrap();
    let host_nats = async_nats::ConnectOptions::with_nkey(seed_of("host"))
        .connect(secure.url())
        .await
        .expect("the host role connects");
    let host = wasmcloud_secrets_client::Client::new("nats-kv", "wasmcloud.secrets", host_nats)
        .await
        .expect("secrets client as the host role");
    let secret = host_get(&host, request("db", &jwt)).await.unwrap();
    assert_eq!(secret.string_secret.as_deref(), Some("as-the-backend"));

    // Control: without the seed, the layout's server refuses the provider.
    let setup = Setup::with_keys(&keys).config("nats_url", &secure.url());
    let (host_data, _) = host_data(&lattice.url(), &unique_name("lattice"), setup);
    let (mut proc, stderr) = spawn_with_stdin(&encode(&host_data));
    let status = proc
        .wait_exit(Duration::from_secs(30))
        .expect("the provider stops");
    assert!(!status.success());
    eventually("the reason on stderr", || {
        let said = stderr
            .lock()
            .unwrap()
            .to_lowercase()
            .contains("authorization");
        async move { said }
    })
    .await;
}

/// A WIT call's log lines carry the request id its audit record carries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wit_calls_logs_and_its_audit_record_share_a_request_id() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let provider = ProviderProc::start(&nats, Setup::with_keys(&keys)).await;
    let client = nats.client().await;
    let wrpc = provider.wrpc(&client).await;
    // No link from `nobody`: refused, and the refusal is logged inside the call's span.
    let refused = admin::describe_secret(&wrpc, caller("nobody"), "db")
        .await
        .unwrap();
    assert!(
        matches!(refused, Err(Error::Unauthorized(_))),
        "{refused:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let record = loop {
        let (ok, out, err) = cli(&nats, &["audit", "--json"], None, &[]);
        assert!(ok, "{err}");
        let found = String::from_utf8_lossy(&out)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|r| r["front_door"] == "wit" && r["operation"] == "describe_secret");
        if let Some(record) = found {
            break record;
        }
        assert!(Instant::now() < deadline, "no audit record of the call");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(record["outcome"], "denied");
    let id = record["request_id"].as_str().unwrap().to_string();
    assert!(!id.is_empty());
    eventually("the refusal logged with the record's request id", || {
        let logs = provider.stderr();
        let said = logs
            .lines()
            .any(|l| l.contains("admin call refused") && l.contains(&id));
        async move { said }
    })
    .await;
}

/// `admin@0.3.0` grants secrets to a wadm application (and a host's get naming it is then
/// served), next to `admin@0.2.0`, which components built before it still call.
#[tokio::test]
async fn grants_by_application_over_admin_0_3_0_while_0_2_0_is_still_served() {
    use crate::common::provider::admin_v3;
    let LinkedProvider {
        nats,
        wrpc,
        provider,
        ..
    } = linked_provider().await;
    let ops = || caller("ops");
    let put = admin_v3::put_secret(&wrpc, ops(), "shop/db", &text_value("pw"), None).await;
    assert!(matches!(put, Ok(Ok(_))), "{put:?}: {}", provider.stderr());
    let granted = admin_v3::add_app_mapping(&wrpc, ops(), "shop", &["shop/db"])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(granted, ["shop/db"]);
    let page = admin_v3::list_app_mappings(&wrpc, ops(), "shop", None, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(page.names, ["shop/db"]);
    let bad = admin_v3::add_app_mapping(&wrpc, ops(), "a.b", &["shop/db"])
        .await
        .unwrap();
    assert!(matches!(bad, Err(Error::InvalidArgument(_))), "{bad:?}");

    let host = host_client(&nats).await;
    let (jwt, entity) = Issuer::new().component();
    let in_shop = |jwt: &str| {
        let mut req = request("shop/db", jwt);
        req.context.application.name = Some("shop".into());
        req
    };
    let got = host_get(&host, in_shop(&jwt)).await.unwrap();
    assert_eq!(got.string_secret.as_deref(), Some("pw"));
    // The same store through admin@0.2.0: the entity itself is mapped to nothing.
    let mapped = admin::list_mappings(&wrpc, ops(), &entity, None, None)
        .await
        .unwrap()
        .unwrap();
    assert!(mapped.names.is_empty());

    let left = admin_v3::remove_app_mapping(&wrpc, ops(), "shop", &["shop/db"])
        .await
        .unwrap()
        .unwrap();
    assert!(left.is_empty());
    assert!(host_get(&host, in_shop(&jwt)).await.is_err());
}
