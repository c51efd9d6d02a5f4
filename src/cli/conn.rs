//! How every command that connects reaches NATS: the connection, credentials, TLS and
//! context flags (`Conn`), and which backend a client command talks to (`Target`).
//!
//! `Conn` is flattened once into `Cli`, its flags global (as natscli's are): they are
//! listed under one help heading, "NATS connection", and accepted before or after the
//! subcommand (`piggybank --nats-address h:1 list`, `piggybank list --nats-address h:1`),
//! with the env vars the sample and the nats CLI read. A command that makes no connection of
//! its own (`dev`, `nats-config`, `keygen`, `completions`) refuses them when given on the
//! command line ([`super::parse`]), so none is silently ignored.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use zeroize::Zeroizing;

use crate::client::AdminClient;

use super::admin_seed;
use crate::config::{self, env};
use crate::connect;

/// The help heading of every connection flag.
pub(crate) const HEADING: &str = "NATS connection";

#[derive(Args, Clone, Default)]
#[command(next_help_heading = HEADING)]
pub struct Conn {
    /// The NATS address to connect to [default: the context's url, else 127.0.0.1:4222]
    #[arg(long, env = env::NATS_ADDRESS, global = true, value_name = "HOST:PORT")]
    pub nats_address: Option<String>,
    /// NATS credentials file
    #[arg(long, env = env::NATS_CREDSFILE, global = true, value_name = "FILE")]
    pub nats_creds_file: Option<PathBuf>,
    /// NATS user name (with --nats-password), for servers configured with users
    #[arg(long, env = env::NATS_USER, global = true, value_name = "USER")]
    pub nats_user: Option<String>,
    /// NATS password (prefer the env var: argv is visible to other users)
    #[arg(
        long,
        env = env::NATS_PASSWORD,
        global = true,
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub nats_password: Option<String>,
    #[command(flatten)]
    pub options: ConnOptions,
}

impl Conn {
    /// The credentials given by flag: a user and password, or a credentials file.
    ///
    /// Which flags go together is checked here, not by clap's `requires`: a global flag's
    /// env var is read at the top level and the flag itself where it was typed, so clap
    /// would refuse `NATS_PASSWORD=... piggybank run --nats-user u`.
    fn credentials(&self) -> anyhow::Result<Option<connect::Credentials>> {
        let file = connect::credentials_file(self.nats_creds_file.as_deref());
        match (&self.nats_user, &self.nats_password) {
            (Some(_), Some(_)) if file.is_some() => bail!(
                "give one of --nats-user (NATS_USER) and --nats-creds-file (NATS_CREDSFILE), \
                 not both"
            ),
            (Some(user), Some(password)) => Ok(Some(connect::Credentials::UserPassword {
                user: user.clone(),
                password: Zeroizing::new(password.clone()),
            })),
            (None, None) => Ok(file),
            _ => bail!("--nats-user and --nats-password (NATS_USER, NATS_PASSWORD) go together"),
        }
    }

    /// Flags (and their env vars) over the context's settings over the defaults.
    pub(super) fn resolve(&self) -> anyhow::Result<NatsTarget> {
        self.options
            .resolve(self.nats_address.clone(), self.credentials()?)
    }

    /// Each connection flag: its id and its long name.
    pub(super) fn flags() -> Vec<(clap::Id, String)> {
        <Self as Args>::augment_args(clap::Command::new("conn"))
            .get_arguments()
            .filter_map(|a| Some((a.get_id().clone(), format!("--{}", a.get_long()?))))
            .collect()
    }

    /// Connect as a CLI command does: fail fast, with the credentials, TLS and context if
    /// given.
    pub(super) async fn connect(&self, client_name: &str) -> anyhow::Result<async_nats::Client> {
        Ok(self.connect_jetstream(client_name).await?.0)
    }

    /// Connect, and name the JetStream domain the buckets are in: for the commands that open
    /// buckets or streams themselves (`get`, `rekey`, `audit`, `backup`, `restore`).
    pub(super) async fn connect_jetstream(
        &self,
        client_name: &str,
    ) -> anyhow::Result<(async_nats::Client, Option<String>)> {
        let nats = self.resolve()?;
        let client = connect::connect_with(
            &nats.address,
            nats.credentials.as_ref(),
            &nats.tls,
            client_name,
            nats.inbox_prefix.as_deref(),
        )
        .await?;
        Ok((client, nats.js_domain))
    }
}

/// TLS, the JetStream domain, a NATS context, an nkey and the inbox prefix: the rest of the
/// connection flags, with the env vars the nats CLI reads.
#[derive(Args, Clone, Default)]
#[command(next_help_heading = HEADING)]
pub struct ConnOptions {
    /// CA certificates (PEM) the NATS server's certificate must chain to; makes TLS required
    #[arg(long, env = env::NATS_CA, value_name = "FILE", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM), for servers that verify clients; with --tls-key
    #[arg(long, env = env::NATS_CERT, value_name = "FILE", global = true)]
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM)
    #[arg(long, env = env::NATS_KEY, value_name = "FILE", global = true)]
    pub tls_key: Option<PathBuf>,
    /// Start TLS before the server's greeting (servers with `handshake_first: true`)
    #[arg(long, env = env::NATS_TLS_FIRST, global = true)]
    pub tls_first: bool,
    /// The JetStream domain the buckets are in (a leaf node reaching a hub's JetStream)
    #[arg(long, env = env::NATS_JS_DOMAIN, value_name = "DOMAIN", global = true)]
    pub js_domain: Option<String>,
    /// A nats CLI context by name (~/.config/nats/context/NAME.json, or under
    /// $XDG_CONFIG_HOME): its url, credentials, TLS and JetStream domain; flags win over it
    #[arg(long, env = env::NATS_CONTEXT, value_name = "NAME", global = true)]
    pub context: Option<String>,
    /// A file holding the user nkey seed to connect with (as `nats --nkey`; the roles'
    /// files that `piggybank nats-config` writes)
    #[arg(long, env = env::NATS_NKEY, value_name = "FILE", global = true)]
    pub nats_nkey: Option<PathBuf>,
    /// The inbox prefix of a client command's replies (as `nats --inbox-prefix`; the
    /// backend keeps its own)
    #[arg(long, env = env::NATS_INBOX_PREFIX, value_name = "PREFIX", global = true)]
    pub nats_inbox_prefix: Option<String>,
}

/// Where and how to connect, once flags and the context are merged.
pub(super) struct NatsTarget {
    pub(super) address: String,
    pub(super) credentials: Option<connect::Credentials>,
    pub(super) tls: connect::NatsTls,
    pub(super) js_domain: Option<String>,
    /// The context's inbox prefix: client connections only (a backend keeps its own).
    pub(super) inbox_prefix: Option<String>,
}

impl ConnOptions {
    /// Explicit flags (and their env vars) over the context's settings over the defaults.
    /// `address` and `credentials` are the command's own flags.
    pub(super) fn resolve(
        &self,
        address: Option<String>,
        credentials: Option<connect::Credentials>,
    ) -> anyhow::Result<NatsTarget> {
        let context = match &self.context {
            Some(name) => Some(crate::nats_context::NatsContext::load(name)?),
            None => None,
        };
        let context = context.as_ref();
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            bail!("--tls-cert and --tls-key (NATS_CERT, NATS_KEY) go together");
        }
        let flags_tls = connect::NatsTls {
            ca_file: self.tls_ca.clone(),
            cert_file: self.tls_cert.clone(),
            key_file: self.tls_key.clone(),
            handshake_first: self.tls_first,
        };
        let text = |s: Option<&str>| s.map(str::to_string);
        let js_domain = self
            .js_domain
            .clone()
            .filter(|d| !d.trim().is_empty())
            .or_else(|| text(context.and_then(|c| c.js_domain())));
        // A domain is one subject token of `$JS.<domain>.API`.
        if let Some(domain) = &js_domain {
            let token = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
            if !domain.chars().all(token) {
                bail!("JetStream domain {domain:?} is invalid: use letters, digits, '-' and '_'");
            }
        }
        // One way to authenticate: two given at once is a mistake, not a preference.
        let nkey = self.nats_nkey.clone().map(connect::Credentials::NkeyFile);
        let credentials = match (credentials, nkey) {
            (Some(_), Some(_)) => bail!(
                "give one of --nats-nkey (NATS_NKEY) and --nats-creds-file or --nats-user, not both"
            ),
            (explicit, nkey) => explicit.or(nkey),
        };
        let inbox_prefix = self
            .nats_inbox_prefix
            .clone()
            .filter(|p| !p.trim().is_empty())
            .or_else(|| text(context.and_then(|c| c.inbox_prefix())));
        if let Some(prefix) = &inbox_prefix {
            let literal = prefix.split('.').all(|t| {
                !t.is_empty() && t != "*" && t != ">" && !t.chars().any(char::is_whitespace)
            });
            if !literal {
                bail!("inbox prefix {prefix:?} is not a subject without wildcards");
            }
        }
        Ok(NatsTarget {
            address: address
                .or_else(|| text(context.and_then(|c| c.url())))
                .unwrap_or_else(|| config::DEFAULT_NATS_ADDRESS.to_string()),
            credentials: credentials.or_else(|| context.and_then(|c| c.credentials())),
            tls: flags_tls.or(context.map(|c| c.tls()).unwrap_or_default()),
            js_domain,
            inbox_prefix,
        })
    }
}

#[derive(Args, Clone)]
pub struct Target {
    /// The subject prefix of the secrets backend
    #[arg(short = 's', long, default_value = config::DEFAULT_SUBJECT_BASE)]
    pub subject_base: String,
    /// The name of the secrets backend
    #[arg(
        short = 'n',
        long = "name",
        id = "backend_name",
        value_name = "BACKEND_NAME",
        default_value = config::DEFAULT_BACKEND_NAME
    )]
    pub backend_name: String,
    /// The secrets API version
    #[arg(long, default_value = config::DEFAULT_API_VERSION)]
    pub secrets_api_version: String,
    #[command(flatten)]
    pub admin: admin_seed::AdminSeed,
}

impl Target {
    /// An admin client for the backend, signing with the admin seed when one is given.
    pub(super) async fn client(&self, conn: &Conn) -> anyhow::Result<AdminClient> {
        let signer = self.admin.signer()?;
        let nats = conn.connect("piggybank cli").await?;
        Ok(AdminClient::new(
            nats,
            &self.subject_base,
            &self.secrets_api_version,
            &self.backend_name,
        )
        .with_signer(signer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn options(nkey: Option<&str>, inbox: Option<&str>) -> ConnOptions {
        ConnOptions {
            nats_nkey: nkey.map(PathBuf::from),
            nats_inbox_prefix: inbox.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn an_nkey_file_is_the_credentials_and_one_given_with_a_creds_file_is_refused() {
        let target = options(Some("/roles/admin.nk"), None)
            .resolve(None, None)
            .unwrap();
        assert!(matches!(
            target.credentials,
            Some(connect::Credentials::NkeyFile(ref p)) if p == Path::new("/roles/admin.nk")
        ));
        let both = options(Some("/roles/admin.nk"), None)
            .resolve(None, Some(connect::Credentials::File("/x.creds".into())));
        let err = both.err().expect("two credentials are refused").to_string();
        assert!(err.contains("--nats-nkey"), "{err}");
    }

    #[test]
    fn the_inbox_prefix_flag_is_used_and_must_be_a_subject_without_wildcards() {
        let target = options(None, Some("_PIGGYBANK_ADMIN_INBOX.nats-kv"))
            .resolve(None, None)
            .unwrap();
        assert_eq!(
            target.inbox_prefix.as_deref(),
            Some("_PIGGYBANK_ADMIN_INBOX.nats-kv")
        );
        for bad in ["_INBOX.*", "a..b", "a >", ">"] {
            assert!(
                options(None, Some(bad)).resolve(None, None).is_err(),
                "{bad}"
            );
        }
    }
}
