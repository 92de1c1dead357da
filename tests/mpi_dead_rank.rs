//! A worker rank that dies mid-task is reported by rank 0, and the other ranks serve on. Run
//! it under `mpiexec --enable-recovery`: without it OpenMPI aborts the whole job (status 134)
//! right after rank 0's report; see the `tier::mpi` docs. harness = false.
//!
//! ```text
//! mpiexec -n 3 --oversubscribe --enable-recovery target/debug/deps/mpi_dead_rank-<hash>
//! ```

use offload::tier::mpi::{Cluster, launched_with_workers};
use offload::{RemoteFn, ShutdownMode};

static DIE: RemoteFn<(), ()> = RemoteFn::new("die", |()| std::process::abort());
static SQUARE: RemoteFn<u64, u64> = RemoteFn::new("square", |x| x * x);

fn main() {
    offload::init(&[&DIE, &SQUARE]);
    if !launched_with_workers() {
        println!("mpi_dead_rank: run it under mpiexec --enable-recovery with 3 ranks");
        return;
    }
    let cluster = Cluster::builder().build().expect("the cluster builds");
    let e = cluster
        .submit_blocking(&DIE, ())
        .expect("submit")
        .blocking_wait()
        .expect_err("the rank died");
    assert!(e.is_worker_died() && e.pid().is_some(), "{e}");
    println!("test dead_rank_is_reported ... ok ({e})");
    for i in 0..4u64 {
        let v = cluster
            .submit_blocking(&SQUARE, i)
            .expect("submit")
            .blocking_wait();
        assert_eq!(v.expect("the other ranks serve on"), i * i);
    }
    println!("test the_others_serve_on ... ok");
    cluster.shutdown_blocking(ShutdownMode::Drain);
    println!("mpi_dead_rank: done");
}
