//! Who may call the admin interface: components linked to the provider, within their link's
//! scope.
//!
//! The caller's identity is the wadm component id the host puts in the wRPC `source-id`
//! header, with the link name. The host asserts it; nothing signs it. So this check is as
//! strong as the lattice's NATS permissions (only hosts may publish on `{lattice}.{provider}.>`).
//!
//! Invariants: a link is in the table only if its config parsed; deleting a link removes it
//! before the delete is acknowledged, so the next call is refused.

use std::collections::HashMap;
use std::sync::RwLock;

use crate::config::provider::link;
use crate::provider::settings::{parse_bool, SettingsError};

/// What a link allows its source component to do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkScope {
    /// Names the component may write, map and see start with this ("": every name).
    pub prefix: String,
    /// The component may only call functions that change nothing.
    pub read_only: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LinkConfigError {
    #[error("unknown link config key {0:?} (known: prefix, read_only)")]
    UnknownKey(String),
    #[error("link config {0}")]
    Invalid(#[from] SettingsError),
    #[error(
        "link config prefix {0:?} is invalid: use the characters of secret names \
         (letters, digits, '-', '_', '/', '=', '.') and no leading '.' or '..'"
    )]
    BadPrefix(String),
    #[error("the link is for {0}, but this provider exports piggybank:secrets/admin")]
    WrongInterface(String),
}

/// Why a call was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScopeError {
    #[error("the call carries no source component id")]
    Anonymous,
    #[error("component {component:?} has no link {link:?} to this provider")]
    NotLinked { component: String, link: String },
    #[error("the link of component {0:?} is read-only")]
    ReadOnly(String),
    #[error("{name:?} is outside the link's scope (prefix {prefix:?})")]
    OutOfScope { name: String, prefix: String },
}

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

impl LinkScope {
    /// Parse a link's target config. Unknown keys are refused so a typo cannot widen a scope.
    pub fn from_config(config: &HashMap<String, String>) -> Result<Self, LinkConfigError> {
        if let Some(key) = config.keys().find(|k| !link::KEYS.contains(&k.as_str())) {
            return Err(LinkConfigError::UnknownKey(key.clone()));
        }
        let prefix = config
            .get(link::PREFIX)
            .map(|p| p.trim().to_string())
            .unwrap_or_default();
        let prefix_ok = prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '/' | '=' | '.'))
            && !prefix.starts_with('.')
            && !prefix.contains("..");
        if !prefix_ok {
            return Err(LinkConfigError::BadPrefix(prefix));
        }
        let read_only = parse_bool(config, link::READ_ONLY)?.unwrap_or(false);
        Ok(LinkScope { prefix, read_only })
    }

    pub fn allows_name(&self, name: &str) -> Result<(), ScopeError> {
        if name.starts_with(&self.prefix) {
            Ok(())
        } else {
            Err(self.out_of_scope(name))
        }
    }

    /// The prefix to list with: the narrower of the caller's and the scope's, when one
    /// contains the other.
    pub fn narrow(&self, requested: &str) -> Result<String, ScopeError> {
        if requested.starts_with(&self.prefix) {
            Ok(requested.to_string())
        } else if self.prefix.starts_with(requested) {
            Ok(self.prefix.clone())
        } else {
            Err(self.out_of_scope(requested))
        }
    }

    fn out_of_scope(&self, name: &str) -> ScopeError {
        ScopeError::OutOfScope {
            name: name.to_string(),
            prefix: self.prefix.clone(),
        }
    }
}

/// Links whose target is this provider, by (source component id, link name).
#[derive(Default)]
pub struct Links {
    table: RwLock<HashMap<(String, String), LinkScope>>,
}

impl Links {
    pub fn put(&self, component: &str, link_name: &str, scope: LinkScope) {
        self.write()
            .insert((component.to_string(), link_name.to_string()), scope);
    }

    pub fn delete(&self, component: &str, link_name: &str) -> bool {
        self.write()
            .remove(&(component.to_string(), link_name.to_string()))
            .is_some()
    }

    pub fn clear(&self) {
        self.write().clear();
    }

    pub fn len(&self) -> usize {
        self.table.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The scope of a call from `component` over `link_name`, if it may have `access`.
    pub fn authorize(
        &self,
        component: Option<&str>,
        link_name: &str,
        access: Access,
    ) -> Result<LinkScope, ScopeError> {
        let component = component
            .filter(|c| !c.is_empty() && *c != "<unknown>")
            .ok_or(ScopeError::Anonymous)?;
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        let scope = table
            .get(&(component.to_string(), link_name.to_string()))
            .ok_or_else(|| ScopeError::NotLinked {
                component: component.to_string(),
                link: link_name.to_string(),
            })?;
        if access == Access::Write && scope.read_only {
            return Err(ScopeError::ReadOnly(component.to_string()));
        }
        Ok(scope.clone())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<(String, String), LinkScope>> {
        self.table.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn link_config_parses_prefix_and_read_only() {
        assert_eq!(
            LinkScope::from_config(&config(&[])).unwrap(),
            LinkScope::default()
        );
        let scope =
            LinkScope::from_config(&config(&[("prefix", "shop/"), ("read_only", "true")])).unwrap();
        assert_eq!(scope.prefix, "shop/");
        assert!(scope.read_only);
    }

    #[test]
    fn bad_link_config_is_refused() {
        for bad in [
            config(&[("read-only", "true")]),
            config(&[("read_only", "yes")]),
            config(&[("prefix", "a b")]),
            config(&[("prefix", "a.>")]),
            config(&[("prefix", ".a")]),
            config(&[("prefix", "a..b")]),
        ] {
            assert!(LinkScope::from_config(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn scope_checks_names_and_narrows_list_prefixes() {
        let scope = LinkScope {
            prefix: "shop/".into(),
            read_only: false,
        };
        assert!(scope.allows_name("shop/db").is_ok());
        assert!(scope.allows_name("bank/db").is_err());
        assert_eq!(scope.narrow("").unwrap(), "shop/");
        assert_eq!(scope.narrow("sh").unwrap(), "shop/");
        assert_eq!(scope.narrow("shop/d").unwrap(), "shop/d");
        assert!(scope.narrow("bank/").is_err());
    }

    #[test]
    fn authorize_needs_a_link_and_honours_read_only() {
        let links = Links::default();
        assert_eq!(
            links.authorize(None, "default", Access::Read),
            Err(ScopeError::Anonymous)
        );
        assert!(matches!(
            links.authorize(Some("app"), "default", Access::Read),
            Err(ScopeError::NotLinked { .. })
        ));
        links.put(
            "app",
            "default",
            LinkScope {
                prefix: String::new(),
                read_only: true,
            },
        );
        assert!(links
            .authorize(Some("app"), "default", Access::Read)
            .is_ok());
        assert_eq!(
            links.authorize(Some("app"), "default", Access::Write),
            Err(ScopeError::ReadOnly("app".into()))
        );
        assert!(links.authorize(Some("app"), "other", Access::Read).is_err());
        assert!(links.delete("app", "default"));
        assert!(links
            .authorize(Some("app"), "default", Access::Read)
            .is_err());
    }
}
