//! `piggybank audit`: list and follow the audit trails (`crate::audit`), both in time order,
//! and `--verify` them: every gap, reorder, forged record and foreign stream, exit 1 if any.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{bail, Context as _};
use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
use clap::{Args, ValueEnum};
use futures::StreamExt as _;

use super::{Conn, Output};
use crate::audit::{self, verify, AuditRecord, Trail, TrailStream};
use crate::config::{self, env};

#[derive(Args)]
pub struct AuditArgs {
    /// Keep printing new records as they come (Ctrl-C stops)
    #[arg(long)]
    pub follow: bool,
    /// Only records newer than this: a duration such as 90s, 10m, 2h or 7d
    #[arg(long)]
    pub since: Option<String>,
    /// Only records about this secret
    #[arg(long)]
    pub secret: Option<String>,
    /// Only records about this component or provider key (M..., V...)
    #[arg(long)]
    pub entity: Option<String>,
    /// Only records with this outcome
    #[arg(long, value_enum)]
    pub outcome: Option<OutcomeArg>,
    // Text, or (-o json) one JSON object per record and line, a stream --follow extends;
    // with --verify, one JSON document of the findings.
    #[command(flatten)]
    pub output: Output,
    /// Which trail: the decisions (allowed accesses, admin changes), the refusals (refused
    /// requests, open reads, summaries of floods), or both
    #[arg(long, value_enum, default_value = "all")]
    pub trail: TrailArg,
    /// Check the trails instead of listing them: report every gap, reorder, forged record
    /// (unsigned, or not signed by a known instance key) and foreign stream (not the
    /// config piggybank sets); exit 1 if there is any
    #[arg(long, conflicts_with = "follow")]
    pub verify: bool,
    /// With --verify: an instance key (N...) to trust, as `status` or the `piggybank ready`
    /// log line shows it (repeat for several). Without it, the keys of the instances that
    /// answer `status` now
    #[arg(long, requires = "verify")]
    pub instance_key: Vec<String>,
    /// Prefix of the database operations (the backend's --piggybank-prefix), where
    /// --verify asks the instances for their keys
    #[arg(long, env = env::PIGGYBANK_PREFIX, default_value = crate::piggybank_api::DEFAULT_PREFIX)]
    pub piggybank_prefix: String,
    /// The name of the secrets backend
    #[arg(short = 'n', long = "name", value_name = "BACKEND_NAME", default_value = config::DEFAULT_BACKEND_NAME)]
    pub backend_name: String,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum TrailArg {
    All,
    Admin,
    Decisions,
    Refusals,
}

impl TrailArg {
    fn trails(self) -> Vec<Trail> {
        match self {
            TrailArg::All => Trail::ALL.to_vec(),
            TrailArg::Admin => vec![Trail::Admin],
            TrailArg::Decisions => vec![Trail::Decisions],
            TrailArg::Refusals => vec![Trail::Refusals],
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum OutcomeArg {
    Allowed,
    Denied,
    Error,
}

impl OutcomeArg {
    fn as_outcome(self) -> audit::Outcome {
        match self {
            OutcomeArg::Allowed => audit::Outcome::Allowed,
            OutcomeArg::Denied => audit::Outcome::Denied,
            OutcomeArg::Error => audit::Outcome::Error,
        }
    }
}

/// `90s`, `10m`, `2h`, `7d`.
fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .with_context(|| format!("--since {text:?}: expected a number and a unit (s, m, h, d)"))?;
    let seconds = match unit {
        "s" | "" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        other => bail!("--since {text:?}: unknown unit {other:?}; use s, m, h or d"),
    };
    Ok(Duration::from_secs(n.saturating_mul(seconds)))
}

pub async fn run(args: AuditArgs, conn: &Conn) -> anyhow::Result<()> {
    let since = args.since.as_deref().map(parse_duration).transpose()?;
    let (nats, js_domain) = conn.connect_jetstream("piggybank audit").await?;
    let js = crate::store::jetstream(&nats, js_domain.as_deref());
    if args.verify {
        return verify(&args, &nats, &js).await;
    }
    let root = audit::subject_root(&args.backend_name);
    let mut listed = Vec::new();
    let mut follows = Vec::new();
    for trail in args.trail.trails() {
        let name = trail.stream_name(&args.backend_name);
        let stream = match js.get_stream(&name).await {
            Ok(stream) => stream,
            // A backend older than the refusal trail has only the decisions'.
            Err(_) if trail == Trail::Refusals => continue,
            Err(_) => bail!(
                "no audit trail {name}: is backend {:?} running (without --no-audit) on this NATS?",
                args.backend_name
            ),
        };
        let filter_subject = match args.outcome {
            Some(outcome) => trail.subject(&root, outcome.as_outcome().as_str(), ">"),
            None => String::new(),
        };
        let deliver_policy = match since {
            Some(age) => DeliverPolicy::ByStartTime {
                start_time: time::OffsetDateTime::now_utc() - age,
            },
            None => DeliverPolicy::All,
        };
        let consumer = stream
            .create_consumer(OrderedConfig {
                filter_subject,
                deliver_policy,
                ..Default::default()
            })
            .await
            .context("cannot read the audit trail")?;
        let mut pending = consumer.cached_info().num_pending;
        let mut messages = consumer
            .messages()
            .await
            .context("cannot read the audit trail")?;
        while pending > 0 {
            let Some(message) = messages.next().await else {
                break;
            };
            let message = message.context("reading the audit trail")?;
            pending = message.info().map_or(0, |info| info.pending);
            listed.extend(parse(&message.payload).filter(|r| matches(r, &args)));
        }
        follows.push(messages);
    }
    // Both trails, in time order.
    listed.sort_by_key(|r| r.time_ms);
    for record in &listed {
        print(record, args.output.json())?;
    }
    if !args.follow {
        return Ok(());
    }
    let mut live = futures::stream::select_all(follows);
    while let Some(message) = live.next().await {
        let message = message.context("reading the audit trail")?;
        for record in parse(&message.payload).filter(|r| matches(r, &args)) {
            print(&record, args.output.json())?;
        }
    }
    Ok(())
}

/// The records of one message; a line that is not one is skipped, with a warning.
fn parse(payload: &[u8]) -> impl Iterator<Item = AuditRecord> + '_ {
    audit::records(payload).filter_map(|record| match record {
        Ok(record) => Some(record),
        Err(_) => {
            tracing::warn!("skipping a line that is not an audit record");
            None
        }
    })
}

/// `--verify`: every finding of [`audit::verify`] on both trails, and every problem the
/// running instances report; `Err` (exit 1) if there is any.
async fn verify(
    args: &AuditArgs,
    nats: &async_nats::Client,
    js: &async_nats::jetstream::Context,
) -> anyhow::Result<()> {
    let statuses = instance_statuses(args, nats).await;
    let known: HashSet<String> = match args.instance_key.is_empty() {
        false => args.instance_key.iter().cloned().collect(),
        true => statuses.iter().map(|s| s.instance_key.clone()).collect(),
    };
    let mut findings: Vec<String> = Vec::new();
    if known.is_empty() {
        findings.push(
            "no instance key to check the records against: no instance answered status \
             (give the keys with --instance-key)"
                .into(),
        );
    }
    for status in &statuses {
        findings.extend(
            status
                .problems
                .iter()
                .map(|p| format!("instance {} reports: {p}", status.instance_key)),
        );
        // Lost records leave no gap when nothing is written after them (a full trail).
        if status.dropped > 0 {
            findings.push(format!(
                "instance {} lost {} record(s) since it started (not buffered, or not \
                 acknowledged): they are in no trail",
                status.instance_key, status.dropped
            ));
        }
    }
    let root = audit::subject_root(&args.backend_name);
    let now_ms = crate::clock::now_ms();
    let (mut records, mut chains) = (0, 0);
    for trail in Trail::ALL {
        let name = trail.stream_name(&args.backend_name);
        let mut stream = match js.get_stream(&name).await {
            Ok(stream) => stream,
            Err(e) => {
                findings.push(format!("foreign stream: stream {name} cannot be read: {e}"));
                continue;
            }
        };
        let info = stream
            .info()
            .await
            .with_context(|| format!("cannot read stream {name}"))?
            .clone();
        // Against the retention the running instances configured; without one, only the
        // stream's shape is checked.
        let configured =
            statuses
                .first()
                .map_or((info.config.max_age, info.config.max_bytes), |s| {
                    let max_bytes = match trail {
                        Trail::Decisions | Trail::Admin => s.max_bytes,
                        Trail::Refusals => s.refusals_max_bytes,
                    };
                    (Duration::from_secs(s.max_age_secs), max_bytes)
                });
        let spec = TrailStream::new(
            trail,
            &args.backend_name,
            configured.0,
            configured.1,
            info.config.num_replicas,
        );
        findings.extend(
            spec.problems(&info.config)
                .into_iter()
                .map(|p| verify::Finding::Stream(p).to_string()),
        );
        let messages = read_all(&stream, info.state.messages).await?;
        let max_age_ms = (!configured.0.is_zero()).then_some(configured.0.as_millis() as u64);
        let acknowledged: std::collections::BTreeMap<String, u64> = statuses
            .iter()
            .map(|s| {
                let seq = s.acknowledged_seq.get(&trail).copied().unwrap_or(0);
                (s.instance_key.clone(), seq)
            })
            .collect();
        let verified = verify::verify(
            &verify::Expect {
                trail,
                root: &root,
                known_keys: &known,
                now_ms,
                max_age_ms,
                acknowledged: &acknowledged,
            },
            &messages,
        );
        records += verified.records;
        chains += verified.chains;
        findings.extend(verified.findings.iter().map(ToString::to_string));
    }
    if args.output.json() {
        Output::print_json(&serde_json::json!({
            "verified": findings.is_empty(),
            "records": records,
            "chains": chains,
            "findings": findings,
        }))?;
    } else {
        for finding in &findings {
            println!("{}", super::printable(finding));
        }
    }
    if !findings.is_empty() {
        bail!(
            "the audit trail does not verify: {} finding(s) in {records} records",
            findings.len()
        );
    }
    if !args.output.json() {
        println!(
            "verified: {records} records in {chains} chains, no gap, no forgery, streams as \
             configured"
        );
    }
    Ok(())
}

/// What each running instance says about its trail (`status`); none when none answers.
async fn instance_statuses(args: &AuditArgs, nats: &async_nats::Client) -> Vec<audit::AuditStatus> {
    let subject = crate::database::subject(&args.piggybank_prefix, &args.backend_name, "status");
    let Ok(replies) = super::database::gather(nats, &subject, async_nats::HeaderMap::new()).await
    else {
        return Vec::new();
    };
    replies
        .iter()
        .filter_map(|reply| {
            serde_json::from_slice::<crate::seal::StatusReport>(&reply.payload).ok()
        })
        .filter_map(|report| report.audit)
        .collect()
}

/// Every message of `stream` (`count` of them, as its info said), in stream order.
async fn read_all(
    stream: &async_nats::jetstream::stream::Stream,
    count: u64,
) -> anyhow::Result<Vec<verify::StoredMessage>> {
    let mut out = Vec::new();
    if count == 0 {
        return Ok(out);
    }
    let consumer = stream
        .create_consumer(OrderedConfig::default())
        .await
        .context("cannot read the audit trail")?;
    let mut pending = consumer.cached_info().num_pending;
    let mut messages = consumer
        .messages()
        .await
        .context("cannot read the audit trail")?;
    while pending > 0 {
        let next = tokio::time::timeout(Duration::from_secs(10), messages.next()).await;
        let Ok(Some(message)) = next else { break };
        let message = message.context("reading the audit trail")?;
        let info = message
            .info()
            .map_err(|e| anyhow::anyhow!("reading the audit trail: {e}"))?;
        pending = info.pending;
        out.push(verify::StoredMessage {
            stream_seq: info.stream_sequence,
            subject: message.subject.to_string(),
            payload: message.payload.clone(),
        });
    }
    Ok(out)
}

fn matches(record: &AuditRecord, args: &AuditArgs) -> bool {
    args.secret
        .as_deref()
        .is_none_or(|s| record.secret.as_deref() == Some(s))
        && args
            .entity
            .as_deref()
            .is_none_or(|e| record.entity.as_deref() == Some(e))
}

fn print(record: &AuditRecord, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(record)?);
        return Ok(());
    }
    let time =
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(record.time_ms) * 1_000_000)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| record.time_ms.to_string());
    let mut line = format!(
        "{time} {:<7} {} {}",
        record.outcome.as_str(),
        record.front_door,
        record.operation
    );
    let fields = [
        ("secret", record.secret.clone()),
        ("version", record.version.map(|v| v.to_string())),
        ("entity", record.entity.clone()),
        ("host", record.host.clone()),
        ("admin", record.admin_key.clone()),
        (
            "link",
            record
                .link
                .as_ref()
                .map(|l| format!("{}/{}", l.source_id, l.name)),
        ),
        ("application", record.application.clone()),
        ("reason", record.reason.clone()),
        ("count", record.count.map(|c| c.to_string())),
        ("since_ms", record.since_ms.map(|c| c.to_string())),
        ("id", Some(record.request_id.clone())),
    ];
    for (key, value) in fields {
        if let Some(value) = value {
            line.push_str(&format!(" {key}={value}"));
        }
    }
    // Every field may come from a request anyone could send (a secret name is audited as
    // asked for): control characters are shown escaped.
    println!("{}", super::printable(&line));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7_200));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604_800));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5w").is_err());
    }
}
