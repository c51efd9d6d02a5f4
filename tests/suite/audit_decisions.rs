//! The audit trail records the core's own decision, whichever front door answered: read
//! back through the real binary (`piggybank run`, then `piggybank audit --json`), with the
//! real host client making the gets.
//!
//! Two reasons once drifted because a door re-derived them from its wire error: a get whose
//! JWT issuer is not trusted was recorded as `not_mapped`, and a get while the store is
//! sealed as `error`/`other` without its secret.

use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::Value;

/// The records `piggybank audit --json` prints, polled until `wanted` finds one (10 s).
fn audit_until(nats: &NatsServer, wanted: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, out, err) = cli(nats, &["audit", "--json"], None, &[]);
        assert!(ok, "piggybank audit failed: {err}");
        let records: Vec<Value> = String::from_utf8_lossy(&out)
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON record per line"))
            .collect();
        if records.iter().any(&wanted) || Instant::now() > deadline {
            return records;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn get_record<'a>(records: &'a [Value], entity: &str) -> Option<&'a Value> {
    records
        .iter()
        .find(|r| r["operation"] == "get" && r["entity"] == entity)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_from_an_untrusted_issuer_is_audited_as_untrusted_issuer() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let trusted = Issuer::new();
    let stranger = Issuer::new();
    let _run = spawn_run(
        &nats,
        &keys,
        &["--trusted-issuers", trusted.public_key().as_str()],
    );
    wait_for_backend(&nats, "wasmcloud.secrets.v1alpha1.nats-kv").await;
    let admin = admin(nats.client().await);
    admin.put_secret("db", text("v"), None, None).await.unwrap();
    let (good_jwt, good) = trusted.component();
    let (unmapped_jwt, unmapped) = trusted.component();
    let (forged_jwt, forged) = stranger.component();
    admin.add_mapping(&good, &names(&["db"])).await.unwrap();
    admin.add_mapping(&forged, &names(&["db"])).await.unwrap();

    let host = host_client(&nats).await;
    // Positive control: the trusted, mapped component reads it.
    host_get(&host, request("db", &good_jwt)).await.unwrap();
    // A trusted but unmapped component, and a mapped one signed by an untrusted issuer:
    // the same answer on the wire (no oracle), different reasons in the trail.
    let unmapped_err = host_refusal(&host, request("db", &unmapped_jwt)).await;
    let forged_err = host_refusal(&host, request("db", &forged_jwt)).await;
    assert_eq!(unmapped_err, forged_err);

    // The two trails are two streams: a refusal can be stored before an earlier decision.
    audit_until(&nats, |r| {
        r["operation"] == "get" && r["reason"] == "untrusted_issuer"
    });
    let records = audit_until(&nats, |r| r["operation"] == "get" && r["entity"] == good);
    let allowed = get_record(&records, &good)
        .unwrap_or_else(|| panic!("no record of the allowed get in {records:#?}"));
    assert_eq!(allowed["outcome"], "allowed", "{allowed}");
    let not_mapped = get_record(&records, &unmapped).expect("the unmapped get's record");
    assert_eq!(
        (&not_mapped["outcome"], &not_mapped["reason"]),
        (&Value::from("denied"), &Value::from("not_mapped")),
        "{not_mapped}"
    );
    // The untrusted issuer's JWT is refused before its subject is believed: the record
    // names the secret, and the reason an operator hunting forged JWTs filters on.
    let forged_record = records
        .iter()
        .find(|r| r["operation"] == "get" && r["reason"] == "untrusted_issuer")
        .unwrap_or_else(|| panic!("no untrusted_issuer record in {records:#?}"));
    assert_eq!(forged_record["outcome"], "denied", "{forged_record}");
    assert_eq!(forged_record["secret"], "db", "{forged_record}");
    assert!(
        get_record(&records, &forged).is_none_or(|r| r["reason"] == "untrusted_issuer"),
        "{records:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_while_sealed_is_audited_as_denied_sealed_with_its_secret() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    // Sealed mode (no data key) with a transit key, so hosts can ask.
    let _run = spawn_sealed_run(&nats, &["--transit-xkey-seed", keys.transit.as_str()]);
    wait_for_backend(&nats, "wasmcloud.secrets.v1alpha1.nats-kv").await;
    let host = host_client(&nats).await;
    let (jwt, component) = Issuer::new().component();
    let refused = host_refusal(&host, request("shop/db-password", &jwt)).await;
    // The wire answer is unchanged: the host reads that the store is sealed.
    assert!(refused.contains("sealed"), "{refused}");

    let records = audit_until(&nats, |r| r["operation"] == "get");
    let get = records
        .iter()
        .find(|r| r["operation"] == "get")
        .unwrap_or_else(|| panic!("no get record in {records:#?}"));
    assert_eq!(get["outcome"], "denied", "{get}");
    assert_eq!(get["reason"], "sealed", "{get}");
    assert_eq!(get["secret"], "shop/db-password", "{get}");
    // The JWT was never checked (the seal comes first): no entity is claimed.
    assert!(get.get("entity").is_none(), "{get}");
    let _ = component;

    // `piggybank audit --outcome denied` finds it.
    let (ok, out, err) = cli(
        &nats,
        &["audit", "--json", "--outcome", "denied"],
        None,
        &[],
    );
    assert!(ok, "{err}");
    assert!(
        String::from_utf8_lossy(&out).contains("shop/db-password"),
        "{}",
        String::from_utf8_lossy(&out)
    );
}
