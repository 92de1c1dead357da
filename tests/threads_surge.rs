//! A busy machine: beside other busy threads, a fixed pool gets only its share of the cores,
//! and fell 2.6× behind `tokio::task::spawn_blocking` (a thread per call) in
//! `placement_quality --load`. The pool starts surge workers at normal priority while its
//! workers are starved and work is queued; they leave once the backlog is gone. A pool built
//! with `max_surge_workers(0)` stays fixed.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{spin, threads_gone, threads_named};
use offload::Executor;
use offload::tier::Threads;

/// Runs `tasks` CPU tasks of `each` on a pool of `workers` named `prefix`, beside one busy
/// thread per core plus one; returns the most surge workers seen at once.
fn run_beside_busy_threads(prefix: &str, surge: Option<usize>, tasks: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let stop = Arc::new(AtomicBool::new(false));
    let busy: Vec<_> = (0..=cores)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    spin(Duration::from_millis(1));
                }
            })
        })
        .collect();
    let mut b = Threads::builder();
    b.workers(1).thread_name(prefix);
    if let Some(n) = surge {
        b.max_surge_workers(n);
    }
    let pool = Executor::from(b.build().expect("the pool starts"));
    let surge_prefix = format!("{prefix}-s");
    let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime starts");
    rt.block_on(async {
        let handles: Vec<_> = {
            let mut v = Vec::new();
            for _ in 0..tasks {
                let most = most.clone();
                let surge_prefix = surge_prefix.clone();
                v.push(
                    pool.submit(move || {
                        spin(Duration::from_millis(30));
                        let n = threads_named(&surge_prefix).len();
                        most.fetch_max(n, Ordering::Relaxed);
                    })
                    .await
                    .expect("the pool is open"),
                );
            }
            v
        };
        for h in handles {
            h.await.expect("no panic");
        }
    });
    stop.store(true, Ordering::Relaxed);
    for t in busy {
        t.join().expect("a busy thread ends");
    }
    let most = most.load(Ordering::Relaxed);
    // Surge workers leave once there is no work: within their keep-alive, and at the latest
    // when the pool shuts down.
    assert!(
        threads_gone(&surge_prefix),
        "surge workers still there: {:?}",
        threads_named(&surge_prefix)
    );
    pool.shutdown_blocking(offload::ShutdownMode::Drain);
    assert!(threads_gone(prefix), "{:?}", threads_named(prefix));
    most
}

#[test]
fn a_starved_pool_starts_surge_workers_and_they_leave_after_the_backlog() {
    let most = run_beside_busy_threads("surge-on", None, 60);
    assert!(most >= 1, "no surge worker started beside busy threads");
}

#[test]
fn a_pool_without_surge_stays_fixed() {
    let most = run_beside_busy_threads("surge-off", Some(0), 20);
    assert_eq!(most, 0, "a pool with max_surge_workers(0) started {most}");
}
