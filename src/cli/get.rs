//! `piggybank get NAME`: print one secret's value, by one of two roads.
//!
//! - **Through the backend** (no data key given: no `-e`, no `ENCRYPTION_XKEY_SEED`): the
//!   signed admin operation `read_secret`, as `vault kv get` reads. The operator holds an
//!   admin key, not the key to every secret; it works in sealed mode (once unlocked); every
//!   read is on the audit trail. The value comes back sealed to a one-time xkey made for the
//!   request (`crate::protocol::read_secret`); with `-t` (or `TRANSIT_XKEY_SEED`, which a
//!   dev `keys.env` sets) only a reply sealed from the backend's transit key is believed.
//! - **Directly** (a data key given): the bucket is read and opened here, as the sample's
//!   `get` does, so the sample's scripts keep working and recovery needs no backend.
//!
//! Either way the value goes to stdout (a string with a newline after it, bytes as they are;
//! with `-o json`, one document with its name, version and kind) or to `--out FILE` (mode
//! 0600), and nothing else goes to stdout.

use std::io::Write;
use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, ValueEnum};
use zeroize::Zeroizing;

use super::{write_private, zeroized, Conn, Output, Target};
use crate::client::{self, ClientError};
use crate::config::{self, env};
use crate::server;
use crate::store::envelope::SecretValue;

#[derive(Clone, Copy, ValueEnum)]
pub enum Kind {
    String,
    Binary,
}

#[derive(Args)]
pub struct GetArgs {
    /// The name of the secret
    pub name: String,
    /// The data key seed the backend runs with: read the bucket directly with it. Without
    /// one, get reads through the backend (a signed admin request)
    #[arg(short = 'e', long, env = env::ENCRYPTION_XKEY_SEED, hide_env_values = true)]
    pub encryption_xkey_seed: Option<String>,
    /// Seeds of earlier data keys (comma-separated), to read what they sealed (with -e)
    #[arg(long, env = env::PREVIOUS_ENCRYPTION_XKEY_SEEDS, value_delimiter = ',', hide_env_values = true)]
    pub previous_encryption_xkey_seeds: Vec<String>,
    /// The KV bucket secrets are stored in (with -e)
    #[arg(short = 'b', long, default_value = config::DEFAULT_SECRETS_BUCKET)]
    pub secrets_bucket: String,
    #[command(flatten)]
    pub transit: super::transit::TransitKey,
    /// The version (revision) to read; the latest if absent
    #[arg(long = "secret-version")]
    pub version: Option<u64>,
    /// Fail unless the secret is of this kind
    #[arg(long)]
    pub kind: Option<Kind>,
    /// Write the value to this file (mode 0600) instead of stdout
    #[arg(long = "out", value_name = "FILE")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub output: Output,
}

/// How to read without a backend: the data key's flag and env var, and where a dev store
/// keeps it.
pub(super) fn missing_data_key() -> String {
    format!(
        "to read the bucket directly instead, give the data key: pass \
         -e/--encryption-xkey-seed or set {} (a `piggybank dev` store keeps it in \
         .piggybank/keys.env: load it with `set -a; . .piggybank/keys.env; set +a`)",
        env::ENCRYPTION_XKEY_SEED
    )
}

pub async fn get(args: GetArgs, conn: &Conn) -> anyhow::Result<()> {
    let (version, value) = match args.encryption_xkey_seed.clone().map(Zeroizing::new) {
        Some(seed) => read_direct(&args, &seed, conn).await?,
        None => read_through_backend(&args, conn).await?,
    };
    match (args.kind, &value) {
        (Some(Kind::String), SecretValue::Binary(_)) => {
            bail!("secret is binary, but --kind string was requested")
        }
        (Some(Kind::Binary), SecretValue::String(_)) => {
            bail!("secret is a string, but --kind binary was requested")
        }
        _ => {}
    }
    if let Some(path) = &args.out {
        write_private(path, value.as_bytes())?;
        return Ok(());
    }
    if args.output.json() {
        let (kind, field, text) = match &value {
            SecretValue::String(s) => ("string", "value", Zeroizing::new(s.to_string())),
            SecretValue::Binary(b) => {
                use base64::Engine as _;
                let encoded = base64::engine::general_purpose::STANDARD.encode(b.as_slice());
                ("binary", "value_base64", Zeroizing::new(encoded))
            }
        };
        let mut document = serde_json::json!({
            "name": args.name,
            "version": version,
            "kind": kind,
        });
        document[field] = serde_json::Value::String(text.to_string());
        let printed = Zeroizing::new(serde_json::to_string_pretty(&document)?);
        let mut out = std::io::stdout().lock();
        out.write_all(printed.as_bytes())?;
        out.write_all(b"\n")?;
        out.flush()?;
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    out.write_all(value.as_bytes())?;
    if matches!(value, SecretValue::String(_)) {
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// The sample's road: open the bucket with the data key.
async fn read_direct(
    args: &GetArgs,
    seed: &Zeroizing<String>,
    conn: &Conn,
) -> anyhow::Result<(u64, SecretValue)> {
    let previous = zeroized(args.previous_encryption_xkey_seeds.clone());
    let keys = server::keyring(seed, &previous)?;
    let (nats, js_domain) = conn.connect_jetstream("piggybank cli").await?;
    Ok(client::read_direct(
        &nats,
        js_domain.as_deref(),
        &args.secrets_bucket,
        &keys,
        &args.name,
        args.version,
    )
    .await?)
}

/// `read_secret`, signed with the admin seed when one is given. When no backend answers
/// (or NATS cannot be reached), the error says how to read directly instead.
async fn read_through_backend(args: &GetArgs, conn: &Conn) -> anyhow::Result<(u64, SecretValue)> {
    crate::store::validate_name(&args.name)?;
    let pin = args.transit.public_key()?;
    // Without a backend to ask, say how to read without one.
    let unreachable = |e: &dyn std::fmt::Display| {
        anyhow::anyhow!(
            "{e}. get reads through the backend when no data key is given; {}",
            missing_data_key()
        )
    };
    let client = match args.target.client(conn).await {
        Ok(client) => client,
        Err(e) => return Err(unreachable(&format!("{e:#}"))),
    };
    match client
        .read_secret(&args.name, args.version, pin.as_deref())
        .await
    {
        Ok(read) => Ok(read),
        Err(e @ ClientError::NoBackend(_)) => Err(unreachable(&e)),
        Err(e) => Err(e.into()),
    }
}
