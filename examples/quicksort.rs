//! Recursive quicksort on the pool (the textbook's `quicksort` with a `Pool(2)` per level).
//!
//! Each level partitions its slice on a pool thread and then sorts the two halves at once; below
//! `--cutoff` elements a half is sorted sequentially, on the pool, in one task.
//!
//! The recursion lives in async code, not inside the pool's tasks. A task that submitted its
//! halves and then *waited* for them would hold its thread while waiting: with a bounded pool,
//! enough such waiters leave no thread to run the halves, and the sort deadlocks. (The textbook
//! avoids this by starting a new pool of processes at every level, which does not scale.) Here
//! a task only partitions or sorts and returns; the waiting happens in futures, which hold no
//! thread.
//!
//! ```text
//! cargo run --release --example quicksort
//! cargo run --example quicksort -- --len 100000   # small and quick
//! ```

use std::time::Instant;

use futures::FutureExt;
use futures::future::BoxFuture;
use offload::{Error, Executor, ShutdownMode};

mod common;

/// Splits `v` around a median-of-three pivot into (less, equal, greater).
pub fn partition(v: Vec<u64>) -> (Vec<u64>, Vec<u64>, Vec<u64>) {
    let (a, b, c) = (v[0], v[v.len() / 2], v[v.len() - 1]);
    let pivot = a.max(b).min(a.min(b).max(c));
    let mut less = Vec::with_capacity(v.len() / 2);
    let mut equal = Vec::new();
    let mut greater = Vec::with_capacity(v.len() / 2);
    for x in v {
        match x.cmp(&pivot) {
            std::cmp::Ordering::Less => less.push(x),
            std::cmp::Ordering::Equal => equal.push(x),
            std::cmp::Ordering::Greater => greater.push(x),
        }
    }
    (less, equal, greater)
}

/// Sorts `v` on `pool`: partition on a worker, then both halves concurrently.
pub fn quicksort(
    pool: Executor,
    v: Vec<u64>,
    cutoff: usize,
) -> BoxFuture<'static, Result<Vec<u64>, Error>> {
    async move {
        if v.len() <= cutoff.max(2) {
            return pool
                .submit(move || {
                    let mut v = v;
                    v.sort_unstable();
                    v
                })
                .await?
                .await;
        }
        let (less, mut equal, greater) = pool.submit(move || partition(v)).await?.await?;
        let (mut left, right) = futures::try_join!(
            quicksort(pool.clone(), less, cutoff),
            quicksort(pool.clone(), greater, cutoff)
        )?;
        left.append(&mut equal);
        left.extend(right);
        Ok(left)
    }
    .boxed()
}

/// The same algorithm on one thread, for comparison.
pub fn quicksort_sequential(v: Vec<u64>, cutoff: usize) -> Vec<u64> {
    if v.len() <= cutoff.max(2) {
        let mut v = v;
        v.sort_unstable();
        return v;
    }
    let (less, mut equal, greater) = partition(v);
    let mut left = quicksort_sequential(less, cutoff);
    left.append(&mut equal);
    left.extend(quicksort_sequential(greater, cutoff));
    left
}

#[derive(clap::Parser, Debug)]
#[command(about = "Recursive quicksort on the pool")]
struct Args {
    /// Numbers to sort.
    #[arg(long, default_value_t = 2_000_000)]
    len: usize,
    /// Halves at most this long are sorted sequentially in one task.
    #[arg(long, default_value_t = 20_000)]
    cutoff: usize,
    /// Worker threads (default: cores - 1, at least 1).
    #[arg(long)]
    workers: Option<usize>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    use clap::Parser;
    common::init_tracing("warn");
    let args = Args::parse();
    // Two threads as in the textbook's Pool(2), unless told otherwise.
    let workers = args.workers.unwrap_or(2).max(1);
    let pool = Executor::threads(workers)?;
    let mut x = 0x853c_49e6_748f_ea9b_u64;
    let numbers: Vec<u64> = (0..args.len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % 1_000_000
        })
        .collect();
    println!(
        "sorting {} numbers (cutoff {}), {workers} pool threads",
        args.len, args.cutoff
    );

    let t0 = Instant::now();
    let mut reference = numbers.clone();
    reference.sort_unstable();
    let t_std = t0.elapsed();

    let t0 = Instant::now();
    let seq = quicksort_sequential(numbers.clone(), args.cutoff);
    let t_seq = t0.elapsed();

    let t0 = Instant::now();
    let par = quicksort(pool.clone(), numbers, args.cutoff).await?;
    let t_par = t0.elapsed();

    if seq != reference || par != reference {
        return Err("the sorts disagree".into());
    }
    println!(
        "std sort_unstable, one thread:  {:>8.3} s",
        t_std.as_secs_f64()
    );
    println!(
        "quicksort, one thread:          {:>8.3} s",
        t_seq.as_secs_f64()
    );
    println!(
        "quicksort on the pool:          {:>8.3} s  ({:.2}x the one-thread quicksort)",
        t_par.as_secs_f64(),
        t_seq.as_secs_f64() / t_par.as_secs_f64().max(1e-9)
    );
    println!("all three agree: sorted");
    pool.shutdown(ShutdownMode::Drain).await;
    Ok(())
}
