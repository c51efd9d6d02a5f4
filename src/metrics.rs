//! Metrics through OpenTelemetry, as wasmCloud's own providers export them.
//!
//! Instruments are made from the global meter provider. The provider binary gets it from the
//! provider SDK's observability setup (the host's OTEL settings); `piggybank run` sets one up
//! from the standard `OTEL_*` environment ([`init_from_env`]): an OTLP/HTTP exporter when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` is set (or
//! `OTEL_METRICS_EXPORTER=otlp`), every `OTEL_METRIC_EXPORT_INTERVAL` ms. Without one, every
//! instrument is a no-op.
//!
//! - `piggybank.requests` (counter): requests answered, by `front_door` (`protocol`,
//!   `database`, `api`, or `wit` for the provider's WIT calls), `operation` and
//!   `outcome`;
//! - `piggybank.request.duration` (histogram, seconds): by `front_door`;
//! - `piggybank.requests.shed` (counter): requests not handled, by `reason` (`slow_consumer`:
//!   dropped unanswered by the NATS client, a subscription's buffer being full;
//!   `refused_reply`: dropped for a reply subject the reply policy refuses; `too_large`:
//!   refused for their size; `lane_full`: dropped because their lane was full) and `at` (the
//!   front door or lane, or the connection);
//! - `piggybank.sealed` (gauge): 1 while sealed;
//! - `piggybank.audit.dropped` (gauge): audit records lost so far;
//! - `piggybank.jwt_cache.hits` and `piggybank.jwt_cache.misses` (gauges): JWT checks answered
//!   from the cache of verified tokens, or verified;
//! - `piggybank.mirror.pending` (gauge, by `store`): changes the in-memory mirror of the
//!   `secrets` or `mappings` bucket has yet to apply, as its consumer last reported (the
//!   whole bucket at start, counting down while it loads; then 0 unless changes are in
//!   flight);
//! - `piggybank.mirror.loaded` (gauge, by `store`): 1 once that mirror holds its whole bucket;
//! - `piggybank.mirror.lag` (histogram, seconds, by `store`): for each change a loaded mirror
//!   applies, the time from its write (the server's timestamp) to its arrival here: how long
//!   this instance may still serve what was just replaced, deleted or revoked elsewhere.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use opentelemetry::metrics::{Counter, Histogram};
use opentelemetry::KeyValue;

/// The instruments of the request path, made once from the global meter.
struct Instruments {
    requests: Counter<u64>,
    shed: Counter<u64>,
    duration: Histogram<f64>,
    mirror_lag: Histogram<f64>,
}

/// Bucket boundaries of `piggybank.mirror.lag`, in seconds: a change normally arrives in a
/// millisecond or two; seconds mean a backlog (a reconnect, a burst of writes).
const LAG_BOUNDARIES: [f64; 15] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();
/// The meter provider `run` made, kept to flush it at exit.
static PROVIDER: OnceLock<opentelemetry_sdk::metrics::SdkMeterProvider> = OnceLock::new();

fn instruments() -> &'static Instruments {
    INSTRUMENTS.get_or_init(|| {
        let meter = opentelemetry::global::meter("piggybank");
        Instruments {
            requests: meter
                .u64_counter("piggybank.requests")
                .with_description("Requests answered, by front door, operation and outcome")
                .build(),
            shed: meter
                .u64_counter("piggybank.requests.shed")
                .with_description("Requests not handled: dropped under load, or too large")
                .build(),
            duration: meter
                .f64_histogram("piggybank.request.duration")
                .with_unit("s")
                .with_description("Time from receiving a request to its reply")
                .build(),
            mirror_lag: meter
                .f64_histogram("piggybank.mirror.lag")
                .with_unit("s")
                .with_description(
                    "Time from a change's write to its arrival in this instance's mirror",
                )
                .with_boundaries(LAG_BOUNDARIES.to_vec())
                .build(),
        }
    })
}

/// Count one answered request.
pub fn request(front_door: &'static str, operation: &str, outcome: &'static str, took: Duration) {
    let i = instruments();
    i.requests.add(
        1,
        &[
            KeyValue::new("front_door", front_door),
            KeyValue::new("operation", operation.to_string()),
            KeyValue::new("outcome", outcome),
        ],
    );
    i.duration.record(
        took.as_secs_f64(),
        &[KeyValue::new("front_door", front_door)],
    );
}

/// Count one request shed (`reason`), at a front door or a connection (`at`).
pub(crate) fn shed(reason: &'static str, at: &'static str) {
    instruments().shed.add(
        1,
        &[KeyValue::new("reason", reason), KeyValue::new("at", at)],
    );
}

/// Record the lag of one change a loaded mirror applied (`store`: `secrets` or `mappings`).
pub(crate) fn mirror_lag(store: &'static str, seconds: f64) {
    instruments()
        .mirror_lag
        .record(seconds, &[KeyValue::new("store", store)]);
}

/// One mirror's state, as the gauges read it.
pub struct MirrorReading {
    /// `secrets` or `mappings`.
    pub store: &'static str,
    pub pending: u64,
    pub loaded: bool,
}

/// What the gauges read, sampled at each export.
pub struct Gauges {
    pub sealed: Arc<dyn Fn() -> bool + Send + Sync>,
    pub audit_dropped: Arc<dyn Fn() -> u64 + Send + Sync>,
    pub jwt_cache: Arc<dyn Fn() -> (u64, u64) + Send + Sync>,
    pub mirrors: Arc<dyn Fn() -> Vec<MirrorReading> + Send + Sync>,
}

/// Register the gauges (once per process; a second call is ignored).
pub fn register(gauges: Gauges) {
    static REGISTERED: OnceLock<()> = OnceLock::new();
    if REGISTERED.set(()).is_err() {
        return;
    }
    let meter = opentelemetry::global::meter("piggybank");
    let sealed = gauges.sealed;
    // Observable instruments live as long as the meter provider keeps their callbacks.
    let _ = meter
        .u64_observable_gauge("piggybank.sealed")
        .with_description("1 while the store is sealed")
        .with_callback(move |o| o.observe(u64::from(sealed()), &[]))
        .build();
    let dropped = gauges.audit_dropped;
    let _ = meter
        .u64_observable_gauge("piggybank.audit.dropped")
        .with_description("Audit records lost since start")
        .with_callback(move |o| o.observe(dropped(), &[]))
        .build();
    let hits = Arc::clone(&gauges.jwt_cache);
    let _ = meter
        .u64_observable_gauge("piggybank.jwt_cache.hits")
        .with_description("JWT checks answered from the cache of verified tokens")
        .with_callback(move |o| o.observe(hits().0, &[]))
        .build();
    let misses = gauges.jwt_cache;
    let _ = meter
        .u64_observable_gauge("piggybank.jwt_cache.misses")
        .with_description("JWT checks that verified a signature")
        .with_callback(move |o| o.observe(misses().1, &[]))
        .build();
    let pending = Arc::clone(&gauges.mirrors);
    let _ = meter
        .u64_observable_gauge("piggybank.mirror.pending")
        .with_description("Changes the in-memory mirror of a bucket has yet to apply")
        .with_callback(move |o| {
            for mirror in pending() {
                o.observe(mirror.pending, &[KeyValue::new("store", mirror.store)]);
            }
        })
        .build();
    let loaded = gauges.mirrors;
    let _ = meter
        .u64_observable_gauge("piggybank.mirror.loaded")
        .with_description("1 once the in-memory mirror of a bucket holds all of it")
        .with_callback(move |o| {
            for mirror in loaded() {
                o.observe(
                    u64::from(mirror.loaded),
                    &[KeyValue::new("store", mirror.store)],
                );
            }
        })
        .build();
}

#[derive(Debug, thiserror::Error)]
#[error("cannot set up the OTLP metrics exporter: {0}")]
pub(crate) struct MetricsError(String);

/// `piggybank run`: export over OTLP/HTTP when the standard `OTEL_*` environment asks for
/// it. Returns whether it does. Call before any instrument is used.
pub(crate) fn init_from_env() -> Result<bool, MetricsError> {
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    use opentelemetry_sdk::metrics::periodic_reader_with_async_runtime::PeriodicReader;
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let wanted = set("OTEL_EXPORTER_OTLP_ENDPOINT")
        || set("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
        || std::env::var("OTEL_METRICS_EXPORTER").is_ok_and(|v| v.trim() == "otlp");
    if !wanted || std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim() == "true") {
        return Ok(false);
    }
    let exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .build()
        .map_err(|e| MetricsError(e.to_string()))?;
    let reader = PeriodicReader::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
    let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("piggybank")
                .build(),
        )
        .with_reader(reader)
        .build();
    opentelemetry::global::set_meter_provider(provider.clone());
    let _ = PROVIDER.set(provider);
    Ok(true)
}

/// Export what was measured since the last export, and stop (at exit).
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        let _ = provider.shutdown();
    }
}
