//! The compute server example answers correctly under every policy, places calls where the
//! policy says, and refuses bad requests with a reason.

#[allow(dead_code)]
#[path = "../examples/compute_server.rs"]
mod compute_server;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use compute_server::{ComputeConfig, Dispatch, Policy, ServerStats};
use offload::Scheduler;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[test]
fn compute_parse_refuses_bad_requests_with_a_reason() {
    assert!(
        compute_server::parse(b"primes x")
            .unwrap_err()
            .starts_with("ERR primes wants a number")
    );
    assert!(
        compute_server::parse(b"primes 99999999999")
            .unwrap_err()
            .contains("at most")
    );
    assert!(
        compute_server::parse(b"launch rockets")
            .unwrap_err()
            .starts_with("ERR unknown request")
    );
    assert!(
        compute_server::parse(&[0xff, 0xfe])
            .unwrap_err()
            .contains("UTF-8")
    );
    assert_eq!(compute_server::sum_primes(10), 2 + 3 + 5 + 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compute_every_policy_answers_the_same_and_places_as_it_says() {
    let sched = Scheduler::builder()
        .cpu_workers(1)
        .attach()
        .expect("in a runtime");
    for policy in [Policy::Inline, Policy::Offload, Policy::Adaptive] {
        let d = Dispatch::new(sched.clone(), policy);
        for _ in 0..3 {
            assert_eq!(d.answer(b"primes 100").await, "1060");
            assert_eq!(
                d.answer(b"hash 0").await,
                format!("{:016x}", compute_server::hash_bytes(0))
            );
            assert_eq!(d.answer(b"echo hi there").await, "hi there");
            assert!(d.answer(b"nope").await.starts_with("ERR"));
        }
        let counts = d.tier_counts();
        let (inline, threads) = (counts["inline"], counts["threads"]);
        assert_eq!(
            inline + threads,
            6,
            "{policy:?}: every primes/hash call placed once"
        );
        match policy {
            Policy::Inline => assert_eq!(threads, 0),
            Policy::Offload => assert_eq!(inline, 0),
            Policy::Adaptive => {}
        }
    }
    sched.close(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compute_server_serves_pipelined_requests_on_loopback() {
    let sched = Scheduler::builder()
        .cpu_workers(1)
        .attach()
        .expect("in a runtime");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stats = Arc::new(ServerStats::default());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(compute_server::serve(
        sched.clone(),
        listener,
        Arc::new(Dispatch::new(sched.clone(), Policy::Adaptive)),
        ComputeConfig::default(),
        stats.clone(),
        async {
            let _ = rx.await;
        },
    ));
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    // All at once, then the replies in order.
    let asks = [
        "primes 1000",
        "echo a",
        "hash 10",
        "primes 2",
        "bogus",
        "echo b",
    ];
    let mut batch = String::new();
    for a in asks {
        batch.push_str(a);
        batch.push('\n');
    }
    wr.write_all(batch.as_bytes()).await.expect("write");
    let mut replies = Vec::new();
    for _ in asks {
        let mut s = String::new();
        tokio::time::timeout(Duration::from_secs(30), rd.read_line(&mut s))
            .await
            .expect("a reply within the limit")
            .expect("read");
        replies.push(s.trim_end().to_string());
    }
    assert_eq!(replies[0], compute_server::sum_primes(1000).to_string());
    assert_eq!(replies[1], "a");
    assert_eq!(
        replies[2],
        format!("{:016x}", compute_server::hash_bytes(10))
    );
    assert_eq!(replies[3], "0");
    assert!(replies[4].starts_with("ERR unknown request"));
    assert_eq!(replies[5], "b");
    let _ = tx.send(());
    server.await.expect("listener");
    // Counted after each reply is written; the server has stopped, so all are counted now.
    assert_eq!(stats.lines.load(Ordering::Relaxed), 6);
    sched.close(Duration::from_secs(2)).await;
}
