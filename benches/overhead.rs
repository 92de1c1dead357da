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
//! `contended`: one trivial task at a time, as `roundtrip`, under a background load started by
//! the bench for the whole group (`support/contention.rs`: a second process running this
//! library's thread-tier round trip in a loop, plus one busy thread per core).
//!
//! `map_1m`: 1,000,000 trivial items (`x * x`), results collected in order: the thread tier's
//! `map` (`Executor::auto()`, the default pool), the process tier's `map`, rayon's
//! `into_par_iter().map().collect()`, and the thread tier again under the background load
//! (`threads_contended`).
//!
//! `heartbeat`: a 1 ms sleep on a one-thread runtime (its time over the idle pool's is how late
//! the runtime thread wakes) while every CPU worker of a pool runs CPU work: `idle_pool` (no
//! CPU work), `cores_minus_1` (the old default: cores − 1 workers, one core left idle for
//! the runtime), `default_pool` (the default: cores − 1 workers at normal priority and one
//! overflow worker at nice 10), `all_normal` (one worker per core, all at normal priority),
//! `overflow_nice19` (as the default, the overflow worker at nice 19). The choice of the
//! default rests on these.
//!
//! `cargo bench --bench overhead`

use std::hint::black_box;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use futures::StreamExt;
use offload::{Executor, ProcessPool, RemoteFn, ShutdownMode};
use rayon::prelude::*;

#[path = "support/contention.rs"]
mod contention;

static ADD1: RemoteFn<u64, u64> = RemoteFn::new("add1", |x| x + 1);
static SQUARE: RemoteFn<u64, u64> = RemoteFn::new("square", |x| x * x);

/// Items of the `map_1m` group.
const MAP_ITEMS: u64 = 1_000_000;

/// Set in the child of `pipe_pingpong`.
const PINGPONG_CHILD: &str = "OFFLOAD_BENCH_PINGPONG_CHILD";

const BURST: usize = 10_000;

/// The thread tier's default nice value for its overflow worker (`ThreadsBuilder::low_priority_nice`).
const OVERFLOW_NICE: i32 = 10;
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime starts")
}

/// One trivial task submitted and awaited at a time: `threads` (the library's pool) and its
/// peer `tokio_spawn_blocking`, in the group `g`.
fn threads_and_spawn_blocking(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    threads: &Executor,
) {
    g.bench_function("threads", |b| {
        b.to_async(rt).iter(|| async {
            let h = threads.submit(|| black_box(1u64) + 1).await.expect("open");
            h.await.expect("no panic")
        })
    });
    g.bench_function("tokio_spawn_blocking", |b| {
        b.to_async(rt).iter(|| async {
            tokio::task::spawn_blocking(|| black_box(1u64) + 1)
                .await
                .expect("no panic")
        })
    });
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
    threads_and_spawn_blocking(&mut g, &rt, &threads);
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

fn contended(c: &mut Criterion) {
    let rt = runtime();
    let threads = Executor::threads(1).expect("one worker thread starts");
    let load = contention::Contention::start();
    let mut g = c.benchmark_group("contended");
    g.measurement_time(Duration::from_secs(4));
    threads_and_spawn_blocking(&mut g, &rt, &threads);
    g.finish();
    drop(load);
    threads.shutdown_blocking(ShutdownMode::Drain);
}

/// The thread tier's ordered `map` of `MAP_ITEMS` trivial items, collected.
async fn map_threads(pool: &Executor) -> Vec<u64> {
    pool.map(0..MAP_ITEMS, |x| black_box(x) * x)
        .map(|r| r.expect("no panic"))
        .collect()
        .await
}

fn map_1m(c: &mut Criterion) {
    let rt = runtime();
    let threads = Executor::auto();
    let procs = ProcessPool::builder()
        .build()
        .expect("worker processes start");
    let mut g = c.benchmark_group("map_1m");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(4));
    g.bench_function("threads", |b| {
        b.to_async(&rt).iter(|| map_threads(&threads))
    });
    g.bench_function("processes", |b| {
        b.to_async(&rt).iter(|| async {
            procs
                .map(&SQUARE, 0..MAP_ITEMS)
                .map(|r| r.expect("no panic"))
                .collect::<Vec<u64>>()
                .await
        })
    });
    g.bench_function("rayon_par_iter", |b| {
        b.iter(|| {
            (0..MAP_ITEMS)
                .into_par_iter()
                .map(|x| black_box(x) * x)
                .collect::<Vec<u64>>()
        })
    });
    let load = contention::Contention::start();
    g.bench_function("threads_contended", |b| {
        b.to_async(&rt).iter(|| map_threads(&threads))
    });
    drop(load);
    g.finish();
    threads.shutdown_blocking(ShutdownMode::Drain);
    procs.shutdown_blocking(ShutdownMode::Drain);
}

/// A pool of `workers` workers, `low` of them at nice `nice`.
fn pool_of(workers: usize, low: usize, nice: i32) -> Executor {
    let t = offload::tier::Threads::builder()
        .workers(workers)
        .low_priority_workers(low)
        .low_priority_nice(nice)
        .build()
        .expect("the pool starts");
    Executor::from(t)
}

fn heartbeat(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    let mut g = c.benchmark_group("heartbeat");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(3));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for (name, busy, workers, low, nice) in [
        ("idle_pool", false, cores, 1, OVERFLOW_NICE),
        ("cores_minus_1", true, cores.saturating_sub(1).max(1), 0, 0),
        ("default_pool", true, cores, 1, OVERFLOW_NICE),
        ("all_normal", true, cores, 0, 0),
        ("overflow_nice19", true, cores, 1, 19),
    ] {
        let pool = pool_of(workers, low, nice);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut burners = Vec::new();
        if busy {
            for _ in 0..pool.workers() {
                let stop = stop.clone();
                let h = pool.submit_blocking(move || {
                    let mut x = 1u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        for _ in 0..1_000 {
                            x = black_box(
                                x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1),
                            );
                        }
                    }
                    x
                });
                burners.push(h.expect("open"));
            }
            std::thread::sleep(Duration::from_millis(50)); // every worker runs one
        }
        g.bench_function(name, |b| {
            b.to_async(&rt)
                .iter(|| tokio::time::sleep(Duration::from_millis(1)))
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for h in burners {
            let _ = h.blocking_wait();
        }
        pool.shutdown_blocking(ShutdownMode::Drain);
    }
    g.finish();
}

criterion_group!(benches, roundtrip, burst, contended, map_1m, heartbeat);

// criterion_main! cannot call offload::init first: worker processes are this binary.
fn main() {
    offload::init(&[&ADD1, &SQUARE]);
    if contention::child_main_if_asked() {
        return;
    }
    if std::env::var_os(PINGPONG_CHILD).is_some() {
        pingpong_child();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
