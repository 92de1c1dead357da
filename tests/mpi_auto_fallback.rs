//! Without `mpiexec`, nothing picks the cluster tier: `RemotePool::auto()` falls back, and
//! (with the `mpi` feature) no cluster can be built. Runs in the default `cargo test`, with or
//! without MPI installed. harness = false: `offload::init` must run first in `main`.

use offload::{RemoteFn, RemotePool, ShutdownMode, TierKind};

static DOUBLE: RemoteFn<u32, u32> = RemoteFn::new("double", |x| x * 2);

fn main() {
    offload::init(&[&DOUBLE]);
    // Under an MPI launcher with the feature, ranks > 0 are workers: nothing to test here.
    // (Without the feature every rank is a plain program and runs the test on its own.)
    #[cfg(feature = "mpi")]
    if offload::tier::mpi::detect() != offload::tier::mpi::Detected::NotLaunched {
        println!("mpi_auto_fallback: skipped, this run was started by an MPI launcher");
        // No cluster is built here: release the worker ranks and finalize MPI.
        offload::tier::mpi::finish();
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let pool = RemotePool::auto();
        assert_ne!(pool.tier(), TierKind::Cluster, "{pool:?}");
        let v = pool.submit(&DOUBLE, 21).await.expect("submit").await;
        assert_eq!(v.expect("a value"), 42);
        pool.shutdown(ShutdownMode::Drain).await;
        println!("test auto_falls_back_to_{} ... ok", pool.tier());
    });
    #[cfg(feature = "mpi")]
    {
        assert!(!offload::tier::mpi::launched_with_workers());
        let e = offload::tier::mpi::Cluster::builder()
            .build()
            .expect_err("no cluster without mpiexec");
        assert!(e.to_string().contains("mpiexec"), "{e}");
        println!("test no_cluster_without_mpiexec ... ok");
    }
}
