//! parallelpython's benchmark: the sum of the primes below 100000, 100100, ..., 100700,
//! sequentially, on the thread tier, and on the process tier; prints the sums and the
//! speed-ups.
//!
//! `cargo run --release --example sum_primes [-- --workers N]`

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use offload::{Executor, ProcessPool, RemoteFn, ShutdownMode};

/// The sum of the primes below `n`, by trial division (deliberately CPU-bound, as in the
/// original benchmark).
fn sum_primes(n: u64) -> u64 {
    (2..n).filter(|&x| is_prime(x)).sum()
}

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

static SUM_PRIMES: RemoteFn<u64, u64> = RemoteFn::new("sum_primes", sum_primes);

fn inputs() -> Vec<u64> {
    (0..8).map(|i| 100_000 + 100 * i).collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    offload::init(&[&SUM_PRIMES]);
    let workers = std::env::args()
        .skip_while(|a| a != "--workers")
        .nth(1)
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;

    let t0 = Instant::now();
    let sequential: Vec<u64> = inputs().into_iter().map(sum_primes).collect();
    let t_seq = t0.elapsed();

    let (threads, t_thr) = rt.block_on(async {
        let pool = Executor::threads(workers)?;
        let t0 = Instant::now();
        let v: Vec<u64> = pool
            .map(inputs(), sum_primes)
            .map(|r| r.expect("sum_primes does not panic"))
            .collect()
            .await;
        let t = t0.elapsed();
        pool.shutdown(ShutdownMode::Drain).await;
        Ok::<_, offload::BuildError>((v, t))
    })?;

    let (processes, t_proc) = rt.block_on(async {
        let pool = ProcessPool::builder().workers(workers).build()?;
        // A worker can die (a signal, a memory cap): that is an error of its item, reported.
        // Start the workers before timing, as the threads were started before theirs.
        let warm: Vec<_> = pool.map(&SUM_PRIMES, vec![10; workers]).collect().await;
        drop(warm);
        let t0 = Instant::now();
        let v: Result<Vec<u64>, offload::Error> =
            pool.map(&SUM_PRIMES, inputs()).try_collect().await;
        let t = t0.elapsed();
        pool.shutdown(ShutdownMode::Drain).await;
        Ok::<_, Box<dyn std::error::Error>>((v?, t))
    })?;

    for (i, n) in inputs().into_iter().enumerate() {
        println!("sum of primes below {n}: {}", sequential[i]);
    }
    assert_eq!(sequential, threads, "threads agree");
    assert_eq!(sequential, processes, "processes agree");
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("workers: {workers}");
    println!("sequential: {:8.1} ms", ms(t_seq));
    println!(
        "threads:    {:8.1} ms  speed-up {:.2}x",
        ms(t_thr),
        t_seq.as_secs_f64() / t_thr.as_secs_f64()
    );
    println!(
        "processes:  {:8.1} ms  speed-up {:.2}x",
        ms(t_proc),
        t_seq.as_secs_f64() / t_proc.as_secs_f64()
    );
    Ok(())
}
