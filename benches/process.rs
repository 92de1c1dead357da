//! Throughput of the process tier on trivial tasks, against Python's ProcessPoolExecutor
//! (`benches/peers/process_pool.py`, run separately on the same machine).
//!
//! - `throughput/map_trivial_20k`: 20,000 trivial tasks through `map` on 2 worker processes;
//!   one iteration is all 20,000 (per task: divide by 20,000).
//! - `throughput/submit_all_20k`: the same tasks submitted one by one, then awaited (Python's
//!   "submit all, then result()").
//!
//! `cargo bench --bench process`

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group};
use futures::StreamExt;
use offload::{ProcessPool, RemoteFn, ShutdownMode};

const N: u64 = 20_000;

static TRIVIAL: RemoteFn<u64, u64> = RemoteFn::new("trivial", |x| x + 1);

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

criterion_group!(benches, throughput);

// criterion_main! cannot call offload::init first: worker processes are this binary.
fn main() {
    offload::init(&[&TRIVIAL]);
    benches();
    Criterion::default().configure_from_args().final_summary();
}
