//! The database commands, `init`, `unlock`, `lock`, `status` and `rotate`: requests on
//! `{prefix}.database.{name}.<op>` (served by `database`), printed as text
//! or, with `-o json` (`--json`), as one JSON document.
//!
//! `status` reaches every instance (no queue group), so it gathers every reply that arrives
//! until none has come for `QUIET`, and exits as `vault status` does: 0 unsealed, 2 if any
//! instance is sealed, 1 on error. `lock`, `rotate` and each `unlock` read the first reply;
//! `init` reads until an answer proves itself (below).
//!
//! Key material never crosses the bus in clear (`crate::seal::transfer`): `init` sends a
//! one-time xkey and opens the key (or shares) sealed to it, from the backend's transit key
//! when pinned with `-t` (anyone can seal something to the one-time key and answer first);
//! `unlock` asks `status` which instances there are, with a one-time xkey, and sends the
//! key or share, sealed to the unseal xkey it announced, to each instance that proved it
//! holds the backend's transit key (pinned with `-t`): anyone on the account can answer
//! `status`.
//!
//! `init`, `unlock`, `lock` and `rotate` are signed with the admin seed when one is given
//! (`PIGGYBANK_ADMIN_SEED` or `--admin-seed-file`): a backend run with `--admin-keys`
//! refuses every one of them without it.
//!
//! A key or share is read from the env or stdin, never from argv, and printed only by
//! `init`, once. On stdin, a key and a share are told apart by decoding them (32 bytes or
//! 33), not by their length as text: both are 44 base64 characters.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use futures::StreamExt as _;
use zeroize::Zeroizing;

use async_nats::HeaderMap;
use nkeys::XKey;

use super::{Conn, Output};
use crate::config::{self, env};
use crate::seal::key_record::{self as vault, DatabaseKey as MasterKey};
use crate::seal::transfer::{InstanceClaim, Sealed, SealedInitialize, SealedUnlock};
use crate::seal::StatusReport;

/// How long `status` waits for the first reply.
const FIRST_REPLY: Duration = Duration::from_secs(5);
/// `status` stops gathering once no reply has come for this long.
const QUIET: Duration = Duration::from_millis(300);
/// After a "no responders" (which anyone can forge into an inbox), how long a real reply may
/// still come before it is believed.
const NO_RESPONDERS_GRACE: Duration = Duration::from_secs(1);
/// ... or once this many instances have answered.
const MAX_REPLIES: usize = 1024;
/// How long `init` waits for its answer (the request timeout of the other commands).
const INIT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most distinct keys `init --unverified-instances` shows.
const MAX_INIT_ANSWERS: usize = 16;

#[derive(Args)]
pub struct DatabaseArgs {
    /// Prefix of the database operations (the backend's --piggybank-prefix)
    #[arg(long, env = env::PIGGYBANK_PREFIX, default_value = crate::piggybank_api::DEFAULT_PREFIX)]
    pub piggybank_prefix: String,
    /// The name of the backend (its -n/--name)
    #[arg(short = 'n', long = "name", value_name = "BACKEND_NAME", default_value = config::DEFAULT_BACKEND_NAME)]
    pub backend_name: String,
    #[command(flatten)]
    pub output: Output,
    #[command(flatten)]
    pub admin: super::admin_seed::AdminSeed,
}

impl DatabaseArgs {
    fn subject(&self, op: &str) -> String {
        crate::database::subject(&self.piggybank_prefix, &self.backend_name, op)
    }
}

#[derive(Args)]
pub struct UnlockArgs {
    #[command(flatten)]
    pub db: DatabaseArgs,
    #[command(flatten)]
    pub pin: Pin,
}

/// Which answers the CLI believes: anyone who may publish on the account can answer
/// `initialize` and `status`.
#[derive(Args)]
pub struct Pin {
    #[command(flatten)]
    pub transit: super::transit::TransitKey,
    /// Believe answers that prove nothing: init shows every key it is given, unlock sends
    /// the key or share to every instance that answers `status`. Anyone who may publish on
    /// the account can answer so; only for stores run without TRANSIT_XKEY_SEED, where no
    /// one else publishes
    #[arg(long)]
    pub unverified_instances: bool,
}

impl Pin {
    /// The pinned transit public key, or `None` with `--unverified-instances` (warned);
    /// without either, an error that explains why (`why_pin`) and what to do.
    fn resolve(&self, why_pin: &str) -> anyhow::Result<Option<String>> {
        match (self.transit.public_key()?, self.unverified_instances) {
            (_, true) => {
                eprintln!(
                    "warning: --unverified-instances: answers are believed without proof, \
                     including an impostor's: anyone on the account can answer"
                );
                Ok(None)
            }
            (Some(key), false) => Ok(Some(key)),
            (None, false) => bail!(
                "{why_pin} Give the backend's transit key with -t/--transit-xkey (its public \
                 key, server_xkey in status, checked out of band; or TRANSIT_XKEY_SEED), or \
                 pass --unverified-instances"
            ),
        }
    }
}

mod hint;
mod init;
mod status;
mod unlock;

pub(crate) use init::{init, InitArgs};
/// `piggybank audit --verify` asks every instance for its audit key the same way.
pub(super) use status::gather;
pub use status::status;
use status::*;
pub use unlock::unlock;

/// `lock`: every instance forgets its keys.
pub async fn lock(args: DatabaseArgs, conn: &Conn) -> anyhow::Result<()> {
    let reply = request(&args, conn, "lock", Vec::new()).await?;
    if args.output.json() {
        println!("{reply}");
    } else {
        println!("Sealed: every instance that received the lock dropped its keys.");
    }
    Ok(())
}

/// `rotate`: a new data key, current a moment later; values are re-sealed in the background.
pub async fn rotate(args: DatabaseArgs, conn: &Conn) -> anyhow::Result<()> {
    let reply = request(&args, conn, "rotate", Vec::new()).await?;
    if args.output.json() {
        println!("{reply:#}");
    } else {
        println!(
            "{}",
            aligned(&[
                ("New data key", text(&reply["key_id"])),
                ("Key version", text(&reply["key_version"])),
                ("Current from", rfc3339_ms(&reply["active_from_ms"])),
            ])
        );
        println!("Every value is re-sealed with it in the background: see `piggybank status`.");
    }
    Ok(())
}

/// A time in unix milliseconds as RFC 3339 (UTC); the number as it came when it is none.
fn rfc3339_ms(value: &serde_json::Value) -> String {
    let time = value
        .as_u64()
        .and_then(|ms| i128::from(ms).checked_mul(1_000_000))
        .and_then(|ns| time::OffsetDateTime::from_unix_timestamp_nanos(ns).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        });
    time.unwrap_or_else(|| value.to_string())
}

/// The text of `no responders`: nothing subscribes the subject.
fn nobody_answers(subject: &str) -> String {
    format!(
        "no piggybank backend answers on {subject} (is one running on this NATS server? if it \
         runs with --piggybank-prefix or -n/--name, pass the same prefix and name here)"
    )
}

/// One database operation, answered by one instance: its reply's JSON on 200, its error
/// otherwise.
async fn request(
    args: &DatabaseArgs,
    conn: &Conn,
    op: &str,
    body: Vec<u8>,
) -> anyhow::Result<serde_json::Value> {
    let signer = args.admin.signer()?;
    let nats = conn.connect("piggybank cli").await?;
    send(&nats, signer.as_ref(), &args.subject(op), None, body).await
}

/// Send one request on `subject` (signed when `signer` is given) and read the first reply:
/// its JSON on 200, its error otherwise.
async fn send(
    nats: &async_nats::Client,
    signer: Option<&crate::admin_auth::AdminSigner>,
    subject: &str,
    headers: Option<HeaderMap>,
    body: Vec<u8>,
) -> anyhow::Result<serde_json::Value> {
    let op = subject.rsplit('.').next().unwrap_or_default();
    let subject = subject.to_string();
    let sent = crate::client::signed_request(nats, signer, &subject, headers, body).await;
    let reply = sent.map_err(|e| match e.kind() {
        async_nats::RequestErrorKind::NoResponders => anyhow!(nobody_answers(&subject)),
        async_nats::RequestErrorKind::TimedOut => anyhow!(
            "no answer on {subject} within 10 s (the request timeout): is a backend of this \
             name (-n/--name) running with this prefix?"
        ),
        _ => anyhow!(e).context(format!("request on {subject} failed")),
    })?;
    let (status, value) = decode(&reply);
    if status != "200" {
        bail!(refused(op, &status, &value));
    }
    Ok(value)
}

/// What an error answer says, with a hint when it is the admin signature's refusal.
fn refused(op: &str, status: &str, value: &serde_json::Value) -> String {
    let hint = if status == "403" && value["error"] == crate::admin_auth::REFUSED {
        format!(
            " (the backend requires a signature by one of its --admin-keys: set {} or \
             --admin-seed-file to that key's seed)",
            env::PIGGYBANK_ADMIN_SEED
        )
    } else {
        String::new()
    };
    format!(
        "{op} refused ({status}): {}{hint}",
        value["error"].as_str().unwrap_or("no reason given")
    )
}

/// A reply's `Status` header and JSON body (`null` if the body is not JSON).
fn decode(reply: &async_nats::Message) -> (String, serde_json::Value) {
    let status = reply
        .headers
        .as_ref()
        .and_then(|h| h.get(crate::piggybank_api::headers::STATUS))
        .map(|s| s.as_str().to_string())
        .unwrap_or_default();
    let value = serde_json::from_slice(&reply.payload).unwrap_or_default();
    (status, value)
}

/// A JSON value as plain text: strings without their quotes.
fn text(value: &serde_json::Value) -> String {
    match value.as_str() {
        Some(s) => s.to_string(),
        None => value.to_string(),
    }
}

/// `key: value` lines, values aligned, indented by two spaces.
fn aligned(lines: &[(&str, String)]) -> String {
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    lines
        .iter()
        .map(|(k, v)| format!("  {:<width$} {}", format!("{k}:"), printable(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Text from an answer, fit for a terminal: control characters (a carriage return, an
/// escape sequence) and invisible format characters (bidi overrides, zero-width ones, line
/// and paragraph separators) are shown escaped, so an answer cannot rewrite or reorder
/// what the operator sees.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(unprintable) {
        return text.into();
    }
    text.chars()
        .map(|c| match unprintable(c) {
            true => c.escape_unicode().to_string(),
            false => c.to_string(),
        })
        .collect::<String>()
        .into()
}

/// Control characters, and Unicode's format characters (general category Cf) with the line
/// and paragraph separators.
fn unprintable(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{0600}'..='\u{0605}'
                | '\u{061C}'
                | '\u{06DD}'
                | '\u{070F}'
                | '\u{0890}'..='\u{0891}'
                | '\u{08E2}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{110BD}'
                | '\u{110CD}'
                | '\u{13430}'..='\u{1343F}'
                | '\u{1BCA0}'..='\u{1BCA3}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0001}'
                | '\u{E0020}'..='\u{E007F}'
        )
}

#[cfg(test)]
mod tests {
    use super::unlock::UnlockField;
    use super::*;

    #[test]
    fn rotate_prints_its_time_as_rfc3339() {
        let ms = serde_json::json!(1_796_477_690_209u64);
        assert_eq!(rfc3339_ms(&ms), "2026-12-05T13:34:50.209Z");
        assert_eq!(rfc3339_ms(&serde_json::json!("x")), "\"x\"");
    }

    #[test]
    fn printable_escapes_controls_and_invisible_format_characters() {
        assert!(matches!(
            printable("plain text: ok"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(printable("a\u{1b}[2Kb\r"), "a\\u{1b}[2Kb\\u{d}");
        assert_eq!(printable("x\u{202e}y\u{200b}z"), "x\\u{202e}y\\u{200b}z");
        assert_eq!(printable("\u{2028}\u{feff}"), "\\u{2028}\\u{feff}");
        assert_eq!(printable("café 名前"), "café 名前");
    }
    use crate::seal::key_record::ShareSpec;
    use crate::seal::Mode;

    #[test]
    fn a_key_and_a_share_are_told_apart_by_decoding_though_both_are_44_characters() {
        let spec = ShareSpec {
            shares: 3,
            threshold: 2,
        };
        for _ in 0..20 {
            let (_, master) = vault::initialize(None, Some(spec), 1).expect("initialize");
            let key = master.to_base64();
            assert_eq!(key.len(), 44);
            assert_eq!(UnlockField::of(&key).unwrap(), UnlockField::DatabaseKey);
            for share in master.split(spec) {
                assert_eq!(share.len(), 44);
                assert_eq!(UnlockField::of(&share).unwrap(), UnlockField::Share);
            }
        }
        for bad in ["", "AAAA", "not base64!", &"A".repeat(60)] {
            let err = UnlockField::of(bad).unwrap_err().to_string();
            assert!(err.contains("neither"), "{err}");
            assert!(
                bad.len() < 5 || !err.contains(bad),
                "the error repeats the input"
            );
        }
    }

    fn report(id: &str, mode: Mode, sealed: bool) -> (StatusReport, serde_json::Value) {
        let r = StatusReport {
            mode,
            version: Some("0.1.0".into()),
            instance_id: id.into(),
            initialized: true,
            sealed,
            progress: 0,
            threshold: None,
            shares: None,
            key_version: None,
            key_id: None,
            server_xkey: None,
            secrets: Some(12),
            mapped_entities: Some(3),
            reencryption: None,
            admin: Some(crate::admin_auth::AdminMode::Signed),
            unseal_xkey: None,
            unseal_proof: None,
            audit_dropped: None,
            shed: None,
            audit: None,
            loaded: Some(true),
            mirror_pending: Some(0),
        };
        let v = serde_json::to_value(&r).unwrap();
        (r, v)
    }

    #[test]
    fn status_exits_as_vault_does_and_says_why() {
        let subject = "piggybank.database.status";
        let mut answers = Answers::default();
        answers.reports.push(report("AAA", Mode::Keyed, false));
        assert_eq!(answers.exit_code(), 0);
        let hints = Hints {
            init: "piggybank init -n x".into(),
            unlock: "piggybank unlock -n x".into(),
        };
        let text = answers.to_text(subject, &hints);
        assert!(text.contains("Instance AAA\n"), "{text}");
        assert!(text.contains("  Mode:            keyed\n"), "{text}");
        assert!(text.contains("  Mapped entities: 3\n"), "{text}");
        assert!(text.contains("  Mirror:          loaded\n"), "{text}");
        assert!(text.contains("  Admin:           signed\n"), "{text}");
        assert!(text.ends_with("1 instance answered on piggybank.database.status: unsealed\n"));

        answers.reports.push(report("BBB", Mode::Sealed, true));
        assert_eq!(answers.exit_code(), 2);
        let hints = Hints {
            init: "piggybank init -n x".into(),
            unlock: "piggybank unlock -n x".into(),
        };
        let text = answers.to_text(subject, &hints);
        assert!(text.contains("2 instances answered") && text.contains("1 of them sealed"));
        assert!(
            text.contains("unlock it with `piggybank unlock -n x`"),
            "{text}"
        );
        assert_eq!(answers.to_json(subject)["sealed"], true);

        answers.reports.remove(1);
        answers
            .errors
            .push("an instance refused status (500): x".into());
        assert_eq!(answers.exit_code(), 1);
    }

    #[test]
    fn a_status_reply_of_an_older_backend_still_reads() {
        let old = serde_json::json!({
            "initialized": true, "sealed": true, "progress": 0, "threshold": null,
            "shares": null, "key_version": 1, "key_id": "XK", "server_xkey": "XS",
            "instance_id": "NABC", "reencryption": {"running": false, "done": 0, "total": 0,
            "resealed": 0, "failed": 0},
        });
        let r: StatusReport = serde_json::from_value(old).unwrap();
        assert_eq!((r.mode, r.secrets, r.version), (Mode::Sealed, None, None));
        assert_eq!(
            r.admin, None,
            "shown as unauthenticated: older backends were"
        );
    }
}
