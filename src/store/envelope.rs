//! The at-rest format of a secret value.
//!
//! ```text
//! piggybank (v1):  "pgb1" | kind: u8 | created_ms: u64 BE | kid_len: u8 | kid | box
//!                  box = xkv1 box, sealed by the data key `kid` to itself, of (kind: u8 | value)
//! sample (legacy): box of (value)   -- starts with "xkv1"; no kind, no key id
//! ```
//!
//! The kind is in clear (so `list_secrets` can report it without decrypting) and repeated
//! inside the box; opening checks that both agree, so a flipped kind byte is detected. The key
//! id names the data key that sealed the value, so keys can be rotated online. `created_ms` is
//! when the secret's first version was written (metadata only, not authenticated).

use zeroize::Zeroizing;

use crate::keys::{DataKey, KeyError, Keyring, XKV1};

const MAGIC: &[u8; 4] = b"pgb1";
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
}

/// Seal `value` with `key` in the sample's format (`--write-legacy-format`): the bare box,
/// which a sample instance can open. No kind, no key id, no creation time are recorded.
pub(crate) fn seal_legacy(value: &SecretValue, key: &DataKey) -> Result<Vec<u8>, KeyError> {
    key.seal(value.as_bytes())
}

/// Seal `value` with `key` into the v1 envelope.
pub fn seal(value: &SecretValue, key: &DataKey, created_ms: u64) -> Result<Vec<u8>, KeyError> {
    let kind = value.kind().to_byte();
    let mut inner = Zeroizing::new(Vec::with_capacity(1 + value.as_bytes().len()));
    inner.push(kind);
    inner.extend_from_slice(value.as_bytes());
    let sealed = key.seal(&inner)?;

    let kid = key.id().as_bytes();
    let kid_len = u8::try_from(kid.len()).map_err(|_| KeyError::Seal)?;
    let mut out = Vec::with_capacity(HEADER_FIXED + kid.len() + sealed.len());
    out.extend_from_slice(MAGIC);
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
        };
        return Ok((header, stored));
    }
    let rest = stored.strip_prefix(MAGIC).ok_or(EnvelopeError::Malformed)?;
    if rest.len() < HEADER_FIXED - MAGIC.len() {
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
    };
    Ok((header, sealed))
}

/// Open a stored value with the key its header names. A legacy value names none: each key
/// is tried, current first (the sample sealed with what is now a current or previous key).
pub fn open(stored: &[u8], keys: &Keyring) -> Result<SecretValue, EnvelopeError> {
    let (header, sealed) = parse(stored)?;
    let mut plain = match &header.key_id {
        Some(kid) => keys
            .get(kid)
            .ok_or_else(|| EnvelopeError::UnknownKey(kid.clone()))?
            .open(sealed)?,
        None => keys
            .keys()
            .find_map(|key| key.open(sealed).ok())
            .ok_or(KeyError::Open)?,
    };
    match header.kind {
        SecretKind::Legacy => Ok(legacy_value(plain)),
        kind => {
            if plain.first().copied() != Some(kind.to_byte()) {
                return Err(EnvelopeError::Malformed);
            }
            plain.remove(0);
            Ok(match kind {
                SecretKind::String => {
                    let text = String::from_utf8(std::mem::take(&mut *plain))
                        .map_err(|_| EnvelopeError::Malformed)?;
                    SecretValue::String(Zeroizing::new(text))
                }
                _ => SecretValue::Binary(plain),
            })
        }
    }
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
            k.current(),
            7,
        )
        .unwrap();
        let (h, _) = parse(&s).unwrap();
        assert_eq!(h.kind, SecretKind::String);
        assert_eq!(h.created_ms, Some(7));
        assert_eq!(h.key_id.as_deref(), Some(k.current().id()));
        assert!(matches!(open(&s, &k).unwrap(), SecretValue::String(v) if v.as_str() == "hé"));

        // Valid UTF-8 stored as binary stays binary (sample defect 3).
        let b = seal(
            &SecretValue::Binary(Zeroizing::new(b"utf8".to_vec())),
            k.current(),
            0,
        )
        .unwrap();
        assert!(matches!(open(&b, &k).unwrap(), SecretValue::Binary(v) if v.as_slice() == b"utf8"));
    }

    #[test]
    fn legacy_sample_values_open_with_the_configured_key() {
        let (x, k) = key();
        let text = x.seal(b"text", &x).unwrap();
        assert!(matches!(open(&text, &k).unwrap(), SecretValue::String(v) if v.as_str() == "text"));
        let bytes = x.seal(&[0xff, 0x00], &x).unwrap();
        assert!(
            matches!(open(&bytes, &k).unwrap(), SecretValue::Binary(v) if v.as_slice() == [0xff, 0])
        );
    }

    #[test]
    fn previous_keys_open_what_they_sealed_and_legacy_values_try_every_key() {
        let (old_x, old) = key();
        let value = SecretValue::String(Zeroizing::new("v".into()));
        let by_old = seal(&value, old.current(), 0).unwrap();
        let legacy = old_x.seal(b"legacy", &old_x).unwrap();
        let new = || DataKey::from_xkey(&XKey::new()).unwrap();
        let old_again = || DataKey::from_xkey(&old_x).unwrap();

        let rotated = Keyring::new(new(), vec![old_again()]);
        assert!(
            matches!(open(&by_old, &rotated).unwrap(), SecretValue::String(v) if v.as_str() == "v")
        );
        assert!(
            matches!(open(&legacy, &rotated).unwrap(), SecretValue::String(v) if v.as_str() == "legacy")
        );

        let dropped = Keyring::from(new());
        assert!(matches!(
            open(&by_old, &dropped),
            Err(EnvelopeError::UnknownKey(_))
        ));
        assert!(matches!(
            open(&legacy, &dropped),
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
            k.current(),
            0,
        )
        .unwrap();
        assert!(matches!(
            open(&s, &other),
            Err(EnvelopeError::UnknownKey(_))
        ));
        s[4] = 1; // claim "string"
        assert_eq!(open(&s, &k).err(), Some(EnvelopeError::Malformed));
        assert_eq!(parse(b"junk").err(), Some(EnvelopeError::Malformed));
        assert_eq!(parse(b"pgb1\x01").err(), Some(EnvelopeError::Malformed));
        assert_eq!(
            parse(b"pgb1\x01\0\0\0\0\0\0\0\0\x09ab").err(),
            Some(EnvelopeError::Malformed)
        );
    }
}
