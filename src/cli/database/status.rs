//! `status`: every instance's report, gathered; exits as `vault status` does.

use super::*;

/// `status`: every instance's report; the exit code says whether any is sealed.
pub async fn status(args: DatabaseArgs, conn: &Conn) -> anyhow::Result<ExitCode> {
    let nats = conn.connect("piggybank cli").await?;
    let subject = args.subject("status");
    // Instances that hold the transit key prove it to this one-time key: the hints pin it.
    let one_time = XKey::new();
    let mut headers = HeaderMap::new();
    headers.insert(
        config::headers::REQUESTER_XKEY,
        one_time.public_key().as_str(),
    );
    let replies = gather(&nats, &subject, headers).await?;
    let mut answers = Answers::default();
    for reply in &replies {
        let (status, value) = decode(reply);
        if status != "200" {
            answers.errors.push(format!(
                "an instance refused status ({status}): {}",
                value["error"].as_str().unwrap_or("no reason given")
            ));
            continue;
        }
        match serde_json::from_value::<StatusReport>(value.clone()) {
            Ok(report) => answers.reports.push((report, value)),
            Err(e) => answers.errors.push(format!(
                "an instance sent a status this CLI cannot read: {e}"
            )),
        }
    }
    answers
        .reports
        .sort_by(|a, b| a.0.instance_id.cmp(&b.0.instance_id));
    let code = answers.exit_code();
    if args.output.json() {
        println!("{:#}", answers.to_json(&subject));
    } else {
        let pin = answers.pin(&one_time);
        let hints = Hints {
            init: super::hint::command("init", &pin),
            unlock: super::hint::command("unlock", &pin),
        };
        print!("{}", answers.to_text(&subject, &hints));
    }
    for error in &answers.errors {
        eprintln!("error: {}", printable(error));
    }
    Ok(ExitCode::from(code))
}

/// Publish one request with a fresh inbox as its reply subject and gather every reply until
/// none has come for `QUIET` (or `MAX_REPLIES` came). Fails when nothing answers:
/// after `NO_RESPONDERS_GRACE` on NATS's `no responders` (unless a real reply comes
/// meanwhile: anyone can forge one), after `FIRST_REPLY` otherwise.
pub(in crate::cli) async fn gather(
    nats: &async_nats::Client,
    subject: &str,
    headers: HeaderMap,
) -> anyhow::Result<Vec<async_nats::Message>> {
    let mut replies = publish_gathering(nats, subject, headers, Vec::new()).await?;
    let mut gathered = Vec::new();
    let mut wait = FIRST_REPLY;
    let mut no_responders = false;
    while gathered.len() < MAX_REPLIES {
        let Ok(Some(reply)) = tokio::time::timeout(wait, replies.next()).await else {
            break;
        };
        if reply.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
            // The server says so, but anyone may publish a "no responders" into this inbox:
            // a real reply may still come, so wait a little longer before believing it.
            no_responders = true;
            if gathered.is_empty() {
                wait = NO_RESPONDERS_GRACE;
            }
            continue;
        }
        gathered.push(reply);
        wait = QUIET;
    }
    if gathered.is_empty() && no_responders {
        bail!(nobody_answers(subject));
    }
    if gathered.is_empty() {
        bail!(
            "no answer on {subject} within {} s: is a piggybank backend running? (something \
             subscribes the subject, but it did not reply)",
            FIRST_REPLY.as_secs()
        );
    }
    Ok(gathered)
}

/// Publish one request with a fresh inbox as its reply subject, subscribed first: every
/// answer, from every instance (and from anyone else), arrives there.
pub(super) async fn publish_gathering(
    nats: &async_nats::Client,
    subject: &str,
    headers: HeaderMap,
    body: Vec<u8>,
) -> anyhow::Result<async_nats::Subscriber> {
    let inbox = nats.new_inbox();
    let replies = nats
        .subscribe(inbox.clone())
        .await
        .context("cannot subscribe to a reply inbox")?;
    nats.publish_with_reply_and_headers(subject.to_string(), inbox, headers, body.into())
        .await
        .with_context(|| format!("cannot publish on {subject}"))?;
    nats.flush()
        .await
        .with_context(|| format!("cannot publish on {subject}"))?;
    Ok(replies)
}

/// The commands `status` suggests, as they must be typed.
pub(super) struct Hints {
    pub(super) init: String,
    pub(super) unlock: String,
}

/// What the instances answered to `status`.
#[derive(Default)]
pub(super) struct Answers {
    /// Each report, and the JSON it came as (printed as is by `--json`).
    pub(super) reports: Vec<(StatusReport, serde_json::Value)>,
    pub(super) errors: Vec<String>,
}

impl Answers {
    pub(super) fn sealed(&self) -> usize {
        self.reports.iter().filter(|(r, _)| r.sealed).count()
    }

    /// As `vault status`: 2 if any instance is sealed, else 1 if any failed to report,
    /// else 0.
    pub(super) fn exit_code(&self) -> u8 {
        if self.sealed() > 0 {
            2
        } else if !self.errors.is_empty() || self.reports.is_empty() {
            1
        } else {
            0
        }
    }

    /// How `init` and `unlock` should pin the transit key: the one in this shell's
    /// TRANSIT_XKEY_SEED; else the server_xkey every instance proved it holds (to
    /// `one_time`); else none can be pinned (instances run without TRANSIT_XKEY_SEED).
    pub(super) fn pin(&self, one_time: &XKey) -> super::hint::Pin {
        use super::hint::Pin;
        if let Ok(seed) = std::env::var(env::TRANSIT_XKEY_SEED) {
            if let Ok(key) = crate::cli::transit::parse(&Zeroizing::new(seed)) {
                return Pin::Key(key.public_key());
            }
        }
        let proven: Vec<&str> = self
            .reports
            .iter()
            .filter_map(|(r, _)| {
                let key = r.server_xkey.as_deref()?;
                super::unlock::proven(r, one_time, key).ok().map(|()| key)
            })
            .collect();
        match proven.first() {
            Some(key) if proven.len() == self.reports.len() && proven.iter().all(|k| k == key) => {
                Pin::Key(key.to_string())
            }
            _ => Pin::Unverified,
        }
    }

    pub(super) fn to_json(&self, subject: &str) -> serde_json::Value {
        serde_json::json!({
            "subject": subject,
            "sealed": self.sealed() > 0,
            "instances": self.reports.iter().map(|(_, v)| v).collect::<Vec<_>>(),
            "errors": self.errors,
        })
    }

    /// One block of aligned `key: value` lines per instance, then a summary line.
    pub(super) fn to_text(&self, subject: &str, hints: &Hints) -> String {
        let mut out = String::new();
        for (r, _) in &self.reports {
            let mut lines = vec![
                ("Mode", r.mode.to_string()),
                ("Initialized", r.initialized.to_string()),
                ("Sealed", r.sealed.to_string()),
            ];
            if let (Some(threshold), Some(shares)) = (r.threshold, r.shares) {
                lines.push(("Threshold", format!("{threshold} of {shares} shares")));
                if r.sealed && r.initialized {
                    lines.push(("Unseal progress", format!("{}/{threshold}", r.progress)));
                }
            }
            lines.push(("Secrets", count(r.secrets)));
            lines.push(("Mapped entities", count(r.mapped_entities)));
            match (r.loaded, r.mirror_pending) {
                (Some(true), _) => lines.push(("Mirror", "loaded".into())),
                (Some(false), pending) => lines.push((
                    "Mirror",
                    format!(
                        "loading ({} changes to go; counts so far)",
                        pending.unwrap_or_default()
                    ),
                )),
                (None, _) => {}
            }
            if let Some(version) = r.key_version.filter(|_| r.initialized) {
                lines.push(("Key version", version.to_string()));
            }
            lines.push(("Data key", r.key_id.clone().unwrap_or_else(|| "-".into())));
            lines.push((
                "Server xkey",
                r.server_xkey.clone().unwrap_or_else(|| "-".into()),
            ));
            lines.push((
                "Unseal xkey",
                r.unseal_xkey.clone().unwrap_or_else(|| "-".into()),
            ));
            if let Some(re) = r.reencryption.filter(|re| re.running || re.total > 0) {
                lines.push((
                    "Re-encryption",
                    format!(
                        "{}, {}/{} done ({} re-sealed, {} failed)",
                        if re.running { "running" } else { "finished" },
                        re.done,
                        re.total,
                        re.resealed,
                        re.failed
                    ),
                ));
            }
            lines.push((
                "Admin",
                r.admin
                    .map_or_else(|| "unauthenticated".into(), |a| a.to_string()),
            ));
            lines.push((
                "Version",
                r.version.clone().unwrap_or_else(|| "unknown".into()),
            ));
            out.push_str(&format!(
                "Instance {}\n{}\n\n",
                printable(&r.instance_id),
                aligned(&lines)
            ));
        }
        let n = self.reports.len();
        let instances = if n == 1 { "instance" } else { "instances" };
        let next = if self.reports.iter().any(|(r, _)| !r.initialized) {
            format!(
                "initialize it with `{}`, then unlock it with `{}` (the key or a share on \
                 stdin)",
                hints.init, hints.unlock
            )
        } else {
            format!(
                "unlock it with `{}` (the key or a share on stdin)",
                hints.unlock
            )
        };
        let state = match self.sealed() {
            0 if self.errors.is_empty() => "unsealed".to_string(),
            0 => format!("{} failed to report", self.errors.len()),
            s if s == n => format!("sealed: {next}"),
            s => format!("{s} of them sealed, so the store counts as sealed (exit code 2): {next}"),
        };
        out.push_str(&format!("{n} {instances} answered on {subject}: {state}\n"));
        out
    }
}

pub(super) fn count(n: Option<usize>) -> String {
    n.map_or_else(|| "unknown".into(), |n| n.to_string())
}
