//! Changing the data key of a store run with `ENCRYPTION_XKEY_SEED`, with no downtime: an
//! instance with the new key and `PREVIOUS_ENCRYPTION_XKEY_SEEDS` serves everything while
//! `piggybank rekey` re-seals it, concurrent writes are never lost, and afterwards the old
//! key can be dropped.

use std::process::Command;

use crate::common::*;
use async_nats::jetstream;
use nkeys::XKey;
use piggybank::keys::generate_seed;

/// Run `piggybank rekey` against `nats` (off the test's runtime); returns (success, stdout, stderr).
async fn rekey(nats: &NatsServer, current: &str, previous: &str) -> (bool, String, String) {
    let (url, current, previous) = (nats.url(), current.to_string(), previous.to_string());
    tokio::task::spawn_blocking(move || {
        let out = Command::new(piggybank_bin())
            .arg("rekey")
            .env("ENCRYPTION_XKEY_SEED", current)
            .env("PREVIOUS_ENCRYPTION_XKEY_SEEDS", previous)
            .env("NATS_ADDRESS", url)
            .output()
            .expect("run piggybank rekey");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

/// A store sealed with `old`: `app/0..N` through the backend, `legacy/0..L` as the sample
/// wrote them; all mapped to one component. Returns the component's JWT and every name with
/// its value.
async fn store_under_old_key(nats: &NatsServer, old: &Keys) -> (String, Vec<(String, String)>) {
    let backend = start_backend(nats, config(nats, old)).await;
    let admin = admin(nats.client().await);
    let mut values = Vec::new();
    for i in 0..300 {
        let (name, value) = (format!("app/{i}"), format!("value-{i}"));
        admin
            .put_secret(&name, text(&value), None, None)
            .await
            .unwrap();
        values.push((name, value));
    }
    let js = jetstream::new(nats.client().await);
    let bucket = js.get_key_value("WASMCLOUD_SECRETS").await.unwrap();
    let sample_key = XKey::from_seed(&old.encryption).unwrap();
    for i in 0..5 {
        let (name, value) = (format!("legacy/{i}"), format!("legacy-{i}"));
        let sealed = sample_key.seal(value.as_bytes(), &sample_key).unwrap();
        bucket.put(&name, sealed.into()).await.unwrap();
        values.push((name, value));
    }
    let (jwt, entity) = Issuer::new().component();
    let names = values.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>();
    admin
        .add_mapping(&entity, &crate::common::names(&names))
        .await
        .unwrap();
    backend.stop().await;
    (jwt, values)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekey_while_serving_reseals_everything_and_loses_nothing() {
    let nats = NatsServer::start();
    let old = Keys::generate();
    let (jwt, mut values) = store_under_old_key(&nats, &old).await;
    let new_seed = generate_seed();

    // Step 2 of the procedure: the new key writes, the old one still reads.
    let mut rotated = config(&nats, &old);
    rotated.encryption_xkey_seed = new_seed.clone();
    rotated.previous_encryption_xkey_seeds = vec![old.encryption.clone()];
    let backend = start_backend(&nats, rotated).await;
    let admin = admin(nats.client().await);
    let hot: Vec<String> = (0..5).map(|i| format!("hot/{i}")).collect();
    for name in &hot {
        admin
            .put_secret(name, text("w0"), None, None)
            .await
            .unwrap();
    }
    // The component's key is its JWT's subject: map the hot names to it as well.
    let entity = wascap::jwt::Claims::<wascap::jwt::Component>::decode(&jwt)
        .unwrap()
        .subject;
    let hot_refs: Vec<&str> = hot.iter().map(String::as_str).collect();
    admin
        .add_mapping(&entity, &crate::common::names(&hot_refs))
        .await
        .unwrap();

    let load = ReadWriteLoad::start(
        host_client(&nats).await,
        jwt.clone(),
        values.clone(),
        admin.clone(),
        hot.clone(),
    );
    // Start the rekey only once reads and writes are flowing.
    load.flowing().await;
    let before = load.reads();
    let (ok, out, err) = rekey(&nats, &new_seed, &old.encryption).await;
    let during = load.reads() - before;
    assert!(ok, "rekey failed: {out}\n{err}");
    assert!(during > 0, "no read overlapped the rekey");
    eprintln!("{out}reads during the rekey: {during}");
    assert!(out.contains(", 0 failed"), "{out}");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (_, failed_reads, last_written) = load.stop().await;
    assert_eq!(failed_reads, 0, "reads failed during rekey");

    // Every latest value is under the new key; nothing written meanwhile was lost.
    let new_id = XKey::from_seed(&new_seed).unwrap().public_key();
    for meta in admin.list_secrets("").await.unwrap() {
        assert_eq!(
            meta.key_id.as_deref(),
            Some(new_id.as_str()),
            "{}",
            meta.name
        );
    }
    values.extend(last_written);
    let (ok, again, _) = rekey(&nats, &new_seed, &old.encryption).await;
    assert!(
        ok && again.contains(" 0 re-sealed"),
        "a second run re-sealed: {again}"
    );
    backend.stop().await;

    // Step 4: the old key is dropped, and everything is still served.
    let mut new_only = config(&nats, &old);
    new_only.encryption_xkey_seed = new_seed.clone();
    let _backend = start_backend(&nats, new_only).await;
    let host = host_client(&nats).await;
    for (name, value) in &values {
        let secret = host_get(&host, request(name, &jwt)).await.unwrap();
        assert_eq!(
            secret.string_secret.as_deref(),
            Some(value.as_str()),
            "{name}"
        );
    }
}

#[tokio::test]
async fn rekey_without_the_old_key_reports_and_changes_nothing() {
    let nats = NatsServer::start();
    let old = Keys::generate();
    let (jwt, values) = store_under_old_key(&nats, &old).await;
    let new_seed = generate_seed();

    let (ok, out, err) = rekey(&nats, &new_seed, "").await;
    assert!(!ok, "rekey without the old key succeeded: {out}");
    assert!(out.contains(&format!(", {} failed", values.len())), "{out}");
    assert!(err.contains("PREVIOUS_ENCRYPTION_XKEY_SEEDS"), "{err}");
    for secret in [old.encryption.as_str(), new_seed.as_str()] {
        assert!(
            !out.contains(secret) && !err.contains(secret),
            "a seed was printed"
        );
    }

    // Untouched: the old key still serves every value.
    let _backend = start_backend(&nats, config(&nats, &old)).await;
    let host = host_client(&nats).await;
    for (name, value) in &values {
        let secret = host_get(&host, request(name, &jwt)).await.unwrap();
        assert_eq!(
            secret.string_secret.as_deref(),
            Some(value.as_str()),
            "{name}"
        );
    }
}
