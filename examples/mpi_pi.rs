//! Monte-Carlo π on the cluster tier: pyMPI's `allreduce` example as map-reduce. Each task
//! throws darts on a worker rank and returns its local count inside the quarter circle; rank
//! 0 sums the counts (the reduce) until the estimate settles.
//!
//! ```text
//! cargo build --release --features mpi --example mpi_pi
//! mpiexec -n 3 target/release/examples/mpi_pi
//! ```
//!
//! Without `mpiexec` it runs on whatever [`RemotePool::auto`] picks.

use futures::StreamExt;
use offload::{RemoteFn, RemotePool, ShutdownMode};

/// Darts per task.
const SAMPLES: u64 = 200_000;

/// Counts the darts of one task that land inside the quarter circle (a small xorshift
/// generator seeded per task, so every task throws different darts).
fn inside(seed: u64) -> u64 {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..SAMPLES)
        .filter(|_| {
            let (a, b) = (next(), next());
            a * a + b * b < 1.0
        })
        .count() as u64
}

static INSIDE: RemoteFn<u64, u64> = RemoteFn::new("pi_inside", inside);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    offload::init(&[&INSIDE]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let pool = RemotePool::auto();
        println!("tier: {} ({} workers)", pool.tier(), pool.workers());
        let per_round = pool.workers().max(1) as u64 * 4;
        let (mut hits, mut darts, mut pi) = (0u64, 0u64, 0.0f64);
        for round in 0..50u64 {
            // map = every worker's local sums; the fold = the reduce.
            let seeds = (round * per_round)..((round + 1) * per_round);
            let mut counts = pool.map(&INSIDE, seeds);
            while let Some(c) = counts.next().await {
                hits += c?;
                darts += SAMPLES;
            }
            let old = pi;
            pi = 4.0 * hits as f64 / darts as f64;
            let delta = (pi - old).abs();
            println!("pi: {pi:.6} - delta: {delta:.6}");
            if delta < 1e-5 {
                break;
            }
        }
        println!(
            "computed pi with {darts} darts on {} workers: {pi:.6}",
            pool.workers()
        );
        pool.shutdown(ShutdownMode::Drain).await;
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}
