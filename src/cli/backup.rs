//! `backup` and `restore`: the buckets of one backend to one file and back (`crate::backup`
//! has the format). Both open the buckets directly, as `get` and `rekey` do: they need NATS
//! permissions on the buckets, not an admin signature, and no key.
//!
//! The backup goes to a new file beside FILE, created exclusively with mode 0600 (as
//! `files::write_private` does), which replaces FILE by `rename` only once it is complete:
//! a failed backup leaves FILE as it was and no partial file behind. `restore` verifies the
//! whole file before it connects.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;

use super::Conn;
use crate::backup::{self, Buckets, Destination, VerifiedBackup};
use crate::config;

#[derive(Args)]
pub struct BackupArgs {
    /// The file to write (mode 0600); it appears only once the backup is complete
    #[arg(short = 'o', long = "out", value_name = "FILE")]
    pub out: PathBuf,
    /// The name of the backend (its -n/--name), which names its mappings and key record buckets
    #[arg(short = 'n', long = "name", default_value = config::DEFAULT_BACKEND_NAME)]
    pub backend_name: String,
    /// The KV bucket secrets are stored in
    #[arg(short = 'b', long, default_value = config::DEFAULT_SECRETS_BUCKET)]
    pub secrets_bucket: String,
    #[command(flatten)]
    pub conn: Conn,
}

#[derive(Args)]
pub struct RestoreArgs {
    /// A file `piggybank backup` wrote
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The name of the backend to restore into (its -n/--name)
    #[arg(short = 'n', long = "name", default_value = config::DEFAULT_BACKEND_NAME)]
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
    #[command(flatten)]
    pub conn: Conn,
}

/// `backup --out FILE`.
pub async fn backup(args: BackupArgs) -> anyhow::Result<()> {
    let (nats, js_domain) = args.conn.connect_jetstream("piggybank backup").await?;
    let buckets = Buckets::of(&args.backend_name, &args.secrets_bucket);
    let started = Instant::now();
    let mut file = PendingFile::create(&args.out)?;
    let header = backup::backup(
        &nats,
        js_domain.as_deref(),
        &buckets,
        &args.backend_name,
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
    println!(
        "backup: {} secrets ({} versions), {} mappings, key record: {}; {} bytes in {:.1} s \
         -> {}",
        header.secrets,
        header.versions,
        header.mappings,
        if header.key_record { "yes" } else { "no" },
        size,
        started.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(())
}

/// `restore FILE`: verify all of it, then load it into empty buckets.
pub async fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let file =
        File::open(&args.file).with_context(|| format!("cannot open {}", args.file.display()))?;
    let verified = VerifiedBackup::open(file).with_context(|| {
        format!(
            "{} cannot be restored; nothing was written",
            args.file.display()
        )
    })?;
    let header = verified.header().clone();
    if header.backend != args.backend_name || header.secrets_bucket != args.secrets_bucket {
        eprintln!(
            "note: the backup is of backend {:?} (secrets bucket {:?}); restoring into backend \
             {:?} (secrets bucket {:?})",
            header.backend, header.secrets_bucket, args.backend_name, args.secrets_bucket
        );
    }
    let (nats, js_domain) = args.conn.connect_jetstream("piggybank restore").await?;
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
    println!(
        "restore: {} secrets ({} versions), {} mappings, key record: {}; in {:.1} s (backup \
         made {}){}",
        restored.secrets,
        restored.versions,
        restored.mappings,
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

/// A new file beside the target, created exclusively with mode 0600, that replaces the
/// target only when [`PendingFile::persist`] is called; dropped before that, it is removed.
/// (`files::write_private` does the same for bytes held in memory; a backup is streamed.)
struct PendingFile {
    temp: PathBuf,
    target: PathBuf,
    file: File,
    persisted: bool,
}

impl PendingFile {
    fn create(target: &Path) -> anyhow::Result<Self> {
        if target.is_dir() {
            bail!("cannot write {}: it is a directory", target.display());
        }
        let name = target
            .file_name()
            .with_context(|| format!("cannot write {}: not a file name", target.display()))?;
        let mut temp = std::ffi::OsString::from(".");
        temp.push(name);
        temp.push(format!(".{}.{:016x}.tmp", std::process::id(), tag()));
        let temp = target.with_file_name(temp);
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, super::files::PRIVATE_MODE);
        let file = options
            .open(&temp)
            .with_context(|| format!("cannot create {}", temp.display()))?;
        let pending = Self {
            temp,
            target: target.to_path_buf(),
            file,
            persisted: false,
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let file = &pending.file;
            // The umask may have taken bits away; set exactly 0600, then check it holds.
            let private = std::fs::Permissions::from_mode(super::files::PRIVATE_MODE);
            file.set_permissions(private)?;
            let mode = file.metadata()?.permissions().mode() & 0o777;
            if mode != super::files::PRIVATE_MODE {
                bail!(
                    "refusing to write {}: its mode would be {mode:o}, not 600",
                    pending.target.display()
                );
            }
        }
        Ok(pending)
    }

    /// Flush to disk and put the file in place of the target.
    fn persist(mut self) -> anyhow::Result<()> {
        self.file
            .sync_all()
            .with_context(|| format!("cannot write {}", self.temp.display()))?;
        std::fs::rename(&self.temp, &self.target)
            .with_context(|| format!("cannot replace {}", self.target.display()))?;
        self.persisted = true;
        Ok(())
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.persisted {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// A tag that keeps temporary names apart (the file is created exclusively, so a collision
/// fails rather than overwrites).
fn tag() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}
