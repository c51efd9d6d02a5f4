//! A deployment under the least-privilege NATS layout (`piggybank nats-config`), and a
//! connection as one of its roles that records the server's permission violations: shared by
//! the layout's refusal tests (`security::nats_layout`) and the attacks on it
//! (`security::layout_attacks`).

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::{Client, HeaderMap};
use futures::StreamExt;
use piggybank::config::{
    DEFAULT_API_VERSION, DEFAULT_BACKEND_NAME, DEFAULT_SECRETS_BUCKET, DEFAULT_SUBJECT_BASE,
};
use piggybank::nats_layout::{admin_inbox_prefix, application_inbox_prefix, Deployment};
use piggybank::server::RunConfig;

use super::{config, piggybank_bin, start_backend_with, Keys, NatsServer, Running};

/// A deployment under its layout: the server, the backend (as the backend role) and the
/// seed files.
pub struct Layout {
    pub dir: tempfile::TempDir,
    pub nats: NatsServer,
    pub backend: Option<Running>,
}

/// A connection as one role, recording the server's errors (permission violations).
pub struct RoleClient {
    pub client: Client,
    pub errors: Arc<Mutex<Vec<String>>>,
}

impl Layout {
    /// `piggybank nats-config` with `apps`, nats-server with its config, the backend as the
    /// backend role (requiring `admin_keys`' signatures when given).
    pub async fn start(apps: &[&str], admin_keys: Vec<String>) -> Layout {
        Self::start_with(apps, &[], admin_keys).await
    }

    /// [`Self::start`], with inboxes bound to applications (`--app-inbox APP=PREFIX`, given
    /// to nats-config and to the backend alike).
    pub async fn start_with(apps: &[&str], inboxes: &[&str], admin_keys: Vec<String>) -> Layout {
        Self::start_adjusted(
            apps,
            inboxes,
            |c| {
                c.app_inboxes = inboxes.iter().map(|i| i.parse().unwrap()).collect();
                c.admin_keys = admin_keys;
            },
            |_| {},
        )
        .await
    }

    /// As [`Layout::start_with`], with the backend's config changed by `adjust` (after the
    /// layout's own settings) and the written `auth.conf` changed by `edit_auth` before the
    /// server reads it (an operator merging a lattice's lists into a user, say).
    pub async fn start_adjusted(
        apps: &[&str],
        inboxes: &[&str],
        adjust: impl FnOnce(&mut RunConfig),
        edit_auth: impl FnOnce(&mut String),
    ) -> Layout {
        Self::start_read_only(apps, inboxes, &[], adjust, edit_auth).await
    }

    /// As [`Layout::start_adjusted`], with read-only applications given to nats-config
    /// (`--read-only-app`: every application may request them) and to the backend alike.
    pub async fn start_read_only(
        apps: &[&str],
        inboxes: &[&str],
        read_only: &[&str],
        adjust: impl FnOnce(&mut RunConfig),
        edit_auth: impl FnOnce(&mut String),
    ) -> Layout {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new(piggybank_bin());
        command.arg("nats-config").arg("--dir").arg(dir.path());
        for app in apps {
            command.args(["--app", app]);
        }
        for inbox in inboxes {
            command.args(["--app-inbox", inbox]);
        }
        for app in read_only {
            command.args(["--read-only-app", app]);
        }
        let out = command.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let summary = String::from_utf8_lossy(&out.stdout);
        for inbox in inboxes {
            assert!(
                summary.contains(&format!("--app-inbox {inbox}")),
                "the printed run command lacks --app-inbox {inbox}: {summary}"
            );
        }
        let auth_path = dir.path().join("auth.conf");
        let mut auth = std::fs::read_to_string(&auth_path).unwrap();
        edit_auth(&mut auth);
        std::fs::write(&auth_path, auth).unwrap();
        let nats = NatsServer::start_with_config(&dir.path().join("nats-server.conf"));
        let apps: Vec<String> = apps.iter().map(|a| a.to_string()).collect();
        let deployment = Deployment::new(
            DEFAULT_SUBJECT_BASE,
            DEFAULT_API_VERSION,
            DEFAULT_BACKEND_NAME,
            DEFAULT_SECRETS_BUCKET,
            "piggybank",
            &apps,
        )
        .unwrap();
        let mut c = config(&nats, &Keys::generate());
        c.nats_credentials = Some(piggybank::connect::Credentials::NkeyFile(
            dir.path().join("backend.nk"),
        ));
        c.piggybank_prefix = Some("piggybank".into());
        c.reply_prefixes = deployment.reply_prefixes();
        let read_only: Vec<String> = read_only.iter().map(|a| a.to_string()).collect();
        c.piggybank_access = piggybank::config::ApiAccess::new(&[], &read_only).unwrap();
        adjust(&mut c);
        let mut layout = Layout {
            dir,
            nats,
            backend: None,
        };
        let host = layout.connect("host", None).await;
        layout.backend = Some(start_backend_with(&host.client, c).await);
        layout
    }

    /// The seed (`SU...`) of the role whose seed file is `<stem>.nk`.
    pub fn seed(&self, stem: &str) -> String {
        let text = std::fs::read_to_string(self.dir.path().join(format!("{stem}.nk"))).unwrap();
        text.lines()
            .find(|l| l.starts_with("SU"))
            .unwrap()
            .to_string()
    }

    /// Connect as the role whose seed is `<stem>.nk`, with `inbox` as inbox prefix.
    pub async fn connect(&self, stem: &str, inbox: Option<String>) -> RoleClient {
        let errors = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&errors);
        let mut options = async_nats::ConnectOptions::with_nkey(self.seed(stem))
            .request_timeout(Some(Duration::from_secs(2)))
            .event_callback(move |event| {
                let seen = Arc::clone(&seen);
                async move {
                    if let async_nats::Event::ServerError(e) = event {
                        seen.lock().unwrap().push(e.to_string());
                    }
                }
            });
        if let Some(inbox) = inbox {
            options = options.custom_inbox_prefix(inbox);
        }
        let client = options
            .connect(self.nats.url())
            .await
            .unwrap_or_else(|e| panic!("connect as {stem}: {e}"));
        RoleClient { client, errors }
    }

    pub async fn host(&self) -> RoleClient {
        self.connect("host", None).await
    }

    pub async fn app(&self, app: &str) -> RoleClient {
        self.connect(&format!("app-{app}"), Some(application_inbox_prefix(app)))
            .await
    }

    pub async fn admin(&self) -> RoleClient {
        self.connect("admin", Some(admin_inbox_prefix(DEFAULT_BACKEND_NAME)))
            .await
    }
}

/// Everything `sub` receives within `window`.
pub async fn gather(
    sub: &mut async_nats::Subscriber,
    window: Duration,
) -> Vec<async_nats::Message> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, sub.next()).await {
        seen.push(msg);
    }
    seen
}

/// A subscription of `role` that the server has taken (flushed).
pub async fn spy(role: &RoleClient, subject: &str) -> async_nats::Subscriber {
    let sub = role.client.subscribe(subject.to_string()).await.unwrap();
    role.client.flush().await.unwrap();
    sub
}

/// The operator's client as the admin role `admin`, signing with `signer` when given.
pub fn operator(
    admin: &RoleClient,
    signer: Option<piggybank::admin_auth::AdminSigner>,
) -> piggybank::client::AdminClient {
    piggybank::client::AdminClient::new(
        admin.client.clone(),
        DEFAULT_SUBJECT_BASE,
        DEFAULT_API_VERSION,
        DEFAULT_BACKEND_NAME,
    )
    .with_signer(signer)
}

/// Messages in `stream`, read by the admin role `admin`.
pub async fn stream_messages(admin: &RoleClient, stream: &str) -> u64 {
    let reply = admin
        .client
        .request(format!("$JS.API.STREAM.INFO.{stream}"), "".into())
        .await
        .expect("the admin reads stream info");
    let info: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    info["state"]["messages"]
        .as_u64()
        .unwrap_or_else(|| panic!("stream info of {stream}: {info}"))
}

impl RoleClient {
    /// Whether the server reported a permissions violation for `what` (`Publish` or
    /// `Subscription`) to `subject` within 3 s.
    pub async fn violation(&self, what: &str, subject: &str) -> bool {
        let needle = format!("permissions violation for {what} to \"{subject}\"").to_lowercase();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            let seen = self.errors.lock().unwrap().clone();
            if seen.iter().any(|e| e.to_lowercase().contains(&needle)) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Publish `body` to `subject` as a request: refused when the server reports the
    /// violation and nothing answers. Returns the failures, described.
    pub async fn refused_request(
        &self,
        subject: &str,
        headers: HeaderMap,
        body: &[u8],
    ) -> Vec<String> {
        let mut failures = Vec::new();
        let asked = tokio::spawn({
            let client = self.client.clone();
            let (subject, body) = (subject.to_string(), body.to_vec());
            async move {
                client
                    .request_with_headers(subject, headers, body.into())
                    .await
            }
        });
        // The server reports the violation at once; an answer, had the publish gone
        // through, would have come in the meantime (or within a further 300 ms).
        if !self.violation("Publish", subject).await {
            failures.push(format!("no permissions violation for publish to {subject}"));
        }
        if let Ok(Ok(Ok(reply))) = tokio::time::timeout(Duration::from_millis(300), asked).await {
            failures.push(format!(
                "{subject} was answered: {}",
                String::from_utf8_lossy(&reply.payload)
            ));
        }
        failures
    }

    /// Subscribe to `subject` (in `queue` when given): refused when the server reports the
    /// violation. Returns the subscription, to show later that nothing arrived.
    pub async fn refused_subscription(
        &self,
        subject: &str,
        queue: Option<&str>,
        failures: &mut Vec<String>,
    ) -> async_nats::Subscriber {
        let sub = match queue {
            Some(q) => self
                .client
                .queue_subscribe(subject.to_string(), q.to_string())
                .await
                .unwrap(),
            None => self.client.subscribe(subject.to_string()).await.unwrap(),
        };
        self.client.flush().await.unwrap();
        if !self.violation("Subscription", subject).await {
            failures.push(format!(
                "no permissions violation for subscription to {subject} (queue {queue:?})"
            ));
        }
        sub
    }
}

/// Nothing arrived on `subs` (within a short wait after the traffic that would reach them).
pub async fn nothing_received(subs: &mut [async_nats::Subscriber], failures: &mut Vec<String>) {
    for sub in subs.iter_mut() {
        if let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
            failures.push(format!("a refused subscription received {}", msg.subject));
        }
    }
}

/// An API request of an application; its Status.
pub async fn api(client: &Client, subject: &str, method: &str, body: &[u8]) -> Result<u16, String> {
    let mut headers = HeaderMap::new();
    headers.insert("method", method);
    let reply = client
        .request_with_headers(subject.to_string(), headers, body.to_vec().into())
        .await
        .map_err(|e| e.to_string())?;
    reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Status"))
        .and_then(|s| s.as_str().parse().ok())
        .ok_or_else(|| "no Status".to_string())
}
