//! Where client commands get the admin key they sign with: `PIGGYBANK_ADMIN_SEED`, or a
//! file named by `--admin-seed-file` (env `PIGGYBANK_ADMIN_SEED_FILE`).
//!
//! The seed is never taken from argv (other users can read it in `/proc`). A seed file must
//! be readable by its owner only: mode 0600 (or stricter); a file others may read is
//! refused, as ssh refuses such a private key. The mode is checked on the opened file, so
//! the file checked is the file read. Giving both sources is an error rather than a silent
//! choice. With neither, requests go unsigned (a backend without `--admin-keys` takes them).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use zeroize::Zeroizing;

use crate::admin_auth::AdminSigner;
use crate::config::env;

#[derive(Args, Clone, Default)]
pub struct AdminSeed {
    /// A file (mode 0600) holding the admin nkey seed (SU...) to sign admin requests with;
    /// or set PIGGYBANK_ADMIN_SEED
    #[arg(long, env = env::PIGGYBANK_ADMIN_SEED_FILE, value_name = "FILE")]
    pub admin_seed_file: Option<PathBuf>,
}

impl AdminSeed {
    /// The signer for this command, if a seed was given.
    pub fn signer(&self) -> anyhow::Result<Option<AdminSigner>> {
        let from_env = std::env::var(env::PIGGYBANK_ADMIN_SEED)
            .ok()
            .map(Zeroizing::new)
            .filter(|s| !s.trim().is_empty());
        let file = self
            .admin_seed_file
            .as_deref()
            .filter(|p| !p.as_os_str().is_empty());
        let seed = match (from_env, file) {
            (Some(_), Some(_)) => bail!(
                "both {} and --admin-seed-file ({}) are set: give one admin key",
                env::PIGGYBANK_ADMIN_SEED,
                env::PIGGYBANK_ADMIN_SEED_FILE
            ),
            (Some(seed), None) => seed,
            (None, Some(path)) => read_seed_file(path)?,
            (None, None) => return Ok(None),
        };
        let signer = AdminSigner::from_seed(&seed).map_err(|e| {
            anyhow::anyhow!(
                "{e} (from {})",
                file.map_or_else(
                    || env::PIGGYBANK_ADMIN_SEED.to_string(),
                    |p| p.display().to_string()
                )
            )
        })?;
        Ok(Some(signer))
    }
}

/// The seed in `path`: its first line that is neither empty nor a `#` comment. Refused
/// unless only the owner may read and write the file.
pub(crate) fn read_seed_file(path: &Path) -> anyhow::Result<Zeroizing<String>> {
    super::files::read_private_line(path, "admin seed file")
}

/// The admin key in `path` (`admin.seed` of `dev` and of `nats-config`), made (mode 0600)
/// if the file does not exist.
pub(super) fn load_or_create(path: &Path) -> anyhow::Result<AdminSigner> {
    let seed = if path.exists() {
        read_seed_file(path)?
    } else {
        let seed = AdminSigner::generate_seed();
        let body = Zeroizing::new(format!(
            "# piggybank: the admin key (nkey user seed) client commands sign with (PIGGYBANK_ADMIN_SEED_FILE).\n{}\n",
            seed.as_str()
        ));
        super::write_private(path, body.as_bytes())?;
        seed
    };
    AdminSigner::from_seed(&seed).with_context(|| format!("in {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn seed_file(dir: &Path, mode: u32, contents: &str) -> PathBuf {
        let path = dir.join(format!("seed-{mode:o}"));
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_seed_file_others_can_read_is_refused_without_showing_the_seed() {
        let dir = tempfile::tempdir().unwrap();
        let seed = AdminSigner::generate_seed();
        for mode in [0o644, 0o640, 0o604, 0o660, 0o666] {
            let path = seed_file(dir.path(), mode, &seed);
            let err = read_seed_file(&path).unwrap_err().to_string();
            assert!(
                err.contains(&format!("{mode:04o}")) && err.contains("chmod 600"),
                "{err}"
            );
            assert!(!err.contains(seed.as_str()));
        }
        for mode in [0o600, 0o400] {
            let path = seed_file(dir.path(), mode, &format!("# admin\n\n{}\n", *seed));
            assert_eq!(read_seed_file(&path).unwrap().as_str(), seed.as_str());
        }
        let empty = seed_file(dir.path(), 0o600, "# nothing\n");
        assert!(read_seed_file(&empty)
            .unwrap_err()
            .to_string()
            .contains("holds no key"));
    }
}
