//! `backup` and `restore`: the buckets of one backend to one file and back (`crate::backup`
//! has the format). Both open the buckets directly, as `get` and `rekey` do: they need NATS
//! permissions on the buckets, and no data key.
//!
//! A backup is signed with an admin key (`PIGGYBANK_ADMIN_SEED` or `--admin-seed-file`, as
//! signed admin requests are), and `restore` reads only a file signed by one of the admin
//! keys it is given (`--admin-keys`, env `ADMIN_KEYS`: the list the backend runs with), or
//! any file with `--unauthenticated`, which it says on stderr.
//!
//! `backup --out FILE` names the file it writes as `keygen --out` does (`-o` is the output
//! format on every command); `restore FILE` reads it.
//!
//! The backup goes to a new file beside FILE, created exclusively with mode 0600 (as
//! `files::write_private` does), which replaces FILE by `rename` only once it is complete:
//! a failed backup leaves FILE as it was and no partial file behind. `restore` verifies the
//! whole file before it connects.

use std::fs::File;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;

use super::admin_seed::AdminSeed;
use super::files::PendingFile;
use super::{Conn, Output};
use crate::admin_auth::parse_admin_keys;
use crate::backup::{self, Destination, Trust, VerifiedBackup};
use crate::config::{self, env};
use crate::store::Buckets;

#[derive(Args)]
pub struct BackupArgs {
    /// The file to write (mode 0600); it appears only once the backup is complete. (Before
    /// -o meant the output format, it was this flag's short form: now write --out)
    #[arg(long = "out", value_name = "FILE")]
    pub out: PathBuf,
    /// The name of the backend (its -n/--name), which names its mappings and key record buckets
    #[arg(short = 'n', long = "name", value_name = "BACKEND_NAME", default_value = config::DEFAULT_BACKEND_NAME)]
    pub backend_name: String,
    /// The KV bucket secrets are stored in
    #[arg(short = 'b', long, default_value = config::DEFAULT_SECRETS_BUCKET)]
    pub secrets_bucket: String,
    /// The admin key the backup is signed with (required)
    #[command(flatten)]
    pub admin_seed: AdminSeed,
    #[command(flatten)]
    pub output: Output,
}

#[derive(Args)]
pub struct RestoreArgs {
    /// A file `piggybank backup` wrote
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The name of the backend to restore into (its -n/--name)
    #[arg(short = 'n', long = "name", value_name = "BACKEND_NAME", default_value = config::DEFAULT_BACKEND_NAME)]
    pub backend_name: String,
    /// The KV bucket to restore secrets into
    #[arg(short = 'b', long, default_value = config::DEFAULT_SECRETS_BUCKET)]
    pub secrets_bucket: String,
    /// Versions kept per secret by a secrets bucket restore creates [default: as the
    /// backed-up bucket]
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..=64))]
    pub max_secret_history: Option<i64>,
    /// Replicas of the buckets restore creates (on a NATS cluster)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub replicas: u16,
    /// Write on top of buckets that are not empty: secrets get the backup's versions as
    /// newer versions, mapped entities get the backup's names, the key record is replaced
    #[arg(long)]
    pub force: bool,
    /// Admin public keys (U..., comma-separated) whose signature on a backup is trusted: the
    /// backend's --admin-keys
    #[arg(long, env = env::ADMIN_KEYS, value_delimiter = ',')]
    pub admin_keys: Vec<String>,
    /// Restore a backup whose signer is not checked, or one made before backups were
    /// signed (format version 1): only a file you know has not been changed
    #[arg(long)]
    pub unauthenticated: bool,
    #[command(flatten)]
    pub output: Output,
}

/// `backup --out FILE`.
pub async fn backup(args: BackupArgs, conn: &Conn) -> anyhow::Result<()> {
    let Some(signer) = args.admin_seed.signer()? else {
        anyhow::bail!(
            "a backup is signed with an admin key, so that restore can tell it was not \
             changed: set {} or --admin-seed-file to an admin nkey seed (SU...; its public \
             key goes in the backend's --admin-keys and restore's)",
            env::PIGGYBANK_ADMIN_SEED
        );
    };
    let (nats, js_domain) = conn.connect_jetstream("piggybank backup").await?;
    let buckets = Buckets::of(&args.backend_name, &args.secrets_bucket);
    let started = Instant::now();
    let mut file = PendingFile::create(&args.out)?;
    let header = backup::backup(
        &nats,
        js_domain.as_deref(),
        &buckets,
        &args.backend_name,
        &signer,
        &mut file.file,
        |versions| {
            if versions % 10_000 == 0 {
                eprintln!("backup: {versions} versions");
            }
        },
    )
    .await?;
    file.persist()?;
    let size = std::fs::metadata(&args.out).map_or(0, |m| m.len());
    if args.output.json() {
        return Output::print_json(&serde_json::json!({
            "file": args.out,
            "bytes": size,
            "seconds": started.elapsed().as_secs_f64(),
            "secrets": header.secrets,
            "versions": header.versions,
            "mappings": header.mappings,
            "application_grants": header.app_mappings,
            "key_record": header.key_record,
            "signer": header.signer,
        }));
    }
    println!(
        "backup: {} secrets ({} versions), {} mappings, {} application grants, key record: {}; \
         {} bytes in {:.1} s, signed by {} -> {}",
        header.secrets,
        header.versions,
        header.mappings,
        header.app_mappings,
        if header.key_record { "yes" } else { "no" },
        size,
        started.elapsed().as_secs_f64(),
        header.signer,
        args.out.display()
    );
    Ok(())
}

/// `restore FILE`: verify all of it, then load it into empty buckets.
pub async fn restore(args: RestoreArgs, conn: &Conn) -> anyhow::Result<()> {
    let started = Instant::now();
    let file =
        File::open(&args.file).with_context(|| format!("cannot open {}", args.file.display()))?;
    let admin_keys = parse_admin_keys(&args.admin_keys)?;
    let trust = match args.unauthenticated {
        true => Trust::Unauthenticated,
        false => Trust::AdminKeys(&admin_keys),
    };
    let verified = VerifiedBackup::open(file, trust).with_context(|| {
        format!(
            "{} cannot be restored; nothing was written",
            args.file.display()
        )
    })?;
    let header = verified.header().clone();
    let verified_signer = verified.signed_by().map(|k| k.to_string());
    if verified.signed_by().is_none() {
        eprintln!(
            "warning: --unauthenticated: the backup's signer was not checked; restoring what \
             the file says"
        );
    }
    if header.backend != args.backend_name || header.secrets_bucket != args.secrets_bucket {
        eprintln!(
            "note: the backup is of backend {:?} (secrets bucket {:?}); restoring into backend \
             {:?} (secrets bucket {:?})",
            header.backend, header.secrets_bucket, args.backend_name, args.secrets_bucket
        );
    }
    let (nats, js_domain) = conn.connect_jetstream("piggybank restore").await?;
    let destination = Destination {
        buckets: Buckets::of(&args.backend_name, &args.secrets_bucket),
        history: args.max_secret_history,
        replicas: usize::from(args.replicas),
        force: args.force,
    };
    let restored = backup::restore(
        &nats,
        js_domain.as_deref(),
        &destination,
        verified,
        |done, total| {
            if done % 10_000 == 0 && done < total {
                eprintln!("restore: {done}/{total}");
            }
        },
    )
    .await?;
    if args.output.json() {
        return Output::print_json(&serde_json::json!({
            "file": args.file,
            "seconds": started.elapsed().as_secs_f64(),
            "secrets": restored.secrets,
            "versions": restored.versions,
            "mappings": restored.mappings,
            "application_grants": restored.app_mappings,
            "key_record": restored.key_record,
            "backup_created_at": header.created_at,
            "created": restored.created,
            "signed_by": verified_signer,
        }));
    }
    println!(
        "restore: {} secrets ({} versions), {} mappings, {} application grants, key record: {}; \
         in {:.1} s (backup made {}){}",
        restored.secrets,
        restored.versions,
        restored.mappings,
        restored.app_mappings,
        if restored.key_record { "yes" } else { "no" },
        started.elapsed().as_secs_f64(),
        header.created_at,
        if restored.created.is_empty() {
            String::new()
        } else {
            format!("; created {}", restored.created.join(", "))
        }
    );
    Ok(())
}
