//! Large precomputed data shared with every worker (Listing 2 of the Overload article, which
//! pickles it to a file each worker reads back): here the pool gets the table once, as one
//! sealed memory file that all workers map read-only.
//!
//! The program sieves the primes below `--limit` into a table of one byte per number, gives
//! it to a process pool with `shared_bytes`, and answers "how many primes in [a, b)" queries
//! in the workers, which read the table through `offload::shared_bytes()` without a copy.
//! The same function run here, in the pool's own process, reads the same bytes; the program
//! checks that both agree, then prints what the mappings cost in memory, from each process's
//! `/proc/PID/smaps` (Pss splits a shared page among the processes that map it).
//!
//! `cargo run --release --example precalc [-- --limit 100000000 --workers 4 --queries 64]`

use std::time::Instant;

use clap::Parser;
use futures::TryStreamExt;
use offload::{ProcessPool, RemoteFn, ShutdownMode};

#[derive(Parser)]
#[command(about = "Share a precomputed prime table with every worker process, once")]
struct Args {
    /// Sieve the primes below this number (the table is one byte per number).
    #[arg(long, default_value_t = 100_000_000)]
    limit: u64,
    /// Worker processes (default: the cores of this machine).
    #[arg(long)]
    workers: Option<usize>,
    /// Range queries to answer.
    #[arg(long, default_value_t = 64)]
    queries: u64,
}

/// How many primes lie in `[a, b)`, read from the shared table.
static COUNT_PRIMES: RemoteFn<(u64, u64), u64> = RemoteFn::new("count_primes", |(a, b)| {
    let table = offload::shared_bytes().unwrap_or_default();
    let end = usize::try_from(b).map_or(table.len(), |b| b.min(table.len()));
    let start = usize::try_from(a).map_or(end, |a| a.min(end));
    table[start..end].iter().map(|&p| u64::from(p)).sum()
});

/// One byte per number below `limit`: 1 for a prime.
fn sieve(limit: u64) -> Vec<u8> {
    let n = usize::try_from(limit).expect("the limit fits in memory");
    let mut table = vec![1u8; n];
    for x in table.iter_mut().take(2) {
        *x = 0;
    }
    let mut p = 2;
    while p * p < n {
        if table[p] == 1 {
            for m in (p * p..n).step_by(p) {
                table[m] = 0;
            }
        }
        p += 1;
    }
    table
}

/// The worker's mapping of the pool's memory file: (Rss, Pss) in kB, from its smaps.
fn shared_mapping_kb(pid: u32) -> Option<(u64, u64)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let mut lines = smaps.lines();
    while let Some(line) = lines.next() {
        if !line.contains("memfd:offload-shared") {
            continue;
        }
        let (mut rss, mut pss) = (0, 0);
        for field in lines.by_ref() {
            let mut f = field.split_whitespace();
            match (f.next(), f.next().and_then(|v| v.parse::<u64>().ok())) {
                (Some("Rss:"), Some(v)) => rss = v,
                (Some("Pss:"), Some(v)) => pss = v,
                (Some(k), _) if !k.ends_with(':') => break,
                _ => {}
            }
            if rss > 0 && pss > 0 {
                break;
            }
        }
        return Some((rss, pss));
    }
    None
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    offload::init(&[&COUNT_PRIMES]);
    let args = Args::parse();
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;

    let t0 = Instant::now();
    let table = sieve(args.limit);
    let t_sieve = t0.elapsed();
    let size = table.len();

    let t0 = Instant::now();
    let pool = ProcessPool::builder()
        .workers(workers)
        .shared_bytes(table)
        .build()?;
    let t_build = t0.elapsed();

    // Queries: equal slices of the range, so every worker reads all of its pages.
    let step = args.limit.div_ceil(args.queries.max(1)).max(1);
    let ranges: Vec<(u64, u64)> = (0..args.limit)
        .step_by(usize::try_from(step)?)
        .map(|a| (a, (a + step).min(args.limit)))
        .collect();
    let (counts, t_query) = rt.block_on(async {
        let t0 = Instant::now();
        let counts: Vec<u64> = pool
            .map(&COUNT_PRIMES, ranges.clone())
            .try_collect()
            .await?;
        Ok::<_, offload::Error>((counts, t0.elapsed()))
    })?;
    let in_workers: u64 = counts.iter().sum();
    // The same function, here: the pool's own process reads the same table.
    let here: u64 = ranges.iter().map(|&r| COUNT_PRIMES.call_local(r)).sum();
    if in_workers != here {
        return Err(format!("workers counted {in_workers} primes, this process {here}").into());
    }

    println!(
        "primes below {}: {in_workers} (sieve {:.2?}; the same count in the workers and here)",
        args.limit, t_sieve
    );
    println!(
        "pool of {workers} workers built in {t_build:.2?} with a {:.1} MB table; {} queries in {t_query:.2?}",
        size as f64 / 1e6,
        ranges.len()
    );
    println!("| process | pid | table pages mapped (Rss) | its share (Pss) |");
    println!("| --- | --- | --- | --- |");
    let (mut pss_sum, mut readers) = (0, 0u64);
    let me = std::iter::once(("this one", std::process::id()));
    let them = pool.worker_pids().into_iter().map(|pid| ("worker", pid));
    for (who, pid) in me.chain(them) {
        match shared_mapping_kb(pid) {
            Some((rss, pss)) => {
                pss_sum += pss;
                readers += 1;
                println!("| {who} | {pid} | {:.1} MB | {:.1} MB |", mb(rss), mb(pss));
            }
            None => println!("| {who} | {pid} | (no mapping) | |"),
        }
    }
    println!(
        "{readers} processes read the table: {:.1} MB of memory for its pages in all \
         (a copy of the table in each would be {:.1} MB)",
        mb(pss_sum),
        readers as f64 * size as f64 / (1 << 20) as f64
    );
    pool.shutdown_blocking(ShutdownMode::Drain);
    Ok(())
}
