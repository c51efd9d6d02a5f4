//! `piggybank keygen`: the keys a deployment needs, made locally. `transit` and `data` are
//! curve xkeys (seeds `SX...`: `TRANSIT_XKEY_SEED`, `ENCRYPTION_XKEY_SEED`); `admin` is an
//! nkey user key (seed `SU...`) whose public half goes in the backend's `--admin-keys`.
//!
//! The seed goes to stdout, or with `--out FILE` into a new file of mode 0600 (never over
//! an existing one) while stdout gets the public key. A seed is never logged and never put in
//! an error; what to do with it goes to stderr.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use zeroize::Zeroizing;

use crate::admin_auth::AdminSigner;
use crate::config::env;

#[derive(Args)]
pub struct KeygenArgs {
    /// What the key is for: transit or data (curve xkeys, SX...), admin (an nkey user key,
    /// SU..., that signs admin requests)
    #[arg(value_enum)]
    pub kind: KeyKind,
    /// Write the seed into this new file (mode 0600; an existing file is not overwritten) and
    /// print only the public key
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub output: super::Output,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum KeyKind {
    /// The backend's transit key (TRANSIT_XKEY_SEED); hosts cache its public half
    Transit,
    /// A data key (ENCRYPTION_XKEY_SEED): it opens every value stored with it
    Data,
    /// An admin key: the backend takes its public key in --admin-keys
    Admin,
}

/// A fresh seed of `kind` and its public key.
fn generate(kind: KeyKind) -> anyhow::Result<(Zeroizing<String>, String)> {
    Ok(match kind {
        KeyKind::Transit | KeyKind::Data => {
            let seed = crate::keys::generate_seed();
            let public = crate::keys::xkey_from_seed(&seed, "new key")?.public_key();
            (seed, public)
        }
        KeyKind::Admin => {
            let seed = AdminSigner::generate_seed();
            let public = AdminSigner::from_seed(&seed)?.public_key().to_string();
            (seed, public)
        }
    })
}

/// How to use a seed of `kind` kept in `file`.
fn usage(kind: KeyKind, file: &str, public: &str) -> String {
    match kind {
        KeyKind::Transit => format!(
            "run the backend with {}=$(cat {file}); init and unlock pin it with -t {public}",
            env::TRANSIT_XKEY_SEED
        ),
        KeyKind::Data => format!(
            "run the backend with {}=$(cat {file}); losing it loses every value it sealed",
            env::ENCRYPTION_XKEY_SEED
        ),
        KeyKind::Admin => format!(
            "run the backend with --admin-keys {public}; client commands sign with \
             --admin-seed-file {file} ({})",
            env::PIGGYBANK_ADMIN_SEED_FILE
        ),
    }
}

/// Create `path` (mode 0600) with `body`; fails if it exists.
fn create_new_private(path: &Path, body: &[u8]) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).with_context(|| {
        format!(
            "cannot create {} (an existing file is not overwritten)",
            path.display()
        )
    })?;
    file.write_all(body)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

pub fn run(args: KeygenArgs) -> anyhow::Result<()> {
    let (seed, public) = generate(args.kind)?;
    let kind = args
        .kind
        .to_possible_value()
        .map(|v| v.get_name().to_string());
    match &args.out {
        Some(path) => {
            let body = Zeroizing::new(format!("{}\n", seed.as_str()));
            create_new_private(path, body.as_bytes())?;
            let file = super::dev::shell_word(&path.display().to_string());
            if args.output.json() {
                super::Output::print_json(&serde_json::json!({
                    "kind": kind,
                    "public_key": public,
                    "file": path,
                }))?;
            } else {
                println!("{public}");
            }
            eprintln!(
                "The seed is in {} (mode 0600); its public key is {}. Use it: {}",
                path.display(),
                if args.output.json() {
                    "in the JSON"
                } else {
                    "above"
                },
                usage(args.kind, &file, &public)
            );
        }
        None => {
            let mut out = std::io::stdout().lock();
            if args.output.json() {
                // The seed is the output here, as in text mode: it goes to stdout only.
                // Written by hand, so the seed is in no buffer that is not zeroized (a seed
                // is base32: nothing in it needs escaping).
                let document = Zeroizing::new(format!(
                    "{{\n  \"kind\": {},\n  \"public_key\": {},\n  \"seed\": \"{}\"\n}}",
                    serde_json::to_string(&kind)?,
                    serde_json::to_string(&public)?,
                    seed.as_str()
                ));
                out.write_all(document.as_bytes())?;
            } else {
                out.write_all(seed.as_bytes())?;
            }
            out.write_all(b"\n")?;
            out.flush()?;
            eprintln!(
                "public key: {public}\nKeep the seed above secret (--out FILE writes it into a \
                 file of mode 0600 instead). Use it: {}",
                usage(args.kind, "FILE", &public)
            );
        }
    }
    Ok(())
}
