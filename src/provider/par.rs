//! The provider archive (`.par.gz`) a host loads: the provider binary for one target, and
//! claims signed by an account (issuer) for a service key (subject). This is what
//! `wash build` writes; it is here so a machine without `wash` can package the provider
//! (`make par`). The subject's public key (`V...`) is the provider's entity key: map the
//! provider's own keys to it in the backend that serves them.

use std::path::Path;

use nkeys::KeyPair;
use provider_archive::ProviderArchive;

#[derive(Debug, thiserror::Error)]
#[error("cannot write the provider archive: {0}")]
pub struct ParError(String);

/// The target name hosts look up: `{arch}-{os}` of the machine that runs the provider.
pub fn host_target() -> String {
    format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS)
}

/// Write `binary` (for [`host_target`]) to `out` as a gzipped, signed provider archive.
pub async fn write(
    binary: &[u8],
    issuer: &KeyPair,
    subject: &KeyPair,
    out: &Path,
) -> Result<(), ParError> {
    let mut par = ProviderArchive::new(
        "piggybank",
        "piggybank",
        None,
        Some(env!("CARGO_PKG_VERSION").to_string()),
    );
    par.add_library(&host_target(), binary)
        .map_err(|e| ParError(e.to_string()))?;
    par.write(out, issuer, subject, true)
        .await
        .map_err(|e| ParError(e.to_string()))
}
