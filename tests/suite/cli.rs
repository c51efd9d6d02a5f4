//! The `piggybank` binary: client commands against `piggybank run`, and `piggybank dev`.

use std::time::Duration;

use crate::common::*;

const SECRET: &str = "correct-horse-battery-staple";

fn setup() -> (NatsServer, Keys, Proc) {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let backend = spawn_run(&nats, &keys, &[]);
    (nats, keys, backend)
}

async fn ready(nats: &NatsServer) {
    wait_for_backend(nats, "wasmcloud.secrets.v1alpha1.nats-kv").await;
}

#[tokio::test]
async fn put_get_list_delete_round_trip_without_echoing_values() {
    let (nats, keys, _backend) = setup();
    ready(&nats).await;
    let enc = [("ENCRYPTION_XKEY_SEED", keys.encryption.as_str())];

    // From --string, from stdin, from a file, and bytes from stdin.
    let (ok, out, err) = cli(&nats, &["put", "a", "--string", SECRET], None, &[]);
    assert!(ok, "{err}");
    let (ok, out2, err) = cli(
        &nats,
        &["put", "b"],
        Some(format!("{SECRET}\n").as_bytes()),
        &[],
    );
    assert!(ok, "{err}");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), [1u8, 2, 3, 255]).unwrap();
    let (ok, _, err) = cli(
        &nats,
        &["put", "c", "--binary", file.path().to_str().unwrap()],
        None,
        &[],
    );
    assert!(ok, "{err}");
    let (ok, _, err) = cli(
        &nats,
        &["put", "d", "--binary", "-"],
        Some(b"raw\x00bytes"),
        &[],
    );
    assert!(ok, "{err}");
    for o in [&out, &out2] {
        let o = String::from_utf8_lossy(o);
        assert!(o.contains("put successfully") && !o.contains(SECRET), "{o}");
    }

    let (ok, out, _) = cli(&nats, &["get", "a"], None, &enc);
    assert!(ok);
    assert_eq!(String::from_utf8(out).unwrap(), format!("{SECRET}\n"));
    let (_, out, _) = cli(&nats, &["get", "b"], None, &enc);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!("{SECRET}\n"),
        "one trailing newline is stripped from stdin"
    );
    let (_, out, _) = cli(&nats, &["get", "c"], None, &enc);
    assert_eq!(out, [1u8, 2, 3, 255]);
    let (_, out, _) = cli(&nats, &["get", "d", "--kind", "binary"], None, &enc);
    assert_eq!(out, b"raw\x00bytes");
    let (ok, _, err) = cli(&nats, &["get", "d", "--kind", "string"], None, &enc);
    assert!(!ok && err.contains("binary"), "{err}");

    let (ok, out, _) = cli(&nats, &["list"], None, &[]);
    let listing = String::from_utf8(out).unwrap();
    assert!(
        ok && listing.contains("binary") && listing.contains("string"),
        "{listing}"
    );
    assert!(!listing.contains(SECRET));
    let (_, out, _) = cli(&nats, &["list", "--json", "--prefix", "c"], None, &[]);
    let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 1);

    let (ok, _, err) = cli(&nats, &["delete", "a"], None, &[]);
    assert!(ok, "{err}");
    let (ok, _, err) = cli(&nats, &["get", "a"], None, &enc);
    assert!(!ok && err.contains("not found"), "{err}");
    let (ok, _, err) = cli(&nats, &["delete", "a"], None, &[]);
    assert!(!ok && err.contains("404"), "{err}");
}

#[tokio::test]
async fn mapping_commands_grant_show_and_revoke() {
    let (nats, _keys, _backend) = setup();
    ready(&nats).await;
    let (_, entity) = Issuer::new().component();
    let (ok, _, err) = cli(&nats, &["put", "x", "--string", "1"], None, &[]);
    assert!(ok, "{err}");
    let (ok, _, err) = cli(
        &nats,
        &["add-mapping", &entity, "--secret", "x", "--secret", "y"],
        None,
        &[],
    );
    assert!(ok, "{err}");
    let (_, out, _) = cli(&nats, &["mappings", &entity], None, &[]);
    assert_eq!(String::from_utf8(out).unwrap(), "x\ny\n");
    let (ok, _, _) = cli(
        &nats,
        &["remove-mapping", &entity, "--secret", "x"],
        None,
        &[],
    );
    assert!(ok);
    let (_, out, _) = cli(&nats, &["mappings", &entity], None, &[]);
    assert_eq!(String::from_utf8(out).unwrap(), "y\n");
}

#[tokio::test]
async fn failures_print_a_clear_message_and_exit_non_zero() {
    let (nats, _keys, _backend) = setup();
    ready(&nats).await;
    let (ok, _, err) = cli(&nats, &["put", "bad name", "--string", SECRET], None, &[]);
    assert!(!ok && err.contains("Invalid secret name"), "{err}");
    assert!(!err.contains(SECRET), "errors never echo values: {err}");
    let (ok, _, err) = cli(
        &nats,
        &["add-mapping", "not-a-key", "--secret", "x"],
        None,
        &[],
    );
    assert!(!ok && err.contains("invalid entity"), "{err}");
    let (ok, _, err) = cli(&nats, &["put", "empty"], Some(b""), &[]);
    assert!(!ok && err.contains("no secret value"), "{err}");
    let (ok, _, err) = cli(
        &nats,
        &[
            "list",
            "--nats-address",
            &format!("127.0.0.1:{}", free_port()),
        ],
        None,
        &[],
    );
    assert!(!ok && err.contains("failed to connect to NATS"), "{err}");
}

#[tokio::test]
async fn run_refuses_bad_keys_with_one_clear_line() {
    let nats = NatsServer::start();
    let (ok, _, err) = cli(
        &nats,
        &["run"],
        None,
        &[
            ("ENCRYPTION_XKEY_SEED", "SXnope"),
            ("TRANSIT_XKEY_SEED", "SXnope"),
        ],
    );
    assert!(!ok && err.contains("not a valid xkey"), "{err}");
    assert!(!err.contains("SXnope"), "seeds never reach output: {err}");
    let keys = Keys::generate();
    let (ok, _, err) = cli(
        &nats,
        &["run", "--trusted-issuers", "MBADKEY"],
        None,
        &[
            ("ENCRYPTION_XKEY_SEED", keys.encryption.as_str()),
            ("TRANSIT_XKEY_SEED", keys.transit.as_str()),
        ],
    );
    assert!(!ok && err.contains("invalid trusted issuer"), "{err}");
    // A limit is refused, never clamped: `run` validates as the provider does. (Clamped, it
    // would serve: the process is killed after 20 s and the test fails.)
    for value in ["0", "70000"] {
        let mut run = Proc {
            child: std::process::Command::new(piggybank_bin())
                .args(["run", "--max-in-flight", value])
                .env("NATS_ADDRESS", nats.url())
                .env("ENCRYPTION_XKEY_SEED", keys.encryption.as_str())
                .env("TRANSIT_XKEY_SEED", keys.transit.as_str())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        };
        let status = run.wait_exit(Duration::from_secs(20));
        let mut err = String::new();
        if let Some(stderr) = run.child.stderr.as_mut() {
            std::io::Read::read_to_string(stderr, &mut err).unwrap();
        }
        assert!(status.is_some_and(|s| !s.success()), "{value}: {status:?}");
        assert!(
            err.contains("--max-in-flight (max_in_flight) must be 1 to 65536"),
            "{value}: {err}"
        );
    }
}

#[tokio::test]
async fn dev_runs_nats_and_the_backend_and_reuses_keys_and_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("pb");
    let port = free_port();
    let spawn_dev = || Proc {
        child: std::process::Command::new(piggybank_bin())
            .args([
                "dev",
                "--dir",
                data.to_str().unwrap(),
                "--nats-port",
                &port.to_string(),
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    };
    let fake_nats = NatsServerAddr(port, data.clone());

    let mut dev = spawn_dev();
    fake_nats.wait().await;
    let keys_file = data.join("keys.env");
    assert_private_file(&keys_file);
    let keys_text = std::fs::read_to_string(&keys_file).unwrap();
    // dev signs admin requests with the key it made; keys.env names its file.
    let admin_seed = data.join("admin.seed");
    let (ok, _, err) = fake_nats.cli_env(
        &["put", "kept", "--string", SECRET],
        &[("PIGGYBANK_ADMIN_SEED_FILE", admin_seed.to_str().unwrap())],
    );
    assert!(ok, "{err}");

    dev.signal(libc::SIGINT);
    let status = dev
        .wait_exit(Duration::from_secs(15))
        .expect("dev stops on Ctrl-C");
    assert!(status.success(), "{status:?}");
    let mut stdout = String::new();
    std::io::Read::read_to_string(dev.child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    assert!(stdout.contains("Try it"), "{stdout}");
    // Seeds are never printed: look for the real ones (a pattern such as
    // "SX" also matches random temp paths).
    let admin_seed_text = std::fs::read_to_string(&admin_seed).unwrap();
    // The roles' nkey seeds of dev's NATS layout, too.
    let role_seeds: String = ["backend", "host", "admin"]
        .iter()
        .map(|r| std::fs::read_to_string(data.join(format!("nats/{r}.nk"))).unwrap())
        .collect();
    let seeds: Vec<&str> = keys_text
        .lines()
        .filter_map(|l| l.split_once('=').map(|(_, v)| v.trim()))
        .chain(admin_seed_text.lines().map(str::trim))
        .chain(role_seeds.lines().map(str::trim))
        .filter(|v| v.starts_with('S') && v.len() == 58)
        .collect();
    assert!(
        seeds.len() >= 6,
        "keys.env and admin.seed hold seeds: {seeds:?}"
    );
    for seed in seeds {
        assert!(!stdout.contains(seed), "a seed was printed: {stdout}");
    }
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nats-server stopped too"
    );

    // A second run reuses the keys and the data.
    let mut dev = spawn_dev();
    fake_nats.wait().await;
    assert_eq!(std::fs::read_to_string(&keys_file).unwrap(), keys_text);
    let enc = keys_text
        .lines()
        .find_map(|l| l.strip_prefix("ENCRYPTION_XKEY_SEED="))
        .unwrap()
        .to_string();
    let (ok, out, err) = fake_nats.cli_env(&["get", "kept"], &[("ENCRYPTION_XKEY_SEED", &enc)]);
    assert!(ok, "{err}");
    assert_eq!(String::from_utf8(out).unwrap(), format!("{SECRET}\n"));
    dev.signal(libc::SIGTERM);
    assert!(dev
        .wait_exit(Duration::from_secs(15))
        .expect("dev stops on SIGTERM")
        .success());
}

/// A NATS address whose server this test did not start (`dev` starts it, with its NATS
/// layout in `<dir>/nats`: the test waits as the host role, and the CLI runs as the admin
/// role, as `keys.env` sets it).
struct NatsServerAddr(u16, std::path::PathBuf);

impl NatsServerAddr {
    async fn wait(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            let seed = std::fs::read_to_string(self.1.join("nats/host.nk")).unwrap_or_default();
            let seed = seed
                .lines()
                .find(|l| l.starts_with("SU"))
                .unwrap_or_default();
            let host = async_nats::ConnectOptions::with_nkey(seed.to_string());
            if let Ok(client) = host.connect(format!("127.0.0.1:{}", self.0)).await {
                let asked =
                    client.request("wasmcloud.secrets.v1alpha1.nats-kv.server_xkey", "".into());
                if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), asked).await {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("dev backend did not come up");
    }

    fn cli_env(&self, args: &[&str], env: &[(&str, &str)]) -> (bool, Vec<u8>, String) {
        let out = std::process::Command::new(piggybank_bin())
            .args(args)
            .env("NATS_ADDRESS", format!("127.0.0.1:{}", self.0))
            .env("NATS_NKEY", self.1.join("nats/admin.nk"))
            .env("NATS_INBOX_PREFIX", "_PIGGYBANK_ADMIN_INBOX.nats-kv")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.success(),
            out.stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// The streams of the test server, by name.
async fn stream_names(nats: &NatsServer) -> Vec<String> {
    use futures::TryStreamExt as _;
    let js = async_nats::jetstream::new(nats.client().await);
    let mut names: Vec<String> = js.stream_names().try_collect().await.unwrap();
    names.sort();
    names
}

#[tokio::test]
async fn client_commands_never_create_infrastructure_and_name_what_is_missing() {
    let (nats, keys, _backend) = setup();
    ready(&nats).await;
    let enc = [("ENCRYPTION_XKEY_SEED", keys.encryption.as_str())];
    let (ok, _, err) = cli(&nats, &["put", "x", "--string", "1"], None, &[]);
    assert!(ok, "{err}");
    let before = stream_names(&nats).await;

    // Commands that open a bucket themselves.
    for args in [
        &["rekey", "-b", "TYPO"][..],
        &["get", "x", "-b", "TYPO"][..],
    ] {
        let (ok, _, err) = cli(&nats, args, None, &enc);
        assert!(!ok, "{args:?} succeeded");
        assert!(
            err.contains("\"TYPO\"") && err.contains("does not exist"),
            "{args:?}: {err}"
        );
    }
    // Commands that ask a backend: a name nobody serves fails at once and names the subject.
    // (A key that is no entity's is refused before any request: cli_manners.)
    let (_, entity) = Issuer::new().component();
    for args in [
        &["put", "x", "-n", "typo", "--string", "1"][..],
        &["list", "-n", "typo"][..],
        &["delete", "x", "-n", "typo"][..],
        &["mappings", &entity, "-n", "typo"][..],
    ] {
        let started = std::time::Instant::now();
        let (ok, _, err) = cli(&nats, args, None, &[]);
        assert!(!ok, "{args:?} succeeded");
        assert!(
            err.contains("no piggybank backend answers on wasmcloud.secrets.v1alpha1.typo."),
            "{args:?}: {err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{args:?} waited for a timeout"
        );
    }
    assert_eq!(stream_names(&nats).await, before, "no bucket was created");
}

#[tokio::test]
async fn get_to_a_file_leaves_it_mode_0600_whatever_was_there() {
    use std::os::unix::fs::PermissionsExt;
    let (nats, keys, _backend) = setup();
    ready(&nats).await;
    let enc = [("ENCRYPTION_XKEY_SEED", keys.encryption.as_str())];
    let (ok, _, err) = cli(&nats, &["put", "f", "--string", SECRET], None, &[]);
    assert!(ok, "{err}");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::write(&out, b"an older, longer, world-readable file").unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, _, err) = cli(
        &nats,
        &["get", "f", "--out", out.to_str().unwrap()],
        None,
        &enc,
    );
    assert!(ok, "{err}");
    assert_private_file(&out);
    assert_eq!(std::fs::read(&out).unwrap(), SECRET.as_bytes());
    // A new file too; and a directory is refused.
    let fresh = dir.path().join("fresh");
    let (ok, _, err) = cli(
        &nats,
        &["get", "f", "--out", fresh.to_str().unwrap()],
        None,
        &enc,
    );
    assert!(ok, "{err}");
    assert_private_file(&fresh);
    let (ok, _, err) = cli(
        &nats,
        &["get", "f", "--out", dir.path().to_str().unwrap()],
        None,
        &enc,
    );
    assert!(!ok && err.contains("directory"), "{err}");
}

#[tokio::test]
async fn get_prints_only_the_value_of_the_version_asked_and_states_the_name_rule() {
    let (nats, keys, _backend) = setup();
    ready(&nats).await;
    let enc = [("ENCRYPTION_XKEY_SEED", keys.encryption.as_str())];
    for (name, value) in [("a", "one"), ("b", "other"), ("a", "three")] {
        let (ok, _, err) = cli(&nats, &["put", name, "--string", value], None, &[]);
        assert!(ok, "{err}");
    }
    // Control: version 1 of `a` is its value, and only that.
    let (ok, out, err) = cli(&nats, &["get", "a", "--secret-version", "1"], None, &enc);
    assert!(ok, "{err}");
    assert_eq!(String::from_utf8(out).unwrap(), "one\n");
    // Revision 2 is `b`'s: no version of `a`, and nothing on stdout (async-nats 0.39's KV
    // read printed `subject mismatch $KV...` there).
    let (ok, out, err) = cli(&nats, &["get", "a", "--secret-version", "2"], None, &enc);
    assert!(!ok, "revision 2 is b's");
    assert_eq!(String::from_utf8_lossy(&out), "", "stdout: only values");
    assert!(err.contains("not found"), "{err}");

    // A bad name: `get` states the rule, as `put` does.
    let rule = "may not start or end with '.', nor contain '..'";
    let (ok, _, put_err) = cli(&nats, &["put", "bad..name", "--string", "x"], None, &[]);
    assert!(!ok && put_err.contains(rule), "{put_err}");
    let (ok, out, err) = cli(&nats, &["get", "bad..name"], None, &enc);
    assert!(!ok && err.contains(rule), "{err}");
    assert!(out.is_empty());
}

#[test]
fn get_without_a_data_key_names_its_env_var_and_keys_env_and_never_echoes_a_seed() {
    let (ok, _, err) = cli_at(&[("NATS_ADDRESS", "127.0.0.1:1")], &["get", "x"], None);
    assert!(!ok);
    assert!(
        err.contains("ENCRYPTION_XKEY_SEED") && err.contains("keys.env"),
        "{err}"
    );
    // Usage errors with seeds in the environment: the seeds stay out of the message.
    let seed = piggybank::keys::generate_seed();
    for args in [
        &["get"][..],
        &["get", "a", "b"],
        &["put"],
        &["rekey", "--bogus"],
    ] {
        let (ok, out, err) = cli_at(
            &[
                ("ENCRYPTION_XKEY_SEED", seed.as_str()),
                ("TRANSIT_XKEY_SEED", seed.as_str()),
            ],
            args,
            None,
        );
        assert!(!ok, "{args:?}");
        let out = String::from_utf8_lossy(&out);
        assert!(
            !err.contains(seed.as_str()) && !out.contains(seed.as_str()),
            "{args:?} echoed a seed: {err}"
        );
    }
}

#[test]
fn logs_written_to_a_pipe_carry_no_colour_codes() {
    // `run` against nothing: it logs its warnings, then fails to connect.
    let out = std::process::Command::new(piggybank_bin())
        .args(["run", "--nats-address", "127.0.0.1:1"])
        .env(
            "ENCRYPTION_XKEY_SEED",
            piggybank::keys::generate_seed().as_str(),
        )
        .env(
            "TRANSIT_XKEY_SEED",
            piggybank::keys::generate_seed().as_str(),
        )
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("WARN"), "it logged: {err}");
    assert!(
        !err.contains('\u{1b}'),
        "escape codes in a piped log: {err:?}"
    );
}
