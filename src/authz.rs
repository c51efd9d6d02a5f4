//! Authorization of secret reads, in one place.
//!
//! A `get` is allowed only when, in this order:
//! 1. the host JWT verifies (signature, `exp`, `nbf`). Hosts sign it with an account key they
//!    create at start, so its issuer is not a trust anchor;
//! 2. the entity JWT (component or provider claims) verifies the same way;
//! 3. when trusted issuers are configured, the entity JWT's issuer is one of them;
//! 4. the secret is granted: to the entity's subject, or to the wadm application the host
//!    names in `context.application.name` ([`crate::store::MappingTable`], [`Grantee`]);
//! 5. the manifest's policy properties ([`Policy`]) do not narrow that grant away. They may
//!    narrow a grant, never widen it.
//!
//! The application name is the host's claim, not signed: whoever may publish on the `get`
//! subject may name any application (as they may present any component's public JWT). A
//! grant by application is as strong as the NATS permissions on that subject.
//!
//! An unmapped entity is `Unauthorized` whether or not the secret exists: no existence oracle.
//!
//! Hosts send the same two JWTs for every secret a component needs, so a verified token is
//! remembered by its exact text until its `exp` (see [`VerifiedTokens`]): the ed25519 checks
//! then leave the hot path. A token that fails is never remembered, and the trusted-issuer
//! list is applied on every request.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::error::ErrorKind;
use serde::de::DeserializeOwned;
use serde::Serialize;
use wascap::jwt::{
    validate_token, CapabilityProvider, Claims, Component, Host as HostClaims, WascapEntity,
};

use crate::store::mappings::Grantee;
use crate::store::EntityKey;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthzError {
    #[error("invalid entity JWT: {0}")]
    InvalidEntityJwt(String),
    #[error("invalid host JWT: {0}")]
    InvalidHostJwt(String),
    #[error("entity JWT issuer {0} is not trusted")]
    UntrustedIssuer(String),
    #[error("entity is not mapped to this secret")]
    NotMapped,
    #[error("invalid policy: {0}")]
    Policy(String),
    #[error("invalid trusted issuer {0:?}: expected an account public key (A...)")]
    BadTrustedIssuer(String),
}

impl AuthzError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            AuthzError::Policy(_) => ErrorKind::Invalid,
            AuthzError::BadTrustedIssuer(_) => ErrorKind::Internal,
            _ => ErrorKind::Denied,
        }
    }
}

/// The verified identity of a requesting component or provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entity {
    /// The JWT subject, checked as a component or provider key: the key mappings are looked
    /// up by. A JWT whose subject is anything else (a wildcard, a dotted text, another kind
    /// of key) is refused here, before any lookup.
    pub subject: EntityKey,
    pub issuer: String,
}

/// A verified host JWT: what it claims (see `verify_host`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// The host's key, as its JWT claims.
    pub subject: String,
}

/// Verifies JWTs and applies the trusted-issuer list.
#[derive(Debug, Clone, Default)]
pub struct Authorizer {
    /// `None`: any issuer with a valid signature is accepted (logged once at start).
    trusted_issuers: Option<HashSet<String>>,
    hosts: Arc<VerifiedTokens<Host>>,
    entities: Arc<VerifiedTokens<Entity>>,
}

/// Most tokens remembered at once (per kind); beyond it expired entries are dropped first,
/// then all of them. A lattice presents one JWT per host and one per component or provider.
const VERIFIED_TOKENS: usize = 8_192;
/// Longer tokens are verified every time, never remembered: with [`VERIFIED_TOKENS`] this
/// bounds the memory anyone can make the cache hold to 32 MiB per kind (wascap JWTs are
/// typically under 2 KiB).
const MAX_REMEMBERED_TOKEN: usize = 4_096;

/// Tokens whose signature and dates verified, by their exact text, until they expire.
#[derive(Debug)]
pub struct VerifiedTokens<T> {
    map: RwLock<HashMap<String, Verified<T>>>,
    /// Lookups answered from the map, and lookups that were not (metrics).
    hits: AtomicU64,
    misses: AtomicU64,
}

#[derive(Debug, Clone)]
struct Verified<T> {
    entity: T,
    /// `exp` (seconds since the epoch); `None`: the token never expires.
    expires: Option<u64>,
}

impl<T> Default for VerifiedTokens<T> {
    fn default() -> Self {
        Self {
            map: RwLock::default(),
            hits: AtomicU64::default(),
            misses: AtomicU64::default(),
        }
    }
}

impl<T: Clone> VerifiedTokens<T> {
    fn get(&self, token: &str, now: u64) -> Option<T> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        let found = map
            .get(token)
            .filter(|hit| hit.expires.is_none_or(|exp| now < exp))
            .map(|hit| hit.entity.clone());
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    fn insert(&self, token: &str, entity: T, expires: Option<u64>, now: u64) {
        if token.len() > MAX_REMEMBERED_TOKEN {
            return;
        }
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        if map.len() >= VERIFIED_TOKENS {
            map.retain(|_, v| v.expires.is_none_or(|exp| now < exp));
            if map.len() >= VERIFIED_TOKENS {
                map.clear();
            }
        }
        map.insert(token.to_string(), Verified { entity, expires });
    }

    /// Lookups answered from the map, and lookups that were not.
    fn counts(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|p| p.into_inner()).len()
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Authorizer {
    /// `trusted` is a list of account public keys; empty means "accept any issuer".
    pub fn new(trusted: &[String]) -> Result<Self, AuthzError> {
        let mut set = HashSet::new();
        for key in trusted.iter().map(|k| k.trim()).filter(|k| !k.is_empty()) {
            let ok = nkeys::KeyPair::from_public_key(key)
                .is_ok_and(|kp| kp.key_pair_type() == nkeys::KeyPairType::Account);
            if !ok {
                return Err(AuthzError::BadTrustedIssuer(crate::keys::shown_key(key)));
            }
            set.insert(key.to_string());
        }
        Ok(Self {
            trusted_issuers: (!set.is_empty()).then_some(set),
            ..Self::default()
        })
    }

    /// Verify a host JWT; returns the host (its subject is the host's key).
    pub fn verify_host(&self, jwt: &str) -> Result<Host, AuthzError> {
        let now = now_secs();
        if let Some(host) = self.hosts.get(jwt, now) {
            return Ok(host);
        }
        let claims = verify::<HostClaims>(jwt).map_err(AuthzError::InvalidHostJwt)?;
        let host = Host {
            subject: claims.subject,
        };
        self.hosts.insert(jwt, host.clone(), claims.expires, now);
        Ok(host)
    }

    /// Verify a component or provider JWT and its issuer.
    pub fn verify_entity(&self, jwt: &str) -> Result<Entity, AuthzError> {
        let now = now_secs();
        if let Some(entity) = self.entities.get(jwt, now) {
            self.check_issuer(&entity)?;
            return Ok(entity);
        }
        let (subject, issuer, expires) = match verify::<Component>(jwt) {
            Ok(c) => (c.subject, c.issuer, c.expires),
            Err(component_err) => match verify::<CapabilityProvider>(jwt) {
                Ok(p) => (p.subject, p.issuer, p.expires),
                Err(_) => return Err(AuthzError::InvalidEntityJwt(component_err)),
            },
        };
        let subject = EntityKey::parse(&subject).map_err(|_| {
            AuthzError::InvalidEntityJwt("its subject is not a component or provider key".into())
        })?;
        let entity = Entity { subject, issuer };
        self.check_issuer(&entity)?;
        // Only trusted entities are remembered: nobody else can fill the cache.
        self.entities.insert(jwt, entity.clone(), expires, now);
        Ok(entity)
    }

    fn check_issuer(&self, entity: &Entity) -> Result<(), AuthzError> {
        match &self.trusted_issuers {
            Some(trusted) if !trusted.contains(&entity.issuer) => {
                Err(AuthzError::UntrustedIssuer(entity.issuer.clone()))
            }
            _ => Ok(()),
        }
    }

    /// JWT checks answered from the caches, and checks that were not: (hits, misses).
    pub fn cache_counts(&self) -> (u64, u64) {
        let (hosts, entities) = (self.hosts.counts(), self.entities.counts());
        (hosts.0 + entities.0, hosts.1 + entities.1)
    }

    /// Tokens remembered as verified: (hosts, entities).
    pub fn verified_tokens(&self) -> (usize, usize) {
        (self.hosts.len(), self.entities.len())
    }
}

fn verify<T>(jwt: &str) -> Result<Claims<T>, String>
where
    T: Serialize + DeserializeOwned + WascapEntity,
{
    let validation = validate_token::<T>(jwt).map_err(|e| e.to_string())?;
    if !validation.signature_valid {
        return Err("signature is not valid".into());
    }
    if validation.expired {
        return Err(format!("token expired {}", validation.expires_human));
    }
    if validation.cannot_use_yet {
        return Err(format!(
            "token cannot be used before {}",
            validation.not_before_human
        ));
    }
    Claims::<T>::decode(jwt).map_err(|e| e.to_string())
}

/// Which kind of grant a policy lets serve a get (property `grant`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GrantKinds {
    /// Either (the default).
    #[default]
    Any,
    /// `"entity"`: only a mapping of the entity's key.
    Entity,
    /// `"application"`: only a grant to the application.
    Application,
}

/// The properties piggybank honours in a manifest's secrets policy; each only narrows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// `application`: the get is refused unless `context.application.name` is this.
    pub application: Option<String>,
    /// `grant`: which kind of grant may serve it.
    pub grant: GrantKinds,
}

impl Policy {
    /// Whether a grant to `grantee` may serve a get from `application` under this policy.
    pub fn admits(&self, grantee: &Grantee, application: Option<&str>) -> bool {
        let application_ok = match &self.application {
            Some(required) => application == Some(required.as_str()),
            None => true,
        };
        let kind_ok = matches!(
            (self.grant, grantee),
            (GrantKinds::Any, _)
                | (GrantKinds::Entity, Grantee::Entity(_))
                | (GrantKinds::Application, Grantee::Application(_))
        );
        application_ok && kind_ok
    }
}

/// The policy wadm passes in `context.application.policy`: a JSON string
/// `{"type":"properties.secret.wasmcloud.dev/v1alpha1","properties":{...}}`.
///
/// Piggybank validates its shape (malformed JSON, a wrong `type` or non-object `properties`
/// is a `PolicyError`) and honours two properties, which only narrow ([`Policy`]):
/// `application` (a string) and `grant` (`"entity"`, `"application"` or `"any"`); a wrong
/// type for either is a `PolicyError`. Other properties are ignored.
pub fn parse_policy(policy: &str) -> Result<Policy, AuthzError> {
    if policy.trim().is_empty() {
        return Ok(Policy::default());
    }
    let value: serde_json::Value =
        serde_json::from_str(policy).map_err(|e| AuthzError::Policy(e.to_string()))?;
    let obj = value
        .as_object()
        .ok_or_else(|| AuthzError::Policy("policy must be a JSON object".into()))?;
    if let Some(ty) = obj.get("type") {
        if ty.as_str() != Some(wasmcloud_secrets_types::SECRET_POLICY_PROPERTIES_TYPE) {
            return Err(AuthzError::Policy(format!(
                "unsupported policy type {ty}, expected \"{}\"",
                wasmcloud_secrets_types::SECRET_POLICY_PROPERTIES_TYPE
            )));
        }
    }
    let properties = match obj.get("properties") {
        None => return Ok(Policy::default()),
        Some(serde_json::Value::Object(properties)) => properties,
        Some(_) => {
            return Err(AuthzError::Policy(
                "properties must be a JSON object".into(),
            ))
        }
    };
    let application = match properties.get("application") {
        None => None,
        Some(serde_json::Value::String(app)) => Some(app.clone()),
        Some(_) => {
            return Err(AuthzError::Policy(
                "property application must be a string".into(),
            ))
        }
    };
    let grant = match properties.get("grant").map(|g| g.as_str()) {
        None | Some(Some("any")) => GrantKinds::Any,
        Some(Some("entity")) => GrantKinds::Entity,
        Some(Some("application")) => GrantKinds::Application,
        Some(_) => {
            return Err(AuthzError::Policy(
                "property grant must be \"entity\", \"application\" or \"any\"".into(),
            ))
        }
    };
    Ok(Policy { application, grant })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn component(account: &nkeys::KeyPair, exp: Option<u64>) -> (String, String) {
        let module = nkeys::KeyPair::new_module();
        let claims = Claims::<Component>::with_dates(
            "c".into(),
            account.public_key(),
            module.public_key(),
            None,
            None,
            exp,
            false,
            None,
            None,
            None,
        );
        (claims.encode(account).unwrap(), module.public_key())
    }

    #[test]
    fn component_and_provider_jwts_verify_and_yield_their_subject() {
        let account = nkeys::KeyPair::new_account();
        let (jwt, subject) = component(&account, None);
        let auth = Authorizer::new(&[]).unwrap();
        assert_eq!(auth.verify_entity(&jwt).unwrap().subject.as_str(), subject);

        let service = nkeys::KeyPair::new_service();
        let provider = Claims::<CapabilityProvider>::new(
            "p".into(),
            account.public_key(),
            service.public_key(),
            "vendor".into(),
            None,
            None,
            HashMap::new(),
        )
        .encode(&account)
        .unwrap();
        assert_eq!(
            auth.verify_entity(&provider).unwrap().subject.as_str(),
            service.public_key()
        );
    }

    #[test]
    fn expired_tampered_and_untrusted_jwts_are_refused() {
        let account = nkeys::KeyPair::new_account();
        let (expired, _) = component(&account, Some(1));
        let auth = Authorizer::new(&[]).unwrap();
        assert!(matches!(
            auth.verify_entity(&expired),
            Err(AuthzError::InvalidEntityJwt(_))
        ));

        let (jwt, _) = component(&account, None);
        let mut parts: Vec<String> = jwt.split('.').map(String::from).collect();
        parts[2] = parts[2].chars().rev().collect();
        assert!(auth.verify_entity(&parts.join(".")).is_err());
        assert!(auth.verify_entity("garbage").is_err());

        let other = nkeys::KeyPair::new_account().public_key();
        let strict = Authorizer::new(&[other]).unwrap();
        assert_eq!(
            strict.verify_entity(&jwt),
            Err(AuthzError::UntrustedIssuer(account.public_key()))
        );
        let trusting = Authorizer::new(&[account.public_key()]).unwrap();
        assert!(trusting.verify_entity(&jwt).is_ok());
    }

    #[test]
    fn a_verified_token_is_remembered_only_until_it_expires() {
        let account = nkeys::KeyPair::new_account();
        let exp = now_secs() + 1;
        let (jwt, subject) = component(&account, Some(exp));
        let auth = Authorizer::new(&[]).unwrap();
        assert_eq!(auth.verify_entity(&jwt).unwrap().subject.as_str(), subject);
        assert_eq!(auth.verified_tokens().1, 1);
        // Served from memory while valid...
        assert_eq!(
            auth.entities.get(&jwt, exp - 1).unwrap().subject.as_str(),
            subject
        );
        // ...never at or after `exp`; and then the real check refuses it.
        assert!(auth.entities.get(&jwt, exp).is_none());
        while now_secs() <= exp {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(matches!(
            auth.verify_entity(&jwt),
            Err(AuthzError::InvalidEntityJwt(_))
        ));
    }

    #[test]
    fn refused_tokens_are_not_remembered_and_issuers_are_checked_on_every_hit() {
        let account = nkeys::KeyPair::new_account();
        let (jwt, _) = component(&account, None);
        let auth = Authorizer::new(&[]).unwrap();
        assert!(auth.verify_entity("garbage").is_err());
        assert!(auth.verify_host("garbage").is_err());
        assert_eq!(auth.verified_tokens(), (0, 0));
        // An untrusted issuer's valid token is refused every time and never remembered.
        let strict = Authorizer::new(&[nkeys::KeyPair::new_account().public_key()]).unwrap();
        for _ in 0..2 {
            assert!(matches!(
                strict.verify_entity(&jwt),
                Err(AuthzError::UntrustedIssuer(_))
            ));
        }
        assert_eq!(strict.verified_tokens(), (0, 0));
        // A trusted one is remembered, and the issuer is still checked on the hit.
        let trusting = Authorizer::new(&[account.public_key()]).unwrap();
        for _ in 0..2 {
            assert!(trusting.verify_entity(&jwt).is_ok());
        }
        assert_eq!(trusting.verified_tokens(), (0, 1));
    }

    #[test]
    fn oversized_tokens_are_verified_but_never_remembered() {
        let cache = VerifiedTokens::default();
        let entity = Entity {
            subject: EntityKey::parse(&nkeys::KeyPair::new_module().public_key()).unwrap(),
            issuer: "A".into(),
        };
        cache.insert(
            &"x".repeat(MAX_REMEMBERED_TOKEN + 1),
            entity.clone(),
            None,
            0,
        );
        assert_eq!(cache.len(), 0);
        cache.insert(&"x".repeat(MAX_REMEMBERED_TOKEN), entity, None, 0);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn the_cache_is_bounded() {
        let cache = VerifiedTokens::default();
        let entity = Entity {
            subject: EntityKey::parse(&nkeys::KeyPair::new_module().public_key()).unwrap(),
            issuer: "A".into(),
        };
        for i in 0..VERIFIED_TOKENS + 10 {
            cache.insert(&format!("t{i}"), entity.clone(), None, 0);
        }
        assert!(cache.len() <= VERIFIED_TOKENS);
    }

    #[test]
    fn trusted_issuers_must_be_account_keys() {
        let module = nkeys::KeyPair::new_module().public_key();
        assert!(Authorizer::new(&[module]).is_err());
        assert!(Authorizer::new(&["".into(), " ".into()])
            .unwrap()
            .trusted_issuers
            .is_none());
    }

    #[test]
    fn policy_shape_is_checked() {
        assert!(parse_policy("").is_ok());
        assert!(parse_policy(
            r#"{"type":"properties.secret.wasmcloud.dev/v1alpha1","properties":{"a":1}}"#
        )
        .is_ok());
        assert!(parse_policy("{not json").is_err());
        assert!(parse_policy(r#"{"type":"other"}"#).is_err());
        assert!(parse_policy(r#"{"properties":[]}"#).is_err());
        assert!(parse_policy("[]").is_err());
        assert!(parse_policy(r#"{"properties":{"application":1}}"#).is_err());
        assert!(parse_policy(r#"{"properties":{"grant":"everyone"}}"#).is_err());
    }

    #[test]
    fn policy_properties_only_narrow_a_grant() {
        let entity = Grantee::entity(&nkeys::KeyPair::new_module().public_key()).unwrap();
        let app = Grantee::application("shop").unwrap();
        let open = parse_policy(r#"{"properties":{"other":"x"}}"#).unwrap();
        assert!(open.admits(&entity, None) && open.admits(&app, Some("shop")));
        let only_shop = parse_policy(r#"{"properties":{"application":"shop"}}"#).unwrap();
        assert!(only_shop.admits(&app, Some("shop")));
        assert!(only_shop.admits(&entity, Some("shop")));
        assert!(!only_shop.admits(&entity, Some("other")));
        assert!(!only_shop.admits(&entity, None));
        let by_key = parse_policy(r#"{"properties":{"grant":"entity"}}"#).unwrap();
        assert!(by_key.admits(&entity, Some("shop")) && !by_key.admits(&app, Some("shop")));
        let by_app = parse_policy(r#"{"properties":{"grant":"application"}}"#).unwrap();
        assert!(!by_app.admits(&entity, Some("shop")) && by_app.admits(&app, Some("shop")));
    }
}
