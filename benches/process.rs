//! Throughput of the process tier on trivial tasks, against Python's ProcessPoolExecutor
//! (`benches/peers/process_pool.py`, run separately on the same machine).
//!
//! - `throughput/map_trivial_20k`: 20,000 trivial tasks through `map` on 2 worker processes;
//!   one iteration is all 20,000 (per task: divide by 20,000).
//! - `throughput/submit_all_20k`: the same tasks submitted one by one, then awaited (Python's
//!   "submit all, then result()").
//! - `throughput/mixed_lengths`: 2 workers; a 1 s task occupies one of them, then 1,000
//!   trivial tasks are submitted one by one and awaited. One iteration is the 1,000 (from the
//!   first submit to the last result). Its peer in the same run,
//!   `throughput/mixed_lengths_peer_one_idle_worker`, is the same 1,000 on a pool of one
//!   otherwise idle worker: the floor is mixed ≤ 1.5 × peer (no trivial task waits behind the
//!   long one).
//! - `shared_start/{none,inline_32mib,mapped_32mib}`: one worker recycled after every task
//!   (`max_tasks_per_worker(1)`), so one iteration is a worker start, its setup with 32 MiB
//!   of shared data (none; copied through the setup frame; mapped from the pool's sealed
//!   memory file) and one task that reads a byte of every page of it. The peer is
//!   `python3 benches/peers/process_pool.py --shared-mib 32` (an initializer argument,
//!   `max_tasks_per_child=1`).
//!
//! `cargo bench --bench process`

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group};
use futures::StreamExt;
use offload::{ProcessPool, RemoteFn, ShutdownMode};

const N: u64 = 20_000;

static TRIVIAL: RemoteFn<u64, u64> = RemoteFn::new("trivial", |x| x + 1);

/// Reads one byte of every 4 KiB page of the shared data: the least a task that uses the
/// data pays for it.
static TOUCH: RemoteFn<(), u64> = RemoteFn::new("touch", |()| {
    offload::shared_bytes()
        .map(|b| b.iter().step_by(4096).map(|&x| u64::from(x)).sum())
        .unwrap_or(0)
});

/// Occupies a worker for `ms` milliseconds (sleeping: it takes no core from the others).
static LONG: RemoteFn<u64, u64> = RemoteFn::new("long", |ms| {
    std::thread::sleep(Duration::from_millis(ms));
    ms
});

const SHARED_MIB: usize = 32;

/// Trivial tasks per `mixed_lengths` iteration.
const MIXED_N: u64 = 1_000;

/// Submits `MIXED_N` trivial tasks one by one, then awaits them all; returns the time taken.
async fn trivial_burst(pool: &ProcessPool) -> Duration {
    let t0 = std::time::Instant::now();
    let mut handles = Vec::with_capacity(MIXED_N as usize);
    for i in 0..MIXED_N {
        handles.push(pool.submit(&TRIVIAL, black_box(i)).await.expect("open"));
    }
    for h in handles {
        black_box(h.await.expect("no panic"));
    }
    t0.elapsed()
}

fn mixed_lengths(c: &mut Criterion) {
    let rt = runtime();
    let two = ProcessPool::builder()
        .workers(2)
        .build()
        .expect("two worker processes start");
    let one = ProcessPool::builder()
        .workers(1)
        .build()
        .expect("a worker process starts");
    // Warm: both pools' workers started, the trivial function's run time learned.
    rt.block_on(async {
        trivial_burst(&two).await;
        trivial_burst(&one).await;
    });
    let mut g = c.benchmark_group("throughput");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(12));
    g.bench_function("mixed_lengths", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let two = two.clone();
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let long = two.submit(&LONG, 1_000).await.expect("open");
                    total += trivial_burst(&two).await;
                    long.await.expect("the long task finishes");
                }
                total
            }
        })
    });
    g.bench_function("mixed_lengths_peer_one_idle_worker", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let one = one.clone();
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += trivial_burst(&one).await;
                }
                total
            }
        })
    });
    g.finish();
    two.shutdown_blocking(ShutdownMode::Drain);
    one.shutdown_blocking(ShutdownMode::Drain);
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime starts")
}

fn throughput(c: &mut Criterion) {
    let rt = runtime();
    let pool = ProcessPool::builder()
        .workers(2)
        .build()
        .expect("two worker processes start");
    let mut g = c.benchmark_group("throughput");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("map_trivial_20k", |b| {
        b.to_async(&rt).iter(|| async {
            let sum: u64 = pool
                .map(&TRIVIAL, 0..black_box(N))
                .map(|r| r.expect("trivial tasks do not fail"))
                .fold(0u64, |a, x| async move { a + x })
                .await;
            assert_eq!(sum, N * (N + 1) / 2);
            sum
        })
    });
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    g.bench_function("submit_all_20k", |b| {
        b.to_async(&rt).iter(|| async {
            let mut handles = Vec::with_capacity(N as usize);
            for i in 0..N {
                handles.push(pool.submit(&TRIVIAL, black_box(i)).await.expect("open"));
            }
            let mut sum = 0u64;
            for h in handles {
                sum += h.await.expect("no panic");
            }
            sum
        })
    });
    g.finish();
    pool.shutdown_blocking(ShutdownMode::Drain);
}

fn shared_start(c: &mut Criterion) {
    let rt = runtime();
    let data = vec![1u8; SHARED_MIB << 20];
    let pages = (data.len() / 4096) as u64;
    let mut g = c.benchmark_group("shared_start");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(8));
    for (name, bytes, threshold) in [
        ("none", Vec::new(), usize::MAX),
        ("inline_32mib", data.clone(), usize::MAX),
        ("mapped_32mib", data, 0),
    ] {
        let expected = if bytes.is_empty() { 0 } else { pages };
        let pool = ProcessPool::builder()
            .workers(1)
            .max_tasks_per_worker(1)
            .max_frame_size((SHARED_MIB + 1) << 20)
            .shared_map_threshold(threshold)
            .shared_bytes(bytes)
            .build()
            .expect("a pool starts");
        g.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                let sum = pool
                    .submit(&TOUCH, ())
                    .await
                    .expect("open")
                    .await
                    .expect("the task runs");
                assert_eq!(sum, expected);
                sum
            })
        });
        pool.shutdown_blocking(ShutdownMode::Drain);
    }
    g.finish();
}

criterion_group!(benches, throughput, mixed_lengths, shared_start);

// criterion_main! cannot call offload::init first: worker processes are this binary.
fn main() {
    offload::init(&[&TRIVIAL, &TOUCH, &LONG]);
    benches();
    Criterion::default().configure_from_args().final_summary();
}
