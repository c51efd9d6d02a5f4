//! Backup and restore: `piggybank backup --out FILE` writes every kept version of every
//! secret (still sealed), the mappings and the sealed key record to one 0600 file with a
//! header, a checksum and an admin key's signature; `piggybank restore FILE` checks all of it
//! (the signature against the trusted admin keys, every value's size and each bucket's total
//! against the target's limits) before writing anything, into empty buckets only unless `--force`. A
//! restored store serves what it served, to the entities it served it to, and a sealed one
//! unlocks with its old key.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::common::*;
use base64::Engine as _;
use futures::StreamExt as _;
use serde_json::Value;

const SECRETS: &str = "WASMCLOUD_SECRETS";
const MAPPINGS: &str = "SECRETS_nats-kv_state";
const VAULT: &str = "SECRETS_nats-kv_vault";

/// The operators' admin key's seed: backups are signed with it, and restore trusts its
/// public key.
fn operator_seed() -> &'static str {
    static SEED: OnceLock<String> = OnceLock::new();
    SEED.get_or_init(|| {
        let seed = piggybank::admin_auth::AdminSigner::generate_seed();
        seed.to_string()
    })
}

/// `piggybank backup --out FILE`, signed by the operator; returns its stdout.
fn backup(nats: &NatsServer, file: &Path) -> String {
    let env = [("PIGGYBANK_ADMIN_SEED", operator_seed())];
    let (ok, out, err) = cli(nats, &["backup", "--out", path(file)], None, &env);
    assert!(ok, "backup failed: {err}");
    String::from_utf8(out).unwrap()
}

/// The operator's public key, as `ADMIN_KEYS` lists it.
fn operator_key() -> String {
    piggybank::admin_auth::AdminSigner::from_seed(operator_seed())
        .unwrap()
        .public_key()
        .to_string()
}

/// `piggybank restore [--force] FILE`, trusting the operator's key; returns (success,
/// stdout, stderr).
fn restore(nats: &NatsServer, file: &Path, force: bool) -> (bool, String, String) {
    let mut args = vec!["restore"];
    if force {
        args.push("--force");
    }
    args.push(path(file));
    restore_with(nats, &args, &[("ADMIN_KEYS", &operator_key())])
}

/// `piggybank` with `args` (a restore) and `env`, nothing else; returns (success, stdout,
/// stderr).
fn restore_with(nats: &NatsServer, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let (ok, out, err) = cli(nats, args, None, env);
    (ok, String::from_utf8(out).unwrap(), err)
}

fn path(file: &Path) -> &str {
    file.to_str().unwrap()
}

/// The backup's header line, parsed.
fn header(file: &Path) -> Value {
    let bytes = std::fs::read(file).unwrap();
    let end = bytes.iter().position(|b| *b == b'\n').unwrap();
    serde_json::from_slice(&bytes[..end]).unwrap()
}

/// The names of the KV buckets on the server.
async fn buckets(nats: &NatsServer) -> Vec<String> {
    let js = async_nats::jetstream::new(nats.client().await);
    let mut names: Vec<String> = js
        .stream_names()
        .map(|n| n.unwrap())
        .filter_map(|n| async move { n.strip_prefix("KV_").map(str::to_string) })
        .collect()
        .await;
    names.sort();
    names
}

async fn delete_buckets(nats: &NatsServer, names: &[&str]) {
    let js = async_nats::jetstream::new(nats.client().await);
    for name in names {
        js.delete_key_value(name).await.unwrap();
    }
}

/// The revisions of `name`'s kept versions in the secrets bucket, oldest first.
async fn revisions(nats: &NatsServer, name: &str) -> Vec<u64> {
    let js = async_nats::jetstream::new(nats.client().await);
    let kv = js.get_key_value(SECRETS).await.unwrap();
    let mut history = kv.history(name).await.unwrap();
    let mut out = Vec::new();
    while let Some(entry) = history.next().await {
        let entry = entry.unwrap();
        if entry.operation == async_nats::jetstream::kv::Operation::Put {
            out.push(entry.revision);
        }
    }
    out
}

/// Every way a value could show in a file: raw, base64 (standard and URL-safe, padded or
/// not) and hex (either case).
fn encodings(value: &[u8]) -> Vec<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let mut all = vec![value.to_vec()];
    for engine in [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD] {
        all.push(engine.encode(value).into_bytes());
    }
    let hex = data_encoding::HEXLOWER.encode(value);
    all.push(hex.to_uppercase().into_bytes());
    all.push(hex.into_bytes());
    all
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The encodings of `value` found in `haystack`.
fn found(haystack: &[u8], value: &[u8]) -> usize {
    encodings(value)
        .iter()
        .filter(|e| contains(haystack, e))
        .count()
}

fn assert_no_plaintext(file: &Path, values: &[Vec<u8>]) {
    let bytes = std::fs::read(file).unwrap();
    // The search finds each encoding when it is there.
    let control = b"control-value-4815162342".to_vec();
    let planted: Vec<u8> = encodings(&control).join(&b' ');
    assert_eq!(found(&planted, &control), encodings(&control).len());
    for value in values {
        assert_eq!(
            found(&bytes, value),
            0,
            "a value is in the backup ({} bytes long)",
            value.len()
        );
    }
}

/// Host get as `jwt`: Ok((string, binary)) or the refusal's text.
async fn served(
    host: &wasmcloud_secrets_client::Client,
    name: &str,
    jwt: &str,
    version: Option<u64>,
) -> Result<(Option<String>, Option<Vec<u8>>), String> {
    let mut req = request(name, jwt);
    req.version = version.map(|v| v.to_string());
    host_get(host, req)
        .await
        .map(|s| (s.string_secret, s.binary_secret))
}

fn string(s: &str) -> Result<(Option<String>, Option<Vec<u8>>), String> {
    Ok((Some(s.to_string()), None))
}

fn binary(b: &[u8]) -> Result<(Option<String>, Option<Vec<u8>>), String> {
    Ok((None, Some(b.to_vec())))
}

#[tokio::test]
async fn a_restored_store_serves_every_secret_and_version_to_its_mapped_entities_only() {
    let Deployed {
        nats,
        keys,
        backend,
        admin,
    } = deployed().await;
    let issuer = Issuer::new();
    let (component_jwt, component) = issuer.component();
    let (provider_jwt, provider) = issuer.provider();
    let (stranger_jwt, _) = issuer.component();
    let blob_v1: &[u8] = &[0, 159, 146, 150, 255];
    let blob_v2: &[u8] = &[7, 0, 255, 1, 128, 64];
    for v in ["db-one", "db-two", "db-three"] {
        admin.put_secret("db", text(v), None, None).await.unwrap();
    }
    admin
        .put_secret("app/blob", bytes(blob_v1), None, None)
        .await
        .unwrap();
    admin
        .put_secret("app/blob", bytes(blob_v2), None, None)
        .await
        .unwrap();
    admin
        .put_secret("solo", text("solo-value"), None, None)
        .await
        .unwrap();
    admin
        .put_secret("gone", text("gone-value"), None, None)
        .await
        .unwrap();
    admin.delete_secret("gone").await.unwrap();
    admin
        .add_mapping(&component, &names(&["db", "app/blob", "gone"]))
        .await
        .unwrap();
    admin
        .add_mapping(&provider, &names(&["solo"]))
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("piggybank.backup");
    let out = backup(&nats, &file);
    assert!(
        out.contains("3 secrets (6 versions), 2 mappings, 0 application grants, key record: no"),
        "{out}"
    );
    assert_private_file(&file);
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "only the backup is in the directory");
    let h = header(&file);
    assert_eq!(h["format"], "piggybank-backup");
    assert_eq!(h["version"], 2);
    assert_eq!(h["signer"], operator_key().as_str());
    assert_eq!(h["backend"], "nats-kv");
    assert_eq!(
        (
            &h["secrets"],
            &h["versions"],
            &h["mappings"],
            &h["key_record"]
        ),
        (&3.into(), &6.into(), &2.into(), &false.into())
    );
    assert_eq!(h["body_sha256"].as_str().map(str::len), Some(64));
    let values: Vec<Vec<u8>> = ["db-one", "db-two", "db-three", "solo-value", "gone-value"]
        .iter()
        .map(|v| v.as_bytes().to_vec())
        .chain([blob_v1.to_vec(), blob_v2.to_vec()])
        .chain([
            keys.encryption.as_bytes().to_vec(),
            keys.transit.as_bytes().to_vec(),
        ])
        .collect();
    assert_no_plaintext(&file, &values);

    // Wipe: the backend stopped, its buckets deleted.
    backend.stop().await;
    delete_buckets(&nats, &[SECRETS, MAPPINGS]).await;
    assert!(!buckets(&nats).await.contains(&SECRETS.to_string()));

    let (ok, out, err) = restore(&nats, &file, false);
    assert!(ok, "restore failed: {err}");
    assert!(out.contains("3 secrets (6 versions), 2 mappings"), "{out}");
    let _backend = start_backend(&nats, config(&nats, &keys)).await;
    let host = host_client(&nats).await;

    assert_eq!(
        served(&host, "db", &component_jwt, None).await,
        string("db-three")
    );
    assert_eq!(
        served(&host, "app/blob", &component_jwt, None).await,
        binary(blob_v2)
    );
    assert_eq!(
        served(&host, "solo", &provider_jwt, None).await,
        string("solo-value")
    );
    // Mapped entities only, and a deleted secret stays deleted.
    for (name, jwt) in [
        ("solo", &component_jwt),
        ("db", &provider_jwt),
        ("db", &stranger_jwt),
        ("app/blob", &stranger_jwt),
    ] {
        let refused = served(&host, name, jwt, None).await.unwrap_err();
        assert!(refused.contains("unauthorized"), "{name}: {refused}");
    }
    let gone = served(&host, "gone", &component_jwt, None)
        .await
        .unwrap_err();
    assert!(gone.contains("Secret not found"), "{gone}");
    let listed: Vec<String> = admin
        .list_secrets("")
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(listed, ["app/blob", "db", "solo"]);

    // Older versions: new revisions, same order, same values.
    let db = revisions(&nats, "db").await;
    assert_eq!(db.len(), 3);
    for (revision, value) in db.iter().zip(["db-one", "db-two", "db-three"]) {
        assert_eq!(
            served(&host, "db", &component_jwt, Some(*revision)).await,
            string(value)
        );
    }
    let blob = revisions(&nats, "app/blob").await;
    assert_eq!(
        served(&host, "app/blob", &component_jwt, Some(blob[0])).await,
        binary(blob_v1)
    );
    assert_eq!(
        admin.get_mappings(&provider).await.unwrap(),
        ["solo".to_string()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_sealed_store_unlocks_with_its_old_key_and_serves() {
    let nats = NatsServer::start();
    let run = spawn_sealed_run(&nats, &[]);
    wait_database_instances(&nats.client().await, "piggybank", 1).await;
    let (ok, out, err) = cli(
        &nats,
        &["init", "--json", "--unverified-instances"],
        None,
        &[],
    );
    assert!(ok, "{err}");
    let reply: Value = serde_json::from_slice(&out).unwrap();
    let key = reply["database_key"].as_str().unwrap().to_string();
    let (ok, _, err) = cli(
        &nats,
        // Run without TRANSIT_XKEY_SEED: nothing to prove itself with.
        &["unlock", "--unverified-instances"],
        None,
        &[("PIGGYBANK_DATABASE_KEY", &key)],
    );
    assert!(ok, "{err}");
    let admin = admin(nats.client().await);
    admin
        .put_secret("vault/db", text("sealed-one"), None, None)
        .await
        .unwrap();
    admin
        .put_secret("vault/db", text("sealed-two"), None, None)
        .await
        .unwrap();
    admin
        .put_secret("vault/cert", bytes(&[1, 2, 3, 250, 251]), None, None)
        .await
        .unwrap();
    let (jwt, component) = Issuer::new().component();
    admin
        .add_mapping(&component, &names(&["vault/db", "vault/cert"]))
        .await
        .unwrap();
    let xkey_subject = "wasmcloud.secrets.v1alpha1.nats-kv.server_xkey";
    let client = nats.client().await;
    let transit = client.request(xkey_subject, "".into()).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sealed.backup");
    let out = backup(&nats, &file);
    assert!(
        out.contains("2 secrets (3 versions), 1 mappings, 0 application grants, key record: yes"),
        "{out}"
    );
    assert_eq!(header(&file)["key_record"], true);
    let key_bytes = base64::engine::general_purpose::STANDARD
        .decode(&key)
        .unwrap();
    assert_no_plaintext(
        &file,
        &[
            b"sealed-one".to_vec(),
            b"sealed-two".to_vec(),
            vec![1, 2, 3, 250, 251],
            key.as_bytes().to_vec(),
            key_bytes,
        ],
    );
    drop(run);

    // A new server: nothing on it but what restore writes.
    let fresh = NatsServer::start();
    let (ok, out, err) = restore(&fresh, &file, false);
    assert!(ok, "restore failed: {err}");
    assert!(out.contains("key record: yes"), "{out}");
    assert_eq!(buckets(&fresh).await, [MAPPINGS, VAULT, SECRETS]);
    let _run = spawn_sealed_run(&fresh, &[]);
    let statuses = wait_database_instances(&fresh.client().await, "piggybank", 1).await;
    assert_eq!(
        (&statuses[0]["initialized"], &statuses[0]["sealed"]),
        (&true.into(), &true.into())
    );
    let (ok, _, err) = cli(
        &fresh,
        // Run without TRANSIT_XKEY_SEED: nothing to prove itself with.
        &["unlock", "--unverified-instances"],
        None,
        &[("PIGGYBANK_DATABASE_KEY", &key)],
    );
    assert!(ok, "the old key unlocks the restored store: {err}");

    let fresh_client = fresh.client().await;
    let restored_transit = fresh_client.request(xkey_subject, "".into()).await.unwrap();
    assert_eq!(
        restored_transit.payload, transit.payload,
        "the same transit key, from the restored record"
    );
    let host = host_client(&fresh).await;
    assert_eq!(
        served(&host, "vault/db", &jwt, None).await,
        string("sealed-two")
    );
    assert_eq!(
        served(&host, "vault/cert", &jwt, None).await,
        binary(&[1, 2, 3, 250, 251])
    );
    let db = revisions(&fresh, "vault/db").await;
    assert_eq!(
        served(&host, "vault/db", &jwt, Some(db[0])).await,
        string("sealed-one")
    );
    let (stranger, _) = Issuer::new().component();
    let refused = served(&host, "vault/db", &stranger, None)
        .await
        .unwrap_err();
    assert!(refused.contains("unauthorized"), "{refused}");
}

/// A backed-up store with a few secrets and a mapping; returns the server and the file.
async fn backed_up(dir: &Path) -> (Deployed, PathBuf) {
    let deployed = deployed().await;
    for (name, value) in [("a", "alpha"), ("b", "beta"), ("a", "alpha-2")] {
        deployed
            .admin
            .put_secret(name, text(value), None, None)
            .await
            .unwrap();
    }
    let (_, component) = Issuer::new().component();
    deployed
        .admin
        .add_mapping(&component, &names(&["a", "b"]))
        .await
        .unwrap();
    let file = dir.join("piggybank.backup");
    backup(&deployed.nats, &file);
    (deployed, file)
}

#[tokio::test]
async fn a_corrupt_or_truncated_backup_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (_deployed, file) = backed_up(dir.path()).await;
    let good = std::fs::read(&file).unwrap();
    let body_start = good.iter().position(|b| *b == b'\n').unwrap() + 1;
    let fresh = NatsServer::start();

    let mut flipped = good.clone();
    let at = body_start + (good.len() - body_start) / 2;
    flipped[at] ^= 0x20;
    let corrupt = dir.path().join("corrupt.backup");
    std::fs::write(&corrupt, &flipped).unwrap();
    let (ok, _, err) = restore(&fresh, &corrupt, false);
    assert!(!ok);
    assert!(
        err.contains("corrupt") && err.contains("SHA-256") && err.contains("nothing was written"),
        "{err}"
    );

    let truncated = dir.path().join("truncated.backup");
    std::fs::write(&truncated, &good[..good.len() - 40]).unwrap();
    let (ok, _, err) = restore(&fresh, &truncated, false);
    assert!(!ok);
    assert!(
        err.contains("truncated") && err.contains("nothing was written"),
        "{err}"
    );

    let cut_in_header = dir.path().join("header.backup");
    std::fs::write(&cut_in_header, &good[..100]).unwrap();
    let (ok, _, err) = restore(&fresh, &cut_in_header, false);
    assert!(!ok);
    assert!(err.contains("not a piggybank backup"), "{err}");

    assert!(
        buckets(&fresh).await.is_empty(),
        "no bucket was created: {:?}",
        buckets(&fresh).await
    );
    // And the untouched file restores.
    let (ok, _, err) = restore(&fresh, &file, false);
    assert!(ok, "{err}");
}

#[tokio::test]
async fn a_target_that_is_not_empty_is_refused_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let (deployed, file) = backed_up(dir.path()).await;
    let client = deployed.nats.client().await;
    let before = kv_state(&client).await;

    let (ok, _, err) = restore(&deployed.nats, &file, false);
    assert!(!ok);
    assert!(
        err.contains("not empty") && err.contains(SECRETS) && err.contains("--force"),
        "{err}"
    );
    assert_eq!(kv_state(&client).await, before, "nothing changed");

    // --force writes on top: every secret gets the backup's versions as newer ones.
    let (ok, out, err) = restore(&deployed.nats, &file, true);
    assert!(ok, "{err}\n{out}");
    assert_eq!(revisions(&deployed.nats, "a").await.len(), 4);
    let (jwt, component) = Issuer::new().component();
    deployed
        .admin
        .add_mapping(&component, &names(&["a"]))
        .await
        .unwrap();
    let host = host_client(&deployed.nats).await;
    assert_eq!(served(&host, "a", &jwt, None).await, string("alpha-2"));

    // Empty buckets (a backend just started on a new server) are restored into, and the
    // running backend serves what was restored.
    let other = NatsServer::start();
    let keys = Keys {
        transit: deployed.keys.transit.clone(),
        encryption: deployed.keys.encryption.clone(),
    };
    let _backend = start_backend(&other, config(&other, &keys)).await;
    let (ok, _, err) = restore(&other, &file, false);
    assert!(ok, "{err}");
    let restored_admin = admin(other.client().await);
    wait_listed(&restored_admin, "", 2).await;
    restored_admin
        .add_mapping(&component, &names(&["b"]))
        .await
        .unwrap();
    let host = host_client(&other).await;
    assert_eq!(served(&host, "b", &jwt, None).await, string("beta"));
}

/// Secrets with three versions each in [`round_trip`].
const MULTI: usize = 20;

/// Seed `count` secrets, back them up, restore them on a new server and serve them;
/// returns (backup, restore) wall times, the CLI process included.
async fn round_trip(count: usize) -> (Duration, Duration) {
    let Deployed {
        nats,
        keys,
        backend,
        admin: _,
    } = deployed().await;
    let secrets: Vec<_> = (0..count)
        .map(|i| (format!("load/s{i:06}"), text(&format!("value-{i}"))))
        .collect();
    let seeded = Instant::now();
    seed_secrets(&nats, &keys, secrets, 256).await;
    eprintln!("seeded {count} secrets in {:?}", seeded.elapsed());
    // And three versions of a few more, interleaved (one put at a time, so in this order).
    let versions: Vec<_> = (1..=3)
        .flat_map(|v| (0..MULTI).map(move |i| (format!("multi/m{i}"), text(&format!("v{v}")))))
        .collect();
    seed_secrets(&nats, &keys, versions, 1).await;
    backend.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("piggybank.backup");
    let started = Instant::now();
    let out = backup(&nats, &file);
    let backup_time = started.elapsed();
    let expected = format!("{} secrets ({} versions)", count + MULTI, count + 3 * MULTI);
    assert!(out.contains(&expected), "{out}");
    let size = std::fs::metadata(&file).unwrap().len();

    let fresh = NatsServer::start();
    let started = Instant::now();
    let (ok, _, err) = restore(&fresh, &file, false);
    let restore_time = started.elapsed();
    assert!(ok, "{err}");
    eprintln!("{count} secrets: backup {backup_time:?} ({size} bytes), restore {restore_time:?}");

    let _backend = start_backend(&fresh, config(&fresh, &keys)).await;
    let admin = admin(fresh.client().await);
    wait_listed(&admin, "load/", count).await;
    wait_listed(&admin, "multi/", MULTI).await;
    let (jwt, component) = Issuer::new().component();
    let last = format!("load/s{:06}", count - 1);
    admin
        .add_mapping(&component, &names(&["load/s000000", &last]))
        .await
        .unwrap();
    let host = host_client(&fresh).await;
    assert_eq!(
        served(&host, &last, &jwt, None).await,
        string(&format!("value-{}", count - 1))
    );
    // Each secret's versions in their order: the last is the latest.
    let multi: Vec<String> = (0..MULTI).map(|i| format!("multi/m{i}")).collect();
    let refs: Vec<&str> = multi.iter().map(String::as_str).collect();
    admin.add_mapping(&component, &names(&refs)).await.unwrap();
    for name in &multi {
        assert_eq!(
            served(&host, name, &jwt, None).await,
            string("v3"),
            "{name}"
        );
        let kept = revisions(&fresh, name).await;
        assert_eq!(kept.len(), 3, "{name}");
        assert_eq!(
            served(&host, name, &jwt, Some(kept[0])).await,
            string("v1"),
            "{name}"
        );
    }
    (backup_time, restore_time)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_restore_of_2000_secrets() {
    round_trip(2_000).await;
}

/// `make backup-bench`: the figures docs/performance.md quotes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "100,000 secrets, timed: make backup-bench"]
async fn backup_and_restore_of_100000_secrets_timed() {
    round_trip(100_000).await;
}

/// Rewrite the backup `from` into `to` as an attacker with the file (but no admin seed)
/// can: `edit` changes the header and the body's lines, then the body's length and SHA-256
/// are recomputed into the header, which is padded to its width as the writer does.
fn rewrite(from: &Path, to: &Path, edit: impl FnOnce(&mut Value, &mut Vec<Value>)) {
    use sha2::Digest as _;
    let bytes = std::fs::read(from).unwrap();
    let width = bytes.iter().position(|b| *b == b'\n').unwrap() + 1;
    let mut header: Value = serde_json::from_slice(&bytes[..width]).unwrap();
    let mut lines: Vec<Value> = bytes[width..]
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    edit(&mut header, &mut lines);
    let mut body = Vec::new();
    for line in &lines {
        body.extend_from_slice(&serde_json::to_vec(line).unwrap());
        body.push(b'\n');
    }
    header["body_bytes"] = body.len().into();
    header["body_sha256"] = data_encoding::HEXLOWER
        .encode(&sha2::Sha256::digest(&body))
        .into();
    let mut out = serde_json::to_vec(&header).unwrap();
    out.resize(width - 1, b' ');
    out.push(b'\n');
    out.extend_from_slice(&body);
    std::fs::write(to, out).unwrap();
}

/// The backup tamper: copy `prod/db`'s sealed value over `public/motd`'s and add
/// `prod/db` to the attacker's mapping, recomputing the hash and length. Refused, and
/// nothing is written; the untouched backup restores (positive control), and the tamper is
/// a real one: restored without authentication, it would give the attacker `prod/db`
/// (second control). The moved value itself does not open under its new name (bound names).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_changed_by_someone_without_an_admin_seed_is_refused_and_nothing_is_written() {
    let Deployed {
        nats,
        keys,
        backend: _backend,
        admin,
    } = deployed().await;
    admin
        .put_secret("prod/db", text("PROD-DB-PASSWORD"), None, None)
        .await
        .unwrap();
    admin
        .put_secret("public/motd", text("hello"), None, None)
        .await
        .unwrap();
    let (attacker_jwt, attacker) = Issuer::new().component();
    admin
        .add_mapping(&attacker, &names(&["public/motd"]))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("piggybank.backup");
    backup(&nats, &file);

    let tampered = dir.path().join("tampered.backup");
    rewrite(&file, &tampered, |header, lines| {
        let value_of = |lines: &[Value], name: &str| {
            lines
                .iter()
                .find(|l| l["type"] == "version" && l["secret"] == name)
                .map(|l| l["value"].clone())
                .unwrap()
        };
        let prod = value_of(lines, "prod/db");
        for line in lines.iter_mut() {
            if line["type"] == "version" && line["secret"] == "public/motd" {
                line["value"] = prod.clone();
            }
            if line["type"] == "mapping" && line["entity"] == attacker.as_str() {
                line["names"] = serde_json::json!(["prod/db", "public/motd"]);
            }
        }
        assert_eq!(header["mappings"], 1);
    });

    let fresh = NatsServer::start();
    let (ok, out, err) = restore(&fresh, &tampered, false);
    assert!(!ok, "the tampered backup was restored: {out}");
    assert!(
        err.contains("signature does not verify") && err.contains("nothing was written"),
        "{err}"
    );
    assert!(buckets(&fresh).await.is_empty(), "a bucket was created");

    // Positive control: the file as the operator made it restores and serves.
    let (ok, _, err) = restore(&fresh, &file, false);
    assert!(ok, "{err}");
    let _restored = start_backend(&fresh, config(&fresh, &keys)).await;
    let host = host_client(&fresh).await;
    assert_eq!(
        served(&host, "public/motd", &attacker_jwt, None).await,
        string("hello")
    );
    let refused = served(&host, "prod/db", &attacker_jwt, None).await;
    assert!(refused.unwrap_err().contains("unauthorized"));

    // Second control: the same tampered file, restored on the operator's word alone
    // (--unauthenticated), does grant the attacker prod/db: only the signature stops it.
    // The moved value does not open under public/motd: names are bound.
    let unchecked = NatsServer::start();
    let args = ["restore", "--unauthenticated", path(&tampered)];
    let (ok, _, err) = restore_with(&unchecked, &args, &[]);
    assert!(ok, "{err}");
    assert!(err.contains("signer was not checked"), "{err}");
    let _unchecked = start_backend(&unchecked, config(&unchecked, &keys)).await;
    let host = host_client(&unchecked).await;
    assert_eq!(
        served(&host, "prod/db", &attacker_jwt, None).await,
        string("PROD-DB-PASSWORD"),
        "the tamper would have worked"
    );
    let moved = served(&host, "public/motd", &attacker_jwt, None).await;
    let moved = moved.unwrap_err();
    assert!(
        moved.contains("sealed for another secret's name"),
        "{moved}"
    );
}

/// A backup is only as good as its signer: one signed by a key restore was not told to
/// trust, or checked against no key, is refused; so is a backup of the format before
/// signatures (version 1) unless the operator vouches for it with `--unauthenticated`. And
/// `backup` without an admin seed makes no file.
#[tokio::test]
async fn restore_reads_only_backups_signed_by_a_trusted_admin_key_unless_told_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let (deployed, file) = backed_up(dir.path()).await;
    let fresh = NatsServer::start();
    let file_arg = path(&file);

    let (ok, _, err) = restore_with(&fresh, &["restore", file_arg], &[]);
    assert!(!ok);
    assert!(
        err.contains(&format!("signed by admin key {}", operator_key()))
            && err.contains("--admin-keys"),
        "{err}"
    );
    let stranger = piggybank::admin_auth::AdminSigner::from_seed(
        &piggybank::admin_auth::AdminSigner::generate_seed(),
    )
    .unwrap();
    let trusted = [("ADMIN_KEYS", stranger.public_key())];
    let (ok, _, err) = restore_with(&fresh, &["restore", file_arg], &trusted);
    assert!(!ok);
    assert!(err.contains("not one of the trusted admin keys"), "{err}");

    // Version 1: the same body, under a header with no signature.
    let old = dir.path().join("v1.backup");
    rewrite(&file, &old, |header, _| {
        let fields = header.as_object_mut().unwrap();
        fields.remove("signer");
        fields.remove("signature");
        fields.insert("version".into(), 1.into());
    });
    let (ok, _, err) = restore(&fresh, &old, false);
    assert!(!ok);
    assert!(
        err.contains("version 1") && err.contains("--unauthenticated"),
        "{err}"
    );
    assert!(buckets(&fresh).await.is_empty(), "a bucket was created");
    let args = ["restore", "--unauthenticated", path(&old)];
    let (ok, out, err) = restore_with(&fresh, &args, &[]);
    assert!(ok, "{err}");
    assert!(out.contains("2 secrets (3 versions), 1 mappings"), "{out}");

    // No seed, no backup.
    let unsigned = dir.path().join("unsigned.backup");
    let (ok, _, err) = cli(
        &deployed.nats,
        &["backup", "--out", path(&unsigned)],
        None,
        &[],
    );
    assert!(!ok && err.contains("PIGGYBANK_ADMIN_SEED"), "{err}");
    assert!(!unsigned.exists());
}

/// A backup holding a value larger than the target server accepts (2 MiB against a 1 MiB
/// `max_payload`) is refused whole, naming the entry, before anything is written (it used
/// to stop part way, after the entries before it). The same file restores into a server
/// that accepts the value (positive control).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_with_a_value_too_large_for_the_target_is_refused_whole() {
    let big = nats_with_max_payload(4 << 20);
    let keys = Keys::generate();
    let backend = start_backend(&big, config(&big, &keys)).await;
    let mut secrets: Vec<_> = (0..5)
        .map(|i| (format!("small/{i}"), text(&format!("value-{i}"))))
        .collect();
    let large = "x".repeat(2 << 20);
    secrets.push(("huge".to_string(), text(&large)));
    secrets.push(("small/last".to_string(), text("last")));
    seed_secrets(&big, &keys, secrets, 1).await;
    backend.stop().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("piggybank.backup");
    let out = backup(&big, &file);
    assert!(out.contains("7 secrets (7 versions)"), "{out}");

    let small = nats_with_max_payload(1 << 20);
    let (ok, out, err) = restore(&small, &file, false);
    assert!(!ok, "{out}");
    assert!(
        err.contains("a version of secret \"huge\"")
            && err.contains("max_payload")
            && err.contains(&(1u64 << 20).to_string()),
        "{err}"
    );
    assert!(buckets(&small).await.is_empty(), "something was written");

    // A bucket's own max value size counts too, where it is smaller than max_payload.
    let js = async_nats::jetstream::new(small.client().await);
    js.create_key_value(async_nats::jetstream::kv::Config {
        bucket: SECRETS.into(),
        history: 64,
        max_value_size: 100,
        ..Default::default()
    })
    .await
    .unwrap();
    let (ok, _, err) = restore(&small, &file, false);
    assert!(!ok);
    assert!(
        err.contains("a version of secret \"huge\"") && err.contains("max value size"),
        "{err}"
    );
    assert_eq!(buckets(&small).await, [SECRETS], "nothing else was created");

    let roomy = nats_with_max_payload(4 << 20);
    let (ok, out, err) = restore(&roomy, &file, false);
    assert!(ok, "{err}");
    assert!(out.contains("7 secrets (7 versions)"), "{out}");
}

/// The stored state of the secrets bucket: (messages, bytes).
async fn secrets_state(nats: &NatsServer) -> (u64, u64) {
    let js = async_nats::jetstream::new(nats.client().await);
    let mut stream = js.get_stream(format!("KV_{SECRETS}")).await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    (state.messages, state.bytes)
}

/// Delete every bucket on the server.
async fn clear(nats: &NatsServer) {
    let names = buckets(nats).await;
    delete_buckets(nats, &names.iter().map(String::as_str).collect::<Vec<_>>()).await;
}

/// An empty secrets bucket with these stream limits (0: none), uncompressed.
async fn secrets_bucket_limited(nats: &NatsServer, max_bytes: i64, max_messages: i64) {
    let js = async_nats::jetstream::new(nats.client().await);
    js.create_key_value(async_nats::jetstream::kv::Config {
        bucket: SECRETS.into(),
        history: 64,
        max_bytes: if max_bytes > 0 { max_bytes } else { -1 },
        ..Default::default()
    })
    .await
    .unwrap();
    if max_messages > 0 {
        let mut stream = js.get_stream(format!("KV_{SECRETS}")).await.unwrap();
        let mut config = stream.info().await.unwrap().config.clone();
        config.max_messages = max_messages;
        js.update_stream(config).await.unwrap();
    }
}

/// A bucket that exists with a total limit (`max_bytes`, `max_msgs`: the operator's to set,
/// and anyone's with the JetStream API) too small for all the backup puts in it: refused
/// before anything is written, naming the bucket, the need and the limit. The controls: the
/// same file restores into buckets one byte, and no message, larger than it needs, so the
/// estimate of what the stream counts is the stream's own count.
#[tokio::test]
async fn a_backup_an_existing_bucket_cannot_hold_in_all_is_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (_deployed, file) = backed_up(dir.path()).await;
    let target = NatsServer::start();

    // What the versions take in a bucket with no limits: the stream's own count.
    secrets_bucket_limited(&target, 0, 0).await;
    let (ok, _, err) = restore(&target, &file, false);
    assert!(ok, "{err}");
    let (messages, bytes) = secrets_state(&target).await;
    assert_eq!(messages, 3);
    clear(&target).await;

    // Too small in bytes: refused whole.
    let limit = i64::try_from(bytes / 2).unwrap();
    secrets_bucket_limited(&target, limit, 0).await;
    let (ok, out, err) = restore(&target, &file, false);
    assert!(!ok, "{out}");
    assert!(
        err.contains(&format!("bucket {SECRETS:?} is too small"))
            && err.contains(&format!("its max_bytes is {limit}"))
            && err.contains(&format!("store {bytes} bytes"))
            && err.contains("nothing was written"),
        "{err}"
    );
    assert_eq!(
        secrets_state(&target).await,
        (0, 0),
        "a version was written"
    );
    assert_eq!(buckets(&target).await, [SECRETS], "a bucket was created");
    clear(&target).await;

    // Too few messages: refused whole.
    secrets_bucket_limited(&target, 0, 2).await;
    let (ok, _, err) = restore(&target, &file, false);
    assert!(!ok);
    assert!(
        err.contains("store 3 messages") && err.contains("its max_msgs is 2"),
        "{err}"
    );
    assert_eq!(
        secrets_state(&target).await,
        (0, 0),
        "a version was written"
    );
    clear(&target).await;

    // Just large enough: everything is written.
    let limit = i64::try_from(bytes + 1).unwrap();
    secrets_bucket_limited(&target, limit, 3).await;
    let (ok, out, err) = restore(&target, &file, false);
    assert!(ok, "{err}");
    assert!(out.contains("2 secrets (3 versions), 1 mappings"), "{out}");
    assert_eq!(secrets_state(&target).await, (3, bytes));
}

/// Grants to wadm applications are backed up (`app_mapping` lines) and restored into the
/// mappings bucket, where they serve the application again and no other.
#[tokio::test]
async fn application_grants_survive_backup_and_restore() {
    let Deployed {
        nats,
        keys,
        backend,
        admin,
    } = deployed().await;
    admin
        .put_secret("db", text("pw"), None, None)
        .await
        .unwrap();
    admin
        .put_secret("key-only", text("k"), None, None)
        .await
        .unwrap();
    admin
        .add_app_mapping("shop", &names(&["db"]))
        .await
        .unwrap();
    let (entity_jwt, entity) = Issuer::new().component();
    admin
        .add_mapping(&entity, &names(&["key-only"]))
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("piggybank.backup");
    let out = backup(&nats, &file);
    assert!(out.contains("1 mappings, 1 application grants"), "{out}");
    assert_eq!(header(&file)["app_mappings"], 1);

    backend.stop().await;
    delete_buckets(&nats, &[SECRETS, MAPPINGS]).await;
    let (ok, out, err) = restore(&nats, &file, false);
    assert!(ok, "restore failed: {err}");
    assert!(out.contains("1 mappings, 1 application grants"), "{out}");
    let _backend = start_backend(&nats, config(&nats, &keys)).await;
    let host = host_client(&nats).await;
    let (jwt, _) = Issuer::new().component();
    let in_app = |app: &str| {
        let mut req = request("db", &jwt);
        req.context.application.name = Some(app.into());
        req
    };
    let got = host_get(&host, in_app("shop")).await.unwrap();
    assert_eq!(got.string_secret.as_deref(), Some("pw"));
    assert!(host_get(&host, in_app("billing")).await.is_err());
    assert_eq!(admin.get_app_mappings("shop").await.unwrap(), ["db"]);
    let got = host_get(&host, request("key-only", &entity_jwt))
        .await
        .unwrap();
    assert_eq!(got.string_secret.as_deref(), Some("k"));
}
