//! The capability provider: the same core, started by a wasmCloud host.
//!
//! The host writes HostData (base64 JSON) on stdin. From it the provider reads its settings
//! ([`settings`]) and keys (HostData *secrets*), opens its own NATS connection and serves the
//! secrets protocol exactly as `piggybank run` does ([`crate::server`]). It also exports
//! `piggybank:secrets/admin` over wRPC on the lattice connection ([`admin`]), served by its
//! own wRPC server ([`wrpc`]: reply subjects checked, no lost messages, time-limited), to
//! linked components only ([`links`]). Besides the SDK, it follows the host's link puts
//! itself, because the SDK drops a put that changes an existing link's config.
//!
//! Concurrency: protocol requests and wRPC invocations each run on their own task, bounded by
//! `max_in_flight` permits each; every wRPC invocation is dropped when it exceeds its time
//! limit. Both front doors subscribe on connections of their own
//! ([`crate::serve::ServeConnection`]: the secrets server for the protocol, the lattice for
//! wRPC), whose subscriptions buffer at most `max_in_flight` messages each, so that a flood
//! waiting for permits holds bounded memory; the stores and the SDK keep their own.
//! Shutdown (the host's shutdown request, or SIGINT/SIGTERM) stops accepting, waits for
//! in-flight work (at most `drain_timeout_ms`, then it is abandoned; a wRPC call never longer
//! than its limit) and only then acknowledges, whether or not NATS is still there.

pub(crate) mod admin;
pub mod links;
pub mod par;
pub(crate) mod settings;
pub(crate) mod wrpc;

use std::io::BufRead;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use futures::StreamExt as _;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use wasmcloud_provider_sdk::error::ProviderInitError;
use wasmcloud_provider_sdk::{
    get_connection, run_provider, HealthCheckRequest, HealthCheckResponse, HostData, LinkConfig,
    LinkDeleteInfo, Provider, ProviderConfigUpdate, ProviderInitConfig,
};

use crate::config::provider as keys;
use crate::connect::{self, Credentials, NatsTls};
use crate::reply_policy::ReplyPolicy;
use crate::serve::ServeConnection;
use crate::server::{self, RunConfig, ServerError};
use admin::AdminExports;
use links::{Applied, LinkConfigError, LinkScope, Links};
use settings::{Lattice, Settings, SettingsError};
use wrpc::WrpcServer;

/// Generated from `wit/world.wit` (world `provider`).
pub mod bindings {
    wit_bindgen_wrpc::generate!({ world: "provider", path: "wit", generate_all });
}

/// Longest the provider waits at shutdown for NATS to take what it has published.
const FLUSH_TIMEOUT: Duration = Duration::from_millis(500);
/// What the shutdown deadline allows beyond the drain timeout: the serve loop's last flush
/// and a wRPC call's own time limit end within it.
const STOP_GRACE: Duration = Duration::from_millis(500);

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
    /// The stores' connection.
    nats: async_nats::Client,
    /// The protocol's connection (the serve loop's).
    serving: async_nats::Client,
    /// Taken by `run` to serve the exports.
    wrpc_reply_policy: Mutex<Option<ReplyPolicy>>,
    wrpc_call_timeout: Duration,
    max_in_flight: usize,
    /// Bound on the drain at shutdown (`drain_timeout_ms`).
    drain_timeout: Duration,
}

/// The provider. Cheap to clone: the SDK and the wRPC server each hold one.
#[derive(Clone)]
pub(crate) struct PiggybankProvider {
    inner: Arc<Inner>,
}

struct Inner {
    running: OnceLock<Running>,
    /// The wRPC server's lattice connection, once `run` has made it.
    wrpc: OnceLock<async_nats::Client>,
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
                wrpc: OnceLock::new(),
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
        // One deadline for everything: the drain, then whatever is still running.
        let drain_timeout = self.inner.running.get().map_or(
            Duration::from_millis(crate::config::DEFAULT_DRAIN_TIMEOUT_MS),
            |running| running.drain_timeout,
        );
        let deadline = tokio::time::Instant::now() + drain_timeout + STOP_GRACE;
        let mut abandoned = 0;
        for task in tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                abandoned += 1;
                abort.abort();
            }
        }
        if abandoned > 0 {
            tracing::warn!(
                abandoned_tasks = abandoned,
                "in-flight work did not finish by the drain timeout; abandoned"
            );
        }
        self.inner.links.clear();
        // A flush waits for the server: never longer than this when it is gone.
        let running = self.inner.running.get();
        let clients = running
            .into_iter()
            .flat_map(|running| [&running.nats, &running.serving])
            .chain(self.inner.wrpc.get());
        let flushes = clients.map(|client| tokio::time::timeout(FLUSH_TIMEOUT, client.flush()));
        futures::future::join_all(flushes).await;
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
            Arc::clone(&started.auditor),
        );
        let running = Running {
            exports,
            backend: Arc::clone(&started.backend),
            nats: started.client.clone(),
            serving: started.serving.client().clone(),
            wrpc_reply_policy: Mutex::new(Some(settings.wrpc_reply_policy)),
            wrpc_call_timeout: settings.wrpc_call_timeout,
            max_in_flight: settings.run.max_in_flight,
            drain_timeout: settings.run.drain_timeout,
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
        let connected = |c: &async_nats::Client| {
            c.connection_state() == async_nats::connection::State::Connected
        };
        if !connected(&running.nats) || !connected(&running.serving) {
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

/// The scope a link's target config gives, if the link is for the admin interface.
fn link_scope(
    namespace: &str,
    package: &str,
    interfaces: &[String],
    config: &std::collections::HashMap<String, String>,
) -> Result<LinkScope, LinkConfigError> {
    if namespace != keys::WIT_NAMESPACE
        || package != keys::WIT_PACKAGE
        || interfaces.iter().any(|i| i != keys::WIT_INTERFACE)
    {
        return Err(LinkConfigError::WrongInterface(format!(
            "{namespace}:{package}/{}",
            interfaces.join(",")
        )));
    }
    LinkScope::from_config(config)
}

/// Log what a link put did, once: only the put that changed the table logs.
fn log_link(
    component: &str,
    link: &str,
    outcome: &Result<LinkScope, String>,
    applied: Applied,
    accepted: &'static str,
) {
    match (applied, outcome) {
        (Applied::Changed, Ok(scope)) => tracing::info!(
            component, link, prefix = %scope.prefix, read_only = scope.read_only, "{accepted}"
        ),
        (Applied::Changed, Err(err)) => tracing::error!(
            component, link, %err,
            "link refused; the link has no access until a valid config is put"
        ),
        (Applied::Unchanged | Applied::Deleted, _) => {}
    }
}

/// Follow the host's link puts for this provider (the subject the SDK subscribes to), and
/// apply each admin link's config: the SDK 0.17.1 drops a put for a link it already has, even
/// when the config changed. Ends at shutdown.
async fn follow_link_puts(
    links: Arc<Links>,
    provider_id: String,
    mut puts: async_nats::Subscriber,
    stopping: impl std::future::Future<Output = ()>,
) {
    let mut stopping = std::pin::pin!(stopping);
    loop {
        let msg = tokio::select! {
            biased;
            () = &mut stopping => break,
            msg = puts.next() => match msg {
                Some(msg) => msg,
                None => break,
            },
        };
        // The SDK reports a put it cannot parse; it is no link of ours either way.
        let Ok(put) =
            serde_json::from_slice::<wasmcloud_provider_sdk::InterfaceLinkDefinition>(&msg.payload)
        else {
            continue;
        };
        if put.target != provider_id || put.source_id == provider_id {
            continue;
        }
        let scope = link_scope(
            &put.wit_namespace,
            &put.wit_package,
            &put.interfaces,
            &put.target_config,
        );
        if matches!(scope, Err(LinkConfigError::WrongInterface(_))) {
            continue;
        }
        let outcome = scope.as_ref().cloned().map_err(ToString::to_string);
        let applied = links.put_followed(&put.source_id, &put.name, scope);
        log_link(
            &put.source_id,
            &put.name,
            &outcome,
            applied,
            "link config applied",
        );
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
            name: &host.lattice_rpc_prefix,
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
        let scope = link_scope(namespace, package, interfaces, link.config);
        if let Err(err @ LinkConfigError::WrongInterface(_)) = &scope {
            // Not an admin link: nothing to record, and no admin link is touched.
            tracing::error!(component = link.source_id, link = link.link_name, %err, "link refused");
            return Err(anyhow::anyhow!(err.to_string()));
        }
        let outcome = scope.as_ref().cloned().map_err(ToString::to_string);
        let applied = self
            .inner
            .links
            .put_new(link.source_id, link.link_name, scope);
        log_link(
            link.source_id,
            link.link_name,
            &outcome,
            applied,
            "link accepted",
        );
        outcome.map(|_| ()).map_err(anyhow::Error::msg)
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

/// Serve wRPC invocations until `stopping`; then wait for those in flight. Each invocation
/// is dropped (and logged) when it runs longer than `limit`; its permit, held by its result
/// writer ([`wrpc`]), is freed with it.
async fn serve_invocations(
    invocations: wasmcloud_provider_sdk::provider::InvocationStreams,
    limit: Duration,
    stopping: impl std::future::Future<Output = ()>,
) {
    let mut invocations = futures::stream::select_all(
        invocations
            .into_iter()
            .map(|(instance, name, s)| s.map(move |res| (instance, name, res))),
    );
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
                    tasks.spawn(async move {
                        match tokio::time::timeout(limit, invocation).await {
                            Ok(Ok(())) => {}
                            Ok(Err(err)) => {
                                tracing::warn!(instance, name, err = %format!("{err:#}"), "admin invocation failed");
                            }
                            Err(_) => tracing::warn!(
                                instance,
                                name,
                                limit_ms = limit.as_millis() as u64,
                                "wRPC invocation dropped: it did not complete within the time limit"
                            ),
                        }
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
    let lattice_nats: async_nats::Client = (*connection.nats).clone();
    // Beside the SDK's own subscription to the same subject (see `follow_link_puts`).
    let link_puts = lattice_nats
        .subscribe(wasmcloud_provider_sdk::core::rpc::link_put_subject(
            &connection.lattice,
            &connection.provider_xkey.public_key(),
        ))
        .await
        .map_err(|e| ProviderError::Exports(format!("cannot follow link puts: {e}")))?;
    provider.track(tokio::spawn(follow_link_puts(
        Arc::clone(&provider.inner.links),
        connection.provider_key().to_string(),
        link_puts,
        provider.stopping(),
    )));
    let policy = running
        .wrpc_reply_policy
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .ok_or_else(|| ProviderError::Sdk("served twice".into()))?;
    let capacity = running.max_in_flight.max(wrpc::MIN_BUFFERED_MESSAGES);
    let wrpc = connect_wrpc(capacity).await?;
    let _ = provider.inner.wrpc.set(wrpc.client().clone());
    let server = WrpcServer::new(
        wrpc,
        format!("{}.{}", connection.lattice, connection.provider_key()),
        policy,
        running.max_in_flight,
        running.wrpc_call_timeout,
        wrpc::params_limit(running.nats.server_info().max_payload),
    );
    let invocations = bindings::serve(&server, running.exports.clone())
        .await
        .map_err(|e| ProviderError::Exports(format!("{e:#}")))?;
    provider.track(tokio::spawn(serve_invocations(
        invocations,
        running.wrpc_call_timeout,
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

/// The wRPC server's own connection to the lattice: the server and credentials the SDK
/// connects with (HostData's; it has no TLS settings, a `tls://` URL turns TLS on), and at
/// most `capacity` messages buffered per subscription.
async fn connect_wrpc(capacity: usize) -> Result<ServeConnection, ProviderError> {
    let url = lattice_url();
    let host = wasmcloud_provider_sdk::provider::load_host_data()
        .map_err(|e| ProviderError::HostData(e.to_string()))?;
    let credentials = match host.lattice_rpc_user_jwt.trim() {
        "" => None,
        jwt => Some(Credentials::UserJwt {
            jwt: jwt.to_string(),
            seed: zeroize::Zeroizing::new(host.lattice_rpc_user_seed.trim().to_string()),
        }),
    };
    let name = format!("{} (wrpc)", keys::NAME);
    connect::connect_serving(
        &url,
        credentials.as_ref(),
        &NatsTls::default(),
        &name,
        None,
        capacity,
        "wrpc",
    )
    .await
    .map_err(|e| ProviderError::Lattice {
        url: e.address,
        reason: e.reason,
    })
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
mod tests;
