//! Sealed mode, in one place: who holds the data keys, and how they reach an instance.
//!
//! Layered like Vault's barrier and seal, bottom up:
//! - [`key_record`]: the **key record**, pure: the data keys (and, unless configured, the
//!   transit seed) wrapped by the **database key**, whole or split into shares, and bound to
//!   it as a whole; `initialize`, `open`, `rotate`. No I/O.
//! - `bucket`: the key record's bucket (`SECRETS_<name>_vault`, key `keyring`): created
//!   once, changed only by compare-and-set, watched.
//! - [`transfer`]: key material in transit: a database key or share sealed to one xkey,
//!   never in clear on the bus.
//! - `state`: the **seal**, the state machine of one instance ([`Seal`]): uninitialized,
//!   sealed (shares being given), unsealed; `initialize`, `unlock`, `lock`. Its decisions
//!   that need no I/O are pure functions in `transitions`; `rotation` adds `rotate` and
//!   what follows it (the record watch, key activation, re-encryption); `status` reports.
//!
//! Its front door, the database operations (`<prefix>.database.<name>.<op>`), is
//! `crate::database`, beside the other front doors. The keys the seal installs live in
//! `crate::backend`, behind the guard that exists only while unsealed.

pub mod key_record;
pub mod transfer;

mod bucket;
mod rotation;
mod state;
mod status;
mod transitions;

#[cfg(test)]
mod tests;

pub(crate) use bucket::{RecordStore, RECORD_KEY};
/// Named by the CLI's tests; elsewhere it is reached through a `StatusReport`.
#[cfg(test)]
pub(crate) use state::Mode;
pub(crate) use state::{
    ClearUnlock, Initialized, KeyDelivery, Seal, SealError, UnlockInput, Unlocked,
};
pub(crate) use status::StatusReport;
