//! The provider: HostData parsing and its start.

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
    serve_invocations(invocations, Duration::from_secs(5), stopping).await;
    assert_eq!(done.load(std::sync::atomic::Ordering::SeqCst), 5);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

/// Counts itself dropped.
struct DropGuard(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test]
async fn an_invocation_over_the_time_limit_is_dropped_and_shutdown_does_not_wait() {
    let dropped = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let guard = DropGuard(Arc::clone(&dropped));
    let never: std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>> =
        Box::pin(async move {
            let _held = guard;
            std::future::pending::<()>().await;
            Ok(())
        });
    let stream = futures::stream::iter([Ok(never)]).chain(futures::stream::pending());
    let invocations: wasmcloud_provider_sdk::provider::InvocationStreams =
        vec![("piggybank:secrets/admin@0.2.0", "status", Box::pin(stream))];
    let started = std::time::Instant::now();
    let served = serve_invocations(
        invocations,
        Duration::from_millis(100),
        tokio::time::sleep(Duration::from_millis(20)),
    );
    tokio::time::timeout(Duration::from_secs(5), served)
        .await
        .expect("shutdown waited on a call that never completes");
    assert_eq!(dropped.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(started.elapsed() >= Duration::from_millis(100));
}

#[test]
fn valid_host_data_is_accepted() {
    let json = r#"{"lattice_rpc_prefix":"default","provider_key":"VP","link_definitions":[],"env_values":{}}"#;
    let host = parse_host_data(encoded(json).as_bytes()).unwrap();
    assert_eq!(host.provider_key, "VP");
}
