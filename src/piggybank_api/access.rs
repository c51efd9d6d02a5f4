//! What an API application may reach in the store, decided once: [`ApiAccess::resolve`].
//!
//! **Two namespaces.** An application's own names live under [`API_NAMESPACE`]
//! (`_api/<application>/<name>`), which the wasmCloud protocol never serves to a component
//! (`crate::backend`'s read refuses it, and no mapping may name it). The names components
//! read are the protocol's. So a service allowed on `piggybank.shop.>` can neither read nor
//! overwrite what a component reads as `shop/db-password`, with or without `--admin-keys`.
//!
//! **Sharing is the operator's.** `--share-with-api shop=shop/db-password` lets `shop` read
//! the protocol's secret `shop/db-password` on `piggybank.shop.db-password` (the API name is
//! the secret's name without a leading `<application>/`, else the whole name); `:rw` after
//! it lets `shop` also post and delete it. A share hides the application's own name of the
//! same API name.
//!
//! **Read-only applications.** `--read-only-apps global`: the application's requests may
//! only `get`; its names are written by signed admin commands (the protocol's `put_secret`
//! on `_api/global/<name>`). This narrows a `:rw` share too.
//!
//! Pure: every rule is unit-tested here.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use crate::store::{validate_name, ApplicationName, API_NAMESPACE};

use super::{ApiError, Method};

/// Whether `application` is a valid application name ([`ApplicationName`]).
pub fn valid_application(application: &str) -> bool {
    ApplicationName::parse(application).is_ok()
}

/// The store key of an application's own name: `_api/<application>/<name>`.
pub fn own_key(application: &str, name: &str) -> String {
    format!("{API_NAMESPACE}{application}/{name}")
}

/// `--share-with-api APP=SECRET[:rw]`: the protocol's secret `SECRET`, shared with the API
/// application `APP`, read-only unless `:rw`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiShare {
    pub application: String,
    pub secret: String,
    pub writable: bool,
}

impl ApiShare {
    /// The name the application uses for it: `secret` without a leading `<application>/`.
    pub fn api_name(&self) -> &str {
        self.secret
            .strip_prefix(&self.application)
            .and_then(|rest| rest.strip_prefix('/'))
            .filter(|rest| !rest.is_empty())
            .unwrap_or(&self.secret)
    }
}

impl FromStr for ApiShare {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let usage = || format!("{s:?}: expected APP=SECRET or APP=SECRET:rw");
        let (application, rest) = s.trim().split_once('=').ok_or_else(usage)?;
        let (secret, writable) = match rest.rsplit_once(':') {
            Some((secret, "rw")) => (secret, true),
            Some((secret, "ro")) => (secret, false),
            Some(_) => return Err(usage()),
            None => (rest, false),
        };
        if !valid_application(application) {
            return Err(format!(
                "{s:?}: the application must be letters, digits, '-' or '_'"
            ));
        }
        validate_name(secret).map_err(|e| format!("{s:?}: {e}"))?;
        if secret.starts_with(API_NAMESPACE) {
            return Err(format!(
                "{s:?}: {API_NAMESPACE}... is already the API's: share a protocol secret"
            ));
        }
        Ok(Self {
            application: application.to_string(),
            secret: secret.to_string(),
            writable,
        })
    }
}

/// Where a request goes in the store, and whether it may change it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub key: String,
    pub writable: bool,
    /// Whether it is a shared protocol secret (the audit record says so).
    pub shared: bool,
}

/// The shares and read-only applications of one API door.
#[derive(Debug, Clone, Default)]
pub struct ApiAccess {
    /// (application, API name) -> share.
    shares: HashMap<(String, String), ApiShare>,
    read_only: HashSet<String>,
}

impl ApiAccess {
    /// Refuses a read-only application that is not a valid name, and two shares of one API
    /// name.
    pub fn new(shares: &[ApiShare], read_only_apps: &[String]) -> Result<Self, String> {
        let mut by_name = HashMap::new();
        for share in shares {
            let key = (share.application.clone(), share.api_name().to_string());
            if let Some(other) = by_name.insert(key, share.clone()) {
                return Err(format!(
                    "--share-with-api: {}={} and {}={} are the same API name {:?}",
                    other.application,
                    other.secret,
                    share.application,
                    share.secret,
                    share.api_name()
                ));
            }
        }
        let mut read_only = HashSet::new();
        for app in read_only_apps
            .iter()
            .map(|a| a.trim())
            .filter(|a| !a.is_empty())
        {
            if !valid_application(app) {
                return Err(format!(
                    "--read-only-apps: {app:?} is not an application name (letters, digits, \
                     '-' or '_')"
                ));
            }
            read_only.insert(app.to_string());
        }
        // What a read-only application serves is written by admins only: so it may be
        // answered in any application's inbox (`is_read_only`). A secret it shares may not
        // be writable by another application.
        for share in shares.iter().filter(|s| read_only.contains(&s.application)) {
            if let Some(writer) = shares
                .iter()
                .filter(|other| !read_only.contains(&other.application))
                .find(|other| other.writable && other.secret == share.secret)
            {
                return Err(format!(
                    "--share-with-api: {} is shared with the read-only application {} and \
                     writable by {}: a read-only application serves only what admins write",
                    share.secret, share.application, writer.application
                ));
            }
        }
        Ok(Self {
            shares: by_name,
            read_only,
        })
    }

    /// Whether `application` may only read (`--read-only-apps`): everything it serves was
    /// written by signed admin commands, so its requests are answered in any trusted reply
    /// namespace, as a host's are (every service reads it from its own inbox, and is told
    /// there that it may not write).
    pub fn is_read_only(&self, application: &str) -> bool {
        self.read_only.contains(application)
    }

    /// The store key `application`'s `name` stands for, and whether the application may
    /// change it there.
    pub fn resolve(&self, application: &str, name: &str) -> Target {
        let app_writable = !self.read_only.contains(application);
        match self
            .shares
            .get(&(application.to_string(), name.to_string()))
        {
            Some(share) => Target {
                key: share.secret.clone(),
                writable: share.writable && app_writable,
                shared: true,
            },
            None => Target {
                key: own_key(application, name),
                writable: app_writable,
                shared: false,
            },
        }
    }
}

impl Target {
    /// Whether `method` may be done here: `get` always; `post` and `delete` only where the
    /// application may write.
    pub fn permits(&self, method: Method) -> Result<(), ApiError> {
        match method {
            Method::Get => Ok(()),
            Method::Post | Method::Delete if self.writable => Ok(()),
            Method::Post | Method::Delete => Err(ApiError::ReadOnly(
                "read-only for this application: written by signed admin commands only".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(s: &str) -> ApiShare {
        s.parse().unwrap()
    }

    #[test]
    fn shares_parse_read_only_unless_stated() {
        let s = share("shop=shop/db-password");
        assert_eq!((s.api_name(), s.writable), ("db-password", false));
        let s = share("shop=shop/db-password:rw");
        assert_eq!((s.secret.as_str(), s.writable), ("shop/db-password", true));
        assert!(!share("shop=shop/x:ro").writable);
        // A secret outside the application's prefix keeps its whole name.
        assert_eq!(share("shop=common/tls-ca").api_name(), "common/tls-ca");
        assert_eq!(share("shop=shopping/x").api_name(), "shopping/x");
        for bad in [
            "shop",
            "shop=",
            "=x",
            "sh.op=x",
            "shop=x:rwx",
            "shop=a b",
            "shop=_api/shop/x",
            "shop=>",
        ] {
            assert!(bad.parse::<ApiShare>().is_err(), "{bad}");
        }
    }

    #[test]
    fn an_application_reaches_only_its_own_namespace_unless_shared() {
        let access = ApiAccess::new(&[share("shop=shop/db-password")], &[]).unwrap();
        let own = access.resolve("shop", "token");
        assert!(own.permits(Method::Post).is_ok());
        assert_eq!(own.key, "_api/shop/token");
        assert!(!own.shared);
        // The protocol's `shop/token` is another key: the API never names it.
        assert_ne!(own.key, "shop/token");
        let shared = access.resolve("shop", "db-password");
        assert_eq!(
            (shared.key.as_str(), shared.shared),
            ("shop/db-password", true)
        );
        assert!(shared.permits(Method::Get).is_ok());
        for method in [Method::Post, Method::Delete] {
            assert_eq!(shared.permits(method).unwrap_err().status(), 403);
        }
        // Another application does not see shop's share.
        let other = access.resolve("billing", "db-password");
        assert_eq!(other.key, "_api/billing/db-password");
    }

    #[test]
    fn read_only_applications_only_get_even_through_a_writable_share() {
        let access =
            ApiAccess::new(&[share("global=global/ca:rw")], &["global".to_string()]).unwrap();
        let permits = |app: &str, name: &str, method| access.resolve(app, name).permits(method);
        assert!(permits("global", "tls", Method::Get).is_ok());
        assert!(permits("global", "ca", Method::Get).is_ok());
        for (name, method) in [
            ("tls", Method::Post),
            ("tls", Method::Delete),
            ("ca", Method::Post),
        ] {
            assert_eq!(permits("global", name, method).unwrap_err().status(), 403);
        }
        assert!(permits("shop", "tls", Method::Post).is_ok());
    }

    #[test]
    fn conflicting_shares_and_bad_application_names_are_refused() {
        assert!(ApiAccess::new(&[share("shop=shop/x"), share("shop=x")], &[]).is_err());
        assert!(ApiAccess::new(&[], &["a.b".to_string()]).is_err());
        assert!(ApiAccess::new(&[], &["global".to_string(), " ".to_string()]).is_ok());
        // A read-only application serves only what admins write.
        let global = ["global".to_string()];
        assert!(ApiAccess::new(&[share("global=ca"), share("shop=ca:rw")], &global).is_err());
        assert!(ApiAccess::new(&[share("global=ca"), share("shop=ca")], &global).is_ok());
    }
}
