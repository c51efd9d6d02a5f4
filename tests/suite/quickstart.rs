//! The README's Quickstart, run the way a newcomer runs it: `make dev` itself (the Makefile
//! target, in its own process group, as a terminal runs it), then the second terminal's
//! block exactly as the README prints it, then Ctrl-C to the whole `make`. Afterwards
//! nothing it started may be left: no `piggybank dev`, no `nats-server`, the port free.
//! Dev's NATS runs the least-privilege layout: a client without a role's nkey is refused,
//! the README's block works as the admin role, and the host role reaches `server_xkey`.

use std::io::Read;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The ```sh blocks of the README's "## Quickstart" section, in order.
fn quickstart_blocks() -> Vec<String> {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let start = readme
        .find("\n## Quickstart\n")
        .expect("README has a Quickstart");
    let section = &readme[start + 1..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let mut blocks = Vec::new();
    let mut rest = section;
    while let Some(open) = rest.find("```sh\n") {
        let body = &rest[open + 6..];
        let close = body.find("```").expect("closed block");
        blocks.push(body[..close].to_string());
        rest = &body[close + 3..];
    }
    blocks
}

/// Processes whose command line mentions `needle` (our temp dir is in both dev's and
/// nats-server's arguments).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(format!("{pid}: {cmdline}"));
        }
    }
    found
}

/// `make dev` in its own process group; killed (the whole group) on drop.
struct MakeDev {
    child: std::process::Child,
}

impl MakeDev {
    fn signal_group(&self, sig: i32) {
        // SAFETY: kill(2) on the process group of a child we spawned as its leader.
        unsafe {
            libc::kill(-(self.child.id() as i32), sig);
        }
    }
}

impl Drop for MakeDev {
    fn drop(&mut self) {
        self.signal_group(libc::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Connect to dev's NATS as the host role (the seed file dev writes into its layout).
async fn connect_as_host(port: u16, dev_dir: &Path) -> Option<async_nats::Client> {
    let seed = std::fs::read_to_string(dev_dir.join("nats/host.nk")).ok()?;
    let seed = seed.lines().find(|l| l.starts_with("SU"))?.to_string();
    async_nats::ConnectOptions::with_nkey(seed)
        .connect(format!("127.0.0.1:{port}"))
        .await
        .ok()
}

fn wait_ready(port: u16, make: &mut MakeDev, log: &Path, dev_dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = make.child.try_wait() {
            panic!(
                "make dev exited ({status}) before the backend was ready:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if let Ok(stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            drop(stream);
            // NATS is up; the backend is ready once it answers server_xkey.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let answered = rt.block_on(async {
                let Some(client) = connect_as_host(port, dev_dir).await else {
                    return false;
                };
                let asked =
                    client.request("wasmcloud.secrets.v1alpha1.nats-kv.server_xkey", "".into());
                matches!(
                    tokio::time::timeout(Duration::from_millis(500), asked).await,
                    Ok(Ok(_))
                )
            });
            if answered {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("make dev never became ready");
}

#[test]
fn the_readme_quickstart_runs_as_written_and_ctrl_c_stops_everything() {
    let blocks = quickstart_blocks();
    assert_eq!(
        blocks.len(),
        2,
        "Quickstart: a `make dev` block and a shell block"
    );
    assert_eq!(
        blocks[0].trim(),
        "make dev",
        "the first terminal runs `make dev`"
    );

    // The newcomer's checkout, as the second terminal sees it: `.piggybank/` from make dev,
    // and `target/` (a link to this build's, which `make dev` builds into too).
    let work = tempfile::tempdir().unwrap();
    let target = Path::new(env!("CARGO_BIN_EXE_piggybank"))
        .parent()
        .and_then(Path::parent)
        .expect("<target>/<profile>/piggybank");
    std::os::unix::fs::symlink(target, work.path().join("target")).unwrap();
    let dev_dir = work.path().join(".piggybank");
    let port = free_port();
    let log_path = work.path().join("make-dev.log");
    let log = std::fs::File::create(&log_path).unwrap();

    let mut make = MakeDev {
        child: Command::new("make")
            .arg("-C")
            .arg(repo())
            .arg("dev")
            .arg(format!(
                "DEV_ARGS=--nats-port {port} --dir {}",
                dev_dir.display()
            ))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("make is installed"),
    };
    wait_ready(port, &mut make, &log_path, &dev_dir);

    // The layout is on: a client without a role's nkey is refused at connect.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let anonymous = rt.block_on(async {
        let connect = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .connect(format!("127.0.0.1:{port}"));
        tokio::time::timeout(Duration::from_secs(5), connect).await
    });
    let refusal = match anonymous {
        Ok(Err(e)) => e.to_string(),
        Ok(Ok(_)) => panic!("dev's NATS accepts a client with no nkey"),
        Err(_) => panic!("dev's NATS neither accepted nor refused a client with no nkey"),
    };
    assert!(
        refusal.to_lowercase().contains("authorization"),
        "refused for its missing credentials: {refusal}"
    );

    // The second terminal: the README's block, exactly, from the checkout's directory.
    let shell = Command::new("bash")
        .args(["-e", "-o", "pipefail", "-c", &blocks[1]])
        .current_dir(work.path())
        .env_remove("ENCRYPTION_XKEY_SEED")
        .env_remove("TRANSIT_XKEY_SEED")
        .env_remove("NATS_ADDRESS")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&shell.stdout);
    let stderr = String::from_utf8_lossy(&shell.stderr);
    assert!(
        shell.status.success(),
        "quickstart failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("put successfully"),
        "put reported success: {stdout}"
    );
    let listing = stdout
        .lines()
        .find(|l| l.starts_with("db_password"))
        .unwrap_or_else(|| panic!("list shows db_password: {stdout}"));
    assert!(listing.contains("string"), "{listing}");
    assert_eq!(
        stdout.lines().last(),
        Some("s3cr3t"),
        "get prints the value: {stdout}"
    );
    let keys_env = std::fs::read_to_string(dev_dir.join("keys.env")).unwrap();
    assert_private_file(&dev_dir.join("keys.env"));
    let seeds: Vec<&str> = keys_env
        .lines()
        .filter_map(|l| l.split_once("_SEED=").map(|(_, seed)| seed))
        .collect();
    assert_eq!(seeds.len(), 2, "keys.env holds both seeds");
    assert!(keys_env.contains(&format!("NATS_ADDRESS=127.0.0.1:{port}")));
    assert!(
        keys_env.contains("NATS_NKEY=") && keys_env.contains("/nats/admin.nk"),
        "keys.env connects the CLI as the admin role: {keys_env}"
    );
    for role in ["backend", "host", "admin"] {
        assert_private_file(&dev_dir.join(format!("nats/{role}.nk")));
    }
    for seed in &seeds {
        assert!(
            !stdout.contains(seed) && !stderr.contains(seed),
            "a seed reached the terminal"
        );
    }

    // Ctrl-C in the first terminal: SIGINT to make's whole process group.
    make.signal_group(libc::SIGINT);
    let deadline = Instant::now() + Duration::from_secs(30);
    while make.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "make dev did not stop on Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    }
    // nats-server runs in a group of its own (dev stops it after draining): give the last
    // process a moment to be reaped, then nothing may remain.
    let needle = dev_dir.display().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = processes_mentioning(&needle);
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still running after Ctrl-C: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
        "port {port} is free again"
    );
    let mut log = String::new();
    std::fs::File::open(&log_path)
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(log.contains("piggybank stopped"), "dev drained: {log}");
    for seed in &seeds {
        assert!(!log.contains(seed), "a seed reached make dev's output");
    }
}
