//! A rolling migration from the real sample backend (`secrets-nats-kv` 0.2.0), with no failed
//! get: one sample instance and one piggybank instance share the queue group and the buckets.
//!
//! Needs the sample's binary: `make sample-migration` installs it (`cargo install
//! secrets-nats-kv --version 0.2.0` into `target/sample`) and runs these tests, which are
//! ignored in `make test` (the install takes minutes). `PIGGYBANK_SAMPLE_BIN` overrides the
//! binary's path.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

fn sample_bin() -> std::path::PathBuf {
    std::env::var_os("PIGGYBANK_SAMPLE_BIN")
        .map(Into::into)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("target/sample/bin/secrets-nats-kv")
        })
}

fn spawn_sample(nats: &NatsServer, keys: &Keys) -> Proc {
    let bin = sample_bin();
    assert!(
        bin.exists(),
        "the sample is not installed at {}: run `make sample-migration`",
        bin.display()
    );
    let child = Command::new(bin)
        .args(["run", "--nats-address", &nats.url()])
        .env("ENCRYPTION_XKEY_SEED", keys.encryption.as_str())
        .env("TRANSIT_XKEY_SEED", keys.transit.as_str())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the sample");
    Proc { child }
}

/// Put `count` secrets through piggybank (the only instance yet) and map them.
async fn seed(nats: &NatsServer, count: usize) -> (String, Vec<(String, String)>) {
    let admin = admin(nats.client().await);
    let mut secrets = Vec::new();
    for i in 0..count {
        let (name, value) = (format!("app/s{i}"), format!("value {i}"));
        admin
            .put_secret(&name, text(&value), None, None)
            .await
            .unwrap();
        secrets.push((name, value));
    }
    let issuer = Issuer::new();
    let (jwt, entity) = issuer.component();
    let all: Vec<&str> = secrets.iter().map(|(n, _)| n.as_str()).collect();
    admin.add_mapping(&entity, &names(&all)).await.unwrap();
    (jwt, secrets)
}

/// `rounds` gets of every secret through the real client; the number that failed or served
/// another value.
async fn failed_gets(
    nats: &NatsServer,
    jwt: &str,
    secrets: &[(String, String)],
    rounds: usize,
) -> usize {
    let host = host_client(nats).await;
    let mut failed = 0;
    for _ in 0..rounds {
        for (name, value) in secrets {
            let got = host_get(&host, request(name, jwt)).await;
            if got.map(|s| s.string_secret).ok() != Some(Some(value.clone())) {
                failed += 1;
            }
        }
    }
    failed
}

/// Both instances serve: wait until the sample answers `server_xkey` too (it has joined the
/// queue group; a few requests then reach each).
async fn both_serving(nats: &NatsServer) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    wait_for_backend(nats, "wasmcloud.secrets.v1alpha1.nats-kv").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the sample backend: make sample-migration"]
async fn with_legacy_writes_a_mixed_queue_group_fails_no_get_then_legacy_mode_is_switched_off() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let piggybank = spawn_run(&nats, &keys, &["--write-legacy-format"]);
    wait_for_backend(&nats, "wasmcloud.secrets.v1alpha1.nats-kv").await;
    let (jwt, secrets) = seed(&nats, 20).await;
    let sample = spawn_sample(&nats, &keys);
    both_serving(&nats).await;
    let failed = failed_gets(&nats, &jwt, &secrets, 10).await;
    eprintln!("mixed queue group, legacy writes: {failed} of 200 gets failed");
    assert_eq!(failed, 0);

    // The last sample instance is gone: legacy mode off; what it wrote is still served.
    drop(sample);
    drop(piggybank);
    let _piggybank = spawn_run(&nats, &keys, &[]);
    wait_for_backend(&nats, "wasmcloud.secrets.v1alpha1.nats-kv").await;
    assert_eq!(failed_gets(&nats, &jwt, &secrets, 2).await, 0);
}

/// The control: without legacy writes, gets that reach the sample fail (it cannot open
/// piggybank's envelope), which is what the mode is for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the sample backend: make sample-migration"]
async fn without_legacy_writes_gets_that_reach_the_sample_fail() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let _piggybank = spawn_run(&nats, &keys, &[]);
    wait_for_backend(&nats, "wasmcloud.secrets.v1alpha1.nats-kv").await;
    let (jwt, secrets) = seed(&nats, 20).await;
    let _sample = spawn_sample(&nats, &keys);
    both_serving(&nats).await;
    let failed = failed_gets(&nats, &jwt, &secrets, 10).await;
    eprintln!("mixed queue group, piggybank's own format: {failed} of 200 gets failed");
    assert!(failed > 0, "no get reached the sample");
}
