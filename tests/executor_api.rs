//! The executor face as concurrent.futures users expect it (issue 14): `run`, `detach`,
//! idempotent `cancel`, the `is_cancelled`/`is_running` predicates, a second read of an outcome
//! as a usage error, `wait(FirstError)` not counting cancellations, `TaskHandle: Sync`, and
//! `BuildError` converting into `Error`.
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use offload::prelude::*;

fn assert_sync<T: Sync>() {}

#[test]
fn task_handle_is_send_and_sync() {
    assert_sync::<TaskHandle<u64>>();
    fn assert_send<T: Send>() {}
    assert_send::<TaskHandle<u64>>();
}

#[tokio::test]
async fn run_submits_and_waits() {
    let pool = common::pool("api-run", 1, 4);
    assert_eq!(pool.run(|| 6 * 7).await.unwrap(), 42);
    let e = pool.run(|| -> u8 { panic!("boom") }).await.unwrap_err();
    assert!(e.is_panic(), "{e}");
    pool.shutdown(ShutdownMode::Drain).await;
    let e = pool.run(|| 1).await.unwrap_err();
    assert!(e.is_shut_down(), "{e}");
}

#[tokio::test]
async fn detached_tasks_run_to_the_end_with_nobody_waiting() {
    let pool = common::pool("api-detach", 1, 128);
    let gate = common::Gate::default();
    let g = gate.clone();
    // Occupy the only worker so that every detached task below is still queued when its
    // handle goes away.
    let blocker = pool.submit(move || g.wait()).await.unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    for _ in 0..100 {
        let r = ran.clone();
        pool.submit(move || r.fetch_add(1, Ordering::SeqCst))
            .await
            .unwrap()
            .detach();
    }
    gate.open();
    blocker.await.unwrap();
    pool.shutdown(ShutdownMode::Drain).await;
    assert_eq!(ran.load(Ordering::SeqCst), 100);
}

#[tokio::test]
async fn cancel_is_idempotent_and_predicates_do_not_consume() {
    let pool = common::pool("api-cancel", 1, 8);
    let gate = common::Gate::default();
    let g = gate.clone();
    let running = pool.submit(move || g.wait()).await.unwrap();
    assert!(
        common::eventually(|| running.is_running()),
        "the first task should be running on the only worker"
    );
    let queued = pool.submit(|| 1).await.unwrap();
    assert!(!queued.is_running() && !queued.is_cancelled());
    assert!(queued.cancel());
    assert!(
        queued.cancel(),
        "cancelling a cancelled task returns true again"
    );
    assert!(queued.is_cancelled() && queued.is_finished());
    // A running thread task cannot be stopped.
    assert!(!running.cancel());
    gate.open();
    running.await.unwrap();
    let e = queued.await.unwrap_err();
    assert!(e.is_cancelled(), "{e}");
    pool.shutdown(ShutdownMode::Drain).await;
}

#[tokio::test]
async fn a_second_read_of_an_outcome_is_a_usage_error_not_a_cancellation() {
    let pool = common::pool("api-twice", 1, 4);
    let mut h = pool.submit(|| 5).await.unwrap();
    assert_eq!((&mut h).await.unwrap(), 5);
    let e = (&mut h).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Usage, "{e}");
    assert!(!e.is_cancelled());
    assert!(!h.is_cancelled());
    pool.shutdown(ShutdownMode::Drain).await;
}

#[tokio::test]
async fn first_error_ignores_a_cancelled_handle() {
    // CPython's test_first_exception_some_already_complete: a cancelled future is not an
    // exception for FIRST_EXCEPTION.
    let pool = common::pool("api-wait", 1, 8);
    let gate = common::Gate::default();
    let g = gate.clone();
    let slow = pool.submit(move || g.wait()).await.unwrap();
    let cancelled = pool.submit(|| ()).await.unwrap();
    assert!(cancelled.cancel());
    let waited = tokio::time::timeout(
        Duration::from_millis(300),
        wait([slow, cancelled], WaitMode::FirstError),
    )
    .await;
    assert!(
        waited.is_err(),
        "wait(FirstError) returned although no task failed (one was cancelled)"
    );
    gate.open();
    pool.shutdown(ShutdownMode::Drain).await;
}

#[test]
fn a_build_error_converts_into_an_error() {
    fn build() -> Result<Executor, offload::Error> {
        Ok(Executor::threads(0)?)
    }
    let e = build().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Usage, "{e}");
}

#[test]
fn shutdown_timeout_escalates_past_its_limit_and_fails_what_is_queued() {
    let pool = common::pool("api-stop", 1, 8);
    let gate = common::Gate::default();
    let g = gate.clone();
    let running = pool.submit_blocking(move || g.wait()).unwrap();
    assert!(common::eventually(|| running.is_running()));
    let queued = pool.submit_blocking(|| 1).unwrap();
    let clean = pool.shutdown_timeout_blocking(ShutdownMode::Drain, Duration::from_millis(100));
    assert!(
        !clean,
        "a drain held up by a running task cannot finish within the limit"
    );
    let e = queued.blocking_wait().unwrap_err();
    assert!(e.is_shut_down(), "{e}");
    gate.open();
    running.blocking_wait().unwrap();
    assert!(common::threads_gone("api-stop"));
    // Within its limit, a drain is clean.
    let pool = common::pool("api-stop2", 1, 8);
    let h = pool.submit_blocking(|| 2).unwrap();
    assert!(pool.shutdown_timeout_blocking(ShutdownMode::Drain, Duration::from_secs(10)));
    assert_eq!(h.blocking_wait().unwrap(), 2);
}

#[test]
fn two_default_pools_name_their_threads_apart() {
    // CPython's thread_names_default: each pool's threads carry a name of their own.
    let a = Executor::builder().workers(1).build().unwrap();
    let b = Executor::builder().workers(1).build().unwrap();
    // A new thread names itself as it starts: look until both pools' threads carry names.
    let prefixes = || {
        let mut p: Vec<String> = common::threads_named("offload-cpu")
            .iter()
            .map(|n| n.rsplit_once('-').map_or(n.clone(), |(p, _)| p.to_string()))
            .collect();
        p.sort();
        p.dedup();
        p
    };
    assert!(
        common::eventually(|| prefixes().len() >= 2),
        "two pools, one name: {:?}",
        common::threads_named("offload-cpu")
    );
    a.shutdown_blocking(ShutdownMode::Drain);
    b.shutdown_blocking(ShutdownMode::Drain);
}

#[test]
fn submit_blocking_from_a_task_of_its_own_full_pool_errs_instead_of_deadlocking() {
    // A pool of one worker and a queue of one: a task that fills the queue and then waits for
    // room in it would wait for itself for ever.
    let pool = Executor::builder()
        .workers(1)
        .low_priority_workers(0)
        .express_worker(false)
        .queue_capacity(1)
        .build()
        .unwrap();
    let inner = pool.clone();
    let mut outer = pool
        .submit_blocking(move || {
            let first = inner.submit_blocking(|| 1);
            let second = inner.submit_blocking(|| 2);
            (
                first.map(|h| h.detach()).is_ok(),
                second.map(|h| h.detach()),
            )
        })
        .unwrap();
    let (first_ok, second) = outer
        .blocking_wait_timeout(Duration::from_secs(10))
        .expect("no deadlock")
        .unwrap();
    assert!(first_ok, "there was room for one");
    let e = second.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Usage, "{e}");
    assert!(e.to_string().contains("same pool"), "{e}");
    pool.shutdown_blocking(ShutdownMode::Drain);
}

#[test]
fn the_initializer_runs_once_on_every_worker_before_its_tasks() {
    thread_local! {
        static READY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    let inits = Arc::new(AtomicUsize::new(0));
    let n = inits.clone();
    let pool = Executor::builder()
        .workers(2)
        .express_worker(false)
        .initializer(move |_| {
            READY.with(|r| r.set(true));
            n.fetch_add(1, Ordering::SeqCst);
        })
        .build()
        .unwrap();
    for _ in 0..50 {
        let ready = pool
            .submit_blocking(|| READY.with(|r| r.get()))
            .unwrap()
            .blocking_wait()
            .unwrap();
        assert!(
            ready,
            "a task ran on a thread the initializer had not set up"
        );
    }
    pool.shutdown_blocking(ShutdownMode::Drain);
    assert_eq!(inits.load(Ordering::SeqCst), 2);
}
