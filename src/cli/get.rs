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
//! Either way the value goes to stdout (a string with a newline after it, bytes as they are)
//! or to `-o FILE` (mode 0600), and nothing else goes to stdout.

use std::io::Write;
use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, ValueEnum};
use zeroize::Zeroizing;

use super::{write_private, zeroized, Target};
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
    /// Through the backend: its transit key (public key X..., or seed SX...); only a reply
    /// sealed from it is believed (anyone on the bus may answer first)
    #[arg(
        short = 't',
        long = "transit-xkey",
        alias = "transit-xkey-seed",
        env = env::TRANSIT_XKEY_SEED,
        hide_env_values = true
    )]
    pub transit_xkey: Option<String>,
    /// The version (revision) to read; the latest if absent
    #[arg(long = "secret-version")]
    pub version: Option<u64>,
    /// Fail unless the secret is of this kind
    #[arg(long)]
    pub kind: Option<Kind>,
    /// Write the value to this file (mode 0600) instead of stdout
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub target: Target,
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

pub async fn get(args: GetArgs) -> anyhow::Result<()> {
    let value = match args.encryption_xkey_seed.clone().map(Zeroizing::new) {
        Some(seed) => read_direct(&args, &seed).await?,
        None => read_through_backend(&args).await?,
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
    if let Some(path) = &args.output {
        write_private(path, value.as_bytes())?;
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
async fn read_direct(args: &GetArgs, seed: &Zeroizing<String>) -> anyhow::Result<SecretValue> {
    let previous = zeroized(args.previous_encryption_xkey_seeds.clone());
    let keys = server::keyring(seed, &previous)?;
    let (nats, js_domain) = args.target.conn.connect_jetstream("piggybank cli").await?;
    let (_, value) = client::read_direct(
        &nats,
        js_domain.as_deref(),
        &args.secrets_bucket,
        &keys,
        &args.name,
        args.version,
    )
    .await?;
    Ok(value)
}

/// `read_secret`, signed with the admin seed when one is given. When no backend answers
/// (or NATS cannot be reached), the error says how to read directly instead.
async fn read_through_backend(args: &GetArgs) -> anyhow::Result<SecretValue> {
    crate::store::validate_name(&args.name)?;
    let pin = match args.transit_xkey.as_deref() {
        Some(key) => Some(super::transit_xkey(key)?.public_key()),
        None => None,
    };
    // Without a backend to ask, say how to read without one.
    let unreachable = |e: &dyn std::fmt::Display| {
        anyhow::anyhow!(
            "{e}. get reads through the backend when no data key is given; {}",
            missing_data_key()
        )
    };
    let client = match args.target.client().await {
        Ok(client) => client,
        Err(e) => return Err(unreachable(&format!("{e:#}"))),
    };
    match client
        .read_secret(&args.name, args.version, pin.as_deref())
        .await
    {
        Ok((_, value)) => Ok(value),
        Err(e @ ClientError::NoBackend(_)) => Err(unreachable(&e)),
        Err(e) => Err(e.into()),
    }
}
