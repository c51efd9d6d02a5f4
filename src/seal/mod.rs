//! Sealed mode, in one place: who holds the data keys, and how they reach an instance.
//!
//! Layered like Vault's barrier and seal, bottom up:
//! - [`key_record`]: the **key record**, pure: the data keys (and, unless configured, the
//!   transit seed) wrapped by the **database key**, split into shares or not, and bound to
//!   it as a whole; `initialize`, `open`, `rotate`. No I/O.
//! - `bucket`: the key record's bucket (`SECRETS_<name>_vault`, key `keyring`): created
//!   once, changed only by compare-and-set, watched.
//! - [`transfer`]: key material in transit: a database key or share sealed to one xkey,
//!   never in clear on the bus.
//! - `state`: the **seal**, the state machine of one instance: uninitialized, sealed
//!   (shares being given), unsealed; `initialize`, `unlock`, `lock`, `rotate`, and the
//!   re-encryption that follows a rotation.
//!
//! Its front door, the database operations (`<prefix>.database.<name>.<op>`), is
//! `crate::database`, beside the other front doors.

pub mod key_record;
pub mod transfer;

mod bucket;
mod state;

pub(crate) use bucket::{RecordStore, RECORD_KEY};
pub(crate) use state::*;
