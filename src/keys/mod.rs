//! Key material: the transit key hosts seal requests to, and the data key values are sealed
//! with at rest.
//!
//! Invariants:
//! - Seeds are parsed from [`Zeroizing`] strings and never formatted: `Debug` prints only the
//!   public key, and no error carries seed text.
//! - Private key material is zeroized on drop (`crypto_box::SecretKey` and the precomputed
//!   box both zeroize themselves; our own copies are `Zeroizing`).

use crypto_box::aead::{Aead, AeadCore};
use crypto_box::SalsaBox;
use crypto_secretbox::{KeyInit as _, XSalsa20Poly1305};
use nkeys::XKey;
use salsa20::cipher::consts::{U10, U24};
use zeroize::{Zeroize as _, Zeroizing};

/// Prefix nkeys puts on every sealed box (format version 1).
pub(crate) const XKV1: &[u8] = b"xkv1";
const NONCE_LEN: usize = 24;
/// HSalsa20 input that derives a data key's name-bound key from its secret: a label of its
/// own, so the derived key is independent of the key the nkeys box agrees (HSalsa20 of the
/// x25519 output with a zero input).
const NAME_BOUND_LABEL: &[u8; 16] = b"pgb2 name-bound\0";

/// Errors about key material. They never contain a seed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("{what} is not a valid xkey (curve) seed")]
    InvalidSeed { what: &'static str },
    #[error("not a valid xkey public key")]
    InvalidPublicKey,
    #[error("ciphertext could not be opened (wrong key or tampered data)")]
    Open,
    #[error("plaintext could not be sealed")]
    Seal,
}

/// Parse an xkey seed (`SX...`). `what` names the key in the error ("transit key").
pub(crate) fn xkey_from_seed(
    seed: &Zeroizing<String>,
    what: &'static str,
) -> Result<XKey, KeyError> {
    XKey::from_seed(seed.trim()).map_err(|_| KeyError::InvalidSeed { what })
}

/// How an error shows a key someone gave: never a seed (nkeys seeds start with `S`), and at
/// most 60 characters of anything else. Every error that repeats a given key uses it.
pub(crate) fn shown_key(given: &str) -> String {
    let given = given.trim();
    if given.starts_with('S') {
        return "<a seed (S...), not shown: give the public key>".to_string();
    }
    given.chars().take(60).collect()
}

/// A freshly generated xkey seed, for `dev` and tests.
pub fn generate_seed() -> Zeroizing<String> {
    // `seed()` only fails on a public-only key; a new key always has its private half.
    Zeroizing::new(XKey::new().seed().unwrap_or_default())
}

/// The server's transit key: hosts seal requests to its public key (`server_xkey`).
///
/// Hosts cache its public key for their whole lifetime, so it must stay the same across
/// restarts of the backend.
#[derive(Clone)]
pub struct TransitKey {
    key: XKey,
    public: String,
}

impl std::fmt::Debug for TransitKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TransitKey({})", self.public)
    }
}

impl TransitKey {
    pub fn from_seed(seed: &Zeroizing<String>) -> Result<Self, KeyError> {
        Ok(Self::from_xkey(xkey_from_seed(seed, "transit key")?))
    }

    pub fn from_xkey(key: XKey) -> Self {
        let public = key.public_key();
        Self { key, public }
    }

    /// The public key hosts seal to, as returned by `server_xkey`.
    pub fn public_key(&self) -> &str {
        &self.public
    }

    /// Seal `claim` to `recipient` from this key itself, not from a one-time key: only a
    /// holder of the transit seed (or of `recipient`'s seed) can make a box that opens with
    /// this key's public half, so opening it proves who sent it. `status` vouches for an
    /// instance's unseal xkey this way ([`crate::seal::transfer::InstanceClaim`]).
    pub fn vouch(&self, claim: &[u8], recipient: &XKey) -> Result<Vec<u8>, KeyError> {
        self.key.seal(claim, recipient).map_err(|_| KeyError::Seal)
    }

    /// Open a request sealed by `sender` (the requester's one-time public key) to this key.
    pub fn open(&self, sealed: &[u8], sender: &XKey) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        self.key
            .open(sealed, sender)
            .map(Zeroizing::new)
            .map_err(|_| KeyError::Open)
    }
}

/// Seal `plaintext` to `recipient` from a fresh one-time key, as the protocol requires for
/// replies. Returns the ciphertext and the one-time public key (header `Server-Response-Xkey`).
pub fn seal_to(plaintext: &[u8], recipient: &XKey) -> Result<(Vec<u8>, String), KeyError> {
    let one_time = XKey::new();
    let sealed = one_time
        .seal(plaintext, recipient)
        .map_err(|_| KeyError::Seal)?;
    Ok((sealed, one_time.public_key()))
}

/// A data key: seals values at rest. It holds two keys, and neither opens what the other
/// sealed:
///
/// - the nkeys `xkv1` box of the key to itself ([`DataKey::seal`], [`DataKey::open`]): the
///   bytes are identical to `XKey::seal(v, self)`, which is what the sample backend stored,
///   and what piggybank's unbound (`pgb1`) values hold;
/// - the name-bound key ([`DataKey::seal_bound`], [`DataKey::open_bound`]): XSalsa20-Poly1305
///   under HSalsa20(data key's secret, [`NAME_BOUND_LABEL`]), for values whose box holds their
///   secret's name (`pgb2`). Because it is another key, a bound box relabelled or stripped to
///   an unbound format does not open, and an unbound box relabelled bound does not either:
///   which check applies is decided by the key that opens the box, not by the clear header.
///
/// Both are computed once, at construction, so opening a stored value costs one symmetric
/// decryption instead of a scalar multiplication. Both zeroize their key on drop.
pub struct DataKey {
    id: String,
    sealer: SalsaBox,
    bound_sealer: XSalsa20Poly1305,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataKey({})", self.id)
    }
}

impl DataKey {
    pub fn from_seed(seed: &Zeroizing<String>) -> Result<Self, KeyError> {
        Self::from_xkey(&xkey_from_seed(seed, "encryption key")?)
    }

    pub fn from_xkey(key: &XKey) -> Result<Self, KeyError> {
        let raw = Zeroizing::new(key.private_key().map_err(|_| KeyError::InvalidSeed {
            what: "encryption key",
        })?);
        // `private_key()` is the nkey-encoded private half; decode it back into raw bytes.
        let bytes = nkeys_private_bytes(&raw).ok_or(KeyError::InvalidSeed {
            what: "encryption key",
        })?;
        let mut bound_key = salsa20::hsalsa::<U10>(
            salsa20::Key::from_slice(&*bytes),
            salsa20::cipher::generic_array::GenericArray::from_slice(NAME_BOUND_LABEL),
        );
        let bound_sealer = XSalsa20Poly1305::new(&bound_key);
        bound_key.zeroize();
        let secret = crypto_box::SecretKey::from(*bytes);
        let public = secret.public_key();
        Ok(Self {
            id: key.public_key(),
            sealer: SalsaBox::new(&public, &secret),
            bound_sealer,
        })
    }

    /// The key id recorded with every value it seals: its public key.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Seal in the nkeys box of the key to itself (`xkv1 | nonce | ciphertext`): the sample's
    /// format, and the box of unbound (`pgb1`) values.
    pub fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
        seal_with(&self.sealer, XKV1, plaintext)
    }

    /// Open what [`DataKey::seal`] sealed (or the sample, with this key).
    pub fn open(&self, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let body = sealed.strip_prefix(XKV1).ok_or(KeyError::Open)?;
        open_with(&self.sealer, body)
    }

    /// Seal with the name-bound key (`nonce | ciphertext`): only for plaintexts that hold
    /// their secret's name, which the caller checks on open.
    pub(crate) fn seal_bound(&self, plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
        seal_with(&self.bound_sealer, &[], plaintext)
    }

    /// Open what [`DataKey::seal_bound`] sealed; nothing [`DataKey::seal`] sealed opens here.
    pub(crate) fn open_bound(&self, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        open_with(&self.bound_sealer, sealed)
    }
}

/// `prefix | nonce | ciphertext`, with a fresh random nonce.
fn seal_with<C: Aead + AeadCore<NonceSize = U24>>(
    cipher: &C,
    prefix: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, KeyError> {
    let nonce = C::generate_nonce(&mut crypto_box::aead::OsRng);
    let ciphertext = cipher
        .encrypt(&nonce, plaintext)
        .map_err(|_| KeyError::Seal)?;
    let mut out = Vec::with_capacity(prefix.len() + nonce.len() + ciphertext.len());
    out.extend_from_slice(prefix);
    out.extend_from_slice(nonce.as_slice());
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

/// Open `nonce | ciphertext`.
fn open_with<C: Aead + AeadCore<NonceSize = U24>>(
    cipher: &C,
    body: &[u8],
) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    if body.len() <= NONCE_LEN {
        return Err(KeyError::Open);
    }
    let (nonce, ciphertext) = body.split_at(NONCE_LEN);
    cipher
        .decrypt(crypto_box::aead::Nonce::<C>::from_slice(nonce), ciphertext)
        .map(Zeroizing::new)
        .map_err(|_| KeyError::Open)
}

/// Decode an nkey-encoded curve private key (`P...`) into its 32 raw bytes.
fn nkeys_private_bytes(encoded: &str) -> Option<Zeroizing<[u8; 32]>> {
    // Layout (base32, no padding): 1 prefix byte, 32 key bytes, 2 CRC bytes.
    let decoded = Zeroizing::new(
        data_encoding::BASE32_NOPAD
            .decode(encoded.as_bytes())
            .ok()?,
    );
    if decoded.len() != 35 {
        return None;
    }
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(&decoded[1..33]);
    Some(out)
}

/// The data keys an instance holds: the current one seals every write; previous ones are
/// kept only to open values sealed before a key change (`PREVIOUS_ENCRYPTION_XKEY_SEEDS`),
/// until `piggybank rekey` has re-sealed everything with the current key.
#[derive(Debug)]
pub struct Keyring {
    current: DataKey,
    previous: Vec<DataKey>,
}

impl Keyring {
    /// A keyring; a previous key equal to the current one (or repeated) is ignored.
    pub fn new(current: DataKey, previous: Vec<DataKey>) -> Self {
        let mut kept: Vec<DataKey> = Vec::with_capacity(previous.len());
        for key in previous {
            if key.id() != current.id() && kept.iter().all(|k| k.id() != key.id()) {
                kept.push(key);
            }
        }
        Self {
            current,
            previous: kept,
        }
    }

    /// The key new values are sealed with.
    pub fn current(&self) -> &DataKey {
        &self.current
    }

    /// The key with this id, if this instance holds it.
    pub fn get(&self, id: &str) -> Option<&DataKey> {
        self.keys().find(|k| k.id() == id)
    }

    /// Every key, current first.
    pub fn keys(&self) -> impl Iterator<Item = &DataKey> {
        std::iter::once(&self.current).chain(self.previous.iter())
    }
}

impl From<DataKey> for Keyring {
    fn from(key: DataKey) -> Self {
        Self::new(key, Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_key_is_byte_compatible_with_nkeys_self_seal() {
        let xkey = XKey::new();
        let data = DataKey::from_xkey(&xkey).unwrap();
        let by_nkeys = xkey.seal(b"legacy value", &xkey).unwrap();
        assert_eq!(&*data.open(&by_nkeys).unwrap(), b"legacy value");
        let by_us = data.seal(b"new value").unwrap();
        assert_eq!(xkey.open(&by_us, &xkey).unwrap(), b"new value");
        assert_eq!(data.id(), xkey.public_key());
    }

    #[test]
    fn data_key_refuses_other_keys_and_tampering() {
        let a = DataKey::from_xkey(&XKey::new()).unwrap();
        let b = DataKey::from_xkey(&XKey::new()).unwrap();
        let mut sealed = a.seal(b"v").unwrap();
        assert_eq!(b.open(&sealed).unwrap_err(), KeyError::Open);
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert_eq!(a.open(&sealed).unwrap_err(), KeyError::Open);
        assert_eq!(a.open(b"xkv1short").unwrap_err(), KeyError::Open);
        assert_eq!(a.open(b"").unwrap_err(), KeyError::Open);
    }

    #[test]
    fn bad_seed_errors_do_not_echo_the_seed() {
        let seed = Zeroizing::new("SXNOTAREALSEEDATALL".to_string());
        let err = TransitKey::from_seed(&seed).unwrap_err();
        assert!(!err.to_string().contains("SXNOT"));
        // A user (U) seed is a valid nkey seed but not a curve key.
        let user = Zeroizing::new(nkeys::KeyPair::new_user().seed().unwrap());
        assert!(DataKey::from_seed(&user).is_err());
    }

    #[test]
    fn seal_to_round_trips_through_the_requester_key() {
        let requester = XKey::new();
        let (sealed, sender) = seal_to(b"reply", &requester).unwrap();
        let sender = XKey::from_public_key(&sender).unwrap();
        assert_eq!(requester.open(&sealed, &sender).unwrap(), b"reply");
    }
}
