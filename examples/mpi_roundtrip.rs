//! The cluster tier's round trip against a raw MPI ping-pong, in the same `mpiexec` run.
//!
//! ```text
//! cargo build --release --features mpi --example mpi_roundtrip
//! mpiexec -n 2 target/release/examples/mpi_roundtrip [rounds] [result_spin_us] [direct_spin_us]
//! ```
//!
//! Prints the median (and p90/p99) of: a raw 8-byte `MPI_Send`/`MPI_Recv` ping-pong between
//! rank 0's MPI thread and rank 1; one trivial task submitted and awaited on the cluster tier
//! from async code; the same from sync code (`submit_blocking` + `blocking_wait`); and the
//! ratio of each to the raw ping-pong (the goal is at most 10×).
//!
//! The optional arguments override the cluster's result spin and direct spin (µs) to compare;
//! `mpi_roundtrip 2000 0 0` measures the queue path alone (every task through rank 0's MPI
//! thread, as when MPI grants only `MPI_THREAD_FUNNELED`).

use std::time::{Duration, Instant};

use offload::tier::mpi::{Cluster, launched_with_workers};
use offload::{RemoteFn, ShutdownMode};

static NOOP: RemoteFn<u64, u64> = RemoteFn::new("noop", |x| x);

fn quantiles(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    let q = |p: f64| v[((v.len() - 1) as f64 * p) as usize];
    (q(0.5), q(0.9), q(0.99))
}

fn line(name: &str, v: Vec<Duration>, base: Option<Duration>) -> Duration {
    let (p50, p90, p99) = quantiles(v);
    let ratio = base.map_or(String::new(), |b| {
        format!("  ratio {:.1}x", p50.as_secs_f64() / b.as_secs_f64())
    });
    println!("{name:<34} median {p50:>10.2?}  p90 {p90:>10.2?}  p99 {p99:>10.2?}{ratio}");
    p50
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    offload::init(&[&NOOP]);
    if !launched_with_workers() {
        eprintln!(
            "run me under mpiexec with at least 2 ranks: mpiexec -n 2 {}",
            std::env::args().next().unwrap_or_default()
        );
        return Ok(());
    }
    let rounds: u32 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let mut builder = Cluster::builder();
    // Optional second and third arguments override the result spin and the direct spin (µs).
    if let Some(us) = std::env::args().nth(2).and_then(|s| s.parse().ok()) {
        builder.result_spin(Duration::from_micros(us));
    }
    if let Some(us) = std::env::args().nth(3).and_then(|s| s.parse().ok()) {
        builder.direct_spin(Duration::from_micros(us));
    }
    let cluster = builder.build()?;
    println!(
        "{} ranks ({} workers), {rounds} rounds each",
        cluster.ranks(),
        cluster.workers()
    );
    // Warm up both paths.
    cluster.raw_ping_pong(1, 1000)?;
    let raw = cluster.raw_ping_pong(1, rounds)?;
    let base = line("raw MPI ping-pong (8 B)", raw, None);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let async_times = rt.block_on(async {
        let mut v = Vec::with_capacity(rounds as usize);
        for i in 0..(rounds + 1000) {
            let t0 = Instant::now();
            let h = cluster.submit(&NOOP, u64::from(i)).await?;
            let r = h.await?;
            let dt = t0.elapsed();
            assert_eq!(r, u64::from(i));
            if i >= 1000 {
                v.push(dt);
            }
        }
        Ok::<_, offload::Error>(v)
    })?;
    line("cluster submit + await (async)", async_times, Some(base));

    let mut sync_times = Vec::with_capacity(rounds as usize);
    for i in 0..rounds {
        let t0 = Instant::now();
        let r = cluster
            .submit_blocking(&NOOP, u64::from(i))?
            .blocking_wait()?;
        sync_times.push(t0.elapsed());
        assert_eq!(r, u64::from(i));
    }
    line("cluster submit_blocking + wait", sync_times, Some(base));

    // The same ping-pong again after the tier's traffic, to show the baseline did not drift.
    let raw2 = cluster.raw_ping_pong(1, rounds)?;
    line("raw MPI ping-pong again", raw2, Some(base));
    cluster.shutdown_blocking(ShutdownMode::Drain);
    Ok(())
}
