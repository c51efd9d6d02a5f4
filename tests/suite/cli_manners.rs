//! The CLI's manners, through the real binary against real backends: `add-mapping` checks
//! an entity key before any request, warns about a secret not stored yet and prints names
//! plainly; every command that prints takes `-o json` and then prints JSON on stdout
//! (one document; `audit`, one per record); the connection flags are taken after the
//! subcommand and refused by a command that makes no connection.

use serde_json::Value;

use crate::common::*;

const BACKEND: &str = "wasmcloud.secrets.v1alpha1.nats-kv";

/// What the README's quickstart tells a newcomer to type, placeholder and all.
const README_PLACEHOLDER: &str = "MCOMPONENTPUBLICKEY...";

async fn keyed_backend() -> (NatsServer, Keys, Proc) {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let backend = spawn_run(&nats, &keys, &[]);
    wait_for_backend(&nats, BACKEND).await;
    (nats, keys, backend)
}

/// `stdout` as the one JSON document a command printed.
fn document(command: &[&str], stdout: &[u8]) -> Value {
    serde_json::from_slice(stdout).unwrap_or_else(|e| {
        panic!(
            "piggybank {command:?} -o json printed no single JSON document ({e}): {}",
            String::from_utf8_lossy(stdout)
        )
    })
}

/// Run `args` with `-o json` appended; it must succeed and print one JSON document.
fn json_of(nats: &NatsServer, args: &[&str], env: &[(&str, &str)]) -> Value {
    let mut argv = args.to_vec();
    argv.extend(["-o", "json"]);
    let (ok, out, err) = cli(nats, &argv, None, env);
    assert!(ok, "piggybank {argv:?}: {err}");
    document(&argv, &out)
}

#[tokio::test]
async fn add_mapping_says_a_placeholder_is_no_entity_key_before_any_request() {
    let (nats, _keys, _backend) = keyed_backend().await;
    let (ok, out, err) = cli(
        &nats,
        &["add-mapping", README_PLACEHOLDER, "--secret", "s"],
        None,
        &[],
    );
    assert!(!ok, "{}", String::from_utf8_lossy(&out));
    assert!(
        err.contains("not a component (M...) or provider (V...) public key"),
        "{err}"
    );
    assert!(!err.contains("no piggybank backend answers"), "{err}");
    // Before any request: the same message with no NATS server at all.
    let nowhere = format!("127.0.0.1:{}", free_port());
    let (ok, _, err) = cli_at(
        &[("NATS_ADDRESS", nowhere.as_str())],
        &["remove-mapping", README_PLACEHOLDER, "--secret", "s"],
        None,
    );
    assert!(
        !ok && err.contains("not a component (M...) or provider (V...) public key"),
        "{err}"
    );
    // The positive control: a component's key is granted.
    let (_, entity) = Issuer::new().component();
    let (ok, _, err) = cli(&nats, &["add-mapping", &entity, "--secret", "s"], None, &[]);
    assert!(ok, "{err}");
}

#[tokio::test]
async fn add_mapping_warns_that_a_secret_is_not_stored_yet_and_grants_it_all_the_same() {
    let (nats, _keys, _backend) = keyed_backend().await;
    let (ok, _, err) = cli(&nats, &["put", "db_password", "--string", "pw"], None, &[]);
    assert!(ok, "{err}");
    // A secret whose name starts with the missing one's does not hide it.
    let (ok, _, err) = cli(
        &nats,
        &["put", "no_such_secret2", "--string", "x"],
        None,
        &[],
    );
    assert!(ok, "{err}");
    let (_, entity) = Issuer::new().component();
    let (ok, _, err) = cli(
        &nats,
        &[
            "add-mapping",
            &entity,
            "--secret",
            "db_password",
            "--secret",
            "no_such_secret",
        ],
        None,
        &[],
    );
    assert!(ok, "{err}");
    assert!(
        err.contains("warning") && err.contains("no_such_secret (yet)"),
        "{err}"
    );
    assert!(!err.contains("db_password"), "db_password exists: {err}");
    let (_, out, _) = cli(&nats, &["mappings", &entity], None, &[]);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "db_password\nno_such_secret\n",
        "granted all the same"
    );
    // The positive control: nothing to warn about, no warning.
    let (ok, _, err) = cli(
        &nats,
        &["add-mapping", &entity, "--secret", "db_password"],
        None,
        &[],
    );
    assert!(ok && err.is_empty(), "{err}");
}

#[tokio::test]
async fn mapping_commands_print_secret_names_plainly() {
    let (nats, _keys, _backend) = keyed_backend().await;
    let (_, entity) = Issuer::new().component();
    for (command, says) in [
        (
            "add-mapping",
            "can now access secrets: api_key, db_password\n",
        ),
        (
            "remove-mapping",
            "no longer has access to secrets: api_key, db_password\n",
        ),
    ] {
        let (ok, out, err) = cli(
            &nats,
            &[
                command,
                &entity,
                "--secret",
                "db_password",
                "--secret",
                "api_key",
            ],
            None,
            &[],
        );
        let out = String::from_utf8(out).unwrap();
        assert!(ok, "{err}");
        assert!(out.ends_with(says), "{out}");
        assert!(!out.contains("{\"") && !out.contains('"'), "{out}");
    }
}

#[tokio::test]
async fn every_client_command_prints_json_with_dash_o_json() {
    let (nats, keys, _backend) = keyed_backend().await;
    let (_, entity) = Issuer::new().component();
    let doc = json_of(&nats, &["put", "db", "--string", "pw"], &[]);
    assert_eq!(
        (doc["name"].as_str(), doc["version"].as_u64()),
        (Some("db"), Some(1))
    );
    let doc = json_of(&nats, &["list"], &[]);
    assert_eq!(doc[0]["name"], "db", "{doc}");
    // get: through the backend, and directly with the data key.
    let doc = json_of(&nats, &["get", "db"], &[]);
    assert_eq!(
        (&doc["name"], &doc["version"], &doc["kind"], &doc["value"]),
        (
            &serde_json::json!("db"),
            &serde_json::json!(1),
            &serde_json::json!("string"),
            &serde_json::json!("pw")
        ),
        "{doc}"
    );
    let direct = [("ENCRYPTION_XKEY_SEED", keys.encryption.as_str())];
    assert_eq!(json_of(&nats, &["get", "db"], &direct), doc);
    let doc = json_of(&nats, &["add-mapping", &entity, "--secret", "db"], &[]);
    assert_eq!(doc["public_key"], entity.as_str());
    assert_eq!(doc["secrets"], serde_json::json!(["db"]));
    assert_eq!(doc["missing"], serde_json::json!([]));
    let doc = json_of(&nats, &["mappings", &entity], &[]);
    assert_eq!(doc, serde_json::json!(["db"]));
    let doc = json_of(
        &nats,
        &["add-mapping", "--application", "shop", "--secret", "db"],
        &[],
    );
    assert_eq!(doc["application"], "shop");
    let doc = json_of(&nats, &["remove-mapping", &entity, "--secret", "db"], &[]);
    assert_eq!(doc["secrets"], serde_json::json!(["db"]));
    let doc = json_of(&nats, &["status"], &[]);
    assert_eq!(doc["sealed"], false, "{doc}");
    let enc = [("ENCRYPTION_XKEY_SEED", keys.encryption.as_str())];
    let doc = json_of(&nats, &["rekey"], &enc);
    assert_eq!(doc["total"], 1, "{doc}");

    let dir = tempfile::tempdir().unwrap();
    let admin_seed = piggybank::admin_auth::AdminSigner::generate_seed();
    let signer = [("PIGGYBANK_ADMIN_SEED", admin_seed.as_str())];
    let file = dir.path().join("store.backup");
    let file = file.to_str().unwrap();
    let doc = json_of(&nats, &["backup", "--out", file], &signer);
    assert_eq!(doc["secrets"], 1, "{doc}");
    let doc = json_of(
        &nats,
        &[
            "restore",
            file,
            "-n",
            "copy",
            "-b",
            "COPY_SECRETS",
            "--unauthenticated",
        ],
        &[],
    );
    assert_eq!(doc["secrets"], 1, "{doc}");

    // The audit trail: one JSON object per record.
    let (ok, out, err) = cli(&nats, &["audit", "-o", "json"], None, &[]);
    assert!(ok, "{err}");
    let out = String::from_utf8(out).unwrap();
    assert!(out.lines().count() >= 1, "{out}");
    for line in out.lines() {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }

    let doc = json_of(&nats, &["delete", "db"], &[]);
    assert_eq!(
        (doc["name"].as_str(), doc["deleted"].as_bool()),
        (Some("db"), Some(true))
    );

    // The commands that connect to nothing.
    let layout = dir.path().join("layout");
    let doc = json_of(
        &nats,
        &["nats-config", "--dir", layout.to_str().unwrap()],
        &[],
    );
    assert!(
        doc["users"].as_array().is_some_and(|u| u.len() >= 3),
        "{doc}"
    );
    let doc = json_of(&nats, &["keygen", "transit"], &[]);
    assert!(doc["public_key"]
        .as_str()
        .is_some_and(|k| k.starts_with('X')));
    assert!(doc["seed"].as_str().is_some_and(|k| k.starts_with("SX")));
}

#[tokio::test]
async fn the_database_commands_print_json_with_dash_o_json() {
    let nats = NatsServer::start();
    let transit = nkeys::XKey::new().seed().unwrap();
    let _backend = spawn_sealed_run(&nats, &["-t", &transit]);
    wait_database_instances(&nats.client().await, "piggybank", 1).await;
    let pinned = [("TRANSIT_XKEY_SEED", transit.as_str())];
    let (code, out, err) = cli_code(&nats, &["status", "-o", "json"], None, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(document(&["status"], out.as_bytes())["sealed"], true);
    let doc = json_of(&nats, &["init"], &pinned);
    let key = doc["database_key"].as_str().expect("the key").to_string();
    let unlock = [pinned[0], ("PIGGYBANK_DATABASE_KEY", key.as_str())];
    let doc = json_of(&nats, &["unlock"], &unlock);
    assert_eq!(doc["sealed"], false, "{doc}");
    let doc = json_of(&nats, &["rotate"], &[]);
    assert_eq!(doc["key_version"], 2, "{doc}");
    let doc = json_of(&nats, &["lock"], &[]);
    assert_eq!(doc["sealed"], true, "{doc}");
}

#[test]
fn connection_flags_after_the_subcommand_and_their_env_vars_reach_the_server() {
    // No server listens there: the error names the address, given either way.
    let nowhere = format!("127.0.0.1:{}", free_port());
    for (args, env) in [
        (vec!["list", "--nats-address", nowhere.as_str()], vec![]),
        (vec!["--nats-address", nowhere.as_str(), "list"], vec![]),
        (vec!["list"], vec![("NATS_ADDRESS", nowhere.as_str())]),
    ] {
        let (ok, _, err) = cli_at(&env, &args, None);
        let refused = format!("failed to connect to NATS at {nowhere}");
        assert!(!ok && err.contains(&refused), "{args:?}: {err}");
    }
    // A command that makes no connection refuses them when typed (their env vars are no
    // mistake: the positive control is the env-driven `keygen` of the other tests).
    let (ok, _, err) = cli_at(&[], &["dev", "--nats-address", nowhere.as_str()], None);
    assert!(!ok && err.contains("--nats-port"), "{err}");
    let (ok, _, err) = cli_at(
        &[("NATS_ADDRESS", nowhere.as_str())],
        &["keygen", "data"],
        None,
    );
    assert!(ok, "{err}");
}

#[tokio::test]
async fn grouped_spellings_run_the_same_commands_as_the_flat_names() {
    let (nats, keys, _backend) = keyed_backend().await;
    let (_, entity) = Issuer::new().component();
    let doc = json_of(&nats, &["secret", "put", "db", "--string", "pw"], &[]);
    assert_eq!(doc["version"], 1);
    let (ok, out, err) = cli(
        &nats,
        &["secret", "get", "db"],
        None,
        &[("ENCRYPTION_XKEY_SEED", keys.encryption.as_str())],
    );
    assert!(ok, "{err}");
    assert_eq!(out, b"pw\n");
    let doc = json_of(&nats, &["secret", "list"], &[]);
    assert_eq!(doc[0]["name"], "db");
    json_of(&nats, &["mapping", "add", &entity, "--secret", "db"], &[]);
    // The flat name sees what the group did, and the other way round.
    assert_eq!(
        json_of(&nats, &["mappings", &entity], &[]),
        serde_json::json!(["db"])
    );
    json_of(&nats, &["remove-mapping", &entity, "--secret", "db"], &[]);
    assert_eq!(
        json_of(&nats, &["mapping", "list", &entity], &[]),
        serde_json::json!([])
    );
    for group in ["operator", "database"] {
        let doc = json_of(&nats, &[group, "status"], &[]);
        assert_eq!(doc["sealed"], false, "{group}: {doc}");
    }
    let doc = json_of(&nats, &["secret", "delete", "db"], &[]);
    assert_eq!(doc["deleted"], true);
}

#[test]
fn completions_cover_every_command_and_the_global_flags_in_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let (ok, out, err) = cli_at(&[], &["completions", shell], None);
        assert!(ok, "{shell}: {err}");
        let script = String::from_utf8(out).unwrap();
        for word in [
            "add-mapping",
            "nats-config",
            "secret",
            "nats-address",
            "output",
        ] {
            assert!(script.contains(word), "{shell} lacks {word}");
        }
    }
    // bash takes the script as it is printed.
    let loaded = std::process::Command::new("bash")
        .args([
            "-c",
            &format!(
                "source <('{}' completions bash) && complete -p piggybank",
                piggybank_bin().display()
            ),
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&loaded.stdout);
    assert!(
        loaded.status.success() && said.contains("_piggybank"),
        "{said}"
    );
}

#[test]
fn a_connection_flag_typed_after_the_command_pairs_with_its_partner_from_the_env() {
    let nowhere = format!("127.0.0.1:{}", free_port());
    let refused = format!("failed to connect to NATS at {nowhere}");
    for (args, env) in [
        (
            ["run", "--nats-user", "piggybank"],
            [("NATS_PASSWORD", "pw"), ("NATS_ADDRESS", nowhere.as_str())],
        ),
        (
            ["list", "--nats-password", "pw"],
            [("NATS_USER", "u"), ("NATS_ADDRESS", nowhere.as_str())],
        ),
    ] {
        let mut env = env.to_vec();
        env.push(("ENCRYPTION_XKEY_SEED", "")); // run: the keys do not matter here
        let (ok, _, err) = cli_at(&env, &args, None);
        assert!(!ok && err.contains(&refused), "{args:?}: {err}");
    }
    // The positive control of the pairing: a user without a password is refused, clearly.
    let (ok, _, err) = cli_at(
        &[("NATS_ADDRESS", nowhere.as_str())],
        &["list", "--nats-user", "u"],
        None,
    );
    assert!(!ok && err.contains("go together"), "{err}");
}
