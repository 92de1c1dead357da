//! The inline tier: Listing 1's fallback with the same semantics as the others: a task runs
//! once, when first waited for; a withdrawn one never runs.
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::StreamExt;
use offload::{Executor, ShutdownMode, TierKind};

#[tokio::test]
async fn runs_once_when_awaited_and_not_before() {
    let pool = Executor::inline();
    assert_eq!(pool.tier(), TierKind::Inline);
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let h = pool
        .submit(move || r.fetch_add(1, Ordering::SeqCst) + 10)
        .await
        .unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 0, "lazy: nothing ran yet");
    assert!(!h.is_finished());
    assert_eq!(h.await.unwrap(), 10);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn withdrawn_tasks_never_run_and_panics_are_errors() {
    let pool = Executor::inline();
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let h = pool
        .submit(move || r.fetch_add(1, Ordering::SeqCst))
        .await
        .unwrap();
    assert!(h.cancel());
    assert!(h.await.unwrap_err().is_cancelled());
    let r = runs.clone();
    drop(
        pool.submit(move || r.fetch_add(1, Ordering::SeqCst))
            .await
            .unwrap(),
    );
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    let e = pool
        .submit(|| -> () { panic!("inline boom") })
        .await
        .unwrap()
        .await
        .unwrap_err();
    assert_eq!(e.tier(), Some(TierKind::Inline));
    assert_eq!(e.panic_message(), Some("inline boom"));
}

#[tokio::test]
async fn map_and_shutdown_behave_as_on_threads() {
    let pool = Executor::inline();
    let v: Vec<u32> = pool
        .map(1..=4u32, |x| x * 10)
        .map(|r| r.unwrap())
        .collect()
        .await;
    assert_eq!(v, [10, 20, 30, 40]);
    pool.shutdown(ShutdownMode::Cancel).await;
    assert!(pool.submit(|| 1).await.unwrap_err().is_shut_down());
}
