//! Files that hold secrets or keys: written so that only their owner can read them.
//!
//! Opening an existing file with `mode(0o600)` keeps that file's mode (the mode applies only
//! when the file is created), so a secret written over a world-readable file would stay
//! world-readable. Instead the bytes go to a new file in the same directory, created
//! exclusively with mode 0600 and checked, which then replaces the target by `rename`: the
//! target ends up 0600 whatever was there, or nothing is written at all.

use std::io::Write;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use anyhow::{bail, Context};

/// The mode of every file piggybank writes a secret or a key to.
pub(crate) const PRIVATE_MODE: u32 = 0o600;

/// Write `bytes` to `path`, readable and writable only by its owner, replacing what was there.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut pending = PendingFile::create(path)?;
    pending
        .file
        .write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))?;
    pending.persist()
}

/// A new file beside the target, created exclusively with mode 0600, that replaces the
/// target only when [`PendingFile::persist`] is called; dropped before that, it is removed.
/// [`write_private`] writes bytes held in memory through it; a backup streams into it.
pub(crate) struct PendingFile {
    temp: PathBuf,
    target: PathBuf,
    pub file: std::fs::File,
    persisted: bool,
}

impl PendingFile {
    pub fn create(target: &Path) -> anyhow::Result<Self> {
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
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, PRIVATE_MODE);
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
            let private = std::fs::Permissions::from_mode(PRIVATE_MODE);
            file.set_permissions(private)?;
            let mode = file.metadata()?.permissions().mode() & 0o777;
            if mode != PRIVATE_MODE {
                bail!(
                    "refusing to write {}: its mode would be {mode:o}, not 600",
                    pending.target.display()
                );
            }
        }
        Ok(pending)
    }

    /// Flush to disk and put the file in place of the target.
    pub(crate) fn persist(mut self) -> anyhow::Result<()> {
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

/// The first line of `path` that is neither empty nor a `#` comment (a seed, a key).
/// Refused unless only the owner may read and write the file; `what` names it in errors,
/// which never show its contents.
pub(crate) fn read_private_line(path: &Path, what: &str) -> anyhow::Result<Zeroizing<String>> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)
        .with_context(|| format!("cannot open the {what} {}", path.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("cannot read the {what} {}", path.display()))?;
    if !meta.is_file() {
        anyhow::bail!("the {what} {} is not a file", path.display());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            anyhow::bail!(
                "the {what} {path} has mode {mode:04o}: others may read it; it must be \
                 readable by its owner only (chmod 600 {path})",
                path = path.display()
            );
        }
    }
    let mut text = Zeroizing::new(String::new());
    file.read_to_string(&mut text)
        .with_context(|| format!("cannot read the {what} {}", path.display()))?;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| Zeroizing::new(l.to_string()));
    line.with_context(|| format!("the {what} {} holds no key", path.display()))
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_new_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        write_private(&path, b"v").unwrap();
        assert_eq!(
            (mode(&path), std::fs::read(&path).unwrap()),
            (0o600, b"v".to_vec())
        );
    }

    #[test]
    fn an_existing_world_readable_file_ends_up_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, b"old contents that are longer").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, b"new").unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file is left behind");
    }

    #[test]
    fn a_directory_is_refused_and_nothing_is_left() {
        let dir = tempfile::tempdir().unwrap();
        assert!(write_private(dir.path(), b"v").is_err());
        let sub = dir.path().join("d");
        std::fs::create_dir(&sub).unwrap();
        assert!(write_private(&sub, b"v").is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
