//! The `piggybank` command line: flags -> library calls. Commands and flags of the sample's
//! `secrets-nats-kv` keep their names, short forms, env vars and defaults.
//!
//! One spelling per idea, on every command: the NATS connection flags are global (`conn`,
//! one help heading); a result is printed as `-o/--output text|json` (`output`); a file a
//! command writes is `--out FILE`; the backend's transit key is `-t/--transit-xkey` on the
//! client commands (`--transit-xkey-seed` kept as a hidden alias; `run` holds the seed
//! itself, so its flag stays the sample's `--transit-xkey-seed`); placeholders are
//! upper case (`<NAME>`). `cli_manners` tests hold every subcommand to this.

mod admin_seed;
mod audit;
mod backup;
mod database;
pub use database::printable;
mod completions;
mod conn;
mod dev;
mod files;
mod get;
mod groups;
mod keygen;
mod mapping;
mod nats_config;
mod output;
mod put;
mod rekey;
mod run;
mod transit;
pub(crate) use conn::{Conn, Target};
pub use output::Output;
pub(crate) use run::RunArgs;

pub(crate) use files::write_private;

use clap::{Args, Parser, Subcommand, ValueEnum};
use zeroize::Zeroizing;

use crate::client;
use crate::config::env;
use crate::server;

#[derive(Parser)]
#[command(
    name = "piggybank",
    version,
    about = "A secrets backend for wasmCloud on NATS JetStream KV",
    after_help = "New here? Start with `piggybank dev`: it runs NATS and a backend locally, \
                  with generated keys, and prints what to try next (`piggybank dev --sealed` \
                  for sealed mode).\nShell completions: `piggybank completions bash|zsh|fish`."
)]
pub struct Cli {
    /// Log format (logs go to stderr).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        value_name = "FORMAT"
    )]
    pub log_format: LogFormat,
    /// How to reach NATS: global, given before or after the subcommand.
    #[command(flatten)]
    pub conn: Conn,
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
    Put(put::PutArgs),
    /// Get a secret: through the backend (a signed admin request), or from the bucket with -e
    Get(get::GetArgs),
    /// Delete a secret and all its versions
    Delete(NameArgs),
    /// List secrets (metadata only, never values)
    List(ListArgs),
    /// Allow an entity (component or provider public key), or a wadm application
    /// (--application), to read secrets
    AddMapping(mapping::MappingArgs),
    /// Revoke an entity's (or an application's) access to secrets
    RemoveMapping(mapping::MappingArgs),
    /// Show the secrets an entity (or an application) may read
    Mappings(mapping::EntityArgs),
    /// Initialize a sealed store: prints its key (or shares) once
    Init(database::InitArgs),
    /// Unlock a sealed store with its key, or one share (read from stdin or the env)
    #[command(after_help = UNLOCK_AFTER_HELP)]
    Unlock(database::UnlockArgs),
    /// Lock the store: every instance forgets its keys
    Lock(database::DatabaseArgs),
    /// Every instance's mode, seal, counts and version; exit 0 unsealed, 2 sealed, 1 error
    Status(database::DatabaseArgs),
    /// Add a new data key to a sealed-mode store and re-seal every value with it, online
    Rotate(database::DatabaseArgs),
    /// Re-seal every secret with the current data key (after a key change)
    Rekey(rekey::RekeyArgs),
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
    /// Print a shell completion script: `source <(piggybank completions bash)`
    Completions(completions::CompletionsArgs),
    /// The secret commands, grouped: put, get, delete, list
    #[command(subcommand)]
    Secret(groups::SecretCommand),
    /// The mapping commands, grouped: add, remove, list
    #[command(subcommand)]
    Mapping(groups::MappingCommand),
    /// The sealed-store commands, grouped: init, unlock, lock, status, rotate
    #[command(subcommand, visible_alias = "database")]
    Operator(groups::OperatorCommand),
}

/// What `unlock --help` says about where the key or share comes from.
const UNLOCK_AFTER_HELP: &str = "The key or share is read, never from argv, from \
     PIGGYBANK_DATABASE_KEY (the database key), else PIGGYBANK_SHARE (one share), else one \
     line of stdin (a key or a share: told apart by decoding it). With shares, run unlock \
     once per share until the store is unsealed.";

#[derive(Args)]
pub struct NameArgs {
    /// The name of the secret
    pub name: String,
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub output: Output,
}

#[derive(Args)]
pub struct ListArgs {
    /// Only names starting with this prefix
    #[arg(long, default_value = "")]
    pub prefix: String,
    #[command(flatten)]
    pub output: Output,
    #[command(flatten)]
    pub target: Target,
}

/// The commands that make no NATS connection from the connection flags: `dev` runs its own
/// nats-server and connects to it; the others connect to nothing.
const NO_CONNECTION: &[&str] = &["dev", "nats-config", "keygen", "completions"];

/// The command line's definition: `Cli`'s, where a command in [`NO_CONNECTION`] holds
/// hidden copies of the connection flags, so its help does not offer what it refuses
/// (a global flag is not given to a subcommand that has one of the same id).
pub fn command() -> clap::Command {
    use clap::CommandFactory as _;
    let flags: Vec<clap::Arg> = <Conn as Args>::augment_args(clap::Command::new("conn"))
        .get_arguments()
        .map(|a| a.clone().global(false).hide(true))
        .collect();
    NO_CONNECTION.iter().fold(Cli::command(), |cli, name| {
        cli.mut_subcommand(name, |sub| sub.args(flags.iter().cloned()))
    })
}

/// Parse the command line, and exit with a usage message on a mistake.
pub fn parse() -> Cli {
    parse_from(std::env::args_os()).unwrap_or_else(|e| e.exit())
}

/// Parse `argv`. A command in [`NO_CONNECTION`] refuses the connection flags given on its
/// command line, rather than ignore them (`dev --nats-address h:5222` would otherwise run on
/// 4222); their env vars are no mistake (a shell that loaded dev's keys.env has them).
pub fn parse_from<I, T>(argv: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::{parser::ValueSource, FromArgMatches as _};
    let mut command = command();
    let matches = command.try_get_matches_from_mut(argv)?;
    if let Some((name, sub)) = matches.subcommand() {
        let typed = |id: &clap::Id| {
            [&matches, sub]
                .iter()
                .any(|m| m.value_source(id.as_str()) == Some(ValueSource::CommandLine))
        };
        let given: Vec<String> = Conn::flags()
            .into_iter()
            .filter(|(id, _)| typed(id))
            .map(|(_, long)| long)
            .collect();
        if NO_CONNECTION.contains(&name) && !given.is_empty() {
            let why = match name {
                "dev" => "runs its own NATS server (choose its port with --nats-port)",
                _ => "makes no NATS connection",
            };
            return Err(command.error(
                clap::error::ErrorKind::ArgumentConflict,
                format!(
                    "`piggybank {name}` {why}: {} does not apply",
                    given.join(", ")
                ),
            ));
        }
    }
    Cli::from_arg_matches(&matches)
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
    let Cli { conn, command, .. } = cli;
    let conn = &conn;
    let done: anyhow::Result<()> = match command.ungrouped() {
        Command::Secret(_) | Command::Mapping(_) | Command::Operator(_) => Err(anyhow::anyhow!(
            "a command group is not a command: see --help"
        )),
        Command::Run(args) => {
            let config = args.into_config(conn)?;
            init_metrics();
            server::run(config, server::shutdown_signal()).await?;
            Ok(())
        }
        Command::Dev(args) => {
            init_metrics();
            dev::run(args).await
        }
        Command::Keygen(args) => keygen::run(args),
        Command::Completions(args) => completions::run(args),
        Command::Rekey(args) => rekey::rekey(args, conn).await,
        Command::Backup(args) => backup::backup(args, conn).await,
        Command::Restore(args) => backup::restore(args, conn).await,
        Command::Audit(args) => audit::run(args, conn).await,
        Command::NatsConfig(args) => nats_config::run(args),
        Command::Init(args) => database::init(args, conn).await,
        Command::Unlock(args) => database::unlock(args, conn).await,
        Command::Lock(args) => database::lock(args, conn).await,
        Command::Rotate(args) => database::rotate(args, conn).await,
        Command::Status(args) => return database::status(args, conn).await,
        Command::Put(args) => put::put(args, conn).await,
        Command::Get(args) => get::get(args, conn).await,
        Command::Delete(args) => delete(args, conn).await,
        Command::List(args) => list(args, conn).await,
        Command::AddMapping(args) => mapping::add(args, conn).await,
        Command::RemoveMapping(args) => mapping::remove(args, conn).await,
        Command::Mappings(args) => mapping::list(args, conn).await,
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

/// `delete`: the secret and all its versions.
async fn delete(args: NameArgs, conn: &Conn) -> anyhow::Result<()> {
    args.target
        .client(conn)
        .await?
        .delete_secret(&args.name)
        .await?;
    if args.output.json() {
        return Output::print_json(&serde_json::json!({
            "name": args.name,
            "deleted": true,
        }));
    }
    println!("Secret '{}' deleted", printable(&args.name));
    Ok(())
}

pub(crate) fn zeroized(seeds: Vec<String>) -> Vec<Zeroizing<String>> {
    seeds.into_iter().map(Zeroizing::new).collect()
}

async fn list(args: ListArgs, conn: &Conn) -> anyhow::Result<()> {
    let secrets = args
        .target
        .client(conn)
        .await?
        .list_secrets(&args.prefix)
        .await?;
    if args.output.json() {
        return Output::print_json(&secrets);
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
    fn connection_flags_are_taken_before_or_after_any_subcommand() {
        let key = nkeys::KeyPair::new_module().public_key();
        let commands: [&[&str]; 7] = [
            &["run"],
            &["put", "db"],
            &["get", "db"],
            &["add-mapping", &key, "--secret", "db"],
            &["remove-mapping", &key, "--secret", "db"],
            &["list"],
            &["status"],
        ];
        for command in commands {
            let before = ["piggybank", "--nats-address", "h:1"];
            let after = ["--nats-creds-file", "/c"];
            let all_after = ["--nats-address", "h:1", "--nats-creds-file", "/c"];
            for argv in [
                [&before[..], command, &after[..]].concat(),
                [&["piggybank"][..], command, &all_after[..]].concat(),
            ] {
                let cli = parse_from(&argv).map_err(|e| e.to_string());
                let cli = cli.unwrap_or_else(|e| panic!("{argv:?}: {e}"));
                assert_eq!(cli.conn.nats_address.as_deref(), Some("h:1"), "{argv:?}");
                assert_eq!(
                    cli.conn.nats_creds_file.as_deref(),
                    Some(std::path::Path::new("/c")),
                    "{argv:?}"
                );
            }
        }
        // A certificate needs its key, and a user a password, wherever each is written.
        for argv in [
            vec!["piggybank", "--tls-cert", "/c.pem", "list"],
            vec!["piggybank", "list", "--tls-cert", "/c.pem"],
            vec!["piggybank", "list", "--nats-user", "u"],
            vec!["piggybank", "--nats-password", "p", "run"],
        ] {
            let cli = parse_from(&argv).unwrap();
            assert!(cli.conn.resolve().is_err(), "{argv:?}");
        }
        for argv in [
            vec![
                "piggybank",
                "--tls-cert",
                "/c.pem",
                "list",
                "--tls-key",
                "/k",
            ],
            vec![
                "piggybank",
                "--nats-password",
                "p",
                "run",
                "--nats-user",
                "u",
            ],
        ] {
            let cli = parse_from(&argv).unwrap();
            assert!(cli.conn.resolve().is_ok(), "{argv:?}");
        }
    }

    #[test]
    fn commands_that_make_no_connection_refuse_connection_flags_on_their_command_line() {
        for argv in [
            vec!["piggybank", "dev", "--nats-address", "127.0.0.1:5222"],
            vec!["piggybank", "--nats-address", "127.0.0.1:5222", "dev"],
            vec![
                "piggybank",
                "nats-config",
                "--dir",
                "d",
                "--nats-nkey",
                "/k",
            ],
            vec!["piggybank", "keygen", "admin", "--context", "prod"],
        ] {
            let err = parse_from(&argv).err().expect("refused").to_string();
            assert!(err.contains("does not apply"), "{argv:?}: {err}");
        }
        let err = parse_from(["piggybank", "dev", "--nats-address", "h:5222"])
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("--nats-port"), "{err}");
        // The positive control: the same commands without them.
        for argv in [
            vec!["piggybank", "dev"],
            vec!["piggybank", "nats-config", "--dir", "d"],
            vec!["piggybank", "keygen", "admin"],
        ] {
            assert!(parse_from(&argv).is_ok(), "{argv:?}");
        }
    }

    #[test]
    fn the_transit_key_is_one_flag_on_put_init_and_unlock_and_the_old_name_still_works() {
        for command in ["put", "init", "unlock"] {
            let mut argv = vec!["piggybank", command];
            if command == "put" {
                argv.push("name");
            }
            for flag in ["-t", "--transit-xkey", "--transit-xkey-seed"] {
                let mut argv = argv.clone();
                argv.extend([flag, "XPUB"]);
                assert!(parse_from(&argv).is_ok(), "{argv:?}");
            }
            let help = Cli::command()
                .find_subcommand_mut(command)
                .expect("a command")
                .render_help()
                .to_string();
            assert!(
                help.contains("-t, --transit-xkey <XKEY>"),
                "{command}: {help}"
            );
            assert!(
                !help.contains("--transit-xkey-seed"),
                "{command}: the alias is hidden"
            );
        }
    }

    /// Commands with no result of their own to format: servers log (`--log-format`), `get`
    /// prints the value itself, `completions` a script.
    const NO_OUTPUT_FORMAT: &[&str] = &["run", "dev", "completions"];

    /// Every subcommand, at any depth, with the words that call it.
    fn every_subcommand() -> Vec<(Vec<String>, clap::Command)> {
        let mut top = command();
        top.build();
        let mut found = Vec::new();
        let mut todo: Vec<(Vec<String>, clap::Command)> = top
            .get_subcommands()
            .filter(|c| c.get_name() != "help")
            .map(|c| (vec![c.get_name().to_string()], c.clone()))
            .collect();
        while let Some((path, sub)) = todo.pop() {
            for child in sub.get_subcommands().filter(|c| c.get_name() != "help") {
                let mut words = path.clone();
                words.push(child.get_name().to_string());
                todo.push((words, child.clone()));
            }
            found.push((path, sub));
        }
        found
    }

    #[test]
    fn every_subcommand_has_help_one_nats_heading_and_an_output_format() {
        let all = every_subcommand();
        assert!(all.len() >= 36, "the walk found {}", all.len());
        for (path, sub) in all {
            let name = path.join(" ");
            // --help succeeds (clap answers it with the help, as an "error" of kind DisplayHelp).
            let argv = std::iter::once("piggybank".to_string())
                .chain(path.iter().cloned())
                .chain(["--help".to_string()]);
            let shown = command().try_get_matches_from(argv).err();
            assert_eq!(
                shown.map(|e| e.kind()),
                Some(clap::error::ErrorKind::DisplayHelp),
                "{name}"
            );
            let help = sub.clone().render_long_help().to_string();
            let headings = help.matches(&format!("{}:", conn::HEADING)).count();
            let leaf = sub.get_subcommands().next().is_none();
            let connects = !NO_CONNECTION.contains(&path[0].as_str());
            assert_eq!(headings, usize::from(connects), "{name}: {help}");
            // Placeholders are upper case: <NAME>, never <name> (a literal in brackets, as
            // `APP=SECRET[:rw]`'s, is not a placeholder).
            for arg in sub.get_arguments() {
                for value in arg.get_value_names().into_iter().flatten() {
                    let placeholder = value.split('[').next().unwrap_or_default();
                    assert!(
                        !placeholder.chars().any(|c| c.is_lowercase()),
                        "{name}: <{value}>"
                    );
                }
            }
            let command = path.last().map_or("", String::as_str);
            if !leaf || NO_OUTPUT_FORMAT.contains(&command) {
                continue;
            }
            let output = sub.get_arguments().find(|a| a.get_long() == Some("output"));
            let output = output.unwrap_or_else(|| panic!("{name} has no -o/--output"));
            assert_eq!(output.get_short(), Some('o'), "{name}");
            let formats: Vec<String> = output
                .get_possible_values()
                .iter()
                .map(|v| v.get_name().to_string())
                .collect();
            assert_eq!(formats, ["text", "json"], "{name}");
        }
    }

    /// `run`'s config, from its flags and the global connection flags.
    fn run_config(cli: Cli) -> anyhow::Result<crate::server::RunConfig> {
        let Cli { conn, command, .. } = cli;
        let Command::Run(args) = command else {
            panic!("not run")
        };
        args.into_config(&conn)
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
        let c = run_config(cli).unwrap();
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
        let c = run_config(cli).unwrap();
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
        assert_eq!(c.nats_address, crate::config::DEFAULT_NATS_ADDRESS);
        let cli = Cli::try_parse_from(["piggybank", "run", "--js-domain", "a.b"]).unwrap();
        let Err(err) = run_config(cli) else {
            panic!("a.b is not a domain")
        };
        assert!(err.to_string().contains("\"a.b\" is invalid"), "{err}");
        // A certificate needs its key, on every command that connects.
        for command in [
            &["run"][..],
            &["list"],
            &["get", "x"],
            &["status"],
            &["rekey", "-e", "SX"],
        ] {
            let argv = [&["piggybank"][..], command, &["--tls-cert", "/c.pem"]].concat();
            let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
            let err = cli.conn.resolve().err().expect("refused").to_string();
            assert!(err.contains("--tls-key"), "{command:?}: {err}");
        }
    }

    #[test]
    fn run_takes_admin_keys_and_clients_a_seed_file() {
        let cli = Cli::try_parse_from(["piggybank", "run", "--admin-keys", "UA,UB"]).unwrap();
        assert_eq!(run_config(cli).unwrap().admin_keys, ["UA", "UB"]);
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
