//! Serving while the in-memory mirrors load (docs/performance.md, "Scale"): an instance
//! answers as soon as it is ready; until its mirrors hold both buckets, a get reads the
//! mapping and the value from the buckets themselves, so a deletion or a revocation made
//! meanwhile is honoured at once, and a listing waits for the load.
//!
//! The loading instance here is one whose mirrors can never load: its NATS user may not create
//! consumers. That makes "still loading" certain for the whole test, where a real load of a
//! large store would end at a time no test controls. Writes go through a second, unrestricted
//! instance on the same buckets (another subject base, so that each request reaches the
//! instance it is meant for).

use std::sync::Arc;

use crate::common::*;
use piggybank::client::AdminClient;
use piggybank::connect::Credentials;
use piggybank::server::RunConfig;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// `stuck` may do anything but create a consumer, so its mirrors never load.
const CONF: &str = r#"
jetstream {}
authorization {
  users = [
    { user: writer, password: writer-test }
    { user: stuck, password: stuck-test,
      permissions: {
        publish: { deny: ["$JS.API.CONSUMER.CREATE.>", "$JS.API.CONSUMER.DURABLE.CREATE.>"] }
      }
    }
  ]
}
"#;

const LOADING_BASE: &str = "loading.secrets";

/// What a test asks of a core served in this process: whether its mirrors are loaded, and
/// what its memory-only reads answer for (entity, secret): (`latest` has a value, `allows`).
type Probe = Box<dyn Fn(&str, &str) -> (bool, bool, bool) + Send + Sync>;

/// A backend served in this process, whose core the test can inspect.
struct Serving {
    probe: Probe,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Serving {
    fn is_loaded(&self) -> bool {
        (self.probe)("", "").0
    }

    /// (`secrets().latest(name)` has a value, `mappings().allows(entity, name)`).
    fn memory_answers(&self, entity: &str, name: &str) -> (bool, bool) {
        let (_, latest, allows) = (self.probe)(entity, name);
        (latest, allows)
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

async fn serve(config: RunConfig) -> Serving {
    let started = piggybank::server::start(&config).await.expect("start");
    let backend = Arc::clone(&started.backend);
    let probe: Probe = Box::new(move |entity, name| {
        let store = backend.unsealed().expect("keyed: never sealed");
        (
            backend.is_loaded(),
            store.secrets().latest(name).is_some(),
            piggybank::store::EntityKey::parse(entity)
                .is_ok_and(|entity| store.mappings().allows(&entity, name)),
        )
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = piggybank::server::serve(started, &config, async {
            let _ = stopped.await;
        })
        .await;
    });
    Serving {
        probe,
        stop: Some(stop),
        task,
    }
}

fn as_user(mut config: RunConfig, user: &str) -> RunConfig {
    config.nats_credentials = Some(Credentials::UserPassword {
        user: user.into(),
        password: format!("{user}-test").into(),
    });
    config
}

async fn connect(nats: &NatsServer, user: &str) -> async_nats::Client {
    async_nats::ConnectOptions::with_user_and_password(user.into(), format!("{user}-test"))
        .connect(nats.url())
        .await
        .expect("connect")
}

/// The writer (an ordinary instance, and its admin client) and an instance whose mirrors
/// never load (and a host-side client of it), on the same buckets.
struct Setup {
    nats: NatsServer,
    _writer: Running,
    admin: AdminClient,
    loading: Serving,
    /// Admin requests to the loading instance: what it writes, its own mirror holds at once.
    loading_admin: AdminClient,
    host: wasmcloud_secrets_client::Client,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("nats-server.conf");
    std::fs::write(&conf, CONF).unwrap();
    let nats = NatsServer::start_with_config(&conf);
    let keys = Keys::generate();
    let writer = start_backend_as(
        &nats,
        as_user(config(&nats, &keys), "writer"),
        "writer",
        "writer-test",
    )
    .await;
    let admin = admin(connect(&nats, "writer").await);
    let mut loading = as_user(config(&nats, &keys), "stuck");
    loading.subject_base = LOADING_BASE.into();
    let loading = serve(loading).await;
    let host = wasmcloud_secrets_client::Client::new(
        "nats-kv",
        LOADING_BASE,
        connect(&nats, "writer").await,
    )
    .await
    .unwrap();
    let loading_admin = AdminClient::new(
        connect(&nats, "writer").await,
        LOADING_BASE,
        "v1alpha1",
        "nats-kv",
    );
    Setup {
        nats,
        _writer: writer,
        admin,
        loading,
        loading_admin,
        host,
    }
}

/// The instance has not loaded (and never will): what the test saw, it saw while loading.
fn assert_still_loading(serving: &Serving) {
    assert!(!serving.is_loaded(), "the mirrors loaded after all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_answers_gets_from_the_buckets_before_its_mirrors_load() {
    let s = setup().await;
    let (jwt, entity) = Issuer::new().component();
    s.admin
        .put_secret("db", text("v1"), None, None)
        .await
        .unwrap();
    s.admin.add_mapping(&entity, &names(&["db"])).await.unwrap();
    assert_still_loading(&s.loading);

    let got = host_get(&s.host, request("db", &jwt)).await.unwrap();
    assert_eq!(got.string_secret.as_deref(), Some("v1"));
    // A newer version is served at once: the bucket is read, not a partial mirror.
    s.admin
        .put_secret("db", text("v2"), None, None)
        .await
        .unwrap();
    let got = host_get(&s.host, request("db", &jwt)).await.unwrap();
    assert_eq!(got.string_secret.as_deref(), Some("v2"));
    // What only memory would answer, answers nothing yet.
    assert_eq!(s.loading.memory_answers(&entity, "db"), (false, false));
    assert_still_loading(&s.loading);
    drop(s.nats);
}

/// The loading instance writes the secret itself, so its own mirror holds it; the deletion
/// comes through the other instance, and the mirror, which cannot load, never hears of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_loading_a_deleted_secret_is_never_served() {
    let s = setup().await;
    let (jwt, entity) = Issuer::new().component();
    let v1 = s
        .loading_admin
        .put_secret("gone", text("v1"), None, None)
        .await
        .unwrap();
    s.loading_admin
        .add_mapping(&entity, &names(&["gone"]))
        .await
        .unwrap();
    assert!(host_get(&s.host, request("gone", &jwt)).await.is_ok());

    s.admin.delete_secret("gone").await.unwrap();
    let err = host_refusal(&s.host, request("gone", &jwt)).await;
    assert!(err.contains("Secret not found"), "{err}");
    let mut old = request("gone", &jwt);
    old.version = Some(v1.to_string());
    let err = host_refusal(&s.host, old).await;
    assert!(err.contains("Secret not found"), "{err}");
    assert_still_loading(&s.loading);
}

/// As above: the grant is in the loading instance's own mirror, the revocation is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_loading_a_revoked_or_absent_mapping_grants_nothing() {
    let s = setup().await;
    let (jwt, entity) = Issuer::new().component();
    let (stranger_jwt, _) = Issuer::new().component();
    s.loading_admin
        .put_secret("s", text("v"), None, None)
        .await
        .unwrap();
    s.loading_admin
        .add_mapping(&entity, &names(&["s"]))
        .await
        .unwrap();
    assert!(host_get(&s.host, request("s", &jwt)).await.is_ok());
    let err = host_refusal(&s.host, request("s", &stranger_jwt)).await;
    assert!(err.contains("unauthorized"), "{err}");

    s.admin
        .remove_mapping(&entity, &names(&["s"]))
        .await
        .unwrap();
    let err = host_refusal(&s.host, request("s", &jwt)).await;
    assert!(err.contains("unauthorized"), "{err}");
    assert_still_loading(&s.loading);
}

/// A listing needs every secret, so it waits for the load, and then has them all. On a real
/// load: the instance is asked at once, while its mirror may still be filling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_waits_for_the_load_and_holds_every_secret() {
    let nats = NatsServer::start();
    let keys = Keys::generate();
    let _writer = start_backend(&nats, config(&nats, &keys)).await;
    let writer = admin(nats.client().await);
    let names: Vec<String> = (0..3000).map(|i| format!("app/{i:05}")).collect();
    // 64 at a time: beyond --max-in-flight an instance sheds requests (see "Concurrency").
    use futures::StreamExt as _;
    let puts: Vec<_> = futures::stream::iter(&names)
        .map(|name| {
            let writer = &writer;
            async move { writer.put_secret(name, text("v"), None, None).await }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    assert!(puts.iter().all(Result::is_ok), "a put failed");

    let mut second = config(&nats, &keys);
    second.subject_base = LOADING_BASE.into();
    let second = serve(second).await;
    let client = AdminClient::new(nats.client().await, LOADING_BASE, "v1alpha1", "nats-kv");
    let listed = client.list_secrets("").await.unwrap();
    let listed: Vec<String> = listed.into_iter().map(|m| m.name).collect();
    assert_eq!(listed, names);
    assert!(second.is_loaded());
}
