//! The `piggybank` command line: flags -> library calls. Commands and flags of the sample's
//! `secrets-nats-kv` keep their names, short forms, env vars and defaults.

mod admin_seed;
mod audit;
mod backup;
mod database;
pub use database::printable;
mod conn;
mod dev;
mod files;
mod get;
mod keygen;
mod nats_config;
mod run;
pub(crate) use conn::{Conn, ConnOptions, Target};
pub(crate) use run::RunArgs;

pub(crate) use files::write_private;

use std::collections::BTreeSet;
use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use nkeys::XKey;
use zeroize::Zeroizing;

use crate::client;
use crate::config::{self, env};
use crate::server;
use crate::store::envelope::SecretValue;

#[derive(Parser)]
#[command(
    name = "piggybank",
    version,
    about = "A secrets backend for wasmCloud on NATS JetStream KV"
)]
pub struct Cli {
    /// Log format (logs go to stderr).
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the secrets backend
    Run(Box<RunArgs>),
    /// Run a local NATS server and the backend, with generated keys kept in --dir
    Dev(dev::DevArgs),
    /// Make a key: a transit or data key seed (SX...), or an admin key (SU...)
    Keygen(keygen::KeygenArgs),
    /// Put a secret (value from --string, --binary FILE, or stdin)
    Put(PutArgs),
    /// Get a secret: through the backend (a signed admin request), or from the bucket with -e
    Get(get::GetArgs),
    /// Delete a secret and all its versions
    Delete(NameArgs),
    /// List secrets (metadata only, never values)
    List(ListArgs),
    /// Allow an entity (component or provider public key), or a wadm application
    /// (--application), to read secrets
    AddMapping(MappingArgs),
    /// Revoke an entity's (or an application's) access to secrets
    RemoveMapping(MappingArgs),
    /// Show the secrets an entity (or an application) may read
    Mappings(EntityArgs),
    /// Initialize a sealed store: prints its key (or shares) once
    Init(database::InitArgs),
    /// Unlock a sealed store with its key, or one share (read from stdin or the env)
    Unlock(database::UnlockArgs),
    /// Lock the store: every instance forgets its keys
    Lock(database::DatabaseArgs),
    /// Every instance's mode, seal, counts and version; exit 0 unsealed, 2 sealed, 1 error
    Status(database::DatabaseArgs),
    /// Add a new data key to a sealed-mode store and re-seal every value with it, online
    Rotate(database::DatabaseArgs),
    /// Re-seal every secret with the current data key (after a key change)
    Rekey(RekeyArgs),
    /// Write every secret (all kept versions, still sealed), the mappings and the key record
    /// to one file
    Backup(backup::BackupArgs),
    /// Load a backup into empty buckets (checked whole before anything is written)
    Restore(backup::RestoreArgs),
    /// List and follow the audit trail: who read or changed what, and when
    Audit(audit::AuditArgs),
    /// Write the least-privilege NATS layout of a deployment: a seed per role and the
    /// nats-server authorization
    NatsConfig(nats_config::NatsConfigArgs),
}

#[derive(Args)]
pub struct PutArgs {
    /// The name of the secret
    pub name: String,
    /// Expected current version (compare-and-set); 0 = only if the secret does not exist
    #[arg(long = "secret-version")]
    pub version: Option<u64>,
    /// The string value (prefer stdin: argv and env can leak into history and /proc)
    #[arg(long, env = env::SECRET_STRING_VALUE, hide_env_values = true, conflicts_with = "binary")]
    pub string: Option<String>,
    /// A file holding the binary value; `-` reads bytes from stdin
    #[arg(long, env = env::SECRET_BINARY_FILE, conflicts_with = "string")]
    pub binary: Option<PathBuf>,
    /// The backend's transit key (seed or public key); fetched from the backend if absent
    #[arg(short = 't', long, env = env::TRANSIT_XKEY_SEED, hide_env_values = true)]
    pub transit_xkey_seed: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Args)]
pub struct RekeyArgs {
    /// The data key to re-seal with (the backend's new ENCRYPTION_XKEY_SEED)
    #[arg(short = 'e', long, env = env::ENCRYPTION_XKEY_SEED, hide_env_values = true)]
    pub encryption_xkey_seed: String,
    /// Seeds of earlier data keys (comma-separated), to read what they sealed
    #[arg(long, env = env::PREVIOUS_ENCRYPTION_XKEY_SEEDS, value_delimiter = ',', hide_env_values = true)]
    pub previous_encryption_xkey_seeds: Vec<String>,
    /// The KV bucket secrets are stored in
    #[arg(short = 'b', long, default_value = config::DEFAULT_SECRETS_BUCKET)]
    pub secrets_bucket: String,
    #[command(flatten)]
    pub conn: Conn,
}

#[derive(Args)]
pub struct NameArgs {
    /// The name of the secret
    pub name: String,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Args)]
pub struct ListArgs {
    /// Only names starting with this prefix
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Args)]
pub struct MappingArgs {
    /// The public key of the component (M...) or provider (V...)
    #[arg(
        required_unless_present = "application",
        conflicts_with = "application"
    )]
    pub public_key: Option<String>,
    /// A wadm application (its manifest's name), instead of a key: every component and
    /// provider a host says is part of it may read the secrets
    #[arg(long)]
    pub application: Option<String>,
    /// A secret name; repeat for several
    #[arg(long = "secret", required = true)]
    pub secrets: Vec<String>,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Args)]
pub struct EntityArgs {
    /// The public key of the component (M...) or provider (V...)
    #[arg(
        required_unless_present = "application",
        conflicts_with = "application"
    )]
    pub public_key: Option<String>,
    /// A wadm application (its manifest's name), instead of a key
    #[arg(long)]
    pub application: Option<String>,
    /// Print one JSON array of names instead of one name per line
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: Target,
}

/// Metrics over OTLP when the standard `OTEL_*` environment asks for it (servers only).
fn init_metrics() {
    match crate::metrics::init_from_env() {
        Ok(true) => tracing::info!("exporting metrics over OTLP (OTEL_* environment)"),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "metrics are not exported"),
    }
}

/// Run one command; returns its exit code (`status` has codes besides 0, as `vault status`).
pub async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    let done: anyhow::Result<()> = match cli.command {
        Command::Run(args) => {
            let config = args.into_config()?;
            init_metrics();
            server::run(config, server::shutdown_signal()).await?;
            Ok(())
        }
        Command::Dev(args) => {
            init_metrics();
            dev::run(args).await
        }
        Command::Keygen(args) => keygen::run(args),
        Command::Rekey(args) => rekey(args).await,
        Command::Backup(args) => backup::backup(args).await,
        Command::Restore(args) => backup::restore(args).await,
        Command::Audit(args) => audit::run(args).await,
        Command::NatsConfig(args) => nats_config::run(args),
        Command::Init(args) => database::init(args).await,
        Command::Unlock(args) => database::unlock(args).await,
        Command::Lock(args) => database::lock(args).await,
        Command::Rotate(args) => database::rotate(args).await,
        Command::Status(args) => return database::status(args).await,
        Command::Put(args) => put(args).await,
        Command::Get(args) => get::get(args).await,
        Command::Delete(args) => {
            args.target
                .client()
                .await?
                .delete_secret(&args.name)
                .await?;
            println!("Secret '{}' deleted", args.name);
            Ok(())
        }
        Command::List(args) => list(args).await,
        Command::AddMapping(args) => {
            let names: BTreeSet<String> = args.secrets.iter().cloned().collect();
            let client = args.target.client().await?;
            match (&args.application, &args.public_key) {
                (Some(app), _) => {
                    client.add_app_mapping(app, &names).await?;
                    println!(
                        "Application '{}' can now access secrets: {names:?}",
                        printable(app)
                    );
                }
                (None, key) => {
                    let key = key.as_deref().unwrap_or_default();
                    client.add_mapping(key, &names).await?;
                    println!("Public key '{key}' can now access secrets: {names:?}");
                }
            }
            Ok(())
        }
        Command::RemoveMapping(args) => {
            let names: BTreeSet<String> = args.secrets.iter().cloned().collect();
            let client = args.target.client().await?;
            match (&args.application, &args.public_key) {
                (Some(app), _) => {
                    client.remove_app_mapping(app, &names).await?;
                    println!(
                        "Application '{}' no longer has access to secrets: {names:?}",
                        printable(app)
                    );
                }
                (None, key) => {
                    let key = key.as_deref().unwrap_or_default();
                    client.remove_mapping(key, &names).await?;
                    println!("Public key '{key}' no longer has access to secrets: {names:?}");
                }
            }
            Ok(())
        }
        Command::Mappings(args) => {
            let client = args.target.client().await?;
            let names = match (&args.application, &args.public_key) {
                (Some(app), _) => client.get_app_mappings(app).await?,
                (None, key) => {
                    client
                        .get_mappings(key.as_deref().unwrap_or_default())
                        .await?
                }
            };
            if args.json {
                println!("{}", serde_json::to_string(&names)?);
            } else {
                for name in names {
                    println!("{}", printable(&name));
                }
            }
            Ok(())
        }
    };
    done.map(|()| std::process::ExitCode::SUCCESS)
        .map_err(admin_hint)
}

/// A refusal for want of an admin signature, with what to do about it.
fn admin_hint(err: anyhow::Error) -> anyhow::Error {
    match err.downcast_ref::<client::ClientError>() {
        Some(e) if e.is_admin_refusal() => err.context(format!(
            "the backend requires a signature by one of its --admin-keys: set {} (or \
             --admin-seed-file) to that key's seed",
            env::PIGGYBANK_ADMIN_SEED
        )),
        _ => err,
    }
}

fn read_value(args: &mut PutArgs) -> anyhow::Result<SecretValue> {
    if let Some(s) = args.string.take() {
        return Ok(SecretValue::String(Zeroizing::new(s)));
    }
    if let Some(path) = &args.binary {
        let bytes = if path.as_os_str() == "-" {
            let mut buf = Zeroizing::new(Vec::new());
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("failed to read the binary secret from stdin")?;
            buf
        } else {
            Zeroizing::new(std::fs::read(path).with_context(|| {
                format!(
                    "failed to read binary secret from file '{}'",
                    path.display()
                )
            })?)
        };
        return Ok(SecretValue::Binary(bytes));
    }
    if std::io::stdin().is_terminal() {
        eprintln!("Reading the secret value from stdin; end it with Ctrl-D.");
    }
    let mut text = Zeroizing::new(String::new());
    std::io::stdin()
        .read_to_string(&mut text)
        .context("failed to read the secret from stdin (not UTF-8? use --binary -)")?;
    // Drop one trailing newline, as `echo` and heredocs add it.
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        bail!("no secret value given: use --string, --binary FILE, or pipe it on stdin");
    }
    Ok(SecretValue::String(text))
}

async fn put(mut args: PutArgs) -> anyhow::Result<()> {
    let value = read_value(&mut args)?;
    let transit = match args.transit_xkey_seed.take().map(Zeroizing::new) {
        None => None,
        Some(k) => Some(transit_xkey(&k)?),
    };
    let client = args.target.client().await?;
    let revision = client
        .put_secret(&args.name, value, args.version, transit.as_ref())
        .await?;
    println!(
        "Secret '{}' put successfully (version {revision})",
        args.name
    );
    Ok(())
}

/// A transit key given as its seed (SX...) or its public key (X...).
fn transit_xkey(text: &str) -> anyhow::Result<XKey> {
    let text = text.trim();
    if text.starts_with("SX") {
        return Ok(crate::keys::xkey_from_seed(
            &Zeroizing::new(text.to_string()),
            "transit key",
        )?);
    }
    XKey::from_public_key(text).context("the transit key is not a valid xkey (X... or SX...)")
}

pub(crate) fn zeroized(seeds: Vec<String>) -> Vec<Zeroizing<String>> {
    seeds.into_iter().map(Zeroizing::new).collect()
}

/// `rekey`: open the bucket directly (as `get` does) and re-seal every secret with the
/// current key, online; running it again resumes.
async fn rekey(args: RekeyArgs) -> anyhow::Result<()> {
    let keys = server::keyring(
        &Zeroizing::new(args.encryption_xkey_seed),
        &zeroized(args.previous_encryption_xkey_seeds),
    )?;
    let (nats, js_domain) = args.conn.connect_jetstream("piggybank rekey").await?;
    let store = crate::store::SecretStore::open(
        &nats,
        js_domain.as_deref(),
        crate::store::Bucket::Existing(&args.secrets_bucket),
    )
    .await?;
    let started = std::time::Instant::now();
    let report = crate::store::rekey::rekey(&store, &keys, |done, total| {
        if done % 1000 == 0 || done == total {
            eprintln!("rekey: {done}/{total}");
        }
    })
    .await?;
    for (name, why) in &report.failed {
        eprintln!("rekey: {name}: {why}");
    }
    println!(
        "rekey: {} secrets in {:.1} s: {} re-sealed with data key {}, {} already under it, \
         {} deleted meanwhile, {} failed",
        report.total,
        started.elapsed().as_secs_f64(),
        report.resealed,
        keys.current().id(),
        report.already_current,
        report.gone,
        report.failed.len()
    );
    if !report.failed.is_empty() {
        bail!(
            "{} secrets were not re-sealed; fix the cause above and run rekey again",
            report.failed.len()
        );
    }
    // Every value is under the current key now: it is the store's key (one store, one key).
    let previous: Vec<String> = keys
        .keys()
        .map(|k| k.id().to_string())
        .filter(|id| id != keys.current().id())
        .collect();
    let js = crate::store::jetstream(&nats, js_domain.as_deref());
    crate::store::owner::rekeyed(&js, &args.secrets_bucket, keys.current().id(), &previous).await?;
    Ok(())
}

async fn list(args: ListArgs) -> anyhow::Result<()> {
    let secrets = args
        .target
        .client()
        .await?
        .list_secrets(&args.prefix)
        .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&secrets)?);
        return Ok(());
    }
    println!("{:<40} {:>8} {:<7} UPDATED", "NAME", "VERSION", "KIND");
    for s in secrets {
        let kind = serde_json::to_value(s.kind)?;
        println!(
            "{:<40} {:>8} {:<7} {}",
            printable(&s.name),
            s.version,
            kind.as_str().unwrap_or("?"),
            s.updated_at
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_accepts_every_flag_of_the_sample() {
        let cli = Cli::try_parse_from([
            "piggybank",
            "run",
            "-e",
            "SXE",
            "-t",
            "SXT",
            "-s",
            "base",
            "-n",
            "nm",
            "-b",
            "BKT",
            "--max-secret-history",
            "10",
            "--nats-queue-base",
            "qb",
            "--nats-address",
            "h:1",
            "--secrets-api-version",
            "v9",
            "--nats-creds-file",
            "/c",
            "--replicas",
            "3",
            "--trusted-issuers",
            "A1,A2",
            "--log-format",
            "json",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        let c = args.into_config().unwrap();
        assert_eq!(c.subject_prefix(), "base.v9.nm");
        assert_eq!(
            (c.secrets_bucket.as_str(), c.max_secret_history, c.replicas),
            ("BKT", 10, 3)
        );
        assert_eq!(c.trusted_issuers, ["A1", "A2"]);
        assert_eq!(c.nats_queue_base, "qb");
        assert!(c.admin_keys.is_empty(), "unauthenticated unless asked");
    }

    #[test]
    fn run_and_clients_take_tls_and_a_jetstream_domain() {
        let cli = Cli::try_parse_from([
            "piggybank",
            "run",
            "--tls-ca",
            "/ca.pem",
            "--tls-cert",
            "/c.pem",
            "--tls-key",
            "/k.pem",
            "--tls-first",
            "--js-domain",
            "hub",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        let c = args.into_config().unwrap();
        assert_eq!(
            c.nats_tls,
            crate::connect::NatsTls {
                ca_file: Some("/ca.pem".into()),
                cert_file: Some("/c.pem".into()),
                key_file: Some("/k.pem".into()),
                handshake_first: true,
            }
        );
        assert_eq!(c.js_domain.as_deref(), Some("hub"));
        assert_eq!(c.nats_address, config::DEFAULT_NATS_ADDRESS);
        let cli = Cli::try_parse_from(["piggybank", "run", "--js-domain", "a.b"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        let Err(err) = args.into_config() else {
            panic!("a.b is not a domain")
        };
        assert!(err.to_string().contains("\"a.b\" is invalid"), "{err}");
        // A certificate needs its key, on every command that connects.
        for command in ["run", "list", "get", "status", "rekey"] {
            assert!(
                Cli::try_parse_from(["piggybank", command, "--tls-cert", "/c.pem"]).is_err(),
                "{command}"
            );
        }
    }

    #[test]
    fn run_takes_admin_keys_and_clients_a_seed_file() {
        let cli = Cli::try_parse_from(["piggybank", "run", "--admin-keys", "UA,UB"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.into_config().unwrap().admin_keys, ["UA", "UB"]);
        let cli = Cli::try_parse_from(["piggybank", "list", "--admin-seed-file", "/k/admin.seed"])
            .unwrap();
        let Command::List(args) = cli.command else {
            panic!("not list")
        };
        assert_eq!(
            args.target.admin.admin_seed_file.as_deref(),
            Some(std::path::Path::new("/k/admin.seed"))
        );
        for db in ["init", "lock", "rotate"] {
            assert!(
                Cli::try_parse_from(["piggybank", db, "--admin-seed-file", "/f"]).is_ok(),
                "{db}"
            );
        }
    }
}
