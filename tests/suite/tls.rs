//! NATS connection options: TLS with verified client certificates, TLS handshake first, a
//! JetStream domain, and a nats CLI context, each against a real `nats-server` configured
//! for it. The certificates are made here (rcgen): a CA, a server certificate for 127.0.0.1
//! and a client certificate.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::pki::Pki;
use crate::common::*;

const SECRET: &str = "correct-horse-battery-staple";
const PREFIX: &str = "wasmcloud.secrets.v1alpha1.nats-kv";

/// Environment the tests must not inherit: NATS settings, seeds and a context directory
/// from the developer's shell would change what is tested.
const CLEARED_ENV: &[&str] = &[
    "NATS_ADDRESS",
    "NATS_CREDSFILE",
    "NATS_CA",
    "NATS_CERT",
    "NATS_KEY",
    "NATS_TLS_FIRST",
    "NATS_JS_DOMAIN",
    "NATS_CONTEXT",
    "XDG_CONFIG_HOME",
    "ENCRYPTION_XKEY_SEED",
    "TRANSIT_XKEY_SEED",
    "PIGGYBANK_ADMIN_SEED",
    "PIGGYBANK_ADMIN_SEED_FILE",
];

fn piggybank_command(args: &[String], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(piggybank_bin());
    command.args(args);
    for name in CLEARED_ENV {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    command
}

/// `piggybank run` with exactly these args and env (nothing NATS-related inherited).
fn spawn_run(args: &[String], env: &[(&str, &str)]) -> Proc {
    let mut all = vec!["run".to_string()];
    all.extend_from_slice(args);
    let child = piggybank_command(&all, env)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn piggybank run");
    Proc { child }
}

/// A client command with exactly these args and env; (success, stdout, stderr).
fn piggybank(args: &[String], env: &[(&str, &str)], stdin: &[u8]) -> (bool, String, String) {
    use std::io::Write;
    let mut child = piggybank_command(args, env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn piggybank");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn keys_env(keys: &Keys) -> [(&'static str, &str); 2] {
    [
        ("ENCRYPTION_XKEY_SEED", keys.encryption.as_str()),
        ("TRANSIT_XKEY_SEED", keys.transit.as_str()),
    ]
}

/// Wait until the backend answers `server_xkey` on `client`.
async fn wait_answering(client: &async_nats::Client, backend: &mut Proc) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = backend.child.try_wait() {
            panic!("piggybank run exited: {status}");
        }
        let asked = client.request(format!("{PREFIX}.server_xkey"), "".into());
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), asked).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("backend did not come up on {PREFIX}");
}

/// Put `name` with the CLI (`flags`, `env`), map it to a fresh component, and get it as a
/// host does on `client`: the whole path works on this connection.
async fn put_map_and_host_get(
    client: &async_nats::Client,
    flags: &[String],
    env: &[(&str, &str)],
    name: &str,
) {
    let mut put = args(&["put", name]);
    put.extend_from_slice(flags);
    let (ok, _, err) = piggybank(&put, env, SECRET.as_bytes());
    assert!(ok, "put: {err}");

    let (jwt, entity) = Issuer::new().component();
    let mut map = args(&["add-mapping", &entity, "--secret", name]);
    map.extend_from_slice(flags);
    let (ok, _, err) = piggybank(&map, env, b"");
    assert!(ok, "add-mapping: {err}");

    let host =
        wasmcloud_secrets_client::Client::new("nats-kv", "wasmcloud.secrets", client.clone())
            .await
            .expect("secrets client");
    let secret = host_get(&host, request(name, &jwt))
        .await
        .expect("host get");
    assert_eq!(secret.string_secret.as_deref(), Some(SECRET));
}

fn list(flags: &[String], env: &[(&str, &str)]) -> String {
    let mut list = args(&["list"]);
    list.extend_from_slice(flags);
    let (ok, out, err) = piggybank(&list, env, b"");
    assert!(ok, "list: {err}");
    out
}

#[tokio::test]
async fn run_and_client_commands_connect_with_a_verified_client_certificate() {
    let pki = Pki::new();
    let nats = NatsServer::start_with_config(&pki.server_config("", ""));
    let keys = Keys::generate();
    let mut flags = args(&["--nats-address", &nats.url()]);
    flags.extend(pki.flags());

    // The commands docs/deployment.md shows: `piggybank run --tls-ca ... --tls-cert ... --tls-key ...`.
    let mut backend = spawn_run(&flags, &keys_env(&keys));
    let client = pki.client(&nats, false).await;
    wait_answering(&client, &mut backend).await;

    put_map_and_host_get(&client, &flags, &[], "db_password").await;
    let listed = list(&flags, &[]);
    assert!(listed.contains("db_password"), "{listed}");
    assert!(!listed.contains(SECRET), "list never shows a value");

    // The same settings from the nats CLI's env vars.
    let env = [
        ("NATS_ADDRESS", nats.url()),
        ("NATS_CA", pki.file("ca.pem")),
        ("NATS_CERT", pki.file("client.pem")),
        ("NATS_KEY", pki.file("client-key.pem")),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert!(list(&[], &env).contains("db_password"));
}

#[tokio::test]
async fn without_its_client_certificate_the_connection_fails_with_a_clear_error() {
    let pki = Pki::new();
    let nats = NatsServer::start_with_config(&pki.server_config("", ""));
    let address = args(&["--nats-address", &nats.url()]);

    // The server verifies clients: the CA alone is not enough.
    let mut only_ca = args(&["list", "--tls-ca", &pki.file("ca.pem")]);
    only_ca.extend_from_slice(&address);
    let (ok, _, err) = piggybank(&only_ca, &[], b"");
    assert!(!ok);
    assert!(
        err.contains(&format!("failed to connect to NATS at {}", nats.url()))
            && err.contains("give a client certificate and its key"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");

    // Nor is a plain connection: the server requires TLS.
    let mut plain = args(&["list"]);
    plain.extend_from_slice(&address);
    let (ok, _, err) = piggybank(&plain, &[], b"");
    assert!(!ok && err.contains("give its CA file"), "{err}");

    // `run` without the certificate stops at start, with the same error.
    let mut run = args(&["run", "--tls-ca", &pki.file("ca.pem")]);
    run.extend_from_slice(&address);
    let keys = Keys::generate();
    let (ok, _, err) = piggybank(&run, &keys_env(&keys), b"");
    assert!(!ok && err.contains("give a client certificate"), "{err}");

    // A certificate without its key, and an unreadable CA file, fail before connecting.
    let mut no_key = args(&["list", "--tls-cert", &pki.file("client.pem")]);
    no_key.extend_from_slice(&address);
    let (ok, _, err) = piggybank(&no_key, &[], b"");
    assert!(!ok && err.contains("--tls-key"), "{err}");
    let missing = pki.file("no-such-ca.pem");
    let mut bad_ca = args(&["list", "--tls-ca", &missing]);
    bad_ca.extend_from_slice(&address);
    let (ok, _, err) = piggybank(&bad_ca, &[], b"");
    assert!(
        !ok && err.contains(&format!("cannot read TLS CA file {missing}")),
        "{err}"
    );
    // The key's contents never reach a message.
    let key = std::fs::read_to_string(pki.path("client-key.pem")).unwrap();
    let body = key.lines().nth(1).unwrap();
    let mut swapped = args(&[
        "list",
        "--tls-ca",
        &pki.file("client-key.pem"),
        "--tls-cert",
        &pki.file("client-key.pem"),
        "--tls-key",
        &pki.file("client.pem"),
    ]);
    swapped.extend_from_slice(&address);
    let (ok, _, err) = piggybank(&swapped, &[], b"");
    assert!(!ok && !err.contains(body), "{err}");
}

#[tokio::test]
async fn tls_first_reaches_a_server_that_requires_the_handshake_first() {
    let pki = Pki::new();
    let nats = NatsServer::start_tls_first(&pki.server_config("handshake_first: true", ""));
    let keys = Keys::generate();
    let mut flags = args(&["--nats-address", &nats.url(), "--tls-first"]);
    flags.extend(pki.flags());

    let mut backend = spawn_run(&flags, &keys_env(&keys));
    let client = pki.client(&nats, true).await;
    wait_answering(&client, &mut backend).await;
    put_map_and_host_get(&client, &flags, &[], "api_token").await;

    // NATS_TLS_FIRST=true as the flag; without either, the client waits for a greeting
    // that never comes, and says so.
    let mut without = args(&["--nats-address", &nats.url()]);
    without.extend(pki.flags());
    assert!(list(&without, &[("NATS_TLS_FIRST", "true")]).contains("api_token"));
    let mut plain_list = args(&["list"]);
    plain_list.extend(without);
    let (ok, _, err) = piggybank(&plain_list, &[], b"");
    assert!(!ok && err.contains("needs TLS first"), "{err}");
}

#[tokio::test]
async fn a_jetstream_domain_is_used_for_every_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nats.conf");
    std::fs::write(&config, "jetstream { domain: hub }\n").unwrap();
    let nats = NatsServer::start_with_config(&config);
    let keys = Keys::generate();
    let domain = args(&["--nats-address", &nats.url(), "--js-domain", "hub"]);

    // The command docs/deployment.md shows: `piggybank run --js-domain hub`.
    let mut backend = spawn_run(&domain, &keys_env(&keys));
    let client = nats.client().await;
    wait_answering(&client, &mut backend).await;
    put_map_and_host_get(&client, &domain, &[], "db_password").await;

    // The buckets are in domain hub, and `get` reads them there.
    let hub = async_nats::jetstream::with_domain(client.clone(), "hub");
    for bucket in ["WASMCLOUD_SECRETS", "SECRETS_nats-kv_state"] {
        hub.get_key_value(bucket)
            .await
            .unwrap_or_else(|e| panic!("{bucket} in domain hub: {e}"));
    }
    let mut get = args(&["get", "db_password"]);
    get.extend_from_slice(&domain);
    let (ok, out, err) = piggybank(
        &get,
        &[("ENCRYPTION_XKEY_SEED", keys.encryption.as_str())],
        b"",
    );
    assert!(ok, "{err}");
    assert_eq!(out, format!("{SECRET}\n"));

    // Sealed mode's key record and signed administration's nonces: in the domain too.
    let admin = nkeys::KeyPair::new_user().public_key();
    // Its own secrets bucket: the default one is the keyed store's (one store, one key).
    let mut sealed = args(&[
        "-n",
        "sealed",
        "-b",
        "SEALED_SECRETS",
        "--admin-keys",
        &admin,
    ]);
    sealed.extend_from_slice(&domain);
    let _sealed = spawn_run(&sealed, &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    for bucket in ["SECRETS_sealed_vault", "SECRETS_sealed_nonces"] {
        while hub.get_key_value(bucket).await.is_err() {
            assert!(Instant::now() < deadline, "{bucket} not in domain hub");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // A domain nobody serves: every JetStream request goes to `$JS.elsewhere.API`, where
    // nothing answers, so neither `run` nor `get` finds a bucket.
    let elsewhere = args(&["--nats-address", &nats.url(), "--js-domain", "elsewhere"]);
    let mut run = args(&["run"]);
    run.extend_from_slice(&elsewhere);
    let (ok, _, err) = piggybank(&run, &keys_env(&keys), b"");
    assert!(!ok && err.contains("failed to open buckets"), "{err}");
    let mut get = args(&["get", "db_password"]);
    get.extend_from_slice(&elsewhere);
    let (ok, _, err) = piggybank(
        &get,
        &[("ENCRYPTION_XKEY_SEED", keys.encryption.as_str())],
        b"",
    );
    assert!(!ok, "{err}");
}

/// A nats CLI context, as `nats context save` writes it, in `config_home/nats/context`.
fn write_context(config_home: &Path, name: &str, json: &str) {
    let dir = config_home.join("nats").join("context");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.json")), json).unwrap();
}

/// The context file the docs show (the one ```json block of `docs/deployment.md`'s "TLS,
/// JetStream domains and NATS contexts").
fn readme_context() -> serde_json::Map<String, serde_json::Value> {
    let page = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/deployment.md");
    let page = std::fs::read_to_string(page).expect("docs/deployment.md");
    let section = page
        .split("## TLS, JetStream domains and NATS contexts")
        .nth(1)
        .expect("docs/deployment.md has the section");
    let block = section
        .split("```json\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the section shows a context file");
    serde_json::from_str(block).expect("the docs' context file is JSON")
}

#[tokio::test]
async fn a_nats_context_gives_commands_their_whole_connection() {
    let pki = Pki::new();
    let nats = NatsServer::start_with_config(&pki.server_config("", "jetstream { domain: hub }"));
    let keys = Keys::generate();
    // The docs' context, verbatim but for the server's address: its `~/.config/nats/...`
    // files are in a temporary HOME, and the context in HOME's default context directory.
    let home = tempfile::tempdir().unwrap();
    let config_home = home.path().join(".config");
    std::fs::create_dir_all(config_home.join("nats")).unwrap();
    for file in ["ca.pem", "client.pem", "client-key.pem"] {
        std::fs::copy(pki.path(file), config_home.join("nats").join(file)).unwrap();
    }
    let mut context = readme_context();
    context.insert("url".into(), format!("nats://{}", nats.url()).into());
    write_context(
        &config_home,
        "pb",
        &serde_json::Value::from(context).to_string(),
    );
    let home = home.path().display().to_string();
    let home = ("HOME", home.as_str());
    let [encryption, transit] = keys_env(&keys);

    // `run --context pb`: its address, TLS and domain all come from the context.
    let mut backend = spawn_run(&args(&["--context", "pb"]), &[home, encryption, transit]);
    let client = pki.client(&nats, false).await;
    wait_answering(&client, &mut backend).await;
    put_map_and_host_get(&client, &args(&["--context", "pb"]), &[home], "db_password").await;
    // Only the env var: the docs' `NATS_CONTEXT=pb piggybank list`.
    let listed = list(&[], &[home, ("NATS_CONTEXT", "pb")]);
    assert!(listed.contains("db_password"), "{listed}");
    // `get` reads the bucket itself: in the context's domain.
    let get = args(&["get", "db_password", "--context", "pb"]);
    let (ok, out, err) = piggybank(&get, &[home, encryption], b"");
    assert!(ok, "{err}");
    assert_eq!(out, format!("{SECRET}\n"));

    // Explicit flags win over the context: another address fails to connect.
    let dead = format!("127.0.0.1:{}", free_port());
    let (ok, _, err) = piggybank(
        &args(&["list", "--context", "pb", "--nats-address", &dead]),
        &[home],
        b"",
    );
    assert!(!ok && err.contains(&dead), "{err}");

    // XDG_CONFIG_HOME, when set, is where contexts are. An unknown context is a one-line
    // error naming the file it looked for.
    let xdg_dir = tempfile::tempdir().unwrap();
    let xdg = xdg_dir.path().display().to_string();
    let xdg = ("XDG_CONFIG_HOME", xdg.as_str());
    let (ok, _, err) = piggybank(&args(&["list", "--context", "pb"]), &[home, xdg], b"");
    assert!(!ok, "{err}");
    let looked_for = xdg_dir.path().join("nats/context/pb.json");
    assert!(
        err.contains("unknown NATS context \"pb\"")
            && err.contains(&looked_for.display().to_string()),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    // A password in a context never reaches a message, even in a file that does not parse.
    write_context(
        xdg_dir.path(),
        "broken",
        r#"{"user": "app", "password": "hunter2", "tls_first": "hunter2"}"#,
    );
    let (ok, _, err) = piggybank(&args(&["list", "--context", "broken"]), &[xdg], b"");
    assert!(
        !ok && err.contains("broken.json") && !err.contains("hunter2"),
        "{err}"
    );
}
