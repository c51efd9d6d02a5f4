//! `piggybank status` reports on every backend, keyed (`ENCRYPTION_XKEY_SEED`) or sealed:
//! every instance that answers, its mode, seal, counts and version; it exits as
//! `vault status` does (0 unsealed, 2 sealed, 1 error). The database commands print text, or
//! JSON with `--json`; `unlock` tells a share from a key on stdin. All through the real binary
//! against backends run as real processes.

use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::Value;

const BACKEND: &str = "wasmcloud.secrets.v1alpha1.nats-kv";
const VERSION: &str = env!("CARGO_PKG_VERSION");

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// A keyed backend run as `piggybank run`, answering on both the protocol and `status`.
async fn keyed(nats: &NatsServer, keys: &Keys) -> Proc {
    let proc = spawn_run(nats, keys, &[]);
    wait_for_backend(nats, BACKEND).await;
    proc
}

/// The transit key the sealed backends here run with (`-t`), which `unlock` pins.
static TRANSIT_SEED: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| nkeys::XKey::new_from_raw([9; 32]).seed().unwrap());

/// The env of an operator's shell that holds the transit seed (`unlock` pins its key).
fn pinned() -> [(&'static str, &'static str); 1] {
    [("TRANSIT_XKEY_SEED", TRANSIT_SEED.as_str())]
}

/// A sealed backend run as `piggybank run` without a data key, with a transit key.
async fn sealed(nats: &NatsServer) -> Proc {
    let proc = spawn_sealed_run(nats, &["-t", &TRANSIT_SEED]);
    wait_database_instances(&nats.client().await, "piggybank", 1).await;
    proc
}

#[tokio::test]
async fn status_of_a_keyed_backend_shows_mode_counts_and_version_and_exits_0() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let _backend = keyed(&nats, &keys).await;
    let client = nats.client().await;
    wait_database_instances(&client, "piggybank", 1).await;
    let admin = admin(client);
    for name in ["a", "b"] {
        admin.put_secret(name, text("v"), None, None).await.unwrap();
    }
    let (_, entity) = Issuer::new().component();
    admin.add_mapping(&entity, &names(&["a"])).await.unwrap();

    let (code, out, err) = cli_code(&nats, &["status"], None, &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    for line in [
        "  Mode:            keyed\n",
        "  Sealed:          false\n",
        "  Secrets:         2\n",
        "  Mapped entities: 1\n",
        &format!("  Version:         {VERSION}\n"),
        "1 instance answered on piggybank.database.nats-kv.status: unsealed\n",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    assert!(
        !out.contains(keys.encryption.as_str()) && !out.contains(keys.transit.as_str()),
        "a seed was printed"
    );

    let (code, out, err) = cli_code(&nats, &["status", "--json"], None, &[]);
    assert_eq!(code, Some(0), "{err}");
    let status = json(&out);
    assert_eq!(status["sealed"], false);
    let instance = &status["instances"][0];
    assert_eq!(instance["mode"], "keyed");
    assert_eq!(instance["sealed"], false);
    assert_eq!(instance["initialized"], true);
    assert_eq!(instance["secrets"], 2);
    assert_eq!(instance["mapped_entities"], 1);
    assert_eq!(instance["version"], VERSION);
    assert_eq!(instance["server_xkey"], keys.transit_public().as_str());
    let id = instance["instance_id"].as_str().unwrap();
    let (_, text, _) = cli_code(&nats, &["status"], None, &[]);
    assert!(text.starts_with(&format!("Instance {id}\n")), "{text}");
}

#[tokio::test]
async fn a_keyed_backend_refuses_seal_operations_with_a_clear_error() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let _backend = keyed(&nats, &keys).await;
    wait_database_instances(&nats.client().await, "piggybank", 1).await;
    let key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n";
    for (args, stdin) in [
        (&["init", "--unverified-instances"][..], None),
        (
            &["unlock", "--unverified-instances"][..],
            Some(key.as_bytes()),
        ),
        (&["lock"][..], None),
        (&["rotate"][..], None),
    ] {
        let started = Instant::now();
        let (code, out, err) = cli_code(&nats, args, stdin, &[]);
        assert_eq!(code, Some(1), "{args:?}: {out}{err}");
        assert!(
            err.contains("(409)") && err.contains("ENCRYPTION_XKEY_SEED: it has no seal"),
            "{args:?}: {err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{args:?} waited"
        );
    }
}

#[tokio::test]
async fn status_lists_every_instance_that_answers() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let _a = keyed(&nats, &keys).await;
    let _b = spawn_run(&nats, &keys, &[]);
    wait_database_instances(&nats.client().await, "piggybank", 2).await;

    let (code, out, err) = cli_code(&nats, &["status", "--json"], None, &[]);
    assert_eq!(code, Some(0), "{err}");
    let instances = json(&out)["instances"].as_array().unwrap().clone();
    let ids: Vec<&str> = instances
        .iter()
        .map(|i| i["instance_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{out}");
    assert_ne!(ids[0], ids[1]);

    let (code, text, _) = cli_code(&nats, &["status"], None, &[]);
    assert_eq!(code, Some(0));
    for id in ids {
        assert!(
            text.contains(&format!("Instance {id}\n")),
            "{id} in:\n{text}"
        );
    }
    assert!(text.contains("2 instances answered"), "{text}");
}

#[tokio::test]
async fn status_exits_2_while_sealed_and_0_once_unlocked() {
    let nats = NatsServer::start();
    let _backend = sealed(&nats).await;

    let (code, out, err) = cli_code(&nats, &["status"], None, &[]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(out.contains("  Mode:            sealed\n"), "{out}");
    assert!(out.contains("  Initialized:     false\n"), "{out}");
    assert!(
        out.contains(": sealed: initialize it with `piggybank init ")
            && out.contains("then unlock it with `piggybank unlock "),
        "{out}"
    );

    let (code, out, err) = cli_code(&nats, &["init", "--json"], None, &pinned());
    assert_eq!(code, Some(0), "{err}");
    let key = json(&out)["database_key"].as_str().unwrap().to_string();
    assert!(err.contains("shown only once"), "{err}");

    let (code, out, _) = cli_code(&nats, &["status", "--json"], None, &[]);
    assert_eq!(code, Some(2));
    let status = json(&out);
    assert_eq!(status["sealed"], true);
    assert_eq!(status["instances"][0]["mode"], "sealed");
    assert_eq!(status["instances"][0]["initialized"], true);

    let (code, out, err) = cli_code(
        &nats,
        &["unlock"],
        Some(format!("{key}\n").as_bytes()),
        &pinned(),
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "Unsealed: the store is unlocked.\n");
    let (code, out, _) = cli_code(&nats, &["status"], None, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("  Sealed:          false\n"), "{out}");
    assert!(!out.contains(&key), "status printed the key");

    let (code, _, err) = cli_code(&nats, &["lock"], None, &[]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, _) = cli_code(&nats, &["status"], None, &[]);
    assert_eq!(code, Some(2));
}

#[tokio::test]
async fn shares_piped_on_stdin_unlock_a_split_store() {
    let nats = NatsServer::start();
    let _backend = sealed(&nats).await;
    let (code, out, err) = cli_code(
        &nats,
        &["init", "--shares", "3", "--threshold", "2"],
        None,
        &pinned(),
    );
    assert_eq!(code, Some(0), "{err}");
    let shares: Vec<String> = out
        .lines()
        .filter_map(|l| l.strip_prefix("Share "))
        .map(|l| l.split_once(": ").unwrap().1.to_string())
        .collect();
    assert_eq!(shares.len(), 3, "{out}");
    assert!(
        shares.iter().all(|s| s.len() == 44),
        "a share is 44 characters, as a key"
    );
    assert!(out.contains("any 2 of these 3 shares"), "{out}");

    let (code, out, err) = cli_code(
        &nats,
        &["unlock"],
        Some(format!("{}\n", shares[2]).as_bytes()),
        &pinned(),
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.starts_with(
            "Share accepted: 1 of 2 given; the store is still sealed: give the next share \
             with `piggybank unlock "
        ),
        "{out}"
    );
    assert!(!err.contains(&shares[2]), "the share was echoed");
    let (code, out, _) = cli_code(&nats, &["status"], None, &[]);
    assert_eq!(code, Some(2));
    assert!(out.contains("  Unseal progress: 1/2\n"), "{out}");
    assert!(
        out.contains(": sealed: unlock it with `piggybank unlock -t X")
            && out.ends_with("(the key or a share on stdin)\n"),
        "{out}"
    );

    let (code, out, err) = cli_code(
        &nats,
        &["unlock", "--json"],
        Some(format!("{}\n", shares[0]).as_bytes()),
        &pinned(),
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(json(&out)["sealed"], false);
    let (code, _, _) = cli_code(&nats, &["status"], None, &[]);
    assert_eq!(code, Some(0));

    // Unsealed: a put and a host's get work.
    let client = nats.client().await;
    let admin = admin(client);
    admin
        .put_secret("db", text("hunter2"), None, None)
        .await
        .unwrap();
    let (jwt, entity) = Issuer::new().component();
    admin.add_mapping(&entity, &names(&["db"])).await.unwrap();
    let host = host_client(&nats).await;
    let got = host_get(&host, request("db", &jwt)).await.unwrap();
    assert_eq!(got.string_secret.as_deref(), Some("hunter2"));

    // Neither a key nor a share: refused before anything is sent, without echoing it.
    let (code, _, err) = cli_code(&nats, &["unlock"], Some(b"bm90IGEga2V5\n"), &[]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("neither a database key nor a share") && !err.contains("bm90IGEga2V5"),
        "{err}"
    );
}

#[tokio::test]
async fn without_a_backend_status_and_unlock_fail_at_once_with_a_clear_message() {
    let nats = NatsServer::start();
    for (args, stdin) in [
        (&["status"][..], None),
        (&["status", "--json"][..], None),
        (
            &["unlock", "--unverified-instances"][..],
            Some(&b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"[..]),
        ),
        (&["init", "--unverified-instances"][..], None),
    ] {
        let started = Instant::now();
        let (code, out, err) = cli_code(&nats, args, stdin, &[]);
        let took = started.elapsed();
        assert_eq!(code, Some(1), "{args:?}: {out}{err}");
        assert!(out.is_empty(), "{args:?}: {out}");
        assert!(
            err.contains("no piggybank backend answers on piggybank.database."),
            "{args:?}: {err}"
        );
        assert!(took < Duration::from_secs(5), "{args:?} took {took:?}");
    }
    // The prefix given is the one named.
    let (code, _, err) = cli_code(&nats, &["status", "--piggybank-prefix", "vault"], None, &[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("on vault.database.nats-kv.status"), "{err}");
}

#[tokio::test]
async fn mappings_init_and_rotate_print_json_with_json() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let keyed_backend = keyed(&nats, &keys).await;
    let (_, entity) = Issuer::new().component();
    let (code, _, err) = cli_code(
        &nats,
        &["add-mapping", &entity, "--secret", "b", "--secret", "a"],
        None,
        &[],
    );
    assert_eq!(code, Some(0), "{err}");
    let (code, out, err) = cli_code(&nats, &["mappings", &entity, "--json"], None, &[]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(json(&out), serde_json::json!(["a", "b"]));
    let unmapped = Issuer::new().component().1;
    let (_, out, _) = cli_code(&nats, &["mappings", &unmapped, "--json"], None, &[]);
    assert_eq!(json(&out), serde_json::json!([]));
    drop(keyed_backend);

    // A sealed store on another prefix of the same server.
    let _sealed = spawn_sealed_run(
        &nats,
        &[
            "--name",
            "vault",
            "-b",
            "VAULT_SECRETS",
            "--piggybank-prefix",
            "pb",
            "-t",
            &TRANSIT_SEED,
        ],
    );
    wait_database_instances(&nats.client().await, "pb", 1).await;
    let env = [("PIGGYBANK_PREFIX", "pb"), pinned()[0]];
    let (code, out, err) = cli_code(&nats, &["init", "-n", "vault", "--json"], None, &env);
    assert_eq!(code, Some(0), "{err}");
    let init = json(&out);
    let key = init["database_key"].as_str().unwrap().to_string();
    assert_eq!(init["sealed"], true);
    let (code, _, err) = cli_code(
        &nats,
        &["unlock", "-n", "vault"],
        None,
        &[env[0], pinned()[0], ("PIGGYBANK_DATABASE_KEY", &key)],
    );
    assert_eq!(code, Some(0), "{err}");
    let (code, out, err) = cli_code(&nats, &["rotate", "-n", "vault", "--json"], None, &env);
    assert_eq!(code, Some(0), "{err}");
    let rotated = json(&out);
    assert_eq!(rotated["key_version"], 2);
    assert!(
        rotated["key_id"]
            .as_str()
            .is_some_and(|id| id.starts_with('X')),
        "{rotated}"
    );
    assert!(rotated["active_from_ms"].as_u64().is_some());
    let (code, out, _) = cli_code(&nats, &["rotate", "-n", "vault"], None, &env);
    assert_eq!(code, Some(0));
    assert!(out.contains("  Key version:  3\n"), "{out}");
    let (code, out, _) = cli_code(&nats, &["lock", "-n", "vault", "--json"], None, &env);
    assert_eq!(code, Some(0));
    assert_eq!(json(&out)["sealed"], true);
}
