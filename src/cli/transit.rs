//! `-t/--transit-xkey`: the backend's transit key, as `put`, `get`, `init` and `unlock` take
//! it (its public key, or its seed: a dev `keys.env` holds the seed as `TRANSIT_XKEY_SEED`).
//! One argument, so that every command spells and reads it alike.

use anyhow::Context;
use clap::Args;
use nkeys::XKey;
use zeroize::Zeroizing;

use crate::config::env;

#[derive(Args, Clone, Default)]
pub struct TransitKey {
    /// The backend's transit key (its public key X..., or its seed SX...): put seals the
    /// value to it (else it asks the backend for it); get, init and unlock believe only
    /// answers from its holder
    #[arg(
        short = 't',
        long = "transit-xkey",
        alias = "transit-xkey-seed",
        env = env::TRANSIT_XKEY_SEED,
        hide_env_values = true,
        value_name = "XKEY"
    )]
    pub transit_xkey: Option<String>,
}

impl TransitKey {
    /// The key given, if any (a seed stays in zeroized memory only while it is read).
    pub fn key(&self) -> anyhow::Result<Option<XKey>> {
        self.transit_xkey
            .as_deref()
            .map(|text| parse(&Zeroizing::new(text.to_string())))
            .transpose()
    }

    /// Its public key, if one is given.
    pub fn public_key(&self) -> anyhow::Result<Option<String>> {
        Ok(self.key()?.map(|k| k.public_key()))
    }
}

/// A transit key given as its seed (SX...) or its public key (X...).
pub(crate) fn parse(text: &Zeroizing<String>) -> anyhow::Result<XKey> {
    let text = text.trim();
    if text.starts_with("SX") {
        return Ok(crate::keys::xkey_from_seed(
            &Zeroizing::new(text.to_string()),
            "transit key",
        )?);
    }
    XKey::from_public_key(text).context("the transit key is not a valid xkey (X... or SX...)")
}
