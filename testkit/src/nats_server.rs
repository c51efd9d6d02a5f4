//! A real `nats-server -js` on 127.0.0.1: a free port, a temporary data dir, killed (and its
//! data removed) on drop. The tests start it with [`NatsServer::start`] and panic if it
//! cannot start; the benchmark uses [`NatsServer::try_start`] with a binary of its choice
//! and reports the error instead.
//!
//! A server is recognised by its name (`-n`, unique in the run) in the INFO line it sends on
//! connect, so a port taken by someone else between `free_port` and the server's bind is
//! never mistaken for ours.

use std::io;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The binary the tests run (from `PATH`; `make test` and `make bench` install it).
const NATS_SERVER: &str = "nats-server";

/// A free loopback port, never the same one twice in this process (tests run in parallel).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("no free loopback port");
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A name no other server in this run has, to recognise our own server on its port.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), free_port())
}

/// A `nats-server -js` on 127.0.0.1, killed (and its data removed) on drop.
pub struct NatsServer {
    pub port: u16,
    child: Child,
    pub dir: tempfile::TempDir,
}

impl NatsServer {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir)
    }

    /// Start on a given data dir (reused across restarts).
    pub fn start_in(dir: tempfile::TempDir) -> Self {
        Self::spawn(Path::new(NATS_SERVER), dir, None).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Start with a server config file (its users and permissions); port, address and data
    /// dir still come from the command line, which overrides the file.
    pub fn start_with_config(config: &Path) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::spawn(Path::new(NATS_SERVER), dir, Some(config)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Start with a config whose clients must open with a TLS handshake (`tls {
    /// handshake_first: true }`). Such a server sends no INFO line in clear, so it is known to
    /// be ours, and ready, by its log (under its data dir) instead.
    pub fn start_tls_first(config: &Path) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        for _ in 0..5 {
            let port = free_port();
            let name = unique_name("piggybank-test");
            let log = dir.path().join(format!("nats-{port}.log"));
            let mut command = Self::build(Path::new(NATS_SERVER), port, &name, &dir, Some(config));
            command.arg("-l").arg(&log);
            let mut child = Self::spawn_command(Path::new(NATS_SERVER), command)
                .unwrap_or_else(|e| panic!("{e}"));
            if wait_logged_ready(&mut child, &log, port, &name) {
                return NatsServer { port, child, dir };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("nats-server (TLS handshake first) did not start");
    }

    /// Start the `nats-server` binary `bin`; an error, not a panic, if it cannot start.
    pub fn try_start(bin: &Path) -> io::Result<Self> {
        Self::spawn(bin, tempfile::tempdir()?, None)
    }

    /// Start again on `port` with the data dir of a stopped server (clients reconnect).
    pub fn restart_on(port: u16, dir: tempfile::TempDir) -> Self {
        let name = unique_name("piggybank-test");
        let mut child = Self::command(Path::new(NATS_SERVER), port, &name, &dir, None)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            wait_listening(&mut child, port, &name),
            "nats-server did not restart on {port}"
        );
        NatsServer { port, child, dir }
    }

    fn spawn(bin: &Path, dir: tempfile::TempDir, config: Option<&Path>) -> io::Result<Self> {
        for _ in 0..5 {
            let port = free_port();
            let name = unique_name("piggybank-test");
            let mut child = Self::command(bin, port, &name, &dir, config)?;
            if wait_listening(&mut child, port, &name) {
                return Ok(NatsServer { port, child, dir });
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        Err(io::Error::other(format!("{} did not start", bin.display())))
    }

    /// `bin -js` on `127.0.0.1:port` named `name`, its data under `dir`, started.
    fn command(
        bin: &Path,
        port: u16,
        name: &str,
        dir: &tempfile::TempDir,
        config: Option<&Path>,
    ) -> io::Result<Child> {
        Self::spawn_command(bin, Self::build(bin, port, name, dir, config))
    }

    /// `bin -js` on `127.0.0.1:port` named `name`, its data under `dir`, to start.
    fn build(
        bin: &Path,
        port: u16,
        name: &str,
        dir: &tempfile::TempDir,
        config: Option<&Path>,
    ) -> Command {
        let mut command = Command::new(bin);
        if let Some(config) = config {
            command.arg("-c").arg(config);
        }
        command
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-n",
                name,
                "-sd",
            ])
            .arg(dir.path().join("js"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command
    }

    fn spawn_command(bin: &Path, mut command: Command) -> io::Result<Child> {
        command.spawn().map_err(|e| {
            let hint = "nats-server must be installed (make test and make bench install it)";
            io::Error::new(
                e.kind(),
                format!("cannot start {}: {e}; {hint}", bin.display()),
            )
        })
    }

    pub fn url(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .expect("connect to test nats")
    }

    /// Stop the server and hand back its data dir, for a restart.
    pub fn stop(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wait until `child` (started with server name `name`) listens on `port`; false if it
/// exits, takes over 10 s, or another server answers on that port.
pub fn wait_listening(child: &mut Child, port: u16, name: &str) -> bool {
    use std::io::BufRead;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if let Ok(stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let mut info = String::new();
            let _ = std::io::BufReader::new(stream).read_line(&mut info);
            return info.contains(&format!("\"server_name\":\"{name}\""));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Wait until `child` has logged to `log` that it is `name`, listens on `port` and is ready;
/// false if it exits or takes over 10 s.
fn wait_logged_ready(child: &mut Child, log: &Path, port: u16, name: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    let named = format!("Name:     {name}");
    let listening = format!("Listening for client connections on 127.0.0.1:{port}");
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(&named) && text.contains(&listening) && text.contains("Server is ready") {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A `nats-server -js` whose max payload is `bytes` (the default is 1 MiB).
pub fn nats_with_max_payload(bytes: usize) -> NatsServer {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("nats.conf");
    std::fs::write(&config, format!("max_payload: {bytes}\n")).expect("write nats.conf");
    NatsServer::start_with_config(&config)
}
