//! Fixtures of the provider's tests (`provider.rs`): the real `piggybank-provider` binary
//! started as a host starts it (HostData on its stdin), links put and deleted on the host's
//! subjects, and the WIT admin interface called over wRPC as a linked component's host would.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::StreamExt as _;
use nkeys::XKey;
use wasmcloud_provider_sdk::core::secrets::SecretValue;
use wasmcloud_provider_sdk::{HealthCheckResponse, HostData, InterfaceLinkDefinition};

use super::{unique_name, Keys, NatsServer, Proc};

pub mod bindings {
    wit_bindgen_wrpc::generate!({ world: "admin-client", path: "wit", generate_all });
}
// admin@0.2.0, as the components built before 0.3.0 call it; `admin_v3` is 0.3.0.
use bindings::piggybank::secrets0_2_0::admin::{self, SecretValue as WitValue};
pub use bindings::piggybank::secrets0_3_0::admin as admin_v3;

/// How the provider is started: its config and secrets, as a host would pass them.
pub struct Setup {
    pub config: HashMap<String, String>,
    pub secrets: HashMap<String, SecretValue>,
}

impl Setup {
    /// Keys as secrets, everything else default.
    pub fn with_keys(keys: &Keys) -> Self {
        let secrets = [
            ("transit_xkey_seed", keys.transit.as_str()),
            ("encryption_xkey_seed", keys.encryption.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), SecretValue::String(v.to_string())))
        .collect();
        Setup {
            config: HashMap::new(),
            secrets,
        }
    }

    pub fn config(mut self, key: &str, value: &str) -> Self {
        self.config.insert(key.into(), value.into());
        self
    }
}

/// A running `piggybank-provider`, with the ids a host would use to reach it.
pub struct ProviderProc {
    pub proc: Proc,
    pub lattice: String,
    pub provider_id: String,
    pub host_id: String,
    pub link_put_id: String,
    pub stderr: Arc<Mutex<String>>,
}

pub fn provider_bin() -> &'static str {
    env!("CARGO_BIN_EXE_piggybank-provider")
}

/// Spawn the provider with `stdin_line` (already encoded) on stdin, capturing stderr.
pub fn spawn_with_stdin(stdin_line: &[u8]) -> (Proc, Arc<Mutex<String>>) {
    spawn_with_stdin_env(stdin_line, &[])
}

/// As [`spawn_with_stdin`], with `env` added to the provider's environment.
pub fn spawn_with_stdin_env(stdin_line: &[u8], env: &[(&str, &str)]) -> (Proc, Arc<Mutex<String>>) {
    let mut child = Command::new(provider_bin())
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env("RUST_LOG", "info")
        .spawn()
        .expect("spawn piggybank-provider");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(stdin_line).unwrap();
    drop(stdin);
    let stderr = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&stderr);
    let pipe = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let mut s = sink.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
    (Proc { child }, stderr)
}

pub fn encode(host_data: &HostData) -> Vec<u8> {
    let json = serde_json::to_vec(host_data).unwrap();
    let mut line = base64::engine::general_purpose::STANDARD
        .encode(json)
        .into_bytes();
    line.extend_from_slice(b"\r\n");
    line
}

pub fn host_data(lattice_url: &str, lattice: &str, setup: Setup) -> (HostData, String) {
    let provider_xkey = XKey::new();
    let host_xkey = XKey::new();
    let host_data = HostData {
        host_id: nkeys::KeyPair::new_server().public_key(),
        lattice_rpc_prefix: lattice.to_string(),
        lattice_rpc_url: lattice_url.to_string(),
        provider_key: unique_name("piggybank"),
        instance_id: "instance-1".into(),
        config: setup.config,
        secrets: setup.secrets,
        host_xkey_public_key: host_xkey.public_key(),
        provider_xkey_private_key: provider_xkey.seed().unwrap(),
        ..Default::default()
    };
    (host_data, provider_xkey.public_key())
}

impl ProviderProc {
    pub async fn start(nats: &NatsServer, setup: Setup) -> Self {
        let (host_data, link_put_id) = host_data(&nats.url(), &unique_name("lattice"), setup);
        Self::start_with(nats, host_data, link_put_id).await
    }

    pub async fn start_with(nats: &NatsServer, host_data: HostData, link_put_id: String) -> Self {
        Self::start_with_env(nats, host_data, link_put_id, &[]).await
    }

    pub async fn start_with_env(
        nats: &NatsServer,
        host_data: HostData,
        link_put_id: String,
        env: &[(&str, &str)],
    ) -> Self {
        let (proc, stderr) = spawn_with_stdin_env(&encode(&host_data), env);
        let provider = ProviderProc {
            proc,
            lattice: host_data.lattice_rpc_prefix.clone(),
            provider_id: host_data.provider_key.clone(),
            host_id: host_data.host_id.clone(),
            link_put_id,
            stderr,
        };
        let client = nats.client().await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while provider.health(&client).await.is_none() {
            assert!(
                Instant::now() < deadline,
                "provider never answered health checks; stderr:\n{}",
                provider.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        provider
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn subject(&self, tail: &str) -> String {
        format!("wasmbus.rpc.{}.{}.{tail}", self.lattice, self.provider_id)
    }

    pub async fn health(&self, nats: &async_nats::Client) -> Option<HealthCheckResponse> {
        let reply = tokio::time::timeout(
            Duration::from_millis(500),
            nats.request(self.subject("health"), "{}".into()),
        )
        .await
        .ok()?
        .ok()?;
        serde_json::from_slice(&reply.payload).ok()
    }

    /// `call`, which must finish within 20 s; otherwise the test fails naming `what`, with
    /// the provider's log (a wRPC call has no deadline of its own: one hung once).
    pub async fn within<T>(&self, what: &str, call: impl std::future::Future<Output = T>) -> T {
        match tokio::time::timeout(Duration::from_secs(20), call).await {
            Ok(done) => done,
            Err(_) => panic!(
                "{what}: no answer in 20 s; the provider's log:\n{}",
                self.stderr()
            ),
        }
    }

    pub fn link(&self, component: &str, config: &[(&str, &str)]) -> InterfaceLinkDefinition {
        link_to(&self.provider_id, component, config)
    }

    /// Put a link the way a host does, and wait until the provider honours it.
    pub async fn put_link(&self, nats: &async_nats::Client, link: &InterfaceLinkDefinition) {
        self.publish_link(nats, link).await;
        let wrpc = self.wrpc(nats).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while self
            .within(
                "status, after a link put",
                admin::status(&wrpc, caller(&link.source_id)),
            )
            .await
            .unwrap()
            .is_err()
        {
            assert!(Instant::now() < deadline, "link was never honoured");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn publish_link(&self, nats: &async_nats::Client, link: &InterfaceLinkDefinition) {
        let subject = format!(
            "wasmbus.rpc.{}.{}.linkdefs.put",
            self.lattice, self.link_put_id
        );
        nats.publish(subject, serde_json::to_vec(link).unwrap().into())
            .await
            .unwrap();
        nats.flush().await.unwrap();
    }

    pub async fn delete_link(&self, nats: &async_nats::Client, link: &InterfaceLinkDefinition) {
        nats.publish(
            self.subject("linkdefs.del"),
            serde_json::to_vec(link).unwrap().into(),
        )
        .await
        .unwrap();
        nats.flush().await.unwrap();
    }

    /// The subject a host publishes a call of `func` to.
    pub fn invocation_subject(&self, func: &str) -> String {
        wrpc_transport_nats::invocation_subject(
            &format!("{}.{}", self.lattice, self.provider_id),
            ADMIN_INSTANCE,
            func,
        )
    }

    /// Publish the first message of a call of `func` by hand, with any reply subject, and
    /// no parameters after it: the parameters never complete.
    pub async fn invoke_raw(&self, nats: &async_nats::Client, func: &str, reply: &str) {
        nats.publish_with_reply_and_headers(
            self.invocation_subject(func),
            reply.to_string(),
            caller("ops").unwrap(),
            Default::default(),
        )
        .await
        .unwrap();
        nats.flush().await.unwrap();
    }

    pub async fn wrpc(&self, nats: &async_nats::Client) -> wrpc_transport_nats::Client {
        wrpc_transport_nats::Client::new(
            nats.clone(),
            format!("{}.{}", self.lattice, self.provider_id),
            None,
        )
        .await
        .unwrap()
    }

    /// The host's shutdown request; returns the provider's reply.
    pub async fn shutdown(&self, nats: &async_nats::Client) -> String {
        let body = serde_json::json!({ "host_id": self.host_id }).to_string();
        let reply = tokio::time::timeout(
            Duration::from_secs(20),
            nats.request(self.subject("default.shutdown"), body.into()),
        )
        .await
        .expect("shutdown reply in time")
        .expect("shutdown reply");
        String::from_utf8_lossy(&reply.payload).into_owned()
    }
}

/// The WIT instance the provider exports, as hosts name it in wRPC subjects.
pub const ADMIN_INSTANCE: &str = "piggybank:secrets/admin@0.2.0";

/// A link from `component` to the provider on `piggybank:secrets/admin`, as wadm puts it.
pub fn link_to(
    provider_id: &str,
    component: &str,
    config: &[(&str, &str)],
) -> InterfaceLinkDefinition {
    InterfaceLinkDefinition {
        source_id: component.into(),
        target: provider_id.into(),
        name: "default".into(),
        wit_namespace: "piggybank".into(),
        wit_package: "secrets".into(),
        interfaces: vec!["admin".into()],
        source_config: HashMap::new(),
        target_config: config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        source_secrets: None,
        target_secrets: None,
    }
}

/// The wRPC context of a call from `component` over the default link, as a host sends it.
pub fn caller(component: &str) -> Option<async_nats::HeaderMap> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("source-id", component);
    headers.insert("link-name", "default");
    Some(headers)
}

pub fn text_value(s: &str) -> WitValue {
    WitValue::Text(s.into())
}

pub fn component_key() -> String {
    nkeys::KeyPair::new_module().public_key()
}

/// Poll `check` every 10 ms until it holds, for at most 5 s (a check that hangs counts).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, check()).await {
            Ok(true) => return,
            Ok(false) => {}
            Err(_) => panic!("never happened (a call hung): {what}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Publish `control` on `client` until `spy` has received it (each second, for at most 20
/// s: on a loaded machine one may be late), keeping every subject the spy saw in `seen`.
pub async fn spy_sees(
    client: &async_nats::Client,
    spy: &mut async_nats::Subscriber,
    control: &str,
    seen: &mut Vec<String>,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen.iter().any(|s| s == control) {
        assert!(
            Instant::now() < deadline,
            "the spy never saw {control}: {seen:?}"
        );
        client
            .publish(control.to_string(), "control".into())
            .await
            .unwrap();
        client.flush().await.unwrap();
        let until = Instant::now() + Duration::from_secs(1);
        while let Ok(Some(msg)) = tokio::time::timeout_at(until.into(), spy.next()).await {
            seen.push(msg.subject.to_string());
            if msg.subject.as_str() == control {
                break;
            }
        }
    }
}

/// A provider started with keys, the component `ops` linked to it, and the host's NATS and
/// wRPC clients: where most of the provider's tests start.
pub struct LinkedProvider {
    pub nats: NatsServer,
    pub keys: Keys,
    pub provider: ProviderProc,
    pub client: async_nats::Client,
    pub wrpc: wrpc_transport_nats::Client,
}

pub async fn linked_provider() -> LinkedProvider {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let provider = ProviderProc::start(&nats, Setup::with_keys(&keys)).await;
    let client = nats.client().await;
    provider.put_link(&client, &provider.link("ops", &[])).await;
    let wrpc = provider.wrpc(&client).await;
    LinkedProvider {
        nats,
        keys,
        provider,
        client,
        wrpc,
    }
}
