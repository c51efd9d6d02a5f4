//! Who may call the admin interface: components linked to the provider, within their link's
//! scope.
//!
//! The caller's identity is the wadm component id the host puts in the wRPC `source-id`
//! header, with the link name. The host asserts it; nothing signs it. So this check is as
//! strong as the lattice's NATS permissions (only hosts may publish on `{lattice}.{provider}.>`).
//!
//! A scope's `prefix` names a folder: `shop` and `shop/` both mean the names under `shop/`
//! (`shop/db`, `shop/a/b`), never `shop2/x`, and never the name `shop` itself (a name is in
//! a folder or it is not; fail closed). The empty prefix means every name.
//!
//! Links reach the table two ways, and the table keeps the newest ([`Links`]):
//! - the SDK's callback, for a link it does not have yet (at start from HostData, then on
//!   each new link put);
//! - the provider's own follower of the host's link-put subject ([`Links::put_followed`]),
//!   which sees every put, including the in-place config changes the SDK 0.17.1 drops as
//!   duplicates (`Ignoring duplicate link put`).
//!
//! Invariants, all failing closed:
//! - a link is usable only if its latest config parsed; a refused update leaves the link in
//!   the table as refused (no access) until a valid update arrives;
//! - deleting a link removes it before the delete is acknowledged, so the next call is
//!   refused; a put the follower sees late, after the delete, cannot bring it back (the link
//!   is marked deleted until the SDK delivers a new put for it);
//! - once the follower has applied a put for a link, the SDK's (older or equal) delivery of
//!   the same link cannot overwrite it.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;

use crate::config::provider::link;
use crate::provider::settings::{parse_bool, SettingsError};

/// What a link allows its source component to do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkScope {
    /// The folder the component may write, map and see: empty (every name) or ending with
    /// `/` (the names under it).
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
         (letters, digits, '-', '_', '/', '=', '.'), no leading '.' or '/', and no '..'"
    )]
    BadPrefix(String),
    #[error("the link is for {0}, but this provider exports piggybank:secrets/admin")]
    WrongInterface(String),
}

/// Why a call was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ScopeError {
    #[error("the call carries no source component id")]
    Anonymous,
    #[error("component {component:?} has no link {link:?} to this provider")]
    NotLinked { component: String, link: String },
    #[error(
        "the latest config of link {link:?} of component {component:?} was refused; \
         the link has no access until a valid config is put"
    )]
    Refused { component: String, link: String },
    #[error("the link of component {0:?} is read-only")]
    ReadOnly(String),
    #[error("{name:?} is outside the link's scope (prefix {prefix:?})")]
    OutOfScope { name: String, prefix: String },
}

impl ScopeError {
    /// A short code for the audit trail: why the link did not allow the call.
    pub fn code(&self) -> &'static str {
        match self {
            ScopeError::Anonymous => "anonymous_caller",
            ScopeError::NotLinked { .. } => "not_linked",
            ScopeError::Refused { .. } => "link_config_refused",
            ScopeError::ReadOnly(_) => "read_only_link",
            ScopeError::OutOfScope { .. } => "out_of_scope",
        }
    }
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
        let given = config
            .get(link::PREFIX)
            .map(|p| p.trim().to_string())
            .unwrap_or_default();
        let prefix_ok = given
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '/' | '=' | '.'))
            && !given.starts_with('.')
            && !given.starts_with('/')
            && !given.contains("..");
        if !prefix_ok {
            return Err(LinkConfigError::BadPrefix(given));
        }
        // `shop`, `shop/` and `shop//` all name the folder `shop/`. Not empty after the trim:
        // a non-empty prefix does not start with '/'.
        let folder = given.trim_end_matches('/');
        let prefix = if folder.is_empty() {
            String::new()
        } else {
            format!("{folder}/")
        };
        let read_only = parse_bool(config, link::READ_ONLY)?.unwrap_or(false);
        Ok(LinkScope { prefix, read_only })
    }

    /// `name` is inside the scope's folder (every name, for the empty prefix).
    pub(crate) fn allows_name(&self, name: &str) -> Result<(), ScopeError> {
        if name.starts_with(&self.prefix) {
            Ok(())
        } else {
            Err(self.out_of_scope(name))
        }
    }

    /// The prefix to list with: the narrower of the caller's and the scope's, when one
    /// contains the other. (The scope's prefix ends with `/`, so `shop` narrows to `shop/`
    /// and `shop2` is out of scope.)
    pub(crate) fn narrow(&self, requested: &str) -> Result<String, ScopeError> {
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

/// What a link put did to the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applied {
    /// The link's scope (or its refusal) is now what the put said, and it was not before.
    Changed,
    /// The table already said the same (or something newer, from the follower).
    Unchanged,
    /// The link was deleted and this put may be older than the delete: ignored. The SDK
    /// delivers any later put of the link, which re-creates it.
    Deleted,
}

/// One link in the table.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// `None`: the latest config was refused, and the link has no access.
    scope: Option<LinkScope>,
    /// Set by the follower, which sees every put: the SDK's delivery is never newer.
    followed: bool,
}

#[derive(Default)]
struct Table {
    links: HashMap<(String, String), Entry>,
    /// Links deleted since the SDK last delivered a put for them.
    deleted: HashSet<(String, String)>,
}

/// Links whose target is this provider, by (source component id, link name).
#[derive(Default)]
pub(crate) struct Links {
    table: RwLock<Table>,
}

impl Links {
    /// A put the SDK delivered: a link it did not have (a new link, or one refused or
    /// deleted before). `scope` is the parsed config, or why it was refused.
    pub(crate) fn put_new(
        &self,
        component: &str,
        link_name: &str,
        scope: Result<LinkScope, LinkConfigError>,
    ) -> Applied {
        let key = (component.to_string(), link_name.to_string());
        let mut table = self.write();
        table.deleted.remove(&key);
        if table.links.get(&key).is_some_and(|e| e.followed) {
            return Applied::Unchanged;
        }
        let entry = Entry {
            scope: scope.ok(),
            followed: false,
        };
        match table.links.insert(key, entry.clone()) {
            Some(old) if old.scope == entry.scope => Applied::Unchanged,
            _ => Applied::Changed,
        }
    }

    /// A put seen on the host's link-put subject: every put, in the host's order.
    pub(crate) fn put_followed(
        &self,
        component: &str,
        link_name: &str,
        scope: Result<LinkScope, LinkConfigError>,
    ) -> Applied {
        let key = (component.to_string(), link_name.to_string());
        let mut table = self.write();
        if table.deleted.contains(&key) {
            return Applied::Deleted;
        }
        let entry = Entry {
            scope: scope.ok(),
            followed: true,
        };
        match table.links.insert(key, entry.clone()) {
            Some(old) if old.scope == entry.scope => Applied::Unchanged,
            _ => Applied::Changed,
        }
    }

    /// Remove a link; `true` if it had access.
    pub fn delete(&self, component: &str, link_name: &str) -> bool {
        let key = (component.to_string(), link_name.to_string());
        let mut table = self.write();
        let removed = table.links.remove(&key);
        table.deleted.insert(key);
        removed.is_some_and(|e| e.scope.is_some())
    }

    pub fn clear(&self) {
        let mut table = self.write();
        table.links.clear();
        table.deleted.clear();
    }

    /// Links with access (refused ones are not counted).
    pub fn len(&self) -> usize {
        self.read()
            .links
            .values()
            .filter(|e| e.scope.is_some())
            .count()
    }

    /// The scope of a call from `component` over `link_name`, if it may have `access`.
    pub(crate) fn authorize(
        &self,
        component: Option<&str>,
        link_name: &str,
        access: Access,
    ) -> Result<LinkScope, ScopeError> {
        let component = component
            .filter(|c| !c.is_empty() && *c != "<unknown>")
            .ok_or(ScopeError::Anonymous)?;
        let table = self.read();
        let entry = table
            .links
            .get(&(component.to_string(), link_name.to_string()))
            .ok_or_else(|| ScopeError::NotLinked {
                component: component.to_string(),
                link: link_name.to_string(),
            })?;
        let scope = entry.scope.as_ref().ok_or_else(|| ScopeError::Refused {
            component: component.to_string(),
            link: link_name.to_string(),
        })?;
        if access == Access::Write && scope.read_only {
            return Err(ScopeError::ReadOnly(component.to_string()));
        }
        Ok(scope.clone())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
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

    fn scope(prefix: &str) -> LinkScope {
        LinkScope::from_config(&config(&[("prefix", prefix)])).unwrap()
    }

    #[test]
    fn a_prefix_is_a_folder_matched_at_a_slash() {
        for given in ["shop", "shop/", "shop//", " shop "] {
            let s = scope(given);
            assert_eq!(s.prefix, "shop/", "{given:?}");
            assert!(s.allows_name("shop/db").is_ok());
            assert!(s.allows_name("shop/a/b").is_ok());
            for outside in ["shop2/db", "shopping", "shop", "sho", "bank/db", ""] {
                assert!(
                    s.allows_name(outside).is_err(),
                    "{given:?} allowed {outside:?}"
                );
            }
            assert_eq!(s.narrow("").unwrap(), "shop/");
            assert_eq!(s.narrow("shop").unwrap(), "shop/");
            assert_eq!(s.narrow("shop/d").unwrap(), "shop/d");
            assert!(s.narrow("shop2").is_err());
            assert!(s.narrow("shop2/").is_err());
        }
        let nested = scope("shop/eu");
        assert_eq!(nested.prefix, "shop/eu/");
        assert!(nested.allows_name("shop/eu/db").is_ok());
        assert!(nested.allows_name("shop/eu2/db").is_err());
        let all = scope("");
        assert_eq!(all.prefix, "");
        assert!(all.allows_name("anything/at/all").is_ok());
        // "/" would otherwise trim to the empty prefix: every name.
        for bad in ["/", "//", "/shop"] {
            assert!(
                matches!(
                    LinkScope::from_config(&config(&[("prefix", bad)])),
                    Err(LinkConfigError::BadPrefix(_))
                ),
                "{bad:?}"
            );
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
        links.put_new(
            "app",
            "default",
            Ok(LinkScope {
                prefix: String::new(),
                read_only: true,
            }),
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

    fn wide() -> LinkScope {
        LinkScope::default()
    }

    fn narrow() -> LinkScope {
        LinkScope {
            prefix: "shop/".into(),
            read_only: true,
        }
    }

    fn bad() -> Result<LinkScope, LinkConfigError> {
        Err(LinkConfigError::BadPrefix("a b".into()))
    }

    #[test]
    fn a_refused_update_revokes_access_until_a_valid_one() {
        for follow in [true, false] {
            let links = Links::default();
            let put = |scope| {
                if follow {
                    links.put_followed("app", "default", scope)
                } else {
                    links.put_new("app", "default", scope)
                }
            };
            assert_eq!(put(Ok(wide())), Applied::Changed);
            assert_eq!(put(bad()), Applied::Changed);
            assert_eq!(
                links.authorize(Some("app"), "default", Access::Read),
                Err(ScopeError::Refused {
                    component: "app".into(),
                    link: "default".into()
                })
            );
            assert_eq!(links.len(), 0);
            assert_eq!(put(Ok(narrow())), Applied::Changed);
            assert_eq!(
                links.authorize(Some("app"), "default", Access::Read),
                Ok(narrow())
            );
        }
    }

    #[test]
    fn the_followers_put_is_newer_than_the_sdks() {
        let links = Links::default();
        // The follower saw the link and then its narrowing before the SDK delivered the
        // (older) original put.
        links.put_followed("app", "default", Ok(wide()));
        assert_eq!(
            links.put_followed("app", "default", Ok(narrow())),
            Applied::Changed
        );
        assert_eq!(
            links.put_new("app", "default", Ok(wide())),
            Applied::Unchanged
        );
        assert_eq!(
            links.authorize(Some("app"), "default", Access::Read),
            Ok(narrow())
        );
        // An in-place update the SDK drops reaches the table through the follower.
        links.put_followed("app", "default", Ok(wide()));
        assert_eq!(
            links.authorize(Some("app"), "default", Access::Write),
            Ok(wide())
        );
    }

    #[test]
    fn a_put_seen_after_the_delete_does_not_restore_the_link() {
        let links = Links::default();
        links.put_new("app", "default", Ok(wide()));
        assert!(links.delete("app", "default"));
        // The follower lags: the put it sees now is older than the delete.
        assert_eq!(
            links.put_followed("app", "default", Ok(wide())),
            Applied::Deleted
        );
        assert!(links
            .authorize(Some("app"), "default", Access::Read)
            .is_err());
        // A new put after the delete comes from the SDK (the link is new to it again), and
        // from then on the follower applies updates.
        assert_eq!(
            links.put_new("app", "default", Ok(narrow())),
            Applied::Changed
        );
        assert_eq!(
            links.put_followed("app", "default", Ok(narrow())),
            Applied::Unchanged
        );
        assert_eq!(
            links.put_followed("app", "default", bad()),
            Applied::Changed
        );
        assert!(links
            .authorize(Some("app"), "default", Access::Read)
            .is_err());
    }
}
