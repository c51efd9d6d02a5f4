//! `cargo run --release --example par -- <provider binary> <out.par.gz> <keys dir>`
//! (what `make par` runs): package the provider like `wash build` does, signing with an
//! account and a service key kept in `<keys dir>` (created, mode 0600, on first use).

use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use nkeys::KeyPair;

fn key(dir: &Path, file: &str, new: fn() -> KeyPair) -> anyhow::Result<KeyPair> {
    let path = dir.join(file);
    if let Ok(seed) = std::fs::read_to_string(&path) {
        return KeyPair::from_seed(seed.trim())
            .with_context(|| format!("bad seed in {}", path.display()));
    }
    let pair = new();
    let seed = zeroize::Zeroizing::new(pair.seed()?);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    std::io::Write::write_all(&mut f, seed.as_bytes())?;
    Ok(pair)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [binary, out, keys] = args.as_slice() else {
        anyhow::bail!("usage: par <provider binary> <out.par.gz> <keys dir>");
    };
    std::fs::create_dir_all(keys)?;
    let issuer = key(keys, "piggybank_account.nk", KeyPair::new_account)?;
    let subject = key(keys, "piggybank_service.nk", KeyPair::new_service)?;
    let bytes =
        std::fs::read(binary).with_context(|| format!("cannot read {}", binary.display()))?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    piggybank::provider::par::write(&bytes, &issuer, &subject, out).await?;
    println!(
        "wrote {} for {}",
        out.display(),
        piggybank::provider::par::host_target()
    );
    println!(
        "provider entity key (map its own keys to this in the bootstrap backend): {}",
        subject.public_key()
    );
    println!(
        "issuer (add to trusted issuers where needed): {}",
        issuer.public_key()
    );
    Ok(())
}
