//! Named task groups: join all, cancel the rest, shut down with a deadline; the scheduler
//! attaches to a running runtime or owns one, and leaves no thread after shutdown.
mod common;

use std::time::Duration;

use offload::{Cooperate, Scheduler, TaskExit};

#[test]
fn join_all_returns_every_task_by_name() {
    let sched = Scheduler::builder()
        .io_threads(1)
        .cpu_workers(1)
        .build()
        .unwrap();
    let g = sched.group::<u32>("jobs");
    for i in 0..5u32 {
        g.spawn(&format!("n{i}"), async move { i * i });
    }
    g.spawn("bad", async { panic!("group task panic") });
    let mut exits = sched.block_on(g.join_all());
    exits.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(exits.len(), 6);
    assert_eq!(exits[0].0, "jobs/bad");
    assert!(matches!(&exits[0].1, TaskExit::Panicked(m) if m.contains("group task panic")));
    let sum: u32 = exits.into_iter().filter_map(|(_, e)| e.value()).sum();
    assert_eq!(sum, 30);
    sched.shutdown_timeout_blocking(offload::ShutdownMode::Drain, Duration::from_secs(1));
}

#[test]
fn shutdown_with_deadline_cancels_the_rest() {
    let sched = Scheduler::builder()
        .io_threads(1)
        .cpu_workers(1)
        .build()
        .unwrap();
    let g = sched.group::<&'static str>("svc");
    g.spawn("quick", async { "done" });
    g.spawn("forever", async {
        loop {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let exits = sched.block_on(g.shutdown(Duration::from_millis(50)));
    assert_eq!(exits.len(), 2);
    let forever = exits
        .iter()
        .find(|(n, _)| n == "svc/forever")
        .expect("named");
    assert!(forever.1.is_cancelled());
    let quick = exits.iter().find(|(n, _)| n == "svc/quick").expect("named");
    assert!(matches!(quick.1, TaskExit::Finished("done")));
    sched.shutdown_timeout_blocking(offload::ShutdownMode::Drain, Duration::from_secs(1));
}

#[test]
fn cancel_stops_every_task_of_the_group() {
    let sched = Scheduler::builder()
        .io_threads(1)
        .cpu_workers(1)
        .build()
        .unwrap();
    let g = sched.group::<()>("loop");
    for i in 0..3 {
        g.spawn(&format!("w{i}"), async {
            loop {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
    }
    g.cancel();
    let exits = sched.block_on(g.join_all());
    assert_eq!(exits.len(), 3);
    assert!(exits.iter().all(|(_, e)| e.is_cancelled()));
    sched.shutdown_timeout_blocking(offload::ShutdownMode::Drain, Duration::from_secs(1));
}

#[test]
fn owned_scheduler_leaves_no_thread_after_shutdown() {
    let sched = Scheduler::builder()
        .io_threads(2)
        .cpu_workers(2)
        .build()
        .unwrap();
    let v = sched.block_on(async {
        let h = sched.executor().submit(|| 6 * 7).await.unwrap();
        h.await.unwrap()
    });
    assert_eq!(v, 42);
    let running = sched.spawn("ticker", async {
        loop {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    assert!(!common::threads_named("offload-io").is_empty());
    sched.shutdown_timeout_blocking(offload::ShutdownMode::Drain, Duration::from_millis(100));
    drop(running);
    assert!(
        common::eventually(|| common::threads_named("offload-").is_empty()),
        "{:?}",
        common::threads_named("offload-")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attaches_to_the_callers_runtime() {
    let sched = Scheduler::builder().cpu_workers(1).attach().unwrap();
    assert!(!sched.owns_runtime());
    let h = sched.spawn("answer", async { 41 + 1 });
    assert_eq!(h.await.unwrap(), 42);
    let mut coop = Cooperate::new(Duration::ZERO);
    for _ in 0..10 {
        coop.tick().await;
    }
    assert_eq!(coop.yields(), 10);
    let sum = sched
        .executor()
        .submit(|| (1..=10).sum::<i32>())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(sum, 55);
    sched
        .shutdown_timeout(offload::ShutdownMode::Drain, Duration::from_secs(1))
        .await;
    assert!(sched.executor().is_shut_down());
}

#[test]
fn attach_outside_a_runtime_is_a_clear_error() {
    let e = Scheduler::builder().attach().unwrap_err();
    assert!(e.to_string().contains("inside a tokio runtime"), "{e}");
}
