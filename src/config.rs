//! Every name piggybank puts on the wire or reads from the environment, in one place.
//!
//! Operators script against these (flags, env vars, subjects, bucket names), so they are an
//! interface: change one only with a changelog entry. Defaults match wasmCloud's sample
//! backend `secrets-nats-kv` so that existing deployments switch by changing the binary name.

mod run;
pub use crate::piggybank_api::access::{ApiAccess, ApiShare};
pub use crate::reply_policy::AppInbox;
pub use run::{ConfigError, RunConfig};

/// Default subject prefix hosts are started with (`--secrets-topic`).
pub const DEFAULT_SUBJECT_BASE: &str = "wasmcloud.secrets";
/// Default backend name, as referenced by `backend: nats-kv` in a wadm secrets policy.
pub const DEFAULT_BACKEND_NAME: &str = "nats-kv";
/// Default secrets bucket.
pub const DEFAULT_SECRETS_BUCKET: &str = "WASMCLOUD_SECRETS";
/// Default number of revisions kept per secret (also the NATS KV maximum).
pub(crate) const DEFAULT_MAX_SECRET_HISTORY: u8 = 64;
/// Default queue group prefix; the group is `{queue_base}.{name}`.
pub(crate) const DEFAULT_QUEUE_BASE: &str = "wasmcloud_secrets";
/// Default NATS address.
pub(crate) const DEFAULT_NATS_ADDRESS: &str = "127.0.0.1:4222";
/// The only protocol version wasmCloud 1.x hosts speak.
pub const DEFAULT_API_VERSION: &str = wasmcloud_secrets_types::SECRET_API_VERSION;
/// Default cap on requests handled at once by one instance (backpressure beyond it); also
/// what each of its front doors' subscriptions buffers before the client drops requests.
pub(crate) const DEFAULT_MAX_IN_FLIGHT: usize = 256;
/// Default cap on a request (subject, reply subject, headers and body) of an operation that
/// carries no value: a host's `get` (two JWTs and a policy) is a few KiB. Larger ones are
/// refused before any handler runs. The operations that carry a value (`put_secret`,
/// `add_mapping`, `remove_mapping`, the API's `post`) take whatever one NATS message carries.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 64 * 1024;
/// The range `--max-in-flight` (and the provider's `max_in_flight`) may take.
pub(crate) const MAX_IN_FLIGHT_RANGE: std::ops::RangeInclusive<usize> = 1..=65_536;
/// The range `--max-request-bytes` may take: from 1 KiB to NATS's largest max payload.
pub(crate) const MAX_REQUEST_BYTES_RANGE: std::ops::RangeInclusive<usize> = 1024..=64 * 1024 * 1024;
/// Default bound on the drain at shutdown, in milliseconds: in-flight requests not answered
/// by then are abandoned, and the process exits whether or not NATS is still there.
pub(crate) const DEFAULT_DRAIN_TIMEOUT_MS: u64 = 5_000;
/// Default retention of both audit trails: 7 days. The decisions trail also keeps at most
/// 256 MiB; once full it refuses new records (never evicts), and `--audit-required` then
/// refuses requests: safe for a laptop, size it for production.
pub(crate) const DEFAULT_AUDIT_MAX_AGE_SECS: u64 = 7 * 86_400;
pub(crate) const DEFAULT_AUDIT_MAX_BYTES: i64 = 256 * 1024 * 1024;
/// Default size of the refusal trail (refusals and open reads, summarised beyond a rate);
/// once full, its oldest records go.
pub(crate) const DEFAULT_AUDIT_REFUSALS_MAX_BYTES: i64 = 64 * 1024 * 1024;
/// Audit records buffered before they are dropped (or, with `--audit-required`, refused).
pub(crate) const DEFAULT_AUDIT_BUFFER: usize = 8_192;

/// Environment variables (sample-compatible ones first).
pub mod env {
    pub const ENCRYPTION_XKEY_SEED: &str = "ENCRYPTION_XKEY_SEED";
    /// Comma-separated seeds of earlier data keys, kept only to read what they sealed.
    pub const PREVIOUS_ENCRYPTION_XKEY_SEEDS: &str = "PREVIOUS_ENCRYPTION_XKEY_SEEDS";
    pub const TRANSIT_XKEY_SEED: &str = "TRANSIT_XKEY_SEED";
    pub const NATS_CREDSFILE: &str = "NATS_CREDSFILE";
    /// A file holding a user nkey seed to connect with (the nats CLI's `--nkey`).
    pub const NATS_NKEY: &str = "NATS_NKEY";
    /// The inbox prefix of a client command's replies (the nats CLI's `--inbox-prefix`).
    pub const NATS_INBOX_PREFIX: &str = "NATS_INBOX_PREFIX";
    /// TLS on the NATS connection, by the names the nats CLI reads: the CA file, the client
    /// certificate and its key (files, PEM), and TLS before the server's greeting.
    pub const NATS_CA: &str = "NATS_CA";
    pub const NATS_CERT: &str = "NATS_CERT";
    pub const NATS_KEY: &str = "NATS_KEY";
    pub const NATS_TLS_FIRST: &str = "NATS_TLS_FIRST";
    /// The JetStream domain of every bucket (leaf nodes reaching a hub's JetStream).
    pub const NATS_JS_DOMAIN: &str = "NATS_JS_DOMAIN";
    /// A nats CLI context by name (`~/.config/nats/context/NAME.json`).
    pub const NATS_CONTEXT: &str = "NATS_CONTEXT";
    /// Bound on the drain at shutdown, in milliseconds.
    pub(crate) const DRAIN_TIMEOUT_MS: &str = "DRAIN_TIMEOUT_MS";
    /// Write values in the sample's format (rolling migration).
    pub(crate) const PIGGYBANK_WRITE_LEGACY_FORMAT: &str = "PIGGYBANK_WRITE_LEGACY_FORMAT";
    /// Keep no audit trail.
    pub(crate) const PIGGYBANK_NO_AUDIT: &str = "PIGGYBANK_NO_AUDIT";
    /// Refuse requests whose audit record cannot be written.
    pub(crate) const PIGGYBANK_AUDIT_REQUIRED: &str = "PIGGYBANK_AUDIT_REQUIRED";
    pub(crate) const SECRET_STRING_VALUE: &str = "SECRET_STRING_VALUE";
    pub(crate) const SECRET_BINARY_FILE: &str = "SECRET_BINARY_FILE";
    pub const TRUSTED_ISSUERS: &str = "TRUSTED_ISSUERS";
    /// Comma-separated subject prefixes replies may go to (default `_INBOX.`).
    pub(crate) const REPLY_PREFIXES: &str = "REPLY_PREFIXES";
    pub const NATS_ADDRESS: &str = "NATS_ADDRESS";
    pub const PIGGYBANK_PREFIX: &str = "PIGGYBANK_PREFIX";
    /// Piggy Bank API applications that may only read (comma-separated).
    pub(crate) const PIGGYBANK_READ_ONLY_APPS: &str = "PIGGYBANK_READ_ONLY_APPS";
    /// Inboxes bound to Piggy Bank API applications (`APP=PREFIX`, comma-separated).
    pub(crate) const PIGGYBANK_APP_INBOXES: &str = "PIGGYBANK_APP_INBOXES";
    pub(crate) const NATS_USER: &str = "NATS_USER";
    /// The database key: `piggybank unlock` sends it (else a share, else stdin), and
    /// `piggybank run` in sealed mode unlocks itself with it at start (auto-unlock).
    pub const PIGGYBANK_DATABASE_KEY: &str = "PIGGYBANK_DATABASE_KEY";
    pub const PIGGYBANK_SHARE: &str = "PIGGYBANK_SHARE";
    pub const NATS_PASSWORD: &str = "NATS_PASSWORD";
    /// `run`: comma-separated nkey user public keys (`U...`) whose signatures admin
    /// operations must carry (see `admin_auth`).
    pub const ADMIN_KEYS: &str = "ADMIN_KEYS";
    /// Client commands: the admin nkey seed (`SU...`) they sign with.
    pub const PIGGYBANK_ADMIN_SEED: &str = "PIGGYBANK_ADMIN_SEED";
    /// Client commands: a file (mode 0600) holding the admin seed (`--admin-seed-file`).
    pub const PIGGYBANK_ADMIN_SEED_FILE: &str = "PIGGYBANK_ADMIN_SEED_FILE";
    /// `run`: refuse a database key or share sent in clear (`true`/`false`).
    pub(crate) const PIGGYBANK_SEALED_KEYS_ONLY: &str = "PIGGYBANK_SEALED_KEYS_ONLY";
    /// Sealed mode: a file (mode 0600) holding the database key, to unlock at start.
    pub(crate) const PIGGYBANK_UNLOCK_KEY_FILE: &str = "PIGGYBANK_UNLOCK_KEY_FILE";
}

/// Name of the mappings bucket for a backend: `SECRETS_{name}_state` (as the sample).
pub(crate) fn mappings_bucket(backend_name: &str) -> String {
    format!("SECRETS_{backend_name}_state")
}

/// Name of the sealed key record's bucket of a backend run in sealed mode.
pub fn vault_bucket(backend_name: &str) -> String {
    format!("SECRETS_{backend_name}_vault")
}

/// Bucket of accepted admin request nonces, shared by every instance (replay protection).
pub(crate) fn nonces_bucket(backend_name: &str) -> String {
    format!("SECRETS_{backend_name}_nonces")
}

/// Queue group shared by every instance of one backend.
pub fn queue_group(queue_base: &str, backend_name: &str) -> String {
    format!("{queue_base}.{backend_name}")
}

/// Subject prefix of one backend: `{base}.{api_version}.{name}`.
pub fn subject_prefix(subject_base: &str, api_version: &str, backend_name: &str) -> String {
    format!("{subject_base}.{api_version}.{backend_name}")
}

/// Operations on the protocol subject tree (`{prefix}.{operation}[.{entity}]`).
pub mod ops {
    pub const SERVER_XKEY: &str = "server_xkey";
    pub const GET: &str = "get";
    pub(crate) const PUT_SECRET: &str = "put_secret";
    pub const DELETE_SECRET: &str = "delete_secret";
    pub(crate) const LIST_SECRETS: &str = "list_secrets";
    pub const ADD_MAPPING: &str = "add_mapping";
    pub(crate) const REMOVE_MAPPING: &str = "remove_mapping";
    pub(crate) const GET_MAPPINGS: &str = "get_mappings";
    /// Grants to a wadm application: `{op}.{application}`.
    pub const ADD_APP_MAPPING: &str = "add_app_mapping";
    pub(crate) const REMOVE_APP_MAPPING: &str = "remove_app_mapping";
    pub(crate) const GET_APP_MAPPINGS: &str = "get_app_mappings";
    /// An operator reads a secret's value through the backend (`piggybank get` without a
    /// data key); the reply is sealed to the requester's one-time xkey
    /// (`crate::protocol::read_secret`).
    pub const READ_SECRET: &str = "read_secret";
}

/// Headers.
pub mod headers {
    pub use wasmcloud_secrets_types::{RESPONSE_XKEY, WASMCLOUD_HOST_XKEY};
    /// Set on every admin error reply (NATS micro-service convention): a human message.
    pub(crate) const SERVICE_ERROR: &str = "Nats-Service-Error";
    /// Set on every admin error reply: an HTTP-like status code.
    pub(crate) const SERVICE_ERROR_CODE: &str = "Nats-Service-Error-Code";
    /// Signed administration (`admin_auth`): the signer's public nkey (`U...`).
    pub const ADMIN_KEY: &str = "Piggybank-Admin-Key";
    /// Signed administration: unix milliseconds when the request was signed.
    pub const ADMIN_TIME: &str = "Piggybank-Admin-Time";
    /// Signed administration: 16 random bytes, lowercase hex; accepted once.
    pub const ADMIN_NONCE: &str = "Piggybank-Admin-Nonce";
    /// Signed administration: the ed25519 signature, base64url without padding.
    pub const ADMIN_SIGNATURE: &str = "Piggybank-Admin-Signature";
    /// On `initialize`: the requester's one-time public xkey, which the key (or the shares)
    /// in the reply is sealed to. On `status`: the one-time xkey `unseal_proof` is sealed to.
    /// On `read_secret`: the one-time xkey the value is sealed to.
    pub const REQUESTER_XKEY: &str = "Piggybank-Requester-Xkey";
    /// On a `read_secret` reply: the public xkey the value was sealed from (the backend's
    /// transit key, which a requester may pin).
    pub const SENDER_XKEY: &str = "Piggybank-Sender-Xkey";
}

/// Keys of the capability provider's configuration (HostData `config` and `secrets`).
/// Operators write these in wadm manifests.
pub mod provider {
    /// Friendly name the provider gives its NATS connections and logs.
    pub const NAME: &str = "piggybank-provider";
    /// NATS URL of the secrets connection (default: the lattice's).
    pub(crate) const NATS_URL: &str = "nats_url";
    /// Contents of a NATS `.creds` file for the secrets connection (a secret; config accepted).
    pub(crate) const NATS_CREDS: &str = "nats_creds";
    /// A user nkey seed (`SU...`) for the secrets connection, as `piggybank nats-config`
    /// writes for the backend role (a secret; never config).
    pub(crate) const NATS_NKEY: &str = "nats_nkey";
    pub(crate) const BACKEND_NAME: &str = "backend_name";
    pub(crate) const SUBJECT_BASE: &str = "subject_base";
    pub(crate) const SECRETS_BUCKET: &str = "secrets_bucket";
    pub(crate) const REPLICAS: &str = "replicas";
    /// Comma-separated account public keys whose entities may read secrets.
    pub const TRUSTED_ISSUERS: &str = "trusted_issuers";
    /// Comma-separated nkey user public keys (`U...`) whose signatures admin operations
    /// must carry (as `run --admin-keys`).
    pub const ADMIN_KEYS: &str = "admin_keys";
    /// `true`: refuse a database key or share sent in clear (as `run --sealed-keys-only`).
    pub(crate) const SEALED_KEYS_ONLY: &str = "sealed_keys_only";
    /// Serve the Piggy Bank API under this prefix; also the prefix of the sealed-mode
    /// database operations (default `piggybank`).
    pub const PIGGYBANK_PREFIX: &str = "piggybank_prefix";
    /// `true` accepts the two seeds below as plain config (with a warning).
    pub(crate) const INSECURE_CONFIG_KEYS: &str = "insecure_config_keys";
    /// The transit xkey seed (a secret).
    pub const TRANSIT_XKEY_SEED: &str = "transit_xkey_seed";
    /// The data (encryption) xkey seed (a secret).
    pub const ENCRYPTION_XKEY_SEED: &str = "encryption_xkey_seed";
    /// Sealed mode: the database key, to unlock at start (a secret; never config).
    pub(crate) const DATABASE_KEY: &str = "database_key";
    /// Comma-separated seeds of earlier data keys, during a key change (a secret).
    pub const PREVIOUS_ENCRYPTION_XKEY_SEEDS: &str = "previous_encryption_xkey_seeds";
    /// Longest a wRPC invocation may take, in milliseconds: its parameters must all arrive
    /// within it, and the call must then complete within it.
    pub(crate) const WRPC_CALL_TIMEOUT_MS: &str = "wrpc_call_timeout_ms";
    /// Most requests handled at once, on each front door (protocol, wRPC); also what each of
    /// their subscriptions buffers.
    pub(crate) const MAX_IN_FLIGHT: &str = "max_in_flight";
    /// Largest request of an operation that carries no value (as `run --max-request-bytes`).
    pub(crate) const MAX_REQUEST_BYTES: &str = "max_request_bytes";
    /// Bound on the drain at shutdown, in milliseconds.
    pub(crate) const DRAIN_TIMEOUT_MS: &str = "drain_timeout_ms";
    /// Comma-separated subject prefixes replies may go to, besides `_INBOX.`.
    pub(crate) const REPLY_PREFIXES: &str = "reply_prefixes";
    /// Comma-separated `APP=PREFIX`: inboxes bound to Piggy Bank API applications (as `run
    /// --app-inbox`).
    pub(crate) const APP_INBOXES: &str = "app_inboxes";
    /// Comma-separated `APP=SECRET[:rw]`: protocol secrets shared with Piggy Bank API
    /// applications (as `run --share-with-api`).
    pub(crate) const SHARE_WITH_API: &str = "share_with_api";
    /// Comma-separated Piggy Bank API applications that may only read (as `run
    /// --read-only-apps`).
    pub(crate) const READ_ONLY_APPS: &str = "read_only_apps";
    /// TLS of the secrets connection (HostData carries none): a CA file, a client
    /// certificate and its key (paths on the host, PEM), and TLS before the server's greeting.
    pub(crate) const TLS_CA_FILE: &str = "tls_ca_file";
    pub(crate) const TLS_CERT_FILE: &str = "tls_cert_file";
    pub(crate) const TLS_KEY_FILE: &str = "tls_key_file";
    pub(crate) const TLS_FIRST: &str = "tls_first";
    /// The JetStream domain of the provider's buckets (HostData carries none).
    pub(crate) const JS_DOMAIN: &str = "js_domain";
    /// The audit trail, as `run`'s flags of the same names: every instance of a backend must
    /// run with the same, since each sets the trails' streams to its own at start.
    pub(crate) const NO_AUDIT: &str = "no_audit";
    pub(crate) const AUDIT_REQUIRED: &str = "audit_required";
    pub(crate) const AUDIT_MAX_AGE_SECS: &str = "audit_max_age_secs";
    pub(crate) const AUDIT_MAX_BYTES: &str = "audit_max_bytes";
    pub(crate) const AUDIT_REFUSALS_MAX_BYTES: &str = "audit_refusals_max_bytes";
    pub(crate) const AUDIT_REPLICAS: &str = "audit_replicas";
    /// Every key the provider reads from its config.
    pub const CONFIG_KEYS: &[&str] = &[
        NO_AUDIT,
        AUDIT_REQUIRED,
        AUDIT_MAX_AGE_SECS,
        AUDIT_MAX_BYTES,
        AUDIT_REFUSALS_MAX_BYTES,
        AUDIT_REPLICAS,
        NATS_URL,
        NATS_CREDS,
        NATS_NKEY,
        BACKEND_NAME,
        SUBJECT_BASE,
        SECRETS_BUCKET,
        REPLICAS,
        TRUSTED_ISSUERS,
        ADMIN_KEYS,
        SEALED_KEYS_ONLY,
        PIGGYBANK_PREFIX,
        INSECURE_CONFIG_KEYS,
        TRANSIT_XKEY_SEED,
        ENCRYPTION_XKEY_SEED,
        PREVIOUS_ENCRYPTION_XKEY_SEEDS,
        WRPC_CALL_TIMEOUT_MS,
        MAX_IN_FLIGHT,
        MAX_REQUEST_BYTES,
        REPLY_PREFIXES,
        APP_INBOXES,
        SHARE_WITH_API,
        READ_ONLY_APPS,
        DRAIN_TIMEOUT_MS,
        DATABASE_KEY,
        TLS_CA_FILE,
        TLS_CERT_FILE,
        TLS_KEY_FILE,
        TLS_FIRST,
        JS_DOMAIN,
    ];
    /// NATS URL when neither `nats_url` nor the lattice's URL is set (the SDK's default).
    pub(crate) const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

    /// Keys of a link's target config (component -> provider), which scopes the component.
    pub mod link {
        /// Names the component may write, map and see start with this (default: all names).
        pub const PREFIX: &str = "prefix";
        /// `true`: the component may only call functions that change nothing.
        pub(crate) const READ_ONLY: &str = "read_only";
        pub(crate) const KEYS: &[&str] = &[PREFIX, READ_ONLY];
    }

    /// WIT identity of the admin interface a link must name.
    pub const WIT_NAMESPACE: &str = "piggybank";
    pub const WIT_PACKAGE: &str = "secrets";
    pub const WIT_INTERFACE: &str = "admin";
}
