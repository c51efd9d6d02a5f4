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

/// A value in the format piggybank wrote before names were bound (`pgb1`): the header, then
/// the data key's box of (kind | value), with no name in it.
fn unbound_envelope(encryption: &str, value: &str) -> Vec<u8> {
    let seed = zeroize::Zeroizing::new(encryption.to_string());
    let key = piggybank::keys::DataKey::from_seed(&seed).unwrap();
    let mut inner = vec![1u8]; // kind: string
    inner.extend_from_slice(value.as_bytes());
    let mut stored = b"pgb1\x01".to_vec();
    stored.extend_from_slice(&1_700_000_000_000u64.to_be_bytes());
    stored.push(u8::try_from(key.id().len()).unwrap());
    stored.extend_from_slice(key.id().as_bytes());
    stored.extend_from_slice(&key.seal(&inner).unwrap());
    stored
}

/// Whether `name`'s latest stored value is bound to its name.
async fn bound(bucket: &jetstream::kv::Store, name: &str) -> bool {
    let stored = bucket.get(name).await.unwrap().unwrap();
    piggybank::store::envelope::parse(&stored).unwrap().0.bound
}

/// Values written before names were bound (piggybank's `pgb1`, and the sample's format) keep
/// opening, and `rekey` with the same key rewrites them bound, so that afterwards no unbound
/// value is left to move; their unbound older versions still open (`--secret-version`).
#[tokio::test]
async fn an_unbound_value_keeps_opening_and_rekey_binds_it() {
    let Deployed {
        nats,
        keys,
        backend: _backend,
        admin,
    } = deployed().await;
    let js = jetstream::new(nats.client().await);
    let bucket = js.get_key_value("WASMCLOUD_SECRETS").await.unwrap();
    let old_revision = bucket
        .put(
            "old/db",
            unbound_envelope(&keys.encryption, "old-value").into(),
        )
        .await
        .unwrap();
    let sample_key = XKey::from_seed(&keys.encryption).unwrap();
    let sample = sample_key.seal(b"sample-value", &sample_key).unwrap();
    bucket.put("old/sample", sample.into()).await.unwrap();
    admin
        .put_secret("new/db", text("new-value"), None, None)
        .await
        .unwrap();
    admin
        .put_secret("other", text("other-value"), None, None)
        .await
        .unwrap();
    let (jwt, entity) = Issuer::new().component();
    let all = ["old/db", "old/sample", "new/db", "other"];
    admin.add_mapping(&entity, &names(&all)).await.unwrap();
    wait_listed(&admin, "old/", 2).await;
    assert!(!bound(&bucket, "old/db").await && !bound(&bucket, "old/sample").await);
    assert!(bound(&bucket, "new/db").await, "new writes are bound");

    let host = host_client(&nats).await;
    let expected = [
        ("old/db", "old-value"),
        ("old/sample", "sample-value"),
        ("new/db", "new-value"),
        ("other", "other-value"),
    ];
    for (name, value) in expected {
        let secret = host_get(&host, request(name, &jwt)).await.unwrap();
        assert_eq!(secret.string_secret.as_deref(), Some(value), "{name}");
    }

    let (ok, out, err) = rekey(&nats, &keys.encryption, "").await;
    assert!(ok, "rekey failed: {out}\n{err}");
    assert!(
        out.contains(" 2 re-sealed") && out.contains(" 2 already under it"),
        "{out}"
    );
    for name in all {
        assert!(bound(&bucket, name).await, "{name} is still unbound");
    }
    for (name, value) in expected {
        let secret = host_get(&host, request(name, &jwt)).await.unwrap();
        assert_eq!(secret.string_secret.as_deref(), Some(value), "{name}");
    }
    // The unbound version in the history still opens by its version.
    let mut old = request("old/db", &jwt);
    old.version = Some(old_revision.to_string());
    let secret = host_get(&host, old).await.unwrap();
    assert_eq!(secret.string_secret.as_deref(), Some("old-value"));

    // And the rekeyed value is bound: moved over another name, it no longer opens.
    let rekeyed = bucket.get("old/db").await.unwrap().unwrap();
    bucket.put("other", rekeyed).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let refusal = loop {
        match host_get(&host, request("other", &jwt)).await {
            Err(refusal) => break refusal,
            Ok(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Ok(s) => panic!("the moved value was served: {:?}", s.string_secret),
        }
    };
    assert!(
        refusal.contains("sealed for another secret's name"),
        "{refusal}"
    );
}
