//! Piggybank's integration tests, in one binary: each file in `tests/` used to be its own
//! binary linking the whole crate, and on a 2-core machine linking dominated the suite.
//!
//! One module a capability, named for what it proves; `security/` holds one module a threat.
//! `common/` starts a real `nats-server` on a free loopback port (with a temp dir, killed on
//! drop), backends in-process or as child processes, and the clients a host, an operator or
//! an attacker uses.
//!
//! `cargo test --test suite MODULE::` runs one module, e.g. `security::forged_records::`.

mod common;

mod admin_auth;
mod admin_read;
mod app_grants;
mod audit;
mod audit_decisions;
mod audit_integrity;
mod auto_unlock;
mod availability;
mod backup;
mod bad_input;
mod cli;
mod cli_manners;
mod deploy;
mod dev;
mod discovery;
mod docs;
mod keys_on_wire;
mod loading;
mod locked;
mod metrics;
mod migration;
mod paging;
mod piggybank_api;
mod protocol;
mod provider;
mod quickstart;
mod rekey;
mod sample_migration;
mod sealed_mode;
mod security;
mod shutdown;
mod status;
mod tls;
