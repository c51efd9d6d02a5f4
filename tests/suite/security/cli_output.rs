//! The CLI never prints what an answer or a request says verbatim: control characters,
//! terminal escapes, bidi overrides and zero-width characters from any answer (`status`,
//! `unlock`) or any audited request (`audit`) are shown escaped, so no one on the bus can
//! rewrite what the operator sees.

use async_nats::HeaderMap;
use futures::StreamExt as _;
use nkeys::XKey;
use serde_json::json;

use crate::common::sealed::*;

/// Attack: answer the status request of `piggybank unlock -t` as an impostor whose `instance_id`
/// carries terminal control sequences (here: carriage return, "erase line", cursor up, and a fake
/// "Unsealed: the store is unlocked."). The CLI names every unproven answer on stderr with its
/// `instance_id` verbatim (`piggybank status` prints every field verbatim too). On a terminal this
/// rewrites what the operator sees, e.g. hides the warning that an impostor answered. Impact:
/// operator deception only (the exit code still says 1, and nothing is sent to the impostor).
///
/// Safe: the CLI shows text from answers through `cli::printable` (status's fields, names of
/// instances), and every error through it, which escapes control characters.
#[tokio::test(flavor = "multi_thread")]
async fn the_cli_never_prints_control_characters_from_an_answer() {
    let PinnedStore {
        nats,
        seed,
        transit,
        backend: _backend,
        key,
        ..
    } = pinned_store().await;

    let attacker = nats.client().await;
    let mut statuses = attacker.subscribe(format!("{DB}.status")).await.unwrap();
    attacker.flush().await.unwrap();
    let impostor = attacker.clone();
    let answering = tokio::spawn(async move {
        while let Some(msg) = statuses.next().await {
            let Some(reply) = msg.reply else { continue };
            let fake = json!({
                "mode": "sealed", "version": "0.1.0",
                "instance_id": "\r\u{1b}[2K\u{1b}[1AUnsealed: the store is unlocked.\u{1b}[8m",
                "initialized": true, "sealed": false, "progress": 0, "threshold": null,
                "shares": null, "key_version": 1, "key_id": null, "server_xkey": null,
                "secrets": 0, "mapped_entities": 0, "reencryption": null,
                "unseal_xkey": XKey::new().public_key(),
            });
            let mut h = HeaderMap::new();
            h.insert("Status", "200");
            let _ = impostor
                .publish_with_headers(reply, h, fake.to_string().into())
                .await;
            let _ = impostor.flush().await;
        }
    });
    let env = [
        ("PIGGYBANK_DATABASE_KEY", key.as_str()),
        ("PIGGYBANK_ADMIN_SEED", seed.as_str()),
    ];
    let (_, stdout, stderr) = run_cli(&nats, &env, &["unlock", "-t", &transit]).await;
    let (_, status_out, status_err) = run_cli(&nats, &[], &["status"]).await;
    answering.abort();
    let printed = [stdout, stderr, status_out, status_err];
    let controls: Vec<&String> = printed
        .iter()
        .filter(|s| s.contains('\u{1b}') || s.contains('\r'))
        .collect();
    assert!(
        controls.is_empty(),
        "the CLI printed an answer's control characters verbatim: {controls:#?}"
    );
    // Positive control: the impostor's answer was shown, escaped.
    assert!(
        printed.iter().any(|s| s.contains("\\u{1b}[2K")),
        "{printed:#?}"
    );
}

/// Attack: put a record whose secret holds `ESC]0;...BEL ESC[2J ESC[1A` in the audit trail (any
/// account user who may publish on the audit subjects can; piggybank's own records carry no
/// more of a request's text than a valid name). `piggybank audit` printing it verbatim would set
/// the operator's terminal title, clear the screen and overwrite lines (a fake "no denied
/// gets" line can hide the records before it). Impact: operator deception while reviewing the
/// trail.
///
/// Safe: `audit`, `list` and `mappings` print through `cli::printable`.
#[tokio::test(flavor = "multi_thread")]
async fn the_audit_listing_never_prints_control_characters_from_a_record() {
    let secret = "billing/\u{1b}]0;pwned\u{7}\u{1b}[2J\u{1b}[1AQUIET";
    let lines = audit_lines_with_a_record_naming(secret).await;
    let controls: Vec<&String> = lines
        .iter()
        .filter(|l| l.chars().any(|c| c.is_control()))
        .collect();
    assert!(
        controls.is_empty(),
        "piggybank audit printed control characters: {controls:?}"
    );
}

/// Characters that change how the text around them is shown (bidi overrides and isolates,
/// marks, zero-width characters): Unicode category Cf, not Cc, so `char::is_control` is false.
fn is_deceptive(c: char) -> bool {
    matches!(
        c,
        '\u{061c}'
            | '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{2069}'
            | '\u{feff}'
    )
}

/// Attack: a record in the trail whose secret holds U+202E RIGHT-TO-LEFT OVERRIDE (put there as
/// above). Were `piggybank audit` to print it through an escape of `char::is_control` (C0, DEL,
/// C1) only, the override would go to the terminal as is, and a terminal with bidi support (VTE,
/// Konsole, mlterm) would show the rest of the line reversed: the record of a denied `get` of
/// `billing/db-prod` could read as anything the attacker spelled backwards, and the fields after
/// it (outcome, entity) would be reordered. The same goes for `list`, `mappings`, `status`
/// instance names and the keys an unpinned `init` shows. Impact: operator deception while
/// reading the trail.
///
/// Safe: `printable` escapes Unicode's format characters and the separators too.
#[tokio::test(flavor = "multi_thread")]
async fn the_audit_listing_never_prints_bidi_overrides_from_a_record() {
    let secret = "billing/QUIET\u{202e}dorp-bd\u{200b}";
    let lines = audit_lines_with_a_record_naming(secret).await;
    let deceptive: Vec<&String> = lines
        .iter()
        .filter(|l| l.chars().any(is_deceptive))
        .collect();
    assert!(
        deceptive.is_empty(),
        "piggybank audit printed bidi or zero-width characters: {deceptive:?}"
    );
}
