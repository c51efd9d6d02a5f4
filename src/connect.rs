//! Every NATS connection piggybank makes is made here: credentials (a `.creds` file or its
//! contents, a user and password, a user JWT and seed, an nkey seed file, a token), TLS, the
//! inbox prefix, the client name and a 5 s connect timeout. An unreadable file, a
//! certificate without its key or a bad seed fails before connecting, with a message that
//! never holds a secret or the password of a URL.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use zeroize::Zeroizing;

use crate::serve::ServeConnection;

/// TLS on a NATS connection. Paths only: async-nats reads the files when it connects. Any of
/// them makes TLS required: a server that does not offer TLS is refused, never used in clear.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatsTls {
    /// CA certificates (PEM) the server's certificate must chain to; `None`: the system's.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM), for servers that verify clients (`verify: true`); only with
    /// `key_file`.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// Start TLS before the server's greeting, for servers with `handshake_first: true`.
    pub handshake_first: bool,
}

impl NatsTls {
    /// Each setting `self` leaves unset, taken from `fallback`: explicit flags over a NATS
    /// context.
    pub fn or(self, fallback: NatsTls) -> NatsTls {
        NatsTls {
            ca_file: self.ca_file.or(fallback.ca_file),
            cert_file: self.cert_file.or(fallback.cert_file),
            key_file: self.key_file.or(fallback.key_file),
            handshake_first: self.handshake_first || fallback.handshake_first,
        }
    }

    /// Set up `options` for TLS: the files must be readable, and a certificate comes with
    /// its key. Never reads a key into a message.
    async fn apply(
        &self,
        mut options: async_nats::ConnectOptions,
    ) -> Result<async_nats::ConnectOptions, String> {
        for (what, path) in [
            ("TLS CA file", &self.ca_file),
            ("TLS client certificate", &self.cert_file),
            ("TLS client key", &self.key_file),
        ] {
            if let Some(path) = path {
                tokio::fs::File::open(path)
                    .await
                    .map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
            }
        }
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                options = options.add_client_certificate(cert.clone(), key.clone());
            }
            (Some(_), None) => {
                return Err("a TLS client certificate was given without its key".into())
            }
            (None, Some(_)) => {
                return Err("a TLS client key was given without its certificate".into())
            }
            (None, None) => {}
        }
        if let Some(ca) = &self.ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        if self.ca_file.is_some() || self.cert_file.is_some() {
            options = options.require_tls(true);
        }
        if self.handshake_first {
            options = options.tls_first();
        }
        Ok(options)
    }
}

/// How to authenticate to NATS. `Debug` never prints a seed or a credentials file's contents.
#[derive(Clone)]
pub enum Credentials {
    /// A `.creds` file on disk (`--nats-creds-file`).
    File(PathBuf),
    /// The contents of a `.creds` file (the provider receives them as a secret).
    Contents(Zeroizing<String>),
    /// A user name and password (servers configured with `authorization { users = [...] }`).
    UserPassword {
        user: String,
        password: Zeroizing<String>,
    },
    /// A user JWT and its nkey seed (the provider reuses the lattice's, from HostData).
    UserJwt {
        jwt: String,
        seed: Zeroizing<String>,
    },
    /// A file holding a user nkey seed (a NATS context's `nkey`), for servers configured
    /// with `nkey` users.
    NkeyFile(PathBuf),
    /// A user nkey seed itself (the provider receives the backend role's as a secret).
    Nkey(Zeroizing<String>),
    /// A token (a NATS context's `token`), for servers configured with one.
    Token(Zeroizing<String>),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::File(path) => f.debug_tuple("File").field(path).finish(),
            Credentials::Contents(_) => f.write_str("Contents(<redacted>)"),
            Credentials::UserPassword { user, .. } => {
                write!(f, "UserPassword({user}, <redacted>)")
            }
            Credentials::UserJwt { .. } => f.write_str("UserJwt(<redacted>)"),
            Credentials::NkeyFile(path) => f.debug_tuple("NkeyFile").field(path).finish(),
            Credentials::Nkey(_) => f.write_str("Nkey(<redacted>)"),
            Credentials::Token(_) => f.write_str("Token(<redacted>)"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("failed to connect to NATS at {address}: {reason}")]
pub struct ConnectError {
    pub address: String,
    pub reason: String,
}

/// Connect to NATS, with credentials and TLS if given. Fails fast (5 s) at start.
pub async fn connect(
    address: &str,
    credentials: Option<&Credentials>,
    tls: &NatsTls,
    client_name: &str,
) -> Result<async_nats::Client, ConnectError> {
    connect_with(address, credentials, tls, client_name, None).await
}

/// The connection a backend's stores use (KV watches, JetStream, the audit stream): its
/// inboxes under [`SERVER_INBOX_PREFIX`](crate::reply_policy::SERVER_INBOX_PREFIX), which
/// the reply policy never answers into, rather than the shared `_INBOX.`.
pub(crate) async fn connect_server(
    address: &str,
    credentials: Option<&Credentials>,
    tls: &NatsTls,
    client_name: &str,
) -> Result<async_nats::Client, ConnectError> {
    let prefix = crate::reply_policy::SERVER_INBOX_PREFIX;
    let options = options(address, credentials, tls, client_name, Some(prefix)).await?;
    let options = crate::serve::log_events(options, "stores", None);
    options
        .connect(address)
        .await
        .map_err(|e| connect_error(address, tls, e))
}

/// A connection front doors subscribe and reply on ([`ServeConnection`]), each subscription
/// buffering at most `capacity` messages; its events are logged as `role`'s. A backend's is
/// on the same server, with the same credentials, TLS and inbox prefix
/// ([`SERVER_INBOX_PREFIX`](crate::reply_policy::SERVER_INBOX_PREFIX)) as
/// [`connect_server`]'s.
pub(crate) async fn connect_serving(
    address: &str,
    credentials: Option<&Credentials>,
    tls: &NatsTls,
    client_name: &str,
    inbox_prefix: Option<&str>,
    capacity: usize,
    role: &'static str,
) -> Result<ServeConnection, ConnectError> {
    let options = options(address, credentials, tls, client_name, inbox_prefix).await?;
    ServeConnection::connect(address, options, capacity, role)
        .await
        .map_err(|e| connect_error(address, tls, e))
}

/// [`connect_serving`], plus a second connection for side traffic (discovery, the database
/// operations, the API: [`ServeConnection::side`]), named `<client_name> (side)`, so that a
/// flood of it waits in its own server-side buffer, not in front of the hosts' gets.
pub(crate) async fn connect_serving_with_side(
    address: &str,
    credentials: Option<&Credentials>,
    tls: &NatsTls,
    client_name: &str,
    inbox_prefix: Option<&str>,
    capacity: usize,
) -> Result<ServeConnection, ConnectError> {
    let connection = connect_serving(
        address,
        credentials,
        tls,
        client_name,
        inbox_prefix,
        capacity,
        "serving",
    )
    .await?;
    let side_name = format!("{client_name} (side)");
    let options = options(address, credentials, tls, &side_name, inbox_prefix).await?;
    connection
        .with_side(address, options, "serving-side")
        .await
        .map_err(|e| connect_error(address, tls, e))
}

/// Every NATS connection piggybank makes is made here: credentials, TLS, and the inbox
/// prefix (`None`: `_INBOX`). An unreadable file, a certificate without its key or a bad
/// seed fails before connecting, with a message that never holds a secret.
pub(crate) async fn connect_with(
    address: &str,
    credentials: Option<&Credentials>,
    tls: &NatsTls,
    client_name: &str,
    inbox_prefix: Option<&str>,
) -> Result<async_nats::Client, ConnectError> {
    options(address, credentials, tls, client_name, inbox_prefix)
        .await?
        .connect(address)
        .await
        .map_err(|e| connect_error(address, tls, e))
}

/// The options of every connection: credentials, TLS, the inbox prefix, the name, and a
/// 5 s connection timeout (fail fast at start).
async fn options(
    address: &str,
    credentials: Option<&Credentials>,
    tls: &NatsTls,
    client_name: &str,
    inbox_prefix: Option<&str>,
) -> Result<async_nats::ConnectOptions, ConnectError> {
    let err = |reason: String| ConnectError {
        address: without_userinfo(address),
        reason,
    };
    let mut options = async_nats::ConnectOptions::new();
    match credentials {
        None => {}
        Some(Credentials::File(path)) => {
            options = options.credentials_file(path).await.map_err(|e| {
                err(format!(
                    "cannot read credentials file {}: {e}",
                    path.display()
                ))
            })?;
        }
        Some(Credentials::Contents(contents)) => {
            options = async_nats::ConnectOptions::with_credentials(contents)
                .map_err(|_| err("the credentials are not a valid NATS .creds file".into()))?;
        }
        Some(Credentials::UserPassword { user, password }) => {
            options = async_nats::ConnectOptions::with_user_and_password(
                user.clone(),
                password.to_string(),
            );
        }
        Some(Credentials::UserJwt { jwt, seed }) => {
            let key = nkeys::KeyPair::from_seed(seed)
                .map_err(|_| err("the user nkey seed is not valid".into()))?;
            let key = Arc::new(key);
            options = async_nats::ConnectOptions::with_jwt(jwt.clone(), move |nonce| {
                let key = Arc::clone(&key);
                async move { key.sign(&nonce).map_err(async_nats::AuthError::new) }
            });
        }
        Some(Credentials::NkeyFile(path)) => {
            let seed = read_nkey_seed(path).map_err(err)?;
            options = async_nats::ConnectOptions::with_nkey(seed.to_string());
        }
        Some(Credentials::Nkey(seed)) => {
            nkeys::KeyPair::from_seed(seed.trim())
                .map_err(|_| err("the nkey is not a valid user nkey seed (SU...)".into()))?;
            options = async_nats::ConnectOptions::with_nkey(seed.trim().to_string());
        }
        Some(Credentials::Token(token)) => {
            options = async_nats::ConnectOptions::with_token(token.to_string());
        }
    }
    options = tls.apply(options).await.map_err(err)?;
    if let Some(prefix) = inbox_prefix {
        options = options.custom_inbox_prefix(prefix);
    }
    Ok(options
        .name(client_name)
        .connection_timeout(Duration::from_secs(5)))
}

/// A failed connect, with a hint for TLS failures; never the password of the URL.
fn connect_error(address: &str, tls: &NatsTls, e: async_nats::ConnectError) -> ConnectError {
    let reason = e.to_string();
    let hint = tls_hint(&reason, tls);
    ConnectError {
        address: without_userinfo(address),
        reason: format!("{reason}{hint}"),
    }
}

/// What to do about a TLS failure whose cause the TLS library names only in its own terms.
fn tls_hint(reason: &str, tls: &NatsTls) -> &'static str {
    if reason.contains("CertificateRequired") {
        " (the server verifies clients: give a client certificate and its key)"
    } else if reason.contains("UnknownIssuer") {
        " (the server's certificate is not signed by a CA this client trusts: give its CA file)"
    } else if reason.contains("expected INFO, got nothing") && !tls.handshake_first {
        " (a server configured with handshake_first needs TLS first)"
    } else if reason.contains("InvalidContentType") && tls.handshake_first {
        " (this server does not start with TLS: connect without TLS first)"
    } else {
        ""
    }
}

/// The user nkey seed in `path`: its first line that is not empty or a `#` comment. Checked
/// here, so that a bad file is named; its contents never are.
fn read_nkey_seed(path: &Path) -> Result<Zeroizing<String>, String> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read nkey seed file {}: {e}", path.display()))?,
    );
    let seed = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| Zeroizing::new(l.to_string()));
    match seed {
        Some(seed) if nkeys::KeyPair::from_seed(&seed).is_ok() => Ok(seed),
        _ => Err(format!(
            "nkey seed file {} holds no valid nkey seed",
            path.display()
        )),
    }
}

/// `address` with any `user:password@` replaced, for messages: a URL may carry a password.
fn without_userinfo(address: &str) -> String {
    let (scheme, rest) = match address.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), address),
    };
    match rest.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}***@{host}"),
        None => address.to_string(),
    }
}

/// A credentials file path, as the CLI takes it.
pub(crate) fn credentials_file(path: Option<&Path>) -> Option<Credentials> {
    path.map(|p| Credentials::File(p.to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_errors_never_show_a_password_from_the_url() {
        assert_eq!(
            without_userinfo("nats://u:secret@h:4222"),
            "nats://***@h:4222"
        );
        assert_eq!(without_userinfo("u:secret@h:4222"), "***@h:4222");
        assert_eq!(without_userinfo("nats://h:4222"), "nats://h:4222");
        assert_eq!(without_userinfo("127.0.0.1:4222"), "127.0.0.1:4222");
    }

    #[tokio::test]
    async fn a_failed_connect_names_the_server_without_its_password() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address = format!("nats://u:hunter2@127.0.0.1:{port}");
        let err = connect(&address, None, &NatsTls::default(), "test")
            .await
            .expect_err("nothing listens there");
        let text = err.to_string();
        assert!(
            !text.contains("hunter2") && text.contains(&port.to_string()),
            "{text}"
        );
    }
}
