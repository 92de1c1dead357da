//! What a hand-off costs: one trivial task at a time (`roundtrip`), and 10,000 at once
//! (`burst`), on each tier and on the peers, in the same run.
//!
//! `roundtrip/processes` is one task through a one-worker `ProcessPool`;
//! `roundtrip/pipe_pingpong` is its raw floor: this binary started again as a child that
//! echoes 8-byte messages over its stdin/stdout pipes. The pool's round trip has the same
//! shape (two pipes; the awaiting caller reads its own answer: see
//! `src/tier/process/README.md`), so compare the two within one run. On a 2-core machine
//! both depend on whether parent and child share a CPU (another busy core makes them share:
//! same-CPU switches, the ping-pong ~7 µs here) or not (cross-CPU wake-ups, ~13 µs);
//! `taskset -c 1 cargo bench ...` forces the first case.
//!
//! `cargo bench --bench overhead`

use std::hint::black_box;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use offload::{Executor, ProcessPool, RemoteFn, ShutdownMode};

static ADD1: RemoteFn<u64, u64> = RemoteFn::new("add1", |x| x + 1);

/// Set in the child of `pipe_pingpong`.
const PINGPONG_CHILD: &str = "OFFLOAD_BENCH_PINGPONG_CHILD";

const BURST: usize = 10_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime starts")
}

fn roundtrip(c: &mut Criterion) {
    let rt = runtime();
    let inline = Executor::inline();
    let threads = Executor::threads(1).expect("one worker thread starts");
    let mut g = c.benchmark_group("roundtrip");
    g.measurement_time(Duration::from_secs(3));

    g.bench_function("inline", |b| {
        b.to_async(&rt).iter(|| async {
            let h = inline.submit(|| black_box(1u64) + 1).await.expect("open");
            h.await.expect("no panic")
        })
    });
    g.bench_function("threads", |b| {
        b.to_async(&rt).iter(|| async {
            let h = threads.submit(|| black_box(1u64) + 1).await.expect("open");
            h.await.expect("no panic")
        })
    });
    g.bench_function("tokio_spawn_blocking", |b| {
        b.to_async(&rt).iter(|| async {
            tokio::task::spawn_blocking(|| black_box(1u64) + 1)
                .await
                .expect("no panic")
        })
    });
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("rayon pool");
    g.bench_function("rayon_spawn", |b| {
        b.to_async(&rt).iter(|| async {
            let (tx, rx) = tokio::sync::oneshot::channel();
            pool.spawn(move || {
                let _ = tx.send(black_box(1u64) + 1);
            });
            rx.await.expect("rayon ran it")
        })
    });
    let procs = ProcessPool::builder()
        .workers(1)
        .build()
        .expect("one worker process starts");
    g.bench_function("processes", |b| {
        b.to_async(&rt).iter(|| async {
            let h = procs.submit(&ADD1, black_box(1u64)).await.expect("open");
            h.await.expect("no panic")
        })
    });
    let exe = std::env::current_exe().expect("the bench binary's path");
    let mut child = Command::new(exe)
        .env(PINGPONG_CHILD, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the ping-pong child starts");
    let mut to = child.stdin.take().expect("piped stdin");
    let mut from = child.stdout.take().expect("piped stdout");
    g.bench_function("pipe_pingpong", |b| {
        let mut msg = [0u8; 8];
        b.iter(|| {
            to.write_all(&black_box(1u64).to_le_bytes()).expect("write");
            from.read_exact(&mut msg).expect("read");
            u64::from_le_bytes(msg)
        })
    });
    drop(to);
    let _ = child.wait();
    g.finish();
    threads.shutdown_blocking(ShutdownMode::Drain);
    procs.shutdown_blocking(ShutdownMode::Drain);
}

/// The ping-pong child: echo 8-byte messages plus one until the pipe closes.
fn pingpong_child() {
    let mut stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    let mut msg = [0u8; 8];
    while stdin.read_exact(&mut msg).is_ok() {
        let v = u64::from_le_bytes(msg) + 1;
        if stdout.write_all(&v.to_le_bytes()).is_err() || stdout.flush().is_err() {
            break;
        }
    }
}

fn burst(c: &mut Criterion) {
    let rt = runtime();
    let threads = Executor::threads(1).expect("one worker thread starts");
    let mut g = c.benchmark_group("burst");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(5));

    g.bench_function("threads", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let threads = threads.clone();
            async move {
                let t0 = Instant::now();
                for _ in 0..iters {
                    let mut handles = Vec::with_capacity(BURST);
                    for i in 0..BURST as u64 {
                        handles.push(
                            threads
                                .submit(move || black_box(i) + 1)
                                .await
                                .expect("open"),
                        );
                    }
                    for h in handles {
                        black_box(h.await.expect("no panic"));
                    }
                }
                t0.elapsed()
            }
        })
    });
    g.bench_function("tokio_spawn_blocking", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let t0 = Instant::now();
            for _ in 0..iters {
                let handles: Vec<_> = (0..BURST as u64)
                    .map(|i| tokio::task::spawn_blocking(move || black_box(i) + 1))
                    .collect();
                for h in handles {
                    black_box(h.await.expect("no panic"));
                }
            }
            t0.elapsed()
        })
    });
    g.finish();
    threads.shutdown_blocking(ShutdownMode::Drain);
}

criterion_group!(benches, roundtrip, burst);

// criterion_main! cannot call offload::init first: worker processes are this binary.
fn main() {
    offload::init(&[&ADD1]);
    if std::env::var_os(PINGPONG_CHILD).is_some() {
        pingpong_child();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
