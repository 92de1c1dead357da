//! `auto()` picks the best tier available here and says which.
use offload::{Executor, ShutdownMode, TierKind};

#[tokio::test]
async fn auto_picks_threads_on_a_multicore_machine() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pool = Executor::auto();
    let expected = if cores > 1 {
        TierKind::Threads
    } else {
        TierKind::Inline
    };
    assert_eq!(pool.tier(), expected);
    if cores > 1 {
        assert_eq!(
            pool.workers(),
            offload::tier::default_thread_workers(),
            "one worker per core on Linux (cores - 1 at normal priority, one lower), cores - 1 elsewhere"
        );
    }
    assert_eq!(pool.submit(|| 40 + 2).await.unwrap().await.unwrap(), 42);
    pool.shutdown(ShutdownMode::Drain).await;
}
