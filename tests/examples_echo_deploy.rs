//! The echo server as people deploy it, run as its own process (this test binary re-run with
//! the server's arguments): SIGTERM stops it gracefully (every client reads `BYE`, a client
//! that never reads is dropped after the grace period, exit 0, and no word of CPU work), and
//! under a soft fd limit of 1,024 with 1,100 clients every client is served or told
//! `ERR server full`, none left waiting.

#[allow(dead_code)]
#[path = "../examples/echo_server.rs"]
mod echo_server;

mod examples_support;

use std::net::SocketAddr;
use std::time::Duration;

use examples_support::LIMIT;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

child_server!(
    echo_server,
    child_echo_server,
    "OFFLOAD_TEST_ECHO_ARGS",
    "echo server on "
);

async fn client(
    addr: SocketAddr,
) -> (
    BufReader<tokio::net::tcp::OwnedReadHalf>,
    tokio::net::tcp::OwnedWriteHalf,
) {
    let stream = tokio::time::timeout(LIMIT, TcpStream::connect(addr))
        .await
        .expect("connect within the limit")
        .expect("connect");
    let (rd, wr) = stream.into_split();
    (BufReader::new(rd), wr)
}

async fn ask(
    rd: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    text: &str,
) -> String {
    let _ = wr.write_all(format!("{text}\n").as_bytes()).await;
    let mut s = String::new();
    let _ = tokio::time::timeout(LIMIT, rd.read_line(&mut s)).await;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_sigterm_says_bye_and_exits_0() {
    let server = start_server("--addr 127.0.0.1:0", None);
    let mut clients = Vec::new();
    for i in 0..3 {
        let (mut rd, mut wr) = client(server.addr).await;
        assert_eq!(
            ask(&mut rd, &mut wr, &format!("hi {i}")).await,
            format!("hi {i}\n")
        );
        clients.push((rd, wr));
    }
    // A client that sends and never reads: its handler is stuck writing the echo back when
    // SIGTERM comes, and is stopped after the grace period.
    let (_never_read, mut wr) = client(server.addr).await;
    let flooder = tokio::spawn(async move {
        let chunk = vec![b'x'; 64 * 1024];
        let line = [&chunk[..], b"\n"].concat();
        while tokio::time::timeout(LIMIT, wr.write_all(&line))
            .await
            .is_ok_and(|r| r.is_ok())
        {}
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, printed) = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .expect("join");
    for (rd, _) in &mut clients {
        let mut s = String::new();
        let _ = tokio::time::timeout(LIMIT, rd.read_line(&mut s)).await;
        assert_eq!(s.trim_end(), "BYE server shutting down");
    }
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );
    let text = printed.join("\n");
    assert!(text.contains("SIGTERM: shutting down"), "printed: {text}");
    assert!(
        !text.contains("CPU work"),
        "the echo server has no CPU work to speak of: {text}"
    );
    flooder.abort();
}

/// Raises this process's soft fd limit to the hard one (the clients need 1,100 descriptors).
/// Returns the new limit.
fn raise_own_fd_limit() -> u64 {
    let (_, hard) = echo_server::common::fds::nofile_limit().expect("getrlimit");
    echo_server::common::fds::set_nofile_soft(hard).expect("setrlimit");
    hard
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_under_1024_fds_every_refused_client_is_told_server_full() {
    const CLIENTS: usize = 1_100;
    let own = raise_own_fd_limit();
    if own < CLIENTS as u64 + 100 {
        eprintln!("skipped: this process may open {own} descriptors, the test needs {CLIENTS}");
        return;
    }
    let mut server = start_server("--addr 127.0.0.1:0", Some(1024));
    let _ = &mut server;
    let addr = server.addr;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..CLIENTS {
        tasks.spawn(async move {
            let (mut rd, mut wr) = client(addr).await;
            let got = ask(&mut rd, &mut wr, &format!("client {i}")).await;
            let served = got == format!("client {i}\n");
            // A served client keeps its connection until every client has its answer.
            (got, served.then_some((rd, wr)))
        });
    }
    let (mut served, mut refused, mut other) = (Vec::new(), 0usize, Vec::new());
    while let Some(r) = tasks.join_next().await {
        let (got, conn) = r.expect("a client task");
        if let Some(c) = conn {
            served.push(c);
        } else if got.starts_with("ERR server full") {
            refused += 1;
        } else {
            other.push(got);
        }
    }
    assert!(
        other.is_empty(),
        "{} clients got neither an echo nor ERR server full: {:?}",
        other.len(),
        &other[..other.len().min(5)]
    );
    assert_eq!(served.len() + refused, CLIENTS);
    assert!(
        refused >= CLIENTS - 1024,
        "{refused} refused, {} served",
        served.len()
    );
    let (status, printed) = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .expect("join");
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );
    let text = printed.join("\n");
    assert!(
        text.matches("out of descriptors; backing off").count() <= 1,
        "EMFILE is logged once: {text}"
    );
    drop(served);
}
