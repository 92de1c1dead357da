//! The HTTP example (axum) on loopback, driven by a real HTTP client (hyper-util): every route
//! answers correctly under every policy, bad arguments get 400, a request past the CPU queue
//! bound gets 503 with `Retry-After`; and the service run as its own process (this test binary
//! re-run with its arguments) stops on SIGTERM, exit 0.

#[allow(dead_code)]
#[path = "../examples/http_server.rs"]
mod http_server;

mod examples_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use examples_support::LIMIT;
use http_body_util::{BodyExt, Empty};
use http_server::{Admission, Dispatch, Policy};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use offload::Scheduler;

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// GETs `path` from `addr`: the status code and the body.
async fn get(client: &HttpClient, addr: SocketAddr, path: &str) -> (u16, String, Option<String>) {
    let uri: axum::http::Uri = format!("http://{addr}{path}").parse().expect("a valid URI");
    let resp = tokio::time::timeout(LIMIT, client.get(uri))
        .await
        .expect("a response within the limit")
        .expect("a response");
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = tokio::time::timeout(LIMIT, resp.into_body().collect())
        .await
        .expect("the body within the limit")
        .expect("the body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned(), retry)
}

/// Serves the app with `dispatch` in this runtime until the returned sender is used.
async fn start(
    sched: &Scheduler,
    dispatch: Arc<Dispatch>,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<bool>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let sched2 = sched.clone();
    let server = tokio::spawn(async move {
        let shutdown = async {
            let _ = rx.await;
        };
        http_server::serve(
            &sched2,
            listener,
            http_server::app(dispatch),
            shutdown,
            Duration::from_secs(5),
        )
        .await
    });
    (addr, tx, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_every_route_answers_under_every_policy() {
    let sched = Scheduler::builder()
        .cpu_workers(1)
        .attach()
        .expect("in a runtime");
    let client = http_client();
    for policy in [Policy::Inline, Policy::Offload, Policy::Adaptive] {
        let (addr, stop, server) =
            start(&sched, Arc::new(Dispatch::new(sched.clone(), policy))).await;
        for _ in 0..3 {
            let (s, body, _) = get(&client, addr, "/echo?text=hello%20there").await;
            assert_eq!((s, body.as_str()), (200, "hello there"), "{policy:?}");
            let (s, body, _) = get(&client, addr, "/primes?n=1000").await;
            assert_eq!((s, body), (200, "76127".to_string()), "{policy:?}");
            let (s, body, _) = get(&client, addr, "/primes?n=100000").await;
            assert_eq!((s, body), (200, "454396537".to_string()), "{policy:?}");
            let (s, body, _) = get(&client, addr, "/hash?bytes=1000").await;
            let want = format!("{:016x}", http_server::hash_bytes(1000));
            assert_eq!((s, body), (200, want), "{policy:?}");
        }
        let (s, body, _) = get(&client, addr, "/").await;
        assert_eq!(s, 200);
        assert!(body.contains("/primes?n=N"), "{body}");
        let (s, body, _) = get(&client, addr, "/stats").await;
        assert_eq!(s, 200);
        assert!(
            body.starts_with(&format!("policy {}", policy.name())),
            "{body}"
        );
        let (s, body, _) = get(&client, addr, "/primes?n=99999999999").await;
        assert_eq!(s, 400, "{body}");
        assert!(body.contains("at most"), "{body}");
        let (s, _, _) = get(&client, addr, "/primes?n=many").await;
        assert_eq!(s, 400);
        let (s, _, _) = get(&client, addr, "/hash").await;
        assert_eq!(s, 400);
        let (s, _, _) = get(&client, addr, "/nowhere").await;
        assert_eq!(s, 404);
        let _ = stop.send(());
        let finished = server.await.expect("the server task").expect("serve");
        assert!(finished, "{policy:?}: stopped within the grace period");
    }
    sched
        .shutdown_timeout(offload::ShutdownMode::Drain, Duration::from_secs(5))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_past_the_cpu_queue_bound_gets_503_with_retry_after() {
    let sched = Scheduler::builder()
        .cpu_workers(1)
        .attach()
        .expect("in a runtime");
    // A bound far under one long request: the first one gets in (the whole bound), the others
    // meanwhile are shed.
    let admission = Admission {
        queued_work: Duration::from_millis(1),
        deadline: Duration::from_secs(20),
    };
    let dispatch = Arc::new(Dispatch::with_admission(
        sched.clone(),
        Policy::Offload,
        admission,
    ));
    let (addr, stop, server) = start(&sched, dispatch).await;
    let client = http_client();
    let mut asks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let client = client.clone();
        asks.spawn(async move { get(&client, addr, "/primes?n=2000000").await });
    }
    let (mut ok, mut shed) = (0, 0);
    while let Some(r) = asks.join_next().await {
        let (s, body, retry) = r.expect("a client");
        match s {
            200 => {
                assert_eq!(body, "142913828922");
                ok += 1;
            }
            503 => {
                assert!(body.starts_with("ERR busy, retry"), "{body}");
                assert_eq!(retry.as_deref(), Some("1"));
                shed += 1;
            }
            _ => panic!("status {s}: {body}"),
        }
    }
    assert!(ok >= 1 && shed >= 1, "{ok} answered, {shed} shed");
    let _ = stop.send(());
    let _ = server.await;
    sched
        .shutdown_timeout(offload::ShutdownMode::Drain, Duration::from_secs(5))
        .await;
}

child_server!(
    http_server,
    child_http_server,
    "OFFLOAD_TEST_HTTP_ARGS",
    "http server on http://"
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_sigterm_stops_the_service_exit_0() {
    let server = start_server("--addr 127.0.0.1:0 --cpu-workers 1", None);
    let client = http_client();
    let (s, body, _) = get(&client, server.addr, "/primes?n=1000").await;
    assert_eq!((s, body.as_str()), (200, "76127"));
    // A request in flight when SIGTERM comes is answered.
    let addr = server.addr;
    let slow = tokio::spawn({
        let client = client.clone();
        async move { get(&client, addr, "/primes?n=2000000").await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, printed) = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .expect("join");
    let (s, body, _) = slow.await.expect("the slow request");
    assert_eq!((s, body.as_str()), (200, "142913828922"));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );
    let text = printed.join("\n");
    assert!(text.contains("SIGTERM: shutting down"), "printed: {text}");
}
