//! The key record of a store run without `ENCRYPTION_XKEY_SEED` (sealed mode).
//!
//! The record holds every data key's seed (and the transit key's, unless one is configured),
//! each wrapped (XSalsa20-Poly1305) by a 32-byte database key that is never stored.
//! `initialize` makes the database key and shows it once, whole or split into Shamir shares
//! (`sharks`: any `threshold` of `count` rebuild it). Unwrapping is the check: a wrong key or
//! shares from another initialization cannot open the record, and the record as a whole is
//! bound to its key ([`bind`]). Pure functions: the bucket is `super::bucket`, the state
//! machine that uses them `super::Seal`.

use base64::Engine as _;
use crypto_secretbox::aead::{Aead, AeadCore, KeyInit, OsRng};
use crypto_secretbox::{Key, Nonce, XSalsa20Poly1305};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::ErrorKind;
use crate::keys::{generate_seed, DataKey, Keyring, TransitKey};

/// Length of the database key, in bytes.
pub(crate) const DATABASE_KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyRecordError {
    #[error("key is too short")]
    KeyTooShort,
    #[error("invalid key: it does not unlock this database")]
    WrongKey,
    #[error("invalid key: {0}")]
    Malformed(String),
    #[error("these shares do not unlock this database (are they from another initialization?)")]
    WrongShares,
    #[error("invalid share: {0}")]
    BadShare(String),
    #[error("invalid shares/threshold: {0}")]
    BadSplit(String),
    #[error("the stored key record is corrupt: {0}")]
    Corrupt(String),
    /// The record read is not the one the database key bound: altered (reordered keys, other
    /// activation times or share checks) or someone else's, or unbound (written before
    /// records were bound).
    #[error("the key record read is not the one this database key sealed: refused")]
    Altered,
}

impl KeyRecordError {
    /// A short code for the audit trail.
    pub fn code(&self) -> &'static str {
        match self {
            KeyRecordError::KeyTooShort => "key_too_short",
            KeyRecordError::WrongKey => "wrong_key",
            KeyRecordError::Malformed(_) => "malformed_key",
            KeyRecordError::WrongShares => "wrong_shares",
            KeyRecordError::BadShare(_) => "bad_share",
            KeyRecordError::BadSplit(_) => "bad_split",
            KeyRecordError::Corrupt(_) => "corrupt_record",
            KeyRecordError::Altered => "altered_record",
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            KeyRecordError::WrongKey | KeyRecordError::WrongShares | KeyRecordError::Altered => {
                ErrorKind::Denied
            }
            KeyRecordError::Corrupt(_) => ErrorKind::Internal,
            _ => ErrorKind::Invalid,
        }
    }
}

/// How the database key was split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareSpec {
    pub shares: u8,
    pub threshold: u8,
}

/// A data key's seed, wrapped by the database key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WrappedKey {
    /// The key's public key: the id recorded with every value it seals.
    pub id: String,
    pub wrapped: String,
    pub created_ms: u64,
    /// Becomes the current key at this time (`rotate` gives every instance a moment to load
    /// it as a readable key before any value is sealed with it). 0: at once.
    #[serde(default)]
    pub active_from_ms: u64,
}

/// What the KV holds. Nothing in it opens without the database key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyRecord {
    pub format: u8,
    /// Readable while sealed, so `server_xkey` keeps answering.
    pub transit_public: String,
    /// The transit seed, wrapped; `None` when the transit key is configured (TRANSIT_XKEY_SEED).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transit: Option<String>,
    /// Oldest first; the last one is current.
    pub data_keys: Vec<WrappedKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<ShareSpec>,
    /// For each share, by its x coordinate: the hex SHA-256 of its bytes. `unlock` refuses a
    /// share that does not match before it takes a slot, so a forged share cannot spoil the
    /// operators' unlock. (A share is 33 random-looking bytes: its hash reveals nothing.)
    /// Absent in records written before this existed.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub share_checks: std::collections::BTreeMap<u8, String>,
    /// The digest of everything above, wrapped by the database key ([`bind`]): the record is
    /// read over NATS, and nothing but the database key can tell that its keys' order, their
    /// activation times and its share checks are the ones the operators' key sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<String>,
}

/// The digest [`KeyRecord::binding`] wraps: SHA-256 of the record without its binding.
fn record_digest(record: &KeyRecord) -> Result<String, KeyRecordError> {
    use sha2::Digest as _;
    let bare = KeyRecord {
        binding: None,
        ..record.clone()
    };
    let bytes = serde_json::to_vec(&bare).map_err(|e| KeyRecordError::Corrupt(e.to_string()))?;
    let mut hash = sha2::Sha256::new();
    hash.update(b"piggybank-key-record-v1\0");
    hash.update(&bytes);
    Ok(data_encoding::HEXLOWER.encode(&hash.finalize()))
}

/// Bind `record` as it is now to `database_key`: call after every change to it.
pub fn bind(record: &mut KeyRecord, database_key: &DatabaseKey) -> Result<(), KeyRecordError> {
    let digest = record_digest(record)?;
    record.binding = Some(database_key.wrap(digest.as_bytes())?);
    Ok(())
}

/// Whether `record` is exactly what `database_key` bound: `wrong` when it is not the
/// record's key.
fn check_binding(
    record: &KeyRecord,
    database_key: &DatabaseKey,
    wrong: KeyRecordError,
) -> Result<(), KeyRecordError> {
    let Some(binding) = &record.binding else {
        return Err(KeyRecordError::Altered);
    };
    match database_key.unwrap(binding)? {
        Some(digest) if *digest == record_digest(record)? => Ok(()),
        Some(_) => Err(KeyRecordError::Altered),
        None => Err(wrong),
    }
}

/// The check value of a share, as [`KeyRecord::share_checks`] holds it.
pub(crate) fn share_check(share: &[u8]) -> String {
    use sha2::Digest as _;
    data_encoding::HEXLOWER.encode(&sha2::Sha256::digest(share))
}

/// Whether `share` (decoded) is one of the shares this record was split into. Records
/// without checks accept any well-formed share (the combination is still verified).
pub(crate) fn share_is_known(record: &KeyRecord, share: &[u8]) -> bool {
    if record.share_checks.is_empty() {
        return true;
    }
    let Some(x) = share.first() else {
        return false;
    };
    record
        .share_checks
        .get(x)
        .is_some_and(|check| *check == share_check(share))
}

/// The check values of `shares` (as `DatabaseKey::split` made them), by x coordinate.
pub fn share_checks(
    shares: &[Zeroizing<String>],
) -> Result<std::collections::BTreeMap<u8, String>, KeyRecordError> {
    shares
        .iter()
        .map(|text| {
            let bytes = decode_share(text)?;
            Ok((bytes[0], share_check(&bytes)))
        })
        .collect()
}

impl KeyRecord {
    pub(crate) fn current_key_id(&self) -> Option<&str> {
        self.data_keys.last().map(|k| k.id.as_str())
    }
}

/// The database key. Zeroized on drop.
pub struct DatabaseKey(Zeroizing<[u8; DATABASE_KEY_LEN]>);

impl DatabaseKey {
    fn generate() -> Self {
        let mut key = Zeroizing::new([0u8; DATABASE_KEY_LEN]);
        key.copy_from_slice(&XSalsa20Poly1305::generate_key(&mut OsRng));
        Self(key)
    }

    /// From the base64 text `initialize` returned.
    pub(crate) fn from_base64(text: &str) -> Result<Self, KeyRecordError> {
        let bytes = Zeroizing::new(
            B64.decode(text.trim())
                .map_err(|_| KeyRecordError::Malformed("not base64".into()))?,
        );
        Self::from_bytes(&bytes)
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, KeyRecordError> {
        if bytes.len() < DATABASE_KEY_LEN {
            return Err(KeyRecordError::KeyTooShort);
        }
        if bytes.len() > DATABASE_KEY_LEN {
            return Err(KeyRecordError::Malformed(format!(
                "expected {DATABASE_KEY_LEN} bytes"
            )));
        }
        let mut key = Zeroizing::new([0u8; DATABASE_KEY_LEN]);
        key.copy_from_slice(bytes);
        Ok(Self(key))
    }

    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(B64.encode(*self.0))
    }

    fn cipher(&self) -> XSalsa20Poly1305 {
        XSalsa20Poly1305::new(Key::from_slice(&*self.0))
    }

    fn wrap(&self, secret: &[u8]) -> Result<String, KeyRecordError> {
        let nonce = XSalsa20Poly1305::generate_nonce(&mut OsRng);
        let sealed = self
            .cipher()
            .encrypt(&nonce, secret)
            .map_err(|_| KeyRecordError::Corrupt("cannot wrap a key".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(B64.encode(out))
    }

    /// `None` when this database key did not wrap it.
    fn unwrap(&self, wrapped: &str) -> Result<Option<Zeroizing<String>>, KeyRecordError> {
        let bytes = B64
            .decode(wrapped)
            .map_err(|_| KeyRecordError::Corrupt("wrapped key is not base64".into()))?;
        if bytes.len() <= NONCE_LEN {
            return Err(KeyRecordError::Corrupt("wrapped key is too short".into()));
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let Ok(plain) = self.cipher().decrypt(Nonce::from_slice(nonce), sealed) else {
            return Ok(None);
        };
        let plain = Zeroizing::new(plain);
        let text = std::str::from_utf8(&plain)
            .map_err(|_| KeyRecordError::Corrupt("unwrapped key is not text".into()))?;
        Ok(Some(Zeroizing::new(text.to_string())))
    }

    /// Split into `spec.shares` base64 shares, any `spec.threshold` of which rebuild it.
    pub fn split(&self, spec: ShareSpec) -> Vec<Zeroizing<String>> {
        sharks::Sharks(spec.threshold)
            .dealer(&*self.0)
            .take(usize::from(spec.shares))
            .map(|share| {
                let bytes = Zeroizing::new(Vec::from(&share));
                Zeroizing::new(B64.encode(&*bytes))
            })
            .collect()
    }

    /// Rebuild from shares (each as `split` made it). Wrong shares give a wrong key, which
    /// [`open`] then refuses.
    pub(crate) fn combine(
        shares: &[Zeroizing<Vec<u8>>],
        threshold: u8,
    ) -> Result<Self, KeyRecordError> {
        let parsed: Vec<sharks::Share> = shares
            .iter()
            .map(|s| {
                sharks::Share::try_from(s.as_slice())
                    .map_err(|e| KeyRecordError::BadShare(e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        let secret = Zeroizing::new(
            sharks::Sharks(threshold)
                .recover(parsed.iter())
                .map_err(|e| KeyRecordError::BadShare(e.to_string()))?,
        );
        Self::from_bytes(&secret).map_err(|_| KeyRecordError::WrongShares)
    }
}

/// Decode one share as the unlock request carries it.
pub(crate) fn decode_share(text: &str) -> Result<Zeroizing<Vec<u8>>, KeyRecordError> {
    let bytes = Zeroizing::new(
        B64.decode(text.trim())
            .map_err(|_| KeyRecordError::BadShare("not base64".into()))?,
    );
    // A share is its x coordinate (never 0) and one byte per byte of the database key.
    if bytes.len() != DATABASE_KEY_LEN + 1 || bytes[0] == 0 {
        return Err(KeyRecordError::BadShare(format!(
            "expected {} bytes",
            DATABASE_KEY_LEN + 1
        )));
    }
    Ok(bytes)
}

/// A new record and its database key. `transit`: the configured transit key, if any (then the
/// record keeps only its public key).
pub fn initialize(
    transit: Option<&TransitKey>,
    split: Option<ShareSpec>,
    now_ms: u64,
) -> Result<(KeyRecord, DatabaseKey), KeyRecordError> {
    if let Some(spec) = split {
        if spec.threshold == 0 || spec.threshold > spec.shares || spec.shares > 16 {
            return Err(KeyRecordError::BadSplit(
                "need 1 <= threshold <= shares <= 16".into(),
            ));
        }
    }
    let database_key = DatabaseKey::generate();
    let data_seed = generate_seed();
    let data_key =
        DataKey::from_seed(&data_seed).map_err(|e| KeyRecordError::Corrupt(e.to_string()))?;
    let (transit_public, wrapped_transit) = match transit {
        Some(t) => (t.public_key().to_string(), None),
        None => {
            let seed = generate_seed();
            let t =
                TransitKey::from_seed(&seed).map_err(|e| KeyRecordError::Corrupt(e.to_string()))?;
            (
                t.public_key().to_string(),
                Some(database_key.wrap(seed.as_bytes())?),
            )
        }
    };
    let mut record = KeyRecord {
        format: 1,
        transit_public,
        transit: wrapped_transit,
        data_keys: vec![WrappedKey {
            id: data_key.id().to_string(),
            wrapped: database_key.wrap(data_seed.as_bytes())?,
            created_ms: now_ms,
            active_from_ms: 0,
        }],
        split,
        share_checks: Default::default(),
        binding: None,
    };
    bind(&mut record, &database_key)?;
    Ok((record, database_key))
}

/// Add a new data key to `record`, active from `active_from_ms`. Returns its id.
pub fn rotate(
    record: &mut KeyRecord,
    database_key: &DatabaseKey,
    now_ms: u64,
    active_from_ms: u64,
) -> Result<String, KeyRecordError> {
    // The record was read over NATS: binding what was read would make an altered record
    // (a key dropped, share checks replaced) the operators' own.
    check_binding(record, database_key, KeyRecordError::WrongKey)?;
    let seed = generate_seed();
    let key = DataKey::from_seed(&seed).map_err(|e| KeyRecordError::Corrupt(e.to_string()))?;
    record.data_keys.push(WrappedKey {
        id: key.id().to_string(),
        wrapped: database_key.wrap(seed.as_bytes())?,
        created_ms: now_ms,
        active_from_ms,
    });
    bind(record, database_key)?;
    Ok(key.id().to_string())
}

/// When the newest key becomes current, if it is not yet.
pub(crate) fn pending_activation(record: &KeyRecord, now_ms: u64) -> Option<u64> {
    record
        .data_keys
        .last()
        .map(|k| k.active_from_ms)
        .filter(|&at| at > now_ms)
}

/// Open the record at `now_ms`: the keyring (current: the newest active key; every other
/// key opens only) and the transit key, if the record holds it.
pub fn open(
    record: &KeyRecord,
    database_key: &DatabaseKey,
    now_ms: u64,
) -> Result<(Keyring, Option<TransitKey>), KeyRecordError> {
    let wrong = || {
        if record.split.is_some() {
            KeyRecordError::WrongShares
        } else {
            KeyRecordError::WrongKey
        }
    };
    // First: the record is read over NATS, where it can be forged or altered.
    check_binding(record, database_key, wrong())?;
    let mut keys = Vec::with_capacity(record.data_keys.len());
    for wrapped in &record.data_keys {
        let seed = database_key.unwrap(&wrapped.wrapped)?.ok_or_else(wrong)?;
        let key = DataKey::from_seed(&seed).map_err(|e| KeyRecordError::Corrupt(e.to_string()))?;
        if key.id() != wrapped.id {
            return Err(KeyRecordError::Corrupt(format!(
                "key {} has another id",
                wrapped.id
            )));
        }
        keys.push(key);
    }
    let active = record
        .data_keys
        .iter()
        .rposition(|k| k.active_from_ms <= now_ms)
        .unwrap_or(0);
    if keys.is_empty() {
        return Err(KeyRecordError::Corrupt("no data key".into()));
    }
    let current = keys.remove(active);
    keys.reverse();
    let transit = match &record.transit {
        None => None,
        Some(wrapped) => {
            let seed = database_key.unwrap(wrapped)?.ok_or_else(wrong)?;
            Some(TransitKey::from_seed(&seed).map_err(|e| KeyRecordError::Corrupt(e.to_string()))?)
        }
    };
    Ok((Keyring::new(current, keys), transit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_shares_of_this_split_pass_the_check() {
        let (mut record, database_key) = initialize(
            None,
            Some(ShareSpec {
                shares: 3,
                threshold: 2,
            }),
            0,
        )
        .unwrap();
        let shares = database_key.split(record.split.unwrap());
        assert!(
            share_is_known(&record, &decode_share(&shares[0]).unwrap()),
            "no checks yet"
        );
        record.share_checks = share_checks(&shares).unwrap();
        for share in &shares {
            assert!(share_is_known(&record, &decode_share(share).unwrap()));
        }
        // Same x, other bytes: a forged share for slot 1.
        let mut forged = decode_share(&shares[0]).unwrap();
        forged[5] ^= 1;
        assert!(!share_is_known(&record, &forged));
        // Another split's share with a valid x.
        let (_, other) = initialize(None, record.split, 0).unwrap();
        let foreign = other.split(record.split.unwrap());
        assert!(!share_is_known(
            &record,
            &decode_share(&foreign[1]).unwrap()
        ));
    }

    #[test]
    fn the_database_key_opens_what_initialize_made_and_nothing_else_does() {
        let (record, database_key) = initialize(None, None, 1).unwrap();
        let (keys, transit) = open(&record, &database_key, 1).unwrap();
        assert_eq!(Some(keys.current().id()), record.current_key_id());
        assert_eq!(transit.unwrap().public_key(), record.transit_public);

        let again = DatabaseKey::from_base64(&database_key.to_base64()).unwrap();
        assert!(open(&record, &again, 1).is_ok());
        let (_, other) = initialize(None, None, 1).unwrap();
        assert_eq!(
            open(&record, &other, 1).err(),
            Some(KeyRecordError::WrongKey)
        );
        assert_eq!(
            DatabaseKey::from_base64(&B64.encode([1u8; 16])).err(),
            Some(KeyRecordError::KeyTooShort)
        );
        assert!(DatabaseKey::from_base64("not base64!").is_err());
    }

    #[test]
    fn a_rotated_key_becomes_current_at_its_activation_and_old_keys_still_open() {
        let (mut record, database_key) = initialize(None, None, 1).unwrap();
        let first = record.current_key_id().unwrap().to_string();
        let second = rotate(&mut record, &database_key, 10, 20).unwrap();
        assert_eq!(pending_activation(&record, 15), Some(20));
        let (before, _) = open(&record, &database_key, 15).unwrap();
        assert_eq!(before.current().id(), first);
        assert!(
            before.get(&second).is_some(),
            "the new key is readable before it is current"
        );
        let (after, _) = open(&record, &database_key, 20).unwrap();
        assert_eq!(after.current().id(), second);
        assert!(after.get(&first).is_some());
        assert_eq!(pending_activation(&record, 20), None);
    }

    /// The record is read over NATS: any change to what the database key bound is refused,
    /// though every wrapped key in it is genuine.
    #[test]
    fn a_record_opens_only_as_it_was_bound() {
        let (mut record, database_key) = initialize(None, None, 0).unwrap();
        rotate(&mut record, &database_key, 10, 20).unwrap();
        assert!(open(&record, &database_key, 30).is_ok());
        let altered: [fn(&mut KeyRecord); 5] = [
            |r| r.data_keys.reverse(),
            |r| r.data_keys[1].active_from_ms = 0,
            |r| {
                r.data_keys.pop();
            },
            |r| {
                r.share_checks.insert(1, "00".into());
            },
            |r| r.binding = None,
        ];
        for alter in altered {
            let mut forged = record.clone();
            alter(&mut forged);
            assert!(matches!(
                open(&forged, &database_key, 30),
                Err(KeyRecordError::Altered)
            ));
        }
        // Nor is an altered record rotated (and so bound) with the real key.
        let mut dropped = record.clone();
        dropped.data_keys.remove(0);
        assert!(matches!(
            rotate(&mut dropped, &database_key, 40, 50),
            Err(KeyRecordError::Altered)
        ));
        // Another key still reads as a wrong key, not as an altered record.
        let (_, other) = initialize(None, None, 0).unwrap();
        assert!(matches!(
            open(&record, &other, 30),
            Err(KeyRecordError::WrongKey)
        ));
    }

    #[test]
    fn a_configured_transit_key_is_not_stored() {
        let transit = TransitKey::from_seed(&generate_seed()).unwrap();
        let (record, database_key) = initialize(Some(&transit), None, 1).unwrap();
        assert!(record.transit.is_none());
        assert_eq!(record.transit_public, transit.public_key());
        assert!(open(&record, &database_key, 1).unwrap().1.is_none());
    }

    #[test]
    fn any_threshold_shares_rebuild_the_key_and_fewer_or_foreign_ones_do_not() {
        let spec = ShareSpec {
            shares: 5,
            threshold: 3,
        };
        let (record, database_key) = initialize(None, Some(spec), 1).unwrap();
        let shares: Vec<_> = database_key
            .split(spec)
            .iter()
            .map(|s| decode_share(s).unwrap())
            .collect();
        for pick in [[0, 1, 2], [4, 2, 0], [1, 3, 4]] {
            let chosen: Vec<_> = pick.iter().map(|&i| shares[i].clone()).collect();
            let rebuilt = DatabaseKey::combine(&chosen, 3).unwrap();
            assert!(open(&record, &rebuilt, 1).is_ok());
        }
        // K-1 shares rebuild a different key.
        let two = DatabaseKey::combine(&shares[..2], 2).unwrap();
        assert_eq!(
            open(&record, &two, 1).err(),
            Some(KeyRecordError::WrongShares)
        );
        // Shares of another initialization.
        let (_, other) = initialize(None, Some(spec), 1).unwrap();
        let foreign: Vec<_> = other
            .split(spec)
            .iter()
            .take(3)
            .map(|s| decode_share(s).unwrap())
            .collect();
        let rebuilt = DatabaseKey::combine(&foreign, 3).unwrap();
        assert_eq!(
            open(&record, &rebuilt, 1).err(),
            Some(KeyRecordError::WrongShares)
        );
    }

    #[test]
    fn bad_splits_and_shares_are_refused() {
        for (shares, threshold) in [(3, 4), (3, 0), (17, 2)] {
            let spec = ShareSpec { shares, threshold };
            assert!(initialize(None, Some(spec), 1).is_err(), "{spec:?}");
        }
        assert!(decode_share("AAAA").is_err());
        assert!(decode_share("!!").is_err());
    }
}
