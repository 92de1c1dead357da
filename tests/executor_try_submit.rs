//! `try_submit` on a full queue hands the job back, and it can be run later.
mod common;

use offload::{ShutdownMode, TrySubmitError};

#[tokio::test]
async fn full_queue_returns_the_job() {
    let pool = common::pool("try-a", 1, 2);
    let gate = common::Gate::default();
    // One task blocks the only worker; two more fill the queue.
    let g = gate.clone();
    let blocker = pool.submit(move || g.wait()).await.unwrap();
    assert!(common::eventually(|| pool.stats().queued == 0));
    let q1 = pool.try_submit(|| 1u32).unwrap();
    let q2 = pool.try_submit(|| 2u32).unwrap();
    let job = match pool.try_submit(|| 3u32) {
        Err(TrySubmitError::Full(job)) => job,
        other => panic!("expected Full, got {other:?}"),
    };
    // The job handed back is the very closure: running it gives its value.
    assert_eq!(job(), 3);
    gate.open();
    blocker.await.unwrap();
    assert_eq!(q1.await.unwrap() + q2.await.unwrap(), 3);
    // With room again, the same job goes through.
    assert_eq!(pool.try_submit(job).unwrap().await.unwrap(), 3);
    pool.shutdown(ShutdownMode::Drain).await;
}

#[tokio::test]
async fn submit_waits_for_room_instead_of_failing() {
    let pool = common::pool("try-b", 1, 1);
    let mut handles = Vec::new();
    for i in 0..50u64 {
        handles.push(pool.submit(move || i).await.unwrap());
    }
    let mut sum = 0;
    for h in handles {
        sum += h.await.unwrap();
    }
    assert_eq!(sum, (0..50).sum::<u64>());
    pool.shutdown(ShutdownMode::Drain).await;
}
