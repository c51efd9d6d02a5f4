//! NATS service discovery (`$SRV.PING|INFO|STATS[.piggybank[.<id>]]`): every instance
//! answers as service `piggybank`, with its endpoints and, per endpoint, requests, errors and
//! processing time, in the micro-service protocol's own types (async-nats `service`), so
//! `nats micro ls` and `nats micro stats piggybank` show it like any other NATS service.
//!
//! The loop keeps the counts itself rather than serving through async-nats's `Service`:
//! that one publishes each response straight to the request's reply subject, and the loop
//! must check a reply subject before anything is published.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_nats::service::{self, endpoint};

use super::{Endpoint, Reply};

/// The service name every instance answers to.
pub(crate) const SERVICE_NAME: &str = "piggybank";

const VERBS: [&str; 3] = ["PING", "INFO", "STATS"];

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    errors: AtomicU64,
    nanos: AtomicU64,
    last_error: Mutex<Option<String>>,
}

pub(crate) struct Discovery {
    id: String,
    started: time::OffsetDateTime,
    endpoints: Vec<endpoint::Info>,
    counters: Vec<Counters>,
}

impl Discovery {
    pub fn new(id: &str, endpoints: &[Endpoint]) -> Self {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let infos = endpoints
            .iter()
            .map(|e| {
                // Names are unique within a service: the second `database` is `database-2`.
                let n = seen.entry(e.name).or_default();
                *n += 1;
                let name = match *n {
                    1 => e.name.to_string(),
                    n => format!("{}-{n}", e.name),
                };
                endpoint::Info {
                    name,
                    subject: e.subject.clone(),
                    queue_group: e.queue_group.clone().unwrap_or_default(),
                    metadata: HashMap::new(),
                }
            })
            .collect();
        Self {
            id: id.to_string(),
            started: time::OffsetDateTime::now_utc(),
            endpoints: infos,
            counters: endpoints.iter().map(|_| Counters::default()).collect(),
        }
    }

    /// The subjects to subscribe to (every instance, no queue group).
    pub fn subjects(&self) -> Vec<String> {
        VERBS
            .iter()
            .flat_map(|verb| {
                [
                    format!("$SRV.{verb}"),
                    format!("$SRV.{verb}.{SERVICE_NAME}"),
                    format!("$SRV.{verb}.{SERVICE_NAME}.{}", self.id),
                ]
            })
            .collect()
    }

    /// Count one answered request of endpoint `index`.
    pub fn count(&self, index: usize, elapsed: Duration, error: Option<&str>) {
        let Some(c) = self.counters.get(index) else {
            return;
        };
        c.requests.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        c.nanos.fetch_add(nanos, Ordering::Relaxed);
        if let Some(error) = error {
            c.errors.fetch_add(1, Ordering::Relaxed);
            *c.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error.to_string());
        }
    }

    /// The answer to a `$SRV` request on `subject`.
    pub fn answer(&self, subject: &str) -> Option<Reply> {
        let verb = subject.strip_prefix("$SRV.")?.split('.').next()?;
        let version = env!("CARGO_PKG_VERSION").to_string();
        let body = match verb {
            "PING" => serde_json::to_vec(&service::PingResponse {
                kind: "io.nats.micro.v1.ping_response".into(),
                name: SERVICE_NAME.into(),
                id: self.id.clone(),
                version,
                metadata: HashMap::new(),
            }),
            "INFO" => serde_json::to_vec(&service::Info {
                kind: "io.nats.micro.v1.info_response".into(),
                name: SERVICE_NAME.into(),
                id: self.id.clone(),
                description: "piggybank: secrets for wasmCloud and NATS services".into(),
                version,
                metadata: HashMap::new(),
                endpoints: self.endpoints.clone(),
            }),
            "STATS" => serde_json::to_vec(&service::Stats {
                kind: "io.nats.micro.v1.stats_response".into(),
                name: SERVICE_NAME.into(),
                id: self.id.clone(),
                version,
                started: self.started,
                endpoints: self.stats(),
            }),
            _ => return None,
        };
        body.ok().map(Reply::plain)
    }

    fn stats(&self) -> Vec<endpoint::Stats> {
        self.endpoints
            .iter()
            .zip(&self.counters)
            .map(|(info, c)| {
                let requests = c.requests.load(Ordering::Relaxed);
                let nanos = c.nanos.load(Ordering::Relaxed);
                let last_error = c
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()
                    .map(|status| service::error::Error { code: 0, status });
                endpoint::Stats {
                    name: info.name.clone(),
                    subject: info.subject.clone(),
                    queue_group: info.queue_group.clone(),
                    requests: requests as usize,
                    errors: c.errors.load(Ordering::Relaxed) as usize,
                    processing_time: Duration::from_nanos(nanos),
                    average_processing_time: Duration::from_nanos(
                        nanos.checked_div(requests).unwrap_or(0),
                    ),
                    last_error,
                    data: None,
                }
            })
            .collect()
    }
}
