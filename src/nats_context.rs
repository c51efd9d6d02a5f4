//! NATS contexts as the `nats` CLI saves them (`nats context save NAME`): one JSON file per
//! name, `$XDG_CONFIG_HOME/nats/context/NAME.json`, else `~/.config/nats/context/NAME.json`.
//! `--context NAME` (env `NATS_CONTEXT`) takes the connection from one; explicit flags win
//! over it, field by field. Only a context named so is read: the one `nats context select`
//! chose is not used unasked.
//!
//! Read: `url`, `user`/`password`, `creds`, `nkey` (a seed file), `token`, `ca`, `cert`,
//! `key`, `tls_first`, `jetstream_domain`, and `inbox_prefix` (client commands only: a
//! backend's server connection keeps its own). Refused with a clear error: `nsc`,
//! `socks_proxy`, `jetstream_api_prefix` and `user_jwt`, which piggybank cannot honour
//! (connecting without them would reach the wrong place, or fail obscurely). Other fields
//! (`description`, `color_scheme`, ...) do not concern a connection and are ignored.
//!
//! Nothing here prints a password, token or seed: errors name the file, the line and the
//! field, never a value.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use zeroize::{Zeroize, Zeroizing};

use crate::connect::{Credentials, NatsTls};

/// Why a NATS context could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("invalid NATS context name {0:?}: it names a file in the context directory")]
    InvalidName(String),
    #[error("cannot find the NATS context directory: set XDG_CONFIG_HOME or HOME")]
    NoConfigDir,
    #[error("unknown NATS context {name:?}: there is no {}", path.display())]
    Unknown { name: String, path: PathBuf },
    #[error("cannot read NATS context {}: {reason}", path.display())]
    Unreadable { path: PathBuf, reason: String },
    #[error("NATS context {} is not a valid context file (line {line}, column {column})", path.display())]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
    },
    #[error("NATS context {} sets {field:?}, which piggybank does not support{hint}", path.display())]
    Unsupported {
        path: PathBuf,
        field: &'static str,
        hint: &'static str,
    },
}

/// A context file's fields, as `nats context save` writes them (jsm.go `natscontext`).
#[derive(Default, Deserialize, Zeroize)]
#[serde(default)]
struct ContextFile {
    url: String,
    user: String,
    password: String,
    token: String,
    creds: String,
    nkey: String,
    user_jwt: String,
    cert: String,
    key: String,
    ca: String,
    tls_first: bool,
    jetstream_domain: String,
    jetstream_api_prefix: String,
    inbox_prefix: String,
    nsc: String,
    socks_proxy: String,
}

/// The connection settings of one NATS context. `Debug` is not implemented and the file is
/// wiped on drop: it may hold a password or a token.
pub struct NatsContext {
    file: ContextFile,
    /// For `~/` in the context's paths, as the nats CLI expands them.
    home: Option<PathBuf>,
}

impl Drop for NatsContext {
    fn drop(&mut self) {
        self.file.zeroize();
    }
}

impl NatsContext {
    /// The context `name`, from the directory the nats CLI uses.
    pub fn load(name: &str) -> Result<Self, ContextError> {
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from);
        let xdg = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|x| !x.is_empty())
            .map(PathBuf::from);
        let config_dir = xdg
            .or_else(|| home.as_ref().map(|h| h.join(".config")))
            .ok_or(ContextError::NoConfigDir)?;
        Self::load_from(&config_dir, name, home)
    }

    /// The context `name` under `config_dir` (`config_dir/nats/context/NAME.json`).
    pub fn load_from(
        config_dir: &Path,
        name: &str,
        home: Option<PathBuf>,
    ) -> Result<Self, ContextError> {
        let bad_name = name.is_empty()
            || name.contains("..")
            || name.contains(['/', '\\'])
            || name.chars().any(char::is_control);
        if bad_name {
            return Err(ContextError::InvalidName(name.to_string()));
        }
        let path = config_dir
            .join("nats")
            .join("context")
            .join(format!("{name}.json"));
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => Zeroizing::new(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ContextError::Unknown {
                    name: name.to_string(),
                    path,
                })
            }
            Err(e) => {
                return Err(ContextError::Unreadable {
                    path,
                    reason: e.to_string(),
                })
            }
        };
        // serde_json's message may quote a value (a password); only its position is shown.
        let file: ContextFile = serde_json::from_str(&text).map_err(|e| ContextError::Invalid {
            path: path.clone(),
            line: e.line(),
            column: e.column(),
        })?;
        let unsupported = [
            (
                "nsc",
                &file.nsc,
                ": give the user's creds file as \"creds\"",
            ),
            ("socks_proxy", &file.socks_proxy, ""),
            (
                "jetstream_api_prefix",
                &file.jetstream_api_prefix,
                ": use \"jetstream_domain\"",
            ),
            ("user_jwt", &file.user_jwt, ": use a creds file (\"creds\")"),
        ];
        let set = unsupported.iter().find(|(_, v, _)| !v.trim().is_empty());
        if let Some(&(field, _, hint)) = set {
            return Err(ContextError::Unsupported { path, field, hint });
        }
        Ok(NatsContext { file, home })
    }

    /// The server URL(s), if the context sets them.
    pub fn url(&self) -> Option<&str> {
        non_empty(&self.file.url)
    }

    /// The credentials, as the nats CLI picks them: user and password, else a creds file,
    /// else an nkey seed file, else a token.
    pub fn credentials(&self) -> Option<Credentials> {
        let f = &self.file;
        if let Some(user) = non_empty(&f.user) {
            return Some(Credentials::UserPassword {
                user: user.to_string(),
                password: Zeroizing::new(f.password.clone()),
            });
        }
        if let Some(creds) = self.path(&f.creds) {
            return Some(Credentials::File(creds));
        }
        if let Some(nkey) = self.path(&f.nkey) {
            return Some(Credentials::NkeyFile(nkey));
        }
        non_empty(&f.token).map(|t| Credentials::Token(Zeroizing::new(t.to_string())))
    }

    /// TLS: the CA, the client certificate and key, handshake first.
    pub fn tls(&self) -> NatsTls {
        NatsTls {
            ca_file: self.path(&self.file.ca),
            cert_file: self.path(&self.file.cert),
            key_file: self.path(&self.file.key),
            handshake_first: self.file.tls_first,
        }
    }

    /// The JetStream domain, if the context sets one.
    pub fn js_domain(&self) -> Option<&str> {
        non_empty(&self.file.jetstream_domain)
    }

    /// The inbox prefix of a client connection, if the context sets one.
    pub fn inbox_prefix(&self) -> Option<&str> {
        non_empty(&self.file.inbox_prefix)
    }

    /// A path from the context, with a leading `~/` expanded as the nats CLI does.
    fn path(&self, value: &str) -> Option<PathBuf> {
        let value = non_empty(value)?;
        match (value.strip_prefix("~/"), &self.home) {
            (Some(rest), Some(home)) => Some(home.join(rest)),
            _ => Some(PathBuf::from(value)),
        }
    }
}

fn non_empty(value: &str) -> Option<&str> {
    Some(value.trim()).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, json: &str) {
        let contexts = dir.join("nats").join("context");
        std::fs::create_dir_all(&contexts).unwrap();
        std::fs::write(contexts.join(format!("{name}.json")), json).unwrap();
    }

    #[test]
    fn reads_a_context_the_nats_cli_saved() {
        let dir = tempfile::tempdir().unwrap();
        // As `nats context save` writes it: every field, most of them empty.
        write(
            dir.path(),
            "hub",
            r#"{
  "description": "the hub",
  "url": "tls://nats.example:4222",
  "socks_proxy": "",
  "token": "",
  "user": "",
  "password": "",
  "creds": "~/creds/app.creds",
  "nkey": "",
  "cert": "/etc/nats/client.pem",
  "key": "/etc/nats/client-key.pem",
  "ca": "~/ca.pem",
  "nsc": "",
  "jetstream_domain": "hub",
  "jetstream_api_prefix": "",
  "jetstream_event_prefix": "",
  "inbox_prefix": "_INBOX_app",
  "user_jwt": "",
  "color_scheme": "",
  "tls_first": true
}"#,
        );
        let home = PathBuf::from("/home/op");
        let ctx = NatsContext::load_from(dir.path(), "hub", Some(home)).unwrap();
        assert_eq!(ctx.url(), Some("tls://nats.example:4222"));
        assert!(matches!(
            ctx.credentials(),
            Some(Credentials::File(p)) if p == Path::new("/home/op/creds/app.creds")
        ));
        assert_eq!(
            ctx.tls(),
            NatsTls {
                ca_file: Some("/home/op/ca.pem".into()),
                cert_file: Some("/etc/nats/client.pem".into()),
                key_file: Some("/etc/nats/client-key.pem".into()),
                handshake_first: true,
            }
        );
        assert_eq!(ctx.js_domain(), Some("hub"));
        assert_eq!(ctx.inbox_prefix(), Some("_INBOX_app"));
    }

    #[test]
    fn credentials_are_picked_as_the_nats_cli_picks_them() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "a",
            r#"{"user": "app", "password": "pw", "creds": "/c"}"#,
        );
        write(dir.path(), "b", r#"{"nkey": "/k.nk", "token": "t"}"#);
        write(dir.path(), "c", r#"{"token": "t"}"#);
        write(dir.path(), "d", r#"{"url": "nats://h:4222"}"#);
        let creds = |name| {
            NatsContext::load_from(dir.path(), name, None)
                .unwrap()
                .credentials()
        };
        assert!(
            matches!(creds("a"), Some(Credentials::UserPassword { user, .. }) if user == "app")
        );
        assert!(matches!(creds("b"), Some(Credentials::NkeyFile(p)) if p == Path::new("/k.nk")));
        assert!(matches!(creds("c"), Some(Credentials::Token(_))));
        assert!(creds("d").is_none());
    }

    #[test]
    fn errors_name_the_file_never_a_value() {
        let dir = tempfile::tempdir().unwrap();
        let load = |name: &str| match NatsContext::load_from(dir.path(), name, None) {
            Ok(_) => panic!("{name} loaded"),
            Err(e) => e.to_string(),
        };
        assert!(load("missing").contains("unknown NATS context \"missing\""));
        for name in ["", "../x", "a/b", "a\\b"] {
            assert!(load(name).contains("invalid NATS context name"), "{name}");
        }
        // A value of the wrong type: serde would quote it; the message must not.
        write(dir.path(), "typo", r#"{"user": "u", "password": 12345678}"#);
        let text = load("typo");
        assert!(
            text.contains("line 1") && !text.contains("12345678"),
            "{text}"
        );
        write(dir.path(), "bad", r#"{"tls_first": "hunter2"}"#);
        assert!(!load("bad").contains("hunter2"));
        write(dir.path(), "nsc", r#"{"nsc": "nsc://op/acct/user"}"#);
        let text = load("nsc");
        assert!(
            text.contains("\"nsc\"") && !text.contains("op/acct"),
            "{text}"
        );
    }
}
