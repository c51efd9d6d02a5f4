//! `piggybank rekey`: re-seal every secret with the current data key, reading the bucket
//! directly with the data key as `get -e` does.

use anyhow::bail;
use clap::Args;
use zeroize::Zeroizing;

use super::{zeroized, Conn, Output};
use crate::config::{self, env};
use crate::server;

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
    pub output: Output,
}

/// `rekey`: open the bucket directly (as `get` does) and re-seal every secret with the
/// current key, online; running it again resumes.
pub(super) async fn rekey(args: RekeyArgs, conn: &Conn) -> anyhow::Result<()> {
    let keys = server::keyring(
        &Zeroizing::new(args.encryption_xkey_seed),
        &zeroized(args.previous_encryption_xkey_seeds),
    )?;
    let (nats, js_domain) = conn.connect_jetstream("piggybank rekey").await?;
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
    if args.output.json() {
        let failed: Vec<_> = report
            .failed
            .iter()
            .map(|(name, why)| serde_json::json!({ "name": name, "error": why }))
            .collect();
        Output::print_json(&serde_json::json!({
            "total": report.total,
            "resealed": report.resealed,
            "already_current": report.already_current,
            "deleted_meanwhile": report.gone,
            "failed": failed,
            "data_key": keys.current().id(),
            "seconds": started.elapsed().as_secs_f64(),
        }))?;
    } else {
        println!(
            "rekey: {} secrets in {:.1} s: {} re-sealed with data key {}, {} already under \
             it, {} deleted meanwhile, {} failed",
            report.total,
            started.elapsed().as_secs_f64(),
            report.resealed,
            keys.current().id(),
            report.already_current,
            report.gone,
            report.failed.len()
        );
    }
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
