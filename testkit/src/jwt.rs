//! wasmCloud JWTs minted with wascap, as hosts and `wash` mint them: an issuer account signs
//! component (`M...`) and provider (`V...`) JWTs; a host signs its own host JWT with an
//! account key it made at start.

use std::collections::HashMap;

use nkeys::KeyPair;
use wascap::jwt::{CapabilityProvider, Claims, Component, Host};

/// An account that signs entity JWTs.
pub struct Issuer {
    pub account: KeyPair,
}

impl Default for Issuer {
    fn default() -> Self {
        Self::new()
    }
}

impl Issuer {
    pub fn new() -> Self {
        Issuer {
            account: KeyPair::new_account(),
        }
    }

    pub fn public_key(&self) -> String {
        self.account.public_key()
    }

    /// A component JWT: returns (jwt, subject).
    pub fn component(&self) -> (String, String) {
        self.component_with(None, None)
    }

    pub fn component_with(
        &self,
        not_before: Option<u64>,
        expires: Option<u64>,
    ) -> (String, String) {
        let module = KeyPair::new_module();
        let claims = Claims::<Component>::with_dates(
            "test-component".into(),
            self.account.public_key(),
            module.public_key(),
            None,
            not_before,
            expires,
            false,
            None,
            None,
            None,
        );
        (claims.encode(&self.account).unwrap(), module.public_key())
    }

    /// A component JWT whose subject is `subject`, whatever it is (a wildcard, a key with
    /// dots): what an attacker who holds any account key can sign.
    pub fn component_with_subject(&self, subject: &str) -> String {
        let claims = Claims::<Component>::with_dates(
            "forged-component".into(),
            self.account.public_key(),
            subject.into(),
            None,
            None,
            None,
            false,
            None,
            None,
            None,
        );
        claims.encode(&self.account).unwrap()
    }

    /// A provider JWT: returns (jwt, subject).
    pub fn provider(&self) -> (String, String) {
        let service = KeyPair::new_service();
        let claims = Claims::<CapabilityProvider>::new(
            "test-provider".into(),
            self.account.public_key(),
            service.public_key(),
            "piggybank-tests".into(),
            None,
            None,
            HashMap::new(),
        );
        (claims.encode(&self.account).unwrap(), service.public_key())
    }
}

/// A host JWT, signed as a wasmCloud 1.x host does: by an account key it made at start.
pub fn host_jwt() -> String {
    let account = KeyPair::new_account();
    let host = KeyPair::new_server();
    let claims = Claims::<Host>::with_dates(
        "test-host".into(),
        account.public_key(),
        host.public_key(),
        None,
        None,
        None,
    );
    claims.encode(&account).unwrap()
}
