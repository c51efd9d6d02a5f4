//! Security: one module a threat. The attacker holds a NATS user on the backend's account: it
//! publishes anything, on any subject, with any headers, body and reply subject, and subscribes
//! to anything, `>` and `_INBOX.>` included, in any queue group; it records what it sees and
//! replays it. Where the operator is in the picture, they run with `--admin-keys`.
//!
//! Each test names an attack and asserts the safe behaviour. Where an attack has to reach its
//! target for the test to mean anything, a positive control shows that it did.

mod access;
mod admin_read_attacks;
mod cli_output;
mod doors;
mod fairness;
mod floods;
mod forged_records;
mod init_unlock;
mod integrity_attacks;
mod layout_attacks;
mod moved_values;
mod nats_layout;
mod reply_subjects;
mod signed_admin;
mod store_identity;
