//! Key material in transit: a sealed store's database key, or its shares, never cross NATS in
//! clear.
//!
//! Anyone allowed to subscribe to `piggybank.database.>` or to the shared `_INBOX.>` would
//! read a key sent as plain JSON. So the key (or a share) is always sealed to one xkey, in
//! the nkeys `xkv1` box format (x25519 + XSalsa20-Poly1305, authenticated), from a one-time
//! key whose public half travels beside it:
//!
//! - `initialize`: the requester sends a one-time public xkey in the header
//!   `Piggybank-Requester-Xkey`; the reply's key material is sealed to it
//!   ([`SealedInitialize`]). Only that requester can open it.
//! - `unlock`: each instance makes an ephemeral *unseal* xkey at start, held only in memory,
//!   and announces its public half in `status` (`unseal_xkey`). The requester seals the key
//!   or share to the unseal xkey of the instance it is meant for ([`SealedUnlock`], naming
//!   that instance); only that instance answers it.
//!
//! - Before `unlock`, the requester must know the instances it seals to are this backend's:
//!   anyone on the account can answer `status`, as an "instance" whose unseal xkey is its
//!   own. So `status` takes the requester's one-time xkey (the same header) and answers with
//!   a proof ([`InstanceClaim`]): its `instance_id` and `unseal_xkey`, sealed *from the
//!   backend's transit key* to that one-time xkey. Only a holder of the transit seed can make
//!   a box that opens with the transit public key the requester pinned, and a box made for
//!   an earlier one-time key opens for nobody else, so a proof can be neither forged nor
//!   replayed (nor reflected through another service's reply).
//!
//! - `initialize`'s reply is sealed *from the transit key* too (`sender_xkey` is the transit
//!   public key), so a requester that pinned it knows the key it was given is the backend's,
//!   not one an account user sealed to its public requester key and sent first.
//!
//! The sealed plaintext is the JSON the clear form carried: `{"database_key": "..."}` or
//! `{"share": "..."}` for `unlock`; `{"database_key": "..."}` or `{"shares": [...],
//! "threshold": K}` for `initialize`. What the transit key seals also names its purpose
//! (`"purpose"`, [`purpose`]), so that a box made for one use never passes for another: a
//! status proof, which anyone can have made for any requester key, is no initialize reply.
//! Every plaintext is zeroized after use.

use base64::Engine as _;
use nkeys::XKey;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::keys::TransitKey;

/// The `purpose` of each kind of box sealed from the transit key.
pub mod purpose {
    /// A status proof ([`super::InstanceClaim`]).
    pub(crate) const UNSEAL_PROOF: &str = "piggybank-unseal-proof-v1";
    /// An initialize reply's key material ([`super::SealedInitialize`]).
    pub(crate) const INITIALIZE: &str = "piggybank-initialize-v1";
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    #[error("{0} is not a public xkey (X...)")]
    BadXkey(&'static str),
    #[error("the key material is not base64")]
    BadEncoding,
    #[error("cannot seal the key material")]
    Seal,
    #[error("cannot open the key material: it was not sealed to this key, or it was altered")]
    Open,
    #[error("the instance's proof does not open with the pinned transit key")]
    Unproven,
    #[error("the instance's proof vouches for another instance or unseal xkey")]
    Mismatch,
    #[error("the answer was not sealed from the pinned transit key")]
    NotFromTransit,
    #[error("the answer was sealed to another requester xkey")]
    OtherRequester,
    #[error("the sealed answer is not an initialize reply")]
    WrongPurpose,
}

/// Key material sealed to one xkey: `secret` is the base64 (standard, padded) of an `xkv1`
/// box from `sender_xkey`, a one-time key made for this message alone.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Sealed {
    pub sender_xkey: String,
    pub secret: String,
}

impl Sealed {
    /// Seal `plaintext` to `recipient` (a public xkey) from a fresh one-time key.
    pub fn seal(plaintext: &[u8], recipient: &str) -> Result<Self, TransferError> {
        let recipient = XKey::from_public_key(recipient.trim())
            .map_err(|_| TransferError::BadXkey("the recipient"))?;
        let one_time = XKey::new();
        let sealed = one_time
            .seal(plaintext, &recipient)
            .map_err(|_| TransferError::Seal)?;
        Ok(Self {
            sender_xkey: one_time.public_key(),
            secret: base64::engine::general_purpose::STANDARD.encode(sealed),
        })
    }

    /// Open with `recipient`, the xkey (with its seed) this was sealed to.
    pub fn open(&self, recipient: &XKey) -> Result<Zeroizing<Vec<u8>>, TransferError> {
        let sender = XKey::from_public_key(self.sender_xkey.trim())
            .map_err(|_| TransferError::BadXkey("sender_xkey"))?;
        let sealed = base64::engine::general_purpose::STANDARD
            .decode(self.secret.trim())
            .map_err(|_| TransferError::BadEncoding)?;
        recipient
            .open(&sealed, &sender)
            .map(Zeroizing::new)
            .map_err(|_| TransferError::Open)
    }
}

/// `initialize`'s reply when the request named a requester xkey: the key, or the shares,
/// sealed to it. The store stays sealed (`sealed: true`) until unlocked.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SealedInitialize {
    pub sealed: bool,
    /// Shares needed to unlock, when the key was split (not secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<u8>,
    /// The requester's xkey the key material is sealed to (so a requester can tell).
    pub sealed_to: String,
    #[serde(flatten)]
    pub key_material: Sealed,
}

impl SealedInitialize {
    /// The reply for `requester`: `material` (serialized as a JSON object) with its
    /// `purpose`, sealed from the backend's transit key, which proves who made it.
    pub fn vouched<T: Serialize>(
        material: &T,
        threshold: Option<u8>,
        transit: &TransitKey,
        requester: &str,
    ) -> Result<Self, TransferError> {
        #[derive(Serialize)]
        struct Labeled<'a, T> {
            purpose: &'static str,
            #[serde(flatten)]
            material: &'a T,
        }
        let recipient = XKey::from_public_key(requester.trim())
            .map_err(|_| TransferError::BadXkey("the requester xkey"))?;
        let labeled = Labeled {
            purpose: purpose::INITIALIZE,
            material,
        };
        let bytes = Zeroizing::new(serde_json::to_vec(&labeled).map_err(|_| TransferError::Seal)?);
        let sealed = transit
            .vouch(&bytes, &recipient)
            .map_err(|_| TransferError::Seal)?;
        Ok(Self {
            sealed: true,
            threshold,
            sealed_to: recipient.public_key(),
            key_material: Sealed {
                sender_xkey: transit.public_key().to_string(),
                secret: base64::engine::general_purpose::STANDARD.encode(sealed),
            },
        })
    }

    /// Open as `requester` (the one-time xkey, with its seed): the key material's JSON
    /// object, without its `purpose`. With `pin` (the transit public key the requester
    /// trusts), only a reply sealed from that key opens: anyone can seal to the requester.
    pub fn open(
        &self,
        requester: &XKey,
        pin: Option<&str>,
    ) -> Result<serde_json::Map<String, serde_json::Value>, TransferError> {
        if self.sealed_to.trim() != requester.public_key() {
            return Err(TransferError::OtherRequester);
        }
        if pin.is_some_and(|pin| pin.trim() != self.key_material.sender_xkey.trim()) {
            return Err(TransferError::NotFromTransit);
        }
        let plaintext = self.key_material.open(requester)?;
        let mut material: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&plaintext).map_err(|_| TransferError::WrongPurpose)?;
        match material.remove("purpose") {
            Some(serde_json::Value::String(p)) if p == purpose::INITIALIZE => Ok(material),
            _ => Err(TransferError::WrongPurpose),
        }
    }
}

/// `unlock`'s body in the sealed form: a key or share for one instance, sealed to the
/// `unseal_xkey` that instance announced in `status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SealedUnlock {
    /// The instance this is for (its `status` `instance_id`); the others do not answer.
    pub instance_id: String,
    pub sender_xkey: String,
    pub secret: String,
}

impl SealedUnlock {
    pub fn new(instance_id: &str, key_material: Sealed) -> Self {
        Self {
            instance_id: instance_id.to_string(),
            sender_xkey: key_material.sender_xkey,
            secret: key_material.secret,
        }
    }

    pub fn key_material(&self) -> Sealed {
        Sealed {
            sender_xkey: self.sender_xkey.clone(),
            secret: self.secret.clone(),
        }
    }
}

/// What an instance vouches for in `status` when the requester sent a one-time xkey: that the
/// unseal xkey it announces is held by an instance that also holds the backend's transit
/// seed. `unseal_proof` in `status` is this, as JSON, sealed from the transit key to the
/// requester's one-time xkey (base64 of the `xkv1` box).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct InstanceClaim {
    pub instance_id: String,
    pub unseal_xkey: String,
}

impl InstanceClaim {
    /// The proof of this claim for `requester` (a one-time public xkey), from `transit`.
    pub fn vouch(&self, transit: &TransitKey, requester: &str) -> Result<String, TransferError> {
        let requester = XKey::from_public_key(requester.trim())
            .map_err(|_| TransferError::BadXkey("the requester xkey"))?;
        let labeled = LabeledClaim {
            purpose: purpose::UNSEAL_PROOF.into(),
            instance_id: self.instance_id.clone(),
            unseal_xkey: self.unseal_xkey.clone(),
        };
        let claim = serde_json::to_vec(&labeled).map_err(|_| TransferError::Seal)?;
        let sealed = transit
            .vouch(&claim, &requester)
            .map_err(|_| TransferError::Seal)?;
        Ok(base64::engine::general_purpose::STANDARD.encode(sealed))
    }

    /// Check `proof`, which `status` returned to `requester` (the one-time xkey, with its
    /// seed): it must open with `transit_public`, the transit key the operator pinned, and
    /// vouch for exactly this claim.
    pub fn verify(
        &self,
        proof: &str,
        requester: &XKey,
        transit_public: &str,
    ) -> Result<(), TransferError> {
        let transit = XKey::from_public_key(transit_public.trim())
            .map_err(|_| TransferError::BadXkey("the transit key"))?;
        let sealed = base64::engine::general_purpose::STANDARD
            .decode(proof.trim())
            .map_err(|_| TransferError::BadEncoding)?;
        let opened = requester
            .open(&sealed, &transit)
            .map_err(|_| TransferError::Unproven)?;
        let vouched: LabeledClaim =
            serde_json::from_slice(&opened).map_err(|_| TransferError::Unproven)?;
        if vouched.purpose != purpose::UNSEAL_PROOF {
            return Err(TransferError::Unproven);
        }
        if vouched.instance_id != self.instance_id || vouched.unseal_xkey != self.unseal_xkey {
            return Err(TransferError::Mismatch);
        }
        Ok(())
    }
}

/// An [`InstanceClaim`] as sealed, with its purpose.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LabeledClaim {
    purpose: String,
    instance_id: String,
    unseal_xkey: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_recipient_opens_and_the_bytes_never_show() {
        let recipient = XKey::new();
        let plaintext = br#"{"database_key":"c2VjcmV0IGtleSBieXRlcyBjMmxsY25WcFpHVnVkQT09"}"#;
        let sealed = Sealed::seal(plaintext, &recipient.public_key()).unwrap();
        assert!(!sealed.secret.contains("c2VjcmV0"));
        assert_eq!(sealed.open(&recipient).unwrap().as_slice(), plaintext);
        assert_eq!(sealed.open(&XKey::new()), Err(TransferError::Open));
        let mut altered = sealed.clone();
        altered.sender_xkey = XKey::new().public_key();
        assert_eq!(altered.open(&recipient), Err(TransferError::Open));
        let mut garbled = sealed.clone();
        garbled.secret = "not base64!".into();
        assert_eq!(garbled.open(&recipient), Err(TransferError::BadEncoding));
        // Two seals of one plaintext differ (a fresh one-time key and nonce each time).
        let again = Sealed::seal(plaintext, &recipient.public_key()).unwrap();
        assert_ne!(again.secret, sealed.secret);
        assert!(Sealed::seal(plaintext, "XNOTAKEY").is_err());
    }

    fn some_claim() -> InstanceClaim {
        InstanceClaim {
            instance_id: "i1".into(),
            unseal_xkey: XKey::new().public_key(),
        }
    }

    #[test]
    fn a_proof_opens_only_with_the_pinned_transit_key_and_for_its_own_claim() {
        let transit = TransitKey::from_xkey(XKey::new());
        let requester = XKey::new();
        let claim = some_claim();
        let proof = claim.vouch(&transit, &requester.public_key()).unwrap();
        assert_eq!(
            claim.verify(&proof, &requester, transit.public_key()),
            Ok(())
        );
        // Another transit key (an impostor's), or another requester (a replay), fails.
        let impostor = TransitKey::from_xkey(XKey::new());
        let forged = claim.vouch(&impostor, &requester.public_key()).unwrap();
        assert_eq!(
            claim.verify(&forged, &requester, transit.public_key()),
            Err(TransferError::Unproven)
        );
        assert_eq!(
            claim.verify(&proof, &XKey::new(), transit.public_key()),
            Err(TransferError::Unproven)
        );
        // A real proof beside another unseal xkey (a copied reply, edited) fails.
        let edited = InstanceClaim {
            unseal_xkey: XKey::new().public_key(),
            ..claim.clone()
        };
        assert_eq!(
            edited.verify(&proof, &requester, transit.public_key()),
            Err(TransferError::Mismatch)
        );
        assert_eq!(
            claim.verify("not base64!", &requester, transit.public_key()),
            Err(TransferError::BadEncoding)
        );
        assert!(claim.vouch(&transit, "XNOTAKEY").is_err());
    }

    /// Anyone can have a backend seal a status proof from its transit key to any requester
    /// xkey, such as the one `piggybank init` sent: relayed as `initialize`'s answer, it opens
    /// with the pinned transit key, but it is no key. And an initialize answer is no proof.
    #[test]
    fn a_box_from_the_transit_key_passes_only_for_what_it_was_made_for() {
        let transit = TransitKey::from_xkey(XKey::new());
        let requester = XKey::new();
        let claim = some_claim();
        let proof = claim.vouch(&transit, &requester.public_key()).unwrap();
        let relayed = SealedInitialize {
            sealed: true,
            threshold: None,
            sealed_to: requester.public_key(),
            key_material: Sealed {
                sender_xkey: transit.public_key().to_string(),
                secret: proof,
            },
        };
        assert_eq!(
            relayed.open(&requester, Some(transit.public_key())),
            Err(TransferError::WrongPurpose)
        );

        let material = serde_json::json!({ "database_key": "k" });
        let answer =
            SealedInitialize::vouched(&material, None, &transit, &requester.public_key()).unwrap();
        let opened = answer.open(&requester, Some(transit.public_key())).unwrap();
        assert_eq!(serde_json::Value::Object(opened), material);
        assert_eq!(
            claim.verify(
                &answer.key_material.secret,
                &requester,
                transit.public_key()
            ),
            Err(TransferError::Unproven)
        );
        // Sealed by anyone else to the requester, or opened without the pin it was meant
        // for: refused; to another requester: refused before opening.
        let impostor = TransitKey::from_xkey(XKey::new());
        let forged =
            SealedInitialize::vouched(&material, None, &impostor, &requester.public_key()).unwrap();
        assert_eq!(
            forged.open(&requester, Some(transit.public_key())),
            Err(TransferError::NotFromTransit)
        );
        assert!(forged.open(&requester, None).is_ok());
        assert_eq!(
            answer.open(&XKey::new(), None),
            Err(TransferError::OtherRequester)
        );
    }

    #[test]
    fn the_wire_shapes_are_flat_json() {
        let sealed = Sealed::seal(b"{}", &XKey::new().public_key()).unwrap();
        let reply = SealedInitialize {
            sealed: true,
            threshold: None,
            sealed_to: "XREQ".into(),
            key_material: sealed.clone(),
        };
        let value = serde_json::to_value(&reply).unwrap();
        assert_eq!(value["sender_xkey"], sealed.sender_xkey.as_str());
        assert_eq!(value["secret"], sealed.secret.as_str());
        assert!(value.get("threshold").is_none());
        let unlock = SealedUnlock::new("NABC", sealed.clone());
        let text = serde_json::to_string(&unlock).unwrap();
        let back: SealedUnlock = serde_json::from_str(&text).unwrap();
        assert_eq!(back.key_material(), sealed);
        // A clear body is not a sealed one.
        assert!(serde_json::from_str::<SealedUnlock>(r#"{"database_key":"k"}"#).is_err());
    }
}
