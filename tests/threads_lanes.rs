//! Off-core, work predicted short never waits behind work predicted long: while long tasks
//! occupy every worker, short ones (and ones whose submitter asked but has no prediction yet)
//! still complete. Plain submissions, which say nothing, get no worker beyond the pool's.
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use offload::ShutdownMode;

const LONG: Option<Duration> = Some(Duration::from_secs(1));
const SHORT: Option<Duration> = Some(Duration::from_micros(30));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_work_completes_while_long_work_occupies_every_worker() {
    let workers = 2;
    let pool = common::pool("tlane-a", workers, 64);
    let gate = common::Gate::default();
    let started = Arc::new(AtomicUsize::new(0));
    // One more long task than workers: every worker is taken and one waits in the queue.
    let mut long = Vec::new();
    for _ in 0..=workers {
        let (g, s) = (gate.clone(), started.clone());
        long.push(
            pool.submit_expected("long", LONG, move || {
                s.fetch_add(1, Ordering::SeqCst);
                g.wait();
            })
            .await
            .expect("open"),
        );
    }
    assert!(common::eventually(
        || started.load(Ordering::SeqCst) >= workers
    ));
    for (name, expected) in [("short", SHORT), ("unknown", None)] {
        let h = pool
            .submit_expected(name, expected, || 7)
            .await
            .expect("open");
        let v = tokio::time::timeout(Duration::from_secs(10), h).await;
        assert!(
            matches!(v, Ok(Ok(7))),
            "{name} work waited behind long work: {v:?}"
        );
    }
    assert!(
        long.iter().all(|h| !h.is_finished()),
        "the long tasks still hold the workers"
    );
    gate.open();
    for h in long {
        h.await.expect("ran");
    }
    pool.shutdown(ShutdownMode::Drain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_work_still_uses_every_worker() {
    let workers = 3;
    let pool = common::pool("tlane-b", workers, 64);
    let gate = common::Gate::default();
    let started = Arc::new(AtomicUsize::new(0));
    let mut long = Vec::new();
    for _ in 0..workers {
        let (g, s) = (gate.clone(), started.clone());
        long.push(
            pool.submit_expected("long", LONG, move || {
                s.fetch_add(1, Ordering::SeqCst);
                g.wait();
            })
            .await
            .expect("open"),
        );
    }
    assert!(
        common::eventually(|| started.load(Ordering::SeqCst) == workers),
        "long work runs on every worker at once"
    );
    gate.open();
    for h in long {
        h.await.expect("ran");
    }
    pool.shutdown(ShutdownMode::Drain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_unpredicted_long_work_the_express_worker_keeps_to_predicted_short_work() {
    let pool = common::pool("tlane-c", 1, 64);
    let gate = common::Gate::default();
    let started = Arc::new(AtomicUsize::new(0));
    let (g, s) = (gate.clone(), started.clone());
    let blocker = pool
        .submit_expected("blocker", LONG, move || {
            s.fetch_add(1, Ordering::SeqCst);
            g.wait();
        })
        .await
        .expect("open");
    assert!(common::eventually(|| started.load(Ordering::SeqCst) == 1));
    // Unpredicted, and long: the express worker runs it (the blocker holds the only worker),
    // then leaves unpredicted work alone for EXPRESS_COOLDOWN times its run time (2 s here).
    let surprise = pool
        .submit_expected("surprise", None, || common::spin(Duration::from_millis(40)))
        .await
        .expect("open");
    tokio::time::timeout(Duration::from_secs(10), surprise)
        .await
        .expect("the express worker ran it")
        .expect("no panic");
    let unpredicted = pool
        .submit_expected("unpredicted", None, || 1)
        .await
        .expect("open");
    let short = pool
        .submit_expected("short", SHORT, || 2)
        .await
        .expect("open");
    let v = tokio::time::timeout(Duration::from_secs(10), short).await;
    assert!(matches!(v, Ok(Ok(2))), "predicted-short work waited: {v:?}");
    assert!(
        !unpredicted.is_finished(),
        "unpredicted work got the express worker during its cooldown"
    );
    gate.open();
    blocker.await.expect("ran");
    assert_eq!(unpredicted.await.expect("ran"), 1);
    pool.shutdown(ShutdownMode::Drain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_submissions_keep_to_the_pools_workers() {
    let pool = common::pool("tlane-d", 1, 64);
    let gate = common::Gate::default();
    let started = Arc::new(AtomicUsize::new(0));
    let (g, s) = (gate.clone(), started.clone());
    let blocker = pool
        .submit(move || {
            s.fetch_add(1, Ordering::SeqCst);
            g.wait();
        })
        .await
        .expect("open");
    assert!(common::eventually(|| started.load(Ordering::SeqCst) == 1));
    let queued = pool.submit(|| 1).await.expect("open");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !queued.is_finished(),
        "a plain submission ran beside the only worker"
    );
    gate.open();
    blocker.await.expect("ran");
    assert_eq!(queued.await.expect("ran"), 1);
    pool.shutdown(ShutdownMode::Drain).await;
}
