//! `wait` with FirstCompleted, FirstError and AllCompleted, and `as_completed`.
mod common;

use std::time::Duration;

use futures::StreamExt;
use offload::{ShutdownMode, WaitMode, as_completed, wait, wait_timeout};

#[tokio::test]
async fn first_completed_returns_when_one_finishes() {
    let pool = common::pool("wt-a", 2, 8);
    let gate = common::Gate::default();
    let g = gate.clone();
    let slow = pool
        .submit(move || {
            g.wait();
            1
        })
        .await
        .unwrap();
    let fast = pool.submit(|| 2).await.unwrap();
    let w = wait([slow, fast], WaitMode::FirstCompleted).await;
    assert_eq!(w.done.len(), 1);
    assert_eq!(w.pending.len(), 1);
    let mut done = w.done;
    assert_eq!(done.pop().unwrap().await.unwrap(), 2);
    gate.open();
    pool.shutdown(ShutdownMode::Drain).await;
}

#[tokio::test]
async fn first_error_returns_at_the_first_failure() {
    let pool = common::pool("wt-b", 2, 8);
    let gate = common::Gate::default();
    let g = gate.clone();
    let slow = pool
        .submit(move || {
            g.wait();
            1
        })
        .await
        .unwrap();
    let bad = pool.submit(|| -> i32 { panic!("no") }).await.unwrap();
    let w = wait([slow, bad], WaitMode::FirstError).await;
    assert_eq!(w.done.len(), 1);
    assert!(w.done[0].is_err());
    gate.open();
    pool.shutdown(ShutdownMode::Drain).await;
}

#[tokio::test]
async fn first_error_without_errors_waits_for_all() {
    let pool = common::pool("wt-c", 2, 8);
    let mut hs = Vec::new();
    for i in 0..10 {
        hs.push(
            pool.submit(move || {
                std::thread::sleep(Duration::from_millis(i));
                i
            })
            .await
            .unwrap(),
        );
    }
    let w = wait(hs, WaitMode::FirstError).await;
    assert_eq!(w.done.len(), 10);
    assert!(w.pending.is_empty());
    pool.shutdown(ShutdownMode::Drain).await;
}

#[tokio::test]
async fn all_completed_and_a_timeout() {
    let pool = common::pool("wt-d", 2, 8);
    let mut hs = Vec::new();
    for i in 0..6u64 {
        hs.push(pool.submit(move || i * i).await.unwrap());
    }
    let w = wait(hs, WaitMode::AllCompleted).await;
    assert_eq!(w.done.len(), 6);
    let mut sum = 0;
    for h in w.done {
        sum += h.await.unwrap();
    }
    assert_eq!(sum, 55);

    let gate = common::Gate::default();
    let g = gate.clone();
    let stuck = pool.submit(move || g.wait()).await.unwrap();
    let w = wait_timeout([stuck], WaitMode::AllCompleted, Duration::from_millis(30)).await;
    assert_eq!((w.done.len(), w.pending.len()), (0, 1));
    gate.open();
    pool.shutdown(ShutdownMode::Drain).await;
}

#[tokio::test]
async fn as_completed_yields_in_finishing_order_with_positions() {
    let pool = common::pool("wt-e", 2, 8);
    let gate = common::Gate::default();
    let g = gate.clone();
    let first = pool
        .submit(move || {
            g.wait();
            "slow"
        })
        .await
        .unwrap();
    let second = pool.submit(|| "fast").await.unwrap();
    let mut s = Box::pin(as_completed([first, second]));
    assert_eq!(
        s.next().await.map(|(i, r)| (i, r.unwrap())),
        Some((1, "fast"))
    );
    gate.open();
    assert_eq!(
        s.next().await.map(|(i, r)| (i, r.unwrap())),
        Some((0, "slow"))
    );
    assert!(s.next().await.is_none());
    pool.shutdown(ShutdownMode::Drain).await;
}
