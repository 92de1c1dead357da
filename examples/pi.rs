//! Monte-Carlo π three ways: the textbook's shared counter with a lock per sample, the
//! exercise answered (local sums reduced once), and pyMPI's loop of rounds with an allreduce
//! until the estimate settles.
//!
//! Throw points into the unit square; the fraction inside the quarter circle is π/4.
//!
//! - **shared** (the chapter's `calc_pi1`): every worker adds each hit to one shared counter
//!   under its lock. Correct, and slow: every sample takes the lock, and the lock's cache line
//!   travels between cores.
//! - **local** (the exercise: "do you see a way to improve the speed?"): each worker counts in
//!   a local variable and returns its count; the counts are summed once at the end.
//! - **rounds** (pyMPI's `computePi`): each round every worker throws `--round` samples, the
//!   counts are reduced (the allreduce), and the rounds stop when π moves by less than
//!   `--delta`. (As in the source, a small move between two rounds does not prove the
//!   estimate is that close to π: the printed error tells the truth.)
//!
//! ```text
//! cargo run --release --example pi
//! cargo run --example pi -- --samples 200000     # small and quick
//! ```

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use offload::{Executor, ShutdownMode};

mod common;

/// SplitMix64: a tiny, good-enough generator with one `u64` of state per worker.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    /// A generator for stream `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xd1b5_4a32_d192_ed03)
    }

    /// The next number in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Whether the next point falls inside the quarter circle.
    pub fn hit(&mut self) -> bool {
        let (x, y) = (self.next_f64(), self.next_f64());
        x * x + y * y < 1.0
    }
}

/// The shared counter: one lock per sample.
async fn shared(pool: &Executor, samples: u64, workers: u64) -> Result<f64, offload::Error> {
    let inside = Arc::new(Mutex::new(0u64));
    let per = samples / workers;
    let mut handles = Vec::new();
    for w in 0..workers {
        let inside = inside.clone();
        handles.push(
            pool.submit(move || {
                let mut rng = SplitMix::new(w);
                for _ in 0..per {
                    let hit = rng.hit();
                    let mut n = inside.lock().unwrap_or_else(|p| p.into_inner());
                    if hit {
                        *n += 1;
                    }
                }
            })
            .await?,
        );
    }
    for h in handles {
        h.await?;
    }
    let n = *inside.lock().unwrap_or_else(|p| p.into_inner());
    Ok(4.0 * n as f64 / (per * workers) as f64)
}

/// Counts hits among `n` samples of stream `seed`.
fn count(seed: u64, n: u64) -> u64 {
    let mut rng = SplitMix::new(seed);
    (0..n).filter(|_| rng.hit()).count() as u64
}

/// Local sums, reduced once.
async fn local(pool: &Executor, samples: u64, workers: u64) -> Result<f64, offload::Error> {
    let per = samples / workers;
    let counts: Vec<Result<u64, offload::Error>> =
        pool.map(0..workers, move |w| count(w, per)).collect().await;
    let mut inside = 0;
    for c in counts {
        inside += c?;
    }
    Ok(4.0 * inside as f64 / (per * workers) as f64)
}

/// Rounds with a reduction until π moves by less than `delta`.
async fn rounds(
    pool: &Executor,
    round: u64,
    workers: u64,
    delta: f64,
    max_rounds: u64,
) -> Result<(f64, u64), offload::Error> {
    let (mut inside, mut total, mut pi) = (0u64, 0u64, 0.0f64);
    for r in 0..max_rounds {
        let seeds = (0..workers).map(move |w| 1_000 + r * workers + w);
        let counts: Vec<Result<u64, offload::Error>> =
            pool.map(seeds, move |s| count(s, round)).collect().await;
        for c in counts {
            inside += c?;
        }
        total += round * workers;
        let old = pi;
        pi = 4.0 * inside as f64 / total as f64;
        let settled = (pi - old).abs() < delta;
        if r % 10 == 0 || settled {
            println!(
                "  round {:>3}: pi = {pi:.6}  delta = {:.6}",
                r + 1,
                (pi - old).abs()
            );
        }
        if settled {
            return Ok((pi, r + 1));
        }
    }
    Ok((pi, max_rounds))
}

#[derive(clap::Parser, Debug)]
#[command(about = "Monte-Carlo pi: a lock per sample versus local sums reduced")]
struct Args {
    /// Samples for the shared and local runs.
    #[arg(long, default_value_t = 10_000_000)]
    samples: u64,
    /// Worker threads (default: cores - 1, at least 2).
    #[arg(long)]
    workers: Option<usize>,
    /// Samples per worker per round in the rounds run.
    #[arg(long, default_value_t = 10_000)]
    round: u64,
    /// The rounds stop when pi moves by less than this.
    #[arg(long, default_value_t = 1e-5)]
    delta: f64,
    /// The rounds stop after this many in any case.
    #[arg(long, default_value_t = 200)]
    max_rounds: u64,
}

fn timed<T>(t0: Instant, r: T) -> (T, Duration) {
    (r, t0.elapsed())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    use clap::Parser;
    common::init_tracing("warn");
    let args = Args::parse();
    // At least two: with one worker the lock is never contended and the lesson disappears.
    let workers = args
        .workers
        .unwrap_or_else(|| offload::tier::default_workers().max(2))
        .max(1);
    let pool = Executor::threads(workers)?;
    let w = workers as u64;
    println!("{} samples on {workers} worker threads", args.samples);

    let (pi_shared, t_shared) = timed(Instant::now(), shared(&pool, args.samples, w).await?);
    println!(
        "shared counter, lock per sample: pi = {pi_shared:.6}  ({:.3} s)",
        t_shared.as_secs_f64()
    );
    let (pi_local, t_local) = timed(Instant::now(), local(&pool, args.samples, w).await?);
    println!(
        "local sums, reduced once:        pi = {pi_local:.6}  ({:.3} s)",
        t_local.as_secs_f64()
    );
    println!(
        "the local sums are {:.1}x faster: no lock, no shared cache line, one reduction",
        t_shared.as_secs_f64() / t_local.as_secs_f64().max(1e-9)
    );

    println!(
        "rounds of {} samples per worker until pi moves by < {}:",
        args.round, args.delta
    );
    let (pi, n) = rounds(&pool, args.round, w, args.delta, args.max_rounds).await?;
    println!(
        "pi = {pi:.6} after {n} rounds ({} samples); error {:.2e}",
        n * args.round * w,
        (pi - std::f64::consts::PI).abs()
    );
    pool.shutdown(ShutdownMode::Drain).await;
    Ok(())
}
