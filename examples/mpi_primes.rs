//! The sum-of-primes benchmark on the cluster tier: the sum of the primes below 100000,
//! 100100, ..., 100700, each computed on a worker rank.
//!
//! ```text
//! cargo build --release --features mpi --example mpi_primes
//! mpiexec -n 3 target/release/examples/mpi_primes
//! ```
//!
//! Run without `mpiexec` it falls back (processes, threads or inline) through
//! [`RemotePool::auto`] and prints the same sums.

use std::time::Instant;

use futures::StreamExt;
use offload::{RemoteFn, RemotePool, ShutdownMode};

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 1;
    }
    true
}

static SUM_PRIMES: RemoteFn<u64, u64> =
    RemoteFn::new("sum_primes", |n| (2..n).filter(|&k| is_prime(k)).sum());

fn main() -> Result<(), Box<dyn std::error::Error>> {
    offload::init(&[&SUM_PRIMES]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let pool = RemotePool::auto();
        println!("tier: {} ({} workers)", pool.tier(), pool.workers());
        let inputs: Vec<u64> = (0..8).map(|i| 100_000 + 100 * i).collect();
        let t0 = Instant::now();
        let sums: Vec<_> = pool.map(&SUM_PRIMES, inputs.clone()).collect().await;
        let dt = t0.elapsed();
        for (n, s) in inputs.iter().zip(sums) {
            println!("sum of primes below {n}: {}", s?);
        }
        println!("took {dt:.2?}");
        pool.shutdown(ShutdownMode::Drain).await;
        Ok(())
    })
}
