//! One store, one key, and buckets as piggybank made them: an instance with another data key
//! or backend name refuses a store's buckets (naming both), and an instance refuses a bucket
//! whose stream config was changed so that it could read what piggybank did not write.
//!
//! The attacker here has the JetStream API on the account (or is an operator's mistake: a
//! second `dev`, a `run -n` on the default bucket).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use async_nats::jetstream;

use crate::common::*;

/// `piggybank run` with these keys; returns its stderr once it exits, or `None` (killed) if
/// it is still running after 15 s, that is, if it served.
fn run_until_refused(nats: &NatsServer, env: &[(&str, &str)], args: &[&str]) -> Option<String> {
    let mut command = Command::new(piggybank_bin());
    command
        .arg("run")
        .args(args)
        .env_remove("ENCRYPTION_XKEY_SEED")
        .env_remove("TRANSIT_XKEY_SEED")
        .env_remove("PREVIOUS_ENCRYPTION_XKEY_SEEDS")
        .env("NATS_ADDRESS", nats.url())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut proc = Proc {
        child: command.spawn().expect("spawn piggybank run"),
    };
    let status = proc.wait_exit(Duration::from_secs(15))?;
    assert!(!status.success(), "a refusal exits non-zero");
    let mut stderr = String::new();
    proc.child
        .stderr
        .take()
        .expect("piped")
        .read_to_string(&mut stderr)
        .unwrap();
    Some(stderr)
}

fn keyed_env(keys: &Keys) -> Vec<(&'static str, String)> {
    vec![
        ("ENCRYPTION_XKEY_SEED", keys.encryption.to_string()),
        ("TRANSIT_XKEY_SEED", keys.transit.to_string()),
    ]
}

fn env_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn data_key_id(seed: &str) -> String {
    nkeys::XKey::from_seed(seed).unwrap().public_key()
}

/// Attack (an operator's slip, reproduced by a second `dev`): a second instance with another
/// `ENCRYPTION_XKEY_SEED` on the same buckets. Before, both served in one queue group and each
/// wrote values the other could not open. Safe: it refuses to start and names both keys; an
/// instance with the store's key (positive control) serves beside the first.
#[tokio::test]
async fn an_instance_with_another_data_key_refuses_the_store_and_names_both() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let first = start_backend(&nats, config(&nats, &keys)).await;

    let other = Keys::generate();
    let stderr = run_until_refused(&nats, &env_refs(&keyed_env(&other)), &[])
        .expect("an instance with another data key served the store");
    assert!(
        stderr.contains(&data_key_id(&keys.encryption))
            && stderr.contains(&data_key_id(&other.encryption))
            && stderr.contains("one store has one key"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(other.encryption.as_str()),
        "a seed in stderr"
    );

    // Positive control: the store's own key serves, and the first instance's secret opens there.
    let admin = admin(nats.client().await);
    admin.put_secret("s", text("v"), None, None).await.unwrap();
    first.stop().await;
    let mut same = spawn_run(&nats, &keys, &[]);
    wait_for_backend(&nats, "wasmcloud.secrets.v1alpha1.nats-kv").await;
    let (jwt, subject) = Issuer::new().component();
    admin.add_mapping(&subject, &names(&["s"])).await.unwrap();
    let host = host_client(&nats).await;
    assert!(host_get(&host, request("s", &jwt)).await.is_ok());
    assert!(same.wait_exit(Duration::from_millis(10)).is_none());
}

/// A rekey moves the store: an instance whose `PREVIOUS_ENCRYPTION_XKEY_SEEDS` hold the
/// recorded key serves it (a rekey in progress; positive control), and once `piggybank rekey`
/// has re-sealed every value, an instance with only the old key refuses, since it could not
/// open what is now stored, while one with only the new key serves.
#[tokio::test]
async fn a_rekey_moves_the_store_to_the_new_key_and_the_old_key_alone_is_refused() {
    let nats = NatsServer::start();
    let old = Keys::generate();
    let first = start_backend(&nats, config(&nats, &old)).await;
    let admin = admin(nats.client().await);
    admin.put_secret("s", text("v"), None, None).await.unwrap();
    first.stop().await;

    let new = Keys {
        transit: old.transit.clone(),
        encryption: piggybank::keys::generate_seed(),
    };
    let mut rekeying = config(&nats, &new);
    rekeying.previous_encryption_xkey_seeds = vec![old.encryption.clone()];
    start_backend(&nats, rekeying).await.stop().await;

    let (ok, _, stderr) = cli(
        &nats,
        &["rekey"],
        None,
        &[
            ("ENCRYPTION_XKEY_SEED", new.encryption.as_str()),
            ("PREVIOUS_ENCRYPTION_XKEY_SEEDS", old.encryption.as_str()),
        ],
    );
    assert!(ok, "{stderr}");

    let stderr = run_until_refused(&nats, &env_refs(&keyed_env(&old)), &[])
        .expect("the old key alone served after the rekey");
    assert!(
        stderr.contains(&data_key_id(&new.encryption)),
        "names the store's key now: {stderr}"
    );
    let _new_alone = start_backend(&nats, config(&nats, &new)).await;
}

/// Attack (reproduced): a sealed `run -n other` on the default secrets bucket adopted another
/// store's secrets. Safe: it refuses, naming the store's backend.
#[tokio::test]
async fn a_sealed_instance_of_another_backend_refuses_the_store() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let _first = start_backend(&nats, config(&nats, &keys)).await;
    let stderr = run_until_refused(&nats, &[], &["-n", "other"])
        .expect("a sealed instance of another backend served the store");
    assert!(
        stderr.contains(r#"backend "nats-kv""#) && stderr.contains(r#"backend "other""#),
        "{stderr}"
    );
}

/// A bucket made before owners were recorded (by the sample, say) is adopted, and its owner
/// recorded then.
#[tokio::test]
async fn a_bucket_with_no_owner_is_adopted_and_its_owner_recorded() {
    let nats = NatsServer::start();
    let js = jetstream::new(nats.client().await);
    js.create_key_value(jetstream::kv::Config {
        bucket: "WASMCLOUD_SECRETS".into(),
        history: 64,
        ..Default::default()
    })
    .await
    .unwrap();
    let keys = Keys::generate();
    let _backend = start_backend(&nats, config(&nats, &keys)).await;
    let info = js
        .get_stream("KV_WASMCLOUD_SECRETS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(
        info.config.metadata.get("piggybank.data_key"),
        Some(&data_key_id(&keys.encryption))
    );
    assert_eq!(
        info.config
            .metadata
            .get("piggybank.backend")
            .map(String::as_str),
        Some("nats-kv")
    );
}

/// Attack: with the JetStream API, change a bucket's stream so that piggybank would read what
/// it did not write (entries sourced from a stream the attacker fills, republished copies,
/// a deletable history where deleting a revocation brings back the grant before it, nonces
/// aged out early so a signed request replays, silent eviction). Safe: an instance refuses to
/// start on such a bucket and names it and what changed. The unchanged buckets (positive
/// control) are served by the same instance first.
#[tokio::test]
async fn an_instance_refuses_a_bucket_whose_stream_config_was_changed() {
    type Change = fn(&mut jetstream::stream::Config);
    let changes: [(&str, &str, Change); 5] = [
        ("SECRETS_nats-kv_state", "sources", |c| {
            c.sources = Some(vec![jetstream::stream::Source {
                name: "ATTACKER".into(),
                ..Default::default()
            }])
        }),
        ("WASMCLOUD_SECRETS", "republish", |c| {
            c.republish = Some(jetstream::stream::Republish {
                source: ">".into(),
                destination: "copies.>".into(),
                headers_only: false,
            })
        }),
        // A replacement whose history can be edited.
        ("SECRETS_nats-kv_state", "deny_delete is off", |c| {
            c.deny_delete = false
        }),
        ("SECRETS_nats-kv_nonces", "max_age", |c| {
            c.max_age = Duration::from_secs(1);
            c.duplicate_window = Duration::from_secs(1);
        }),
        ("WASMCLOUD_SECRETS", "discard policy", |c| {
            c.discard = jetstream::stream::DiscardPolicy::Old;
            c.max_messages = 10;
        }),
    ];
    for (bucket, what, change) in changes {
        let nats = NatsServer::start();
        let keys = Keys::generate();
        let admin_key = nkeys::KeyPair::new_user();
        let admin_keys = admin_key.public_key();
        let env = keyed_env(&keys);
        // Positive control: the same instance, on the buckets as it made them, serves.
        let mut served = spawn_run(&nats, &keys, &["--admin-keys", &admin_keys]);
        wait_for_backend(&nats, "wasmcloud.secrets.v1alpha1.nats-kv").await;
        served.signal(libc::SIGTERM);
        served.wait_exit(Duration::from_secs(15)).expect("stopped");

        let js = jetstream::new(nats.client().await);
        let mut config = js
            .get_stream(format!("KV_{bucket}"))
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .config
            .clone();
        change(&mut config);
        if config.sources.is_some() {
            js.create_stream(jetstream::stream::Config {
                name: "ATTACKER".into(),
                subjects: vec!["attacker.>".into()],
                ..Default::default()
            })
            .await
            .unwrap();
        }
        if config.deny_delete {
            js.update_stream(&config)
                .await
                .unwrap_or_else(|e| panic!("{bucket} {what}: {e}"));
        } else {
            // JetStream never lets an update allow deletes again: replace the stream instead.
            js.delete_stream(&config.name).await.unwrap();
            js.create_stream(config).await.unwrap();
        }

        let stderr = run_until_refused(&nats, &env_refs(&env), &["--admin-keys", &admin_keys])
            .unwrap_or_else(|| panic!("served on {bucket} with {what}"));
        assert!(
            stderr.contains(bucket) && stderr.contains(what),
            "{bucket} {what}: {stderr}"
        );
    }
}
