//! The echo server example's limits, on loopback: every byte comes back to many clients at once,
//! a slow client is dropped at the idle timeout while others are served, the connection cap is
//! enforced with a reason, and shutdown says goodbye. (The long-line memory bound is in
//! `examples_echo_memory.rs`, alone in its process so that its RSS reading is clean.)

#[allow(dead_code)]
#[path = "../examples/echo_server.rs"]
mod echo_server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use echo_server::{EchoConfig, ServerStats};
use offload::Scheduler;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Bound on any single wait in these tests: a broken server fails the test instead of hanging.
const LIMIT: Duration = Duration::from_secs(30);

struct Running {
    addr: SocketAddr,
    stats: Arc<ServerStats>,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
    sched: Scheduler,
}

impl Running {
    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(LIMIT, self.server)
            .await
            .expect("the server stops within the limit")
            .expect("the listener task does not panic");
        self.sched
            .shutdown_timeout(offload::ShutdownMode::Drain, Duration::from_secs(2))
            .await;
    }
}

async fn start(cfg: EchoConfig) -> Running {
    let sched = Scheduler::builder()
        .cpu_workers(1)
        .attach()
        .expect("inside a runtime");
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let stats = Arc::new(ServerStats::default());
    let (tx, rx) = oneshot::channel();
    let server = tokio::spawn(echo_server::serve(
        sched.clone(),
        listener,
        cfg,
        stats.clone(),
        async {
            let _ = rx.await;
        },
    ));
    Running {
        addr,
        stats,
        stop: Some(tx),
        server,
        sched,
    }
}

async fn read_reply(rd: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> String {
    let mut s = String::new();
    tokio::time::timeout(LIMIT, rd.read_line(&mut s))
        .await
        .expect("a reply within the limit")
        .expect("read");
    s
}

async fn roundtrip(
    stream: TcpStream,
    text: &str,
) -> (
    BufReader<tokio::net::tcp::OwnedReadHalf>,
    tokio::net::tcp::OwnedWriteHalf,
    String,
) {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    wr.write_all(format!("{text}\n").as_bytes())
        .await
        .expect("write");
    let got = read_reply(&mut rd).await;
    (rd, wr, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_200_concurrent_clients_get_every_byte_back() {
    let srv = start(EchoConfig {
        max_conns: 256,
        ..EchoConfig::default()
    })
    .await;
    let addr = srv.addr;
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..200usize {
        clients.spawn(async move {
            let stream = TcpStream::connect(addr).await.expect("connect");
            let (mut rd, mut wr) = stream.into_split();
            // Everything this client sends, in order; lines of varied length and content.
            let mut sent = Vec::new();
            for i in 0..20usize {
                let len = (c * 31 + i * 257) % 3000;
                let body: Vec<u8> = (0..len).map(|k| b'!' + ((c + i + k) % 90) as u8).collect();
                sent.extend_from_slice(&body);
                sent.push(b'\n');
            }
            let expected = sent.clone();
            let writer = tokio::spawn(async move {
                for chunk in sent.chunks(1000) {
                    wr.write_all(chunk).await.expect("write");
                }
                wr.shutdown().await.expect("half-close");
            });
            let mut got = Vec::new();
            tokio::time::timeout(LIMIT, rd.read_to_end(&mut got))
                .await
                .expect("the echo ends within the limit")
                .expect("read");
            writer.await.expect("writer");
            assert_eq!(got.len(), expected.len(), "client {c}: byte count");
            assert!(got == expected, "client {c}: bytes differ");
            got.len()
        });
    }
    let mut bytes = 0;
    while let Some(r) = clients.join_next().await {
        bytes += r.expect("client task");
    }
    assert_eq!(srv.stats.accepted.load(Ordering::Relaxed), 200);
    assert_eq!(srv.stats.lines.load(Ordering::Relaxed), 200 * 20);
    assert_eq!(srv.stats.bytes_out.load(Ordering::Relaxed), bytes as u64);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_slow_client_is_dropped_at_idle_timeout_while_others_are_served() {
    let idle = Duration::from_millis(1500);
    let srv = start(EchoConfig {
        idle_timeout: idle,
        ..EchoConfig::default()
    })
    .await;
    let addr = srv.addr;

    // One byte a second, never a newline.
    let slow = tokio::spawn(async move {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let t0 = Instant::now();
        let (rd, mut wr) = stream.into_split();
        let trickle = tokio::spawn(async move {
            for _ in 0..30 {
                if wr.write_all(b"z").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let mut rd = BufReader::new(rd);
        let reply = read_reply(&mut rd).await;
        let waited = t0.elapsed();
        trickle.abort();
        (reply, waited)
    });

    // Meanwhile, five clients send a line every 100 ms for 3 s and get each one back.
    let mut fast = tokio::task::JoinSet::new();
    for c in 0..5 {
        fast.spawn(async move {
            let stream = TcpStream::connect(addr).await.expect("connect");
            let (rd, mut wr) = stream.into_split();
            let mut rd = BufReader::new(rd);
            for i in 0..30 {
                let text = format!("fast {c} {i}");
                wr.write_all(format!("{text}\n").as_bytes())
                    .await
                    .expect("write");
                assert_eq!(read_reply(&mut rd).await.trim_end(), text);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
    while let Some(r) = fast.join_next().await {
        r.expect("fast client served throughout");
    }

    let (reply, waited) = slow.await.expect("slow client task");
    assert!(reply.starts_with("ERR idle timeout"), "got {reply:?}");
    assert!(
        waited >= idle,
        "dropped after {waited:?}, before the idle timeout {idle:?}"
    );
    assert!(waited < LIMIT, "dropped after {waited:?}");
    assert_eq!(srv.stats.dropped_idle.load(Ordering::Relaxed), 1);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_max_connections_is_enforced_and_refused_client_told_why() {
    let srv = start(EchoConfig {
        max_conns: 3,
        ..EchoConfig::default()
    })
    .await;
    let mut open = Vec::new();
    for i in 0..3 {
        let stream = TcpStream::connect(srv.addr).await.expect("connect");
        let (rd, wr, got) = roundtrip(stream, &format!("hello {i}")).await;
        assert_eq!(got.trim_end(), format!("hello {i}"));
        open.push((rd, wr));
    }

    // The fourth is told why and closed.
    let stream = TcpStream::connect(srv.addr).await.expect("connect");
    let (rd, _wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let reply = read_reply(&mut rd).await;
    assert!(
        reply.starts_with("ERR server full: 3 connections"),
        "got {reply:?}"
    );
    let mut rest = Vec::new();
    tokio::time::timeout(LIMIT, rd.read_to_end(&mut rest))
        .await
        .expect("closed within the limit")
        .expect("read to EOF");
    assert!(rest.is_empty());
    assert_eq!(srv.stats.refused_full.load(Ordering::Relaxed), 1);

    // Closing one makes room again.
    drop(open.pop());
    let t0 = Instant::now();
    while srv.stats.active.load(Ordering::Relaxed) > 2 {
        assert!(
            t0.elapsed() < LIMIT,
            "the closed client's handler never ended"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stream = TcpStream::connect(srv.addr).await.expect("connect");
    let (_rd, _wr, got) = roundtrip(stream, "room again").await;
    assert_eq!(got.trim_end(), "room again");
    drop(open);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_shutdown_says_bye_to_open_clients() {
    let srv = start(EchoConfig::default()).await;
    let stream = TcpStream::connect(srv.addr).await.expect("connect");
    let (mut rd, _wr, got) = roundtrip(stream, "before").await;
    assert_eq!(got.trim_end(), "before");
    let stats = srv.stats.clone();
    srv.stop().await;
    let bye = read_reply(&mut rd).await;
    assert_eq!(bye.trim_end(), "BYE server shutting down");
    assert_eq!(stats.active.load(Ordering::Relaxed), 0);
}

/// Sends `sent` (complete lines) and reads back as many bytes.
async fn echo_bytes(addr: SocketAddr, sent: &[u8]) -> Vec<u8> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn({
        let sent = sent.to_vec();
        async move {
            wr.write_all(&sent).await.expect("write");
            wr
        }
    });
    let mut got = vec![0u8; sent.len()];
    tokio::time::timeout(LIMIT, rd.read_exact(&mut got))
        .await
        .expect("every byte back within the limit")
        .expect("read");
    drop(writer.await);
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_is_byte_transparent_cr_crlf_and_binary() {
    let srv = start(EchoConfig::default()).await;
    let sent: &[u8] = b"abc\r\nplain\n\r\nbare\rcr inside\nnot utf-8 \xff\xfe\x00\r\n\r\r\n";
    let got = echo_bytes(srv.addr, sent).await;
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(sent),
        "every line comes back exactly, its terminator included"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_line_limit_does_not_count_the_terminator() {
    const MAX: usize = 65_536;
    let srv = start(EchoConfig {
        max_line: MAX,
        ..EchoConfig::default()
    })
    .await;
    for end in [&b"\n"[..], b"\r\n"] {
        let mut sent = vec![b'z'; MAX];
        sent.extend_from_slice(end);
        let got = echo_bytes(srv.addr, &sent).await;
        assert!(
            got == sent,
            "a {MAX}-byte line ended by {end:?} comes back whole"
        );
    }
    // One byte more is refused, whatever ends it.
    let stream = TcpStream::connect(srv.addr).await.expect("connect");
    let mut sent = vec![b'z'; MAX + 1];
    sent.extend_from_slice(b"\r\n");
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let _ = wr.write_all(&sent).await;
    let reply = read_reply(&mut rd).await;
    assert!(reply.starts_with("ERR line too long"), "got {reply:?}");
    assert_eq!(srv.stats.dropped_too_long.load(Ordering::Relaxed), 1);
    srv.stop().await;
}
