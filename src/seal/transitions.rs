//! The seal's decisions that need no I/O, as pure functions: where `initialize` may deliver
//! a key, which key material an `unlock` takes and in what form, what a share does to the
//! shares given so far, and whether an opened record is this store's. `state` reads and
//! writes the record and the keys around them; these decide, and are unit-tested here.

use zeroize::Zeroizing;

use super::key_record::{self, DatabaseKey, KeyRecord};
use super::state::{ClearUnlock, KeyDelivery, SealError, UnlockInput};
use crate::backend::BackendError;

/// Whether `initialize` may deliver its key as `delivery` says: a requester key that is not
/// an xkey is refused, and so is the clear form with `sealed_keys_only`, before anything is
/// created.
pub(super) fn check_delivery(
    delivery: KeyDelivery<'_>,
    sealed_keys_only: bool,
) -> Result<(), SealError> {
    match delivery {
        KeyDelivery::SealedTo(xkey) if nkeys::XKey::from_public_key(xkey.trim()).is_err() => {
            Err(SealError::Invalid(format!(
                "{} is not a public xkey (X...)",
                crate::config::headers::REQUESTER_XKEY
            )))
        }
        KeyDelivery::Clear if sealed_keys_only => Err(SealError::ClearKeyRefused),
        _ => Ok(()),
    }
}

/// The key or share of `input`: a sealed unlock opened with `unseal`, the unseal xkey of
/// instance `instance_id` ([`SealError::OtherInstance`] when it names another instance), or
/// the clear form, with a warning (refused with `sealed_keys_only`).
pub(super) fn open_unlock(
    input: UnlockInput,
    instance_id: &str,
    unseal: &nkeys::XKey,
    sealed_keys_only: bool,
) -> Result<ClearUnlock, SealError> {
    match input {
        UnlockInput::Sealed(sealed) => {
            if sealed.instance_id != instance_id {
                return Err(SealError::OtherInstance);
            }
            let plaintext = sealed.key_material().open(unseal).map_err(|_| {
                SealError::Invalid(
                    "cannot open the key material: it is not sealed to this instance's \
                     unseal_xkey (from a status of an earlier run?)"
                        .into(),
                )
            })?;
            serde_json::from_slice(&plaintext).map_err(|_| {
                SealError::Invalid(
                    r#"the sealed key material is not {"database_key": "..."} or {"share": "..."}"#
                        .into(),
                )
            })
        }
        UnlockInput::Local(local) => Ok(local),
        UnlockInput::Clear(_) if sealed_keys_only => Err(SealError::ClearKeyRefused),
        UnlockInput::Clear(clear) => {
            tracing::warn!(
                "unlock received a key or share in clear: it crossed the bus readable by \
                 any subscriber; piggybank unlock seals it, and --sealed-keys-only \
                 refuses this"
            );
            Ok(clear)
        }
    }
}

/// The shares given so far towards the threshold, each as decoded (zeroized on drop).
#[derive(Default)]
pub(super) struct Shares(Vec<Zeroizing<Vec<u8>>>);

/// What one accepted unlock request gives.
pub(super) enum Step {
    /// A database key, whole or combined from enough shares: the record says if it is its.
    Key(DatabaseKey),
    /// A share was kept: `progress` of `threshold` given.
    Progress { progress: usize, threshold: u8 },
}

impl Shares {
    /// How many shares have been given.
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    /// Forget every share given (a lock).
    pub(super) fn clear(&mut self) {
        self.0.clear();
    }

    /// Apply `request` to `record`'s seal: the key itself when the record is not split; else
    /// keep the share until `threshold` are given, then combine them all and forget them
    /// (shares that together do not open the record are all discarded).
    pub(super) fn step(
        &mut self,
        request: &ClearUnlock,
        record: &KeyRecord,
    ) -> Result<Step, BackendError> {
        let invalid = |m: &str| BackendError::from(SealError::Invalid(m.into()));
        match (&request.database_key, &request.share, record.split) {
            (Some(key), None, None) => Ok(Step::Key(DatabaseKey::from_base64(key)?)),
            (None, Some(share), Some(spec)) => {
                let share = key_record::decode_share(share)?;
                // A share this store was not split into never takes a slot: a forged one
                // cannot spoil the operators' unlock.
                if !key_record::share_is_known(record, &share) {
                    return Err(SealError::UnknownShare.into());
                }
                if self.0.iter().any(|s| s[0] == share[0]) {
                    return Err(SealError::RepeatedShare.into());
                }
                self.0.push(share);
                if self.0.len() < usize::from(spec.threshold) {
                    return Ok(Step::Progress {
                        progress: self.0.len(),
                        threshold: spec.threshold,
                    });
                }
                let combined = DatabaseKey::combine(&self.0, spec.threshold);
                self.0.clear();
                Ok(Step::Key(combined?))
            }
            (Some(_), None, Some(_)) => Err(invalid(
                "this database was split into shares: unlock with {\"share\": \"...\"}",
            )),
            (None, Some(_), None) => Err(invalid(
                "this database has one key: unlock with {\"database_key\": \"...\"}",
            )),
            _ => Err(invalid("give exactly one of database_key and share")),
        }
    }
}

/// Whether a record opened by an unlock is this store's. The record is read over NATS, where
/// a forged reply could carry a record of someone else's making (with a key they also send):
/// the transit key it opened to (`opened`) must be the one it names, and the one this
/// instance already knows (`pinned`: from the record at start, or the configured one).
pub(super) fn check_transit(
    record: &KeyRecord,
    opened: &str,
    pinned: Option<&str>,
) -> Result<(), SealError> {
    if opened != record.transit_public || pinned.is_some_and(|p| p != opened) {
        tracing::warn!("unlock refused: the key record's transit key is not this store's");
        return Err(SealError::ForeignRecord);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::key_record::{KeyRecordError, ShareSpec};
    use crate::seal::transfer::{Sealed, SealedUnlock};

    fn clear(database_key: Option<&str>, share: Option<&str>) -> ClearUnlock {
        ClearUnlock {
            database_key: database_key.map(str::to_string),
            share: share.map(str::to_string),
        }
    }

    /// A record split 3 ways, threshold 2, with its share checks, and its shares.
    fn split_record() -> (KeyRecord, Vec<Zeroizing<String>>) {
        let spec = ShareSpec {
            shares: 3,
            threshold: 2,
        };
        let (mut record, key) = key_record::initialize(None, Some(spec), 1).unwrap();
        let shares = key.split(spec);
        record.share_checks = key_record::share_checks(&shares).unwrap();
        key_record::bind(&mut record, &key).unwrap();
        (record, shares)
    }

    fn is_key(step: Result<Step, BackendError>) -> DatabaseKey {
        match step {
            Ok(Step::Key(key)) => key,
            Ok(Step::Progress { progress, .. }) => panic!("still collecting: {progress}"),
            Err(e) => panic!("refused: {e}"),
        }
    }

    fn seal_error(step: Result<Step, BackendError>) -> SealError {
        match step {
            Err(BackendError::Seal(e)) => e,
            Err(e) => panic!("not a seal error: {e}"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn one_key_unlocks_a_store_that_was_not_split() {
        let (record, key) = key_record::initialize(None, None, 1).unwrap();
        let mut shares = Shares::default();
        let given = is_key(shares.step(&clear(Some(&key.to_base64()), None), &record));
        assert!(key_record::open(&record, &given, 1).is_ok());
        // A share, both, or neither: refused, and nothing kept.
        let (_, other) = split_record();
        for request in [
            clear(None, Some(&other[0])),
            clear(Some(&key.to_base64()), Some(&other[0])),
            clear(None, None),
        ] {
            assert!(matches!(
                seal_error(shares.step(&request, &record)),
                SealError::Invalid(_)
            ));
        }
        assert_eq!(shares.len(), 0);
        // A malformed key is the key record's error, not a panic.
        assert!(matches!(
            shares.step(&clear(Some("not base64!"), None), &record),
            Err(BackendError::KeyRecord(KeyRecordError::Malformed(_)))
        ));
    }

    #[test]
    fn shares_below_the_threshold_are_kept_and_the_last_one_gives_the_key() {
        let (record, all) = split_record();
        let mut shares = Shares::default();
        match shares.step(&clear(None, Some(&all[2])), &record) {
            Ok(Step::Progress {
                progress: 1,
                threshold: 2,
            }) => {}
            _ => panic!("the first share is kept"),
        }
        assert_eq!(shares.len(), 1);
        let key = is_key(shares.step(&clear(None, Some(&all[0])), &record));
        assert!(key_record::open(&record, &key, 1).is_ok());
        assert_eq!(shares.len(), 0, "combined shares are forgotten");
        // The whole key is refused for a split store.
        assert!(matches!(
            seal_error(shares.step(&clear(Some(&key.to_base64()), None), &record)),
            SealError::Invalid(_)
        ));
    }

    #[test]
    fn a_repeated_share_takes_no_second_slot() {
        let (record, all) = split_record();
        let mut shares = Shares::default();
        assert!(shares.step(&clear(None, Some(&all[1])), &record).is_ok());
        assert!(matches!(
            seal_error(shares.step(&clear(None, Some(&all[1])), &record)),
            SealError::RepeatedShare
        ));
        assert_eq!(shares.len(), 1);
    }

    #[test]
    fn a_wrong_share_takes_no_slot() {
        let (record, all) = split_record();
        let (_, foreign) = split_record();
        let mut shares = Shares::default();
        // Another split's share, and a forged one in a real share's slot.
        let mut forged = key_record::decode_share(&all[0]).unwrap();
        forged[5] ^= 1;
        let forged = data_encoding::BASE64.encode(&forged);
        for wrong in [foreign[0].as_str(), forged.as_str()] {
            assert!(matches!(
                seal_error(shares.step(&clear(None, Some(wrong)), &record)),
                SealError::UnknownShare
            ));
        }
        assert!(matches!(
            shares.step(&clear(None, Some("AAAA")), &record),
            Err(BackendError::KeyRecord(KeyRecordError::BadShare(_)))
        ));
        assert_eq!(shares.len(), 0);
        // The real shares still unlock.
        assert!(shares.step(&clear(None, Some(&all[0])), &record).is_ok());
        is_key(shares.step(&clear(None, Some(&all[2])), &record));
    }

    /// A record without share checks (written before they existed) takes any well-formed
    /// share: shares that do not combine to its key are all discarded, and `open` refuses it.
    #[test]
    fn shares_that_do_not_combine_to_the_key_are_all_discarded() {
        let (mut record, all) = split_record();
        let (_, foreign) = split_record();
        record.share_checks.clear();
        let mut shares = Shares::default();
        assert!(shares.step(&clear(None, Some(&all[0])), &record).is_ok());
        let wrong = is_key(shares.step(&clear(None, Some(&foreign[1])), &record));
        assert_eq!(shares.len(), 0);
        assert!(key_record::open(&record, &wrong, 1).is_err());
    }

    #[test]
    fn initialize_delivers_only_to_an_xkey_and_in_clear_only_when_allowed() {
        let requester = nkeys::XKey::new().public_key();
        assert!(check_delivery(KeyDelivery::SealedTo(&requester), true).is_ok());
        assert!(check_delivery(KeyDelivery::Clear, false).is_ok());
        assert!(matches!(
            check_delivery(KeyDelivery::Clear, true),
            Err(SealError::ClearKeyRefused)
        ));
        let not_an_xkey = nkeys::KeyPair::new_user().public_key();
        assert!(matches!(
            check_delivery(KeyDelivery::SealedTo(&not_an_xkey), false),
            Err(SealError::Invalid(_))
        ));
    }

    #[test]
    fn an_unlock_opens_only_for_its_instance_and_clear_only_when_allowed() {
        let unseal = nkeys::XKey::new();
        let body = br#"{"share":"c2hhcmU="}"#;
        let sealed = |to: &str, instance: &str| {
            UnlockInput::Sealed(SealedUnlock::new(instance, Sealed::seal(body, to).unwrap()))
        };
        let opened = open_unlock(sealed(&unseal.public_key(), "i1"), "i1", &unseal, true);
        assert_eq!(opened.unwrap().share.as_deref(), Some("c2hhcmU="));
        // Named for another instance: not this one's to answer.
        assert!(matches!(
            open_unlock(sealed(&unseal.public_key(), "i2"), "i1", &unseal, false),
            Err(SealError::OtherInstance)
        ));
        // Sealed to an earlier unseal key (renewed by every lock and unlock): refused.
        let earlier = nkeys::XKey::new().public_key();
        assert!(matches!(
            open_unlock(sealed(&earlier, "i1"), "i1", &unseal, false),
            Err(SealError::Invalid(_))
        ));
        // Sealed, but not a key or share.
        let junk = UnlockInput::Sealed(SealedUnlock::new(
            "i1",
            Sealed::seal(b"[]", &unseal.public_key()).unwrap(),
        ));
        assert!(matches!(
            open_unlock(junk, "i1", &unseal, false),
            Err(SealError::Invalid(_))
        ));
        // In clear over the bus: only without `sealed_keys_only`; given locally: always.
        let key = || clear(Some("k"), None);
        assert!(open_unlock(UnlockInput::Clear(key()), "i1", &unseal, false).is_ok());
        assert!(matches!(
            open_unlock(UnlockInput::Clear(key()), "i1", &unseal, true),
            Err(SealError::ClearKeyRefused)
        ));
        assert!(open_unlock(UnlockInput::Local(key()), "i1", &unseal, true).is_ok());
    }

    #[test]
    fn a_record_naming_another_transit_key_is_refused() {
        let (record, _) = key_record::initialize(None, None, 1).unwrap();
        let ours = record.transit_public.clone();
        let theirs = nkeys::XKey::new().public_key();
        assert!(check_transit(&record, &ours, Some(&ours)).is_ok());
        assert!(
            check_transit(&record, &ours, None).is_ok(),
            "not pinned yet"
        );
        assert!(matches!(
            check_transit(&record, &theirs, None),
            Err(SealError::ForeignRecord)
        ));
        assert!(matches!(
            check_transit(&record, &ours, Some(&theirs)),
            Err(SealError::ForeignRecord)
        ));
    }
}
