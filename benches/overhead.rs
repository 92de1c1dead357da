//! What a hand-off costs: one trivial task at a time (`roundtrip`), and 10,000 at once
//! (`burst`), on each tier and on the peers, in the same run.
//!
//! `cargo bench --bench overhead`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use offload::{Executor, ShutdownMode};

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
    g.finish();
    threads.shutdown_blocking(ShutdownMode::Drain);
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
criterion_main!(benches);
