//! The thread tier's `map` batches small items: far fewer tasks than items, results in input
//! order, a panic fails only its item, and an endless input keeps memory flat.
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use offload::ShutdownMode;
/// The thread tier's largest automatic chunk (documented on `Executor::map`).
const THREADS_MAX_CHUNK: usize = 16_384;

#[tokio::test]
async fn small_items_run_in_chunks_and_come_out_in_order() {
    let pool = common::pool("tmap-a", 2, 64);
    let n = 100_000u64;
    let out: Vec<u64> = pool
        .map(0..n, |x| x * x)
        .map(|r| r.expect("no panic"))
        .collect()
        .await;
    assert_eq!(out, (0..n).map(|x| x * x).collect::<Vec<_>>());
    let tasks = pool.stats().completed;
    assert!(
        tasks < n / 10,
        "{tasks} tasks for {n} trivial items: map does not batch"
    );
    pool.shutdown(ShutdownMode::Drain).await;
}

#[tokio::test]
async fn map_unordered_batches_too_and_returns_every_result() {
    let pool = common::pool("tmap-b", 2, 64);
    let n = 50_000u64;
    let mut out: Vec<u64> = pool
        .map_unordered(0..n, |x| x + 1)
        .map(|r| r.expect("no panic"))
        .collect()
        .await;
    out.sort_unstable();
    assert_eq!(out, (1..=n).collect::<Vec<_>>());
    let tasks = pool.stats().completed;
    assert!(tasks < n / 10, "{tasks} tasks for {n} trivial items");
    pool.shutdown(ShutdownMode::Drain).await;
}

#[tokio::test]
async fn endless_input_keeps_memory_flat_with_chunking_on() {
    let pool = common::pool("tmap-c", 2, 64);
    let pulled = Arc::new(AtomicUsize::new(0));
    let p = pulled.clone();
    let endless = (0u64..).inspect(move |_| {
        p.fetch_add(1, Ordering::SeqCst);
    });
    let bound = pool.default_window() * THREADS_MAX_CHUNK + THREADS_MAX_CHUNK;
    let mut results = Box::pin(pool.map(endless, |x| x ^ 1));
    let consumed = 300_000usize;
    for i in 0..consumed as u64 {
        let v = results.next().await.expect("endless").expect("no panic");
        assert_eq!(v, i ^ 1, "results come in input order");
        if i % 10_000 == 0 {
            let now = pulled.load(Ordering::SeqCst);
            assert!(
                now <= i as usize + 1 + bound,
                "pulled {now} items with {} consumed",
                i + 1
            );
        }
    }
    drop(results);
    let tasks = pool.stats().completed;
    assert!(
        tasks < consumed as u64 / 10,
        "{tasks} tasks for {consumed} items: chunking is off"
    );
    pool.shutdown(ShutdownMode::Drain).await;
}

#[tokio::test]
async fn a_panic_in_one_item_of_a_chunk_fails_that_item_only() {
    let pool = common::pool("tmap-d", 1, 16);
    let out: Vec<_> = pool
        .map_chunked(0..100u32, 50, |x| {
            if x == 42 {
                // Quiet: resume_unwind does not call the panic hook.
                std::panic::resume_unwind(Box::new("item 42 is bad"));
            }
            x * 2
        })
        .collect()
        .await;
    assert_eq!(out.len(), 100);
    for (i, r) in out.iter().enumerate() {
        match r {
            Ok(v) => assert_eq!(*v as usize, i * 2),
            Err(e) => {
                assert_eq!(i, 42, "only item 42 fails: {e}");
                assert!(e.is_panic());
                assert!(e.panic_message().unwrap_or("").contains("item 42 is bad"));
            }
        }
    }
    // A worker counts a task just after its result is out: wait for the count to settle.
    assert!(
        common::eventually(|| pool.stats().completed == 2),
        "two chunks of 50, not {}",
        pool.stats().completed
    );
    pool.shutdown(ShutdownMode::Drain).await;
}

#[tokio::test]
async fn chunks_follow_the_measured_item_cost() {
    let pool = common::pool("tmap-e", 2, 64);
    // 1 ms items: one per task, so that they spread over the workers.
    let slow: Vec<_> = pool
        .map(0..12u32, |x| {
            std::thread::sleep(Duration::from_millis(1));
            x
        })
        .map(|r| r.expect("no panic"))
        .collect()
        .await;
    assert_eq!(slow, (0..12).collect::<Vec<_>>());
    // A worker counts a task just after its result is out: wait for the count to settle.
    common::eventually(|| pool.stats().completed >= 12);
    std::thread::sleep(Duration::from_millis(20));
    let slow_tasks = pool.stats().completed;
    assert_eq!(slow_tasks, 12, "1 ms items are not batched");
    // ~1 µs items: batched.
    let n = 5_000u32;
    let fast: Vec<_> = pool
        .map(0..n, |x| {
            common::spin(Duration::from_micros(1));
            x
        })
        .map(|r| r.expect("no panic"))
        .collect()
        .await;
    assert_eq!(fast, (0..n).collect::<Vec<_>>());
    let fast_tasks = pool.stats().completed - slow_tasks;
    assert!(
        fast_tasks < u64::from(n) / 4,
        "{fast_tasks} tasks for {n} items of 1 µs"
    );
    pool.shutdown(ShutdownMode::Drain).await;
}
