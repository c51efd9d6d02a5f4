//! Every state change of the seal, on a real key record's bucket (a `nats-server` on a free
//! port): uninitialized, initialize, sealed, unlock (the key, or shares), unsealed, lock,
//! rotate; an unlock racing a lock; keyed mode's refusals. The decisions that need no NATS
//! are tested beside them, in `transitions`.

use std::sync::Arc;

use piggybank_testkit::NatsServer;
use zeroize::Zeroizing;

use super::key_record::{self, DatabaseKey, ShareSpec};
use super::state::{lock, KeyMaterial, Mode};
use super::*;
use crate::authz::Authorizer;
use crate::backend::{Backend, BackendError};
use crate::keys::{generate_seed, DataKey, Keyring, TransitKey};
use crate::store::{Bucket, BucketSpec, MappingTable, SecretStore};

fn spec(name: &str, history: i64) -> BucketSpec {
    BucketSpec {
        name: name.into(),
        description: "seal unit test",
        history,
        replicas: 1,
        max_age: std::time::Duration::ZERO,
        compression: true,
    }
}

async fn stores(nats: &NatsServer) -> (SecretStore, MappingTable, async_nats::Client) {
    let client = nats.client().await;
    let secrets = SecretStore::open(&client, None, Bucket::CreateIfMissing(&spec("S", 5)))
        .await
        .unwrap();
    let mappings = MappingTable::open(&client, None, Bucket::CreateIfMissing(&spec("M", 1)))
        .await
        .unwrap();
    (secrets, mappings, client)
}

/// A sealed-mode instance on `nats`, its store not initialized.
async fn sealed_mode(nats: &NatsServer, sealed_keys_only: bool) -> (Arc<Seal>, Arc<Backend>) {
    let (secrets, mappings, client) = stores(nats).await;
    let authorizer = Authorizer::new(&[]).unwrap();
    let backend = Arc::new(Backend::sealed(secrets, mappings, authorizer));
    let js = crate::store::jetstream(&client, None);
    let kv = Bucket::CreateIfMissing(&spec("V", 1))
        .open(&js)
        .await
        .unwrap();
    let records = RecordStore::new(kv);
    let seal = Seal::new(Arc::clone(&backend), records, None, sealed_keys_only);
    (Arc::new(seal), backend)
}

/// Initialize in clear; the key or the shares it handed out.
async fn initialize(seal: &Seal, split: Option<ShareSpec>) -> Vec<String> {
    let Ok(Initialized::Clear(material)) = seal.initialize(split, KeyDelivery::Clear).await else {
        panic!("initialize in clear");
    };
    let KeyMaterial {
        database_key,
        shares,
        ..
    } = &material;
    match (database_key, shares) {
        (Some(key), None) => vec![key.clone()],
        (None, Some(shares)) => shares.clone(),
        _ => panic!("a key or shares"),
    }
}

fn key(text: &str) -> UnlockInput {
    UnlockInput::Clear(ClearUnlock {
        database_key: Some(text.to_string()),
        share: None,
    })
}

fn share(text: &str) -> UnlockInput {
    UnlockInput::Clear(ClearUnlock {
        database_key: None,
        share: Some(text.to_string()),
    })
}

/// The seal's refusal. (What an accepted request returns may hold key material: it has no
/// `Debug`, and is never printed.)
fn seal_error<T>(result: Result<T, BackendError>) -> SealError {
    match result {
        Err(BackendError::Seal(e)) => e,
        Err(e) => panic!("expected a seal error, got {e}"),
        Ok(_) => panic!("expected a seal error, but it was accepted"),
    }
}

/// Sealed means: no keys in the backend, and no database key held.
fn assert_sealed(seal: &Seal, backend: &Backend) {
    assert!(backend.is_sealed());
    assert!(backend.unsealed().is_err());
    assert!(lock(&seal.database_key).is_none(), "no database key held");
}

fn assert_unsealed(seal: &Seal, backend: &Backend) {
    assert!(!backend.is_sealed());
    assert!(
        lock(&seal.database_key).is_some(),
        "the database key is held"
    );
}

#[tokio::test]
async fn an_uninitialized_store_refuses_unlock_and_rotate() {
    let nats = NatsServer::start();
    let (seal, backend) = sealed_mode(&nats, false).await;
    let report = seal.report(None).await.unwrap();
    assert_eq!((report.mode, report.initialized), (Mode::Sealed, false));
    assert!(report.sealed);
    assert_eq!(report.key_version, Some(0));
    assert!(matches!(
        seal_error(seal.unlock(key("AAAA")).await),
        SealError::NotInitialized
    ));
    assert!(matches!(
        seal_error(seal.rotate().await),
        SealError::NotInitialized
    ));
    // Auto-unlock at start leaves it sealed, without an error.
    let given = Zeroizing::new("AAAA".to_string());
    assert!(!seal.unlock_at_start(&given).await.unwrap());
    assert_sealed(&seal, &backend);
}

#[tokio::test]
async fn initialize_happens_once_and_leaves_the_store_sealed() {
    let nats = NatsServer::start();
    let (seal, backend) = sealed_mode(&nats, false).await;
    // A requester key that is not an xkey is refused before anything is created.
    let user = nkeys::KeyPair::new_user().public_key();
    let refused = seal.initialize(None, KeyDelivery::SealedTo(&user)).await;
    assert!(matches!(seal_error(refused), SealError::Invalid(_)));
    assert!(seal.record().await.unwrap().is_none());

    let requester = nkeys::XKey::new();
    let answer = seal
        .initialize(None, KeyDelivery::SealedTo(&requester.public_key()))
        .await
        .unwrap();
    let Initialized::Sealed(sealed) = answer else {
        panic!("sealed to the requester");
    };
    let record = seal.record().await.unwrap().expect("initialized");
    let material = sealed
        .open(&requester, Some(&record.transit_public))
        .expect("sealed from the transit key the record names");
    let given = material["database_key"].as_str().unwrap();
    assert!(key_record::open(&record, &DatabaseKey::from_base64(given).unwrap(), 0).is_ok());
    assert_eq!(backend.transit_public(), Some(record.transit_public));

    let report = seal.report(None).await.unwrap();
    assert!(report.initialized && report.sealed);
    assert_eq!(report.key_version, Some(1));
    assert_sealed(&seal, &backend);
    assert!(matches!(
        seal_error(seal.initialize(None, KeyDelivery::Clear).await),
        SealError::AlreadyInitialized
    ));
}

#[tokio::test]
async fn the_key_unlocks_a_lock_seals_and_the_key_unlocks_again() {
    let nats = NatsServer::start();
    let (seal, backend) = sealed_mode(&nats, false).await;
    let database_key = initialize(&seal, None).await.remove(0);

    // A wrong key: refused, still sealed.
    let (_, other) = key_record::initialize(None, None, 0).unwrap();
    let refused = seal.unlock(key(&other.to_base64())).await;
    assert!(matches!(refused, Err(BackendError::KeyRecord(_))));
    assert_eq!(refused.unwrap_err().kind(), crate::error::ErrorKind::Denied);
    assert_sealed(&seal, &backend);

    let unseal_xkey = seal.report(None).await.unwrap().unseal_xkey;
    assert_eq!(
        seal.unlock(key(&database_key)).await.unwrap(),
        Unlocked::Unsealed
    );
    assert_unsealed(&seal, &backend);
    let report = seal.report(None).await.unwrap();
    assert!(!report.sealed && report.key_id.is_some());
    assert_ne!(report.unseal_xkey, unseal_xkey, "renewed by the unlock");
    assert!(matches!(
        seal_error(seal.unlock(key(&database_key)).await),
        SealError::AlreadyUnlocked
    ));

    seal.lock().await.unwrap();
    assert_sealed(&seal, &backend);
    let locked = seal.report(None).await.unwrap();
    assert!(locked.sealed);
    assert_ne!(
        locked.unseal_xkey, report.unseal_xkey,
        "renewed by the lock"
    );
    // Locking a sealed store changes nothing.
    seal.lock().await.unwrap();
    assert_sealed(&seal, &backend);

    assert_eq!(
        seal.unlock(key(&database_key)).await.unwrap(),
        Unlocked::Unsealed
    );
    assert_unsealed(&seal, &backend);
}

#[tokio::test]
async fn shares_unlock_at_the_threshold_and_a_lock_forgets_those_given() {
    let nats = NatsServer::start();
    let (seal, backend) = sealed_mode(&nats, false).await;
    let split = ShareSpec {
        shares: 3,
        threshold: 2,
    };
    let shares = initialize(&seal, Some(split)).await;
    let report = seal.report(None).await.unwrap();
    assert_eq!((report.threshold, report.shares), (Some(2), Some(3)));

    // Below the threshold: kept, reported, still sealed.
    let progress = Unlocked::Progress {
        progress: 1,
        threshold: 2,
    };
    assert_eq!(seal.unlock(share(&shares[0])).await.unwrap(), progress);
    assert_eq!(seal.report(None).await.unwrap().progress, 1);
    assert_sealed(&seal, &backend);
    // The same share again, a share of another split, or the whole key: refused, and the
    // share given stays given.
    assert!(matches!(
        seal_error(seal.unlock(share(&shares[0])).await),
        SealError::RepeatedShare
    ));
    let (_, other) = key_record::initialize(None, Some(split), 0).unwrap();
    let foreign = other.split(split);
    assert!(matches!(
        seal_error(seal.unlock(share(&foreign[1])).await),
        SealError::UnknownShare
    ));
    assert!(matches!(
        seal_error(seal.unlock(key(&other.to_base64())).await),
        SealError::Invalid(_)
    ));
    assert_eq!(seal.report(None).await.unwrap().progress, 1);

    // A lock forgets the shares given so far.
    seal.lock().await.unwrap();
    assert_eq!(seal.report(None).await.unwrap().progress, 0);
    assert_eq!(seal.unlock(share(&shares[0])).await.unwrap(), progress);

    // The threshold's share unseals.
    assert_eq!(
        seal.unlock(share(&shares[2])).await.unwrap(),
        Unlocked::Unsealed
    );
    assert_unsealed(&seal, &backend);
    assert_eq!(seal.report(None).await.unwrap().progress, 0);

    // Auto-unlock needs the whole key, which a split store has not.
    seal.lock().await.unwrap();
    let given = Zeroizing::new(shares[0].clone());
    let refused = seal.unlock_at_start(&given).await;
    assert!(matches!(seal_error(refused), SealError::Invalid(_)));
    assert_sealed(&seal, &backend);
}

#[tokio::test]
async fn rotate_adds_a_data_key_only_while_unsealed() {
    let nats = NatsServer::start();
    let (seal, backend) = sealed_mode(&nats, false).await;
    let database_key = initialize(&seal, None).await.remove(0);
    assert!(matches!(seal.rotate().await, Err(BackendError::Sealed)));

    let given = Zeroizing::new(database_key);
    assert!(seal.unlock_at_start(&given).await.unwrap());
    assert_unsealed(&seal, &backend);
    assert!(
        seal.unlock_at_start(&given).await.unwrap(),
        "already unlocked"
    );
    let first = seal.report(None).await.unwrap().key_id;

    let rotated = seal.rotate().await.unwrap();
    assert_eq!(rotated.key_version, 2);
    let report = seal.report(None).await.unwrap();
    assert_eq!(report.key_version, Some(2));
    // The new key is current in the record, and in this instance once active.
    assert_eq!(report.key_id.as_deref(), Some(rotated.key_id.as_str()));
    assert_ne!(report.key_id, first);
    let store = backend.unsealed().unwrap();
    assert!(store.keys().get(&rotated.key_id).is_some());

    seal.lock().await.unwrap();
    assert!(matches!(seal.rotate().await, Err(BackendError::Sealed)));
}

/// The unlock read the lock epoch, then a lock came before it installed the keys: nothing
/// is installed, and no database key is kept.
#[tokio::test]
async fn an_unlock_overtaken_by_a_lock_installs_nothing() {
    let nats = NatsServer::start();
    let (seal, backend) = sealed_mode(&nats, false).await;
    let text = initialize(&seal, None).await.remove(0);
    let record = seal.record().await.unwrap().unwrap();
    let database_key = DatabaseKey::from_base64(&text).unwrap();
    let epoch = backend.seal_epoch();
    let (keys, transit) = key_record::open(&record, &database_key, 0).unwrap();

    seal.lock().await.unwrap();
    let late = seal.commit_unlock(epoch, keys, transit.unwrap(), database_key);
    assert!(matches!(late, Err(SealError::LockedMeanwhile)));
    assert_sealed(&seal, &backend);
}

/// Unlock and lock run at once, many times: whichever wins, the instance ends sealed with no
/// database key held, or unsealed holding it; never keys without the key, or the reverse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlock_racing_a_lock_leaves_a_whole_state() {
    let nats = NatsServer::start();
    let (seal, backend) = sealed_mode(&nats, false).await;
    let text = initialize(&seal, None).await.remove(0);
    for _ in 0..20 {
        let (unlocked, locked) = tokio::join!(seal.unlock(key(&text)), seal.lock());
        locked.unwrap();
        match unlocked {
            Ok(_) => {}
            Err(BackendError::Seal(SealError::LockedMeanwhile | SealError::AlreadyUnlocked)) => {}
            Err(e) => panic!("unexpected: {e}"),
        }
        assert_eq!(
            backend.is_sealed(),
            lock(&seal.database_key).is_none(),
            "the keys and the database key come and go together"
        );
        seal.lock().await.unwrap();
        assert_sealed(&seal, &backend);
    }
}

#[tokio::test]
async fn sealed_keys_only_refuses_a_key_in_clear() {
    let nats = NatsServer::start();
    let (seal, backend) = sealed_mode(&nats, true).await;
    assert!(matches!(
        seal_error(seal.initialize(None, KeyDelivery::Clear).await),
        SealError::ClearKeyRefused
    ));
    assert!(seal.record().await.unwrap().is_none());
    let requester = nkeys::XKey::new().public_key();
    seal.initialize(None, KeyDelivery::SealedTo(&requester))
        .await
        .unwrap();
    assert!(matches!(
        seal_error(seal.unlock(key("AAAA")).await),
        SealError::ClearKeyRefused
    ));
    assert_sealed(&seal, &backend);
}

/// A backend run with `ENCRYPTION_XKEY_SEED` has no seal: `status` answers, every other
/// operation is refused with `NoSeal`, and its keys stay installed.
#[tokio::test]
async fn keyed_mode_has_no_seal_to_change() {
    let nats = NatsServer::start();
    let (secrets, mappings, _client) = stores(&nats).await;
    let transit = TransitKey::from_seed(&generate_seed()).unwrap();
    let keys = Keyring::new(DataKey::from_seed(&generate_seed()).unwrap(), Vec::new());
    let authorizer = Authorizer::new(&[]).unwrap();
    let backend = Arc::new(Backend::new(transit, keys, secrets, mappings, authorizer));
    let seal = Arc::new(Seal::keyed(Arc::clone(&backend)));

    let report = seal.report(None).await.unwrap();
    assert_eq!(report.mode, Mode::Keyed);
    assert!(report.initialized && !report.sealed);
    assert_eq!((report.key_version, report.reencryption), (None, None));
    assert!(seal.record().await.unwrap().is_none());
    seal.watch().await.unwrap();

    let no_seal = |e: SealError| assert!(matches!(e, SealError::NoSeal), "{e}");
    no_seal(seal_error(seal.initialize(None, KeyDelivery::Clear).await));
    no_seal(seal_error(seal.unlock(key("AAAA")).await));
    no_seal(seal_error(seal.lock().await));
    no_seal(seal_error(seal.rotate().await));
    assert!(!backend.is_sealed(), "keyed mode's keys stay");
}

/// `status` vouches for this instance's unseal xkey with the transit key, once it holds one:
/// a sealed instance run without `TRANSIT_XKEY_SEED` has nothing to prove it with.
#[tokio::test]
async fn status_proves_the_unseal_xkey_once_the_transit_key_is_held() {
    let nats = NatsServer::start();
    let (seal, _backend) = sealed_mode(&nats, false).await;
    let text = initialize(&seal, None).await.remove(0);
    let requester = nkeys::XKey::new();
    let sealed = seal.report(Some(&requester.public_key())).await.unwrap();
    assert!(sealed.unseal_proof.is_none());

    seal.unlock(key(&text)).await.unwrap();
    let report = seal.report(Some(&requester.public_key())).await.unwrap();
    let claim = transfer::InstanceClaim {
        instance_id: report.instance_id.clone(),
        unseal_xkey: report.unseal_xkey.clone().unwrap(),
    };
    let proof = report.unseal_proof.as_deref().expect("a proof");
    let transit = report.server_xkey.as_deref().unwrap();
    assert_eq!(claim.verify(proof, &requester, transit), Ok(()));
    assert!(matches!(
        seal_error(seal.report(Some("XNOTAKEY")).await),
        SealError::Invalid(_)
    ));
}
