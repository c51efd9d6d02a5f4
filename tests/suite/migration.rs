//! Migration in place: a NATS holding values and mappings written in the sample backend's
//! format (values sealed by the encryption xkey to itself, mappings as JSON arrays, the lock
//! stream) is served unchanged when piggybank starts with the same keys.

use crate::common::*;
use async_nats::jetstream::{self, kv, stream};
use nkeys::XKey;
use piggybank::store::envelope::{SecretKind, SecretValue};
use zeroize::Zeroizing;

/// Write data exactly as `secrets-nats-kv` 0.2 does.
async fn write_sample_data(nats: &NatsServer, keys: &Keys, entity: &str) -> (u64, u64) {
    let js = jetstream::new(nats.client().await);
    let secrets = js
        .create_key_value(kv::Config {
            bucket: "WASMCLOUD_SECRETS".into(),
            description: "Secrets store".into(),
            compression: true,
            history: 64,
            ..Default::default()
        })
        .await
        .unwrap();
    let state = js
        .create_key_value(kv::Config {
            bucket: "SECRETS_nats-kv_state".into(),
            description: "Secrets state store".into(),
            compression: true,
            ..Default::default()
        })
        .await
        .unwrap();
    js.get_or_create_stream(stream::Config {
        name: "SECRETS_nats-kv_state_lock".into(),
        subjects: vec!["SECRETS_nats-kv_state_lock.*".into()],
        storage: stream::StorageType::Memory,
        ..Default::default()
    })
    .await
    .unwrap();
    let enc = XKey::from_seed(&keys.encryption).unwrap();
    let text_rev = state_put(
        &secrets,
        "legacy_text",
        enc.seal(b"old password", &enc).unwrap(),
    )
    .await;
    let bin_rev = state_put(
        &secrets,
        "legacy_bin",
        enc.seal(&[0xde, 0xad, 0xbe, 0xef], &enc).unwrap(),
    )
    .await;
    state
        .put(
            entity,
            serde_json::to_vec(&["legacy_text", "legacy_bin"])
                .unwrap()
                .into(),
        )
        .await
        .unwrap();
    (text_rev, bin_rev)
}

async fn state_put(store: &kv::Store, key: &str, value: Vec<u8>) -> u64 {
    store.put(key, value.into()).await.unwrap()
}

#[tokio::test]
async fn sample_values_and_mappings_are_served_in_place() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let (jwt, entity) = Issuer::new().component();
    let (text_rev, bin_rev) = write_sample_data(&nats, &keys, &entity).await;

    let _b = start_backend(&nats, config(&nats, &keys)).await;
    let host = host_client(&nats).await;
    let text = host_get(&host, request("legacy_text", &jwt)).await.unwrap();
    assert_eq!(text.string_secret.as_deref(), Some("old password"));
    assert_eq!(text.version, text_rev.to_string());
    let bin = host_get(&host, request("legacy_bin", &jwt)).await.unwrap();
    assert_eq!(
        bin.binary_secret.as_deref(),
        Some(&[0xde, 0xad, 0xbe, 0xef][..])
    );
    assert_eq!(bin.version, bin_rev.to_string());

    let admin = admin(nats.client().await);
    let listed = admin.list_secrets("legacy").await.unwrap();
    assert!(listed
        .iter()
        .all(|m| m.kind == SecretKind::Legacy && m.key_id.is_none()));

    // Mappings written by the sample are updated in place, with compare-and-set.
    admin
        .remove_mapping(&entity, &names(&["legacy_bin"]))
        .await
        .unwrap();
    assert_eq!(admin.get_mappings(&entity).await.unwrap(), ["legacy_text"]);
    assert!(host_get(&host, request("legacy_bin", &jwt)).await.is_err());

    // A new version is written in piggybank's format, which records the kind and key id.
    let v = admin
        .put_secret(
            "legacy_text",
            SecretValue::String(Zeroizing::new("new".into())),
            None,
            None,
        )
        .await
        .unwrap();
    let meta = admin.list_secrets("legacy_text").await.unwrap().remove(0);
    assert_eq!((meta.kind, meta.version), (SecretKind::String, v));
    assert_eq!(
        meta.key_id.as_deref(),
        Some(
            XKey::from_seed(&keys.encryption)
                .unwrap()
                .public_key()
                .as_str()
        )
    );
    // The old version, still in the sample's format, stays readable by version.
    let mut old = request("legacy_text", &jwt);
    old.version = Some(text_rev.to_string());
    assert_eq!(
        host_get(&host, old).await.unwrap().string_secret.as_deref(),
        Some("old password")
    );
}

#[tokio::test]
async fn a_different_encryption_key_cannot_read_sample_values() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let (jwt, entity) = Issuer::new().component();
    write_sample_data(&nats, &keys, &entity).await;
    let wrong = Keys {
        transit: keys.transit.clone(),
        encryption: piggybank::keys::generate_seed(),
    };
    let _b = start_backend(&nats, config(&nats, &wrong)).await;
    let host = host_client(&nats).await;
    let err = host_refusal(&host, request("legacy_text", &jwt)).await;
    assert!(err.contains("Error decrypting secret"), "{err}");
}

/// `--write-legacy-format`: what piggybank writes is the bare box a sample instance opens
/// (sealed by the encryption xkey to itself), and piggybank serves it back too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_write_legacy_format_values_are_written_as_the_sample_reads_them() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let mut config = config(&nats, &keys);
    config.write_legacy_format = true;
    let _backend = start_backend(&nats, config).await;
    let admin = admin(nats.client().await);
    admin
        .put_secret("db", text("written for the sample"), None, None)
        .await
        .unwrap();
    let js = jetstream::new(nats.client().await);
    let bucket = js.get_key_value("WASMCLOUD_SECRETS").await.unwrap();
    let stored = bucket.get("db").await.unwrap().unwrap();
    assert!(stored.starts_with(b"xkv1"), "not the sample's format");
    // Opened the sample's way: the encryption xkey, as sender and recipient.
    let enc = XKey::from_seed(&keys.encryption).unwrap();
    assert_eq!(enc.open(&stored, &enc).unwrap(), b"written for the sample");
    // And served by piggybank, through the real client.
    let issuer = Issuer::new();
    let (jwt, entity) = issuer.component();
    admin.add_mapping(&entity, &names(&["db"])).await.unwrap();
    let host = host_client(&nats).await;
    let got = host_get(&host, request("db", &jwt)).await.unwrap();
    assert_eq!(got.string_secret.as_deref(), Some("written for the sample"));
}

/// Sealed mode has no sample counterpart: the flag stops the start.
#[tokio::test]
async fn write_legacy_format_needs_the_configured_key() {
    let nats = NatsServer::start();
    let (code, _, err) = cli_code(&nats, &["run", "--write-legacy-format"], None, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("--write-legacy-format (write_legacy_format) needs ENCRYPTION_XKEY_SEED"),
        "{err}"
    );
}
