//! A tour of the executor and the scheduler: submit, map, wait, a named task group, the
//! watchdog catching a blocking poll, and shutdown.
//!
//! `cargo run --release --example tour`

use std::time::{Duration, Instant};

use futures::StreamExt;
use offload::{Executor, Scheduler, ShutdownMode, WaitMode, wait};

fn is_prime(n: u64) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0)
}

fn sum_primes(below: u64) -> u64 {
    (2..below).filter(|&n| is_prime(n)).sum()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_target(false).init();
    let sched = Scheduler::builder()
        .slow_poll_threshold(Duration::from_millis(5))
        .build()?;
    let cpu = sched.executor().clone();
    println!("CPU tier: {} with {} worker(s)", cpu.tier(), cpu.workers());

    sched.block_on(async {
        // submit: one task, awaited like any future.
        let h = cpu.submit(|| sum_primes(100_000)).await?;
        println!("sum of primes below 100000 = {}", h.await?);

        // map: ordered results, a bounded window in flight.
        let t0 = Instant::now();
        let sums: Vec<u64> = cpu
            .map((0..8).map(|i| 100_000 + 100 * i), sum_primes)
            .map(|r| r.expect("sum_primes does not panic"))
            .collect()
            .await;
        println!("8 sums via map in {:?}: {:?}", t0.elapsed(), sums);

        // The same on the inline tier (Listing 1's fallback).
        let t0 = Instant::now();
        let inline = Executor::inline();
        let n: usize = inline
            .map(0..8u64, |i| sum_primes(100_000 + 100 * i))
            .count()
            .await;
        println!("{n} sums inline in {:?}", t0.elapsed());

        // wait: the first of several to finish.
        let mut hs = Vec::new();
        for n in [300_000u64, 20_000, 200_000] {
            hs.push(cpu.submit(move || sum_primes(n)).await?);
        }
        let w = wait(hs, WaitMode::FirstCompleted).await;
        println!(
            "first finished: {} done, {} still pending",
            w.done.len(),
            w.pending.len()
        );
        Ok::<(), offload::Error>(())
    })?;

    // A task group, with one task that blocks its thread: the watchdog names it.
    let group = sched.group::<()>("demo");
    group.spawn("blocking-call", async {
        std::thread::sleep(Duration::from_millis(20));
    });
    group.spawn("polite", async {
        tokio::time::sleep(Duration::from_millis(20)).await;
    });
    sched.block_on(group.join_all());
    let stats = sched.stats();
    println!(
        "slow polls seen by the watchdog: {:?}",
        stats.slow_polls_by_task
    );

    cpu.shutdown_blocking(ShutdownMode::Drain);
    sched.shutdown_timeout_blocking(offload::ShutdownMode::Drain, Duration::from_secs(1));
    println!("shut down: no library thread left");
    Ok(())
}
