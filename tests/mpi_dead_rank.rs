//! A worker rank that dies mid-task is reported by rank 0, and the other ranks serve on. Run
//! it under `mpiexec --enable-recovery`: without it OpenMPI aborts the whole job (status 134)
//! right after rank 0's report; see the `tier::mpi` docs. Also: the report is not postponed
//! by other ranks' results, and dropping the cluster inside a runtime does not block.
//! harness = false.
//!
//! ```text
//! mpiexec -n 3 --oversubscribe --enable-recovery target/debug/deps/mpi_dead_rank-<hash>
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use offload::RemoteFn;
use offload::tier::mpi::{Cluster, launched_with_workers};

static DIE: RemoteFn<(), ()> = RemoteFn::new("die", |()| std::process::abort());
static SQUARE: RemoteFn<u64, u64> = RemoteFn::new("square", |x| x * x);
static SLOW: RemoteFn<u64, u64> = RemoteFn::new("slow", |ms| {
    std::thread::sleep(Duration::from_millis(ms));
    ms
});

fn main() {
    offload::init(&[&DIE, &SQUARE, &SLOW]);
    if !launched_with_workers() {
        println!("mpi_dead_rank: run it under mpiexec --enable-recovery with 3 ranks");
        return;
    }
    // A watchdog: a task that never ends would hang the job.
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(60));
        println!("test mpi_dead_rank ... FAILED: still running after 60 s");
        std::process::exit(1);
    });
    let cluster = Cluster::builder().build().expect("the cluster builds");
    // Steady results from the other rank (one-item chunks through rank 0's MPI thread) must
    // not postpone the liveness check that fails the dead rank's task.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (cluster, stop) = (cluster.clone(), stop.clone());
        std::thread::spawn(move || {
            let items = (0..u64::MAX).take_while(move |_| !stop.load(Ordering::Relaxed));
            futures::executor::block_on(
                cluster
                    .map_chunked(&SQUARE, items, 1)
                    .fold(0usize, |n, r| async move { n + usize::from(r.is_ok()) }),
            )
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    let t0 = Instant::now();
    let e = cluster
        .submit_blocking(&DIE, ())
        .expect("submit")
        .blocking_wait()
        .expect_err("the rank died");
    let took = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    let served = traffic.join().expect("the traffic thread");
    assert!(e.is_worker_died() && e.pid().is_some(), "{e}");
    assert!(took < Duration::from_secs(5), "reported after {took:?}");
    println!("test dead_rank_is_reported ... ok ({e}; after {took:?}, {served} items meanwhile)");
    for i in 0..4u64 {
        let v = cluster
            .submit_blocking(&SQUARE, i)
            .expect("submit")
            .blocking_wait();
        assert_eq!(v.expect("the other ranks serve on"), i * i);
    }
    println!("test the_others_serve_on ... ok");
    // Dropping the last handle inside a runtime does not wait for the tasks: the drain goes
    // on, and the runtime's drop waits for it (MPI finalizes; the job exits 0).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async move {
        let h = cluster.submit(&SLOW, 300).await.expect("submit");
        let t0 = Instant::now();
        drop(cluster);
        let took = t0.elapsed();
        assert!(
            took < Duration::from_millis(100),
            "the drop blocked for {took:?}"
        );
        assert_eq!(h.await.expect("the drain runs the task"), 300);
        println!("test drop_in_a_runtime_does_not_block ... ok ({took:?})");
    });
    drop(rt);
    println!("mpi_dead_rank: done");
}
