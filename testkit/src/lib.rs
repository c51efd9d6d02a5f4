//! The test kit shared by piggybank's integration tests (`tests/common`) and its benchmark
//! (`bench/`): one fixture for a real `nats-server`, one maker of wasmCloud JWTs.
//!
//! # Layout
//! - [`nats_server`]: a `nats-server -js` on a free loopback port with a temporary data dir,
//!   killed on drop; stop and restart on the same port and data.
//! - [`jwt`]: an issuer account that signs component and provider JWTs, and host JWTs as a
//!   wasmCloud 1.x host signs them.
//!
//! It does not depend on `piggybank`: nothing here knows the backend it is used to test.
#![deny(rustdoc::broken_intra_doc_links)]

pub mod jwt;
pub mod nats_server;

pub use jwt::{host_jwt, Issuer};
pub use nats_server::{free_port, nats_with_max_payload, unique_name, wait_listening, NatsServer};
