//! The capability provider: the same core, started by a wasmCloud host.
//!
//! The host writes HostData (base64 JSON) on stdin. From it the provider reads its settings
//! ([`settings`]) and keys (HostData *secrets*), opens its own NATS connection and serves the
//! secrets protocol exactly as `piggybank run` does ([`crate::server`]). It also exports
//! `piggybank:secrets/admin` over wRPC on the lattice connection ([`admin`]), to linked
//! components only ([`links`]).
//!
//! Concurrency: protocol requests and wRPC invocations each run on their own task, bounded by
//! a semaphore. Shutdown (the host's shutdown request, or SIGINT/SIGTERM) stops accepting,
//! waits for in-flight work (at most [`DRAIN_TIMEOUT`]) and only then acknowledges.

pub mod admin;
pub mod links;
pub mod par;
pub mod settings;

use std::io::BufRead;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use futures::StreamExt as _;
use tokio::sync::{watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use wasmcloud_provider_sdk::error::ProviderInitError;
use wasmcloud_provider_sdk::{
    get_connection, run_provider, HealthCheckRequest, HealthCheckResponse, HostData, LinkConfig,
    LinkDeleteInfo, Provider, ProviderConfigUpdate, ProviderInitConfig,
};

use crate::config::provider as keys;
use crate::server::{self, RunConfig, ServerError};
use admin::AdminExports;
use links::{LinkConfigError, LinkScope, Links};
use settings::{Lattice, Settings, SettingsError};

/// Generated from `wit/world.wit` (world `provider`).
pub mod bindings {
    wit_bindgen_wrpc::generate!({ world: "provider", path: "wit" });
}

/// Longest the provider waits for in-flight requests at shutdown.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Cap on admin invocations handled at once.
const MAX_ADMIN_IN_FLIGHT: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("cannot read HostData from stdin: {0}")]
    HostData(String),
    #[error("invalid provider configuration: {0}")]
    Settings(#[from] SettingsError),
    #[error("{0}")]
    Server(#[from] ServerError),
    #[error("provider start failed: {0}")]
    Sdk(String),
    #[error("cannot connect to the lattice's NATS at {url}: {reason}")]
    Lattice { url: String, reason: String },
    #[error("cannot serve the admin interface: {0}")]
    Exports(String),
}

/// Read HostData the way the SDK does (one base64 line of JSON), but with errors that never
/// echo the data (it holds seeds), and check what the SDK would otherwise panic on. Hands the
/// result to the SDK, which later reads it from there instead of stdin.
pub fn load_host_data(input: impl BufRead) -> Result<&'static HostData, ProviderError> {
    let host_data = parse_host_data(input)?;
    wasmcloud_provider_sdk::provider::initialize_host_data(host_data)
        .map_err(|e| ProviderError::HostData(e.to_string()))
}

fn parse_host_data(mut input: impl BufRead) -> Result<HostData, ProviderError> {
    let bad = |why: String| ProviderError::HostData(why);
    let mut line = zeroize::Zeroizing::new(String::new());
    input
        .read_line(&mut line)
        .map_err(|e| bad(format!("read failed: {e}")))?;
    let encoded = line.trim();
    if encoded.is_empty() {
        return Err(bad("stdin is empty; a host writes base64 HostData".into()));
    }
    let json = zeroize::Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| bad(format!("not base64: {e}")))?,
    );
    // serde_json's message names a line and column, never the data.
    let host_data: HostData =
        serde_json::from_slice(&json).map_err(|e| bad(format!("not HostData JSON: {e}")))?;
    for (field, value) in [
        ("lattice_rpc_prefix", &host_data.lattice_rpc_prefix),
        ("provider_key", &host_data.provider_key),
    ] {
        if value.trim().is_empty() {
            return Err(bad(format!("{field} is empty")));
        }
    }
    let seed = host_data.lattice_rpc_user_seed.trim();
    if !seed.is_empty() && nkeys::KeyPair::from_seed(seed).is_err() {
        return Err(bad("lattice_rpc_user_seed is not a valid nkey seed".into()));
    }
    let xkey = host_data.provider_xkey_private_key.trim();
    if !xkey.is_empty() && nkeys::XKey::from_seed(xkey).is_err() {
        return Err(bad(
            "provider_xkey_private_key is not a valid xkey seed".into()
        ));
    }
    Ok(host_data)
}

/// What exists once `init` has connected and opened the stores.
struct Running {
    exports: AdminExports,
    backend: Arc<crate::backend::Backend>,
    nats: async_nats::Client,
}

/// The provider. Cheap to clone: the SDK and the wRPC server each hold one.
#[derive(Clone)]
pub struct PiggybankProvider {
    inner: Arc<Inner>,
}

struct Inner {
    running: OnceLock<Running>,
    links: Arc<Links>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Why `init` failed: reported as is, rather than through the SDK's wrapping.
    init_error: Mutex<Option<ProviderError>>,
    /// Held while draining; `true` once drained, so a second `stop` waits for the first.
    drained: tokio::sync::Mutex<bool>,
}

impl Default for PiggybankProvider {
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner {
                running: OnceLock::new(),
                links: Arc::default(),
                stop: watch::channel(false).0,
                tasks: Mutex::default(),
                init_error: Mutex::default(),
                drained: tokio::sync::Mutex::new(false),
            }),
        }
    }
}

impl PiggybankProvider {
    /// Resolves once shutdown has begun.
    fn stopping(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.inner.stop.subscribe();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }

    fn track(&self, task: JoinHandle<()>) {
        self.inner
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(task);
    }

    /// Stop accepting, then wait for in-flight protocol and admin requests.
    async fn stop(&self) {
        self.inner.stop.send_replace(true);
        let mut drained = self.inner.drained.lock().await;
        if *drained {
            return;
        }
        let tasks =
            std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for task in tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout(DRAIN_TIMEOUT, task).await.is_err() {
                tracing::warn!("in-flight requests did not finish in time; abandoning them");
                abort.abort();
            }
        }
        self.inner.links.clear();
        if let Some(running) = self.inner.running.get() {
            let _ = running.nats.flush().await;
        }
        *drained = true;
        tracing::info!("piggybank provider stopped");
    }

    async fn start(&self, settings: Settings) -> Result<(), ProviderError> {
        warn_about(&settings);
        let started = server::start(&settings.run).await?;
        let exports = AdminExports::new(
            Arc::clone(&started.backend),
            Arc::clone(&self.inner.links),
            started.client.clone(),
            &settings.run,
        );
        let running = Running {
            exports,
            backend: Arc::clone(&started.backend),
            nats: started.client.clone(),
        };
        let stopping = self.stopping();
        let run_config: RunConfig = settings.run;
        self.track(tokio::spawn(async move {
            if let Err(err) = server::serve(started, &run_config, stopping).await {
                tracing::error!(%err, "secrets protocol server failed");
            }
        }));
        self.inner
            .running
            .set(running)
            .map_err(|_| ProviderError::Sdk("initialized twice".into()))
    }

    async fn health(&self) -> HealthCheckResponse {
        let Some(running) = self.inner.running.get() else {
            return unhealthy("not initialized".into());
        };
        if running.nats.connection_state() != async_nats::connection::State::Connected {
            return unhealthy("secrets NATS connection is down".into());
        }
        let ping = running.backend.ping();
        match tokio::time::timeout(Duration::from_secs(2), ping).await {
            Ok(Ok(())) => HealthCheckResponse {
                healthy: true,
                message: Some(format!(
                    "{}; NATS connected; buckets reachable; {} secrets; {} links",
                    if running.backend.is_sealed() {
                        "sealed"
                    } else {
                        "unsealed"
                    },
                    running.backend.counts().0,
                    self.inner.links.len()
                )),
            },
            Ok(Err(err)) => unhealthy(format!("buckets unreachable: {err}")),
            Err(_) => unhealthy("buckets did not answer within 2 s".into()),
        }
    }
}

fn unhealthy(message: String) -> HealthCheckResponse {
    HealthCheckResponse {
        healthy: false,
        message: Some(message),
    }
}

fn warn_about(settings: &Settings) {
    if settings.insecure_keys {
        tracing::warn!(
            "keys were taken from plain config (insecure_config_keys = true): anyone who can \
             read the lattice's config can read them; pass them as secrets in production"
        );
    }
    if settings.creds_in_config {
        tracing::warn!("nats_creds was taken from plain config; pass it as a secret");
    }
    for key in &settings.unknown_keys {
        tracing::warn!(key = %key, "ignoring unknown config key");
    }
}

impl Provider for PiggybankProvider {
    async fn init(&self, init: impl ProviderInitConfig) -> anyhow::Result<()> {
        let host = wasmcloud_provider_sdk::provider::load_host_data()
            .map_err(|e| ProviderError::HostData(e.to_string()))?;
        let lattice = Lattice {
            url: &host.lattice_rpc_url,
            user_jwt: &host.lattice_rpc_user_jwt,
            user_seed: &host.lattice_rpc_user_seed,
        };
        let started = match Settings::from_host(init.get_config(), init.get_secrets(), &lattice) {
            Ok(settings) => self.start(settings).await,
            Err(err) => Err(err.into()),
        };
        started.map_err(|err| {
            let message = err.to_string();
            *self
                .inner
                .init_error
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(err);
            anyhow::anyhow!(message)
        })
    }

    async fn on_config_update(&self, update: impl ProviderConfigUpdate) -> anyhow::Result<()> {
        let keys: Vec<&String> = update.get_values().keys().collect();
        tracing::warn!(
            ?keys,
            "provider config changed; piggybank applies config at start only: restart the \
             provider to use it"
        );
        Ok(())
    }

    async fn receive_link_config_as_target(&self, link: LinkConfig<'_>) -> anyhow::Result<()> {
        let (namespace, package, interfaces) = link.wit_metadata;
        let scope = if namespace != keys::WIT_NAMESPACE
            || package != keys::WIT_PACKAGE
            || interfaces.iter().any(|i| i != keys::WIT_INTERFACE)
        {
            Err(LinkConfigError::WrongInterface(format!(
                "{namespace}:{package}/{}",
                interfaces.join(",")
            )))
        } else {
            LinkScope::from_config(link.config)
        };
        match scope {
            Ok(scope) => {
                tracing::info!(
                    component = link.source_id, link = link.link_name,
                    prefix = %scope.prefix, read_only = scope.read_only, "link accepted"
                );
                self.inner.links.put(link.source_id, link.link_name, scope);
                Ok(())
            }
            Err(err) => {
                tracing::error!(
                    component = link.source_id, link = link.link_name, %err, "link refused"
                );
                Err(err.into())
            }
        }
    }

    async fn delete_link_as_target(&self, link: impl LinkDeleteInfo) -> anyhow::Result<()> {
        if self
            .inner
            .links
            .delete(link.get_source_id(), link.get_link_name())
        {
            tracing::info!(
                component = link.get_source_id(),
                link = link.get_link_name(),
                "link deleted"
            );
        }
        Ok(())
    }

    async fn health_request(&self, _: &HealthCheckRequest) -> anyhow::Result<HealthCheckResponse> {
        // Never an `Err`: the SDK stops its command loop on one.
        Ok(self.health().await)
    }

    async fn shutdown(&self) -> anyhow::Result<()> {
        self.stop().await;
        Ok(())
    }
}

/// Serve wRPC invocations until `stopping`; then wait for those in flight.
async fn serve_invocations(
    invocations: wasmcloud_provider_sdk::provider::InvocationStreams,
    stopping: impl std::future::Future<Output = ()>,
) {
    let mut invocations = futures::stream::select_all(
        invocations
            .into_iter()
            .map(|(instance, name, s)| s.map(move |res| (instance, name, res))),
    );
    let limit = Arc::new(Semaphore::new(MAX_ADMIN_IN_FLIGHT));
    let mut tasks = JoinSet::new();
    let mut stopping = std::pin::pin!(stopping);
    loop {
        tokio::select! {
            biased;
            () = &mut stopping => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            next = invocations.next() => match next {
                None => break,
                Some((instance, name, Ok(invocation))) => {
                    let Ok(permit) = Arc::clone(&limit).acquire_owned().await else { break };
                    tasks.spawn(async move {
                        if let Err(err) = invocation.await {
                            tracing::warn!(instance, name, err = %format!("{err:#}"), "admin invocation failed");
                        }
                        drop(permit);
                    });
                }
                Some((instance, name, Err(err))) => {
                    tracing::warn!(instance, name, err = %format!("{err:#}"), "cannot accept admin invocation");
                }
            },
        }
    }
    drop(invocations);
    while tasks.join_next().await.is_some() {}
}

/// Run the provider: HostData must already be loaded ([`load_host_data`]). Returns when the
/// host shuts it down or on SIGINT/SIGTERM, after in-flight requests finish.
pub async fn run(
    shutdown_signal: impl std::future::Future<Output = ()>,
) -> Result<(), ProviderError> {
    let provider = PiggybankProvider::default();
    let commands = match run_provider(provider.clone(), keys::NAME).await {
        Ok(commands) => commands,
        Err(err) => {
            let ours = provider
                .inner
                .init_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            return Err(ours.unwrap_or_else(|| match err {
                ProviderInitError::Connect(e) => ProviderError::Lattice {
                    url: lattice_url(),
                    reason: e.to_string(),
                },
                other => ProviderError::Sdk(other.to_string()),
            }));
        }
    };
    let Some(running) = provider.inner.running.get() else {
        return Err(ProviderError::Sdk("init did not complete".into()));
    };
    let connection = get_connection();
    let wrpc = connection
        .get_wrpc_client(connection.provider_key())
        .await
        .map_err(|e| ProviderError::Exports(format!("{e:#}")))?;
    let invocations = bindings::serve(&wrpc, running.exports.clone())
        .await
        .map_err(|e| ProviderError::Exports(format!("{e:#}")))?;
    provider.track(tokio::spawn(serve_invocations(
        invocations,
        provider.stopping(),
    )));
    tracing::info!(
        provider = connection.provider_key(),
        "piggybank provider ready"
    );
    tokio::select! {
        // The host's shutdown request: `Provider::shutdown` has already drained.
        () = commands => {}
        () = shutdown_signal => provider.stop().await,
    }
    Ok(())
}

/// The lattice URL the SDK connects to (HostData's, or its default).
fn lattice_url() -> String {
    wasmcloud_provider_sdk::provider::load_host_data()
        .ok()
        .map(|h| h.lattice_rpc_url.trim().to_string())
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| keys::DEFAULT_NATS_URL.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(json: &str) -> String {
        format!(
            "{}\r\n",
            base64::engine::general_purpose::STANDARD.encode(json)
        )
    }

    #[test]
    fn host_data_errors_never_echo_the_data() {
        let secret = "SXAMYSECRETSEED";
        let cases = [
            String::new(),
            "not base64!\n".to_string(),
            encoded(&format!(r#"{{"oops": "{secret}""#)),
            encoded(&format!(
                r#"{{"lattice_rpc_prefix":"default","provider_key":"VP","link_definitions":[],"env_values":{{}},"lattice_rpc_user_seed":"{secret}"}}"#
            )),
            encoded(
                r#"{"lattice_rpc_prefix":"","provider_key":"VP","link_definitions":[],"env_values":{}}"#,
            ),
        ];
        for case in cases {
            let err = parse_host_data(case.as_bytes()).expect_err("bad HostData accepted");
            let text = err.to_string();
            assert!(!text.contains(secret), "{text}");
            assert!(!text.contains('\n'), "one line: {text}");
        }
    }

    /// One invocation stream holding `count` invocations that each take `each` and then count
    /// themselves done.
    fn slow_invocations(
        count: usize,
        each: Duration,
        done: Arc<std::sync::atomic::AtomicUsize>,
    ) -> wasmcloud_provider_sdk::provider::InvocationStreams {
        let invocations = (0..count).map(move |_| {
            let done = Arc::clone(&done);
            let invocation: std::pin::Pin<
                Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>,
            > = Box::pin(async move {
                tokio::time::sleep(each).await;
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            });
            Ok(invocation)
        });
        // Accepted at once, then the stream stays open like a subscription.
        let stream = futures::stream::iter(invocations).chain(futures::stream::pending());
        vec![("piggybank:secrets/admin@0.1.0", "status", Box::pin(stream))]
    }

    #[tokio::test]
    async fn shutdown_waits_for_in_flight_invocations() {
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let invocations = slow_invocations(5, Duration::from_millis(300), Arc::clone(&done));
        let stopping = tokio::time::sleep(Duration::from_millis(50));
        let started = std::time::Instant::now();
        serve_invocations(invocations, stopping).await;
        assert_eq!(done.load(std::sync::atomic::Ordering::SeqCst), 5);
        assert!(started.elapsed() >= Duration::from_millis(300));
    }

    #[test]
    fn valid_host_data_is_accepted() {
        let json = r#"{"lattice_rpc_prefix":"default","provider_key":"VP","link_definitions":[],"env_values":{}}"#;
        let host = parse_host_data(encoded(json).as_bytes()).unwrap();
        assert_eq!(host.provider_key, "VP");
    }
}
