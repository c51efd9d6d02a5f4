//! The serve loop against a real nats-server, with a door of the test's own: what holds for
//! every door holds here (concurrency, admin signatures before any handler, bounded
//! buffers).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use piggybank_testkit::NatsServer;

use super::*;
use crate::admin_auth::{AdminSigner, AdminVerifier, MemoryNonces, Signed};

/// A door whose classification and handler are the test's.
struct TestDoor<C, H> {
    classify: C,
    handle: H,
}

impl<C, H> Door for TestDoor<C, H>
where
    C: Fn(&Message) -> Option<Class> + Send + Sync + 'static,
    H: Fn(Message) -> BoxFuture<'static, Option<Reply>> + Send + Sync + 'static,
{
    type Op = ();

    fn classify(&self, msg: &Message) -> Option<(Class, ())> {
        (self.classify)(msg).map(|class| (class, ()))
    }

    fn handle(self: Arc<Self>, _: (), msg: Message) -> BoxFuture<'static, Option<Reply>> {
        (self.handle)(msg)
    }

    fn refuse(&self, _: &(), _: &Message, refused: &LoopRefusal) -> Reply {
        Reply::plain(format!("refused {}", refused.code()))
    }

    fn too_large(_: &Reply, message: String) -> Reply {
        Reply::plain(message)
    }
}

fn endpoint<C, H>(subject: &str, queue_group: Option<&str>, classify: C, handle: H) -> Endpoint
where
    C: Fn(&Message) -> Option<Class> + Send + Sync + 'static,
    H: Fn(Message) -> BoxFuture<'static, Option<Reply>> + Send + Sync + 'static,
{
    let door = Arc::new(TestDoor { classify, handle });
    Endpoint::new(
        "test",
        subject.to_string(),
        queue_group.map(str::to_string),
        door,
    )
}

fn config(max_in_flight: usize, admin: Option<Arc<AdminVerifier>>) -> ServeConfig {
    ServeConfig {
        max_in_flight,
        max_request_bytes: crate::config::DEFAULT_MAX_REQUEST_BYTES,
        reply_prefixes: Vec::new(),
        app_inboxes: Vec::new(),
        admin,
        instance_id: "test".into(),
        drain_timeout: Duration::from_secs(5),
        auditor: Arc::new(crate::audit::Auditor::disabled("test")),
        on_serving: None,
    }
}

async fn connection(nats: &NatsServer, capacity: usize) -> ServeConnection {
    let options = async_nats::ConnectOptions::new();
    ServeConnection::connect(&nats.url(), options, capacity, "test")
        .await
        .expect("connect the serve loop's connection")
}

/// The sample handles one request at a time; here a handler that takes 2 s on one subject
/// must not delay the others, and the drain at shutdown still answers it.
#[tokio::test]
async fn one_slow_request_does_not_hold_up_others() {
    let nats = NatsServer::start();
    let server = connection(&nats, 64).await;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let endpoint = endpoint(
        "concurrency.test.>",
        Some("q"),
        |_| Some(Class::open()),
        |msg: Message| {
            Box::pin(async move {
                if msg.subject.as_str().ends_with(".slow") {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                Some(Reply::plain("ok"))
            })
        },
    );
    let serving = tokio::spawn(serve(server, vec![endpoint], config(64, None), async {
        let _ = rx.await;
    }));
    let client = nats.client().await;
    // Wait for the subscription.
    while client
        .request("concurrency.test.fast", "".into())
        .await
        .is_err()
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let slow_client = client.clone();
    let slow = tokio::spawn(async move {
        slow_client
            .request("concurrency.test.slow", "".into())
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let fast: Vec<_> = (0..20)
        .map(|_| client.request("concurrency.test.fast", "".into()))
        .collect();
    for r in futures::future::join_all(fast).await {
        assert_eq!(r.unwrap().payload.as_ref(), b"ok");
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1000),
        "fast requests waited {took:?} behind a slow one"
    );
    assert!(
        !slow.is_finished(),
        "the slow request should still be in flight"
    );
    // Shutdown drains: the in-flight slow request still gets its reply.
    tx.send(()).unwrap();
    assert_eq!(slow.await.unwrap().unwrap().payload.as_ref(), b"ok");
    serving.await.unwrap().unwrap();
}

/// An unsigned admin request never reaches a handler (the door's refusal answers it), and a
/// replay of a signed one neither; a signed one does.
#[tokio::test]
async fn the_serve_loop_checks_admin_signatures_before_any_handler() {
    let nats = NatsServer::start();
    let seed = AdminSigner::generate_seed();
    let signer = AdminSigner::from_seed(&seed).unwrap();
    let verifier =
        AdminVerifier::with_nonce_store(&[signer.public_key()], Arc::new(MemoryNonces::default()))
            .unwrap();
    let handled = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&handled);
    let endpoint = endpoint(
        "gate.test.>",
        None,
        |msg| {
            Some(Class::from(match msg.subject.as_str() {
                "gate.test.admin" => Access::Admin(Signed::Once),
                _ => Access::Open,
            }))
        },
        move |_| {
            let counter = Arc::clone(&counter);
            Box::pin(async move {
                counter.fetch_add(1, Ordering::SeqCst);
                Some(Reply::plain("handled"))
            })
        },
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let config = config(8, Some(Arc::new(verifier)));
    let serving = tokio::spawn(serve(
        connection(&nats, 8).await,
        vec![endpoint],
        config,
        async {
            let _ = rx.await;
        },
    ));
    let client = nats.client().await;
    while client.request("gate.test.open", "".into()).await.is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let opened = handled.load(Ordering::SeqCst);
    let unsigned = client.request("gate.test.admin", "x".into()).await.unwrap();
    assert_eq!(unsigned.payload.as_ref(), b"refused 403");
    assert_eq!(
        handled.load(Ordering::SeqCst),
        opened,
        "an unsigned admin request was handled"
    );

    let headers = signer.sign("gate.test.admin", b"x");
    let signed = client
        .request_with_headers("gate.test.admin", headers.clone(), "x".into())
        .await
        .unwrap();
    assert_eq!(signed.payload.as_ref(), b"handled");
    // The same signed request again is a replay.
    let replay = client
        .request_with_headers("gate.test.admin", headers, "x".into())
        .await
        .unwrap();
    assert_eq!(replay.payload.as_ref(), b"refused 403");
    assert_eq!(handled.load(Ordering::SeqCst), opened + 1);
    tx.send(()).unwrap();
    serving.await.unwrap().unwrap();
}

/// Attack: with every `max_in_flight` permit taken (here by requests whose handler waits),
/// flood a door with more requests: they wait in the subscription's buffer, which
/// async-nats sizes at 65,536 messages by default. Safe: on the loop's own connection each
/// subscription buffers at most its capacity (`max_in_flight`); the client drops the rest,
/// counts them, and the loop serves again once its permits free up. (The intake empties the
/// subscription as messages come, so what is dropped is dropped by the door's full lane.)
#[tokio::test(flavor = "multi_thread")]
async fn a_front_door_buffers_no_more_than_its_capacity_while_its_permits_are_taken() {
    let nats = NatsServer::start();
    let max_in_flight = 2;
    let connection = connection(&nats, max_in_flight).await;
    assert_eq!(connection.capacity(), max_in_flight);
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let handled = Arc::new(AtomicUsize::new(0));
    let (waiting, counted) = (Arc::clone(&gate), Arc::clone(&handled));
    let endpoint = endpoint(
        "flood.test.>",
        None,
        |_| Some(Class::open().with_value()),
        move |_| {
            let (gate, handled) = (Arc::clone(&waiting), Arc::clone(&counted));
            Box::pin(async move {
                if let Ok(permit) = gate.acquire().await {
                    permit.forget();
                }
                handled.fetch_add(1, Ordering::SeqCst);
                Some(Reply::plain("ok"))
            })
        },
    );
    let mut config = config(max_in_flight, None);
    config.max_request_bytes = 1024;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(serve(connection.clone(), vec![endpoint], config, async {
        let _ = stopped.await;
    }));
    let client = nats.client().await;
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(format!("{inbox}.>")).await.unwrap();
    // The loop subscribes a moment after it starts: one request answered is the sign.
    gate.add_permits(1);
    let first = client.request("flood.test.first", "".into());
    tokio::time::timeout(Duration::from_secs(10), first)
        .await
        .expect("the loop answers")
        .unwrap();

    let flood = 300;
    let body = bytes::Bytes::from(vec![b'x'; 100_000]);
    for i in 0..flood {
        client
            .publish_with_reply("flood.test.x", format!("{inbox}.{i}"), body.clone())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    // Everything has reached the backend's client: it holds what it buffers.
    tokio::time::sleep(Duration::from_millis(500)).await;
    gate.add_permits(flood);
    let mut answered = 0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(2), replies.next()).await {
        answered += 1;
    }
    // In flight, held by the lane's runner while it waits for a permit, queued in the lane,
    // and buffered in the subscription.
    let bound = max_in_flight + 1 + max_in_flight + connection.capacity();
    assert!(
        answered <= bound,
        "{answered} of {flood} flood requests were kept and answered (at most {bound})"
    );
    let shed = connection.shed().by_reason();
    assert!(
        shed["lane_full"] + shed["slow_consumer"] > 0,
        "{} requests were dropped but none counted: {shed:?}",
        flood - answered
    );
    // It still serves.
    let after = client.request("flood.test.after", "".into());
    let after = tokio::time::timeout(Duration::from_secs(10), after).await;
    assert!(matches!(after, Ok(Ok(_))), "no answer after the flood");
    stop.send(()).unwrap();
    serving.await.unwrap().unwrap();
}
