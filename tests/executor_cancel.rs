//! Cancelling or dropping a handle withdraws a queued task; a running thread task is not
//! killable and says so.
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use offload::ShutdownMode;

#[tokio::test]
async fn cancelling_a_queued_task_withdraws_it() {
    let pool = common::pool("can-a", 1, 8);
    let gate = common::Gate::default();
    let ran = Arc::new(AtomicUsize::new(0));
    let g = gate.clone();
    let blocker = pool.submit(move || g.wait()).await.unwrap();
    let r = ran.clone();
    let queued = pool
        .submit(move || r.fetch_add(1, Ordering::SeqCst))
        .await
        .unwrap();
    assert!(!queued.is_killable());
    assert!(queued.cancel(), "a queued task can be withdrawn");
    assert!(queued.is_finished());
    let r = ran.clone();
    let dropped = pool
        .submit(move || r.fetch_add(1, Ordering::SeqCst))
        .await
        .unwrap();
    drop(dropped);
    let r = ran.clone();
    let kept = pool
        .submit(move || r.fetch_add(1, Ordering::SeqCst))
        .await
        .unwrap();
    gate.open();
    blocker.await.unwrap();
    kept.await.unwrap();
    let e = queued.await.unwrap_err();
    assert!(e.is_cancelled(), "{e}");
    assert_eq!(ran.load(Ordering::SeqCst), 1, "only the kept task ran");
    pool.shutdown(ShutdownMode::Drain).await;
}

#[tokio::test]
async fn a_running_thread_task_cannot_be_cancelled() {
    let pool = common::pool("can-b", 1, 8);
    let gate = common::Gate::default();
    let started = Arc::new(AtomicUsize::new(0));
    let (g, s) = (gate.clone(), started.clone());
    let h = pool
        .submit(move || {
            s.store(1, Ordering::SeqCst);
            g.wait();
            7
        })
        .await
        .unwrap();
    assert!(common::eventually(|| started.load(Ordering::SeqCst) == 1));
    assert!(!h.cancel(), "running: not withdrawn");
    gate.open();
    assert_eq!(h.await.unwrap(), 7);
    pool.shutdown(ShutdownMode::Drain).await;
}

#[tokio::test]
async fn a_detached_handle_still_runs() {
    let pool = common::pool("can-c", 1, 8);
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    pool.submit(move || r.fetch_add(1, Ordering::SeqCst))
        .await
        .unwrap()
        .detach();
    pool.shutdown(ShutdownMode::Drain).await;
    assert_eq!(ran.load(Ordering::SeqCst), 1);
}
