//! `shutdown(Drain)` finishes queued work, `shutdown(Cancel)` fails it; no thread is left.
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use offload::ShutdownMode;

#[tokio::test]
async fn drain_finishes_queued_work_and_leaves_no_thread() {
    let pool = common::pool("drn-", 2, 100);
    assert!(common::eventually(
        || common::threads_named("drn-").len() >= 2
    ));
    let done = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for _ in 0..100 {
        let d = done.clone();
        handles.push(
            pool.submit(move || {
                std::thread::sleep(std::time::Duration::from_micros(200));
                d.fetch_add(1, Ordering::SeqCst);
            })
            .await
            .unwrap(),
        );
    }
    pool.shutdown(ShutdownMode::Drain).await;
    assert_eq!(done.load(Ordering::SeqCst), 100);
    for h in handles {
        h.await.unwrap();
    }
    assert!(
        common::threads_gone("drn-"),
        "{:?}",
        common::threads_named("drn-")
    );
}

#[tokio::test]
async fn cancel_fails_queued_work_with_shut_down() {
    let pool = common::pool("cnl-", 1, 100);
    let gate = common::Gate::default();
    let g = gate.clone();
    let running = pool.submit(move || g.wait()).await.unwrap();
    assert!(common::eventually(|| pool.stats().queued == 0));
    let ran = Arc::new(AtomicUsize::new(0));
    let mut queued = Vec::new();
    for _ in 0..20 {
        let r = ran.clone();
        queued.push(
            pool.submit(move || r.fetch_add(1, Ordering::SeqCst))
                .await
                .unwrap(),
        );
    }
    let opener = {
        let gate = gate.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            gate.open();
        })
    };
    pool.shutdown(ShutdownMode::Cancel).await;
    opener.join().unwrap();
    running.await.expect("the running task finishes");
    for h in queued {
        let e = h.await.unwrap_err();
        assert!(e.is_shut_down(), "{e}");
    }
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    assert!(
        common::threads_gone("cnl-"),
        "{:?}",
        common::threads_named("cnl-")
    );
}

#[test]
fn blocking_shutdown_from_sync_code() {
    let pool = common::pool("blk-", 2, 8);
    let h = pool.submit_blocking(|| 5).unwrap();
    pool.shutdown_blocking(ShutdownMode::Drain);
    assert_eq!(h.blocking_wait().unwrap(), 5);
    assert!(
        common::threads_gone("blk-"),
        "{:?}",
        common::threads_named("blk-")
    );
    assert!(pool.submit_blocking(|| 1).unwrap_err().is_shut_down());
}
