//! `piggybank put NAME`: store a value, read from `--string`, `--binary FILE` or stdin (never
//! argv by default: it leaks into shell history and `/proc`), sealed to the backend's transit
//! key on the way.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use zeroize::Zeroizing;

use super::{printable, transit, Conn, Output, Target};
use crate::config::env;
use crate::store::envelope::SecretValue;

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
    #[command(flatten)]
    pub transit: transit::TransitKey,
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub output: Output,
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

pub(super) async fn put(mut args: PutArgs, conn: &Conn) -> anyhow::Result<()> {
    let value = read_value(&mut args)?;
    let transit = args.transit.key()?;
    let client = args.target.client(conn).await?;
    let revision = client
        .put_secret(&args.name, value, args.version, transit.as_ref())
        .await?;
    if args.output.json() {
        return Output::print_json(&serde_json::json!({
            "name": args.name,
            "version": revision,
        }));
    }
    println!(
        "Secret '{}' put successfully (version {revision})",
        printable(&args.name)
    );
    Ok(())
}
