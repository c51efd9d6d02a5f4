//! A sealed value cannot be moved to another name: every value piggybank writes is bound to
//! its secret's name (`store::envelope`), so an attacker who may write the secrets bucket
//! (a KV put is a publish on `$KV.<bucket>.<key>`) and copies one secret's sealed value over
//! another's gets a refusal, never the value, through the name they are mapped to.

use std::time::{Duration, Instant};

use crate::common::*;

const SECRETS: &str = "WASMCLOUD_SECRETS";

/// Get `name` as `jwt` until the answer is no longer `before` (the backend's mirror has
/// seen the write), or 5 s pass; returns the last answer.
async fn answer_after_change(
    host: &wasmcloud_secrets_client::Client,
    name: &str,
    jwt: &str,
    before: &str,
) -> Result<Option<String>, String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = host_get(host, request(name, jwt))
            .await
            .map(|s| s.string_secret);
        if answer.as_ref().ok().and_then(|s| s.as_deref()) != Some(before)
            || Instant::now() > deadline
        {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Attack: an account user with write access to the secrets bucket copies `prod/db`'s
/// stored (sealed) value over `public/motd`, which their component is mapped to. Safe: the
/// copy is refused as sealed for another name; `prod/db` itself still opens for its own
/// entity (the positive control: the value is intact, only its place is wrong).
#[tokio::test]
async fn a_value_copied_to_another_name_in_the_bucket_is_refused() {
    let Deployed {
        nats,
        keys: _,
        backend: _backend,
        admin,
    } = deployed().await;
    admin
        .put_secret("prod/db", text("PROD-DB-PASSWORD"), None, None)
        .await
        .unwrap();
    admin
        .put_secret("public/motd", text("hello"), None, None)
        .await
        .unwrap();
    let issuer = Issuer::new();
    let (attacker_jwt, attacker) = issuer.component();
    let (owner_jwt, owner) = issuer.component();
    admin
        .add_mapping(&attacker, &names(&["public/motd"]))
        .await
        .unwrap();
    admin
        .add_mapping(&owner, &names(&["prod/db"]))
        .await
        .unwrap();
    let host = host_client(&nats).await;
    let motd = host_get(&host, request("public/motd", &attacker_jwt)).await;
    assert_eq!(motd.unwrap().string_secret.as_deref(), Some("hello"));

    // The attacker's own connection: read one key's stored bytes, write them to another.
    let js = async_nats::jetstream::new(nats.client().await);
    let bucket = js.get_key_value(SECRETS).await.unwrap();
    let sealed = bucket.get("prod/db").await.unwrap().unwrap();
    bucket.put("public/motd", sealed).await.unwrap();

    let answer = answer_after_change(&host, "public/motd", &attacker_jwt, "hello").await;
    let refusal = match answer {
        Ok(served) => panic!("the moved value was served: {}", served.is_some()),
        Err(refusal) => refusal,
    };
    assert!(
        refusal.contains("sealed for another secret's name"),
        "{refusal}"
    );
    assert!(!refusal.contains("PROD-DB"), "{refusal}");

    // The same bytes under their own name open, for the entity mapped to them.
    let own = host_get(&host, request("prod/db", &owner_jwt))
        .await
        .unwrap();
    assert_eq!(own.string_secret.as_deref(), Some("PROD-DB-PASSWORD"));
}
