//! The echo server refuses a 10 MB line without holding more than its line limit of it. Alone in
//! its test binary so that the resident-set reading is not disturbed by other tests.

#[allow(dead_code)]
#[path = "../examples/echo_server.rs"]
mod echo_server;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use echo_server::{EchoConfig, ServerStats};
use offload::Scheduler;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const LIMIT: Duration = Duration::from_secs(30);

/// Resident set size of this process, in bytes (Linux: `/proc/self/statm`, in pages).
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_10mb_line_is_refused_without_buffering_it() {
    const MAX_LINE: usize = 1 << 20;
    const SENT: usize = 10 * 1000 * 1000;
    let sched = Scheduler::builder()
        .cpu_workers(1)
        .attach()
        .expect("inside a runtime");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stats = Arc::new(ServerStats::default());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(echo_server::serve(
        sched.clone(),
        listener,
        EchoConfig {
            max_line: MAX_LINE,
            ..EchoConfig::default()
        },
        stats.clone(),
        async {
            let _ = rx.await;
        },
    ));

    // Warm up: one ordinary line, so that runtime and connection set-up are already counted.
    let warm = TcpStream::connect(addr).await.expect("connect");
    let (warm_rd, mut warm_wr) = warm.into_split();
    let mut warm_rd = BufReader::new(warm_rd);
    warm_wr.write_all(b"warm\n").await.expect("write");
    let mut s = String::new();
    warm_rd.read_line(&mut s).await.expect("read");
    assert_eq!(s, "warm\n");
    let before = rss_bytes();

    // 10 MB without a newline, from one fixed 64 KB buffer; the server must refuse it.
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        let chunk = vec![b'a'; 64 * 1024];
        let mut sent = 0;
        while sent < SENT {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
            sent += chunk.len();
        }
        sent
    });
    let mut rd = BufReader::new(rd);
    let mut reply = String::new();
    tokio::time::timeout(LIMIT, rd.read_line(&mut reply))
        .await
        .expect("a refusal within the limit")
        .expect("read");
    assert!(reply.starts_with("ERR line too long"), "got {reply:?}");
    let _ = tokio::time::timeout(LIMIT, writer).await;
    let after = rss_bytes();

    assert_eq!(stats.dropped_too_long.load(Ordering::Relaxed), 1);
    let high = stats.buffer_high_water.load(Ordering::Relaxed);
    assert!(
        high <= MAX_LINE + 2,
        "line buffer reached {high} B, limit {MAX_LINE} B and a CRLF"
    );
    if let (Some(b), Some(a)) = (before, after) {
        let grew = a.saturating_sub(b);
        // The line limit, plus 1 MiB for the allocator's and runtime's own noise: far below the
        // 10 MB a buffered line would cost.
        assert!(
            grew <= (MAX_LINE + (1 << 20)) as u64,
            "resident set grew by {grew} B while refusing a {SENT} B line"
        );
    }

    // The warm client is still served.
    warm_wr.write_all(b"still here\n").await.expect("write");
    s.clear();
    tokio::time::timeout(LIMIT, warm_rd.read_line(&mut s))
        .await
        .expect("served within the limit")
        .expect("read");
    assert_eq!(s, "still here\n");
    let _ = tx.send(());
    let _ = server.await;
    sched
        .shutdown_timeout(offload::ShutdownMode::Drain, Duration::from_secs(2))
        .await;
}
