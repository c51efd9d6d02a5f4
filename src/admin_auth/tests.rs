//! Signed administration: the signed bytes, the signer and the verifier.

use futures::future::BoxFuture;

use super::*;
use crate::store::StoreError;

const SUBJECT: &str = "wasmcloud.secrets.v1alpha1.nats-kv.delete_secret";
const BODY: &[u8] = br#"{"key":"db"}"#;
const NOW: u64 = 1_800_000_000_000;

fn signer() -> (AdminSigner, Zeroizing<String>) {
    let seed = AdminSigner::generate_seed();
    (AdminSigner::from_seed(&seed).unwrap(), seed)
}

/// A verifier started long before `NOW` (the tests' fixed clock).
fn verifier(keys: &[&str]) -> AdminVerifier {
    let mut v = AdminVerifier::with_nonce_store(keys, Arc::new(MemoryNonces::default())).unwrap();
    v.started_ms = 0;
    v
}

fn signed(signer: &AdminSigner, subject: &str, body: &[u8], time: u64) -> HeaderMap {
    let mut h = HeaderMap::new();
    signer.sign_at(subject, body, time, &new_nonce(), &mut h);
    h
}

async fn check(
    v: &AdminVerifier,
    subject: &str,
    h: Option<&HeaderMap>,
    body: &[u8],
) -> Result<AdminKeyId, AdminRefusal> {
    v.verify_at(subject, h, body, NonceScope::Shared, NOW).await
}

fn reason(r: Result<AdminKeyId, AdminRefusal>) -> RefusalReason {
    match r {
        Err(AdminRefusal::Refused(reason)) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_request_signed_by_an_admin_key_is_accepted_once() {
    let (s, _) = signer();
    let v = verifier(&[s.public_key()]);
    let h = signed(&s, SUBJECT, BODY, NOW);
    let id = check(&v, SUBJECT, Some(&h), BODY).await.unwrap();
    assert_eq!(id.0, s.public_key());
    assert_eq!(
        reason(check(&v, SUBJECT, Some(&h), BODY).await),
        RefusalReason::Replayed
    );
    // A fresh nonce for the same request is a new request.
    let again = signed(&s, SUBJECT, BODY, NOW);
    assert!(check(&v, SUBJECT, Some(&again), BODY).await.is_ok());
}

#[tokio::test]
async fn a_replay_is_refused_by_another_verifier_sharing_the_store() {
    let (s, _) = signer();
    let store: Arc<dyn NonceStore> = Arc::new(MemoryNonces::default());
    let a = AdminVerifier::with_nonce_store(&[s.public_key()], Arc::clone(&store)).unwrap();
    let b = AdminVerifier::with_nonce_store(&[s.public_key()], store).unwrap();
    let h = signed(&s, SUBJECT, BODY, NOW);
    assert!(check(&a, SUBJECT, Some(&h), BODY).await.is_ok());
    assert_eq!(
        reason(check(&b, SUBJECT, Some(&h), BODY).await),
        RefusalReason::Replayed
    );
}

#[tokio::test]
async fn a_broadcast_nonce_is_once_per_instance() {
    let (s, _) = signer();
    let v = verifier(&[s.public_key()]);
    let h = signed(&s, "piggybank.database.lock", b"", NOW);
    let on = |instance: &'static str| {
        let (v, h) = (&v, &h);
        async move {
            v.verify_at(
                "piggybank.database.lock",
                Some(h),
                b"",
                NonceScope::Instance(instance),
                NOW,
            )
            .await
        }
    };
    assert!(on("NAAA").await.is_ok());
    assert!(on("NBBB").await.is_ok(), "another instance's copy");
    assert_eq!(reason(on("NAAA").await), RefusalReason::Replayed);
    // An instance started after the request was signed refuses it: a recorded request
    // cannot be replayed to it.
    let mut late = verifier(&[s.public_key()]);
    late.started_ms = NOW + 1;
    let replayed = late
        .verify_at(
            "piggybank.database.lock",
            Some(&h),
            b"",
            NonceScope::Instance("NCCC"),
            NOW + 2,
        )
        .await;
    assert_eq!(reason(replayed), RefusalReason::Expired);
    assert_eq!(reason(on("NBBB").await), RefusalReason::Replayed);
}

#[tokio::test]
async fn a_bad_signature_is_refused() {
    let (s, _) = signer();
    let v = verifier(&[s.public_key()]);
    let mut h = signed(&s, SUBJECT, BODY, NOW);
    let sig = h
        .get(headers::ADMIN_SIGNATURE)
        .unwrap()
        .as_str()
        .to_string();
    let mut raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&sig)
        .unwrap();
    raw[10] ^= 1;
    h.insert(
        headers::ADMIN_SIGNATURE,
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(&raw)
            .as_str(),
    );
    assert_eq!(
        reason(check(&v, SUBJECT, Some(&h), BODY).await),
        RefusalReason::BadSignature
    );
}

#[tokio::test]
async fn a_key_not_listed_is_refused_even_when_its_signature_is_good() {
    let (admin, _) = signer();
    let (other, _) = signer();
    let v = verifier(&[admin.public_key()]);
    let h = signed(&other, SUBJECT, BODY, NOW);
    assert_eq!(
        reason(check(&v, SUBJECT, Some(&h), BODY).await),
        RefusalReason::UnknownKey
    );
    // Claiming the admin's key while signing with another is a bad signature.
    let mut claimed = h.clone();
    claimed.insert(headers::ADMIN_KEY, admin.public_key());
    assert_eq!(
        reason(check(&v, SUBJECT, Some(&claimed), BODY).await),
        RefusalReason::BadSignature
    );
}

#[tokio::test]
async fn old_and_future_requests_are_refused_at_30_seconds() {
    let (s, _) = signer();
    let v = verifier(&[s.public_key()]);
    let skew = MAX_SKEW.as_millis() as u64;
    for (time, expected) in [
        (NOW - skew - 1, Some(RefusalReason::Expired)),
        (NOW - skew, None),
        (NOW + skew, None),
        (NOW + skew + 1, Some(RefusalReason::FromTheFuture)),
        (0, Some(RefusalReason::Expired)),
        (u64::MAX, Some(RefusalReason::FromTheFuture)),
    ] {
        let h = signed(&s, SUBJECT, BODY, time);
        let got = check(&v, SUBJECT, Some(&h), BODY).await;
        match expected {
            None => assert!(got.is_ok(), "time {time}: {got:?}"),
            Some(r) => assert_eq!(reason(got), r, "time {time}"),
        }
    }
}

#[tokio::test]
async fn a_changed_body_or_subject_is_refused() {
    let (s, _) = signer();
    let v = verifier(&[s.public_key()]);
    let h = signed(&s, SUBJECT, BODY, NOW);
    assert_eq!(
        reason(check(&v, SUBJECT, Some(&h), br#"{"key":"dc"}"#).await),
        RefusalReason::BadSignature
    );
    let other = "wasmcloud.secrets.v1alpha1.other.delete_secret";
    assert_eq!(
        reason(check(&v, other, Some(&h), BODY).await),
        RefusalReason::BadSignature
    );
    // Nothing was recorded by those refusals: the genuine request still goes through.
    assert!(check(&v, SUBJECT, Some(&h), BODY).await.is_ok());
}

#[tokio::test]
async fn a_changed_time_or_nonce_is_refused() {
    let (s, _) = signer();
    let v = verifier(&[s.public_key()]);
    let h = signed(&s, SUBJECT, BODY, NOW);
    let mut later = h.clone();
    later.insert(headers::ADMIN_TIME, (NOW + 1).to_string().as_str());
    assert_eq!(
        reason(check(&v, SUBJECT, Some(&later), BODY).await),
        RefusalReason::BadSignature
    );
    let mut renonced = h.clone();
    renonced.insert(headers::ADMIN_NONCE, new_nonce().as_str());
    assert_eq!(
        reason(check(&v, SUBJECT, Some(&renonced), BODY).await),
        RefusalReason::BadSignature
    );
}

#[tokio::test]
async fn missing_duplicated_or_malformed_headers_are_refused() {
    let (s, _) = signer();
    let v = verifier(&[s.public_key()]);
    assert_eq!(
        reason(check(&v, SUBJECT, None, BODY).await),
        RefusalReason::Missing
    );
    let good = signed(&s, SUBJECT, BODY, NOW);
    for name in [
        headers::ADMIN_KEY,
        headers::ADMIN_TIME,
        headers::ADMIN_NONCE,
        headers::ADMIN_SIGNATURE,
    ] {
        let mut without = HeaderMap::new();
        for (n, values) in good.iter() {
            if n.as_ref() as &[u8] != name.as_bytes() {
                for value in values {
                    without.append(n.clone(), value.as_str());
                }
            }
        }
        assert_eq!(
            reason(check(&v, SUBJECT, Some(&without), BODY).await),
            RefusalReason::Missing,
            "without {name}"
        );
        let mut twice = good.clone();
        let value = good.get(name).unwrap().as_str().to_string();
        twice.append(name, value.as_str());
        assert_eq!(
            reason(check(&v, SUBJECT, Some(&twice), BODY).await),
            RefusalReason::Missing,
            "{name} twice"
        );
    }
    let nonce = good.get(headers::ADMIN_NONCE).unwrap().as_str().to_string();
    for (name, bad) in [
        (headers::ADMIN_TIME, format!("0{NOW}")),
        (headers::ADMIN_TIME, format!("+{NOW}")),
        (headers::ADMIN_TIME, "1e12".to_string()),
        (headers::ADMIN_TIME, "99999999999999999999999".to_string()),
        (headers::ADMIN_NONCE, nonce.to_uppercase()),
        (headers::ADMIN_NONCE, nonce[..30].to_string()),
        (headers::ADMIN_NONCE, format!("{}.x", &nonce[..30])),
        (headers::ADMIN_SIGNATURE, "not base64!".to_string()),
    ] {
        let mut h = good.clone();
        h.insert(name, bad.as_str());
        assert_eq!(
            reason(check(&v, SUBJECT, Some(&h), BODY).await),
            RefusalReason::Malformed,
            "{name}: {bad}"
        );
    }
    let mut short = good.clone();
    short.insert(headers::ADMIN_SIGNATURE, "AAAA");
    assert_eq!(
        reason(check(&v, SUBJECT, Some(&short), BODY).await),
        RefusalReason::BadSignature
    );
}

#[tokio::test]
async fn every_refusal_says_the_same_thing() {
    let refusals = [
        RefusalReason::Missing,
        RefusalReason::Malformed,
        RefusalReason::UnknownKey,
        RefusalReason::BadSignature,
        RefusalReason::Expired,
        RefusalReason::FromTheFuture,
        RefusalReason::Replayed,
    ];
    for r in refusals {
        let refusal = AdminRefusal::Refused(r);
        assert_eq!(refusal.to_string(), REFUSED);
        assert_eq!(refusal.code(), 403);
    }
}

struct Down;
impl NonceStore for Down {
    fn record<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Recorded, StoreError>> {
        Box::pin(async { Err(StoreError::Upstream("timed out".into())) })
    }
}

#[tokio::test]
async fn a_nonce_store_that_does_not_answer_refuses_with_503() {
    let (s, _) = signer();
    let v = AdminVerifier::with_nonce_store(&[s.public_key()], Arc::new(Down)).unwrap();
    let h = signed(&s, SUBJECT, BODY, NOW);
    let err = check(&v, SUBJECT, Some(&h), BODY).await.unwrap_err();
    assert_eq!(err.code(), 503);
    // An invalid request is still a plain refusal: the store is never asked.
    assert_eq!(
        reason(check(&v, SUBJECT, None, BODY).await),
        RefusalReason::Missing
    );
}

#[test]
fn signed_bytes_are_length_prefixed_so_fields_cannot_shift() {
    let a = signed_bytes("a.b", "Ukey", 1, "n", None, b"x");
    let b = signed_bytes("a.", "bUkey", 1, "n", None, b"x");
    assert_ne!(a, b);
    assert!(a.starts_with(DOMAIN));
    let mut expected = DOMAIN.to_vec();
    expected.extend_from_slice(&3u32.to_be_bytes());
    expected.extend_from_slice(b"a.b");
    expected.extend_from_slice(&4u32.to_be_bytes());
    expected.extend_from_slice(b"Ukey");
    expected.extend_from_slice(&1u64.to_be_bytes());
    expected.extend_from_slice(&1u32.to_be_bytes());
    expected.extend_from_slice(b"n");
    expected.extend_from_slice(&0u32.to_be_bytes());
    expected.extend_from_slice(&Sha256::digest(b"x"));
    assert_eq!(a, expected);
}

/// Every header but the signature's own is covered, in one order whatever the order
/// they were added in.
#[test]
fn signed_bytes_cover_every_other_header() {
    let bytes = |pairs: &[(&str, &str)]| {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, *value);
        }
        signed_bytes("s", "Ukey", 1, "n", Some(&h), b"")
    };
    let base = bytes(&[]);
    let xkey = bytes(&[("Piggybank-Requester-Xkey", "XA")]);
    assert_ne!(base, xkey);
    assert_ne!(xkey, bytes(&[("Piggybank-Requester-Xkey", "XB")]));
    assert_eq!(
        bytes(&[("b", "2"), ("a", "1")]),
        bytes(&[("a", "1"), ("b", "2")])
    );
    assert_eq!(base, bytes(&[(headers::ADMIN_SIGNATURE, "sig")]));
    assert_ne!(base, bytes(&[("piggybank-admin-signature", "sig")]));
}

#[test]
fn admin_keys_are_user_public_keys() {
    let user = KeyPair::new_user().public_key();
    assert_eq!(
        parse_admin_keys(&[format!(" {user} "), String::new(), user.clone()]).unwrap(),
        vec![user.clone()]
    );
    assert!(parse_admin_keys::<&str>(&[]).unwrap().is_empty());
    for bad in [
        KeyPair::new_account().public_key(),
        KeyPair::new_server().public_key(),
        "UNOTAKEY".to_string(),
    ] {
        let err = parse_admin_keys(&[bad.as_str()]).unwrap_err();
        assert!(matches!(err, AdminKeyError::Invalid { .. }), "{bad}: {err}");
    }
    let seed = AdminSigner::generate_seed();
    let err = parse_admin_keys(&[seed.as_str()]).unwrap_err();
    assert_eq!(err, AdminKeyError::SeedGiven);
    assert!(
        !err.to_string().contains(seed.as_str()),
        "a seed is never echoed"
    );
}

#[test]
fn a_signer_needs_a_user_seed_and_never_shows_it() {
    let (s, seed) = signer();
    assert!(s.public_key().starts_with('U'));
    assert!(!format!("{s:?}").contains(seed.as_str()));
    let account_seed = KeyPair::new_account().seed().unwrap();
    assert_eq!(
        AdminSigner::from_seed(&account_seed).unwrap_err(),
        AdminKeyError::BadSeed
    );
    assert_eq!(
        AdminSigner::from_seed("SUnot").unwrap_err(),
        AdminKeyError::BadSeed
    );
    let h = s.sign(SUBJECT, BODY);
    assert!(is_nonce(h.get(headers::ADMIN_NONCE).unwrap().as_str()));
    assert_eq!(h.get(headers::ADMIN_KEY).unwrap().as_str(), s.public_key());
}
