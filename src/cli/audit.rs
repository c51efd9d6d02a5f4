//! `piggybank audit`: list and follow the audit trail (`crate::audit`).

use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, ValueEnum};
use futures::StreamExt as _;

use super::Conn;
use crate::audit::{self, AuditRecord};
use crate::config;

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
    /// One JSON object per line instead of text
    #[arg(long)]
    pub json: bool,
    /// The name of the secrets backend
    #[arg(short = 'n', long = "name", default_value = config::DEFAULT_BACKEND_NAME)]
    pub backend_name: String,
    #[command(flatten)]
    pub conn: Conn,
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

pub async fn run(args: AuditArgs) -> anyhow::Result<()> {
    use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
    let since = args.since.as_deref().map(parse_duration).transpose()?;
    let (nats, js_domain) = args.conn.connect_jetstream("piggybank audit").await?;
    let js = crate::store::jetstream(&nats, js_domain.as_deref());
    let name = audit::stream_name(&args.backend_name);
    let stream = js.get_stream(&name).await.with_context(|| {
        format!(
            "no audit trail {name}: is backend {:?} running (without --no-audit) on this NATS?",
            args.backend_name
        )
    })?;
    let root = audit::subject_root(&args.backend_name);
    let filter_subject = match args.outcome {
        Some(outcome) => format!("{root}.{}.>", outcome.as_outcome().as_str()),
        None => format!("{root}.>"),
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
    if pending == 0 && !args.follow {
        return Ok(());
    }
    let mut messages = consumer
        .messages()
        .await
        .context("cannot read the audit trail")?;
    while let Some(message) = messages.next().await {
        let message = message.context("reading the audit trail")?;
        pending = message.info().map_or(0, |info| info.pending);
        for record in audit::records(&message.payload) {
            match record {
                Ok(record) if matches(&record, &args) => print(&record, args.json)?,
                Ok(_) => {}
                Err(_) => tracing::warn!("skipping a line that is not an audit record"),
            }
        }
        if pending == 0 && !args.follow {
            break;
        }
    }
    Ok(())
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
