//! The at-rest format of a secret value.
//!
//! ```text
//! bound (v2):      "pgb2" | kind: u8 | created_ms: u64 BE | kid_len: u8 | kid | box
//!                  box = nonce (24) | XSalsa20-Poly1305 ciphertext, under the name-bound key
//!                        of data key `kid`, of (kind: u8 | name_len: u8 | name | value)
//! unbound (v1):    "pgb1" | kind: u8 | created_ms: u64 BE | kid_len: u8 | kid | box
//!                  box = xkv1 box, sealed by the data key `kid` to itself, of (kind: u8 | value)
//! sample (legacy): xkv1 box of (value)   -- no kind, no key id, no name
//! ```
//!
//! Every value piggybank writes is bound (v2) to the name of the secret it is stored under:
//! the name is sealed inside the box, so it is authenticated as the value is, and [`open`]
//! refuses a value whose sealed name is not the name it is read under
//! ([`EnvelopeError::WrongName`]). A sealed value copied to another key of the bucket (by
//! anyone who may write it) or to another secret in an edited backup therefore does not
//! open. This is what Vault's barrier does with the storage path as AEAD associated data;
//! the nkeys box (XSalsa20-Poly1305) takes no associated data, so the name goes in the
//! plaintext, which authenticates it the same way. [`seal`] and [`open`] take the name: no
//! caller can seal or open a value without saying which secret it is.
//!
//! The header is in clear, so it cannot be what decides whether the name is checked. Bound
//! boxes are sealed with a key of their own, derived from the data key with a label
//! ([`DataKey`](crate::keys::DataKey)): a bound box relabelled `pgb1`, or stripped to the
//! sample's bare box, is tried with the unbound key and does not open; an unbound box
//! relabelled `pgb2` does not open with the bound key. So a value opens without a name check
//! only if it was sealed unbound, by construction, whatever its header says.
//!
//! Unbound envelopes (v1, and the sample's format) keep opening under any name: they were
//! written before names were bound, or for a sample instance to read
//! (`--write-legacy-format`), which knows no other format. `rekey` (and sealed mode's
//! re-encryption) rewrites them bound ([`Header::needs_reseal`]).
//!
//! The kind is in clear (so `list_secrets` can report it without decrypting) and repeated
//! inside the box; opening checks that both agree, so a flipped kind byte is detected. The key
//! id names the data key that sealed the value, so keys can be rotated online (a changed key
//! id names a key whose box does not open). `created_ms` is when the secret's first version
//! was written (metadata only, not authenticated).

use zeroize::Zeroizing;

use crate::keys::{DataKey, KeyError, Keyring, XKV1};

/// The bound format's magic: the box holds the secret's name.
const MAGIC_BOUND: &[u8; 4] = b"pgb2";
/// The unbound format's magic (written before names were bound): read, never written.
const MAGIC_UNBOUND: &[u8; 4] = b"pgb1";
const HEADER_FIXED: usize = 4 + 1 + 8 + 1;

/// Whether a secret is text or bytes. Recorded with every value and never guessed, except for
/// values written by the sample backend, which did not record it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecretKind {
    String,
    Binary,
    /// Written by the sample backend: served as a string when it is valid UTF-8, else as bytes.
    Legacy,
}

impl SecretKind {
    fn to_byte(self) -> u8 {
        match self {
            SecretKind::String => 1,
            SecretKind::Binary => 2,
            SecretKind::Legacy => 0,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(SecretKind::String),
            2 => Some(SecretKind::Binary),
            _ => None,
        }
    }
}

/// A decrypted secret value. Its bytes are zeroized on drop and it has no `Debug`.
pub enum SecretValue {
    String(Zeroizing<String>),
    Binary(Zeroizing<Vec<u8>>),
}

impl SecretValue {
    pub fn kind(&self) -> SecretKind {
        match self {
            SecretValue::String(_) => SecretKind::String,
            SecretValue::Binary(_) => SecretKind::Binary,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            SecretValue::String(s) => s.as_bytes(),
            SecretValue::Binary(b) => b,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("stored value is not in a format piggybank knows")]
    Malformed,
    /// The value was sealed for another secret and copied (in the bucket, or in a backup)
    /// under this one's name. The name it was sealed for is not said: it is not the
    /// requester's to learn.
    #[error(
        "stored value was sealed for another secret's name: it was moved or copied in the \
         bucket, and is not served"
    )]
    WrongName,
    #[error("stored value was sealed by data key {0}, which this instance does not hold")]
    UnknownKey(String),
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// The clear header of a stored value: what can be known without decrypting it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub kind: SecretKind,
    /// Unix milliseconds of the secret's first version (`None` for legacy values).
    pub created_ms: Option<u64>,
    /// Id of the data key that sealed it (`None` for legacy values: the configured key).
    pub key_id: Option<String>,
    /// Whether the value is bound to its secret's name (v2); `false` for v1 and the sample's.
    pub bound: bool,
}

impl Header {
    /// Whether a rekey should rewrite the value: sealed by another key than `current_key`
    /// (or by the sample, which names none), or not bound to its name.
    pub fn needs_reseal(&self, current_key: &str) -> bool {
        !self.bound || self.key_id.as_deref() != Some(current_key)
    }
}

/// Seal `value` with `key` in the sample's format (`--write-legacy-format`): the bare box,
/// which a sample instance can open. No kind, no key id, no creation time are recorded.
pub(crate) fn seal_legacy(value: &SecretValue, key: &DataKey) -> Result<Vec<u8>, KeyError> {
    key.seal(value.as_bytes())
}

/// Seal `value`, the value of the secret `name`, with `key` into the bound (v2) envelope.
pub fn seal(
    value: &SecretValue,
    name: &str,
    key: &DataKey,
    created_ms: u64,
) -> Result<Vec<u8>, KeyError> {
    let kind = value.kind().to_byte();
    // Names are at most 255 bytes (`store::validate_name`); a longer one cannot be bound.
    let name_len = u8::try_from(name.len()).map_err(|_| KeyError::Seal)?;
    let mut inner = Zeroizing::new(Vec::with_capacity(2 + name.len() + value.as_bytes().len()));
    inner.push(kind);
    inner.push(name_len);
    inner.extend_from_slice(name.as_bytes());
    inner.extend_from_slice(value.as_bytes());
    let sealed = key.seal_bound(&inner)?;

    let kid = key.id().as_bytes();
    let kid_len = u8::try_from(kid.len()).map_err(|_| KeyError::Seal)?;
    let mut out = Vec::with_capacity(HEADER_FIXED + kid.len() + sealed.len());
    out.extend_from_slice(MAGIC_BOUND);
    out.push(kind);
    out.extend_from_slice(&created_ms.to_be_bytes());
    out.push(kid_len);
    out.extend_from_slice(kid);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Seal in the unbound v1 format, as piggybank wrote before names were bound: for tests of
/// what old stores hold.
#[cfg(test)]
pub(crate) fn seal_unbound(
    value: &SecretValue,
    key: &DataKey,
    created_ms: u64,
) -> Result<Vec<u8>, KeyError> {
    let kind = value.kind().to_byte();
    let mut inner = Zeroizing::new(Vec::with_capacity(1 + value.as_bytes().len()));
    inner.push(kind);
    inner.extend_from_slice(value.as_bytes());
    let sealed = key.seal(&inner)?;
    let kid = key.id().as_bytes();
    let kid_len = u8::try_from(kid.len()).map_err(|_| KeyError::Seal)?;
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC_UNBOUND);
    out.push(kind);
    out.extend_from_slice(&created_ms.to_be_bytes());
    out.push(kid_len);
    out.extend_from_slice(kid);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Read the clear header, and return it with the sealed box.
pub fn parse(stored: &[u8]) -> Result<(Header, &[u8]), EnvelopeError> {
    if stored.starts_with(XKV1) {
        let header = Header {
            kind: SecretKind::Legacy,
            created_ms: None,
            key_id: None,
            bound: false,
        };
        return Ok((header, stored));
    }
    let (bound, rest) = match (
        stored.strip_prefix(MAGIC_BOUND),
        stored.strip_prefix(MAGIC_UNBOUND),
    ) {
        (Some(rest), _) => (true, rest),
        (None, Some(rest)) => (false, rest),
        (None, None) => return Err(EnvelopeError::Malformed),
    };
    if rest.len() < HEADER_FIXED - MAGIC_BOUND.len() {
        return Err(EnvelopeError::Malformed);
    }
    let kind = SecretKind::from_byte(rest[0]).ok_or(EnvelopeError::Malformed)?;
    let mut created = [0u8; 8];
    created.copy_from_slice(&rest[1..9]);
    let kid_len = rest[9] as usize;
    let rest = &rest[10..];
    if rest.len() < kid_len {
        return Err(EnvelopeError::Malformed);
    }
    let (kid, sealed) = rest.split_at(kid_len);
    let kid = std::str::from_utf8(kid).map_err(|_| EnvelopeError::Malformed)?;
    let header = Header {
        kind,
        created_ms: Some(u64::from_be_bytes(created)),
        key_id: Some(kid.to_string()),
        bound,
    };
    Ok((header, sealed))
}

/// Open the stored value of the secret `name` with the key its header names. A bound value
/// opens only under the name it was sealed for. A legacy value names no key: each key is
/// tried, current first (the sample sealed with what is now a current or previous key).
pub fn open(stored: &[u8], name: &str, keys: &Keyring) -> Result<SecretValue, EnvelopeError> {
    let (header, sealed) = parse(stored)?;
    let mut plain = match &header.key_id {
        Some(kid) => {
            let key = keys
                .get(kid)
                .ok_or_else(|| EnvelopeError::UnknownKey(kid.clone()))?;
            // The header only says which key to try: a box sealed with the other one does
            // not open, so a relabelled header cannot skip the name check.
            match header.bound {
                true => key.open_bound(sealed)?,
                false => key.open(sealed)?,
            }
        }
        None => keys
            .keys()
            .find_map(|key| key.open(sealed).ok())
            .ok_or(KeyError::Open)?,
    };
    let kind = match header.kind {
        SecretKind::Legacy => return Ok(legacy_value(plain)),
        kind => kind,
    };
    if plain.first().copied() != Some(kind.to_byte()) {
        return Err(EnvelopeError::Malformed);
    }
    let value_start = match header.bound {
        true => {
            let name_len = usize::from(*plain.get(1).ok_or(EnvelopeError::Malformed)?);
            let sealed_name = plain.get(2..2 + name_len).ok_or(EnvelopeError::Malformed)?;
            if sealed_name != name.as_bytes() {
                return Err(EnvelopeError::WrongName);
            }
            2 + name_len
        }
        false => 1,
    };
    // Drop the prefix in place: the value's bytes are never copied out of the zeroized buffer.
    plain.drain(..value_start);
    Ok(match kind {
        SecretKind::String => {
            let text = String::from_utf8(std::mem::take(&mut *plain))
                .map_err(|_| EnvelopeError::Malformed)?;
            SecretValue::String(Zeroizing::new(text))
        }
        _ => SecretValue::Binary(plain),
    })
}

/// The sample recorded no kind: UTF-8 text is served as a string, anything else as bytes.
fn legacy_value(mut plain: Zeroizing<Vec<u8>>) -> SecretValue {
    if std::str::from_utf8(&plain).is_ok() {
        // Checked just above; `from_utf8` on the moved bytes cannot fail.
        let bytes = std::mem::take(&mut *plain);
        match String::from_utf8(bytes) {
            Ok(s) => SecretValue::String(Zeroizing::new(s)),
            Err(e) => SecretValue::Binary(Zeroizing::new(e.into_bytes())),
        }
    } else {
        SecretValue::Binary(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nkeys::XKey;

    fn key() -> (XKey, Keyring) {
        let x = XKey::new();
        let d = DataKey::from_xkey(&x).unwrap();
        (x, Keyring::from(d))
    }

    #[test]
    fn string_and_binary_round_trip_with_their_kind() {
        let (_, k) = key();
        let s = seal(
            &SecretValue::String(Zeroizing::new("hé".into())),
            "app/db",
            k.current(),
            7,
        )
        .unwrap();
        let (h, _) = parse(&s).unwrap();
        assert_eq!(h.kind, SecretKind::String);
        assert_eq!(h.created_ms, Some(7));
        assert_eq!(h.key_id.as_deref(), Some(k.current().id()));
        assert!(h.bound && !h.needs_reseal(k.current().id()));
        assert!(
            matches!(open(&s, "app/db", &k).unwrap(), SecretValue::String(v) if v.as_str() == "hé")
        );

        // Valid UTF-8 stored as binary stays binary (sample defect 3).
        let b = seal(
            &SecretValue::Binary(Zeroizing::new(b"utf8".to_vec())),
            "b",
            k.current(),
            0,
        )
        .unwrap();
        assert!(
            matches!(open(&b, "b", &k).unwrap(), SecretValue::Binary(v) if v.as_slice() == b"utf8")
        );
    }

    #[test]
    fn legacy_sample_values_open_with_the_configured_key() {
        let (x, k) = key();
        let text = x.seal(b"text", &x).unwrap();
        assert!(
            matches!(open(&text, "any", &k).unwrap(), SecretValue::String(v) if v.as_str() == "text")
        );
        let bytes = x.seal(&[0xff, 0x00], &x).unwrap();
        assert!(
            matches!(open(&bytes, "any", &k).unwrap(), SecretValue::Binary(v) if v.as_slice() == [0xff, 0])
        );
    }

    #[test]
    fn previous_keys_open_what_they_sealed_and_legacy_values_try_every_key() {
        let (old_x, old) = key();
        let value = SecretValue::String(Zeroizing::new("v".into()));
        let by_old = seal(&value, "v", old.current(), 0).unwrap();
        let legacy = old_x.seal(b"legacy", &old_x).unwrap();
        let new = || DataKey::from_xkey(&XKey::new()).unwrap();
        let old_again = || DataKey::from_xkey(&old_x).unwrap();

        let rotated = Keyring::new(new(), vec![old_again()]);
        assert!(
            matches!(open(&by_old, "v", &rotated).unwrap(), SecretValue::String(v) if v.as_str() == "v")
        );
        assert!(
            matches!(open(&legacy, "v", &rotated).unwrap(), SecretValue::String(v) if v.as_str() == "legacy")
        );

        let dropped = Keyring::from(new());
        assert!(matches!(
            open(&by_old, "v", &dropped),
            Err(EnvelopeError::UnknownKey(_))
        ));
        assert!(matches!(
            open(&legacy, "v", &dropped),
            Err(EnvelopeError::Key(_))
        ));
    }

    #[test]
    fn keyring_ignores_a_previous_key_equal_to_the_current_one() {
        let x = XKey::new();
        let ring = Keyring::new(
            DataKey::from_xkey(&x).unwrap(),
            vec![
                DataKey::from_xkey(&x).unwrap(),
                DataKey::from_xkey(&XKey::new()).unwrap(),
            ],
        );
        assert_eq!(ring.keys().count(), 2);
    }

    #[test]
    fn flipped_kind_or_foreign_key_is_refused() {
        let (_, k) = key();
        let (_, other) = key();
        let mut s = seal(
            &SecretValue::Binary(Zeroizing::new(vec![1])),
            "x",
            k.current(),
            0,
        )
        .unwrap();
        assert!(matches!(
            open(&s, "x", &other),
            Err(EnvelopeError::UnknownKey(_))
        ));
        s[4] = 1; // claim "string"
        assert_eq!(open(&s, "x", &k).err(), Some(EnvelopeError::Malformed));
        assert_eq!(parse(b"junk").err(), Some(EnvelopeError::Malformed));
        assert_eq!(parse(b"pgb1\x01").err(), Some(EnvelopeError::Malformed));
        assert_eq!(
            parse(b"pgb1\x01\0\0\0\0\0\0\0\0\x09ab").err(),
            Some(EnvelopeError::Malformed)
        );
    }

    #[test]
    fn a_bound_value_opens_only_under_the_name_it_was_sealed_for() {
        let (_, k) = key();
        let value = SecretValue::String(Zeroizing::new("PROD-DB-PASSWORD".into()));
        let sealed = seal(&value, "prod/db", k.current(), 0).unwrap();
        assert!(
            matches!(open(&sealed, "prod/db", &k), Ok(SecretValue::String(v)) if v.as_str() == "PROD-DB-PASSWORD")
        );
        // Another name, a prefix of it, an extension of it: refused, and the error names
        // neither the value nor the name it was sealed for.
        for other in ["public/motd", "prod/d", "prod/db2", "prod/db.x", ""] {
            let refused = open(&sealed, other, &k).err();
            assert_eq!(refused, Some(EnvelopeError::WrongName), "{other}");
        }
        let message = EnvelopeError::WrongName.to_string();
        assert!(!message.contains("prod/db") && !message.contains("PROD"));
        // The longest name binds too; a longer one cannot be sealed.
        let longest = "n".repeat(255);
        let sealed = seal(&value, &longest, k.current(), 0).unwrap();
        assert!(open(&sealed, &longest, &k).is_ok());
        assert!(seal(&value, &"n".repeat(256), k.current(), 0).is_err());
    }

    #[test]
    fn unbound_v1_values_open_under_any_name_and_need_a_reseal() {
        let (_, k) = key();
        let value = SecretValue::Binary(Zeroizing::new(vec![0, 255, 7]));
        let v1 = seal_unbound(&value, k.current(), 3).unwrap();
        let (header, _) = parse(&v1).unwrap();
        assert_eq!((header.kind, header.bound), (SecretKind::Binary, false));
        assert!(header.needs_reseal(k.current().id()));
        for name in ["a", "b/c"] {
            assert!(
                matches!(open(&v1, name, &k), Ok(SecretValue::Binary(v)) if v.as_slice() == [0, 255, 7])
            );
        }
        // A bound value under another key needs a reseal too; under the current one, not.
        let (_, other) = key();
        let bound = seal(&value, "a", other.current(), 3).unwrap();
        let (header, _) = parse(&bound).unwrap();
        assert!(header.needs_reseal(k.current().id()));
        assert!(!header.needs_reseal(other.current().id()));
    }

    /// The clear header decides nothing: relabelled, stripped or re-pointed, a bound value
    /// does not open under another name, and an unbound one does not pass as bound.
    #[test]
    fn a_rewritten_header_does_not_skip_the_name_check() {
        let (x, k) = key();
        let value = SecretValue::String(Zeroizing::new("PROD-DB-PASSWORD".into()));
        let bound = seal(&value, "prod/db", k.current(), 0).unwrap();
        let kid_len = usize::from(bound[13]);

        // pgb2 relabelled pgb1: tried with the unbound key, which did not seal it.
        let mut relabelled = bound.clone();
        relabelled[..4].copy_from_slice(b"pgb1");
        assert_eq!(
            open(&relabelled, "public/motd", &k).err(),
            Some(EnvelopeError::Key(KeyError::Open))
        );
        assert!(open(&relabelled, "prod/db", &k).is_err());

        // Stripped to its box, with or without the sample's "xkv1" in front: not a box any
        // key of the ring opens as the sample's.
        let stripped = bound[14 + kid_len..].to_vec();
        assert!(open(&stripped, "public/motd", &k).is_err());
        let mut as_sample = XKV1.to_vec();
        as_sample.extend_from_slice(&stripped);
        assert_eq!(
            open(&as_sample, "public/motd", &k).err(),
            Some(EnvelopeError::Key(KeyError::Open))
        );
        // Nor does the bound key open what the sample sealed with the same data key.
        assert_eq!(
            k.current()
                .open_bound(&x.seal(b"\x01\x07public/motdv", &x).unwrap()[4..]),
            Err(KeyError::Open)
        );

        // An unbound value relabelled pgb2: the bound key did not seal it.
        let v1 = seal_unbound(&value, k.current(), 0).unwrap();
        let mut promoted = v1.clone();
        promoted[..4].copy_from_slice(b"pgb2");
        assert_eq!(
            open(&promoted, "prod/db", &k).err(),
            Some(EnvelopeError::Key(KeyError::Open))
        );

        // The same bytes untouched open under their own name (the control).
        assert!(
            matches!(open(&bound, "prod/db", &k), Ok(SecretValue::String(v)) if v.as_str() == "PROD-DB-PASSWORD")
        );
        assert!(open(&v1, "public/motd", &k).is_ok());
    }

    /// The name-bound key is a function of the data key alone: another instance with the same
    /// seed opens what this one sealed, and another seed does not.
    #[test]
    fn the_name_bound_key_is_derived_from_the_data_key() {
        let x = XKey::new();
        let value = SecretValue::Binary(Zeroizing::new(vec![9; 40]));
        let sealed = seal(&value, "n", &DataKey::from_xkey(&x).unwrap(), 0).unwrap();
        let again = Keyring::from(DataKey::from_xkey(&x).unwrap());
        assert!(
            matches!(open(&sealed, "n", &again), Ok(SecretValue::Binary(v)) if v.as_slice() == [9; 40])
        );
        let other = DataKey::from_xkey(&XKey::new()).unwrap();
        let (_, sealed_box) = parse(&sealed).unwrap();
        assert_eq!(other.open_bound(sealed_box).err(), Some(KeyError::Open));
    }

    #[test]
    fn a_bound_box_with_a_cut_name_is_malformed() {
        // A box whose content claims a name longer than itself (made with the key, so only
        // a bug could write it) is refused as malformed, not read past its end.
        let (_, k) = key();
        let inner = [1u8, 200, b'a'];
        let sealed = k.current().seal_bound(&inner).unwrap();
        let kid = k.current().id().as_bytes();
        let mut stored = b"pgb2\x01".to_vec();
        stored.extend_from_slice(&[0; 8]);
        stored.push(kid.len() as u8);
        stored.extend_from_slice(kid);
        stored.extend_from_slice(&sealed);
        assert_eq!(open(&stored, "a", &k).err(), Some(EnvelopeError::Malformed));
    }
}
