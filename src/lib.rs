//! Piggybank: a secrets backend for wasmCloud 1.x on NATS JetStream KV.
//!
//! A drop-in replacement for wasmCloud's sample `secrets-nats-kv` (same subjects, flags and
//! wire format) without its defects. One core, thin front doors.
//!
//! # Layout
//! - [`config`]: every flag default, env var, subject operation, header and bucket name; and
//!   `RunConfig`, what a backend runs with, with its one `validate()`.
//! - [`keys`]: the transit key (protocol), data keys and the `Keyring` (at rest); zeroized
//!   on drop.
//! - [`store`]: `buckets`, each bucket's name, spec and creation; `kv_stream`, the one
//!   ordered read of a bucket (the mirror's and backup's) and its key/subject mapping;
//!   `SecretStore` and `MappingTable` (grants to entities and applications) on JetStream KV,
//!   mirrored in memory; `page`, the paging rule of every listing; `envelope`, the at-rest
//!   format (and the sample's, read in place);
//!   `rekey`, online re-sealing with the current key.
//! - `backup`: backup and restore of a backend's buckets; `backup::format`, the file format,
//!   pure.
//! - `clock`: the crate's clock (Unix milliseconds).
//! - `authz`: JWT verification, trusted issuers, policy checks.
//! - [`admin_auth`]: signed administration: the signed bytes, `AdminSigner` (clients) and
//!   `AdminVerifier` (servers; replay refused across instances by a shared nonce bucket).
//! - `backend`: the core every front door calls: read, put, delete, list, mappings, behind
//!   a guard that exists only while unsealed.
//! - [`seal`]: sealed mode, layered: [`seal::key_record`], the key record (data keys wrapped
//!   by the database key; pure); `bucket`, the key record's bucket; [`seal::transfer`], key
//!   material in transit (a database key or share sealed to an xkey, never in clear on the
//!   bus); `state`, the seal's state machine `Seal` (initialize, unlock, lock), its pure
//!   `transitions`, `rotation` (rotate, the record watch, re-encryption) and `status`; on top
//!   of `backend`, which holds the keys the seal installs.
//! - `error`: the one error model: every core error has an [`ErrorKind`], which each front
//!   door maps to its wire error once.
//! - `decision`: what was decided about a request (allowed, or refused with a kind and a
//!   reason code): the core's own for everything it refused, carried on the reply.
//! - `finish`: the one finishing step of every request, NATS or WIT: metrics, the audit
//!   record, `--audit-required`'s fail-closed rule.
//! - [`serve`]: the one serve loop of every NATS front door, and `Door`, what a front door
//!   is to it (reply-subject rule, signatures before any handler, backpressure on a
//!   connection of its own with bounded buffers, requests and replies that fit, draining).
//! - [`protocol`]: the wasmCloud secrets protocol front door (`{base}.v1alpha1.{name}.>`).
//! - `piggybank_api`: the Piggy Bank front door for plain NATS services
//!   (`piggybank.<application>.<name>`); `access`, what an application reaches (its own
//!   `_api/` names, shares, read-only applications).
//! - `database`: the seal's front door, the database operations
//!   (`piggybank.database.<name>.<op>`).
//! - [`server`]: `run(config, shutdown)`: validate, connect, open stores, assemble the front
//!   doors, serve.
//! - [`connect`]: every NATS connection: credentials, TLS, inbox prefix.
//! - [`provider`]: the capability provider: HostData settings, link scopes, the WIT admin
//!   interface over wRPC (front door), and the same protocol server.
//! - [`client`]: admin client used by the CLI and tests.
//! - `nats_context`: the nats CLI's context files, which `--context` reads.
//! - [`nats_layout`]: the least-privilege NATS layout (a user per role and its permissions)
//!   that `piggybank nats-config` writes and `piggybank dev` runs.
//! - [`cli`]: the `piggybank` command line (flags -> library calls).
//!
//! The benchmark (`bench/`) and the test kit (`testkit/`: one nats-server fixture, one JWT
//! maker) are crates of their own in the workspace, outside the library.
#![deny(rustdoc::broken_intra_doc_links)]

// The public API: what the binaries, the benchmark and the tests use. Everything else is
// private, so that code nothing uses is reported as dead.
pub mod admin_auth;
pub mod audit;
pub mod cli;
pub mod client;
pub mod config;
pub mod connect;
pub mod keys;
pub mod metrics;
pub mod nats_layout;
pub mod protocol;
pub mod provider;
pub mod seal;
pub mod serve;
pub mod server;
pub mod store;

mod authz;
mod backend;
mod backup;
mod clock;
mod database;
mod decision;
mod error;
mod finish;
mod nats_context;
mod piggybank_api;
mod reply_policy;

pub use backend::MappingChange;
pub use error::ErrorKind;
