//! A drain with a deadline on the cluster (issue 13 item 8): tasks that run for ever on every
//! worker rank, more queued behind them; `shutdown_timeout(Drain, 300 ms)` gives up on the
//! drain, escalates to `ShutdownMode::Kill`, and returns false: each running task fails "shut
//! down" at once, the queued ones too, the killed ranks end mid-task, and the whole job exits
//! with status 0. harness = false.
//!
//! ```text
//! mpiexec -n 3 --oversubscribe target/debug/deps/mpi_shutdown_kill-<hash> [async]
//! ```
//!
//! With `async` it uses the async face (`shutdown_timeout(..).await`), else the blocking one.

use std::time::{Duration, Instant};

use offload::tier::mpi::{Cluster, launched_with_workers};
use offload::{RemoteFn, ShutdownMode};

static FOREVER: RemoteFn<(), ()> = RemoteFn::new("forever", |()| {
    loop {
        std::thread::sleep(Duration::from_millis(50));
    }
});
static SQUARE: RemoteFn<u64, u64> = RemoteFn::new("square", |x| x * x);

fn main() {
    offload::init(&[&FOREVER, &SQUARE]);
    if !launched_with_workers() {
        println!("mpi_shutdown_kill: run it under mpiexec with 3 ranks");
        return;
    }
    let use_async = std::env::args().nth(1).as_deref() == Some("async");
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(30));
        println!("test mpi_shutdown_kill ... FAILED: still running after 30 s");
        std::process::exit(1);
    });
    let cluster = Cluster::builder().build().expect("the cluster builds");
    assert_eq!(
        cluster
            .submit_blocking(&SQUARE, 7)
            .expect("submit")
            .blocking_wait()
            .expect("a warm-up task"),
        49
    );
    let running: Vec<_> = (0..cluster.workers())
        .map(|_| cluster.submit_blocking(&FOREVER, ()).expect("submit"))
        .collect();
    // Let every rank take its task.
    std::thread::sleep(Duration::from_millis(200));
    let queued: Vec<_> = (0..3)
        .map(|i| cluster.submit_blocking(&SQUARE, i).expect("submit"))
        .collect();
    let limit = Duration::from_millis(300);
    let t0 = Instant::now();
    let in_time = if use_async {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(cluster.shutdown_timeout(ShutdownMode::Drain, limit))
    } else {
        cluster.shutdown_timeout_blocking(ShutdownMode::Drain, limit)
    };
    let took = t0.elapsed();
    assert!(!in_time, "tasks that never end cannot drain in time");
    assert!(
        took >= limit && took < Duration::from_secs(5),
        "returned after {took:?}"
    );
    println!("test drain_with_deadline_escalates ... ok ({took:?})");
    for h in running {
        let e = h.blocking_wait().expect_err("killed");
        assert!(e.is_shut_down(), "{e}");
    }
    println!("test running_tasks_fail_shut_down ... ok");
    for h in queued {
        let e = h.blocking_wait().expect_err("never ran");
        assert!(e.is_shut_down(), "{e}");
    }
    println!("test queued_tasks_fail_shut_down ... ok");
    let e = cluster
        .submit_blocking(&SQUARE, 1)
        .expect_err("refused after shutdown");
    assert!(e.is_shut_down(), "{e}");
    println!(
        "mpi_shutdown_kill: done ({})",
        if use_async { "async" } else { "blocking" }
    );
}
