//! The layout's rules, on the lists it makes (a real server checks them in
//! `tests/suite/security/nats_layout.rs`).

use super::*;

fn deployment(apps: &[&str]) -> Deployment {
    let apps: Vec<String> = apps.iter().map(|a| a.to_string()).collect();
    Deployment::new(
        config::DEFAULT_SUBJECT_BASE,
        config::DEFAULT_API_VERSION,
        config::DEFAULT_BACKEND_NAME,
        config::DEFAULT_SECRETS_BUCKET,
        crate::piggybank_api::DEFAULT_PREFIX,
        &apps,
    )
    .unwrap()
}

#[test]
fn applications_must_be_single_unreserved_tokens_given_once() {
    let make = |apps: &[&str]| {
        let apps: Vec<String> = apps.iter().map(|a| a.to_string()).collect();
        Deployment::new("a", "v1", "n", "B", "piggybank", &apps)
    };
    assert!(make(&["shop", "billing-2"]).is_ok());
    assert!(matches!(
        make(&["a.b"]),
        Err(LayoutError::BadApplication(_))
    ));
    assert!(matches!(make(&["*"]), Err(LayoutError::BadApplication(_))));
    assert!(matches!(
        make(&["database"]),
        Err(LayoutError::ReservedApplication(_))
    ));
    assert!(matches!(
        make(&["x", "x"]),
        Err(LayoutError::DuplicateApplication(_))
    ));
}

#[test]
fn only_the_backend_may_change_streams_or_write_buckets() {
    let d = deployment(&["shop"]);
    for role in [Role::Host, Role::Application("shop".into())] {
        let p = d.permissions(&role);
        for allowed in &p.publish_allow {
            assert!(
                !allowed.starts_with("$JS") && !allowed.starts_with("$KV"),
                "{role:?} may publish {allowed}"
            );
        }
        for verb in ["CREATE", "UPDATE", "DELETE", "PURGE"] {
            assert!(p.publish_deny.contains(&format!("$JS.API.STREAM.{verb}.>")));
        }
    }
    let admin = d.permissions(&Role::Admin);
    for allowed in &admin.publish_allow {
        assert!(!allowed.starts_with("$KV"), "the admin may {allowed}");
        for verb in ["CREATE", "PURGE", "UPDATE", "DELETE", "*"] {
            assert!(
                !allowed.contains(&format!("STREAM.{verb}.")),
                "the admin may {allowed}"
            );
        }
    }
    assert!(d
        .permissions(&Role::Backend)
        .publish_allow
        .contains(&"$KV.WASMCLOUD_SECRETS.>".to_string()));
}

#[test]
fn the_backend_trusts_the_admin_and_application_inboxes() {
    let d = deployment(&["shop"]);
    assert_eq!(
        d.reply_prefixes(),
        vec!["_PIGGYBANK_ADMIN_INBOX.nats-kv", "_INBOX_shop"]
    );
    // The reply policy accepts them (no overlap with what piggybank serves).
    let served = [d.protocol(), d.piggybank_prefix.clone()];
    crate::reply_policy::ReplyPolicy::new(&d.reply_prefixes(), &served).unwrap();
}

#[test]
fn the_nsc_script_gives_each_user_the_same_lists_in_single_quotes() {
    let d = deployment(&["shop"]);
    let script = d.nsc_script();
    for role in d.roles() {
        let p = d.permissions(&role);
        assert!(script.contains(&format!("--name piggybank-nats-kv-{}", role.file_stem())));
        assert!(script.contains(&format!("--allow-pub '{}'", p.publish_allow.join(","))));
    }
    // `$KV...` stays literal in the shell: every list is single-quoted, and none holds one.
    assert!(!d
        .roles()
        .iter()
        .flat_map(|r| d.permissions(r).publish_allow)
        .any(|s| s.contains('\'') || s.contains(',')));
    assert_eq!(script.matches("--allow-pub-response").count(), 1);
}

fn inbox(s: &str) -> AppInbox {
    s.parse().unwrap()
}

#[test]
fn an_inbox_bound_to_an_application_is_its_own_to_receive_on() {
    let d = deployment(&["foo", "bar"])
        .with_app_inboxes(vec![inbox("foo=foo.secrets")])
        .unwrap();
    let foo = d.permissions(&Role::Application("foo".into()));
    assert_eq!(foo.subscribe_allow, ["_INBOX_foo.>", "foo.secrets.>"]);
    let bar = d.permissions(&Role::Application("bar".into()));
    assert_eq!(bar.subscribe_allow, ["_INBOX_bar.>"]);
}

#[test]
fn an_inbox_is_refused_unless_it_is_one_applications_alone() {
    let bind = |apps: &[&str], inboxes: &[&str]| {
        deployment(apps).with_app_inboxes(inboxes.iter().map(|i| inbox(i)).collect())
    };
    assert!(matches!(
        bind(&["foo"], &["bar=bar.secrets"]),
        Err(LayoutError::InboxOfUnknownApplication(_))
    ));
    // Trees the layout keeps from applications: the admin's inbox, the audit trail,
    // the buckets, the backend's own inbox, what piggybank serves.
    for kept in [
        "foo=_PIGGYBANK_ADMIN_INBOX.nats-kv",
        "foo=_PIGGYBANK_ADMIN_INBOX",
        "foo=_PIGGYBANK_INBOX.x",
        "foo=piggybank.foo",
        "foo=wasmcloud.secrets",
    ] {
        assert!(
            matches!(bind(&["foo"], &[kept]), Err(LayoutError::BadInbox { .. })),
            "{kept}"
        );
    }
    // Another application's inbox, or the hosts' shared one.
    for overlap in [
        &["foo=_INBOX_bar"][..],
        &["foo=_INBOX.foo"],
        &["foo=a.b", "bar=a"],
    ] {
        assert!(
            matches!(
                bind(&["foo", "bar"], overlap),
                Err(LayoutError::InboxesRefused(_) | LayoutError::BadInbox { .. })
            ),
            "{overlap:?}"
        );
    }
    assert!(bind(&["foo", "bar"], &["foo=a.foo", "bar=a.bar"]).is_ok());
}

#[test]
fn the_authorization_quotes_every_subject() {
    let d = deployment(&[]);
    let text = d.authorization(&[(Role::Host, "UABC".into())]);
    assert!(text.contains(r#"allow: ["wasmcloud.secrets.v1alpha1.nats-kv.server_xkey""#));
    assert!(text.contains(r#""$KV.WASMCLOUD_SECRETS.>""#), "{text}");
}
